//! The KVM VM: memory slots, irqchip, PIT, clock.
//!
//! The VM's in-kernel state (PIC master and slave, IOAPIC, PIT, kvmclock) is saved and restored
//! through [`Persist`]: restoring builds a fresh VM over the given guest memory and loads it.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use cairn_devices::GuestMemoryMmap;
use cairn_snapshot::Persist;

use crate::arch::x86_64::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};
use crate::error::VmmError;
use crate::vstate::vcpu_state::saveable_msrs;

/// A KVM VM with an in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT.
///
/// Made in two steps, in this order: [`Vm::new`] (the bare VM), then [`Vm::set_up`] (memory
/// slots first, interrupt controllers after). The order is what keeps the memory slots fast:
/// every memory slot change waits for an SRCU grace period of the VM (`kvm_swap_active_memslots`
/// -> `synchronize_srcu_expedited`), and since Linux 6.17 (commit 7d9a0273c459, "KVM: Avoid
/// synchronize_srcu() in kvm_io_bus_register_dev()") each I/O bus device the irqchip, the PIT
/// or an ioeventfd registers queues a *normal* grace period (`call_srcu`), which starts after a
/// delay of a jiffy or more. A slot made after the irqchip inherits that wait: 4–11 ms on the
/// development host (HZ 250; about 20 ms at HZ 100, as reported upstream), against 0.02–0.3 ms
/// for the same slot made first. On kernels before 6.17 the order costs nothing either way.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    dirty_tracking: bool,
    slots: Vec<(u32, u64, u64)>,
    saved_msrs: Vec<u32>,
    /// Whether the irqchip and PIT exist (a prewarmed VM may have them before its memory).
    interrupt_controllers: bool,
}

