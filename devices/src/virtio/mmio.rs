//! The virtio-mmio transport, modern interface (version 2) only (virtio 1.2, section 4.2.2).
//!
//! One [`MmioTransport`] fronts one [`VirtioDevice`] in a 4 KiB window of the MMIO bus. How the
//! VMM wires it:
//! - put the transport on the MMIO bus at `base`, length [`MMIO_LEN`];
//! - register each of [`MmioTransport::queue_evts`] with KVM as an ioeventfd at
//!   `base + `[`NOTIFY_REG_OFFSET`], 4 bytes, `datamatch` = queue index (a write that KVM does not
//!   catch still reaches the transport, which signals the same eventfd itself);
//! - register [`MmioTransport::interrupt`]'s eventfd as an irqfd for the device's IRQ line;
//! - announce the device to Linux with [`cmdline_entry`] on the kernel command line.
//!
//! The driver is untrusted. Bad offsets, wrong access sizes, writes out of order, queue
//! addresses outside guest RAM or activation with unready queues never panic: they are ignored,
//! or the device is refused with `DEVICE_NEEDS_RESET` in the status register.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_snapshot::Persist;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::virtio::{
    ActivateContext, ActivateError, IrqKind, IrqTrigger, QueueSnapshot, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::GuestMemoryMmap;

/// Size of one device's MMIO window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of `QueueNotify`, where the queue ioeventfds go.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
/// Offset of the device-specific configuration space.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// "virt", little endian.
const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern virtio-mmio interface.
const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the driver ("CRN\0" is as good as any; Linux ignores it).
const VENDOR_ID: u32 = 0x004e_5243;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest OS found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest OS knows how to drive the device.
    pub const DRIVER: u32 = 2;
    /// The driver is ready to drive the device.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error the driver must recover from by resetting it.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}
use status::*;

// Register offsets (virtio 1.2, table 4.1).
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = NOTIFY_REG_OFFSET;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;

/// The kernel command-line entry that announces a virtio-mmio device to Linux
/// (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`): `virtio_mmio.device=4K@0x<base>:<irq>`.
pub fn cmdline_entry(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// Why a transport could not be built or restored.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device offers a queue size virtio-queue refuses (zero, too big, not a power of 2).
    #[error("device queue {index} has an invalid maximum size {max_size}")]
    QueueMaxSize {
        /// Queue index.
        index: usize,
        /// The offending size.
        max_size: u16,
    },
    /// Creating an eventfd failed.
    #[error("cannot create eventfd: {0}")]
    EventFd(io::Error),
    /// The saved state has a different number of queues than the device.
    #[error("saved state has {saved} queues, device has {device}")]
    QueueCount {
        /// Queues in the state.
        saved: usize,
        /// Queues of the device.
        device: usize,
    },
    /// A saved queue is inconsistent (size, alignment, or maximum size differ from the device).
    #[error("saved queue {0} is invalid")]
    InvalidQueue(usize),
    /// Re-activating the restored device failed.
    #[error("cannot re-activate the restored device: {0}")]
    Activate(ActivateError),
}

