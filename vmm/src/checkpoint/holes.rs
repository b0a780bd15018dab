//! Holes in memory files on tmpfs, mapped as anonymous zero pages.
//!
//! Memory files are sparse: pages the guest never wrote are holes, and a layer that claims more
//! pages than it wrote leaves holes too (checkpoint/memory.rs). Guest memory maps the files
//! `MAP_PRIVATE`, so a read of a hole is a page fault on the file. On a disk file system the
//! kernel answers it with a zeroed page-cache page that needs no disk block. On tmpfs the file
//! system itself must allocate the page, and when the tmpfs is full (or at its size limit) that
//! allocation fails and the faulting thread gets `SIGBUS`: the VMM dies on the first vCPU read of
//! an untouched page, or when `CAIRN_VERIFY_MEMORY=1` reads every page.
//!
//! So where a tmpfs lacks room for a page in every hole of the files mapped, each hole of a mapped
//! range is replaced by an anonymous private mapping, which reads as zeros and takes its pages
//! from the VMM's own memory, as a boot would. Data ranges stay file-backed and lazy. Where the
//! tmpfs has that room (the usual case), and on other file systems, nothing is remapped: the
//! check is one `fstat` and one `fstatfs` per file, so the restore path keeps one mapping per
//! region and walks no holes (walking a 1 GiB file's holes and mapping each apart made restore
//! from tmpfs slower than Firecracker's).
//!
//! Each hole costs up to two mappings, and the kernel caps mappings per process
//! (`vm.max_map_count`, 65530 by default). A file with more holes than fit is refused before the
//! guest runs, unless its file system has room for every hole's page anyway.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::checkpoint::memory::PAGE_SIZE;
use crate::error::VmmError;

/// `statfs.f_type` of tmpfs and shmem.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Mappings this module may add for one restore, leaving the rest of the kernel's per-process
/// limit to the VMM's other mappings and to later restores.
fn hole_budget() -> u64 {
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(65_530);
    max / 4
}

fn snap_err(what: impl std::fmt::Display) -> VmmError {
    VmmError::Snapshot(what.to_string())
}

