//! The `cairn` binary without KVM: errors, listings, completions, and the per-sandbox lock
//! serialising CLI calls.

use cairn_sandbox::lock::{FileLock, Mode};
use cairn_sandbox::registry::{Record, Registry, State};
use cairn_sandbox::sandbox::Home;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn cairn(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("CAIRN_HOME", home)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn stopped_row(home: &Home, name: &str) -> Record {
    let paths = home.paths(name);
    std::fs::create_dir_all(&paths.dir).unwrap();
    Record {
        head_checkpoint: Some("c1".into()),
        idle_timeout: 0,
        ..paths.record(name, State::Stopped)
    }
}

#[test]
fn missing_sandbox_is_a_one_line_error_with_a_hint() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["exec", "nope", "--", "true"][..],
        &["rm", "nope"],
        &["stop", "nope"],
        &["checkpoint", "list", "nope"],
        &["cp", "./x", "nope:/tmp/x"],
    ] {
        let out = cairn(home.path(), args);
        assert_eq!(out.status.code(), Some(125), "{args:?}: cairn's own code");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("sandbox \"nope\" not found (hint: `cairn ls`"),
            "{err}"
        );
    }
}

#[test]
fn bad_names_and_cp_arguments_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let out = cairn(home.path(), &["create", "../x"]);
    assert!(
        text(&out.stderr).contains("invalid sandbox name"),
        "{out:?}"
    );
    let out = cairn(home.path(), &["cp", "a", "b"]);
    assert!(
        text(&out.stderr).contains("exactly one NAME:/absolute/path"),
        "{out:?}"
    );
}

#[test]
fn ls_derives_state_and_speaks_json() {
    let home_dir = tempfile::tempdir().unwrap();
    let out = cairn(home_dir.path(), &["ls", "--json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");

    let home = Home::at(home_dir.path()).unwrap();
    let mut reg = Registry::open(home.root()).unwrap();
    reg.insert(&stopped_row(&home, "s1")).unwrap();
    // A row claiming a running VMM whose pid is gone shows as dead, not running.
    let mut ghost = stopped_row(&home, "ghost");
    ghost.state = State::Running;
    ghost.pid = Some(u32::MAX - 1);
    reg.insert(&ghost).unwrap();

    let out = cairn(home.root(), &["ls", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "ghost");
    assert_eq!(v[0]["state"], "dead");
    assert_eq!(v[0]["recorded_state"], "running");
    assert_eq!(v[1]["state"], "stopped");
    assert_eq!(v[1]["head_checkpoint"], "c1");
    let out = cairn(home.root(), &["ls"]);
    let t = text(&out.stdout);
    assert!(t.starts_with("NAME"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("s1") && l.contains("stopped")),
        "{t}"
    );
}

#[test]
fn a_held_sandbox_lock_makes_other_cli_calls_wait() {
    let home_dir = tempfile::tempdir().unwrap();
    let home = Home::at(home_dir.path()).unwrap();
    let mut reg = Registry::open(home.root()).unwrap();
    reg.insert(&stopped_row(&home, "s1")).unwrap();
    let lock = FileLock::acquire(&home.paths("s1").lock, Mode::Exclusive).unwrap();
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["stop", "s1"])
        .env("CAIRN_HOME", home.root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "stop ran while the lock was held"
    );
    drop(lock);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(start.elapsed() >= Duration::from_millis(500));
    assert_eq!(text(&out.stdout).trim(), "s1: not running");
}

#[test]
fn rm_of_a_stopped_sandbox_frees_dir_and_row() {
    let home_dir = tempfile::tempdir().unwrap();
    let home = Home::at(home_dir.path()).unwrap();
    let mut reg = Registry::open(home.root()).unwrap();
    reg.insert(&stopped_row(&home, "s1")).unwrap();
    std::fs::write(home.paths("s1").disk, b"x").unwrap();
    let out = cairn(home.root(), &["rm", "s1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!home.paths("s1").dir.exists());
    assert!(reg.list().unwrap().is_empty());
}

#[test]
fn completions_and_help() {
    let home = tempfile::tempdir().unwrap();
    let out = cairn(home.path(), &["completions", "bash"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("checkpoint"));
    let out = cairn(home.path(), &["--help"]);
    let t = text(&out.stdout);
    for cmd in [
        "create",
        "exec",
        "cp",
        "console",
        "checkpoint",
        "ls",
        "stop",
        "start",
        "rm",
    ] {
        assert!(t.contains(cmd), "{cmd} missing from --help");
    }
    assert!(!t.contains("__idle-watch"));
}

/// `cairn agent --unix` (plumbing) still works after exec was shared with `cairn exec`.
#[test]
fn agent_plumbing_exec_against_a_host_agent() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_cairn"));
    let agent = exe.with_file_name("cairn-agent");
    if !agent.is_file() {
        eprintln!(
            "SKIP agent_plumbing: {} not built (cargo build --workspace --bins)",
            agent.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut child = Command::new(&agent)
        .arg("--listen-unix")
        .arg(&sock)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(&exe)
        .args(["agent", "--unix"])
        .arg(&sock)
        .args(["exec", "-e", "X=42", "--", "sh", "-c", "echo $X; exit 5"])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(text(&out.stdout), "42\n");
}