/// The virtio-mmio transport of one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    /// The driver's view of the queues, configured through the registers. After activation the
    /// device works on copies; [`VirtioDevice::queues`] has the live ring positions.
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<IrqTrigger>,
    device_status: u32,
    features_select: u32,
    acked_features_select: u32,
    queue_select: u32,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_status", &self.device_status)
            .field("queue_select", &self.queue_select)
            .field("queues", &self.queues)
            .field("interrupt_status", &self.interrupt.status())
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// A transport for `device` in its reset state: one notification eventfd per queue and a
    /// fresh interrupt line.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, MmioError> {
        let max_sizes = lock(&device).queue_max_sizes().to_vec();
        let queues = max_sizes
            .iter()
            .enumerate()
            .map(|(index, &max_size)| {
                Queue::new(max_size).map_err(|_| MmioError::QueueMaxSize { index, max_size })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let queue_evts = (0..queues.len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let interrupt = Arc::new(IrqTrigger::new().map_err(MmioError::EventFd)?);
        Ok(Self {
            device,
            mem,
            queues,
            queue_evts,
            interrupt,
            device_status: 0,
            features_select: 0,
            acked_features_select: 0,
            queue_select: 0,
            config_generation: 0,
        })
    }

    /// One eventfd per queue, in index order: register each as an ioeventfd at
    /// `base + NOTIFY_REG_OFFSET` with `datamatch` = its index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device's interrupt line (its eventfd is the irqfd).
    pub fn interrupt(&self) -> &Arc<IrqTrigger> {
        &self.interrupt
    }

    /// The device behind the transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The device status register.
    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    /// Tell the driver that the device's configuration space changed (e.g. a resized disk).
    pub fn notify_config_change(&mut self) -> io::Result<()> {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.trigger(IrqKind::Config)
    }

    fn status_has(&self, set: u32, clear: u32) -> bool {
        self.device_status & set == set && self.device_status & clear == 0
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    /// Apply `f` to the selected queue, but only while the driver may configure queues
    /// (after FEATURES_OK, before DRIVER_OK).
    fn update_selected_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.status_has(FEATURES_OK, DRIVER_OK | FAILED | DEVICE_NEEDS_RESET) {
            tracing::debug!(
                "virtio-mmio: queue write in status {:#x} ignored",
                self.device_status
            );
            return;
        }
        match self.queues.get_mut(self.queue_select as usize) {
            Some(q) => f(q),
            None => tracing::debug!("virtio-mmio: write to missing queue {}", self.queue_select),
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => lock(&self.device).device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let features = lock(&self.device).avail_features();
                match self.features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.device_status,
            // No shared memory regions: a length of all ones means "no such region".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.features_select = v,
            REG_DRIVER_FEATURES_SEL => self.acked_features_select = v,
            REG_DRIVER_FEATURES => self.ack_features(v),
            REG_QUEUE_SEL => self.queue_select = v,
            REG_QUEUE_NUM => self.update_selected_queue(|q| {
                // try_set_size refuses sizes that are zero, too big or not powers
                // of two; the previous size stays.
                if !matches!(
                    u16::try_from(v).map(|size| q.try_set_size(size)),
                    Ok(Ok(()))
                ) {
                    tracing::debug!("virtio-mmio: queue size {v} refused");
                }
            }),
            REG_QUEUE_READY => self.update_selected_queue(|q| q.set_ready(v == 1)),
            REG_QUEUE_DESC_LOW => {
                self.update_selected_queue(|q| q.set_desc_table_address(Some(v), None))
            }
            REG_QUEUE_DESC_HIGH => {
                self.update_selected_queue(|q| q.set_desc_table_address(None, Some(v)))
            }
            REG_QUEUE_DRIVER_LOW => {
                self.update_selected_queue(|q| q.set_avail_ring_address(Some(v), None))
            }
            REG_QUEUE_DRIVER_HIGH => {
                self.update_selected_queue(|q| q.set_avail_ring_address(None, Some(v)))
            }
            REG_QUEUE_DEVICE_LOW => {
                self.update_selected_queue(|q| q.set_used_ring_address(Some(v), None))
            }
            REG_QUEUE_DEVICE_HIGH => {
                self.update_selected_queue(|q| q.set_used_ring_address(None, Some(v)))
            }
            REG_QUEUE_NOTIFY => {
                // Normally KVM's ioeventfd swallows this write; signal the eventfd ourselves if not.
                match self.queue_evts.get(v as usize) {
                    Some(evt) => {
                        if let Err(e) = evt.write(1) {
                            tracing::warn!("virtio-mmio: cannot signal queue {v}: {e}");
                        }
                    }
                    None => tracing::debug!("virtio-mmio: notify for missing queue {v}"),
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            _ => tracing::debug!("virtio-mmio: write of {v:#x} to unknown register {offset:#x}"),
        }
    }

    fn ack_features(&mut self, v: u32) {
        if !self.status_has(DRIVER, FEATURES_OK | FAILED | DEVICE_NEEDS_RESET) {
            tracing::debug!(
                "virtio-mmio: feature write in status {:#x} ignored",
                self.device_status
            );
            return;
        }
        let shift = match self.acked_features_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let mut device = lock(&self.device);
        let page_mask = 0xffff_ffffu64 << shift;
        let offered = device.avail_features() & page_mask;
        let wanted = (u64::from(v) << shift) & page_mask;
        if wanted & !offered != 0 {
            tracing::debug!(
                "virtio-mmio: driver acked unoffered features {:#x}",
                wanted & !offered
            );
        }
        let acked = (device.acked_features() & !page_mask) | (wanted & offered);
        device.set_acked_features(acked);
    }

    /// The driver wrote `v` to the status register (virtio 1.2, 3.1.1: each step adds one bit).
    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & FAILED != 0 {
            self.device_status |= FAILED;
            return;
        }
        let current = self.device_status & !DEVICE_NEEDS_RESET;
        let wanted = v & !DEVICE_NEEDS_RESET;
        if self.device_status & (DEVICE_NEEDS_RESET | FAILED) != 0 || wanted == current {
            return;
        }
        let new_bit = wanted & !current;
        let legal = wanted & current == current
            && match new_bit {
                ACKNOWLEDGE => current == 0,
                DRIVER => current == ACKNOWLEDGE,
                FEATURES_OK => current == ACKNOWLEDGE | DRIVER,
                DRIVER_OK => current == ACKNOWLEDGE | DRIVER | FEATURES_OK,
                _ => false,
            };
        if !legal {
            tracing::warn!("virtio-mmio: illegal status change {current:#x} -> {v:#x} ignored");
            return;
        }
        match new_bit {
            FEATURES_OK => {
                // A modern device needs VERSION_1; refusing FEATURES_OK makes the driver give up.
                if lock(&self.device).acked_features() & (1 << VIRTIO_F_VERSION_1) == 0 {
                    tracing::warn!("virtio-mmio: driver did not accept VERSION_1");
                    return;
                }
                self.device_status = wanted;
            }
            DRIVER_OK => {
                self.device_status = wanted;
                if let Err(e) = self.activate() {
                    tracing::warn!("virtio-mmio: device activation failed: {e}");
                    self.device_status |= DEVICE_NEEDS_RESET;
                    if let Err(e) = self.interrupt.trigger(IrqKind::Config) {
                        tracing::warn!("virtio-mmio: cannot raise config interrupt: {e}");
                    }
                }
            }
            _ => self.device_status = wanted,
        }
    }

    /// Hand the configured queues to the device.
    fn activate(&mut self) -> Result<(), ActivateError> {
        let mut device = lock(&self.device);
        let event_idx = device.acked_features() & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                if !q.is_valid(&self.mem) {
                    return Err(ActivateError::InvalidQueue(i));
                }
                let mut copy = copy_queue(q).ok_or(ActivateError::InvalidQueue(i))?;
                copy.set_event_idx(event_idx);
                Ok(copy)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ctx = self.activate_context(queues)?;
        device.activate(ctx)
    }

    fn activate_context(&self, queues: Vec<Queue>) -> Result<ActivateContext, ActivateError> {
        let queue_evts = self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ActivateError::Signal)?;
        Ok(ActivateContext {
            mem: self.mem.clone(),
            queues,
            queue_evts,
            interrupt: self.interrupt.clone(),
        })
    }

    /// The driver wrote 0 to the status register.
    fn reset(&mut self) {
        {
            let mut device = lock(&self.device);
            if device.is_activated() && !device.reset() {
                tracing::warn!("virtio-mmio: device cannot be reset");
                self.device_status |= DEVICE_NEEDS_RESET;
                return;
            }
            device.set_acked_features(0);
        }
        self.queues.iter_mut().for_each(QueueT::reset);
        self.device_status = 0;
        self.features_select = 0;
        self.acked_features_select = 0;
        self.queue_select = 0;
        self.interrupt.set_status(0);
    }
}

/// Lock a shared device; a poisoned lock (a panic elsewhere) still yields the device.
fn lock(device: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

/// `Queue` is not `Clone`; its state is.
fn copy_queue(q: &Queue) -> Option<Queue> {
    Queue::try_from(q.state()).ok()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            data.fill(0);
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() == 4 && offset % 4 == 0 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            tracing::debug!(
                "virtio-mmio: bad read of {} bytes at {offset:#x}",
                data.len()
            );
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if self.status_has(DRIVER, FAILED) {
                lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            } else {
                tracing::debug!("virtio-mmio: config write before DRIVER ignored");
            }
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(word)),
            _ => tracing::debug!(
                "virtio-mmio: bad write of {} bytes at {offset:#x}",
                data.len()
            ),
        }
    }
}

