//! Tests of the device, action, snapshot and checkpoint configuration types: each rule, and
//! the errors that name the field.

use super::tests::{valid_base, validate_err};
use super::*;

fn drive(id: &str, root: bool) -> DriveConfig {
    DriveConfig::new(id, "disk.img", root)
}

#[test]
fn drive_rules() {
    drive("root_fs1", true).validate().unwrap();
    for (id, words) in [
        ("", "empty"),
        ("a-b", "only letters"),
        ("a/b", "only letters"),
    ] {
        let err = drive(id, false).validate().unwrap_err();
        assert_eq!(err.field(), "drive_id");
        assert!(err.to_string().contains(words), "{err}");
    }
    assert!(drive(&"x".repeat(65), false).validate().is_err());
    let mut d = drive("a", false);
    d.path_on_host = PathBuf::new();
    assert_eq!(d.validate().unwrap_err().field(), "path_on_host");
    let mut d = drive("a", false);
    d.io_engine = Some(IoEngine::Async);
    d.validate().unwrap();
    let mut d = drive("a", false);
    d.socket = Some("/vhost.sock".into());
    assert_eq!(d.validate().unwrap_err().field(), "socket");
    assert!(parse_json::<DriveConfig>(
        br#"{"drive_id": "a", "path_on_host": "/a", "is_root_device": false, "rate_limiter": 5}"#
    )
    .is_err());
    let d: DriveConfig = parse_json(
        br#"{"drive_id": "a", "path_on_host": "/a", "is_root_device": false,
             "rate_limiter": {"bandwidth": {"size": 1000, "one_time_burst": 5, "refill_time": 100}}}"#,
    )
    .unwrap();
    let rl = d.rate_limiter.unwrap();
    assert_eq!(rl.bandwidth.unwrap().one_time_burst, Some(5));
    assert_eq!(rl.ops, None);
    assert!(
        parse_json::<RateLimiterConfig>(br#"{"bandwidth": null, "iops": {}}"#).is_err(),
        "unknown keys refused, as Firecracker does"
    );
    let mut d = drive("a", true);
    d.partuuid = Some("a b".into());
    assert_eq!(d.validate().unwrap_err().field(), "partuuid");

    let mut cfg = valid_base();
    cfg.drives = vec![drive("a", true), drive("b", false), drive("a", false)];
    let err = validate_err(&cfg);
    assert_eq!(err.field(), "drives[2].drive_id");
    assert!(err.to_string().contains("duplicate"), "{err}");
    cfg.drives = vec![drive("a", true), drive("b", true)];
    assert_eq!(validate_err(&cfg).field(), "drives[1].is_root_device");
    cfg.drives = vec![drive("a", false), drive("b-", false)];
    assert_eq!(validate_err(&cfg).field(), "drives[1].drive_id");
}

fn net(id: &str, tap: &str, mac: Option<&str>) -> NetConfig {
    NetConfig {
        iface_id: id.into(),
        host_dev_name: tap.into(),
        guest_mac: mac.map(Into::into),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        mtu: None,
    }
}

#[test]
fn mac_addresses() {
    assert_eq!(
        parse_mac("aa:bb:cc:dd:ee:ff"),
        Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
    );
    assert_eq!(
        parse_mac("06:00:AC:10:00:02"),
        Some([6, 0, 0xac, 0x10, 0, 2])
    );
    for bad in [
        "",
        "aa:bb:cc:dd:ee",
        "aa:bb:cc:dd:ee:ff:00",
        "aa-bb-cc-dd-ee-ff",
        "a:bb:cc:dd:ee:fff",
        "gg:bb:cc:dd:ee:ff",
        "+a:bb:cc:dd:ee:ff",
    ] {
        assert_eq!(parse_mac(bad), None, "{bad}");
    }
}

