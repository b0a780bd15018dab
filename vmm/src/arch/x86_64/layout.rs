//! The guest physical memory map cairn builds (the same shape as Firecracker's, so guests and
//! tooling that know one know the other).
//!
//! ```text
//! 0x0000_0500  GDT (boot)                    0x0000_9000  PML4
//! 0x0000_0520  IDT (empty)                   0x0000_a000  PDPT
//! 0x0000_6000  PVH start info                0x0000_b000  PDs (2 MiB pages, first 4 GiB)
//! 0x0000_6040  PVH module list (initrd)      0x0002_0000  kernel command line
//! 0x0000_6100  PVH memory map                0x0009_fc00  MP table (EBDA)
//! 0x0000_7000  zero page (boot_params)       0x000d_fff0  VM generation id (16 bytes)
//! 0x0000_8ff0  boot stack pointer            0x000e_0000  ACPI: RSDP, then XSDT, FADT, MADT, DSDT
//!                                            0x0010_0000  kernel (HIMEM_START)
//! 0x0009_fc00 .. 0x0010_0000 is e820-reserved ("system memory", as in Firecracker).
//! initrd: page aligned, at the top of low RAM
//! 0xd000_0000 .. 0x1_0000_0000  MMIO gap: virtio-mmio devices, then IOAPIC/LAPIC
//! 0x1_0000_0000 ..  RAM above 4 GiB when the guest has more than 3.25 GiB
//! ```

/// GDT used while booting.
pub const BOOT_GDT_START: u64 = 0x500;
/// Empty IDT used while booting.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the Linux 64-bit boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directories (four, contiguous: 0xb000..0xf000).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest kernel command line accepted (including the NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the Extended BIOS Data Area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the RSDP goes (the BIOS area a kernel scans for it); the other ACPI tables follow it.
pub const RSDP_START: u64 = 0xe_0000;
/// Guest physical address of the VM generation id: the last 16 bytes below the RSDP, where
/// Firecracker puts it too (8-byte aligned, as the spec requires).
pub const VMGENID_ADDR: u64 = RSDP_START - 16;
/// End of the reserved system memory that starts at the EBDA (MP table, ACPI, VM generation id).
pub const SYSTEM_MEM_END: u64 = HIMEM_START;
/// Where the kernel is loaded; also the end of the "low" e820 RAM entry.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Size of each virtio-mmio device window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// IOAPIC MMIO address.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC MMIO address.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS (three pages) sits just below the identity map page, inside the MMIO gap.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// KVM's identity map page (needed on Intel for real mode emulation).
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// First legacy IRQ (GSI) handed to devices; lower ones are taken by the PC legacy devices.
pub const IRQ_BASE: u32 = 5;
/// Last GSI the IOAPIC can route.
pub const IRQ_MAX: u32 = 23;
/// GSI of the VM generation id's notify interrupt (through the ACPI GED): the last one, so the
/// virtio devices keep GSIs 5.. in attach order.
pub const VMGENID_GSI: u32 = IRQ_MAX;
/// Last GSI handed to virtio devices.
pub const VIRTIO_IRQ_MAX: u32 = VMGENID_GSI - 1;
/// COM1 port base.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 IRQ.
pub const COM1_IRQ: u32 = 4;
/// i8042 port base (data 0x60, command/status 0x64).
pub const I8042_PORT: u16 = 0x60;

/// RAM ranges `(guest address, size)` for a guest with `mem_size` bytes: below the MMIO gap
/// first, the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_split_around_the_mmio_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, 0x40),
            (PVH_MODLIST_START, 0x20),
            (PVH_MEMMAP_START, 0x100),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x4000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, 0x400),
            (VMGENID_ADDR, 16),
            (RSDP_START, 0x24),
        ];
        areas.sort();
        for w in areas.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
        const {
            assert!(
                BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000
            );
            assert!(KVM_IDENTITY_MAP_ADDR + 4096 <= KVM_TSS_ADDR);
            assert!(MMIO_GAP_START < IOAPIC_ADDR as u64 && KVM_TSS_ADDR + 3 * 4096 <= MMIO_GAP_END);
        }
    }
}
