//! Rate limiters through the real binary (seccomp on): a drive with Firecracker's
//! `rate_limiter` boots (its refill timer is created on the filtered VMM thread), `GET
//! /vm/config` shows the limiter as Firecracker writes it, and a snapshot keeps it: a fresh VMM
//! that loads the snapshot rebuilds the limited drive (creating its timer under the filter too)
//! and reports the same limiter. `PATCH /drives/{id}` and `PATCH /network-interfaces/{id}` are
//! refused before boot as Firecracker refuses them, and after boot change the limiters and the
//! drive's backing file (which the snapshot then names). As root, the same for a network interface's
//! `rx_rate_limiter`/`tx_rate_limiter`, each VMM in its own network namespace (`unshare -n`,
//! where its tap is made).

use std::process::Command;
use std::time::Duration;

use cairn_tests::process::{api, configure_ticker, vm_config_json, Guest};
use cairn_tests::process::{full_snapshot_and_exit, load_resumed};
use cairn_tests::{guests, kvm_available};
use cairn_vmm_api::config::{
    DriveConfig, DriveUpdate, EntropyConfig, NetConfig, NetworkInterfaceUpdate, RateLimiterConfig,
    TokenBucketConfig,
};

fn vmm(sock: &std::path::Path) -> Guest {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock").arg(sock);
    Guest::spawn(cmd)
}

/// A VMM in a network namespace of its own.
fn vmm_in_netns(sock: &std::path::Path) -> Guest {
    cairn_tests::process::vmm_in_netns(env!("CARGO_BIN_EXE_cairn-vmm"), sock, &[])
}

/// Save a paused VM's snapshot in `dir`, stop `g`, and load the snapshot into `g2` (resumed).
fn snapshot_into(
    c: &cairn_vmm_api::Client,
    g: &mut Guest,
    c2: &cairn_vmm_api::Client,
    dir: &std::path::Path,
) {
    let snap = full_snapshot_and_exit(c, g, dir);
    c2.wait_ready(Duration::from_secs(10)).unwrap();
    c2.snapshot_load(&load_resumed(&snap)).unwrap();
}

fn limiter() -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size: 1 << 20,
            one_time_burst: Some(4096),
            refill_time: 100,
        }),
        ops: Some(TokenBucketConfig {
            size: 100,
            one_time_burst: None,
            refill_time: 1000,
        }),
    }
}

