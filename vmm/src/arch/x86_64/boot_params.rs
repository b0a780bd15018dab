//! The information a kernel gets at boot: the Linux zero page (`boot_params`) for the Linux boot
//! protocol, or `hvm_start_info` for PVH, each with the e820 memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

use super::layout::{
    ram_ranges, CMDLINE_START, EBDA_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, SYSTEM_MEM_END, ZERO_PAGE_START,
};

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// The e820 map for a guest with `mem_size` bytes of RAM: low RAM below the EBDA, the reserved
/// system memory from the EBDA to 1 MiB (MP table, ACPI tables, VM generation id), then RAM from
/// 1 MiB, then RAM above 4 GiB if any.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: SYSTEM_MEM_END - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_ranges(mem_size) {
        let (start, end) = (start.max(HIMEM_START), start + size);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// An initrd placed in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Write the Linux zero page. `header` is the bzImage's setup header, if the kernel was one;
/// `rsdp` the ACPI RSDP's address, if the VMM wrote ACPI tables.
pub fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
    rsdp: Option<u64>,
) -> Result<(), GuestMemoryError> {
    let mut params = boot_params {
        acpi_rsdp_addr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let n = e820.len().min(params.e820_table.len());
    for (slot, e) in params.e820_table.iter_mut().zip(e820.iter()) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = n as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
}

/// Write the PVH `hvm_start_info`, its module list (the initrd) and its memory map; `rsdp` is
/// the ACPI RSDP's address, if the VMM wrote ACPI tables.
pub fn write_pvh_start_info<M: GuestMemoryBackend>(
    mem: &M,
    initrd: Option<InitrdPlacement>,
    e820: &[E820Entry],
    rsdp: Option<u64>,
) -> Result<(), GuestMemoryError> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        rsdp_paddr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    for (i, e) in e820.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))?;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use cairn_devices::GuestMemoryMmap;

    #[test]
    fn e820_covers_ram_and_skips_the_gap() {
        assert_eq!(
            e820_map(256 << 20),
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: EBDA_START,
                    size: HIMEM_START - EBDA_START,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: (256 << 20) - HIMEM_START,
                    kind: E820_RAM
                },
            ]
        );
        let big = e820_map(8 << 30);
        assert_eq!(big.len(), 4);
        assert_eq!(big[2].addr + big[2].size, MMIO_GAP_START);
        assert_eq!(
            big[3],
            E820Entry {
                addr: MMIO_GAP_END,
                size: (8 << 30) - MMIO_GAP_START,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn zero_page_layout() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x80000,
            size: 0x1234,
        };
        write_zero_page(
            &mem,
            None,
            42,
            Some(initrd),
            &e820_map(64 << 20),
            Some(0xe0000),
        )
        .unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        // Field offsets fixed by Documentation/arch/x86/zero-page.rst.
        let mut raw = [0u8; 4096];
        mem.read_slice(&mut raw, GuestAddress(ZERO_PAGE_START))
            .unwrap();
        assert_eq!(raw[0x1e8], 3, "e820_entries at 0x1e8");
        assert_eq!(
            u64::from_le_bytes(raw[0x70..0x78].try_into().unwrap()),
            0xe0000,
            "acpi_rsdp_addr at 0x70"
        );
        assert_eq!(raw[0x2d0 + 20 + 16], E820_RESERVED as u8);
        assert_eq!(
            u16::from_le_bytes([raw[0x1fe], raw[0x1ff]]),
            KERNEL_BOOT_FLAG_MAGIC
        );
        assert_eq!(
            u32::from_le_bytes(raw[0x202..0x206].try_into().unwrap()),
            KERNEL_HDR_MAGIC
        );
        assert_eq!(raw[0x210], KERNEL_LOADER_OTHER);
        assert_eq!(
            u32::from_le_bytes(raw[0x218..0x21c].try_into().unwrap()),
            0x80000
        );
        assert_eq!(
            u32::from_le_bytes(raw[0x228..0x22c].try_into().unwrap()),
            CMDLINE_START as u32
        );
        assert_eq!(
            u64::from_le_bytes(raw[0x2d0 + 40..0x2d0 + 48].try_into().unwrap()),
            HIMEM_START
        );
        assert_eq!({ params.hdr.cmdline_size }, 42);
    }

    #[test]
    fn pvh_layout() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x80000,
            size: 0x1000,
        };
        write_pvh_start_info(&mem, Some(initrd), &e820_map(64 << 20), Some(0xe0000)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!((info.nr_modules, info.memmap_entries), (1, 3));
        assert_eq!(info.rsdp_paddr, 0xe0000);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((m.paddr, m.size), (0x80000, 0x1000));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_START + 48)).unwrap();
        assert_eq!((e.addr, e.type_), (HIMEM_START, E820_RAM));
    }
}
