//! Guest RAM in a tmpfs file (cairn-only, opt-in: `"cairn": {"guest_memory_dir"}` or
//! `CAIRN_GUEST_MEMORY_DIR`).
//!
//! The RAM is one unlinked `O_TMPFILE` in the directory, mapped `MAP_SHARED`: the guest writes
//! the file's pages directly. A Full snapshot whose memory file goes to the same tmpfs then
//! links this file under the snapshot's name instead of copying it, and maps it privately at the
//! same addresses (checkpoint/handover.rs): from there on the VM runs copy-on-write on the
//! snapshot file, exactly like a VM restored from it.
//!
//! Costs (docs/vmm.md): shmem pages count against the tmpfs's size and the memory cgroup as
//! shared memory, have no anonymous transparent huge pages, and `MADV_DONTNEED` does not free
//! them (the balloon punches holes instead). A shmem page the kernel cannot allocate is a
//! `SIGBUS` in the VMM, so the tmpfs must have room for the whole guest when it starts; the
//! space is checked then, not reserved (reserving it would write every page up front).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use cairn_devices::{GuestMemoryMmap, GuestRegionMmap};
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress};

use crate::error::VmmError;

/// The environment variable that turns the setting on for a VMM started by an unchanged
/// Firecracker client (the config key wins when both are given).
pub const GUEST_MEMORY_DIR_ENV: &str = "CAIRN_GUEST_MEMORY_DIR";

/// `statfs` magic of tmpfs (and shmem).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Guest RAM's backing file while the guest still writes it through a shared mapping.
#[derive(Debug)]
pub struct RamFile {
    /// The unlinked file (`O_TMPFILE`).
    pub file: File,
    /// The device of its file system: a handover needs the snapshot on the same one.
    pub dev: u64,
    /// The directory it was made in (for messages).
    pub dir: PathBuf,
}

fn mem_err(dir: &Path, what: impl std::fmt::Display) -> VmmError {
    VmmError::GuestMemory(format!("guest_memory_dir {}: {what}", dir.display()))
}