#[test]
fn rate_limited_drive_boots_and_survives_a_snapshot() {
    if !kvm_available("rate_limited_drive_boots_and_survives_a_snapshot") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let sock = dir.path().join("api.sock");
    let mut g = vmm(&sock);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    c.put_drive(&DriveConfig {
        rate_limiter: Some(limiter()),
        ..DriveConfig::new("data", disk.clone(), false)
    })
    .unwrap();
    // A rate limiter that is not an object, or has unknown keys, is refused before boot.
    let bad = c
        .send(
            "PUT",
            "/drives/other",
            Some(
                format!(
                    r#"{{"drive_id": "other", "path_on_host": "{}", "is_root_device": false, "rate_limiter": {{"iops": {{}}}}}}"#,
                    disk.display()
                )
                .as_bytes(),
            ),
        )
        .unwrap();
    assert_eq!(bad.status, 400, "{}", String::from_utf8_lossy(&bad.body));
    // PATCH before boot: Firecracker's refusal.
    let early = c
        .patch_drive(&DriveUpdate {
            drive_id: "data".into(),
            path_on_host: None,
            rate_limiter: Some(limiter()),
        })
        .unwrap_err();
    assert!(
        early
            .to_string()
            .contains("not supported before starting the microVM"),
        "{early}"
    );

    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    let v = vm_config_json(&c);
    assert_eq!(
        v["drives"][0]["rate_limiter"],
        serde_json::json!({
            "bandwidth": {"size": 1048576, "one_time_burst": 4096, "refill_time": 100},
            "ops": {"size": 100, "one_time_burst": null, "refill_time": 1000},
        })
    );

    // PATCH after boot: new ops bucket (bandwidth kept), then a new backing file.
    c.patch_drive(&DriveUpdate {
        drive_id: "data".into(),
        path_on_host: None,
        rate_limiter: Some(RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size: 50,
                one_time_burst: None,
                refill_time: 500,
            }),
        }),
    })
    .unwrap();
    let v = serde_json::to_value(&c.vm_config().unwrap().drives[0]).unwrap();
    assert_eq!(v["rate_limiter"]["bandwidth"]["size"], 1048576, "{v}");
    assert_eq!(v["rate_limiter"]["ops"]["size"], 50, "{v}");
    let disk2 = dir.path().join("data2.img");
    std::fs::File::create(&disk2)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    c.patch_drive(&DriveUpdate {
        drive_id: "data".into(),
        path_on_host: Some(disk2.clone()),
        rate_limiter: None,
    })
    .unwrap();
    assert_eq!(c.vm_config().unwrap().drives[0].path_on_host, disk2);
    // Refusals: a missing file (nothing changes), an unknown drive, a mismatched id, a key
    // PATCH does not take.
    let missing = c
        .patch_drive(&DriveUpdate {
            drive_id: "data".into(),
            path_on_host: Some(dir.path().join("nope.img")),
            rate_limiter: None,
        })
        .unwrap_err();
    assert_eq!(missing.status(), Some(400), "{missing}");
    assert_eq!(c.vm_config().unwrap().drives[0].path_on_host, disk2);
    let unknown = c
        .patch_drive(&DriveUpdate {
            drive_id: "other".into(),
            path_on_host: None,
            rate_limiter: Some(limiter()),
        })
        .unwrap_err();
    assert_eq!(unknown.status(), Some(400), "{unknown}");
    for body in [
        r#"{"drive_id": "other", "rate_limiter": {}}"#,
        r#"{"drive_id": "data", "is_read_only": true}"#,
    ] {
        let r = c
            .send("PATCH", "/drives/data", Some(body.as_bytes()))
            .unwrap();
        assert_eq!(
            r.status,
            400,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    let sock2 = dir.path().join("api2.sock");
    let mut g2 = vmm(&sock2);
    let c2 = api(&sock2);
    snapshot_into(&c, &mut g, &c2, dir.path());
    g2.wait_for(".", Duration::from_secs(30)).unwrap();
    let after = c2.vm_config().unwrap();
    let v = serde_json::to_value(&after.drives[0]).unwrap();
    assert_eq!(v["drive_id"], "data");
    // The snapshot names the swapped-in file, and the limiter as patched.
    assert_eq!(after.drives[0].path_on_host, disk2);
    assert_eq!(v["rate_limiter"]["bandwidth"]["size"], 1048576);
    assert_eq!(
        v["rate_limiter"]["bandwidth"]["one_time_burst"], 4096,
        "as configured"
    );
    assert_eq!(v["rate_limiter"]["ops"]["refill_time"], 500);
    g2.signal(libc::SIGTERM);
    assert!(g2.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn rate_limited_entropy_device_boots_and_survives_a_snapshot() {
    if !kvm_available("rate_limited_entropy_device_boots_and_survives_a_snapshot") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut g = vmm(&sock);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    // A limiter with an unknown key is refused, as for a drive.
    let bad = c
        .send(
            "PUT",
            "/entropy",
            Some(br#"{"rate_limiter": {"iops": {}}}"#),
        )
        .unwrap();
    assert_eq!(bad.status, 400, "{}", String::from_utf8_lossy(&bad.body));
    c.put_entropy(&EntropyConfig {
        rate_limiter: Some(limiter()),
    })
    .unwrap();
    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    let expected = serde_json::json!({
        "bandwidth": {"size": 1048576, "one_time_burst": 4096, "refill_time": 100},
        "ops": {"size": 100, "one_time_burst": null, "refill_time": 1000},
    });
    let v = vm_config_json(&c);
    assert_eq!(v["entropy"]["rate_limiter"], expected);

    let sock2 = dir.path().join("api2.sock");
    let mut g2 = vmm(&sock2);
    let c2 = api(&sock2);
    snapshot_into(&c, &mut g, &c2, dir.path());
    g2.wait_for(".", Duration::from_secs(30)).unwrap();
    let v = vm_config_json(&c2);
    assert_eq!(v["entropy"]["rate_limiter"], expected, "after the load");
    g2.signal(libc::SIGTERM);
    assert!(g2.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn rate_limited_network_interface_boots_and_survives_a_snapshot() {
    if !kvm_available("rate_limited_network_interface_boots_and_survives_a_snapshot") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP rate_limited_network_interface_boots_and_survives_a_snapshot: needs root (it makes a tap)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut g = vmm_in_netns(&sock);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    let tx = RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig {
            size: 5000,
            one_time_burst: None,
            refill_time: 100,
        }),
        ops: Some(TokenBucketConfig {
            size: 20,
            one_time_burst: None,
            refill_time: 100,
        }),
    };
    c.put_network_interface(&NetConfig {
        iface_id: "eth0".into(),
        host_dev_name: "fc5rltap0".into(),
        guest_mac: Some("06:00:ac:10:00:02".into()),
        rx_rate_limiter: Some(limiter()),
        tx_rate_limiter: Some(tx),
        mtu: None,
    })
    .unwrap();
    let patch = NetworkInterfaceUpdate {
        iface_id: "eth0".into(),
        rx_rate_limiter: None,
        tx_rate_limiter: Some(RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 0,
                one_time_burst: None,
                refill_time: 0,
            }),
            ops: Some(TokenBucketConfig {
                size: 10,
                one_time_burst: None,
                refill_time: 100,
            }),
        }),
    };
    let early = c.patch_network_interface(&patch).unwrap_err();
    assert!(
        early
            .to_string()
            .contains("not supported before starting the microVM"),
        "{early}"
    );
    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    // After boot: replace tx's buckets (a zero-size bucket removes it, as in Firecracker).
    c.patch_network_interface(&patch).unwrap();
    let unknown = c
        .patch_network_interface(&NetworkInterfaceUpdate {
            iface_id: "eth9".into(),
            ..patch.clone()
        })
        .unwrap_err();
    assert_eq!(unknown.status(), Some(400), "{unknown}");
    let before = c.vm_config().unwrap();
    let v = serde_json::to_value(&before.network_interfaces[0]).unwrap();
    assert_eq!(v["rx_rate_limiter"]["bandwidth"]["size"], 1048576, "{v}");
    assert_eq!(
        v["tx_rate_limiter"],
        serde_json::json!({"bandwidth": null, "ops": {"size": 10, "one_time_burst": null, "refill_time": 100}})
    );

    let sock2 = dir.path().join("api2.sock");
    let mut g2 = vmm_in_netns(&sock2);
    let c2 = api(&sock2);
    snapshot_into(&c, &mut g, &c2, dir.path());
    g2.wait_for(".", Duration::from_secs(30)).unwrap();
    let after = c2.vm_config().unwrap();
    let v = serde_json::to_value(&after.network_interfaces[0]).unwrap();
    assert_eq!(v["rx_rate_limiter"]["ops"]["size"], 100, "{v}");
    assert_eq!(v["tx_rate_limiter"]["ops"]["size"], 10, "{v}");
    assert!(v["tx_rate_limiter"]["bandwidth"].is_null(), "{v}");
    g2.signal(libc::SIGTERM);
    assert!(g2.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn patch_path_is_refused_on_a_drive_in_the_checkpoint_store() {
    if !kvm_available("patch_path_is_refused_on_a_drive_in_the_checkpoint_store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock")
        .arg(&sock)
        .arg("--checkpoint-dir")
        .arg(dir.path().join("ckpts"));
    let mut g = Guest::spawn(cmd);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    c.put_drive(&DriveConfig::new("data", disk.clone(), false))
        .unwrap();
    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    let err = c
        .patch_drive(&DriveUpdate {
            drive_id: "data".into(),
            path_on_host: Some(disk.clone()),
            rate_limiter: None,
        })
        .unwrap_err();
    assert!(
        matches!(err.status(), Some(400)) && err.to_string().contains("checkpoint store"),
        "{err}"
    );
    // A rate limiter update is fine there.
    c.patch_drive(&DriveUpdate {
        drive_id: "data".into(),
        path_on_host: None,
        rate_limiter: Some(limiter()),
    })
    .unwrap();
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());
}

/// The drive PATCHes of Firecracker's API, before and after boot, as raw requests against
/// `program`: each answer's status, in order.
fn patch_statuses(program: &std::path::Path, extra: &[&str]) -> Vec<u16> {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    for (p, len) in [(&a, 1 << 20), (&b, 2 << 20)] {
        std::fs::File::create(p).unwrap().set_len(len).unwrap();
    }
    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new(program);
    cmd.arg("--api-sock").arg(&sock).args(extra);
    let g = Guest::spawn(cmd);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    let send = |method: &str, path: &str, body: String| {
        c.send(method, path, Some(body.as_bytes())).unwrap().status
    };
    let mut out = vec![
        send(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32}"#.into(),
        ),
        send(
            "PUT",
            "/boot-source",
            format!(
                r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
                guests::TICKER64
            ),
        ),
        send(
            "PUT",
            "/drives/data",
            format!(
                r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "rate_limiter": {{"bandwidth": {{"size": 1048576, "one_time_burst": 4096, "refill_time": 100}}}}}}"#,
                a.display()
            ),
        ),
        send(
            "PATCH",
            "/drives/data",
            r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 50, "refill_time": 500}}}"#
                .into(),
        ),
        send(
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.into(),
        ),
    ];
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    for (path, body) in [
        (
            "/drives/data",
            r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 50, "refill_time": 500}}}"#
                .to_string(),
        ),
        (
            "/drives/data",
            format!(
                r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
                b.display()
            ),
        ),
        (
            "/drives/data",
            format!(
                r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
                dir.path().join("nope.img").display()
            ),
        ),
        (
            "/drives/other",
            r#"{"drive_id": "other", "rate_limiter": {}}"#.into(),
        ),
        (
            "/drives/data",
            r#"{"drive_id": "data", "is_read_only": true}"#.into(),
        ),
        (
            "/drives/data",
            r#"{"drive_id": "data", "rate_limiter": {}}"#.into(),
        ),
        ("/drives/data", r#"{"drive_id": "data"}"#.into()),
        (
            "/drives/data",
            r#"{"drive_id": "data", "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}"#
                .into(),
        ),
        (
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "rx_rate_limiter": {}}"#.into(),
        ),
    ] {
        out.push(send("PATCH", path, body));
    }
    let v = vm_config_json(&c);
    assert_eq!(
        v["drives"][0]["path_on_host"],
        b.display().to_string(),
        "{v}"
    );
    assert_eq!(
        v["drives"][0]["rate_limiter"],
        serde_json::json!({"bandwidth": null, "ops": {"size": 50, "one_time_burst": null, "refill_time": 500}}),
        "{v}"
    );
    out
}

