//! Guest memory: anonymous mmap regions with a dirty bitmap for the writes the VMM makes itself,
//! on ordinary 4 KiB pages or, with `machine-config.huge_pages: "2M"`, on 2 MiB hugetlbfs pages.
//!
//! Huge pages come from the host's pool (`/proc/sys/vm/nr_hugepages`). Unlike Firecracker, which
//! maps them with `MAP_NORESERVE` (a pool that runs dry later is a `SIGBUS` in the VMM), cairn
//! reserves the whole guest at mmap time: a pool too small for the guest is a clear error at
//! start, and the guest never runs on small pages instead.

use std::path::Path;

use cairn_devices::{GuestMemoryMmap, GuestRegionMmap};
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::GuestAddress;

use crate::arch::x86_64::layout::ram_ranges;
use crate::config::HugePages;
use crate::error::VmmError;
use crate::vstate::shared_memory::{create_shared_guest_memory, RamFile};

/// Where the host keeps its 2 MiB huge page pool counters.
const HUGEPAGES_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/// Guest RAM of `mem_size_mib` MiB on `pages`, laid out around the MMIO gap.
pub fn create_guest_memory(
    mem_size_mib: usize,
    pages: HugePages,
) -> Result<GuestMemoryMmap, VmmError> {
    create_guest_memory_in(mem_size_mib, pages, None).map(|(mem, _)| mem)
}

/// Guest RAM as [`create_guest_memory`] makes it, or, with `shared_dir`, in an unlinked file in
/// that tmpfs directory mapped shared (vstate/shared_memory.rs), returned with it.
pub fn create_guest_memory_in(
    mem_size_mib: usize,
    pages: HugePages,
    shared_dir: Option<&Path>,
) -> Result<(GuestMemoryMmap, Option<RamFile>), VmmError> {
    let size = (mem_size_mib as u64)
        .checked_mul(1 << 20)
        .ok_or(VmmError::MemorySize(mem_size_mib))?;
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    if let Some(dir) = shared_dir {
        if pages.is_huge() {
            return Err(VmmError::GuestMemory(
                "huge_pages \"2M\" cannot be combined with guest_memory_dir: guest RAM in a \
                 tmpfs file is on 4 KiB pages"
                    .into(),
            ));
        }
        let (mem, ram) = create_shared_guest_memory(&ranges, size, dir)?;
        return Ok((mem, Some(ram)));
    }
    if !pages.is_huge() {
        return GuestMemoryMmap::from_ranges(&ranges)
            .map(|mem| (mem, None))
            .map_err(|e| VmmError::GuestMemory(e.to_string()));
    }
    if size % pages.page_size() != 0 {
        return Err(VmmError::GuestMemory(format!(
            "huge_pages \"2M\": {mem_size_mib} MiB is not a whole number of 2 MiB pages"
        )));
    }
    let regions = ranges
        .iter()
        .map(|&(start, len)| huge_region(start, len, size))
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions)
        .map(|mem| (mem, None))
        .map_err(|e| VmmError::GuestMemory(e.to_string()))
}

/// One region of private anonymous memory on 2 MiB hugetlbfs pages, reserved in full now.
fn huge_region(start: GuestAddress, len: usize, total: u64) -> Result<GuestRegionMmap, VmmError> {
    let region =
        MmapRegionBuilder::<AtomicBitmap>::new_with_bitmap(len, AtomicBitmap::with_len(len))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            // No MAP_NORESERVE: the kernel reserves every huge page of the mapping now, or fails.
            .with_mmap_flags(
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
            )
            .build()
            .map_err(|e| {
                VmmError::GuestMemory(format!(
                "huge_pages \"2M\": cannot map {} MiB of guest memory on 2 MiB huge pages ({e}); \
                 the guest needs {} huge pages and the host has {} ({})",
                len >> 20,
                total >> 21,
                pool_summary(),
                "set /proc/sys/vm/nr_hugepages, or use huge_pages \"None\""
            ))
            })?;
    GuestRegionMmap::new(region, start)
        .ok_or_else(|| VmmError::GuestMemory("a guest memory region overflows".into()))
}

/// The host's 2 MiB pool, e.g. `"12 free of 64, 0 reserved"`.
fn pool_summary() -> String {
    let read = |name: &str| {
        std::fs::read_to_string(format!("{HUGEPAGES_2M}/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    match (
        read("free_hugepages"),
        read("nr_hugepages"),
        read("resv_hugepages"),
    ) {
        (Some(free), Some(total), Some(resv)) => {
            format!("{free} free of {total}, {resv} of the free ones already reserved")
        }
        _ => format!("no 2 MiB huge page pool ({HUGEPAGES_2M} unreadable)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn creates_regions_and_tracks_vmm_writes() {
        let mem = create_guest_memory(64, HugePages::None).unwrap();
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

    #[test]
    fn huge_pages_need_whole_pages() {
        let err = create_guest_memory(3, HugePages::Hugetlbfs2M).unwrap_err();
        assert!(err.to_string().contains("2 MiB"), "{err}");
    }
}
