//! A `kill -9` of the VMM at any moment during a checkpoint leaves every earlier checkpoint
//! restorable, and the interrupted one is either complete or absent.

use std::process::Command;
use std::time::{Duration, Instant};

use cairn_tests::process::http::{request, wait_for_socket};
use cairn_tests::process::Guest;
use cairn_tests::{guests, kvm_available};

#[allow(dead_code)] // config_with_drive only
mod common;

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn-vmm"))
}

#[test]
fn kill_9_during_checkpoints_never_breaks_earlier_ones() {
    if !kvm_available("kill_9_during_checkpoints_never_breaks_earlier_ones") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A drive, so that each checkpoint also freezes a disk delta (the freeze's renames and
    // new files, and their commit, are also what a kill interrupts).
    let (cfg, store) = common::config_with_drive(dir.path(), guests::TICKER64);
    let mut completed: Vec<String> = vec![];
    for round in 0..8u64 {
        let api = dir.path().join(format!("api{round}.sock"));
        let mut cmd = vmm();
        cmd.arg("--api-sock").arg(&api);
        if completed.is_empty() {
            cmd.arg("--config-file").arg(&cfg);
        } else {
            cmd.arg("--checkpoint-dir").arg(&store);
        }
        let mut g = Guest::spawn(cmd);
        wait_for_socket(&api, Duration::from_secs(10));
        if let Some(last) = completed.last() {
            let body = serde_json::json!({"name": last}).to_string();
            let (status, resp) = request(&api, "PUT", "/checkpoints/restore", Some(&body));
            assert_eq!(status, 204, "restore {last} after a kill: {resp}");
        }
        g.wait_for(".", Duration::from_secs(30)).unwrap();
        // Take one checkpoint cleanly, then kill -9 in the middle of the next.
        let name = format!("r{round}");
        let (status, resp) = request(
            &api,
            "PUT",
            "/checkpoints",
            Some(&format!(r#"{{"name": "{name}"}}"#)),
        );
        assert_eq!(status, 200, "{resp}");
        completed.push(name);
        let victim = format!("k{round}");
        let api2 = api.clone();
        let body = format!(r#"{{"name": "{victim}"}}"#);
        let t = std::thread::spawn(move || {
            let _ = std::panic::catch_unwind(|| request(&api2, "PUT", "/checkpoints", Some(&body)));
        });
        // Spread the kills over the checkpoint's duration (a few ms).
        let start = Instant::now();
        while start.elapsed() < Duration::from_micros(round * 700) {
            std::hint::spin_loop();
        }
        g.signal(libc::SIGKILL);
        g.wait_exit(Duration::from_secs(10))
            .expect("killed VMM exits");
        let _ = t.join();
        // A checkpoint interrupted before its commit point does not exist; one that made it is
        // complete and stays usable.
        let meta = store.join(&victim).join("meta.json");
        if meta.exists() {
            completed.push(victim);
        }
    }
    // Every completed checkpoint restores, in a fresh VMM each, and the guest runs on.
    for name in &completed {
        let api = dir.path().join(format!("check-{name}.sock"));
        let mut cmd = vmm();
        cmd.arg("--api-sock")
            .arg(&api)
            .arg("--checkpoint-dir")
            .arg(&store);
        let g = Guest::spawn(cmd);
        wait_for_socket(&api, Duration::from_secs(10));
        let (status, resp) = request(&api, "GET", "/checkpoints", None);
        assert_eq!(status, 200);
        let listed: Vec<serde_json::Value> = serde_json::from_str(&resp).unwrap();
        assert!(
            listed
                .iter()
                .all(|c| completed.iter().any(|n| c["name"] == n.as_str())),
            "{resp}"
        );
        let body = serde_json::json!({"name": name}).to_string();
        let (status, resp) = request(&api, "PUT", "/checkpoints/restore", Some(&body));
        assert_eq!(status, 204, "restore {name}: {resp}");
        g.wait_for(".", Duration::from_secs(30)).unwrap();
    }
}
