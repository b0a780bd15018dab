//! The device manager: where each device lives (ports, MMIO windows, IRQs), how it is wired to
//! KVM (irqfd, ioeventfd) and what the kernel command line must say about it.

use std::sync::{Arc, Mutex};

use cairn_devices::bus::{Bus, BusDevice};
use cairn_devices::legacy::i8042::{I8042_BASE, I8042_LEN};
use cairn_devices::legacy::serial::{SerialOut, COM1_BASE, COM1_IRQ, COM1_LEN};
use cairn_devices::legacy::{I8042Device, SerialDevice};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{IRQ_BASE, MMIO_DEVICE_SIZE, MMIO_GAP_START, VIRTIO_IRQ_MAX};
use crate::error::VmmError;

fn dev_err(device: &str, reason: impl std::fmt::Display) -> VmmError {
    VmmError::Device {
        device: device.to_string(),
        reason: reason.to_string(),
    }
}

/// A virtio-mmio window and its interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest physical base of the 4 KiB register window.
    pub base: u64,
    /// GSI (IOAPIC pin).
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel command-line entry announcing this device.
    pub fn cmdline_entry(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.irq)
    }
}

/// Hands out MMIO windows and IRQs in a fixed order, so a restored VM gets the same layout.
#[derive(Debug, Clone)]
pub struct SlotAllocator {
    next_base: u64,
    next_irq: u32,
}

impl Default for SlotAllocator {
    fn default() -> Self {
        Self {
            next_base: MMIO_GAP_START,
            next_irq: IRQ_BASE,
        }
    }
}

impl SlotAllocator {
    /// The next free window and IRQ.
    pub fn allocate(&mut self) -> Result<MmioSlot, VmmError> {
        if self.next_irq > VIRTIO_IRQ_MAX {
            return Err(dev_err(
                "virtio",
                format!(
                    "no IRQ left (at most {} devices)",
                    VIRTIO_IRQ_MAX - IRQ_BASE + 1
                ),
            ));
        }
        let slot = MmioSlot {
            base: self.next_base,
            irq: self.next_irq,
        };
        self.next_base += MMIO_DEVICE_SIZE;
        self.next_irq += 1;
        Ok(slot)
    }
}

/// The legacy devices every VM has.
#[derive(Debug)]
pub struct LegacyDevices {
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Signalled by the serial device when its input FIFO empties.
    pub serial_input_ready: EventFd,
    /// The i8042 (reset line).
    pub i8042: Arc<Mutex<I8042Device>>,
    /// The i8042's CPU-reset eventfd (a clone), for the exit watcher.
    pub reset_evt: EventFd,
}

/// Saved states of the legacy devices.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LegacyState {
    /// COM1.
    pub serial: cairn_devices::legacy::serial::SerialDeviceState,
    /// The i8042.
    pub i8042: cairn_devices::legacy::i8042::I8042State,
}

impl LegacyDevices {
    /// Capture both devices' states.
    pub fn save(&self) -> Result<LegacyState, VmmError> {
        use cairn_snapshot::Persist;
        Ok(LegacyState {
            serial: self
                .serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .save()
                .map_err(|e| dev_err("serial", e))?,
            i8042: self
                .i8042
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .save()
                .map_err(|e| dev_err("i8042", e))?,
        })
    }
}

/// Create COM1 and the i8042, put them on the PIO bus and wire COM1's IRQ.
pub fn attach_legacy_devices(
    vm: &VmFd,
    pio: &mut Bus,
    serial_out: SerialOut,
) -> Result<LegacyDevices, VmmError> {
    attach_legacy_devices_with_state(vm, pio, serial_out, None)
}

