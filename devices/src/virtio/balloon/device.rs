//! The virtio-balloon device.

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::eventfd::EventFd;

use super::free_page::HintingState;
use super::stats::{BalloonStats, MAX_STATS, STAT_SIZE};
use super::{
    DEFLATE_INDEX, INFLATE_INDEX, PAGES_PER_MIB, PFN_SHIFT, QUEUE_SIZE, STATS_INDEX,
    VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_FREE_PAGE_HINT, VIRTIO_BALLOON_F_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::virtio::activation::QueueEvents;
use crate::virtio::serve::serve_queue;
use crate::virtio::{
    device_type, read_config_bytes, ActivateContext, ActivateError, IrqKind, IrqTrigger,
    VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::GuestMemoryMmap;

/// Size of the configuration space: `num_pages`, `actual` and `free_page_hint_cmd_id`, each a
/// little-endian `u32` (as Firecracker's; `poison_val` is not offered).
const CONFIG_SPACE_SIZE: usize = 12;
/// Most page frame numbers read from one inflate descriptor.
const MAX_PFNS_PER_DESC: u32 = 256;

/// Why a balloon operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// Creating an eventfd or timerfd failed.
    #[error("cannot create eventfd or timerfd: {0}")]
    Fd(std::io::Error),
    /// The target does not fit in 4 KiB pages counted in 32 bits.
    #[error("Requested memory should be less than {0}MiB")]
    TooMuchMemoryRequested(u32),
    /// The driver has not set the device up yet.
    #[error("Device not activated yet.")]
    DeviceNotActive,
    /// Statistics were asked for, but polling is off.
    #[error("Received stats query when stats are disabled.")]
    StatisticsDisabled,
    /// Statistics cannot be turned on or off once the device exists.
    #[error("Statistics cannot be enabled/disabled after activation.")]
    StatisticsStateChange,
    /// Raising the configuration-change interrupt failed.
    #[error("cannot raise the configuration interrupt: {0}")]
    Interrupt(std::io::Error),
    /// A free page hinting call on a balloon configured without it.
    #[error("Attempting to use hinting when not enabled")]
    HintingNotEnabled,
}

/// How the balloon is configured (Firecracker's `PUT /balloon` body).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    /// Target size in MiB.
    pub amount_mib: u32,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
    /// Statistics polling interval in seconds; 0: no statistics queue.
    pub stats_polling_interval_s: u16,
    /// Offer VIRTIO_BALLOON_F_FREE_PAGE_HINT (a hinting queue).
    pub free_page_hinting: bool,
    /// Offer VIRTIO_BALLOON_F_REPORTING (a reporting queue).
    pub free_page_reporting: bool,
}

/// MiB to 4 KiB pages, refusing what does not fit in a `u32`.
pub fn mib_to_pages(amount_mib: u32) -> Result<u32, BalloonError> {
    amount_mib
        .checked_mul(PAGES_PER_MIB)
        .ok_or(BalloonError::TooMuchMemoryRequested(
            u32::MAX / PAGES_PER_MIB,
        ))
}

pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) queue_evts: Vec<EventFd>,
    pub(super) interrupt: Arc<IrqTrigger>,
}

/// A virtio memory balloon.
pub struct Balloon {
    pub(super) acked_features: u64,
    pub(super) avail_features: u64,
    /// The target, in 4 KiB pages (config space `num_pages`).
    pub(super) num_pages: u32,
    /// What the driver says it holds (config space `actual`).
    pub(super) actual_pages: u32,
    pub(super) stats_polling_interval_s: u16,
    /// The statistics buffer the device holds until the next poll.
    pub(super) stats_desc_index: Option<u16>,
    pub(super) latest_stats: BalloonStats,
    /// Signalled on activation and reset, so the event handler (re)registers the queue eventfds.
    pub(super) activate_evt: EventFd,
    pub(super) registered: QueueEvents,
    /// Fires every polling interval while statistics are on and the device is active.
    pub(super) stats_timer: std::os::fd::OwnedFd,
    pub(super) active: Option<Active>,
    queue_sizes: Vec<u16>,
    pub(super) queues: Vec<Queue>,
    pub(super) counts: BalloonCounts,
    /// Free page hinting: the run the host asked for and what the driver last said.
    pub(super) hinting: HintingState,
    /// Restored from a checkpoint and not yet re-activated: the first activation ends any
    /// hinting run (the client that started it is gone), so the driver frees what it holds.
    pub(super) end_hinting_on_activate: bool,
}

