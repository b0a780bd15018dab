//! A named checkpoint that fails in its commit, after its drive's delta was frozen and its
//! memory copied, leaves no directory, gives the delta back (`LayeredDisk::thaw`, whose keeping
//! of the blocks is tested in cairn-snapshot: this tiny guest writes no block), and the next
//! checkpoint, a Full (the failed one took the dirty-page log), succeeds and restores.

use std::process::Command;
use std::time::Duration;

use cairn_tests::process::http::{request, wait_for_socket};
use cairn_tests::process::Guest;
use cairn_tests::{guests, kvm_available};

#[allow(dead_code)] // config_with_drive only
mod common;

#[test]
fn a_failed_checkpoint_gives_the_frozen_disk_delta_back() {
    if !kvm_available("a_failed_checkpoint_gives_the_frozen_disk_delta_back") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cfg, store) = common::config_with_drive(dir.path(), guests::DIRTY1M);
    let api = dir.path().join("api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock")
        .arg(&api)
        .arg("--config-file")
        .arg(&cfg);
    let g = Guest::spawn(cmd);
    wait_for_socket(&api, Duration::from_secs(10));
    // dirty1m touches all its memory ("T"), then rewrites a 1 MiB window.
    g.wait_for("T", Duration::from_secs(30)).unwrap();
    let create = |name: &str| {
        let body = format!(r#"{{"name": "{name}"}}"#);
        request(&api, "PUT", "/checkpoints", Some(&body))
    };
    let dirty_mib = |resp: &str| {
        let meta: serde_json::Value = serde_json::from_str(resp).unwrap();
        meta["dirty_memory_mib"].as_f64().unwrap()
    };
    let (status, resp) = create("a");
    assert_eq!(status, 200, "{resp}");
    assert!(dirty_mib(&resp) > 32.0, "a is Full: {resp}");
    // HEAD a directory: the commit refuses to replace it, after the freeze and the copy.
    let head = store.join(".active").join("HEAD");
    std::fs::remove_file(&head).unwrap();
    std::fs::create_dir(&head).unwrap();
    let (status, resp) = create("b");
    assert_ne!(status, 200, "{resp}");
    assert!(resp.contains("HEAD"), "{resp}");
    assert!(
        !store.join("b").exists(),
        "the failed checkpoint's directory is removed"
    );
    assert!(store.join(".active").join("drive0.active.index").is_file());
    // With HEAD a file again, the next checkpoint and its restore work.
    std::fs::remove_dir(&head).unwrap();
    std::fs::write(&head, b"a").unwrap();
    let (status, resp) = create("c");
    assert_eq!(status, 200, "{resp}");
    let c: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(c["parent"], "a", "{resp}");
    // The failed checkpoint took the dirty-page log, so c is Full, not a 1 MiB Diff that
    // would miss what was dirtied before the failure.
    assert!(dirty_mib(&resp) > 32.0, "c is Full: {resp}");
    let (status, resp) = request(
        &api,
        "PUT",
        "/checkpoints/restore",
        Some(r#"{"name": "c"}"#),
    );
    assert_eq!(status, 204, "{resp}");
    g.wait_for(".", Duration::from_secs(30)).unwrap();
}
