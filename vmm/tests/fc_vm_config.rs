//! `GET /vm/config` after `PUT /snapshot/load`: a fresh VMM that loaded a snapshot answers with
//! the loaded VM's configuration (vCPUs, memory, drives, vsock, entropy), with every key
//! Firecracker's reply has, through the real binary (seccomp on); drives' `is_root_device`,
//! `partuuid`, `cache_type` and interfaces' `mtu` read back as configured.

use std::process::Command;
use std::time::Duration;

use cairn_tests::kvm_available;
use cairn_tests::process::full_snapshot_and_exit;
use cairn_tests::process::load_resumed;
use cairn_tests::process::{api, configure_ticker, vm_config_json, Guest};
use cairn_vmm_api::config::{
    CacheType, DriveConfig, EntropyConfig, IoEngine, LoadSnapshotParams, MemBackendConfig,
    MemBackendType, NetConfig, VsockConfig,
};

fn vmm(sock: &std::path::Path) -> Guest {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock").arg(sock);
    Guest::spawn(cmd)
}

#[test]
fn vm_config_after_snapshot_load_is_the_loaded_vm_s() {
    if !kvm_available("vm_config_after_snapshot_load_is_the_loaded_vm_s") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let vsock_path = dir.path().join("v.sock");

    let sock = dir.path().join("api.sock");
    let mut g = vmm(&sock);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    c.put_drive(&DriveConfig {
        is_read_only: Some(true),
        ..DriveConfig::new("data", disk.clone(), false)
    })
    .unwrap();
    c.put_vsock(&VsockConfig {
        vsock_id: None,
        guest_cid: 7,
        uds_path: vsock_path.clone(),
    })
    .unwrap();
    c.put_entropy(&EntropyConfig::default()).unwrap();
    let before = c.vm_config().unwrap();
    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    let snap = full_snapshot_and_exit(&c, &mut g, dir.path());
    let _ = std::fs::remove_file(&vsock_path);

    let sock2 = dir.path().join("api2.sock");
    let mut g2 = vmm(&sock2);
    let c2 = api(&sock2);
    c2.wait_ready(Duration::from_secs(10)).unwrap();
    let empty = c2.vm_config().unwrap();
    assert!(empty.drives.is_empty() && empty.vsock.is_none());
    c2.snapshot_load(&LoadSnapshotParams {
        snapshot_path: snap.snapshot_path.clone(),
        mem_backend: Some(MemBackendConfig {
            backend_type: MemBackendType::File,
            backend_path: snap.mem_file_path.clone(),
        }),
        resume_vm: Some(false),
        ..LoadSnapshotParams::default()
    })
    .unwrap();

    let after = c2.vm_config().unwrap();
    assert_eq!(after.machine_config.vcpu_count, 1);
    assert_eq!(after.machine_config.mem_size_mib, 32);
    assert_eq!(after.drives.len(), 1, "{after:?}");
    assert_eq!(after.drives[0].drive_id, "data");
    assert_eq!(after.drives[0].path_on_host, disk);
    assert!(after.drives[0].is_read_only);
    assert_eq!(after.drives, before.drives);
    assert_eq!(after.vsock, before.vsock);
    assert_eq!(after.entropy, before.entropy);
    // As in Firecracker, the boot source is not part of a snapshot.
    assert_eq!(after.boot_source.kernel_image_path.as_os_str(), "");

    // Every key of Firecracker's reply, as raw JSON.
    let v = vm_config_json(&c2);
    for key in [
        "balloon",
        "drives",
        "boot-source",
        "cpu-config",
        "logger",
        "machine-config",
        "metrics",
        "mmds-config",
        "network-interfaces",
        "vsock",
        "entropy",
        "pmem",
        "memory-hotplug",
    ] {
        assert!(v.get(key).is_some(), "{key} missing from {v}");
    }
    g2.signal(libc::SIGTERM);
    assert!(g2.wait_exit(Duration::from_secs(10)).is_some());
}

/// Firecracker's `GET /vm/config` reply names `balloon`, `mmds-config`, `pmem` and
/// `memory-hotplug` even when none is configured; such a reply, saved as is, is a config file
/// another VMM boots from.
#[test]
fn a_vm_config_reply_boots_as_a_config_file() {
    if !kvm_available("a_vm_config_reply_boots_as_a_config_file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut g = vmm(&sock);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    c.put_entropy(&EntropyConfig::default()).unwrap();
    let reply = c.send("GET", "/vm/config", None).unwrap();
    assert_eq!(reply.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["pmem"], serde_json::json!([]), "{v}");
    assert!(v["memory-hotplug"].is_null(), "{v}");
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());

    let file = dir.path().join("vm.json");
    std::fs::write(&file, &reply.body).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--no-api").arg("--config-file").arg(&file);
    let mut g2 = Guest::spawn(cmd);
    g2.wait_for(".", Duration::from_secs(30)).unwrap();
    g2.signal(libc::SIGTERM);
    assert!(g2.wait_exit(Duration::from_secs(10)).is_some());
}

