//! A real S3-compatible server on 127.0.0.1 for the store tests: `scripts/s3-server` builds it
//! once (cached in `~/.cache/cairn`) and starts it with a bucket and a key. `CAIRN_TEST_S3`
//! picks the server: `s3s-fs` (default) or `garage`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server; killed (its whole process group) on drop.
/// `cairn create` arguments of the store tests' sandbox: 256 MiB, a 1 GiB disk, never idle,
/// no network, booted cold (so nothing but the sandbox itself is in its checkpoints).
pub const SMALL_COLD_SANDBOX: &[&str] = &[
    "--mem",
    "256",
    "--disk",
    "1",
    "--idle-timeout",
    "0",
    "--no-network",
    "--cold",
];

pub struct S3Server {
    /// `AWS_*` and `CAIRN_STORE` variables that reach it.
    pub env: Vec<(String, String)>,
    /// Where its objects lie as files (s3s-fs only): `<data>/<key>`.
    pub data: Option<PathBuf>,
    /// Which server it is.
    pub kind: String,
    pid: i32,
    _dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3-server")
}

impl S3Server {
    /// A fresh `CAIRN_HOME` (one "host") whose `cairn` uses this bucket.
    pub fn home(&self) -> crate::sandbox::CairnHome {
        let mut h = crate::sandbox::CairnHome::new();
        h.env = self.env.clone();
        h
    }

    /// Build (once) and start the server `CAIRN_TEST_S3` names.
    pub fn start() -> S3Server {
        let kind = std::env::var("CAIRN_TEST_S3").unwrap_or_else(|_| "s3s-fs".into());
        let dir = tempfile::Builder::new()
            .prefix("cairn-s3")
            .tempdir_in("/tmp")
            .unwrap();
        let out = Command::new(script())
            .args(["start", &kind])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/s3-server start {kind} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut env = Vec::new();
        let (mut pid, mut data) = (0, None);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "pid" => pid = v.parse().unwrap(),
                "data" => data = Some(PathBuf::from(v)),
                _ => env.push((k.to_string(), v.to_string())),
            }
        }
        assert!(pid > 0, "no pid= from scripts/s3-server");
        S3Server {
            env,
            data,
            kind,
            pid,
            _dir: dir,
        }
    }

    /// Whether the server honours `If-Match` / `If-None-Match` on PutObject (Garage does not).
    pub fn conditional_puts(&self) -> bool {
        self.kind != "garage"
    }

    /// A client of the bucket, as `cairn` itself opens it.
    pub fn remote(&self) -> cairn_store::Remote {
        let url = cairn_store::StoreUrl::parse(&self.var("CAIRN_STORE")).unwrap();
        cairn_store::Remote::open_with(&url, &self.env).unwrap()
    }

    /// The value of one of [`S3Server::env`].
    pub fn var(&self, key: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap()
    }

    /// Point `cmd` at the server.
    pub fn apply(&self, cmd: &mut Command) {
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) with our own child's process group; no memory is passed.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
        }
    }
}
