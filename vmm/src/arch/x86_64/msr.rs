//! Model-specific registers: the boot values, and the set cairn saves in checkpoints.

use kvm_bindings::kvm_msr_entry;

/// IA32_SYSENTER_CS.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// IA32_SYSENTER_ESP.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// IA32_SYSENTER_EIP.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// STAR.
pub const MSR_STAR: u32 = 0xc000_0081;
/// LSTAR.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// CSTAR.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL_MASK.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// KERNEL_GS_BASE.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_TSC.
pub const MSR_IA32_TSC: u32 = 0x10;
/// IA32_MISC_ENABLE.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// MTRR default type.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// FS base.
pub const MSR_FS_BASE: u32 = 0xc000_0100;
/// GS base.
pub const MSR_GS_BASE: u32 = 0xc000_0101;
/// TSC_AUX (RDTSCP/RDPID).
pub const MSR_TSC_AUX: u32 = 0xc000_0103;
/// IA32_TSC_DEADLINE.
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// IA32_PAT.
pub const MSR_IA32_CR_PAT: u32 = 0x277;
/// kvmclock system time (new).
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// kvmclock wall clock (new).
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
/// KVM async page fault.
pub const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
/// KVM steal time.
pub const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
/// KVM PV EOI.
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
/// KVM halt-polling control.
pub const MSR_KVM_POLL_CONTROL: u32 = 0x4b56_4d05;
/// The interrupt vector of async page fault "page ready" notifications.
pub const MSR_KVM_ASYNC_PF_INT: u32 = 0x4b56_4d06;
/// kvmclock wall clock (the original, pre-`_NEW` MSR).
pub const MSR_KVM_WALL_CLOCK: u32 = 0x11;
/// kvmclock system time (the original, pre-`_NEW` MSR).
pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
/// IA32_FEATURE_CONTROL.
pub const MSR_IA32_FEAT_CTL: u32 = 0x3a;
/// IA32_TSC_ADJUST.
pub const MSR_IA32_TSC_ADJUST: u32 = 0x3b;
/// IA32_SPEC_CTRL (IBRS, STIBP, SSBD).
pub const MSR_IA32_SPEC_CTRL: u32 = 0x48;
/// IA32_ARCH_CAPABILITIES.
pub const MSR_IA32_ARCH_CAPABILITIES: u32 = 0x10a;
/// IA32_TSX_CTRL.
pub const MSR_IA32_TSX_CTRL: u32 = 0x122;
/// MISC_FEATURES_ENABLES (CPUID faulting).
pub const MSR_MISC_FEATURES_ENABLES: u32 = 0x140;
/// IA32_MCG_STATUS.
pub const MSR_IA32_MCG_STATUS: u32 = 0x17a;
/// IA32_XFD (AMX extended feature disable).
pub const MSR_IA32_XFD: u32 = 0x1c4;
/// IA32_XFD_ERR.
pub const MSR_IA32_XFD_ERR: u32 = 0x1c5;
/// IA32_DEBUGCTL.
pub const MSR_IA32_DEBUGCTL: u32 = 0x1d9;
/// The first variable-range MTRR base.
pub const MSR_MTRR_PHYS_BASE0: u32 = 0x200;
/// The eighth variable-range MTRR mask.
pub const MSR_MTRR_PHYS_MASK7: u32 = 0x20f;
/// Fixed-range MTRR, 64 KiB ranges at 0.
pub const MSR_MTRR_FIX64K_00000: u32 = 0x250;
/// Fixed-range MTRR, 16 KiB ranges at 0x80000.
pub const MSR_MTRR_FIX16K_80000: u32 = 0x258;
/// Fixed-range MTRR, 16 KiB ranges at 0xa0000.
pub const MSR_MTRR_FIX16K_A0000: u32 = 0x259;
/// Fixed-range MTRR, 4 KiB ranges at 0xc0000.
pub const MSR_MTRR_FIX4K_C0000: u32 = 0x268;
/// Fixed-range MTRR, 4 KiB ranges at 0xf8000.
pub const MSR_MTRR_FIX4K_F8000: u32 = 0x26f;
/// IA32_PERF_CAPABILITIES.
pub const MSR_IA32_PERF_CAPABILITIES: u32 = 0x345;
/// IA32_PKRS (supervisor protection keys).
pub const MSR_IA32_PKRS: u32 = 0x6e1;
/// IA32_UMWAIT_CONTROL.
pub const MSR_IA32_UMWAIT_CONTROL: u32 = 0xe1;
/// IA32_BNDCFGS (MPX).
pub const MSR_IA32_BNDCFGS: u32 = 0xd90;
/// IA32_XSS.
pub const MSR_IA32_XSS: u32 = 0xda0;
/// AMD's VIRT_SPEC_CTRL (SSBD).
pub const MSR_AMD64_VIRT_SPEC_CTRL: u32 = 0xc001_011f;
/// KVM's async page fault acknowledgement: a write is an action, never saved.
pub const MSR_KVM_ASYNC_PF_ACK: u32 = 0x4b56_4d07;
/// IA32_MCG_CTL: not saved (as in Firecracker).
pub const MSR_IA32_MCG_CTL: u32 = 0x17b;

