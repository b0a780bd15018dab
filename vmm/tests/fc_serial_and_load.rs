//! Firecracker 1.16's `PUT /serial` (console output to a file) and snapshot load's
//! `vsock_override` and `clock_realtime`, through the real `cairn-vmm` binary (seccomp on).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_tests::kvm_available;
use cairn_tests::process::{api, configure_ticker, wait_until, Guest};
use cairn_tests::process::{full_snapshot_and_exit, load_resumed};
use cairn_vmm_api::config::{
    ActionType, CreateSnapshotParams, LoadSnapshotParams, MetricsConfig, SerialConfig,
    TokenBucketConfig, VsockConfig, VsockOverride,
};
use cairn_vmm_api::{Client, InstanceState};

fn vmm(sock: &Path) -> (Guest, Client) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock").arg(sock);
    let g = Guest::spawn(cmd);
    let c = api(sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    (g, c)
}

fn boot_ticker(c: &Client) {
    configure_ticker(c);
    c.instance_start().unwrap();
}

#[test]
fn serial_output_goes_to_the_put_serial_file() {
    if !kvm_available("serial_output_goes_to_the_put_serial_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("serial.out");
    let (mut g, c) = vmm(&dir.path().join("api.sock"));
    c.put_serial(&SerialConfig {
        serial_out_path: Some(out.clone()),
        rate_limiter: None,
    })
    .unwrap();
    boot_ticker(&c);
    wait_until(
        "the guest's dots in the serial file",
        Duration::from_secs(30),
        || std::fs::read_to_string(&out).is_ok_and(|t| t.contains('.')),
    );
    // After boot, Firecracker refuses it.
    assert_eq!(
        c.put_serial(&SerialConfig::default()).unwrap_err().status(),
        Some(400)
    );
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn serial_rate_limiter_drops_output_beyond_its_bucket() {
    if !kvm_available("serial_rate_limiter_drops_output_beyond_its_bucket") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("serial.out");
    let metrics = dir.path().join("metrics.json");
    let (mut g, c) = vmm(&dir.path().join("api.sock"));
    // 3 bytes of burst and a bucket of 4 that takes a day to refill: the ticker's dots beyond
    // the first 7 bytes are dropped, and counted.
    c.put_serial(&SerialConfig {
        serial_out_path: Some(out.clone()),
        rate_limiter: Some(TokenBucketConfig {
            size: 4,
            one_time_burst: Some(3),
            refill_time: 86_400_000,
        }),
    })
    .unwrap();
    c.put_metrics(&MetricsConfig {
        metrics_path: metrics.clone(),
    })
    .unwrap();
    boot_ticker(&c);
    let dropped = || {
        c.action(ActionType::FlushMetrics).unwrap();
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        let last = text.lines().last().unwrap_or("{}").to_string();
        let v: serde_json::Value = serde_json::from_str(&last).unwrap();
        v["uart"]["rate_limiter_dropped_bytes"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until(
        "the serial rate limiter dropping output",
        Duration::from_secs(30),
        || dropped() > 0,
    );
    let written = std::fs::read(&out).unwrap();
    assert!(
        !written.is_empty() && written.len() <= 7,
        "{} bytes written: {:?}",
        written.len(),
        String::from_utf8_lossy(&written)
    );
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());
}

/// Boots the ticker with a vsock at `uds`, pauses it and writes a Full snapshot into `dir`.
fn snapshot_with_vsock(dir: &Path, uds: &Path) -> CreateSnapshotParams {
    let (mut g, c) = vmm(&dir.join("api0.sock"));
    c.put_vsock(&VsockConfig {
        vsock_id: None,
        guest_cid: 3,
        uds_path: uds.to_path_buf(),
    })
    .unwrap();
    boot_ticker(&c);
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    full_snapshot_and_exit(&c, &mut g, dir)
}

#[test]
fn snapshot_load_takes_vsock_override_and_clock_realtime() {
    if !kvm_available("snapshot_load_takes_vsock_override_and_clock_realtime") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let old_uds = dir.path().join("old.sock");
    let snap = snapshot_with_vsock(dir.path(), &old_uds);

    // vsock_override: the restored device listens on the new path.
    let new_uds = dir.path().join("new.sock");
    let (mut g, c) = vmm(&dir.path().join("api1.sock"));
    c.snapshot_load(&LoadSnapshotParams {
        vsock_override: Some(VsockOverride {
            uds_path: new_uds.clone(),
        }),
        ..load_resumed(&snap)
    })
    .unwrap();
    assert!(new_uds.exists(), "no socket at {}", new_uds.display());
    assert_eq!(
        c.vm_config().unwrap().vsock.map(|v| v.uds_path),
        Some(new_uds.clone())
    );
    assert_eq!(c.describe().unwrap().state, InstanceState::Running);
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());

    // clock_realtime: loaded paused, clock set, then resumed. Where the snapshot's host clock
    // carried no realtime stamp, the load fails and the process ends, as in Firecracker.
    let _ = std::fs::remove_file(&old_uds);
    let (mut g, c) = vmm(&dir.path().join("api2.sock"));
    match c.snapshot_load(&LoadSnapshotParams {
        clock_realtime: Some(true),
        ..load_resumed(&snap)
    }) {
        Ok(()) => {
            assert_eq!(c.describe().unwrap().state, InstanceState::Running);
            g.wait_for(".", Duration::from_secs(30)).unwrap();
            g.signal(libc::SIGTERM);
            assert!(g.wait_exit(Duration::from_secs(10)).is_some());
        }
        Err(e) => {
            assert!(e.to_string().contains("realtime stamp"), "{e}");
            println!("NOTE: this host's kvmclock has no realtime stamp: {e}");
            let status = g.wait_exit(Duration::from_secs(10)).expect("the VMM ends");
            assert_eq!(status.code(), Some(1));
        }
    }
}

#[test]
fn a_vsock_override_without_a_vsock_ends_the_load() {
    if !kvm_available("a_vsock_override_without_a_vsock_ends_the_load") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut g, c) = vmm(&dir.path().join("api0.sock"));
    boot_ticker(&c);
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    let snap = full_snapshot_and_exit(&c, &mut g, dir.path());

    let (mut g, c) = vmm(&dir.path().join("api1.sock"));
    let err = c
        .snapshot_load(&LoadSnapshotParams {
            vsock_override: Some(VsockOverride {
                uds_path: dir.path().join("v.sock"),
            }),
            ..load_resumed(&snap)
        })
        .unwrap_err();
    assert!(err.to_string().contains("no vsock device"), "{err}");
    let status = g.wait_exit(Duration::from_secs(10)).expect("the VMM ends");
    assert_eq!(status.code(), Some(1));
}
