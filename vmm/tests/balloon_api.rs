//! The balloon API through the real binary (seccomp on), with a guest that has no balloon
//! driver (the ticker): Firecracker's rules before and after InstanceStart, the statistics
//! endpoints, and the balloon surviving a snapshot (its configuration read back from the loaded
//! VM); the hinting endpoints before and after start, with and without a balloon or hinting, and
//! the free page flags through a snapshot. The Linux guest tests (tests/tests/linux_balloon.rs,
//! linux_balloon_free_page.rs) cover inflation, reporting and hinting themselves.

use std::process::Command;
use std::time::Duration;

use cairn_tests::kvm_available;
use cairn_tests::process::{api, configure_ticker, vm_config_json, Guest};
use cairn_tests::process::{full_snapshot_and_exit, load_resumed};
use cairn_vmm_api::config::{
    BalloonConfig, BalloonHintingStart, BalloonHintingStatus, BalloonStatsUpdate, BalloonUpdate,
};
use cairn_vmm_api::Client;

fn vmm(sock: &std::path::Path) -> Guest {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock").arg(sock);
    Guest::spawn(cmd)
}

/// Status and fault message of a request.
fn call(c: &Client, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let r = c.send(method, path, body.map(str::as_bytes)).unwrap();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

#[test]
fn balloon_api_before_and_after_start_and_through_a_snapshot() {
    if !kvm_available("balloon_api_before_and_after_start_and_through_a_snapshot") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut g = vmm(&sock);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c); // 32 MiB

    // Before start.
    let (status, body) = call(&c, "GET", "/balloon", None);
    assert_eq!(status, 400);
    assert!(body.contains("No balloon device found"), "{body}");
    let (status, body) = call(
        &c,
        "PUT",
        "/balloon",
        Some(r#"{"amount_mib": 33, "deflate_on_oom": true}"#),
    );
    assert_eq!(status, 400, "larger than guest memory");
    assert!(body.contains("balloon.amount_mib"), "{body}");
    let cfg = BalloonConfig {
        amount_mib: 8,
        deflate_on_oom: true,
        stats_polling_interval_s: 1,
        ..Default::default()
    };
    c.put_balloon(&cfg).unwrap();
    assert_eq!(c.balloon().unwrap(), cfg);
    assert_eq!(c.vm_config().unwrap().balloon, Some(cfg));
    for (method, path, body) in [
        ("PATCH", "/balloon", Some(r#"{"amount_mib": 1}"#)),
        ("GET", "/balloon/statistics", None),
        (
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 2}"#),
        ),
    ] {
        let (status, body) = call(&c, method, path, body);
        assert_eq!(status, 400, "{method} {path}");
        assert!(body.contains("not supported before starting"), "{body}");
    }

    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();

    // After start: no driver in this guest, so the target cannot change yet.
    let (status, body) = call(
        &c,
        "PUT",
        "/balloon",
        Some(r#"{"amount_mib": 1, "deflate_on_oom": true}"#),
    );
    assert_eq!(status, 400);
    assert!(body.contains("not supported after starting"), "{body}");
    let (status, body) = call(&c, "PATCH", "/balloon", Some(r#"{"amount_mib": 4}"#));
    assert_eq!(status, 400);
    assert!(body.contains("Device not activated yet"), "{body}");
    assert!(c.patch_balloon(&BalloonUpdate { amount_mib: 4 }).is_err());
    let stats = c.balloon_statistics().unwrap();
    assert_eq!((stats.target_mib, stats.target_pages), (8, 2048));
    assert_eq!((stats.actual_mib, stats.actual_pages), (0, 0));
    assert_eq!(stats.free_memory, None, "no driver, no statistics");
    // Statistics stay on: only the interval changes.
    let (status, body) = call(
        &c,
        "PATCH",
        "/balloon/statistics",
        Some(r#"{"stats_polling_interval_s": 0}"#),
    );
    assert_eq!(status, 400);
    assert!(
        body.contains("Statistics cannot be enabled/disabled"),
        "{body}"
    );
    c.patch_balloon_statistics(&BalloonStatsUpdate {
        stats_polling_interval_s: 2,
    })
    .unwrap();
    let now = BalloonConfig {
        stats_polling_interval_s: 2,
        ..cfg
    };
    assert_eq!(c.balloon().unwrap(), now);
    assert_eq!(c.vm_config().unwrap().balloon, Some(now));

    // Through a snapshot.
    let snap = full_snapshot_and_exit(&c, &mut g, dir.path());

    let sock2 = dir.path().join("api2.sock");
    let mut g2 = vmm(&sock2);
    let c2 = api(&sock2);
    c2.wait_ready(Duration::from_secs(10)).unwrap();
    c2.snapshot_load(&load_resumed(&snap)).unwrap();
    assert_eq!(c2.balloon().unwrap(), now);
    let v = vm_config_json(&c2);
    assert_eq!(
        v["balloon"],
        serde_json::json!({"amount_mib": 8, "deflate_on_oom": true,
            "stats_polling_interval_s": 2, "free_page_hinting": false,
            "free_page_reporting": false})
    );
    assert_eq!(c2.balloon_statistics().unwrap().target_pages, 2048);
    g2.signal(libc::SIGTERM);
    assert!(g2.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn balloon_hinting_api_and_free_page_flags_through_a_snapshot() {
    if !kvm_available("balloon_hinting_api_and_free_page_flags_through_a_snapshot") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();

    // No balloon, and a balloon without hinting: Firecracker's answers after start.
    for balloon in [None, Some(r#"{"amount_mib": 1, "deflate_on_oom": false}"#)] {
        let sock = dir.path().join("plain.sock");
        let _ = std::fs::remove_file(&sock);
        let mut g = vmm(&sock);
        let c = api(&sock);
        c.wait_ready(Duration::from_secs(10)).unwrap();
        configure_ticker(&c);
        if let Some(b) = balloon {
            assert_eq!(call(&c, "PUT", "/balloon", Some(b)).0, 204);
        }
        c.instance_start().unwrap();
        let expected = match balloon {
            None => "Balloon update error: Failed perform action on device: Device not found",
            Some(_) => "Balloon update error: Balloon: Attempting to use hinting when not enabled",
        };
        for (method, path) in [
            ("PATCH", "/balloon/hinting/start"),
            ("GET", "/balloon/hinting/status"),
            ("PATCH", "/balloon/hinting/stop"),
        ] {
            let (status, body) = call(&c, method, path, None);
            assert_eq!(status, 400, "{method} {path}: {body}");
            assert!(body.contains(expected), "{method} {path}: {body}");
        }
        if balloon.is_none() {
            // PATCH /balloon answers the same way (Firecracker's `BalloonUpdate` wording).
            let (status, body) = call(&c, "PATCH", "/balloon", Some(r#"{"amount_mib": 1}"#));
            assert_eq!(status, 400);
            assert!(body.contains(expected), "{body}");
        }
        g.signal(libc::SIGTERM);
        assert!(g.wait_exit(Duration::from_secs(10)).is_some());
    }

    let sock = dir.path().join("api.sock");
    let mut g = vmm(&sock);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    let cfg = BalloonConfig {
        amount_mib: 4,
        deflate_on_oom: false,
        stats_polling_interval_s: 1,
        free_page_hinting: true,
        free_page_reporting: true,
    };
    c.put_balloon(&cfg).unwrap();
    assert_eq!(c.balloon().unwrap(), cfg);
    for (method, path) in [
        ("PATCH", "/balloon/hinting/start"),
        ("GET", "/balloon/hinting/status"),
        ("PATCH", "/balloon/hinting/stop"),
    ] {
        let (status, body) = call(&c, method, path, None);
        assert_eq!(status, 400, "{method} {path}");
        assert!(body.contains("not supported before starting"), "{body}");
    }
    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    // The ticker has no balloon driver: status answers, a run cannot start.
    assert_eq!(
        c.balloon_hinting_status().unwrap(),
        BalloonHintingStatus {
            host_cmd: 0,
            guest_cmd: None
        }
    );
    let (status, body) = call(&c, "GET", "/balloon/hinting/status", None);
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"host_cmd": 0, "guest_cmd": null}),
        "guest_cmd is written out as null, as Firecracker writes it"
    );
    for (method, path, body) in [
        ("PATCH", "/balloon/hinting/start", Some("{}")),
        ("PATCH", "/balloon/hinting/start", None),
        ("PATCH", "/balloon/hinting/stop", None),
    ] {
        let (status, body) = call(&c, method, path, body);
        assert_eq!(status, 400, "{method} {path}");
        assert!(
            body.contains("Balloon update error: Balloon: Device not activated yet."),
            "{body}"
        );
    }
    assert!(c
        .start_balloon_hinting(&BalloonHintingStart::default())
        .is_err());

    // The flags survive a snapshot (the machine state's BalloonFreePage variant).
    let snap = full_snapshot_and_exit(&c, &mut g, dir.path());
    let sock2 = dir.path().join("api2.sock");
    let mut g2 = vmm(&sock2);
    let c2 = api(&sock2);
    c2.wait_ready(Duration::from_secs(10)).unwrap();
    c2.snapshot_load(&load_resumed(&snap)).unwrap();
    assert_eq!(c2.balloon().unwrap(), cfg);
    assert_eq!(c2.vm_config().unwrap().balloon, Some(cfg));
    assert_eq!(c2.balloon_hinting_status().unwrap().host_cmd, 0);
    g2.signal(libc::SIGTERM);
    assert!(g2.wait_exit(Duration::from_secs(10)).is_some());
}