/// What the balloon has done since the VMM started (Firecracker's `balloon` metrics group).
/// Not part of the device's state: each process counts its own.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BalloonCounts {
    /// Inflate buffers served.
    pub inflate_count: u64,
    /// Deflate buffers served.
    pub deflate_count: u64,
    /// Statistics buffers read.
    pub stats_updates_count: u64,
    /// Statistics buffers that could not be read (outside guest RAM, or a broken ring).
    pub stats_update_fails: u64,
    /// Ranges the driver reported free.
    pub free_page_report_count: u64,
    /// Bytes of reported ranges given back to the host.
    pub free_page_report_freed: u64,
    /// Reported ranges that could not be given back (outside guest RAM, or madvise failed).
    pub free_page_report_fails: u64,
    /// Hinted ranges taken (those of the current run).
    pub free_page_hint_count: u64,
    /// Bytes of hinted ranges given back to the host.
    pub free_page_hint_freed: u64,
    /// Hinted ranges that could not be given back.
    pub free_page_hint_fails: u64,
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon")
            .field("num_pages", &self.num_pages)
            .field("actual_pages", &self.actual_pages)
            .field("activated", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Balloon {
    /// A new, inactive balloon.
    pub fn new(cfg: BalloonConfig) -> Result<Self, BalloonError> {
        let mut avail_features = 1u64 << VIRTIO_F_VERSION_1;
        let mut queues = 2;
        if cfg.stats_polling_interval_s > 0 {
            avail_features |= 1 << VIRTIO_BALLOON_F_STATS_VQ;
            queues = 3;
        }
        if cfg.deflate_on_oom {
            avail_features |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        // The optional queues come in feature-bit order: statistics, hinting, reporting.
        if cfg.free_page_hinting {
            avail_features |= 1 << VIRTIO_BALLOON_F_FREE_PAGE_HINT;
            queues += 1;
        }
        if cfg.free_page_reporting {
            avail_features |= 1 << VIRTIO_BALLOON_F_REPORTING;
            queues += 1;
        }
        Ok(Self {
            acked_features: 0,
            avail_features,
            num_pages: mib_to_pages(cfg.amount_mib)?,
            actual_pages: 0,
            stats_polling_interval_s: cfg.stats_polling_interval_s,
            stats_desc_index: None,
            latest_stats: BalloonStats::default(),
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(BalloonError::Fd)?,
            registered: QueueEvents::default(),
            stats_timer: nonblocking_timer()?,
            active: None,
            queue_sizes: vec![QUEUE_SIZE; queues],
            queues: Vec::new(),
            counts: BalloonCounts::default(),
            hinting: HintingState::default(),
            end_hinting_on_activate: false,
        })
    }

    /// What the balloon has done since the VMM started.
    pub fn counts(&self) -> BalloonCounts {
        self.counts
    }

    /// The configuration as `GET /balloon` shows it.
    pub fn config(&self) -> BalloonConfig {
        BalloonConfig {
            amount_mib: self.num_pages / PAGES_PER_MIB,
            deflate_on_oom: self.avail_features & (1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM) != 0,
            stats_polling_interval_s: self.stats_polling_interval_s,
            free_page_hinting: self.free_page_hinting(),
            free_page_reporting: self.free_page_reporting(),
        }
    }

    /// Whether the hinting queue is offered.
    pub fn free_page_hinting(&self) -> bool {
        self.avail_features & (1 << VIRTIO_BALLOON_F_FREE_PAGE_HINT) != 0
    }

    /// Whether the reporting queue is offered.
    pub fn free_page_reporting(&self) -> bool {
        self.avail_features & (1 << VIRTIO_BALLOON_F_REPORTING) != 0
    }

    /// Index of the hinting queue: after inflate, deflate and statistics (when on).
    pub(super) fn hinting_index(&self) -> Option<usize> {
        self.free_page_hinting()
            .then(|| STATS_INDEX + usize::from(self.stats_polling_interval_s > 0))
    }

    /// Index of the reporting queue: the last one.
    pub(super) fn reporting_index(&self) -> Option<usize> {
        self.free_page_reporting()
            .then(|| self.queue_sizes.len().saturating_sub(1))
    }

    /// Target in 4 KiB pages.
    pub fn num_pages(&self) -> u32 {
        self.num_pages
    }

    /// Pages the driver says it holds.
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    /// The eventfd the event handler watches for activation and reset.
    pub fn activate_evt(&self) -> &EventFd {
        &self.activate_evt
    }

    /// Set a new target (after boot): the driver hears of it through a configuration interrupt.
    /// Refused while the driver has not set the device up, and beyond guest memory's size.
    pub fn update_size(&mut self, amount_mib: u32) -> Result<(), BalloonError> {
        let Some(active) = &self.active else {
            return Err(BalloonError::DeviceNotActive);
        };
        let mem_mib = active.mem.iter().map(|r| r.len()).sum::<u64>() >> 20;
        if u64::from(amount_mib) > mem_mib {
            return Err(BalloonError::TooMuchMemoryRequested(amount_mib));
        }
        self.num_pages = mib_to_pages(amount_mib)?;
        active
            .interrupt
            .trigger(IrqKind::Config)
            .map_err(BalloonError::Interrupt)
    }

    /// Change the statistics polling interval (after boot). Statistics cannot be turned on or
    /// off: both the old and new interval must be non-zero (or equal).
    pub fn update_stats_polling_interval(&mut self, interval_s: u16) -> Result<(), BalloonError> {
        if interval_s == self.stats_polling_interval_s {
            return Ok(());
        }
        if interval_s == 0 || self.stats_polling_interval_s == 0 {
            return Err(BalloonError::StatisticsStateChange);
        }
        self.stats_polling_interval_s = interval_s;
        // Ask for fresh statistics now, then every new interval.
        self.trigger_stats_update();
        self.arm_stats_timer();
        Ok(())
    }

    /// The latest statistics, with the target and actual sizes. Refused with polling off.
    pub fn latest_stats(&self) -> Result<BalloonStats, BalloonError> {
        if self.stats_polling_interval_s == 0 {
            return Err(BalloonError::StatisticsDisabled);
        }
        Ok(self.latest_stats)
    }

    /// Arm the statistics timer for the current interval while active with statistics on;
    /// stop it otherwise. Called from the event loop's thread.
    pub(super) fn arm_stats_timer(&mut self) {
        let every = match (self.stats_polling_interval_s, &self.active) {
            (0, _) | (_, None) => std::time::Duration::ZERO,
            (s, Some(_)) => std::time::Duration::from_secs(u64::from(s)),
        };
        if let Err(e) = set_timer(&self.stats_timer, every) {
            tracing::error!("virtio-balloon: cannot arm the statistics timer: {e}");
        }
    }

    /// The queue eventfds of the active device (none while inactive).
    pub(super) fn queue_evts(&self) -> &[EventFd] {
        self.active.as_ref().map_or(&[], |a| &a.queue_evts)
    }

    /// Inflate: drop every page the driver hands over from the host.
    pub fn process_inflate(&mut self) {
        let (Some(active), Some(queue)) =
            (self.active.as_ref(), self.queues.get_mut(INFLATE_INDEX))
        else {
            return;
        };
        let mem = &active.mem;
        let served = serve_queue(queue, mem, &active.interrupt, |chain| {
            for desc in chain {
                if desc.is_write_only() || desc.len() % 4 != 0 {
                    continue;
                }
                let count = (desc.len() / 4).min(MAX_PFNS_PER_DESC);
                for i in 0..count {
                    let Some(at) = desc.addr().checked_add(u64::from(i) * 4) else {
                        break;
                    };
                    match mem.read_obj::<u32>(at) {
                        Ok(pfn) => discard_page(mem, pfn),
                        Err(_) => break,
                    }
                }
            }
            0
        });
        self.counts.inflate_count += served as u64;
    }

    /// Deflate: the pages come back to the guest on its next touch; nothing to do but return
    /// the buffers.
    pub fn process_deflate(&mut self) {
        let (Some(active), Some(queue)) =
            (self.active.as_ref(), self.queues.get_mut(DEFLATE_INDEX))
        else {
            return;
        };
        let served = serve_queue(queue, &active.mem, &active.interrupt, |_| 0);
        self.counts.deflate_count += served as u64;
    }

    /// Statistics: read the buffer the driver filled and keep it until the next poll.
    pub fn process_stats(&mut self) {
        // With statistics off, index 2 is the hinting or reporting queue.
        if self.stats_polling_interval_s == 0 {
            return;
        }
        let (Some(active), Some(queue)) = (self.active.as_ref(), self.queues.get_mut(STATS_INDEX))
        else {
            return;
        };
        let mem = &active.mem;
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    tracing::warn!("virtio-balloon: bad statistics ring: {e}");
                    self.counts.stats_update_fails += 1;
                    None
                }
            };
            let Some(chain) = chain else {
                break;
            };
            if let Some(prev) = self.stats_desc_index.take() {
                tracing::warn!("virtio-balloon: driver sent a second statistics buffer");
                return_used(queue, mem, &active.interrupt, prev);
            }
            let head = chain.head_index();
            if let Some(desc) = chain.into_iter().next() {
                let len = desc.len().min(MAX_STATS * STAT_SIZE) as usize;
                let mut buf = vec![0u8; len];
                if mem.read_slice(&mut buf, desc.addr()).is_ok() {
                    self.latest_stats.update_from(&buf);
                    self.counts.stats_updates_count += 1;
                } else {
                    tracing::debug!("virtio-balloon: statistics buffer outside guest RAM");
                    self.counts.stats_update_fails += 1;
                }
            }
            self.stats_desc_index = Some(head);
        }
    }

    /// Hand the held statistics buffer back, so the driver refills it.
    pub fn trigger_stats_update(&mut self) {
        // With statistics off, index 2 is the hinting or reporting queue.
        if self.stats_polling_interval_s == 0 {
            return;
        }
        let (Some(active), Some(queue)) = (self.active.as_ref(), self.queues.get_mut(STATS_INDEX))
        else {
            return;
        };
        if let Some(head) = self.stats_desc_index.take() {
            return_used(queue, &active.mem, &active.interrupt, head);
        }
    }
}

