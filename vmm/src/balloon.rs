//! The balloon device's API after boot: `GET /balloon`, `PATCH /balloon`, `GET` and `PATCH
//! /balloon/statistics`, `PATCH /balloon/hinting/start|stop` and `GET /balloon/hinting/status`,
//! answered from the running device (before boot, `GET /balloon` answers from the configuration
//! and the rest are refused by the controller, as in Firecracker).

use std::sync::{Arc, Mutex, MutexGuard};

use cairn_devices::virtio::balloon::{Balloon, BalloonStats};

use crate::config::{
    BalloonConfig, BalloonHintingStart, BalloonHintingStatus, BalloonStatsReply,
    BalloonStatsUpdate, BalloonUpdate, VmConfig,
};
use crate::device_manager::VirtioHandle;
use crate::machine::Machine;

/// Firecracker's answer when no balloon is configured.
pub const NO_BALLOON: &str = "Balloon config error: No balloon device found.";

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running machine's balloon, if it has one.
pub fn find(machine: &Machine) -> Option<&Arc<Mutex<Balloon>>> {
    machine
        .virtio_devices()
        .iter()
        .find_map(|a| match &a.device {
            VirtioHandle::Balloon(d) => Some(d),
            _ => None,
        })
}

/// `GET /balloon`: the running device's configuration (its current target), else the
/// configured one.
pub fn config(machine: Option<&Machine>, config: &VmConfig) -> Result<BalloonConfig, String> {
    let configured = config.balloon.ok_or_else(|| NO_BALLOON.to_string())?;
    let Some(dev) = machine.and_then(find) else {
        return Ok(configured);
    };
    let c = lock(dev).config();
    Ok(BalloonConfig {
        amount_mib: c.amount_mib,
        deflate_on_oom: c.deflate_on_oom,
        stats_polling_interval_s: c.stats_polling_interval_s,
        free_page_hinting: c.free_page_hinting,
        free_page_reporting: c.free_page_reporting,
    })
}

/// `PATCH /balloon`: a new target for the running device, then for `config`.
pub fn patch(
    machine: &Machine,
    config: &mut VmConfig,
    update: BalloonUpdate,
) -> Result<(), String> {
    with_balloon(machine, |b| b.update_size(update.amount_mib))?;
    if let Some(b) = &mut config.balloon {
        b.amount_mib = update.amount_mib;
    }
    Ok(())
}

/// `PATCH /balloon/statistics`: a new polling interval (statistics stay on, or off).
pub fn patch_stats(
    machine: &Machine,
    config: &mut VmConfig,
    update: BalloonStatsUpdate,
) -> Result<(), String> {
    with_balloon(machine, |b| {
        b.update_stats_polling_interval(update.stats_polling_interval_s)
    })?;
    if let Some(b) = &mut config.balloon {
        b.stats_polling_interval_s = update.stats_polling_interval_s;
    }
    Ok(())
}

/// Firecracker's answer to a `PATCH /balloon...` or hinting call on a running machine without a
/// balloon.
pub const NO_BALLOON_DEVICE: &str =
    "Balloon update error: Failed perform action on device: Device not found";

/// Run `f` on the running balloon, with Firecracker's wording for the calls it answers with
/// `BalloonUpdate` errors (`PATCH /balloon`, `PATCH /balloon/statistics`, the hinting calls).
fn with_balloon<T>(
    machine: &Machine,
    f: impl FnOnce(&mut Balloon) -> Result<T, cairn_devices::virtio::balloon::BalloonError>,
) -> Result<T, String> {
    let dev = find(machine).ok_or_else(|| NO_BALLOON_DEVICE.to_string())?;
    let mut dev = lock(dev);
    f(&mut dev).map_err(|e| format!("Balloon update error: Balloon: {e}"))
}

/// `PATCH /balloon/hinting/start`.
pub fn start_hinting(machine: &Machine, start: BalloonHintingStart) -> Result<(), String> {
    with_balloon(machine, |b| b.start_hinting(start.acknowledge_on_stop))
}

/// `GET /balloon/hinting/status`.
pub fn hinting_status(machine: &Machine) -> Result<BalloonHintingStatus, String> {
    let s = with_balloon(machine, |b| b.hinting_status())?;
    Ok(BalloonHintingStatus {
        host_cmd: s.host_cmd,
        guest_cmd: s.guest_cmd,
    })
}

/// `PATCH /balloon/hinting/stop`.
pub fn stop_hinting(machine: &Machine) -> Result<(), String> {
    with_balloon(machine, Balloon::stop_hinting)
}

/// `GET /balloon/statistics`.
pub fn statistics(machine: &Machine) -> Result<BalloonStatsReply, String> {
    let dev = find(machine).ok_or_else(|| NO_BALLOON.to_string())?;
    let dev = lock(dev);
    let stats = dev
        .latest_stats()
        .map_err(|e| format!("Balloon update error: {e}"))?;
    Ok(stats_reply(dev.num_pages(), dev.actual_pages(), &stats))
}

/// The reply for a device with target `num_pages`, holding `actual_pages`, that last reported
/// `stats`.
pub fn stats_reply(num_pages: u32, actual_pages: u32, stats: &BalloonStats) -> BalloonStatsReply {
    let v = |tag: usize| stats.values.get(tag).copied().flatten();
    BalloonStatsReply {
        target_pages: num_pages,
        actual_pages,
        target_mib: num_pages / 256,
        actual_mib: actual_pages / 256,
        swap_in: v(0),
        swap_out: v(1),
        major_faults: v(2),
        minor_faults: v(3),
        free_memory: v(4),
        total_memory: v(5),
        available_memory: v(6),
        disk_caches: v(7),
        hugetlb_allocations: v(8),
        hugetlb_failures: v(9),
        oom_kill: v(10),
        alloc_stall: v(11),
        async_scan: v(12),
        direct_scan: v(13),
        async_reclaim: v(14),
        direct_reclaim: v(15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_reply_names_each_tag_as_firecracker() {
        let mut s = BalloonStats::default();
        for (tag, name) in cairn_devices::virtio::balloon::stats::NAMES
            .iter()
            .enumerate()
        {
            s.update(tag as u16, tag as u64 + 100);
            let v = serde_json::to_value(stats_reply(512, 256, &s)).unwrap();
            assert_eq!(v[name], tag as u64 + 100, "{name}");
        }
        let v = serde_json::to_value(stats_reply(512, 256, &s)).unwrap();
        assert_eq!(v["target_mib"], 2);
        assert_eq!(v["actual_mib"], 1);
        assert_eq!(v["actual_pages"], 256);
    }
}
