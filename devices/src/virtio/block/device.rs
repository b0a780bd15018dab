//! The virtio-blk device: features, configuration space, activation and queue processing.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{DiskBackend, RawFile};
use super::request::Disk;
use super::{features, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, QUEUE_SIZE, SEG_MAX, SIZE_MAX};
use crate::rate_limiter::{LimiterConfig, RateLimiter};
use crate::virtio::activation::QueueEvents;
use crate::virtio::serve::{serve_queue, serve_queue_throttled};
use crate::virtio::{
    device_type, ActivateContext, ActivateError, IrqKind, IrqTrigger, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::GuestMemoryMmap;

/// DISCARD / WRITE_ZEROES alignment hint, in sectors (4 KiB).
const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Length of the configuration space we expose (up to `write_zeroes_may_unmap` + padding).
const CONFIG_LEN: usize = 60;

/// How a drive is configured (Firecracker's drive fields that matter to the device).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// Drive ID; the first 20 bytes are the GET_ID answer (the guest's serial number).
    pub drive_id: String,
    /// Host path of the disk image.
    pub path: PathBuf,
    /// Refuse writes and advertise `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
}

/// Why a block device could not be built or restored.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Opening the disk image failed.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Creating the activation eventfd failed.
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
    /// The disk's size differs from the checkpoint's.
    #[error("disk is {found} bytes, checkpoint expects {expected}")]
    DiskSizeChanged {
        /// Size in the checkpoint.
        expected: u64,
        /// Size of the backend now.
        found: u64,
    },
}

/// What an activated device works with.
struct Active {
    mem: GuestMemoryMmap,
    queue_evt: EventFd,
    interrupt: Arc<IrqTrigger>,
}

/// A virtio-blk device with one request queue.
pub struct Block {
    pub(super) config: BlockConfig,
    pub(super) disk: Disk,
    pub(super) disk_len: u64,
    avail_features: u64,
    pub(super) acked_features: u64,
    config_space: [u8; CONFIG_LEN],
    /// Signalled on activation and reset, so the event handler (re)registers the queue eventfd.
    pub(super) activate_evt: EventFd,
    /// The queue eventfd as registered with the event loop.
    pub(super) registered: QueueEvents,
    active: Option<Active>,
    /// Empty, or the one queue while activated.
    queues: Vec<Queue>,
    /// Firecracker's `rate_limiter` (unlimited by default).
    pub(super) limiter: RateLimiter,
    /// The limiter timerfd as registered with the event loop.
    pub(super) limiter_registered: Option<std::os::fd::RawFd>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("config", &self.config)
            .field("disk", &self.disk)
            .field("acked_features", &self.acked_features)
            .field("activated", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Block {
    /// A device for `config`, opening `config.path` as a raw image.
    pub fn open(config: BlockConfig) -> Result<Self, BlockError> {
        let backend =
            RawFile::open(&config.path, config.read_only).map_err(|source| BlockError::Open {
                path: config.path.clone(),
                source,
            })?;
        Self::new(config, Box::new(backend))
    }

    /// A device for `config` on an existing backend (`config.path` is then only recorded).
    pub fn new(config: BlockConfig, backend: Box<dyn DiskBackend>) -> Result<Self, BlockError> {
        let disk_len = backend.len();
        let disk = Disk::new(backend, config.read_only, &config.drive_id);
        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << features::FLUSH)
            | (1 << features::SEG_MAX)
            | (1 << features::SIZE_MAX);
        if config.read_only {
            avail_features |= 1 << features::RO;
        } else {
            avail_features |= (1 << features::DISCARD) | (1 << features::WRITE_ZEROES);
        }
        let config_space = build_config_space(disk.sectors());
        Ok(Self {
            config,
            disk,
            disk_len,
            avail_features,
            acked_features: 0,
            config_space,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?,
            registered: QueueEvents::default(),
            active: None,
            queues: Vec::new(),
            limiter: RateLimiter::default(),
            limiter_registered: None,
        })
    }

    /// Set or change the rate limiter (Firecracker's `rate_limiter`; a bucket left `None` is
    /// kept). Signals the event handler so that a new limiter timer gets watched.
    pub fn update_rate_limiter(&mut self, cfg: &LimiterConfig) -> std::io::Result<()> {
        self.limiter.update(cfg)?;
        if self.limiter.timer_fd() != self.limiter_registered {
            self.activate_evt.write(1)?;
        }
        Ok(())
    }

    /// Put a new disk behind the device (Firecracker's `PATCH /drives` `path_on_host`): requests
    /// from now on go to `backend`, the capacity in the configuration space follows its size,
    /// and an active device raises a configuration-change interrupt so the driver re-reads it.
    /// The read-only setting stays as configured.
    pub fn swap_disk(&mut self, path: PathBuf, backend: Box<dyn DiskBackend>) {
        self.disk_len = backend.len();
        self.disk = Disk::new(backend, self.config.read_only, &self.config.drive_id);
        self.config.path = path;
        self.config_space = build_config_space(self.disk.sectors());
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.trigger(IrqKind::Config) {
                tracing::warn!("virtio-blk: cannot raise the config interrupt: {e}");
            }
        }
    }

