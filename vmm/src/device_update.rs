//! Firecracker's device updates after boot: `PATCH /drives/{id}` (a new backing file, new rate
//! limiter buckets) and `PATCH /network-interfaces/{id}` (new rate limiter buckets). The running
//! device changes first; the VMM's configuration (what `GET /vm/config` shows) follows it.
//! Before boot both are refused by the controller, as Firecracker refuses them.

use std::sync::{Mutex, MutexGuard};

use cairn_devices::rate_limiter::LimiterConfig;
use cairn_devices::virtio::block::RawFile;

use crate::config::{DriveUpdate, NetworkInterfaceUpdate, VmConfig};
use crate::device_manager::VirtioHandle;
use crate::machine::Machine;
use crate::rate_limit::{api_config, limiter_config};

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Apply `update` to the running drive, then to `config`. `layered`: the VMM keeps cairn
/// checkpoints, so a writable drive's disk is a layered store whose backing file cannot be
/// swapped underneath it. Nothing changes when the new file cannot be opened.
pub fn patch_drive(
    machine: &Machine,
    config: &mut VmConfig,
    update: DriveUpdate,
    layered: bool,
) -> Result<(), String> {
    let dev = machine
        .virtio_devices()
        .iter()
        .find_map(|a| match &a.device {
            VirtioHandle::Block(d) if lock(d).config().drive_id == update.drive_id => Some(d),
            _ => None,
        })
        .ok_or_else(|| format!("drive_id: no drive `{}`", update.drive_id))?;
    if update.path_on_host.is_none() && update.rate_limiter.is_none() {
        // Firecracker takes such a PATCH for a vhost-user drive, which cairn has none of.
        return Err("nothing to change: give path_on_host or rate_limiter".into());
    }
    let mut dev = lock(dev);
    let read_only = dev.config().read_only;
    let backend = match &update.path_on_host {
        Some(_) if layered && !read_only => {
            return Err(
                "path_on_host: a writable drive's disk is in cairn's checkpoint store \
                        (--checkpoint-dir), so its backing file cannot be replaced"
                    .into(),
            );
        }
        Some(path) => Some(
            RawFile::open(path, read_only)
                .map_err(|e| format!("path_on_host: cannot open {}: {e}", path.display()))?,
        ),
        None => None,
    };
    if let Some(rl) = &update.rate_limiter {
        dev.update_rate_limiter(&limiter_config(Some(rl)))
            .map_err(|e| format!("rate_limiter: {e}"))?;
    }
    if let (Some(path), Some(backend)) = (&update.path_on_host, backend) {
        dev.swap_disk(path.clone(), Box::new(backend));
    }
    if let Some(d) = config
        .drives
        .iter_mut()
        .find(|d| d.drive_id == update.drive_id)
    {
        if let Some(path) = update.path_on_host {
            d.path_on_host = path;
        }
        d.rate_limiter = api_config(&dev.rate_limiter().config());
    }
    Ok(())
}

/// Apply `update`'s rate limiters to the running interface, then to `config`.
pub fn patch_network_interface(
    machine: &Machine,
    config: &mut VmConfig,
    update: NetworkInterfaceUpdate,
) -> Result<(), String> {
    let dev = machine
        .virtio_devices()
        .iter()
        .find_map(|a| match &a.device {
            VirtioHandle::Net(d) if lock(d).config().iface_id == update.iface_id => Some(d),
            _ => None,
        })
        .ok_or_else(|| format!("iface_id: no network interface `{}`", update.iface_id))?;
    let mut dev = lock(dev);
    let side = |rl: &Option<_>| match rl {
        Some(rl) => limiter_config(Some(rl)),
        None => LimiterConfig::default(),
    };
    dev.update_rate_limiters(
        &side(&update.rx_rate_limiter),
        &side(&update.tx_rate_limiter),
    )
    .map_err(|e| format!("rate limiter: {e}"))?;
    if let Some(n) = config
        .network_interfaces
        .iter_mut()
        .find(|n| n.iface_id == update.iface_id)
    {
        let (rx, tx) = dev.rate_limiters();
        n.rx_rate_limiter = api_config(&rx.config());
        n.tx_rate_limiter = api_config(&tx.config());
    }
    Ok(())
}
