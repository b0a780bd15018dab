//! The body of `GET /vm/config`: the whole configuration with every key Firecracker's has, each
//! unset value written out as Firecracker writes it (`null`, `[]`, or the default it applies).
//!
//! A request body leaves unset fields out; this reply spells every one out, so a client that
//! reads Firecracker's reply key by key reads cairn's the same way. Devices cairn does not have
//! (`pmem`, `memory-hotplug`) are shown as Firecracker shows them when
//! none is configured. One key is cairn's own: `cairn` (the checkpoint directory).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{
    BalloonConfig, BootSourceConfig, CacheType, CairnConfig, DriveConfig, EntropyConfig, IoEngine,
    LoggerConfig, MachineConfig, MetricsConfig, MmdsConfig, NetConfig, RateLimiterConfig,
    TokenBucketConfig, VmConfig, VsockConfig,
};

/// `GET /vm/config`, key for key as Firecracker v1.16 answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullVmConfig {
    /// The balloon device, every key written out.
    pub balloon: Option<BalloonConfig>,
    /// Block devices, in attach order.
    pub drives: Vec<DriveReply>,
    /// Kernel and command line; `kernel_image_path` is `""` when unset (as after a snapshot
    /// load, in Firecracker too).
    #[serde(rename = "boot-source")]
    pub boot_source: BootSourceReply,
    /// Always `null`: Firecracker v1.16.1 answers `null` here even after `PUT /cpu-config`.
    #[serde(rename = "cpu-config")]
    pub cpu_config: Option<serde_json::Value>,
    /// The logger settings last applied (Firecracker always answers `null`).
    pub logger: Option<LoggerConfig>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    /// The metrics settings last applied (Firecracker always answers `null`).
    pub metrics: Option<MetricsConfig>,
    /// MMDS settings, the default address filled in; `null` when MMDS is not configured.
    #[serde(rename = "mmds-config")]
    pub mmds_config: Option<MmdsConfig>,
    /// Network devices, in attach order.
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<NetReply>,
    /// The vsock device.
    pub vsock: Option<VsockReply>,
    /// The entropy device.
    pub entropy: Option<EntropyReply>,
    /// Firecracker's pmem devices; cairn has none: always `[]`.
    pub pmem: Vec<serde_json::Value>,
    /// Firecracker's memory hotplug; cairn has none: always `null`.
    #[serde(rename = "memory-hotplug")]
    pub memory_hotplug: Option<serde_json::Value>,
    /// cairn's own settings (absent from Firecracker's reply).
    #[serde(default)]
    pub cairn: CairnConfig,
}

/// The boot source in [`FullVmConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSourceReply {
    /// The kernel; `""` when none is set.
    pub kernel_image_path: PathBuf,
    /// The initrd.
    pub initrd_path: Option<PathBuf>,
    /// The kernel command line as given.
    pub boot_args: Option<String>,
}

/// The entropy device in [`FullVmConfig`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntropyReply {
    /// The rate limiter as given.
    pub rate_limiter: Option<serde_json::Value>,
}

/// One drive in [`FullVmConfig`]: Firecracker's keys, defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriveReply {
    /// The drive's id.
    pub drive_id: String,
    /// Root partition UUID.
    pub partuuid: Option<String>,
    /// Whether it is the root device.
    pub is_root_device: bool,
    /// Cache mode (default `Unsafe`).
    pub cache_type: CacheType,
    /// Read-only.
    pub is_read_only: bool,
    /// The backing file.
    pub path_on_host: PathBuf,
    /// The rate limiter as given.
    pub rate_limiter: Option<serde_json::Value>,
    /// I/O engine (default `Sync`).
    pub io_engine: IoEngine,
    /// vhost-user socket: always `null`.
    pub socket: Option<String>,
}

/// One network interface in [`FullVmConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetReply {
    /// The interface's id.
    pub iface_id: String,
    /// The host tap device.
    pub host_dev_name: String,
    /// The guest MAC.
    pub guest_mac: Option<String>,
    /// The MTU advertised to the guest, if set.
    pub mtu: Option<u16>,
    /// The receive rate limiter as given.
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// The transmit rate limiter as given.
    pub tx_rate_limiter: Option<serde_json::Value>,
}

/// The vsock device in [`FullVmConfig`] (Firecracker shows no `vsock_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockReply {
    /// The guest's context id.
    pub guest_cid: u32,
    /// The host-side Unix socket.
    pub uds_path: PathBuf,
}

/// A rate limiter as Firecracker writes it: both buckets, `null` where unset, and each bucket's
/// `one_time_burst` (`null` when unset).
fn rate_limiter_reply(rl: &RateLimiterConfig) -> serde_json::Value {
    let bucket = |b: &Option<TokenBucketConfig>| match b {
        Some(b) => serde_json::json!({
            "size": b.size,
            "one_time_burst": b.one_time_burst,
            "refill_time": b.refill_time,
        }),
        None => serde_json::Value::Null,
    };
    serde_json::json!({"bandwidth": bucket(&rl.bandwidth), "ops": bucket(&rl.ops)})
}