#[test]
fn drive_patches_answer_as_firecracker_does() {
    if !kvm_available("drive_patches_answer_as_firecracker_does") {
        return;
    }
    let expected = [
        204, 204, 204, 400, 204, // configure, PATCH before boot, start
        204, 204, 400, 400, 400, 204, 400, 204, 400,
    ];
    let cairn = patch_statuses(std::path::Path::new(env!("CARGO_BIN_EXE_cairn-vmm")), &[]);
    assert_eq!(cairn, expected);
    // With FIRECRACKER=/path/to/firecracker, the same requests against it.
    let Some(fc) = std::env::var_os("FIRECRACKER") else {
        println!("SKIP the Firecracker comparison: FIRECRACKER is not set");
        return;
    };
    let extra: &[&str] = if std::env::var("FIRECRACKER_NO_SECCOMP").as_deref() == Ok("1") {
        &["--level", "Off", "--no-seccomp"]
    } else {
        &["--level", "Off"]
    };
    assert_eq!(patch_statuses(std::path::Path::new(&fc), extra), expected);
}

#[test]
fn config_file_rate_limiters_are_taken() {
    if !kvm_available("config_file_rate_limiters_are_taken") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": guests::TICKER64, "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        "drives": [{
            "drive_id": "data", "path_on_host": disk, "is_root_device": false,
            "rate_limiter": {"bandwidth": {"size": 4096, "refill_time": 10}, "ops": null}
        }]
    });
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, serde_json::to_vec(&config).unwrap()).unwrap();
    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock")
        .arg(&sock)
        .arg("--config-file")
        .arg(&cfg);
    let mut g = Guest::spawn(cmd);
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    let v = vm_config_json(&api(&sock));
    assert_eq!(
        v["drives"][0]["rate_limiter"],
        serde_json::json!({"bandwidth": {"size": 4096, "one_time_burst": null, "refill_time": 10}, "ops": null})
    );
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());

    // A malformed limiter in the file is refused at start.
    let bad = serde_json::json!({
        "boot-source": {"kernel_image_path": guests::TICKER64},
        "drives": [{
            "drive_id": "data", "path_on_host": disk, "is_root_device": false,
            "rate_limiter": {"bandwidth": {"size": 4096}}
        }]
    });
    std::fs::write(&cfg, serde_json::to_vec(&bad).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"))
        .arg("--config-file")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refill_time"), "{stderr}");
}
