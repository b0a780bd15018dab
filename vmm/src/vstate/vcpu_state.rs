//! A vCPU's [`Persist`] implementation: its complete KVM state — CPUID, registers, FPU/XSAVE,
//! XCRs, debug registers, MSRs (the TSC first, the TSC deadline last), LAPIC, MP state and
//! pending events — as plain serde data.
//!
//! Saving runs on the vCPU's own thread while it is parked (see
//! [`crate::vstate::vcpu::VcpuHandle::with_vcpu`]); restoring creates a new vCPU in the new VM
//! and loads the state before its thread starts.

use std::sync::Arc;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use serde::{Deserialize, Serialize};

use cairn_devices::bus::Bus;
use cairn_devices::GuestMemoryMmap;
use cairn_snapshot::Persist;

use crate::arch::x86_64::msr::{is_saved_msr, restore_rank};
use crate::error::VmmError;
use crate::vstate::vcpu::{ExitSignal, Vcpu};
use crate::vstate::vm::Vm;

/// Everything KVM knows about one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// CPUID as set at boot.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Saved MSRs.
    pub msrs: Vec<kvm_msr_entry>,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state (the 4 KiB legacy XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// Local APIC.
    pub lapic: kvm_lapic_state,
    /// Runnable, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts and NMIs.
    pub vcpu_events: kvm_vcpu_events,
    /// TSC frequency, when KVM reports it.
    pub tsc_khz: Option<u32>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("msrs", &self.msrs.len())
            .finish()
    }
}

impl PartialEq for VcpuState {
    fn eq(&self, other: &Self) -> bool {
        // Compare through the serialised form: the KVM structs hold unions and padding.
        postcard::to_allocvec(self).ok() == postcard::to_allocvec(other).ok()
    }
}

/// The MSRs a checkpoint saves on this host: those of `SAVED_MSR_RANGES` its KVM lists, in
/// restore order.
pub fn saveable_msrs(kvm: &kvm_ioctls::Kvm) -> Result<Vec<u32>, VmmError> {
    let list = kvm
        .get_msr_index_list()
        .map_err(VmmError::kvm("KVM_GET_MSR_INDEX_LIST"))?;
    let mut saved: Vec<u32> = list
        .as_slice()
        .iter()
        .copied()
        .filter(|&m| is_saved_msr(m))
        .collect();
    saved.sort_by_key(|&m| (restore_rank(m), m));
    saved.dedup();
    Ok(saved)
}

/// What [`Vcpu::restore`] needs: the same as [`Vcpu::new`].
#[derive(Debug)]
pub struct VcpuConstructorArgs<'a> {
    /// The (restored) VM the vCPU is created in.
    pub vm: &'a Vm,
    /// The vCPU's index (its APIC ID).
    pub index: u8,
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// Where the vCPU reports that the VM must stop.
    pub exit: Arc<ExitSignal>,
}

/// The order MSRs are restored in: the TSC first, then the async page fault vector (before the
/// MSR enabling async page faults), the TSC deadline last (see `restore_rank`), whatever order
/// the state holds.
fn restore_order(msrs: &[kvm_msr_entry]) -> Vec<kvm_msr_entry> {
    let mut ordered = msrs.to_vec();
    ordered.sort_by_key(|m| restore_rank(m.index));
    ordered
}

impl Vcpu {
    fn state_err(&self, reason: String) -> VmmError {
        VmmError::Vcpu {
            index: self.index(),
            reason,
        }
    }

    /// `e`, saying which vCPU it happened to.
    fn named(&self, e: VmmError) -> VmmError {
        match e {
            VmmError::Vcpu { .. } => e,
            other => self.state_err(other.to_string()),
        }
    }