/// Plain-data transport state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    /// The status register.
    pub device_status: u32,
    /// `DeviceFeaturesSel`.
    pub features_select: u32,
    /// `DriverFeaturesSel`.
    pub acked_features_select: u32,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// `QueueSel`.
    pub queue_select: u32,
    /// Every queue, with the live ring positions when the device is activated.
    pub queues: Vec<QueueSnapshot>,
    /// `InterruptStatus`.
    pub interrupt_status: u32,
    /// `ConfigGeneration`.
    pub config_generation: u32,
}

/// What [`MmioTransport::restore`] needs: guest memory and the (already restored) device.
pub struct MmioTransportConstructorArgs {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device, restored from its own state but not activated.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
}

impl std::fmt::Debug for MmioTransportConstructorArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransportConstructorArgs")
            .finish_non_exhaustive()
    }
}

impl Persist<'_> for MmioTransport {
    type State = MmioTransportState;
    type ConstructorArgs = MmioTransportConstructorArgs;
    type Error = MmioError;

    fn save(&self) -> Result<MmioTransportState, MmioError> {
        let device = lock(&self.device);
        let live = device.queues();
        let queues = if device.is_activated() && live.len() == self.queues.len() {
            live.iter().map(|q| q.state().into()).collect()
        } else {
            self.queues.iter().map(|q| q.state().into()).collect()
        };
        Ok(MmioTransportState {
            device_status: self.device_status,
            features_select: self.features_select,
            acked_features_select: self.acked_features_select,
            acked_features: device.acked_features(),
            queue_select: self.queue_select,
            queues,
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
        })
    }

    /// Rebuild the transport; if the driver had set DRIVER_OK (and the device was not refused),
    /// the device is activated again with the saved queues. The VMM must register the new
    /// transport's eventfds with KVM.
    fn restore(
        args: MmioTransportConstructorArgs,
        state: &MmioTransportState,
    ) -> Result<Self, MmioError> {
        let mut transport = Self::new(args.mem, args.device)?;
        if state.queues.len() != transport.queues.len() {
            return Err(MmioError::QueueCount {
                saved: state.queues.len(),
                device: transport.queues.len(),
            });
        }
        for (i, (q, snap)) in transport.queues.iter_mut().zip(&state.queues).enumerate() {
            if snap.max_size != q.max_size() {
                return Err(MmioError::InvalidQueue(i));
            }
            *q =
                Queue::try_from(QueueState::from(*snap)).map_err(|_| MmioError::InvalidQueue(i))?;
        }
        transport.device_status = state.device_status;
        transport.features_select = state.features_select;
        transport.acked_features_select = state.acked_features_select;
        transport.queue_select = state.queue_select;
        transport.config_generation = state.config_generation;
        transport.interrupt.set_status(state.interrupt_status);
        {
            let mut device = lock(&transport.device);
            let acked = state.acked_features & device.avail_features();
            device.set_acked_features(acked);
        }
        if transport.status_has(DRIVER_OK, DEVICE_NEEDS_RESET | FAILED) {
            let queues = transport
                .queues
                .iter()
                .enumerate()
                .map(|(i, q)| copy_queue(q).ok_or(MmioError::InvalidQueue(i)))
                .collect::<Result<Vec<_>, _>>()?;
            let ctx = transport
                .activate_context(queues)
                .map_err(MmioError::Activate)?;
            lock(&transport.device)
                .activate(ctx)
                .map_err(MmioError::Activate)?;
        }
        Ok(transport)
    }
}

#[cfg(test)]
mod tests;