/// A timerfd whose read never blocks the event loop (a re-armed timer may have been reported
/// ready before).
fn nonblocking_timer() -> Result<std::os::fd::OwnedFd, BalloonError> {
    use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
    timerfd_create(
        TimerfdClockId::Monotonic,
        TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
    )
    .map_err(|e| BalloonError::Fd(e.into()))
}

/// Arm `timer` to fire every `every` (zero: disarm).
pub(super) fn set_timer(
    timer: &std::os::fd::OwnedFd,
    every: std::time::Duration,
) -> std::io::Result<()> {
    use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
    let ts = Timespec {
        tv_sec: every.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: every.subsec_nanos().into(),
    };
    let spec = Itimerspec {
        it_interval: ts,
        it_value: ts,
    };
    timerfd_settime(timer, TimerfdTimerFlags::empty(), &spec)?;
    Ok(())
}

fn return_used(queue: &mut Queue, mem: &GuestMemoryMmap, irq: &IrqTrigger, head: u16) {
    if let Err(e) = queue.add_used(mem, head, 0) {
        tracing::warn!("virtio-balloon: cannot return descriptor {head}: {e}");
        return;
    }
    if let Err(e) = irq.trigger(IrqKind::Vring) {
        tracing::warn!("virtio-balloon: cannot raise interrupt: {e}");
    }
}