    /// The rate limiter.
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Replace the rate limiter (a restored one).
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) -> std::io::Result<()> {
        self.limiter = limiter;
        if self.limiter.timer_fd() != self.limiter_registered {
            self.activate_evt.write(1)?;
        }
        Ok(())
    }

    /// The drive's configuration.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// The eventfd the event handler watches for activation and reset.
    pub fn activate_evt(&self) -> &EventFd {
        &self.activate_evt
    }

    /// The queue eventfd of the active device (none while inactive).
    pub(super) fn queue_evts(&self) -> &[EventFd] {
        self.active
            .as_ref()
            .map_or(&[], |a| std::slice::from_ref(&a.queue_evt))
    }

    /// The requests served so far.
    pub fn stats(&self) -> super::request::BlockStats {
        self.disk.stats()
    }

    /// Flush the backend (before a checkpoint copies the disk).
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.disk.read_only() {
            return Ok(());
        }
        self.disk.backend_mut().flush()
    }

    /// Serve every available request, then notify the driver if it asked for it.
    pub fn process_queue(&mut self) {
        let (Some(active), Some(queue)) = (self.active.as_ref(), self.queues.first_mut()) else {
            return;
        };
        let disk = &mut self.disk;
        if !self.limiter.is_limiting() {
            serve_queue(queue, &active.mem, &active.interrupt, |chain| {
                disk.process_chain(chain, &active.mem)
            });
            return;
        }
        if self.limiter.is_blocked() {
            return;
        }
        let limiter = &mut self.limiter;
        serve_queue_throttled(queue, &active.mem, &active.interrupt, |chain| {
            disk.process_chain_limited(chain, &active.mem, Some(limiter))
        });
    }
}

/// `struct virtio_blk_config`, little endian, up to `write_zeroes_may_unmap`.
fn build_config_space(sectors: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |off: usize, bytes: &[u8]| c[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, &sectors.to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_discard_sectors
    put(40, &MAX_DISCARD_SEG.to_le_bytes()); // max_discard_seg
    put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes()); // discard_sector_alignment
    put(48, &MAX_DISCARD_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &MAX_DISCARD_SEG.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
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
        if let Some(src) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.config_space.get(o..o.checked_add(data.len())?))
        {
            data.copy_from_slice(src);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // Nothing in our configuration space is writable (no WCE, no geometry changes).
        tracing::debug!("virtio-blk: ignoring config write at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let got = ctx.queues.len();
        let (Ok([queue]), Ok([queue_evt])) = (
            <[Queue; 1]>::try_from(ctx.queues),
            <[EventFd; 1]>::try_from(ctx.queue_evts),
        ) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        self.queues = vec![queue];
        self.active = Some(Active {
            mem: ctx.mem,
            queue_evt,
            interrupt: ctx.interrupt,
        });
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
        // Let the event handler unregister the queue eventfd.
        if let Err(e) = self.activate_evt.write(1) {
            tracing::warn!("virtio-blk: cannot signal reset: {e}");
        }
        true
    }
}

#[cfg(test)]
mod tests;
