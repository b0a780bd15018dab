//! Guest memory: anonymous mmap regions with a dirty bitmap for the writes the VMM makes itself.

use cairn_devices::GuestMemoryMmap;
use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::ram_ranges;
use crate::error::VmmError;

/// Guest RAM of `mem_size_mib` MiB, laid out around the MMIO gap.
pub fn create_guest_memory(mem_size_mib: usize) -> Result<GuestMemoryMmap, VmmError> {
    let size = (mem_size_mib as u64)
        .checked_mul(1 << 20)
        .ok_or(VmmError::MemorySize(mem_size_mib))?;
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmmError::GuestMemory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn creates_regions_and_tracks_vmm_writes() {
        let mem = create_guest_memory(64).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beefu32, GuestAddress(0x5000)).unwrap();
        let region = mem.find_region(GuestAddress(0)).unwrap();
        assert!(vm_memory::bitmap::Bitmap::dirty_at(
            &region.bitmap(),
            0x5000
        ));
        assert!(!vm_memory::bitmap::Bitmap::dirty_at(
            &region.bitmap(),
            0x6000
        ));
    }
}
