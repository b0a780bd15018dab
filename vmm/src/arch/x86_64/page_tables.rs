//! Identity-mapped page tables for the Linux 64-bit boot protocol: one PML4 entry, four PDPT
//! entries and four page directories of 2-MiB pages, covering the first 4 GiB (RAM below the
//! MMIO gap and the gap itself, so early code can reach devices).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{PDE_START, PDPTE_START, PML4_START};

/// GiB identity-mapped from 0.
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Present | writable.
const PRESENT_RW: u64 = 0x03;
/// Present | writable | page size (2 MiB).
const PRESENT_RW_HUGE: u64 = 0x83;

/// The three tables as `(guest address, entries)`.
pub fn identity_map_tables() -> [(u64, Vec<u64>); 3] {
    let pd: Vec<u64> = (0..IDENTITY_MAPPED_GIB * 512)
        .map(|i| (i << 21) | PRESENT_RW_HUGE)
        .collect();
    let pdpt: Vec<u64> = (0..IDENTITY_MAPPED_GIB)
        .map(|i| (PDE_START + i * 0x1000) | PRESENT_RW)
        .collect();
    [
        (PML4_START, vec![PDPTE_START | PRESENT_RW]),
        (PDPTE_START, pdpt),
        (PDE_START, pd),
    ]
}

/// Write the identity map into guest memory. Returns the value for CR3.
pub fn write_identity_map<M: GuestMemoryBackend>(
    mem: &M,
) -> Result<u64, vm_memory::GuestMemoryError> {
    for (base, entries) in identity_map_tables() {
        for (i, entry) in entries.iter().enumerate() {
            mem.write_obj(*entry, GuestAddress(base + 8 * i as u64))?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walk the tables the way the MMU does for a 2 MiB page.
    fn translate(tables: &[(u64, Vec<u64>); 3], va: u64) -> Option<u64> {
        let lookup = |base: u64, idx: u64| -> Option<u64> {
            tables
                .iter()
                .find(|(b, _)| *b == base)
                .and_then(|(_, e)| e.get(idx as usize).copied())
        };
        let pml4e = lookup(PML4_START, (va >> 39) & 0x1ff)?;
        let pdpte = lookup(pml4e & !0xfff, (va >> 30) & 0x1ff)?;
        // The page directories are contiguous, so index them as one table.
        let pde = lookup(
            PDE_START,
            ((pdpte & !0xfff) - PDE_START) / 8 + ((va >> 21) & 0x1ff),
        )?;
        assert_eq!(pde & PRESENT_RW_HUGE, PRESENT_RW_HUGE);
        Some((pde & !0x1f_ffff & !0x83) | (va & 0x1f_ffff))
    }

    #[test]
    fn first_4_gib_are_identity_mapped() {
        let t = identity_map_tables();
        for va in [
            0u64,
            0x1000,
            0x10_0000,
            0x1234_5678,
            (1 << 30) - 1,
            1 << 30,
            0xd000_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&t, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&t, 1 << 32), None);
    }
}
