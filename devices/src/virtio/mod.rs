//! Virtio devices and the virtio-mmio transport.
//!
//! cairn writes its own small device/transport traits (the `virtio-device` crate is not on
//! crates.io) and uses `virtio-queue` for the rings.
//!
//! How a device is wired:
//! - The VMM creates the device, wraps it in [`mmio::MmioTransport`], puts the transport on the
//!   MMIO bus and registers, with KVM, each of the transport's queue eventfds as an ioeventfd on
//!   `QUEUE_NOTIFY` (datamatch = queue index) and the [`IrqTrigger`]'s eventfd as an irqfd.
//! - The same device (`Arc<Mutex<D>>`) is added to the event loop as an `event-manager`
//!   subscriber. It registers its `activate_evt` at init; once the driver sets DRIVER_OK, the
//!   transport calls [`VirtioDevice::activate`], the device signals `activate_evt`, and its event
//!   handler then adds the queue eventfds and its backend fds to the loop.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::GuestMemoryMmap;

pub mod activation;
pub mod balloon;
pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod serve;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

/// Virtio device IDs (virtio 1.2, section 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Memory balloon.
    pub const BALLOON: u32 = 5;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// Feature bit: the device conforms to virtio 1.x (required for the modern transport).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: used/avail event index.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// `interrupt_status` bit: a used buffer was added to a queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x01;
/// `interrupt_status` bit: the configuration space changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x02;

/// Which kind of interrupt a device raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    /// Used-buffer notification.
    Vring,
    /// Configuration change.
    Config,
}

/// The interrupt line of one virtio-mmio device: the `interrupt_status` register plus an eventfd
/// that the VMM registers with KVM as an irqfd. Tests read the eventfd directly.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    /// A new line with no interrupt pending.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Set the status bit for `kind` and signal the eventfd.
    pub fn trigger(&self, kind: IrqKind) -> std::io::Result<()> {
        let bit = match kind {
            IrqKind::Vring => VIRTIO_MMIO_INT_VRING,
            IrqKind::Config => VIRTIO_MMIO_INT_CONFIG,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// The current `interrupt_status` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clear the bits the driver acknowledged (`InterruptACK`).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Restore the `interrupt_status` register from a checkpoint.
    pub fn set_status(&self, value: u32) {
        self.status.store(value, Ordering::SeqCst);
    }

    /// The eventfd to register as a KVM irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device needs.
        expected: usize,
        /// Queues the transport handed over.
        got: usize,
    },
    /// A queue the driver configured is not valid in guest memory.
    #[error("queue {0} is not valid")]
    InvalidQueue(usize),
    /// The device's backend failed to start.
    #[error("device backend failed: {0}")]
    Backend(String),
    /// Signalling the activation eventfd failed.
    #[error("cannot signal activation: {0}")]
    Signal(std::io::Error),
}

/// What a device receives when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues, configured by the driver, in index order.
    pub queues: Vec<Queue>,
    /// One notification eventfd per queue (clones of the transport's, which KVM signals).
    pub queue_evts: Vec<EventFd>,
    /// The device's interrupt line.
    pub interrupt: Arc<IrqTrigger>,
}

impl ActivateContext {
    /// Check that the driver set up exactly `expected` queues (with their eventfds), each valid in
    /// guest memory.
    pub fn check_queues(&self, expected: usize) -> Result<(), ActivateError> {
        if self.queues.len() != expected || self.queue_evts.len() != expected {
            return Err(ActivateError::QueueCount {
                expected,
                got: self.queues.len().min(self.queue_evts.len()),
            });
        }
        match self
            .queues
            .iter()
            .position(|q| !virtio_queue::QueueT::is_valid(q, &self.mem))
        {
            Some(i) => Err(ActivateError::InvalidQueue(i)),
            None => Ok(()),
        }
    }
}

/// Copy the bytes of a read-only configuration space `space` at `offset` into `data`, as far as
/// the space reaches; bytes past its end are left untouched.
pub fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= space.len() {
        return;
    }
    let n = data.len().min(space.len() - start);
    data[..n].copy_from_slice(&space[start..start + n]);
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (see [`device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers.
    fn avail_features(&self) -> u64;
    /// Features the driver accepted.
    fn acked_features(&self) -> u64;
    /// Record the features the driver accepted (already masked by `avail_features`).
    fn set_acked_features(&mut self, features: u64);
    /// Read the device-specific configuration space. Out-of-range bytes are left untouched.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device-specific configuration space. Out-of-range writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start processing queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Whether [`VirtioDevice::activate`] has succeeded and no reset happened since.
    fn is_activated(&self) -> bool;
    /// The queues the device is serving (those handed over by [`VirtioDevice::activate`], in
    /// index order, with their live ring positions); empty while not activated. The transport
    /// saves them in checkpoints and hands them back on restore, so no device has to persist
    /// its queues itself.
    fn queues(&self) -> &[Queue];
    /// The driver reset the device: stop processing, drop queues. Returns false if the device
    /// cannot be reset (the transport then reports DEVICE_NEEDS_RESET).
    fn reset(&mut self) -> bool;
}

/// A plain-data copy of a virtio queue's state, for checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    /// The maximum size in elements offered by the device.
    pub max_size: u16,
    /// Tail position of the available ring.
    pub next_avail: u16,
    /// Head position of the used ring.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx_enabled: bool,
    /// The queue size the driver selected.
    pub size: u16,
    /// Whether the driver marked the queue ready.
    pub ready: bool,
    /// Guest physical address of the descriptor table.
    pub desc_table: u64,
    /// Guest physical address of the available ring.
    pub avail_ring: u64,
    /// Guest physical address of the used ring.
    pub used_ring: u64,
}

impl From<virtio_queue::QueueState> for QueueSnapshot {
    fn from(s: virtio_queue::QueueState) -> Self {
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl From<QueueSnapshot> for virtio_queue::QueueState {
    fn from(s: QueueSnapshot) -> Self {
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}
