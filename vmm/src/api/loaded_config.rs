//! The configuration of a VM that was loaded from a snapshot, rebuilt from the running machine,
//! so that `GET /vm/config` answers after `PUT /snapshot/load` as Firecracker does.
//!
//! The snapshot holds each device's own configuration (drive id, backing file, read-only; tap,
//! MAC; vsock CID and socket), the vCPU count, the memory size and the CPU template; those are
//! read back from the restored devices. A drive's `is_root_device`, `partuuid` and `cache_type`
//! come from the machine's device settings (kept beside the device states since machine state
//! version 4; a checkpoint older than that reads back `false`, `null` and `Unsafe`), an
//! interface's `mtu` from the restored device. What the snapshot does not hold is shown as
//! Firecracker shows it after a load (an empty boot source).

use std::sync::{Mutex, MutexGuard};

use crate::config::{
    CpuTemplate, DriveConfig, EntropyConfig, MachineConfig, NetConfig, VmConfig, VsockConfig,
};
use crate::device_manager::VirtioHandle;
use crate::machine::Machine;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `previous` with its machine and devices replaced by what `machine` runs. Settings that are
/// not the VM's (logger, metrics, the checkpoint directory) are kept from `previous`.
pub fn config_of_loaded(machine: &Machine, previous: &VmConfig) -> VmConfig {
    let spec = machine.spec();
    let cpu_template = match spec.cpu_template.name() {
        "T2" => Some(CpuTemplate::T2),
        "C3" => Some(CpuTemplate::C3),
        "T2S" => Some(CpuTemplate::T2S),
        "T2CL" => Some(CpuTemplate::T2CL),
        _ => None,
    };
    let mut config = VmConfig {
        machine_config: MachineConfig {
            vcpu_count: spec.vcpu_count,
            mem_size_mib: spec.mem_size_mib,
            smt: spec.smt,
            cpu_template,
            track_dirty_pages: spec.track_dirty_pages,
            huge_pages: spec.huge_pages,
        },
        logger: previous.logger.clone(),
        metrics: previous.metrics.clone(),
        cairn: previous.cairn.clone(),
        mmds_config: machine.mmds().map(crate::mmds::config_of),
        ..VmConfig::default()
    };
    for attachment in machine.virtio_devices() {
        match &attachment.device {
            VirtioHandle::Block(d) => {
                let d = lock(d);
                let c = d.config();
                let settings = spec.device_settings.drive(&c.drive_id);
                config.drives.push(DriveConfig {
                    drive_id: c.drive_id.clone(),
                    path_on_host: c.path.clone(),
                    is_root_device: settings.is_some_and(|s| s.is_root_device),
                    is_read_only: Some(c.read_only),
                    partuuid: settings.and_then(|s| s.partuuid.clone()),
                    cache_type: settings.and_then(|s| s.cache_type),
                    io_engine: settings.and_then(|s| s.io_engine),
                    rate_limiter: crate::rate_limit::api_config(&d.rate_limiter().config()),
                    socket: None,
                });
            }
            VirtioHandle::Net(d) => {
                let d = lock(d);
                let c = d.config();
                config.network_interfaces.push(NetConfig {
                    iface_id: c.iface_id.clone(),
                    host_dev_name: c.host_dev_name.clone(),
                    guest_mac: c.guest_mac.map(format_mac),
                    rx_rate_limiter: crate::rate_limit::api_config(&d.rate_limiters().0.config()),
                    tx_rate_limiter: crate::rate_limit::api_config(&d.rate_limiters().1.config()),
                    mtu: c.mtu,
                });
            }
            VirtioHandle::Vsock(d) => {
                let d = lock(d);
                let c = d.config();
                config.vsock = Some(VsockConfig {
                    vsock_id: None,
                    guest_cid: c.guest_cid,
                    uds_path: c.uds_path.clone(),
                });
            }
            VirtioHandle::Rng(d) => {
                config.entropy = Some(EntropyConfig {
                    rate_limiter: crate::rate_limit::api_config(&lock(d).rate_limiter().config()),
                })
            }
            VirtioHandle::Balloon(d) => {
                let c = lock(d).config();
                config.balloon = Some(crate::config::BalloonConfig {
                    amount_mib: c.amount_mib,
                    deflate_on_oom: c.deflate_on_oom,
                    stats_polling_interval_s: c.stats_polling_interval_s,
                    free_page_hinting: c.free_page_hinting,
                    free_page_reporting: c.free_page_reporting,
                });
            }
        }
    }
    config
}

/// `06:00:ac:10:00:02`, as Firecracker writes a MAC.
fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_read_as_firecracker_writes_them() {
        assert_eq!(format_mac([0x06, 0, 0xac, 0x10, 0, 2]), "06:00:ac:10:00:02");
        assert_eq!(
            crate::config::parse_mac(&format_mac([1, 2, 3, 4, 5, 255])),
            Some([1, 2, 3, 4, 5, 255])
        );
    }
}
