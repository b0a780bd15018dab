//! What the API configured for a device that the device's own saved state does not hold: a
//! drive's `is_root_device`, `partuuid`, `cache_type` and `io_engine`, an interface's `mtu`. The devices'
//! state layouts predate these fields, so they travel beside them, in the machine state
//! (version 4 on; older checkpoints load with none). After a load, `GET /vm/config` reports
//! them as configured, an `Async` drive runs on io_uring again and a network device advertises
//! its MTU again.

use serde::{Deserialize, Serialize};

use crate::config::{CacheType, IoEngine, VmConfig};

/// One drive's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriveSettings {
    /// The drive.
    pub drive_id: String,
    /// Firecracker's `is_root_device`.
    pub is_root_device: bool,
    /// Firecracker's `partuuid`.
    pub partuuid: Option<String>,
    /// Firecracker's `cache_type`, as given (absent stays absent).
    pub cache_type: Option<CacheType>,
    /// Firecracker's `io_engine`, as given (absent stays absent).
    pub io_engine: Option<IoEngine>,
}

/// One network interface's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceSettings {
    /// The interface.
    pub iface_id: String,
    /// The MTU advertised to the guest (`VIRTIO_NET_F_MTU`).
    pub mtu: Option<u16>,
}

/// The settings of every drive and interface of a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSettings {
    /// Drives, in configuration order.
    pub drives: Vec<DriveSettings>,
    /// Network interfaces, in configuration order.
    pub interfaces: Vec<InterfaceSettings>,
}

impl DeviceSettings {
    /// The settings `cfg` gives its devices.
    pub fn from_config(cfg: &VmConfig) -> Self {
        Self {
            drives: cfg
                .drives
                .iter()
                .map(|d| DriveSettings {
                    drive_id: d.drive_id.clone(),
                    is_root_device: d.is_root_device,
                    partuuid: d.partuuid.clone(),
                    cache_type: d.cache_type,
                    io_engine: d.io_engine,
                })
                .collect(),
            interfaces: cfg
                .network_interfaces
                .iter()
                .map(|n| InterfaceSettings {
                    iface_id: n.iface_id.clone(),
                    mtu: n.mtu,
                })
                .collect(),
        }
    }

    /// The settings of drive `drive_id`, if it has any.
    pub fn drive(&self, drive_id: &str) -> Option<&DriveSettings> {
        self.drives.iter().find(|d| d.drive_id == drive_id)
    }

    /// Whether drive `drive_id` was configured `io_engine: "Async"`.
    pub fn is_async(&self, drive_id: &str) -> bool {
        self.drive(drive_id)
            .is_some_and(|d| d.io_engine == Some(IoEngine::Async))
    }

    /// The MTU of interface `iface_id`, if one was set.
    pub fn mtu(&self, iface_id: &str) -> Option<u16> {
        self.interfaces
            .iter()
            .find(|n| n.iface_id == iface_id)
            .and_then(|n| n.mtu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DeviceSettings {
        let cfg: VmConfig = serde_json::from_value(serde_json::json!({
            "boot-source": {"kernel_image_path": "/k"},
            "drives": [
                {"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                 "partuuid": "0eaa91a0-01", "cache_type": "Writeback"},
                {"drive_id": "data", "path_on_host": "/d", "is_root_device": false,
                 "io_engine": "Async"}
            ],
            "network-interfaces": [
                {"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 1400},
                {"iface_id": "eth1", "host_dev_name": "tap1"}
            ]
        }))
        .unwrap();
        DeviceSettings::from_config(&cfg)
    }

    #[test]
    fn taken_from_the_config() {
        let s = settings();
        let root = s.drive("rootfs").unwrap();
        assert!(root.is_root_device);
        assert_eq!(root.partuuid.as_deref(), Some("0eaa91a0-01"));
        assert_eq!(root.cache_type, Some(CacheType::Writeback));
        let data = s.drive("data").unwrap();
        assert!(!data.is_root_device && data.partuuid.is_none() && data.cache_type.is_none());
        assert_eq!(root.io_engine, None);
        assert!(s.is_async("data") && !s.is_async("rootfs") && !s.is_async("other"));
        assert!(s.drive("other").is_none());
        assert_eq!(s.mtu("eth0"), Some(1400));
        assert_eq!(s.mtu("eth1"), None);
        assert_eq!(s.mtu("eth2"), None);
    }

    #[test]
    fn round_trip_through_postcard() {
        let s = settings();
        let bytes = postcard::to_stdvec(&s).unwrap();
        let back: DeviceSettings = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        let empty = DeviceSettings::default();
        let back: DeviceSettings =
            postcard::from_bytes(&postcard::to_stdvec(&empty).unwrap()).unwrap();
        assert_eq!(back, empty);
    }
}
