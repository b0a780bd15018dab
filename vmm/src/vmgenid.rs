//! Wiring the VM generation ID device ([`cairn_devices::acpi::VmGenId`]) to KVM: its notify
//! interrupt is a KVM irqfd on [`VMGENID_GSI`], its id lives at [`VMGENID_ADDR`], and the DSDT
//! describes both (see [`crate::arch::x86_64::acpi`]). As in Firecracker, a booted VM gets a
//! fresh id, and every restore writes a new one and raises the interrupt once the vCPUs hold
//! their restored state, so the guest kernel reseeds its RNG.

use cairn_devices::acpi::vmgenid::{VmGenIdConstructorArgs, VmGenIdState};
use cairn_devices::acpi::VmGenId;
use cairn_devices::GuestMemoryMmap;
use cairn_snapshot::Persist;
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi::VmGenIdAcpi;
use crate::arch::x86_64::layout::{VMGENID_ADDR, VMGENID_GSI};
use crate::error::VmmError;

fn dev_err(e: impl std::fmt::Display) -> VmmError {
    VmmError::Device {
        device: "vmgenid".to_string(),
        reason: e.to_string(),
    }
}

fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd, VmmError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(dev_err)?;
    vm.register_irqfd(&evt, gsi).map_err(dev_err)?;
    Ok(evt)
}

/// Boot: a device with a fresh id at the fixed address, notifying on the fixed GSI.
pub fn attach_vmgenid(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<VmGenId, VmmError> {
    VmGenId::new(mem, VMGENID_ADDR, VMGENID_GSI, irqfd(vm, VMGENID_GSI)?).map_err(dev_err)
}

/// Restore: the saved layout, a new id. Call [`notify_restored`] once the vCPUs are restored.
pub fn restore_vmgenid(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    state: &VmGenIdState,
) -> Result<VmGenId, VmmError> {
    let args = VmGenIdConstructorArgs {
        mem,
        interrupt: irqfd(vm, state.gsi)?,
    };
    VmGenId::restore(args, state).map_err(dev_err)
}

/// Tell the guest its generation id changed. A failure is logged, not fatal: the id in guest
/// memory is already new, and the agent reseeds the RNG after every restore as well.
pub fn notify_restored(dev: Option<&VmGenId>) {
    if let Some(dev) = dev {
        if let Err(e) = dev.notify() {
            tracing::warn!("{e}");
        }
    }
}

/// How the ACPI tables describe `dev`.
pub fn acpi_description(dev: &VmGenId) -> VmGenIdAcpi {
    VmGenIdAcpi {
        addr: dev.addr(),
        gsi: dev.gsi(),
    }
}
