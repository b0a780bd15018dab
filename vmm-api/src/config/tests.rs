//! Tests of the configuration types: a real Firecracker document, error paths, each rule.

use super::*;

/// A Firecracker `--config-file` as users write it (Firecracker's docs and test framework).
const FIRECRACKER_CONFIG: &str = r#"{
  "boot-source": {
    "kernel_image_path": "vmlinux.bin",
    "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
    "initrd_path": null
  },
  "drives": [
    {
      "drive_id": "rootfs",
      "partuuid": null,
      "is_root_device": true,
      "cache_type": "Unsafe",
      "is_read_only": false,
      "path_on_host": "bionic.rootfs.ext4",
      "io_engine": "Sync",
      "rate_limiter": null,
      "socket": null
    },
    {
      "drive_id": "data_1",
      "is_root_device": false,
      "path_on_host": "/srv/data.ext4",
      "is_read_only": true,
      "cache_type": "Writeback",
      "rate_limiter": {
        "bandwidth": {"size": 1048576, "refill_time": 100},
        "ops": {"size": 1000, "one_time_burst": 100, "refill_time": 1000}
      }
    }
  ],
  "machine-config": {
    "vcpu_count": 2,
    "mem_size_mib": 1024,
    "smt": false,
    "track_dirty_pages": false,
    "huge_pages": "None"
  },
  "cpu-config": null,
  "balloon": null,
  "network-interfaces": [
    {
      "iface_id": "eth0",
      "guest_mac": "AA:FC:00:00:00:01",
      "host_dev_name": "tap0",
      "rx_rate_limiter": null,
      "tx_rate_limiter": {"bandwidth": {"size": 100000, "refill_time": 100}}
    }
  ],
  "vsock": {
    "guest_cid": 3,
    "uds_path": "./v.sock"
  },
  "logger": {
    "log_path": "/tmp/fc.log",
    "level": "Debug",
    "show_level": true,
    "show_log_origin": true
  },
  "metrics": {
    "metrics_path": "/tmp/fc-metrics.fifo"
  },
  "mmds-config": null,
  "entropy": {"rate_limiter": null}
}"#;