impl From<&DriveConfig> for DriveReply {
    fn from(d: &DriveConfig) -> Self {
        DriveReply {
            drive_id: d.drive_id.clone(),
            partuuid: d.partuuid.clone(),
            is_root_device: d.is_root_device,
            cache_type: d.cache_type(),
            is_read_only: d.read_only(),
            path_on_host: d.path_on_host.clone(),
            rate_limiter: d.rate_limiter.as_ref().map(rate_limiter_reply),
            io_engine: d.io_engine.unwrap_or_default(),
            socket: None,
        }
    }
}

impl From<&NetConfig> for NetReply {
    fn from(n: &NetConfig) -> Self {
        NetReply {
            iface_id: n.iface_id.clone(),
            host_dev_name: n.host_dev_name.clone(),
            guest_mac: n.guest_mac.clone(),
            mtu: n.mtu,
            rx_rate_limiter: n.rx_rate_limiter.as_ref().map(rate_limiter_reply),
            tx_rate_limiter: n.tx_rate_limiter.as_ref().map(rate_limiter_reply),
        }
    }
}

impl From<&VmConfig> for FullVmConfig {
    fn from(c: &VmConfig) -> Self {
        FullVmConfig {
            balloon: c.balloon,
            drives: c.drives.iter().map(DriveReply::from).collect(),
            boot_source: c
                .boot_source
                .as_ref()
                .map(|b: &BootSourceConfig| BootSourceReply {
                    kernel_image_path: b.kernel_image_path.clone(),
                    initrd_path: b.initrd_path.clone(),
                    boot_args: b.boot_args.clone(),
                })
                .unwrap_or_default(),
            cpu_config: None,
            logger: c.logger.clone(),
            machine_config: c.machine_config.clone(),
            metrics: c.metrics.clone(),
            mmds_config: c
                .mmds_config
                .as_ref()
                .filter(|m| !m.network_interfaces.is_empty())
                .map(|m| MmdsConfig {
                    ipv4_address: Some(m.ipv4()),
                    ..m.clone()
                }),
            network_interfaces: c.network_interfaces.iter().map(NetReply::from).collect(),
            vsock: c.vsock.as_ref().map(|v| VsockReply {
                guest_cid: v.guest_cid,
                uds_path: v.uds_path.clone(),
            }),
            entropy: c.entropy.as_ref().map(|e: &EntropyConfig| EntropyReply {
                rate_limiter: e.rate_limiter.as_ref().map(rate_limiter_reply),
            }),
            pmem: Vec::new(),
            memory_hotplug: None,
            cairn: c.cairn.clone(),
        }
    }
}

impl From<&VsockReply> for VsockConfig {
    fn from(v: &VsockReply) -> Self {
        VsockConfig {
            vsock_id: None,
            guest_cid: v.guest_cid,
            uds_path: v.uds_path.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Firecracker v1.16.1's answer to `GET /vm/config` on a fresh process (taken from the
    /// real binary).
    const FIRECRACKER_EMPTY: &str = r#"{"balloon":null,"drives":[],"boot-source":{"kernel_image_path":"","initrd_path":null,"boot_args":null},"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"entropy":null,"pmem":[],"memory-hotplug":null}"#;

    #[test]
    fn an_empty_config_reads_as_firecracker_s() {
        let ours = serde_json::to_value(FullVmConfig::from(&VmConfig::default())).unwrap();
        let mut theirs: serde_json::Value = serde_json::from_str(FIRECRACKER_EMPTY).unwrap();
        theirs["cairn"] = serde_json::json!({});
        // cairn's own key aside, the same document.
        let mut ours_no_cairn = ours.clone();
        ours_no_cairn["cairn"] = serde_json::json!({});
        assert_eq!(ours_no_cairn, theirs);
        // And Firecracker's reply reads as a FullVmConfig.
        let read: FullVmConfig = serde_json::from_str(FIRECRACKER_EMPTY).unwrap();
        assert_eq!(read, FullVmConfig::from(&VmConfig::default()));
    }

    #[test]
    fn devices_show_firecracker_s_defaults() {
        let cfg = VmConfig {
            drives: vec![DriveConfig::new("root", "/r", true)],
            vsock: Some(VsockConfig {
                vsock_id: Some("v".into()),
                guest_cid: 3,
                uds_path: "/v.sock".into(),
            }),
            entropy: Some(EntropyConfig::default()),
            ..VmConfig::default()
        };
        let v = serde_json::to_value(FullVmConfig::from(&cfg)).unwrap();
        assert_eq!(
            v["drives"][0],
            serde_json::json!({"drive_id": "root", "partuuid": null, "is_root_device": true,
                "cache_type": "Unsafe", "is_read_only": false, "path_on_host": "/r",
                "rate_limiter": null, "io_engine": "Sync", "socket": null})
        );
        assert_eq!(
            v["vsock"],
            serde_json::json!({"guest_cid": 3, "uds_path": "/v.sock"})
        );
        assert_eq!(v["entropy"], serde_json::json!({"rate_limiter": null}));
    }
}