/// Whether `file` lives on tmpfs, and the bytes its file system has free.
// `statfs` field types differ between architectures and libcs; the casts are no-ops on x86_64.
#[allow(clippy::unnecessary_cast)]
fn tmpfs_free(file: &File) -> Result<Option<u64>, VmmError> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes one `statfs` into the buffer we own; the fd is open.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(snap_err(format!(
            "fstatfs: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fstatfs returned 0, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    if st.f_type as i64 != TMPFS_MAGIC {
        return Ok(None);
    }
    Ok(Some((st.f_bavail as u64).saturating_mul(st.f_bsize as u64)))
}

/// Whether `file` lives on tmpfs (whose pages never go to a disk).
pub(crate) fn on_tmpfs(file: &File) -> Result<bool, VmmError> {
    Ok(tmpfs_free(file)?.is_some())
}

/// Bytes of `file` that are holes: its length less what it has allocated (an upper bound on the
/// holes of any range of it).
// `stat` field types differ between architectures and libcs; the casts are no-ops on x86_64.
#[allow(clippy::unnecessary_cast)]
fn hole_bytes(file: &File) -> Result<u64, VmmError> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes one `stat` into the buffer we own; the fd is open.
    let rc = unsafe { libc::fstat(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(snap_err(format!(
            "fstat: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fstat returned 0, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    let allocated = (st.st_blocks as u64).saturating_mul(512);
    Ok((st.st_size as u64).saturating_sub(allocated))
}

/// Whether every file of `ranges` is off tmpfs, or on a tmpfs with room for a page in each of
/// its holes (counted once per file: the VMs mapping one file share its page cache). Then a
/// read of a hole cannot fail, and nothing needs remapping.
fn tmpfs_has_room_for_holes(ranges: &[MappedRange<'_>]) -> Result<bool, VmmError> {
    let mut seen: Vec<std::os::fd::RawFd> = Vec::new();
    let mut holes = 0u64;
    let mut free = u64::MAX;
    for range in ranges {
        let fd = range.file.as_raw_fd();
        if seen.contains(&fd) {
            continue;
        }
        seen.push(fd);
        if let Some(room) = tmpfs_free(range.file)? {
            free = free.min(room);
            holes = holes.saturating_add(hole_bytes(range.file)?);
        }
    }
    Ok(holes <= free)
}

/// `lseek(fd, from, whence)`, or `None` where the file has no more data (`ENXIO`).
fn seek(file: &File, from: u64, whence: libc::c_int) -> Result<Option<u64>, VmmError> {
    // SAFETY: lseek only moves this process's file offset of an fd we own.
    let at = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, whence) };
    if at < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(snap_err(format!("seeking holes: {e}")));
    }
    Ok(Some(at as u64))
}

/// The page-aligned holes of `file` within `[start, start + len)`, as `(offset, len)`.
pub fn holes(file: &File, start: u64, len: u64) -> Result<Vec<(u64, u64)>, VmmError> {
    let end = start + len;
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let Some(hole) = seek(file, at, libc::SEEK_HOLE)? else {
            // `at` is at or past the end of the file: the rest reads as zeros.
            out.push((at, end - at));
            break;
        };
        if hole >= end {
            break;
        }
        let data = seek(file, hole, libc::SEEK_DATA)?.unwrap_or(end).min(end);
        let first = hole.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let last = data / PAGE_SIZE * PAGE_SIZE;
        if last > first {
            out.push((first, last - first));
        }
        if data <= at {
            break;
        }
        at = data;
    }
    Ok(out)
}

/// One mapping of a memory file into guest memory: `len` bytes at file offset `file_offset`,
/// mapped at host address `host`.
pub struct MappedRange<'a> {
    pub file: &'a File,
    pub file_offset: u64,
    pub len: u64,
    pub host: u64,
}

/// Replace every hole of `ranges` (which must already be mapped from their files) by anonymous
/// zero pages, where the files live on tmpfs. Refuses, before the guest runs, a chain whose
/// holes would take more mappings than the kernel allows and would not fit the tmpfs either.
pub fn anonymize_tmpfs_holes(ranges: &[MappedRange<'_>]) -> Result<(), VmmError> {
    if tmpfs_has_room_for_holes(ranges)? {
        return Ok(());
    }
    let mut plan = Vec::new();
    let mut hole_bytes = 0u64;
    let mut free = u64::MAX;
    // One fstatfs per file, not per range: a chain can resolve to thousands of ranges.
    let mut file_systems: Vec<(std::os::fd::RawFd, Option<u64>)> = Vec::new();
    for range in ranges {
        let fd = range.file.as_raw_fd();
        let room = match file_systems.iter().find(|(f, _)| *f == fd) {
            Some((_, room)) => *room,
            None => {
                let room = tmpfs_free(range.file)?;
                file_systems.push((fd, room));
                room
            }
        };
        let Some(room) = room else {
            continue;
        };
        free = free.min(room);
        for (offset, len) in holes(range.file, range.file_offset, range.len)? {
            hole_bytes += len;
            plan.push((range.host + (offset - range.file_offset), len));
        }
    }
    if plan.len() as u64 > hole_budget() {
        if hole_bytes <= free {
            // Too many holes to remap, but the tmpfs can hold a page for each of them.
            return Ok(());
        }
        return Err(snap_err(format!(
            "the memory files are on a tmpfs with {free} bytes free and have {} holes \
             ({hole_bytes} bytes) — more than can be mapped apart (vm.max_map_count); \
             free space on the tmpfs or keep checkpoints on a disk file system",
            plan.len()
        )));
    }
    for (host, len) in plan {
        // SAFETY: `host..host+len` lies inside a guest memory mapping this VMM made from the
        // file (the caller maps `range` there first and `holes` stays within it); MAP_FIXED only
        // replaces pages of that mapping, and no vCPU runs yet.
        let p = unsafe {
            libc::mmap(
                host as *mut libc::c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(snap_err(format!(
                "mapping a memory file's hole: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn holes_are_found_page_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("mem"))
            .unwrap();
        let mb = 1 << 20;
        f.set_len(8 * mb).unwrap();
        // Data at [1 MiB, 2 MiB) and [5 MiB, 5 MiB + 4 KiB).
        f.write_all_at(&vec![1u8; mb as usize], mb).unwrap();
        f.write_all_at(&[2u8; 4096], 5 * mb).unwrap();
        let found = holes(&f, 0, 8 * mb).unwrap();
        // File systems may round data extents up to their block size; each hole found must
        // avoid the data, and together they must cover most of the file.
        for &(off, len) in &found {
            assert_eq!(off % PAGE_SIZE, 0);
            assert_eq!(len % PAGE_SIZE, 0);
            let end = off + len;
            assert!(
                end <= mb || off >= 2 * mb,
                "{off:#x}+{len:#x} overlaps data"
            );
            assert!(
                end <= 5 * mb || off >= 5 * mb + 4096,
                "{off:#x}+{len:#x} overlaps data"
            );
        }
        let total: u64 = found.iter().map(|h| h.1).sum();
        assert!(total >= 6 * mb, "holes cover only {total} bytes");
        // A window inside one hole, and one past the end of the file.
        assert_eq!(holes(&f, 2 * mb, mb).unwrap(), vec![(2 * mb, mb)]);
        assert_eq!(holes(&f, 9 * mb, mb).unwrap(), vec![(9 * mb, mb)]);
        assert!(holes(&f, mb, mb).unwrap().is_empty());
    }

    #[test]
    fn hole_bytes_count_what_is_not_allocated_and_room_is_checked_once_per_file() {
        let Ok(f) = tempfile::tempfile_in("/dev/shm") else {
            return;
        };
        let mb = 1u64 << 20;
        f.set_len(4 * mb).unwrap();
        f.write_all_at(&vec![1u8; mb as usize], mb).unwrap();
        assert_eq!(hole_bytes(&f).unwrap(), 3 * mb);
        // Two ranges of one file: its holes count once, and a roomy /dev/shm holds them.
        let ranges = [0, 2 * mb].map(|off| MappedRange {
            file: &f,
            file_offset: off,
            len: 2 * mb,
            host: 0,
        });
        let free = tmpfs_free(&f).unwrap().unwrap();
        assert_eq!(tmpfs_has_room_for_holes(&ranges).unwrap(), 3 * mb <= free);
        // Off tmpfs there is nothing to check.
        let exe = File::open("/proc/self/exe").unwrap();
        let off = [MappedRange {
            file: &exe,
            file_offset: 0,
            len: 4096,
            host: 0,
        }];
        assert!(tmpfs_has_room_for_holes(&off).unwrap());
    }

    #[test]
    fn nothing_is_remapped_off_tmpfs_and_tmpfs_is_recognized() {
        let f = File::open("/proc/self/exe").unwrap();
        assert_eq!(tmpfs_free(&f).unwrap(), None);
        if let Ok(shm) = tempfile::tempfile_in("/dev/shm") {
            assert!(tmpfs_free(&shm).unwrap().is_some());
        }
    }
}
