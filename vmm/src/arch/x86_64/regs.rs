//! Initial vCPU register state for each boot protocol.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::gdt::{kvm_segment_from_gdt, LONG_MODE_GDT, PROTECTED_MODE_GDT};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PVH_INFO_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// How a vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, paging on, `rsi` = zero page.
    LongMode {
        /// Entry point (physical = virtual, identity mapped).
        entry: u64,
        /// CR3 (the identity map).
        cr3: u64,
    },
    /// PVH: 32-bit protected mode, paging off, `rbx` = `hvm_start_info`.
    Pvh {
        /// PVH entry point from the ELF note.
        entry: u64,
    },
    /// 16-bit real mode at `cs:ip` (used by tiny test guests and raw images).
    RealMode {
        /// Code segment; the segment base is `cs << 4`.
        cs: u16,
        /// Instruction pointer.
        ip: u16,
    },
}

/// General-purpose registers for the boot processor.
pub fn boot_regs(mode: EntryMode) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match mode {
        EntryMode::LongMode { entry, .. } => {
            regs.rip = entry;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh { entry } => {
            regs.rip = entry;
            regs.rbx = PVH_INFO_START;
        }
        EntryMode::RealMode { ip, .. } => {
            regs.rip = u64::from(ip);
        }
    }
    regs
}

/// Write the boot GDT and IDT into guest memory and fill the segment and control registers.
pub fn boot_sregs<M: GuestMemoryBackend>(
    mem: &M,
    mode: EntryMode,
    sregs: &mut kvm_sregs,
) -> Result<(), vm_memory::GuestMemoryError> {
    let gdt = match mode {
        EntryMode::LongMode { .. } => LONG_MODE_GDT,
        EntryMode::Pvh { .. } => PROTECTED_MODE_GDT,
        EntryMode::RealMode { cs, .. } => {
            let base = u64::from(cs) << 4;
            for seg in [
                &mut sregs.cs,
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.fs,
                &mut sregs.gs,
                &mut sregs.ss,
            ] {
                seg.base = base;
                seg.selector = cs;
                seg.limit = 0xffff;
            }
            sregs.cr0 &= !(X86_CR0_PE | X86_CR0_PG);
            sregs.efer = 0;
            return Ok(());
        }
    };
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match mode {
        EntryMode::LongMode { cr3, .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = cr3;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        _ => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(())
}

/// FPU state at reset: x87 control word and MXCSR defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_klapic_reg(klapic: &kvm_lapic_state, offset: usize) -> u32 {
    let r = &klapic.regs[offset..offset + 4];
    u32::from_le_bytes([r[0] as u8, r[1] as u8, r[2] as u8, r[3] as u8])
}

fn set_klapic_reg(klapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        klapic.regs[offset + i] = *b as _;
    }
}

fn set_apic_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Route LINT0 as ExtINT (the PIC) and LINT1 as NMI, as a PC BIOS would.
pub fn set_lint(klapic: &mut kvm_lapic_state) {
    let lvt0 = get_klapic_reg(klapic, APIC_LVT0);
    set_klapic_reg(
        klapic,
        APIC_LVT0,
        set_apic_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = get_klapic_reg(klapic, APIC_LVT1);
    set_klapic_reg(
        klapic,
        APIC_LVT1,
        set_apic_delivery_mode(lvt1, APIC_MODE_NMI),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::PML4_START;
    use cairn_devices::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn long_mode_state() {
        let m = mem();
        let mode = EntryMode::LongMode {
            entry: 0x100_0000,
            cr3: PML4_START,
        };
        let mut sregs = kvm_sregs::default();
        boot_sregs(&m, mode, &mut sregs).unwrap();
        assert_eq!(sregs.cr0 & X86_CR0_PG, X86_CR0_PG);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.cs.selector, 8);
        let gdt1: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, LONG_MODE_GDT[1]);
        let regs = boot_regs(mode);
        assert_eq!(
            (regs.rip, regs.rsi, regs.rsp),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER)
        );
    }

    #[test]
    fn pvh_state() {
        let m = mem();
        let mode = EntryMode::Pvh { entry: 0x100_0abc };
        let mut sregs = kvm_sregs::default();
        boot_sregs(&m, mode, &mut sregs).unwrap();
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!(sregs.efer, 0);
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(sregs.cs.l, 0);
        assert_eq!(boot_regs(mode).rbx, PVH_INFO_START);
    }

    #[test]
    fn real_mode_state() {
        let m = mem();
        let mut sregs = kvm_sregs {
            cr0: X86_CR0_PE,
            ..Default::default()
        };
        boot_sregs(
            &m,
            EntryMode::RealMode {
                cs: 0x100,
                ip: 0x10,
            },
            &mut sregs,
        )
        .unwrap();
        assert_eq!(sregs.cs.base, 0x1000);
        assert_eq!(sregs.cr0 & X86_CR0_PE, 0);
    }

    #[test]
    fn lint_routing() {
        let mut lapic = kvm_lapic_state::default();
        set_lint(&mut lapic);
        assert_eq!(
            (get_klapic_reg(&lapic, APIC_LVT0) >> 8) & 7,
            APIC_MODE_EXTINT
        );
        assert_eq!((get_klapic_reg(&lapic, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
