//! MMDS through the real binary (seccomp on), with a tiny guest: `PUT /mmds/config`, the data
//! store before and after boot (PUT, PATCH, GET, the size limit's 413), `GET /vm/config`'s
//! `mmds-config`, `--metadata`, and a snapshot: a fresh VMM that loads it has MMDS configured as
//! before (version, address, interface) and an empty store, as in Firecracker. Each VMM runs in a
//! network namespace of its own (`unshare -n`), where its tap is made, so it needs root.

use std::process::Command;
use std::time::Duration;

use cairn_tests::kvm_available;
use cairn_tests::process::{api, configure_ticker, vm_config_json, Guest};
use cairn_tests::process::{full_snapshot_and_exit, load_resumed};
use cairn_vmm_api::config::{MmdsConfig, MmdsVersion, NetConfig};
use serde_json::json;

fn vmm_in_netns(sock: &std::path::Path, extra: &[&str]) -> Guest {
    cairn_tests::process::vmm_in_netns(env!("CARGO_BIN_EXE_cairn-vmm"), sock, extra)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn net() -> NetConfig {
    NetConfig {
        iface_id: "eth0".into(),
        host_dev_name: "mmdstap0".into(),
        guest_mac: Some("06:00:ac:10:00:02".into()),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        mtu: None,
    }
}

#[test]
fn mmds_api_before_and_after_boot_and_across_a_snapshot() {
    if !kvm_available("mmds_api_before_and_after_boot_and_across_a_snapshot") {
        return;
    }
    if !is_root() {
        println!("SKIP mmds_api_before_and_after_boot_and_across_a_snapshot: needs root (it makes a tap)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let metadata = dir.path().join("metadata.json");
    std::fs::write(&metadata, r#"{"from": "file"}"#).unwrap();
    let sock = dir.path().join("api.sock");
    let meta = metadata.to_str().unwrap();
    let mut g = vmm_in_netns(&sock, &["--mmds-size-limit", "200", "--metadata", meta]);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    assert_eq!(c.mmds().unwrap(), json!({"from": "file"}));
    let mut cfg = MmdsConfig {
        version: MmdsVersion::V2,
        network_interfaces: vec!["eth0".into()],
        ipv4_address: Some("169.254.170.2".parse().unwrap()),
        imds_compat: false,
    };
    let err = c.put_mmds_config(&cfg).unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(
        err.to_string()
            .contains("does not correspond to any existing network interface"),
        "{err}"
    );
    c.put_network_interface(&net()).unwrap();
    c.put_mmds_config(&cfg).unwrap();
    let v = vm_config_json(&c);
    assert_eq!(
        v["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2", "imds_compat": false})
    );
    c.put_mmds(&json!({"latest": {"meta-data": {"ami-id": "ami-1"}}}))
        .unwrap();
    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();

    // After boot: the store is used as is; MMDS config is pre-boot only.
    c.patch_mmds(&json!({"latest": {"user-data": "u"}}))
        .unwrap();
    assert_eq!(
        c.mmds().unwrap(),
        json!({"latest": {"meta-data": {"ami-id": "ami-1"}, "user-data": "u"}})
    );
    let big = json!({"x": "y".repeat(300)});
    let err = c.put_mmds(&big).unwrap_err();
    assert_eq!(err.status(), Some(413), "{err}");
    assert!(
        err.to_string()
            .contains("The MMDS patch request doesn't fit."),
        "{err}"
    );
    let err = c.patch_mmds(&big).unwrap_err();
    assert_eq!(err.status(), Some(413), "{err}");
    cfg.version = MmdsVersion::V1;
    let err = c.put_mmds_config(&cfg).unwrap_err();
    assert!(
        err.to_string().contains("after starting the microVM"),
        "{err}"
    );

    // A snapshot keeps the settings, not the data.
    let snap = full_snapshot_and_exit(&c, &mut g, dir.path());
    let sock2 = dir.path().join("api2.sock");
    let mut g2 = vmm_in_netns(&sock2, &[]);
    let c2 = api(&sock2);
    c2.wait_ready(Duration::from_secs(10)).unwrap();
    c2.snapshot_load(&load_resumed(&snap)).unwrap();
    g2.wait_for(".", Duration::from_secs(30)).unwrap();
    let v = vm_config_json(&c2);
    assert_eq!(
        v["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2", "imds_compat": false})
    );
    assert_eq!(c2.mmds().unwrap(), json!({}));
    c2.put_mmds(&json!({"again": "yes"})).unwrap();
    assert_eq!(c2.mmds().unwrap(), json!({"again": "yes"}));
    g2.signal(libc::SIGTERM);
    assert!(g2.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn without_mmds_before_boot_the_store_is_refused_after() {
    if !kvm_available("without_mmds_before_boot_the_store_is_refused_after") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock").arg(&sock);
    let mut g = Guest::spawn(cmd);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    assert!(vm_config_json(&c)["mmds-config"].is_null());
    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    for err in [
        c.mmds().unwrap_err(),
        c.put_mmds(&json!({"a": 1})).unwrap_err(),
    ] {
        assert_eq!(err.status(), Some(400));
        assert!(
            err.to_string()
                .contains("The MMDS data store is not initialized."),
            "{err}"
        );
    }
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());
}