/// Give one 4 KiB guest page back to the host. A page number outside guest RAM is ignored.
fn discard_page(mem: &GuestMemoryMmap, pfn: u32) {
    let addr = GuestAddress(u64::from(pfn) << PFN_SHIFT);
    if let Err(e) = discard_range(mem, addr, 1 << PFN_SHIFT) {
        tracing::debug!("virtio-balloon: page {pfn:#x} not discarded: {e}");
    }
}

/// Why a range was not given back to the host.
#[derive(Debug, thiserror::Error)]
pub(super) enum DiscardError {
    /// Part of the range is not guest RAM (or it spans two regions).
    #[error("range {0:#x}+{1:#x} is not inside one guest RAM region")]
    OutsideRam(u64, u64),
    /// madvise refused.
    #[error("madvise failed: {0}")]
    Madvise(std::io::Error),
}

/// Give the whole 4 KiB pages inside `addr..addr + len` back to the host (they read back as
/// zero). Partial pages at either end are kept: their other bytes may be in use. Returns the
/// bytes given back. The range must lie inside one guest RAM region.
pub(super) fn discard_range(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: u64,
) -> Result<u64, DiscardError> {
    let outside = || DiscardError::OutsideRam(addr.0, len);
    let region = mem.find_region(addr).ok_or_else(outside)?;
    let offset = addr.unchecked_offset_from(region.start_addr());
    let end = offset
        .checked_add(len)
        .filter(|&end| end <= region.len())
        .ok_or_else(outside)?;
    let page = 1u64 << PFN_SHIFT;
    let first = offset.next_multiple_of(page);
    let last = end - end % page;
    if first >= last {
        return Ok(0);
    }
    let host = region
        .get_host_address(MemoryRegionAddress(first))
        .map_err(|_| outside())?;
    let bytes = usize::try_from(last - first).map_err(|_| outside())?;
    // Guest RAM in a shared tmpfs file (cairn's `guest_memory_dir`): MADV_DONTNEED would only
    // unmap the pages, leaving them allocated in the file with their old content; MADV_REMOVE
    // punches them out of the file. The kernel refuses it for private mappings (anonymous
    // memory, or a restored VM's memory file), which MADV_DONTNEED serves as before (as it
    // does after cairn maps shared RAM privately for a snapshot, when the flags recorded here
    // still say shared and MADV_REMOVE is refused).
    let shared_file = region.file_offset().is_some() && region.flags() & libc::MAP_SHARED != 0;
    if shared_file && madvise(host, bytes, libc::MADV_REMOVE).is_ok() {
        return Ok(last - first);
    }
    madvise(host, bytes, libc::MADV_DONTNEED).map_err(DiscardError::Madvise)?;
    Ok(last - first)
}

