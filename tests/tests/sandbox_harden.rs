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