#[test]
fn net_rules() {
    net("eth0", "tap0", Some("aa:bb:cc:dd:ee:ff"))
        .validate()
        .unwrap();
    net("eth0", "tap0", None).validate().unwrap();
    let err = net("eth0", "tap0", Some("aa:bb:cc:dd:ee"))
        .validate()
        .unwrap_err();
    assert_eq!(err.field(), "guest_mac");
    assert!(err.to_string().contains("aa:bb:cc:dd:ee:ff"), "{err}");
    assert_eq!(
        net("eth 0", "tap0", None).validate().unwrap_err().field(),
        "iface_id"
    );
    for tap in ["", "a_very_long_tap_name", "ta/p", "ta p"] {
        assert_eq!(
            net("e", tap, None).validate().unwrap_err().field(),
            "host_dev_name"
        );
    }
    assert!(parse_json::<NetConfig>(
        br#"{"iface_id": "e", "host_dev_name": "t", "tx_rate_limiter": "fast"}"#
    )
    .is_err());

    let mut cfg = valid_base();
    cfg.network_interfaces = vec![net("a", "tap0", None), net("a", "tap1", None)];
    assert_eq!(validate_err(&cfg).field(), "network-interfaces[1].iface_id");
    cfg.network_interfaces = vec![net("a", "tap0", None), net("b", "tap0", None)];
    assert_eq!(
        validate_err(&cfg).field(),
        "network-interfaces[1].host_dev_name"
    );
    cfg.network_interfaces = vec![
        net("a", "tap0", Some("aa:bb:cc:dd:ee:ff")),
        net("b", "tap1", Some("AA:BB:CC:DD:EE:FF")),
    ];
    assert_eq!(
        validate_err(&cfg).field(),
        "network-interfaces[1].guest_mac"
    );
    cfg.network_interfaces = vec![net("a", "tap0", Some("zz"))];
    assert_eq!(
        validate_err(&cfg).field(),
        "network-interfaces[0].guest_mac"
    );
}