const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

fn msr(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// MSR values at boot.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// The MSRs a checkpoint keeps, as inclusive ranges: the guest state KVM keeps in MSRs (what the
/// guest writes, and what a CPU template may set), saved when the host's KVM lists them
/// (`KVM_GET_MSR_INDEX_LIST`, whose MSRs KVM lets a VMM read and write back for migration).
/// Left out on purpose: counters and read-only host facts (SMI count, microcode revision,
/// platform info, last-branch records), `MSR_IA32_MCG_CTL` (as in Firecracker), the
/// performance counters, nested-virtualization MSRs, and `MSR_KVM_ASYNC_PF_ACK`, whose write is
/// an action, not state. FS and GS base and EFER also travel in the segment registers.
///
/// A guest's state lost here goes unnoticed until it matters: a restored vCPU without its
/// `MSR_KVM_ASYNC_PF_INT` hung the guest (docs/benchmarks.md), one without its speculation
/// controls (`SPEC_CTRL`, AMD's `VIRT_SPEC_CTRL`) silently drops the mitigations it chose.
pub const SAVED_MSR_RANGES: &[(u32, u32)] = &[
    (MSR_IA32_TSC, MSR_IA32_TSC),
    (MSR_KVM_WALL_CLOCK, MSR_KVM_SYSTEM_TIME),
    (MSR_IA32_FEAT_CTL, MSR_IA32_TSC_ADJUST),
    (MSR_IA32_SPEC_CTRL, MSR_IA32_SPEC_CTRL),
    (MSR_IA32_ARCH_CAPABILITIES, MSR_IA32_ARCH_CAPABILITIES),
    (MSR_IA32_TSX_CTRL, MSR_IA32_TSX_CTRL),
    (MSR_MISC_FEATURES_ENABLES, MSR_MISC_FEATURES_ENABLES),
    (MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_EIP),
    (MSR_IA32_MCG_STATUS, MSR_IA32_MCG_STATUS),
    (MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE),
    (MSR_IA32_XFD, MSR_IA32_XFD_ERR),
    (MSR_IA32_DEBUGCTL, MSR_IA32_DEBUGCTL),
    (MSR_MTRR_PHYS_BASE0, MSR_MTRR_PHYS_MASK7),
    (MSR_MTRR_FIX64K_00000, MSR_MTRR_FIX64K_00000),
    (MSR_MTRR_FIX16K_80000, MSR_MTRR_FIX16K_A0000),
    (MSR_MTRR_FIX4K_C0000, MSR_MTRR_FIX4K_F8000),
    (MSR_IA32_CR_PAT, MSR_IA32_CR_PAT),
    (MSR_MTRR_DEF_TYPE, MSR_MTRR_DEF_TYPE),
    (MSR_IA32_PERF_CAPABILITIES, MSR_IA32_PERF_CAPABILITIES),
    (MSR_IA32_TSC_DEADLINE, MSR_IA32_PKRS),
    (MSR_IA32_UMWAIT_CONTROL, MSR_IA32_UMWAIT_CONTROL),
    (MSR_IA32_BNDCFGS, MSR_IA32_BNDCFGS),
    (MSR_IA32_XSS, MSR_IA32_XSS),
    (MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_ASYNC_PF_INT),
    (MSR_STAR, MSR_SYSCALL_MASK),
    (MSR_FS_BASE, MSR_TSC_AUX),
    (MSR_AMD64_VIRT_SPEC_CTRL, MSR_AMD64_VIRT_SPEC_CTRL),
];

/// Whether a checkpoint keeps MSR `index` (see [`SAVED_MSR_RANGES`]).
pub fn is_saved_msr(index: u32) -> bool {
    SAVED_MSR_RANGES
        .iter()
        .any(|&(first, last)| (first..=last).contains(&index))
}

/// Where MSR `index` goes in a restore, lowest first. The TSC comes first and the TSC deadline
/// last: KVM arms the deadline timer against the guest TSC at the moment the deadline is
/// written, so a deadline written before the TSC (while a fresh vCPU's TSC is near 0) would fire
/// only after the whole saved uptime had elapsed again, and the restored guest would see no timer
/// interrupt. The async page fault vector comes before the MSR that enables async page faults:
/// enabling them makes KVM wake every task waiting for a page ("page ready" for all) with that
/// vector. Without it the restored vCPU delivered "page ready" as vector 0, which no guest can
/// take: the vector sat in the local APIC's IRR for good, no later async page fault could
/// complete, and the guest's tasks waiting on one (its agent, say) never ran again while the idle
/// loop spun.
pub fn restore_rank(index: u32) -> u8 {
    match index {
        MSR_IA32_TSC => 0,
        MSR_KVM_ASYNC_PF_INT => 1,
        MSR_IA32_TSC_DEADLINE => 3,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_mtrr_and_fast_strings() {
        let e = boot_msr_entries();
        let get = |i| e.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(MTRR_ENABLE | 6));
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
    }

    #[test]
    fn the_saved_set_keeps_guest_state_and_leaves_actions_and_counters() {
        for m in [
            MSR_IA32_TSC,
            MSR_IA32_TSC_DEADLINE,
            MSR_KVM_ASYNC_PF_INT,
            MSR_KVM_ASYNC_PF_EN,
            MSR_KVM_POLL_CONTROL,
            MSR_IA32_SPEC_CTRL,
            MSR_AMD64_VIRT_SPEC_CTRL,
            MSR_IA32_TSC_ADJUST,
            MSR_MTRR_PHYS_BASE0 + 3,
            MSR_MTRR_FIX4K_C0000 + 1,
            MSR_TSC_AUX,
            MSR_KERNEL_GS_BASE,
            MSR_KVM_SYSTEM_TIME,
        ] {
            assert!(is_saved_msr(m), "{m:#x} is guest state");
        }
        for m in [
            MSR_KVM_ASYNC_PF_ACK,
            MSR_IA32_MCG_CTL,
            0x34,        // SMI count
            0xce,        // platform info
            0x1db,       // last branch from
            0xc1,        // a performance counter
            0xc001_0117, // SVM host save area
            0xc000_0080, // EFER: in the segment registers
        ] {
            assert!(!is_saved_msr(m), "{m:#x} is not saved");
        }
        for &(first, last) in SAVED_MSR_RANGES {
            assert!(first <= last, "{first:#x}..={last:#x}");
        }
    }

    #[test]
    fn restore_ranks_put_the_tsc_first_the_vector_early_and_the_deadline_last() {
        assert!(restore_rank(MSR_IA32_TSC) < restore_rank(MSR_KVM_ASYNC_PF_INT));
        assert!(restore_rank(MSR_KVM_ASYNC_PF_INT) < restore_rank(MSR_KVM_ASYNC_PF_EN));
        assert!(restore_rank(MSR_KVM_ASYNC_PF_EN) < restore_rank(MSR_IA32_TSC_DEADLINE));
        assert!(restore_rank(MSR_STAR) < restore_rank(MSR_IA32_TSC_DEADLINE));
    }
}