    fn read_state(&self) -> Result<VcpuState, VmmError> {
        let fd = self.fd();
        let mp_state = fd
            .get_mp_state()
            .map_err(VmmError::kvm("KVM_GET_MP_STATE"))?;
        let regs = fd.get_regs().map_err(VmmError::kvm("KVM_GET_REGS"))?;
        let sregs = fd.get_sregs().map_err(VmmError::kvm("KVM_GET_SREGS"))?;
        let xsave = fd.get_xsave().map_err(VmmError::kvm("KVM_GET_XSAVE"))?;
        let xcrs = fd.get_xcrs().map_err(VmmError::kvm("KVM_GET_XCRS"))?;
        let debug_regs = fd
            .get_debug_regs()
            .map_err(VmmError::kvm("KVM_GET_DEBUGREGS"))?;
        let lapic = fd.get_lapic().map_err(VmmError::kvm("KVM_GET_LAPIC"))?;
        let tsc_khz = fd.get_tsc_khz().ok();
        let cpuid = fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::kvm("KVM_GET_CPUID2"))?;
        let msrs = self.read_readable_msrs(self.saved_msrs(), |m| self.state_err(m))?;
        let vcpu_events = fd
            .get_vcpu_events()
            .map_err(VmmError::kvm("KVM_GET_VCPU_EVENTS"))?;
        Ok(VcpuState {
            cpuid: cpuid.as_slice().to_vec(),
            msrs,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            mp_state,
            vcpu_events,
            tsc_khz,
        })
    }

    /// Load `state` into this fresh (never run) vCPU, in the order KVM needs.
    fn load_state(&self, state: &VcpuState) -> Result<(), VmmError> {
        let fd = self.fd();
        let cpuid = CpuId::from_entries(&state.cpuid)
            .map_err(|e| self.state_err(format!("saved CPUID: {e:?}")))?;
        fd.set_cpuid2(&cpuid)
            .map_err(VmmError::kvm("KVM_SET_CPUID2"))?;
        if let Some(khz) = state.tsc_khz {
            // Only possible with TSC scaling; otherwise the host must run at the same frequency.
            if fd.get_tsc_khz().ok() != Some(khz) {
                fd.set_tsc_khz(khz).map_err(|e| {
                    self.state_err(format!(
                        "the checkpoint's TSC runs at {khz} kHz and this host cannot match it: {e}"
                    ))
                })?;
            }
        }
        fd.set_mp_state(state.mp_state)
            .map_err(VmmError::kvm("KVM_SET_MP_STATE"))?;
        fd.set_regs(&state.regs)
            .map_err(VmmError::kvm("KVM_SET_REGS"))?;
        fd.set_sregs(&state.sregs)
            .map_err(VmmError::kvm("KVM_SET_SREGS"))?;
        // SAFETY: `state.xsave` is a complete kvm_xsave struct, as KVM_SET_XSAVE expects.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(VmmError::kvm("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&state.xcrs)
            .map_err(VmmError::kvm("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&state.debug_regs)
            .map_err(VmmError::kvm("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&state.lapic)
            .map_err(VmmError::kvm("KVM_SET_LAPIC"))?;
        let ordered = restore_order(&state.msrs);
        let msrs = Msrs::from_entries(&ordered)
            .map_err(|e| self.state_err(format!("saved MSRs: {e:?}")))?;
        let n = fd.set_msrs(&msrs).map_err(VmmError::kvm("KVM_SET_MSRS"))?;
        if n != ordered.len() {
            let failed = ordered.get(n).map(|e| e.index).unwrap_or(0);
            return Err(self.state_err(format!("KVM refused saved MSR {failed:#x}")));
        }
        fd.set_vcpu_events(&state.vcpu_events)
            .map_err(VmmError::kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

impl<'a> Persist<'a> for Vcpu {
    type State = VcpuState;
    type ConstructorArgs = VcpuConstructorArgs<'a>;
    type Error = VmmError;

    /// Capture the state of this paused vCPU: the MSRs are its VM's `saved_msrs`.
    fn save(&self) -> Result<VcpuState, VmmError> {
        self.read_state().map_err(|e| self.named(e))
    }

    /// A new vCPU `args.index` in `args.vm`, loaded with `state`; its thread is not started.
    fn restore(args: VcpuConstructorArgs<'a>, state: &VcpuState) -> Result<Self, VmmError> {
        let vcpu = Vcpu::new(
            args.vm, args.index, args.pio, args.mmio, args.mem, args.exit,
        )?;
        vcpu.load_state(state).map_err(|e| vcpu.named(e))?;
        Ok(vcpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::msr::{
        MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE, MSR_KVM_ASYNC_PF_EN, MSR_KVM_ASYNC_PF_INT,
    };

    #[test]
    fn msrs_restore_with_the_tsc_first_the_async_pf_vector_early_and_the_deadline_last() {
        let msr = |index| kvm_msr_entry {
            index,
            ..Default::default()
        };
        let async_pf_en = MSR_KVM_ASYNC_PF_EN;
        let saved = [
            msr(MSR_IA32_TSC_DEADLINE),
            msr(0x174),
            msr(async_pf_en),
            msr(MSR_IA32_TSC),
            msr(MSR_KVM_ASYNC_PF_INT),
            msr(0xc000_0082),
        ];
        let order: Vec<u32> = restore_order(&saved).iter().map(|m| m.index).collect();
        assert_eq!(
            order,
            [
                MSR_IA32_TSC,
                MSR_KVM_ASYNC_PF_INT,
                0x174,
                async_pf_en,
                0xc000_0082,
                MSR_IA32_TSC_DEADLINE
            ]
        );
    }
}