/// Bytes free on the tmpfs holding `f`, or `None` when `f` is not on tmpfs.
// `statfs` field types differ between architectures and libcs; the casts are no-ops on x86_64.
#[allow(clippy::unnecessary_cast)]
fn tmpfs_free(f: &File) -> std::io::Result<Option<u64>> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes one `statfs` into the buffer we own; the fd is open.
    let rc = unsafe { libc::fstatfs(f.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fstatfs returned 0, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    if st.f_type as i64 != TMPFS_MAGIC {
        return Ok(None);
    }
    Ok(Some((st.f_bavail as u64).saturating_mul(st.f_bsize as u64)))
}

/// Guest RAM of `size` bytes laid out as `ranges`, in a new unlinked file in the tmpfs
/// directory `dir`, each range mapped `MAP_SHARED` at consecutive file offsets (the layout of a
/// memory file).
pub fn create_shared_guest_memory(
    ranges: &[(GuestAddress, usize)],
    size: u64,
    dir: &Path,
) -> Result<(GuestMemoryMmap, RamFile), VmmError> {
    let d = File::open(dir).map_err(|e| mem_err(dir, e))?;
    let meta = d.metadata().map_err(|e| mem_err(dir, e))?;
    if !meta.is_dir() {
        return Err(mem_err(dir, "not a directory"));
    }
    let free = match tmpfs_free(&d).map_err(|e| mem_err(dir, format!("statfs: {e}")))? {
        Some(free) => free,
        None => {
            return Err(mem_err(
                dir,
                "not on tmpfs (guest RAM there must be shared memory: mount a tmpfs, or leave \
                 the setting out)",
            ))
        }
    };
    if free < size {
        return Err(mem_err(
            dir,
            format!(
                "the tmpfs has {} MiB free and the guest needs {} MiB (a shmem page that cannot \
                 be allocated later would kill the VMM with SIGBUS)",
                free >> 20,
                size >> 20
            ),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| mem_err(dir, format!("O_TMPFILE: {e}")))?;
    file.set_len(size)
        .map_err(|e| mem_err(dir, format!("sizing the RAM file: {e}")))?;
    let dev = file.metadata().map_err(|e| mem_err(dir, e))?.dev();
    let mut offset = 0u64;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(start, len) in ranges {
        let f = file.try_clone().map_err(|e| mem_err(dir, e))?;
        let region =
            MmapRegionBuilder::<AtomicBitmap>::new_with_bitmap(len, AtomicBitmap::with_len(len))
                .with_file_offset(FileOffset::new(f, offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_SHARED)
                .build()
                .map_err(|e| mem_err(dir, format!("mmap: {e}")))?;
        regions.push(
            GuestRegionMmap::new(region, start)
                .ok_or_else(|| VmmError::GuestMemory("a guest memory region overflows".into()))?,
        );
        offset += len as u64;
    }
    let mem =
        GuestMemoryMmap::from_regions(regions).map_err(|e| VmmError::GuestMemory(e.to_string()))?;
    Ok((
        mem,
        RamFile {
            file,
            dev,
            dir: dir.to_path_buf(),
        },
    ))
}

/// The directory the setting names: the config key, else [`GUEST_MEMORY_DIR_ENV`] when set and
/// not empty.
pub fn configured_dir(from_config: Option<&Path>) -> Option<PathBuf> {
    from_config.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(GUEST_MEMORY_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn ram_is_the_files_pages_and_other_file_systems_are_refused() {
        let ranges = [(GuestAddress(0), 1 << 20), (GuestAddress(4 << 20), 1 << 20)];
        let (mem, ram) = match create_shared_guest_memory(&ranges, 2 << 20, Path::new("/dev/shm")) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("SKIP: no usable /dev/shm: {e}");
                return;
            }
        };
        assert_eq!(mem.num_regions(), 2);
        mem.write_obj(0x1234_5678u32, GuestAddress((4 << 20) + 8))
            .unwrap();
        let mut b = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&ram.file, &mut b, (1 << 20) + 8).unwrap();
        assert_eq!(
            u32::from_le_bytes(b),
            0x1234_5678,
            "the second region is at 1 MiB"
        );

        // A directory on a disk file system, where the host's temporary directory is one.
        let disk = tempfile::tempdir().unwrap();
        if tmpfs_free(&File::open(disk.path()).unwrap())
            .unwrap()
            .is_none()
        {
            let err = create_shared_guest_memory(&ranges, 2 << 20, disk.path()).unwrap_err();
            assert!(err.to_string().contains("not on tmpfs"), "{err}");
        }
        let err =
            create_shared_guest_memory(&ranges, 2 << 20, Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }

    #[test]
    fn shared_ram_can_be_write_protected_for_background_checkpoints() {
        use crate::checkpoint::background::{open_registered, WriteTracker};
        if let Err(e) = WriteTracker::open() {
            assert!(
                std::env::var("CAIRN_REQUIRE_KVM").as_deref() != Ok("1"),
                "no userfaultfd: {e}"
            );
            eprintln!("SKIP: no userfaultfd ({e})");
            return;
        }
        let ranges = [(GuestAddress(0), 1 << 20)];
        let Ok((mem, _ram)) = create_shared_guest_memory(&ranges, 1 << 20, Path::new("/dev/shm"))
        else {
            eprintln!("SKIP: no usable /dev/shm");
            return;
        };
        mem.write_obj(1u64, GuestAddress(0x1000)).unwrap();
        // Registered and protected like anonymous memory: a background checkpoint arms here
        // instead of falling back to the paused copy.
        let mut tracker = open_registered(&mem).unwrap();
        let host = crate::checkpoint::memory::region_layout(&mem)[0].0;
        tracker.protect(host, 1 << 20, true).unwrap();
        tracker.protect(host, 1 << 20, false).unwrap();
    }
}
