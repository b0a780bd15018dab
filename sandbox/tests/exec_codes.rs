//! `cairn agent exec` against an agent on the host: `--timeout` kills and exits 124, a command
//! not found exits 127, one not executable 126 (the same code paths as `cairn exec`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

struct HostAgent {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cairn() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

fn host_agent(test: &str) -> Option<HostAgent> {
    let agent = cairn().with_file_name("cairn-agent");
    if !agent.is_file() {
        eprintln!(
            "SKIP {test}: {} not built (cargo build --workspace --bins)",
            agent.display()
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let child = Command::new(&agent)
        .arg("--listen-unix")
        .arg(&sock)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(HostAgent {
        child,
        sock,
        _dir: dir,
    })
}

fn exec(sock: &Path, args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new(cairn())
        .args(["agent", "--unix"])
        .arg(sock)
        .arg("exec")
        .args(args)
        .output()
        .unwrap();
    (out, start.elapsed())
}

#[test]
fn timeout_and_exit_codes() {
    let Some(a) = host_agent("timeout_and_exit_codes") else {
        return;
    };
    let (out, took) = exec(&a.sock, &["--timeout", "1", "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let (out, _) = exec(&a.sock, &["--timeout", "30", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let (out, _) = exec(&a.sock, &["--", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let (out, _) = exec(&a.sock, &["--", "/etc/hostname"]);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
}
