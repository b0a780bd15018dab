//! As root, `cairn create` runs the sandbox's VMM under `cairn-jailer`: checked from outside
//! (`/proc/<pid>`: root, working directory, uid/gid, capabilities, seccomp), through the agent
//! (`cairn exec`), and across `cairn stop` / `cairn start` (a checkpoint written and restored by
//! jailed VMMs, through the same in-jail paths).
//!
//! Needs root (prints `SKIP` otherwise), `/dev/kvm` (skips loudly without it, fails under
//! `CAIRN_REQUIRE_KVM=1`), a static `cairn-agent` (`scripts/test` builds it; `CAIRN_AGENT_BIN`), and a static
//! `cairn-vmm` plus `cairn-jailer` (`CAIRN_STATIC_VMM` / `CAIRN_JAILER`, or
//! `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p cairn-vmm -p cairn-jailer --target x86_64-unknown-linux-gnu`
//! into the same target directory). One Linux boot: 30-100 s on the emulated-KVM hosts.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SB: &str = "jailed";

fn cairn_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// `env`, else `<target>/x86_64-unknown-linux-gnu/release/<name>` above the `cairn` binary.
fn static_binary(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(p.into());
    }
    let rel = format!("x86_64-unknown-linux-gnu/release/{name}");
    cairn_exe()
        .ancestors()
        .map(|a| a.join(&rel))
        .find(|p| p.is_file())
}

fn ready(name: &str) -> bool {
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP {name}: not root");
        return false;
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        if std::env::var("CAIRN_REQUIRE_KVM").as_deref() == Ok("1") {
            panic!("{name}: /dev/kvm not available and CAIRN_REQUIRE_KVM=1");
        }
        println!("SKIP {name}: /dev/kvm not available");
        return false;
    }
    for (env, bin) in [
        ("CAIRN_AGENT_BIN", "cairn-agent"),
        ("CAIRN_STATIC_VMM", "cairn-vmm"),
        ("CAIRN_JAILER", "cairn-jailer"),
    ] {
        if static_binary(env, bin).is_none() {
            println!("SKIP {name}: no static {bin} (set {env}, or see the file's header)");
            return false;
        }
    }
    true
}

struct Env {
    home: tempfile::TempDir,
}