fn err_of(json: &str) -> String {
    match parse_vm_config(json) {
        Ok(cfg) => match cfg.validate() {
            Ok(()) => panic!("accepted: {json}"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

pub(super) fn valid_base() -> VmConfig {
    parse_vm_config(r#"{"boot-source": {"kernel_image_path": "vmlinux"}}"#).unwrap()
}

pub(super) fn validate_err(cfg: &VmConfig) -> ConfigError {
    cfg.validate()
        .expect_err("validate() accepted an invalid config")
}

#[test]
fn firecracker_config_parses_and_validates() {
    let cfg = parse_vm_config(FIRECRACKER_CONFIG).unwrap();
    cfg.validate().unwrap();
    let boot = cfg.boot_source.as_ref().unwrap();
    assert_eq!(boot.kernel_image_path, PathBuf::from("vmlinux.bin"));
    assert_eq!(boot.initrd_path, None);
    assert_eq!(cfg.machine_config.vcpu_count, 2);
    assert_eq!(cfg.machine_config.mem_size_mib, 1024);
    assert_eq!(cfg.machine_config.cpu_template(), None);
    assert_eq!(cfg.drives.len(), 2);
    assert!(cfg.drives[0].is_root_device);
    assert!(!cfg.drives[0].read_only());
    assert!(cfg.drives[1].read_only());
    assert_eq!(cfg.drives[1].cache_type(), CacheType::Writeback);
    assert!(cfg.drives[1].rate_limiter.is_some());
    assert_eq!(
        cfg.network_interfaces[0].mac(),
        Some([0xaa, 0xfc, 0, 0, 0, 1])
    );
    assert_eq!(cfg.vsock.as_ref().unwrap().guest_cid, 3);
    let logger = cfg.logger.as_ref().unwrap();
    assert_eq!(logger.level, Some(LogLevel::Debug));
    assert_eq!(logger.level.unwrap().as_filter(), "debug");
    assert_eq!(
        cfg.metrics.as_ref().unwrap().metrics_path,
        PathBuf::from("/tmp/fc-metrics.fifo")
    );
    assert!(cfg.entropy.is_some());
    assert_eq!(cfg.cairn, CairnConfig::default());
}

#[test]
fn serialized_config_parses_back() {
    let cfg = parse_vm_config(FIRECRACKER_CONFIG).unwrap();
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(parse_vm_config(&json).unwrap(), cfg);
    let empty = serde_json::to_string(&VmConfig::default()).unwrap();
    assert_eq!(parse_vm_config(&empty).unwrap(), VmConfig::default());
}

#[test]
fn minimal_config_gets_firecracker_defaults() {
    let cfg = valid_base();
    cfg.validate().unwrap();
    assert_eq!(cfg.machine_config, MachineConfig::default());
    assert_eq!(cfg.machine_config.vcpu_count, 1);
    assert_eq!(cfg.machine_config.mem_size_mib, 128);
    assert!(cfg.drives.is_empty() && cfg.network_interfaces.is_empty());
    let nulls = parse_vm_config(
        r#"{"boot-source": {"kernel_image_path": "k"}, "machine-config": null,
            "drives": null, "network-interfaces": null, "vsock": null, "cairn": null}"#,
    )
    .unwrap();
    assert_eq!(nulls.machine_config, MachineConfig::default());
}

#[test]
fn cairn_section() {
    let cfg = parse_vm_config(
        r#"{"boot-source": {"kernel_image_path": "k"}, "cairn": {"checkpoint_dir": "/var/ck"}}"#,
    )
    .unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.cairn.checkpoint_dir, Some(PathBuf::from("/var/ck")));
    assert!(err_of(
        r#"{"boot-source": {"kernel_image_path": "k"}, "cairn": {"checkpoint_dir": ""}}"#
    )
    .starts_with("cairn.checkpoint_dir: must not be empty"));
}

#[test]
fn unknown_field_is_named_at_every_level() {
    let cases = [
        (r#"{"boot-sauce": {}}"#, "boot-sauce"),
        (
            r#"{"boot-source": {"kernel_image_path": "k", "initrd": "x"}}"#,
            "boot-source.initrd",
        ),
        (
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 1, "ht_enabled": true}}"#,
            "machine-config.ht_enabled",
        ),
        (
            r#"{"drives": [{"drive_id": "a", "path_on_host": "p", "is_root_device": true},
                           {"drive_id": "b", "path_on_host": "p", "is_root_device": false, "ro": 1}]}"#,
            "drives[1].ro",
        ),
        (
            r#"{"network-interfaces": [{"iface_id": "e", "host_dev_name": "t", "mac": "x"}]}"#,
            "network-interfaces[0].mac",
        ),
        (
            r#"{"vsock": {"guest_cid": 3, "uds_path": "v", "port": 1}}"#,
            "vsock.port",
        ),
        (r#"{"entropy": {"rate": 1}}"#, "entropy.rate"),
        (
            r#"{"logger": {"log_path": "l", "colour": true}}"#,
            "logger.colour",
        ),
        (r#"{"metrics": {"metrics_path": "m", "x": 1}}"#, "metrics.x"),
        (r#"{"cairn": {"checkpoint": "/x"}}"#, "cairn.checkpoint"),
    ];
    for (json, path) in cases {
        let err = parse_vm_config(json).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.field(), path, "{json} -> {text}");
        let key = path.rsplit(['.', ']']).next().unwrap();
        assert!(
            text.starts_with(&format!("{path}: unknown field `{key}`")),
            "{json} -> {text}"
        );
    }
}

#[test]
fn type_errors_name_the_field() {
    let err = parse_vm_config(r#"{"machine-config": {"vcpu_count": "x", "mem_size_mib": 1}}"#)
        .unwrap_err();
    assert_eq!(err.field(), "machine-config.vcpu_count");
    assert!(
        err.to_string()
            .starts_with(r#"machine-config.vcpu_count: invalid type: string "x", expected u8"#),
        "{err}"
    );
    let cases = [
        (
            r#"{"machine-config": {"vcpu_count": 300, "mem_size_mib": 1}}"#,
            "machine-config.vcpu_count",
        ),
        (
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": -1}}"#,
            "machine-config.mem_size_mib",
        ),
        (
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 1, "smt": "yes"}}"#,
            "machine-config.smt",
        ),
        (
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 1, "cpu_template": "T9"}}"#,
            "machine-config.cpu_template",
        ),
        (r#"{"machine-config": {"vcpu_count": 1}}"#, "machine-config"),
        (
            r#"{"boot-source": {"kernel_image_path": 7}}"#,
            "boot-source.kernel_image_path",
        ),
        (
            r#"{"drives": [{"drive_id": "a", "path_on_host": "p", "is_root_device": "no"}]}"#,
            "drives[0].is_root_device",
        ),
        (
            r#"{"drives": [{"drive_id": "a", "path_on_host": "p", "is_root_device": true, "cache_type": "None"}]}"#,
            "drives[0].cache_type",
        ),
        (r#"{"drives": {"drive_id": "a"}}"#, "drives"),
        (
            r#"{"network-interfaces": [{"iface_id": 1, "host_dev_name": "t"}]}"#,
            "network-interfaces[0].iface_id",
        ),
        (
            r#"{"vsock": {"guest_cid": -3, "uds_path": "v"}}"#,
            "vsock.guest_cid",
        ),
        (r#"{"logger": {"level": "Loud"}}"#, "logger.level"),
        (
            r#"{"cairn": {"checkpoint_dir": false}}"#,
            "cairn.checkpoint_dir",
        ),
    ];
    for (json, path) in cases {
        let err = parse_vm_config(json).unwrap_err();
        assert_eq!(err.field(), path, "{json} -> {err}");
        assert!(err.to_string().starts_with(&format!("{path}: ")), "{err}");
    }
}

#[test]
fn syntax_errors_and_trailing_data() {
    let err = parse_vm_config("{").unwrap_err();
    assert!(err.to_string().contains("EOF"), "{err}");
    let err = parse_vm_config("{} {}").unwrap_err();
    assert!(err.to_string().contains("trailing"), "{err}");
    let err = parse_vm_config("[]").unwrap_err();
    assert!(err.to_string().contains("expected a JSON object"), "{err}");
    assert!(parse_vm_config("  \n 7").is_err());
    assert!(parse_vm_config("").is_err());
}

#[test]
fn validate_requires_boot_source() {
    let err = validate_err(&VmConfig::default());
    assert_eq!(err.field(), "boot-source");
    let mut cfg = valid_base();
    cfg.boot_source.as_mut().unwrap().kernel_image_path = PathBuf::new();
    assert_eq!(validate_err(&cfg).field(), "boot-source.kernel_image_path");
    let mut cfg = valid_base();
    cfg.boot_source.as_mut().unwrap().boot_args = Some("a\0b".into());
    assert_eq!(validate_err(&cfg).field(), "boot-source.boot_args");
}

#[test]
fn machine_config_rules() {
    let mc = |vcpus: u8, mem: usize, smt: bool| MachineConfig {
        vcpu_count: vcpus,
        mem_size_mib: mem,
        smt,
        ..MachineConfig::default()
    };
    for ok in [
        mc(1, 1, false),
        mc(3, 128, false),
        mc(32, 128, false),
        mc(1, 128, true),
        mc(2, 128, true),
        mc(32, 128, true),
    ] {
        ok.validate().unwrap();
    }
    for (bad, field, words) in [
        (mc(0, 128, false), "vcpu_count", "between 1 and 32"),
        (mc(33, 128, false), "vcpu_count", "between 1 and 32"),
        (mc(3, 128, true), "vcpu_count", "even"),
        (mc(1, 0, false), "mem_size_mib", "greater than 0"),
    ] {
        let err = bad.validate().unwrap_err();
        assert_eq!(err.field(), field);
        assert!(err.to_string().contains(words), "{err}");
    }
    let mut cfg = valid_base();
    cfg.machine_config = mc(3, 128, true);
    assert_eq!(validate_err(&cfg).field(), "machine-config.vcpu_count");
}

#[test]
fn cpu_templates() {
    for name in ["None", "T2", "C3", "T2S", "T2CL"] {
        let json = format!(r#"{{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "{name}"}}"#);
        let mc: MachineConfig = parse_json(json.as_bytes()).unwrap();
        mc.validate().unwrap();
        assert_eq!(mc.cpu_template.unwrap().name(), name);
    }
    for name in ["T2A", "V1N1"] {
        let json = format!(r#"{{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "{name}"}}"#);
        let mc: MachineConfig = parse_json(json.as_bytes()).unwrap();
        let err = mc.validate().unwrap_err();
        assert_eq!(err.field(), "cpu_template");
        assert!(
            err.to_string()
                .contains(&format!("{name} is not implemented")),
            "{err}"
        );
        assert!(err.to_string().contains("None, T2, C3, T2S, T2CL"), "{err}");
    }
    let mc: MachineConfig =
        parse_json(br#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "None"}"#).unwrap();
    assert_eq!(mc.cpu_template(), None);
}

#[test]
fn a_put_without_a_cpu_template_keeps_the_current_one() {
    let current: MachineConfig = parse_json(
        br#"{"vcpu_count": 2, "mem_size_mib": 64, "smt": true, "cpu_template": "T2CL"}"#,
    )
    .unwrap();
    let put: MachineConfig = parse_json(br#"{"vcpu_count": 1, "mem_size_mib": 128}"#).unwrap();
    let now = put.put_over(&current);
    assert_eq!(now.cpu_template.map(|t| t.name()), Some("T2CL"));
    // Every other field is the PUT's own, absent ones at their defaults (Firecracker's rule).
    assert_eq!((now.vcpu_count, now.mem_size_mib, now.smt), (1, 128, false));
    let put: MachineConfig =
        parse_json(br#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"}"#).unwrap();
    assert_eq!(
        put.put_over(&current).cpu_template(),
        None,
        "naming None clears it"
    );
}

#[test]
fn huge_pages() {
    let mc: MachineConfig =
        parse_json(br#"{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M"}"#).unwrap();
    mc.validate().unwrap();
    assert_eq!(mc.huge_pages.page_size(), 2 << 20);
    let mc: MachineConfig =
        parse_json(br#"{"vcpu_count": 1, "mem_size_mib": 65, "huge_pages": "None"}"#).unwrap();
    mc.validate().unwrap();
    // Firecracker's rule: a whole number of 2 MiB pages.
    let mc: MachineConfig =
        parse_json(br#"{"vcpu_count": 1, "mem_size_mib": 65, "huge_pages": "2M"}"#).unwrap();
    let err = mc.validate().unwrap_err();
    assert_eq!(err.field(), "mem_size_mib");
    assert!(err.to_string().contains("multiple of 2"), "{err}");
    // PATCH: each field alone is fine, the merged result is not.
    let update: MachineConfigUpdate = parse_json(br#"{"huge_pages": "2M"}"#).unwrap();
    update.validate().unwrap();
    let odd = MachineConfig {
        mem_size_mib: 129,
        ..MachineConfig::default()
    };
    assert_eq!(
        odd.apply(&update).validate().unwrap_err().field(),
        "mem_size_mib"
    );
    let both: MachineConfigUpdate =
        parse_json(br#"{"mem_size_mib": 3, "huge_pages": "2M"}"#).unwrap();
    assert_eq!(both.validate().unwrap_err().field(), "mem_size_mib");
    // Unknown page sizes are refused by the parser, naming the field.
    let err = parse_json::<MachineConfig>(
        br#"{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "1G"}"#,
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("huge_pages:"), "{err}");
}

#[test]
fn huge_pages_and_a_checkpoint_dir_are_refused_together() {
    let cfg: VmConfig = parse_json(
        br#"{"boot-source": {"kernel_image_path": "k"},
             "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M"},
             "cairn": {"checkpoint_dir": "/tmp/ck"}}"#,
    )
    .unwrap();
    let err = cfg.validate().unwrap_err();
    assert_eq!(err.field(), "machine-config.huge_pages");
    assert!(err.to_string().contains("checkpoint_dir"), "{err}");
}

#[test]
fn guest_memory_dir_is_parsed_and_refused_with_huge_pages() {
    let cfg: VmConfig = parse_json(
        br#"{"boot-source": {"kernel_image_path": "k"},
             "cairn": {"guest_memory_dir": "/dev/shm"}}"#,
    )
    .unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.cairn.guest_memory_dir, Some(PathBuf::from("/dev/shm")));
    let cfg: VmConfig = parse_json(
        br#"{"boot-source": {"kernel_image_path": "k"},
             "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M"},
             "cairn": {"guest_memory_dir": "/dev/shm"}}"#,
    )
    .unwrap();
    let err = cfg.validate().unwrap_err();
    assert_eq!(err.field(), "machine-config.huge_pages");
    assert!(err.to_string().contains("guest_memory_dir"), "{err}");
    let cfg: VmConfig = parse_json(
        br#"{"boot-source": {"kernel_image_path": "k"}, "cairn": {"guest_memory_dir": ""}}"#,
    )
    .unwrap();
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .starts_with("cairn.guest_memory_dir: must not be empty"));
}

#[test]
fn machine_config_update() {
    let update: MachineConfigUpdate = parse_json(br#"{"vcpu_count": 4, "smt": true}"#).unwrap();
    update.validate().unwrap();
    let merged = MachineConfig::default().apply(&update);
    assert_eq!(
        (merged.vcpu_count, merged.mem_size_mib, merged.smt),
        (4, 128, true)
    );
    merged.validate().unwrap();
    let odd: MachineConfigUpdate = parse_json(br#"{"vcpu_count": 3}"#).unwrap();
    odd.validate().unwrap();
    assert!(merged.apply(&odd).validate().is_err());
    let bad: MachineConfigUpdate = parse_json(br#"{"mem_size_mib": 0}"#).unwrap();
    assert_eq!(bad.validate().unwrap_err().field(), "mem_size_mib");
    let err = parse_json::<MachineConfigUpdate>(br#"{"vcpus": 2}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `vcpus`"), "{err}");
    assert_eq!(
        parse_json::<MachineConfigUpdate>(b"{}").unwrap(),
        MachineConfigUpdate::default()
    );
}