/// `madvise(advice)` over `len` bytes at `host`: `MADV_DONTNEED` or `MADV_REMOVE`.
#[allow(unsafe_code)]
fn madvise(host: *mut u8, len: usize, advice: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `host..host + len` lies inside one mapped guest memory region (checked by the
    // caller against the region's length). MADV_DONTNEED on private memory and MADV_REMOVE on a
    // shared file mapping only make the pages read back as zero (a private file mapping reads
    // the file's page again); no Rust reference into guest memory is held across it, as guest
    // memory is only ever accessed through volatile copies.
    let rc = unsafe { libc::madvise(host.cast(), len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut space = [0u8; CONFIG_SPACE_SIZE];
        space[..4].copy_from_slice(&self.num_pages.to_le_bytes());
        space[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        space[8..].copy_from_slice(&self.hinting.host_cmd.to_le_bytes());
        read_config_bytes(&space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        let Some(end) = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data.len()).map(|e| (o, e)))
        else {
            return;
        };
        let (start, end) = end;
        if start < 4 || end > 8 {
            tracing::debug!("virtio-balloon: ignoring config write at {offset:#x}");
            return;
        }
        let mut actual = self.actual_pages.to_le_bytes();
        actual[start - 4..end - 4].copy_from_slice(data);
        self.actual_pages = u32::from_le_bytes(actual);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        ctx.check_queues(self.queue_sizes.len())?;
        self.queues = ctx.queues;
        self.active = Some(Active {
            mem: ctx.mem,
            queue_evts: ctx.queue_evts,
            interrupt: ctx.interrupt,
        });
        // The event handler arms the statistics timer: this runs on a vCPU thread, whose
        // seccomp filter has no timerfd calls.
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.queues.clear();
        self.acked_features = 0;
        self.stats_desc_index = None;
        // The event handler stops the statistics timer (see `activate`).
        if let Err(e) = self.activate_evt.write(1) {
            tracing::warn!("virtio-balloon: cannot signal reset: {e}");
        }
        true
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
