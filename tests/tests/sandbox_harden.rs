//! The `cairn` CLI refuses what the host cannot give, up front (no KVM needed: the checks come
//! before any VM is made).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::process::workspace_bin;

fn cairn(home: &std::path::Path, args: &[&str]) -> (bool, String, Duration) {
    let start = Instant::now();
    let out = Command::new(workspace_bin("cairn"))
        .args(args)
        .env("CAIRN_HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

#[test]
fn create_refuses_more_memory_or_cpus_than_the_host_has() {
    let home = tempfile::tempdir().unwrap();
    let (ok, err, took) = cairn(home.path(), &["create", "big", "--mem", "99999999"]);
    assert!(!ok && err.contains("--mem"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let (ok, err, _) = cairn(home.path(), &["create", "wide", "--cpus", "250"]);
    assert!(!ok && err.contains("--cpus"), "{err}");
    let (ok, out, _) = cairn(home.path(), &["ls", "--json"]);
    assert!(ok, "{out}");
    assert!(!home.path().join("sandboxes/big").exists());
}

#[test]
fn checkpoint_names_follow_the_sandbox_name_rules() {
    let home = tempfile::tempdir().unwrap();
    for bad in ["-rf", ".hidden", "a/b"] {
        let (ok, err, _) = cairn(home.path(), &["checkpoint", "create", "box", "--", bad]);
        assert!(
            !ok && err.contains("invalid checkpoint name"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn json_is_accepted_by_create_fork_start_stop_and_rm() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["create", "x", "--mem", "99999999", "--json"][..],
        &["fork", "a", "c1", "b", "--json"],
        &["start", "nope", "--json"],
        &["stop", "nope", "--json"],
        &["rm", "nope", "--json"],
    ] {
        let (ok, err, _) = cairn(home.path(), args);
        // Parsed, then refused for what it is (no such sandbox, too large), not as a usage error.
        assert!(!ok, "{args:?}");
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
        assert!(err.starts_with("cairn: "), "{args:?}: {err}");
    }
}

/// The reproduction: a truncated memory layer makes `cairn checkpoint restore` fail, and
/// the sandbox's VM (its processes) runs on: same VMM, agent answers, nothing cold-booted.
#[test]
fn a_failed_checkpoint_restore_keeps_the_vm_running() {
    let name = "a_failed_checkpoint_restore_keeps_the_vm_running";
    if !cairn_tests::kvm_available(name) {
        return;
    }
    cairn_tests::linux::retry_on_guest_flake(name, || {
        let h = cairn_tests::sandbox::CairnHome::new();
        h.create(
            "k2",
            &[
                "--mem",
                "256",
                "--disk",
                "1",
                "--idle-timeout",
                "0",
                "--no-jail",
            ],
        );
        h.ok(&["checkpoint", "create", "k2", "kc20"]);
        let pid = h.row("k2")["pid"].clone();
        let layer = h.dir("k2").join("checkpoints/kc20/mem.layer");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&layer)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let out = h.run(&["checkpoint", "restore", "k2", "kc20"]);
        assert!(!out.status.success());
        assert_eq!(out.status.code(), Some(125));
        assert_eq!(h.row("k2")["pid"], pid, "the VMM was replaced");
        assert_eq!(h.row("k2")["state"], "running");
        assert_eq!(h.sh("k2", "echo alive"), "alive\n");
        h.ok(&["rm", "k2"]);
    });
}
