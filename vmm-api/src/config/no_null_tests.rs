//! Every request body leaves unset fields out instead of sending `null`: Firecracker refuses
//! `null` for some of them (e.g. a drive's `"cache_type": null`), and what the typed client
//! sends must be what Firecracker's own clients send.

use super::*;

/// Every `null` in `value`, as paths.
fn nulls(value: &serde_json::Value, at: &str, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Null => found.push(at.to_string()),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                nulls(v, &format!("{at}.{k}"), found);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                nulls(v, &format!("{at}[{i}]"), found);
            }
        }
        _ => {}
    }
}

fn assert_no_nulls<T: Serialize + DeserializeOwned + std::fmt::Debug + PartialEq>(
    name: &str,
    body: &T,
) {
    let value = serde_json::to_value(body).unwrap();
    let mut found = vec![];
    nulls(&value, name, &mut found);
    assert!(found.is_empty(), "{name} sends null at {found:?}: {value}");
    // And what is sent reads back as the same value.
    let back: T = serde_json::from_value(value).unwrap();
    assert_eq!(&back, body, "{name}");
}

fn drive() -> DriveConfig {
    DriveConfig::new("rootfs", "/r.ext4", true)
}

fn net() -> NetConfig {
    NetConfig {
        iface_id: "eth0".into(),
        host_dev_name: "tap0".into(),
        guest_mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        mtu: None,
    }
}

fn vsock() -> VsockConfig {
    VsockConfig {
        vsock_id: None,
        guest_cid: 3,
        uds_path: "/v.sock".into(),
    }
}

#[test]
fn request_bodies_with_every_option_unset_send_no_null() {
    assert_no_nulls("machine-config", &MachineConfig::default());
    assert_no_nulls("machine-config patch", &MachineConfigUpdate::default());
    assert_no_nulls("drive patch", &DriveUpdate::default());
    assert_no_nulls(
        "network-interface patch",
        &NetworkInterfaceUpdate::default(),
    );
    assert_no_nulls("rate limiter", &RateLimiterConfig::default());
    assert_no_nulls(
        "boot-source",
        &BootSourceConfig {
            kernel_image_path: "/k".into(),
            ..BootSourceConfig::default()
        },
    );
    assert_no_nulls("drive", &drive());
    assert_no_nulls("network-interface", &net());
    assert_no_nulls("vsock", &vsock());
    assert_no_nulls("entropy", &EntropyConfig::default());
    assert_no_nulls("serial", &SerialConfig::default());
    assert_no_nulls("logger", &LoggerConfig::default());
    assert_no_nulls(
        "metrics",
        &MetricsConfig {
            metrics_path: "/m".into(),
        },
    );
    assert_no_nulls(
        "actions",
        &InstanceActionInfo {
            action_type: ActionType::InstanceStart,
        },
    );
    assert_no_nulls(
        "vm",
        &VmStateUpdate {
            state: VmState::Paused,
        },
    );
    assert_no_nulls(
        "snapshot/create",
        &CreateSnapshotParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: "/s".into(),
            mem_file_path: "/m".into(),
            version: None,
        },
    );
    assert_no_nulls(
        "snapshot/load",
        &LoadSnapshotParams {
            snapshot_path: "/s".into(),
            ..LoadSnapshotParams::default()
        },
    );
    assert_no_nulls("checkpoints", &CheckpointCreate::default());
    assert_no_nulls(
        "checkpoints/restore",
        &CheckpointRestore {
            name: "c1".into(),
            vsock_uds_path: None,
            paused: None,
        },
    );
    // The whole config file, with one of each device, all options unset.
    assert_no_nulls(
        "config",
        &VmConfig {
            boot_source: Some(BootSourceConfig::default()),
            drives: vec![drive()],
            network_interfaces: vec![net()],
            vsock: Some(vsock()),
            entropy: Some(EntropyConfig::default()),
            logger: Some(LoggerConfig::default()),
            ..VmConfig::default()
        },
    );
}