#[test]
fn vsock_rules() {
    let vsock = |cid: u32, path: &str| VsockConfig {
        vsock_id: None,
        guest_cid: cid,
        uds_path: path.into(),
    };
    vsock(3, "v.sock").validate().unwrap();
    for cid in [0, 1, 2, u32::MAX] {
        assert_eq!(
            vsock(cid, "v.sock").validate().unwrap_err().field(),
            "guest_cid"
        );
    }
    assert_eq!(vsock(3, "").validate().unwrap_err().field(), "uds_path");
    let v: VsockConfig =
        parse_json(br#"{"vsock_id": "vsock0", "guest_cid": 52, "uds_path": "/v"}"#).unwrap();
    assert_eq!(v.vsock_id.as_deref(), Some("vsock0"));
    let mut cfg = valid_base();
    cfg.vsock = Some(vsock(2, "v"));
    assert_eq!(validate_err(&cfg).field(), "vsock.guest_cid");
}

#[test]
fn entropy_logger_metrics_rules() {
    let e: EntropyConfig =
        parse_json(br#"{"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 10}}}"#).unwrap();
    e.validate().unwrap();
    assert_eq!(e.rate_limiter.unwrap().bandwidth.unwrap().refill_time, 10);
    assert_eq!(
        parse_json::<EntropyConfig>(b"{}").unwrap(),
        EntropyConfig::default()
    );
    // As Firecracker's: a limiter that is not an object, has unknown keys, or a bucket without
    // its refill time, is refused.
    for bad in [
        &br#"{"rate_limiter": 5}"#[..],
        br#"{"rate_limiter": {"iops": {}}}"#,
        br#"{"rate_limiter": {"bandwidth": {"size": 1}}}"#,
    ] {
        assert!(
            parse_json::<EntropyConfig>(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }

    for (text, level) in [
        ("warning", LogLevel::Warning),
        ("WARN", LogLevel::Warning),
        ("Off", LogLevel::Off),
        ("trace", LogLevel::Trace),
        ("Info", LogLevel::Info),
        ("error", LogLevel::Error),
    ] {
        let json = format!(r#"{{"level": "{text}"}}"#);
        let l: LoggerConfig = parse_json(json.as_bytes()).unwrap();
        assert_eq!(l.level, Some(level));
    }
    let err = parse_json::<LoggerConfig>(br#"{"level": "loud"}"#).unwrap_err();
    assert_eq!(err.field(), "level");
    assert!(err.to_string().contains("unknown variant `loud`"), "{err}");
    let mut cfg = valid_base();
    cfg.logger = Some(LoggerConfig {
        log_path: Some(PathBuf::new()),
        ..LoggerConfig::default()
    });
    assert_eq!(validate_err(&cfg).field(), "logger.log_path");
    let mut cfg = valid_base();
    cfg.metrics = Some(MetricsConfig {
        metrics_path: PathBuf::new(),
    });
    assert_eq!(validate_err(&cfg).field(), "metrics.metrics_path");
    assert!(parse_json::<MetricsConfig>(b"{}")
        .unwrap_err()
        .to_string()
        .contains("metrics_path"));
}

#[test]
fn unsupported_firecracker_sections_are_refused_by_validate() {
    for (key, value) in [
        ("memory-hotplug", r#"{"total_size_mib": 1024}"#),
        ("pmem", r#"[{"id": "p0", "path_on_host": "/tmp/p"}]"#),
    ] {
        let json = format!(r#"{{"boot-source": {{"kernel_image_path": "k"}}, "{key}": {value}}}"#);
        let cfg = parse_vm_config(&json).unwrap();
        let err = validate_err(&cfg);
        assert_eq!(err.field(), key);
        assert!(err.to_string().contains("not supported by cairn"), "{err}");
    }
    // Empty, as `GET /vm/config` writes them (Firecracker's reply loads as a config file).
    let cfg = parse_vm_config(
        r#"{"boot-source": {"kernel_image_path": "k"}, "balloon": null, "mmds-config": null,
            "pmem": [], "memory-hotplug": null}"#,
    )
    .unwrap();
    cfg.validate().unwrap();
    let cfg =
        parse_vm_config(r#"{"boot-source": {"kernel_image_path": "k"}, "pmem": null}"#).unwrap();
    cfg.validate().unwrap();
}

#[test]
fn cpu_config_is_a_template_path() {
    let cfg = parse_vm_config(
        r#"{"boot-source": {"kernel_image_path": "k"}, "cpu-config": "/etc/cairn/pvm.json"}"#,
    )
    .unwrap();
    cfg.validate().unwrap();
    assert_eq!(
        cfg.cpu_config.as_deref(),
        Some(std::path::Path::new("/etc/cairn/pvm.json"))
    );
    let err = parse_vm_config(r#"{"cpu-config": {"cpuid_modifiers": []}}"#).unwrap_err();
    assert_eq!(err.field(), "cpu-config");
}

#[test]
fn actions_and_vm_state() {
    for (name, action) in [
        ("InstanceStart", ActionType::InstanceStart),
        ("SendCtrlAltDel", ActionType::SendCtrlAltDel),
        ("FlushMetrics", ActionType::FlushMetrics),
    ] {
        let json = format!(r#"{{"action_type": "{name}"}}"#);
        let a: InstanceActionInfo = parse_json(json.as_bytes()).unwrap();
        assert_eq!(a.action_type, action);
    }
    let err = parse_json::<InstanceActionInfo>(br#"{"action_type": "Reboot"}"#).unwrap_err();
    assert_eq!(err.field(), "action_type");
    let s: VmStateUpdate = parse_json(br#"{"state": "Paused"}"#).unwrap();
    assert_eq!(s.state, VmState::Paused);
    let s: VmStateUpdate = parse_json(br#"{"state": "Resumed"}"#).unwrap();
    assert_eq!(s.state, VmState::Resumed);
    assert_eq!(
        parse_json::<VmStateUpdate>(br#"{"state": "Running"}"#)
            .unwrap_err()
            .field(),
        "state"
    );
}

#[test]
fn snapshot_params() {
    let c: CreateSnapshotParams =
        parse_json(br#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
    assert_eq!(c.snapshot_type, SnapshotType::Full);
    c.validate().unwrap();
    let c: CreateSnapshotParams = parse_json(
        br#"{"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m", "version": "1.0.0"}"#,
    )
    .unwrap();
    assert_eq!(c.snapshot_type, SnapshotType::Diff);
    let c: CreateSnapshotParams =
        parse_json(br#"{"snapshot_path": "s", "mem_file_path": "s"}"#).unwrap();
    assert_eq!(c.validate().unwrap_err().field(), "mem_file_path");

    let l: LoadSnapshotParams = parse_json(
        br#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "u.sock"},
             "track_dirty_pages": true, "resume_vm": true}"#,
    )
    .unwrap();
    l.validate().unwrap();
    assert_eq!(l.mem_backend().unwrap().backend_type, MemBackendType::Uffd);
    assert!(l.track_dirty_pages() && l.resume_vm());

    let l: LoadSnapshotParams = parse_json(
        br#"{"snapshot_path": "s", "mem_file_path": "m", "enable_diff_snapshots": true}"#,
    )
    .unwrap();
    l.validate().unwrap();
    assert_eq!(
        l.mem_backend(),
        Some(MemBackendConfig {
            backend_type: MemBackendType::File,
            backend_path: "m".into()
        })
    );
    assert!(l.track_dirty_pages() && !l.resume_vm());

    let neither: LoadSnapshotParams = parse_json(br#"{"snapshot_path": "s"}"#).unwrap();
    assert_eq!(neither.validate().unwrap_err().field(), "mem_backend");
    let both: LoadSnapshotParams = parse_json(
        br#"{"snapshot_path": "s", "mem_file_path": "m",
             "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#,
    )
    .unwrap();
    assert_eq!(both.validate().unwrap_err().field(), "mem_backend");
    let err = parse_json::<LoadSnapshotParams>(
        br#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Tmpfs", "backend_path": "m"}}"#,
    )
    .unwrap_err();
    assert_eq!(err.field(), "mem_backend.backend_type");
    let err = parse_json::<LoadSnapshotParams>(
        br#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "path": "m"}}"#,
    )
    .unwrap_err();
    assert_eq!(err.field(), "mem_backend.path");
    let l: LoadSnapshotParams = parse_json(
        br#"{"snapshot_path": "s", "mem_file_path": "m",
             "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}]}"#,
    )
    .unwrap();
    l.validate().unwrap();
    let l: LoadSnapshotParams = parse_json(
        br#"{"snapshot_path": "s", "mem_file_path": "m",
             "network_overrides": [{"iface_id": "eth-0", "host_dev_name": "tap9"}]}"#,
    )
    .unwrap();
    assert_eq!(
        l.validate().unwrap_err().field(),
        "network_overrides[0].iface_id"
    );
}

#[test]
fn checkpoint_names() {
    for ok in ["base", "after-boot.1", "A_b-9"] {
        validate_checkpoint_name("name", ok).unwrap();
    }
    for bad in [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "../x",
        "a b",
        &"x".repeat(65),
    ] {
        assert_eq!(
            validate_checkpoint_name("name", bad).unwrap_err().field(),
            "name",
            "{bad}"
        );
    }
    let c: CheckpointCreate = parse_json(b"{}").unwrap();
    assert_eq!(c.name, None);
    c.validate().unwrap();
    let c: CheckpointCreate = parse_json(br#"{"name": "../etc"}"#).unwrap();
    assert!(c.validate().is_err());
    let r: CheckpointRestore = parse_json(br#"{"name": "base"}"#).unwrap();
    r.validate().unwrap();
    assert_eq!(
        parse_json::<CheckpointRestore>(b"{}")
            .unwrap_err()
            .to_string(),
        "missing field `name` at line 1 column 2"
    );
}

#[test]
fn error_within_joins_paths() {
    let e = ConfigError::invalid("vcpu_count", "bad").within("machine-config");
    assert_eq!(e.to_string(), "machine-config.vcpu_count: bad");
    let e = ConfigError::invalid("[2]", "bad").within("drives");
    assert_eq!(e.field(), "drives[2]");
    let e = ConfigError::invalid("", "bad").within("vsock");
    assert_eq!(e.to_string(), "vsock: bad");
}

#[test]
fn mmds_config_names_attached_interfaces() {
    let base = r#"{"boot-source": {"kernel_image_path": "k"},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}], "mmds-config": "#;
    let cfg = parse_vm_config(&format!(
        r#"{base}{{"network_interfaces": ["eth0"], "version": "V2"}}}}"#
    ))
    .unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.mmds_config.unwrap().version, MmdsVersion::V2);
    let cfg = parse_vm_config(&format!(r#"{base}{{"network_interfaces": ["eth1"]}}}}"#)).unwrap();
    let err = validate_err(&cfg);
    assert_eq!(err.field(), "mmds-config.network_interfaces");
    assert!(err
        .to_string()
        .contains("does not correspond to any existing network interface"));
    let cfg = parse_vm_config(&format!(r#"{base}{{"network_interfaces": []}}}}"#)).unwrap();
    assert_eq!(validate_err(&cfg).field(), "mmds-config.network_interfaces");
    assert!(parse_vm_config(&format!(r#"{base}{{"x": 1}}}}"#)).is_err());
}
