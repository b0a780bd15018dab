//! Loading what the guest boots: the kernel (ELF vmlinux with or without a PVH note, or a
//! bzImage), the initrd and the command line, plus the boot information the kernel reads (zero
//! page or PVH start info, e820, MP table).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use cairn_devices::GuestMemoryMmap;

use crate::arch::x86_64::acpi::{setup_acpi, VmGenIdAcpi};
use crate::arch::x86_64::boot_params::{
    e820_map, write_pvh_start_info, write_zero_page, InitrdPlacement,
};
use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START};
use crate::arch::x86_64::mptable::setup_mptable;
use crate::arch::x86_64::page_tables::write_identity_map;
use crate::arch::x86_64::regs::EntryMode;
use crate::error::VmmError;

/// Firecracker's default kernel command line, used when `boot_args` is not given.
pub const DEFAULT_BOOT_ARGS: &str =
    "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// The kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// How the boot vCPU enters it.
    pub entry: EntryMode,
    /// The bzImage setup header (Linux boot protocol only).
    pub setup_header: Option<setup_header>,
    /// First byte after the kernel.
    pub end: u64,
}

fn kernel_err(path: &Path, reason: impl std::fmt::Display) -> VmmError {
    VmmError::KernelLoad {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Load the kernel at `path`: an ELF (PVH entry when it has the note, else the Linux 64-bit
/// protocol) or a bzImage (Linux 64-bit protocol).
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, VmmError> {
    let mut file = cairn_snapshot::safe_path::open_input(
        path,
        false,
        cairn_snapshot::safe_path::InputKind::Regular,
    )
    .map_err(|e| kernel_err(path, e))?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|e| kernel_err(path, format!("cannot read header: {e}")))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| kernel_err(path, e))?;
    if magic == *b"\x7fELF" {
        let res = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| kernel_err(path, format!("invalid ELF kernel: {e}")))?;
        let entry = match res.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => EntryMode::Pvh { entry: addr.0 },
            _ => {
                let cr3 =
                    write_identity_map(mem).map_err(|e| VmmError::GuestMemory(e.to_string()))?;
                EntryMode::LongMode {
                    entry: res.kernel_load.0,
                    cr3,
                }
            }
        };
        Ok(LoadedKernel {
            entry,
            setup_header: None,
            end: res.kernel_end,
        })
    } else {
        let res = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| kernel_err(path, format!("neither an ELF nor a valid bzImage: {e}")))?;
        let cr3 = write_identity_map(mem).map_err(|e| VmmError::GuestMemory(e.to_string()))?;
        // The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
        Ok(LoadedKernel {
            entry: EntryMode::LongMode {
                entry: res.kernel_load.0 + 0x200,
                cr3,
            },
            setup_header: res.setup_header,
            end: res.kernel_end,
        })
    }
}

/// Load the initrd at the top of low RAM (page aligned), above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<InitrdPlacement, VmmError> {
    let err = |reason: String| VmmError::InitrdLoad {
        path: path.display().to_string(),
        reason,
    };
    let mut file = cairn_snapshot::safe_path::open_input(
        path,
        false,
        cairn_snapshot::safe_path::InputKind::Regular,
    )
    .map_err(|e| err(e.to_string()))?;
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let low_end = mem.last_addr().0.saturating_add(1).min(MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end && size > 0)
        .ok_or_else(|| {
            err(format!(
                "{size} bytes do not fit in guest RAM above the kernel"
            ))
        })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| err(format!("cannot copy into guest memory: {e}")))?;
    Ok(InitrdPlacement { addr, size })
}

/// Build the kernel command line from `boot_args` plus the VMM's own entries.
pub fn build_cmdline(boot_args: &str, extra: &[String]) -> Result<Cmdline, VmmError> {
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| VmmError::Cmdline(e.to_string()))?;
    if !boot_args.trim().is_empty() {
        cmdline
            .insert_str(boot_args.trim())
            .map_err(|e| VmmError::Cmdline(e.to_string()))?;
    }
    for entry in extra {
        cmdline
            .insert_str(entry)
            .map_err(|e| VmmError::Cmdline(format!("{entry}: {e}")))?;
    }
    Ok(cmdline)
}

/// Write the command line, e820 map, boot information, MP table and ACPI tables (describing
/// `vmgenid`, if given) into guest memory.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<InitrdPlacement>,
    vcpu_count: u8,
    vmgenid: Option<VmGenIdAcpi>,
    virtio: &[(u64, u32)],
) -> Result<(), VmmError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| VmmError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    let mem_size: u64 = mem.iter().map(vm_memory::GuestMemoryRegion::len).sum();
    let e820 = e820_map(mem_size);
    let gm = |e: vm_memory::GuestMemoryError| VmmError::GuestMemory(e.to_string());
    setup_mptable(mem, vcpu_count)?;
    let rsdp = setup_acpi(mem, vcpu_count, vmgenid, virtio)
        .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
    match kernel.entry {
        EntryMode::Pvh { .. } => {
            write_pvh_start_info(mem, initrd, &e820, Some(rsdp)).map_err(gm)?
        }
        _ => write_zero_page(
            mem,
            kernel.setup_header,
            cmdline_len,
            initrd,
            &e820,
            Some(rsdp),
        )
        .map_err(gm)?,
    }
    // Make sure the boot structures are really there (catches a too-small guest early).
    mem.read_obj::<u8>(GuestAddress(CMDLINE_START))
        .map_err(gm)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_appends_vmm_entries() {
        let c = build_cmdline(
            "console=ttyS0",
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
        )
        .unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"
        );
        let long = "x".repeat(CMDLINE_MAX_SIZE + 1);
        assert!(build_cmdline(&long, &[]).is_err());
    }

    #[test]
    fn rejects_non_kernels() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk");
        std::fs::write(&p, b"this is not a kernel at all, not even close.....").unwrap();
        let e = load_kernel(&mem, &p).unwrap_err().to_string();
        assert!(e.contains("neither an ELF nor a valid bzImage"), "{e}");
        let e = load_kernel(&mem, &dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("initrd");
        std::fs::write(&p, vec![7u8; 5000]).unwrap();
        let placed = load_initrd(&mem, &p, 0x200_0000 - 0x10000).unwrap();
        assert_eq!(placed.size, 5000);
        assert_eq!(placed.addr % 4096, 0);
        assert!(placed.addr + placed.size <= 32 << 20);
        let b: u8 = mem.read_obj(GuestAddress(placed.addr + 4999)).unwrap();
        assert_eq!(b, 7);
        assert!(
            load_initrd(&mem, &p, 32 << 20).is_err(),
            "must not overlap the kernel"
        );
    }
}