/// [`attach_legacy_devices`], restoring the devices from `state` when given.
pub fn attach_legacy_devices_with_state(
    vm: &VmFd,
    pio: &mut Bus,
    serial_out: SerialOut,
    state: Option<&LegacyState>,
) -> Result<LegacyDevices, VmmError> {
    use cairn_devices::legacy::i8042::I8042ConstructorArgs;
    use cairn_devices::legacy::serial::SerialConstructorArgs;
    use cairn_snapshot::Persist;
    let evt = |what: &str| EventFd::new(libc::EFD_NONBLOCK).map_err(|e| dev_err(what, e));
    let serial_irq = evt("serial")?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(|e| dev_err("serial irqfd", e))?;
    let input_ready = evt("serial")?;
    let input_ready_clone = input_ready.try_clone().map_err(|e| dev_err("serial", e))?;
    let serial = match state {
        None => SerialDevice::new(serial_irq, serial_out, Some(input_ready_clone)),
        Some(st) => {
            let args = SerialConstructorArgs {
                interrupt_evt: serial_irq,
                out: serial_out,
                input_ready: Some(input_ready_clone),
            };
            SerialDevice::restore(args, &st.serial).map_err(|e| dev_err("serial", e))?
        }
    };
    let serial = Arc::new(Mutex::new(serial));
    pio.insert(
        serial.clone() as Arc<Mutex<dyn BusDevice>>,
        COM1_BASE,
        COM1_LEN,
    )
    .map_err(|e| dev_err("serial", e))?;

    let reset_evt = evt("i8042")?;
    let reset_clone = reset_evt.try_clone().map_err(|e| dev_err("i8042", e))?;
    // IRQ 1, so the keys of SendCtrlAltDel reach the guest's keyboard driver.
    let kbd_evt = evt("i8042")?;
    vm.register_irqfd(&kbd_evt, cairn_devices::legacy::i8042::I8042_KBD_IRQ)
        .map_err(|e| dev_err("i8042 irqfd", e))?;
    let i8042 = match state {
        None => I8042Device::new(reset_clone, Some(kbd_evt)),
        Some(st) => I8042Device::restore(
            I8042ConstructorArgs {
                reset_evt: reset_clone,
                kbd_evt: Some(kbd_evt),
            },
            &st.i8042,
        )
        .map_err(|e| dev_err("i8042", e))?,
    };
    let i8042 = Arc::new(Mutex::new(i8042));
    pio.insert(
        i8042.clone() as Arc<Mutex<dyn BusDevice>>,
        I8042_BASE,
        I8042_LEN,
    )
    .map_err(|e| dev_err("i8042", e))?;
    Ok(LegacyDevices {
        serial,
        serial_input_ready: input_ready,
        i8042,
        reset_evt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_sequential_and_bounded() {
        let mut a = SlotAllocator::default();
        let first = a.allocate().unwrap();
        assert_eq!(
            first,
            MmioSlot {
                base: MMIO_GAP_START,
                irq: IRQ_BASE
            }
        );
        assert_eq!(first.cmdline_entry(), "virtio_mmio.device=4K@0xd0000000:5");
        let second = a.allocate().unwrap();
        assert_eq!(second.base, MMIO_GAP_START + MMIO_DEVICE_SIZE);
        for _ in 2..=(VIRTIO_IRQ_MAX - IRQ_BASE) {
            a.allocate().unwrap();
        }
        assert!(a.allocate().is_err());
    }
}

/// A virtio device model, by kind (for checkpoints, which need the concrete state types).
#[derive(Clone)]
pub enum VirtioHandle {
    /// virtio-blk.
    Block(Arc<Mutex<cairn_devices::virtio::block::Block>>),
    /// virtio-net.
    Net(Arc<Mutex<cairn_devices::virtio::net::Net>>),
    /// virtio-vsock.
    Vsock(Arc<Mutex<cairn_devices::virtio::vsock::Vsock>>),
    /// virtio-rng.
    Rng(Arc<Mutex<cairn_devices::virtio::rng::Rng>>),
    /// virtio-balloon.
    Balloon(Arc<Mutex<cairn_devices::virtio::balloon::Balloon>>),
}

impl VirtioHandle {
    /// The device as the transport sees it.
    pub fn as_virtio(&self) -> Arc<Mutex<dyn cairn_devices::virtio::VirtioDevice>> {
        match self {
            Self::Block(d) => d.clone(),
            Self::Net(d) => d.clone(),
            Self::Vsock(d) => d.clone(),
            Self::Rng(d) => d.clone(),
            Self::Balloon(d) => d.clone(),
        }
    }

    /// The device as the event loop sees it.
    pub fn as_subscriber(&self) -> crate::event_loop::Subscriber {
        match self {
            Self::Block(d) => d.clone(),
            Self::Net(d) => d.clone(),
            Self::Vsock(d) => d.clone(),
            Self::Rng(d) => d.clone(),
            Self::Balloon(d) => d.clone(),
        }
    }
}

/// A virtio device on its transport, wired to KVM.
pub struct VirtioAttachment {
    /// What the device is (`block:rootfs`, `net:eth0`, `vsock`, `rng`).
    pub id: String,
    /// Its MMIO window and IRQ.
    pub slot: MmioSlot,
    /// The transport (on the MMIO bus).
    pub transport: Arc<Mutex<cairn_devices::virtio::mmio::MmioTransport>>,
    /// The device model.
    pub device: VirtioHandle,
}

impl std::fmt::Debug for VirtioAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioAttachment")
            .field("id", &self.id)
            .field("slot", &self.slot)
            .finish()
    }
}

/// Put `device` behind a virtio-mmio transport at the next slot: ioeventfds for its queue
/// notifications, an irqfd for its interrupt, and its window on the MMIO bus.
pub fn attach_virtio_device(
    vm: &VmFd,
    mmio: &mut Bus,
    mem: &cairn_devices::GuestMemoryMmap,
    slots: &mut SlotAllocator,
    id: String,
    device: VirtioHandle,
) -> Result<VirtioAttachment, VmmError> {
    use cairn_devices::virtio::mmio::MmioTransport;
    let transport =
        MmioTransport::new(mem.clone(), device.as_virtio()).map_err(|e| dev_err(&id, e))?;
    let slot = slots.allocate()?;
    wire_transport(vm, mmio, slot, id, transport, device)
}

/// Wire an existing transport (new or restored) at `slot`: ioeventfds, irqfd, MMIO bus.
pub fn wire_transport(
    vm: &VmFd,
    mmio: &mut Bus,
    slot: MmioSlot,
    id: String,
    transport: cairn_devices::virtio::mmio::MmioTransport,
    device: VirtioHandle,
) -> Result<VirtioAttachment, VmmError> {
    use cairn_devices::virtio::mmio::{MMIO_LEN, NOTIFY_REG_OFFSET};
    use kvm_ioctls::IoEventAddress;
    for (i, evt) in transport.queue_evts().iter().enumerate() {
        vm.register_ioevent(
            evt,
            &IoEventAddress::Mmio(slot.base + NOTIFY_REG_OFFSET),
            i as u32,
        )
        .map_err(|e| dev_err(&id, format!("ioeventfd: {e}")))?;
    }
    vm.register_irqfd(transport.interrupt().eventfd(), slot.irq)
        .map_err(|e| dev_err(&id, format!("irqfd: {e}")))?;
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(
        transport.clone() as Arc<Mutex<dyn BusDevice>>,
        slot.base,
        MMIO_LEN,
    )
    .map_err(|e| dev_err(&id, e))?;
    Ok(VirtioAttachment {
        id,
        slot,
        transport,
        device,
    })
}