impl Vm {
    /// Create the bare VM: identity map and TSS placed, no memory and no interrupt controllers
    /// yet ([`Vm::set_up`] adds both).
    pub fn new(kvm: &Kvm) -> Result<Self, VmmError> {
        let fd = kvm.create_vm().map_err(VmmError::kvm("KVM_CREATE_VM"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(VmmError::kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(VmmError::kvm("KVM_SET_TSS_ADDR"))?;
        Ok(Self {
            fd,
            dirty_tracking: false,
            slots: vec![],
            saved_msrs: saveable_msrs(kvm)?,
            interrupt_controllers: false,
        })
    }

    /// Register `mem` as the VM's memory slots (with KVM dirty logging if asked), then create
    /// the in-kernel irqchip and PIT unless the VM has them already. vCPUs come after this.
    pub fn set_up(
        &mut self,
        mem: &GuestMemoryMmap,
        track_dirty_pages: bool,
    ) -> Result<(), VmmError> {
        self.register_memory(mem, track_dirty_pages)?;
        self.create_interrupt_controllers()
    }

    /// Create the in-kernel irqchip (PIC, IOAPIC, LAPICs) and the PIT, once. Before memory is
    /// registered this makes the first memory slot wait for a grace period (see [`Vm`]): only
    /// the prewarm does that, and only when it has the time to sit out the wait.
    pub(crate) fn create_interrupt_controllers(&mut self) -> Result<(), VmmError> {
        if self.interrupt_controllers {
            return Ok(());
        }
        self.fd
            .create_irq_chip()
            .map_err(VmmError::kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(VmmError::kvm("KVM_CREATE_PIT2"))?;
        self.interrupt_controllers = true;
        Ok(())
    }

    /// The MSRs a checkpoint of this VM's vCPUs saves: those of
    /// [`crate::arch::x86_64::msr::SAVED_MSR_RANGES`] this host's KVM lists, in restore order.
    pub fn saved_msrs(&self) -> &[u32] {
        &self.saved_msrs
    }

    /// The raw VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Register every region of `mem` as a KVM memory slot, with KVM dirty logging if asked.
    fn register_memory(
        &mut self,
        mem: &GuestMemoryMmap,
        track_dirty_pages: bool,
    ) -> Result<(), VmmError> {
        let flags = if track_dirty_pages {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
            let region_desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the VMM keeps alive for
            // as long as the VM exists; the slot describes exactly that mapping.
            unsafe { self.fd.set_user_memory_region(region_desc) }
                .map_err(VmmError::kvm("KVM_SET_USER_MEMORY_REGION"))?;
            self.slots
                .push((slot as u32, region.start_addr().0, region.len()));
        }
        self.dirty_tracking = track_dirty_pages;
        Ok(())
    }

    /// Whether KVM dirty logging is on.
    pub fn dirty_tracking(&self) -> bool {
        self.dirty_tracking
    }

    /// Memory slots as `(slot, guest address, size)`.
    pub fn slots(&self) -> &[(u32, u64, u64)] {
        &self.slots
    }

    /// Fetch and clear KVM's dirty bitmap for each slot (one bit per 4 KiB page).
    pub fn take_dirty_log(&self) -> Result<Vec<Vec<u64>>, VmmError> {
        self.slots
            .iter()
            .map(|(slot, _, size)| {
                self.fd
                    .get_dirty_log(*slot, *size as usize)
                    .map_err(VmmError::kvm("KVM_GET_DIRTY_LOG"))
            })
            .collect()
    }
}

/// The VM-wide KVM state: interrupt controllers, PIT and clock.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    /// Master PIC.
    pub pic_master: kvm_bindings::kvm_irqchip,
    /// Slave PIC.
    pub pic_slave: kvm_bindings::kvm_irqchip,
    /// IOAPIC.
    pub ioapic: kvm_bindings::kvm_irqchip,
    /// PIT.
    pub pit: kvm_bindings::kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_bindings::kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock", &self.clock.clock)
            .finish()
    }
}

/// What [`Vm::restore`] needs: a fresh VM, and the guest memory it is built over.
#[derive(Debug)]
pub struct VmConstructorArgs<'a> {
    /// A VM with no memory slots yet, from [`Vm::new`] or `vstate::prewarm` (which has made it
    /// ahead of time, possibly with its interrupt controllers).
    pub vm: Vm,
    /// Guest RAM, registered as the new VM's memory slots.
    pub mem: &'a GuestMemoryMmap,
    /// Turn on KVM dirty logging for those slots.
    pub track_dirty_pages: bool,
}

impl Vm {
    fn irqchip(&self, chip_id: u32) -> Result<kvm_bindings::kvm_irqchip, VmmError> {
        let mut chip = kvm_bindings::kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        self.fd
            .get_irqchip(&mut chip)
            .map_err(VmmError::kvm("KVM_GET_IRQCHIP"))?;
        Ok(chip)
    }
}

impl<'a> Persist<'a> for Vm {
    type State = VmState;
    type ConstructorArgs = VmConstructorArgs<'a>;
    type Error = VmmError;

    /// Capture the VM-wide state (vCPUs paused).
    fn save(&self) -> Result<VmState, VmmError> {
        Ok(VmState {
            pic_master: self.irqchip(kvm_bindings::KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: self.irqchip(kvm_bindings::KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: self.irqchip(kvm_bindings::KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(VmmError::kvm("KVM_GET_PIT2"))?,
            clock: self
                .fd
                .get_clock()
                .map_err(VmmError::kvm("KVM_GET_CLOCK"))?,
        })
    }

    /// `args.vm` over `args.mem`, with the saved PIT, clock and interrupt controllers loaded.
    fn restore(args: VmConstructorArgs<'a>, state: &VmState) -> Result<Self, VmmError> {
        let mut vm = args.vm;
        vm.set_up(args.mem, args.track_dirty_pages)?;
        vm.fd
            .set_pit2(&state.pit)
            .map_err(VmmError::kvm("KVM_SET_PIT2"))?;
        let mut clock = state.clock;
        // Only the clock value is restored; KVM rejects flags it set itself.
        clock.flags = 0;
        vm.fd
            .set_clock(&clock)
            .map_err(VmmError::kvm("KVM_SET_CLOCK"))?;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            vm.fd
                .set_irqchip(chip)
                .map_err(VmmError::kvm("KVM_SET_IRQCHIP"))?;
        }
        Ok(vm)
    }
}