/// `cairn-vmm` in a network namespace of its own (`unshare -n`), where it makes its tap.
fn vmm_in_netns(sock: &std::path::Path) -> Guest {
    cairn_tests::process::vmm_in_netns(env!("CARGO_BIN_EXE_cairn-vmm"), sock, &[])
}

#[test]
fn drive_and_interface_settings_survive_a_snapshot_load() {
    if !kvm_available("drive_and_interface_settings_survive_a_snapshot_load") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP drive_and_interface_settings_survive_a_snapshot_load: needs root (a tap)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let drive = |id: &str, root: bool| {
        let path = dir.path().join(format!("{id}.img"));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        DriveConfig {
            drive_id: id.into(),
            path_on_host: path,
            is_root_device: root,
            is_read_only: Some(false),
            partuuid: root.then(|| "0eaa91a0-01".into()),
            cache_type: root.then_some(CacheType::Writeback),
            io_engine: (!root).then_some(IoEngine::Async),
            rate_limiter: None,
            socket: None,
        }
    };
    let net = |id: &str, tap: &str, mtu: Option<u16>| NetConfig {
        iface_id: id.into(),
        host_dev_name: tap.into(),
        guest_mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        mtu,
    };

    let sock = dir.path().join("api.sock");
    let mut g = vmm_in_netns(&sock);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    c.put_drive(&drive("rootfs", true)).unwrap();
    c.put_drive(&drive("data", false)).unwrap();
    c.put_network_interface(&net("eth0", "settap0", Some(1400)))
        .unwrap();
    c.put_network_interface(&net("eth1", "settap1", None))
        .unwrap();
    let before = c.vm_config().unwrap();
    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    let snap = full_snapshot_and_exit(&c, &mut g, dir.path());

    let sock2 = dir.path().join("api2.sock");
    let mut g2 = vmm_in_netns(&sock2);
    let c2 = api(&sock2);
    c2.wait_ready(Duration::from_secs(10)).unwrap();
    c2.snapshot_load(&load_resumed(&snap)).unwrap();
    g2.wait_for(".", Duration::from_secs(30)).unwrap();
    let after = c2.vm_config().unwrap();
    assert_eq!(after.drives, before.drives);
    assert_eq!(after.network_interfaces, before.network_interfaces);
    let v = vm_config_json(&c2);
    assert_eq!(v["drives"][0]["drive_id"], "rootfs", "{v}");
    assert_eq!(v["drives"][0]["is_root_device"], true, "{v}");
    assert_eq!(v["drives"][0]["partuuid"], "0eaa91a0-01", "{v}");
    assert_eq!(v["drives"][0]["cache_type"], "Writeback", "{v}");
    assert_eq!(v["drives"][1]["is_root_device"], false, "{v}");
    assert_eq!(v["drives"][0]["io_engine"], "Sync", "{v}");
    assert_eq!(v["drives"][1]["io_engine"], "Async", "{v}");
    // The Async drive really runs on io_uring again after the load.
    assert!(has_io_uring(g2.pid()), "no io_uring in the loaded VMM");
    assert_eq!(v["network-interfaces"][0]["mtu"], 1400, "{v}");
    assert!(v["network-interfaces"][1]["mtu"].is_null(), "{v}");

    // A snapshot of the loaded VM keeps them too.
    let dir2 = dir.path().join("second");
    std::fs::create_dir(&dir2).unwrap();
    let snap2 = full_snapshot_and_exit(&c2, &mut g2, &dir2);
    let sock3 = dir.path().join("api3.sock");
    let mut g3 = vmm_in_netns(&sock3);
    let c3 = api(&sock3);
    c3.wait_ready(Duration::from_secs(10)).unwrap();
    c3.snapshot_load(&load_resumed(&snap2)).unwrap();
    let again = c3.vm_config().unwrap();
    assert_eq!(again.drives, before.drives);
    assert_eq!(again.network_interfaces, before.network_interfaces);
    g3.signal(libc::SIGTERM);
    assert!(g3.wait_exit(Duration::from_secs(10)).is_some());
}

/// Whether process `pid` holds an io_uring (an `Async` drive's ring).
fn has_io_uring(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|l| l.to_string_lossy().contains("io_uring"))
}
