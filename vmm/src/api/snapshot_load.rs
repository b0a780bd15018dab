//! The parts of `PUT /snapshot/load` that Firecracker does around the restore itself:
//! `clock_realtime` (advance kvmclock by the wall-clock time since the snapshot) and the check
//! that a `vsock_override` has a vsock device to apply to.
//!
//! With `clock_realtime`, the machine is restored paused, kvmclock is set from the snapshot's
//! clock with `KVM_CLOCK_REALTIME` (KVM then adds the host's realtime elapsed since the
//! snapshot's `realtime` stamp), and only then resumed if `resume_vm` asked for it, so the
//! guest never runs on the old clock. As in Firecracker, a snapshot whose clock carries no
//! realtime stamp (the host's clock source is not TSC-based) cannot be loaded that way.

use std::path::Path;

use kvm_bindings::{kvm_clock_data, KVM_CLOCK_REALTIME};

use crate::device_manager::VirtioHandle;
use crate::error::VmmError;
use crate::machine::Machine;

/// The saved kvmclock of the snapshot at `path`, checked to carry a realtime stamp.
pub fn saved_realtime_clock(path: &Path) -> Result<kvm_clock_data, VmmError> {
    let state = crate::checkpoint::state::read_state(path)?;
    let clock = state.vm.clock;
    if clock.flags & KVM_CLOCK_REALTIME == 0 {
        return Err(VmmError::InvalidState(
            "clock_realtime: the snapshot's clock has no realtime stamp \
             (its host's clock source was not TSC-based)"
                .into(),
        ));
    }
    Ok(clock)
}

/// Set the paused `machine`'s kvmclock from `saved`, advanced by the realtime since it was saved.
pub fn apply_realtime_clock(machine: &Machine, saved: &kvm_clock_data) -> Result<(), VmmError> {
    let clock = kvm_clock_data {
        flags: KVM_CLOCK_REALTIME,
        ..*saved
    };
    machine
        .vm()
        .fd()
        .set_clock(&clock)
        .map_err(VmmError::kvm("KVM_SET_CLOCK (clock_realtime)"))
}

/// Firecracker refuses a `vsock_override` for a snapshot without a vsock device.
pub fn check_vsock_override(machine: &Machine) -> Result<(), VmmError> {
    if machine
        .virtio_devices()
        .iter()
        .any(|a| matches!(a.device, VirtioHandle::Vsock(_)))
    {
        Ok(())
    } else {
        Err(VmmError::InvalidState(
            "vsock_override: the snapshot has no vsock device".into(),
        ))
    }
}