impl Env {
    fn run(&self, args: &[&str]) -> Output {
        let start = Instant::now();
        let out = Command::new(cairn_exe())
            .args(args)
            .env("CAIRN_HOME", self.home.path())
            .env_remove("CAIRN_NO_JAIL")
            .output()
            .unwrap();
        eprintln!(
            "$ cairn {} -> {:?} in {:.1} s\n{}{}",
            args.join(" "),
            out.status.code(),
            start.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "cairn {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `cairn exec`, retried when the guest process dies at its start (`scripts/test` builds it; `CAIRN_AGENT_BIN`).
    fn exec(&self, cmd: &[&str]) -> (i32, String) {
        let mut args = vec!["exec", SB, "--"];
        args.extend_from_slice(cmd);
        for _ in 0..4 {
            let out = self.run(&args);
            let code = out.status.code().unwrap_or(-1);
            let dropped = String::from_utf8_lossy(&out.stderr).contains("closed the connection");
            if code != 139 && !(code == 125 && dropped) {
                return (code, String::from_utf8_lossy(&out.stdout).into_owned());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("{cmd:?} kept dying of SIGSEGV or losing the agent");
    }

    fn row(&self) -> serde_json::Value {
        let ls: serde_json::Value = serde_json::from_str(&self.ok(&["ls", "--json"])).unwrap();
        ls[0].clone()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self
                .home
                .path()
                .join("sandboxes")
                .join(SB)
                .join("console.log");
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!("--- console tail ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = Command::new(cairn_exe())
            .args(["rm", SB])
            .env("CAIRN_HOME", self.home.path())
            .output();
    }
}

fn status(pid: u64) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The VMM `pid` runs in the sandbox's jail, as its own uid, unprivileged and filtered.
fn assert_jailed(home: &Path, pid: u64) -> u32 {
    let dir = home.join("sandboxes").join(SB);
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("jail.json")).unwrap()).unwrap();
    let uid = spec["uid"].as_u64().unwrap() as u32;
    let jails = home.join("jail/cairn-vmm");
    let ids: Vec<_> = std::fs::read_dir(&jails).unwrap().collect();
    assert_eq!(ids.len(), 1, "one jail directory in {}", jails.display());
    let root = ids[0].as_ref().unwrap().path().join("root");
    let want = std::fs::metadata(&root).unwrap();
    for link in ["root", "cwd"] {
        let got = std::fs::metadata(format!("/proc/{pid}/{link}")).unwrap();
        assert_eq!(
            (got.dev(), got.ino()),
            (want.dev(), want.ino()),
            "/proc/{pid}/{link} is not {}",
            root.display()
        );
    }
    // Its / holds the binary, /dev, and the mount points; the sandbox directory is bound at
    // /sandbox (the API socket is there, seen through the VMM's root).
    assert!(Path::new(&format!("/proc/{pid}/root/sandbox/api.sock")).exists());
    assert!(Path::new(&format!("/proc/{pid}/root/kernel")).is_file());
    assert!(!Path::new(&format!("/proc/{pid}/root/etc")).exists());
    let st = status(pid);
    let ids = |v: u32| format!("{v}\t{v}\t{v}\t{v}");
    assert_eq!(st["Uid"], ids(uid), "{st:?}");
    assert_eq!(st["Gid"], ids(uid), "{st:?}");
    assert_eq!(st["CapEff"], "0000000000000000");
    assert_eq!(st["CapBnd"], "0000000000000000");
    assert_eq!(st["NoNewPrivs"], "1");
    assert_eq!(st["Seccomp"], "2", "{st:?}");
    uid
}

#[test]
fn root_create_runs_the_vmm_jailed() {
    let name = "root_create_runs_the_vmm_jailed";
    if !ready(name) {
        return;
    }
    let env = Env {
        home: tempfile::Builder::new()
            .prefix("cairn-jail")
            .tempdir_in("/tmp")
            .unwrap(),
    };
    let create = &[
        "create",
        SB,
        "--mem",
        "256",
        "--disk",
        "1",
        "--idle-timeout",
        "0",
        "--boot-timeout",
        "400",
    ];
    for attempt in 1.. {
        let out = env.run(create);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            attempt < 3 && err.contains("segfault at 0"),
            "cairn create failed: {err}"
        );
    }
    let row = env.row();
    assert_eq!(row["jailed"], true, "{row}");
    let pid = row["pid"].as_u64().unwrap();
    let uid = assert_jailed(env.home.path(), pid);
    // Found by its jail root although its working directory is not the sandbox directory.
    let dir = PathBuf::from(row["dir"].as_str().unwrap());
    assert_eq!(cairn_sandbox::sandbox::vmms_in(&dir), vec![pid as u32]);
    assert_eq!(
        env.exec(&["echo", "hello from the jail"]),
        (0, "hello from the jail\n".into())
    );
    // `doctor` and `start` find the VMM through its jail root (its cwd is not the sandbox dir).
    let vm_json =
        std::fs::read_to_string(env.home.path().join("sandboxes").join(SB).join("vm.json"))
            .unwrap();
    assert!(
        vm_json.contains("\"/sandbox/disk.img\"") && vm_json.contains("\"/kernel\""),
        "{vm_json}"
    );

    // stop checkpoints into /sandbox/checkpoints; start restores it in a fresh jail.
    env.ok(&["stop", SB]);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || status(pid).get("State").is_some_and(|s| s.starts_with('Z'))
    );
    // The sandbox directory stays root's (group-writable for the sockets, sticky): the VMM
    // cannot replace jail.json or vm.json.
    let sb_dir = std::fs::metadata(env.home.path().join("sandboxes").join(SB)).unwrap();
    assert_eq!(
        (sb_dir.uid(), sb_dir.gid(), sb_dir.mode() & 0o7777),
        (0, uid, 0o1775)
    );
    let ckpts = env
        .home
        .path()
        .join("sandboxes")
        .join(SB)
        .join("checkpoints");
    let owner = std::fs::metadata(&ckpts).unwrap().uid();
    assert_eq!(owner, uid, "the checkpoint store belongs to the jail user");
    env.ok(&["start", SB]);
    let pid2 = env.row()["pid"].as_u64().unwrap();
    assert_ne!(pid2, pid);
    assert_jailed(env.home.path(), pid2);
    assert_eq!(env.exec(&["echo", "again"]), (0, "again\n".into()));
    env.ok(&["rm", SB]);
    let jails = env.home.path().join("jail/cairn-vmm");
    assert_eq!(
        std::fs::read_dir(&jails).unwrap().count(),
        0,
        "rm leaves no jail"
    );
    assert!(
        !Path::new(&format!("/proc/{pid2}")).exists()
            || status(pid2)
                .get("State")
                .is_some_and(|s| s.starts_with('Z'))
    );
}
