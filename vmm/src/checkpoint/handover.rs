//! A Full snapshot that hands guest RAM over instead of copying it (cairn-only, opt-in with
//! `guest_memory_dir`, vstate/shared_memory.rs).
//!
//! While guest RAM is an unlinked tmpfs file mapped shared, the file *is* the memory at the
//! pause. A Full snapshot whose memory file is on the same tmpfs therefore:
//!
//! 1. links the RAM file under the memory file's temporary name (so the durable commit,
//!    checkpoint/durable.rs, renames it into place together with its index and the state file,
//!    all or nothing);
//! 2. maps every guest region again, `MAP_PRIVATE | MAP_FIXED`, from the same file at the same
//!    host address. KVM's memory slots keep their userspace addresses; its MMU notifier drops
//!    the old translations, and the guest's next touches fault in the new mapping.
//!
//! From then on the VM runs copy-on-write on the snapshot file, exactly like a VM restored from
//! it (File backend): the file's pages are its restored pages, a later Diff merges into it in
//! place, a later Full copies, and guest writes never reach the file.
//!
//! Where the link cannot be made (another file system, no `/proc` and no privilege for
//! `AT_EMPTY_PATH`), the caller copies as for any other VM.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cairn_devices::GuestMemoryMmap;

use crate::checkpoint::memory::region_layout;
use crate::error::VmmError;
use crate::vstate::shared_memory::RamFile;
use cairn_snapshot::durable::PendingFile;

fn snap_err(what: impl std::fmt::Display) -> VmmError {
    VmmError::Snapshot(what.to_string())
}

/// Whether `mem_path`'s directory is on the RAM file's file system (a link can only be made
/// there).
pub fn same_file_system(ram: &RamFile, mem_path: &Path) -> bool {
    let dir = match mem_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::metadata(dir).is_ok_and(|m| m.dev() == ram.dev)
}

fn cpath(p: &Path) -> Result<CString, VmmError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| snap_err(format!("{}: path contains NUL", p.display())))
}

/// Link the RAM file under a new temporary name beside `mem_path`, for the durable commit.
/// Tries `/proc/self/fd` first (no privilege needed), then `AT_EMPTY_PATH` (needs
/// `CAP_DAC_READ_SEARCH`, for a jail without `/proc`).
pub fn link_ram(ram: &RamFile, mem_path: &Path) -> Result<PendingFile, VmmError> {
    let tmp: PathBuf = cairn_snapshot::file::temp_path(mem_path);
    let target = cpath(&tmp)?;
    let fd = ram.file.as_raw_fd();
    let proc_path = cpath(Path::new(&format!("/proc/self/fd/{fd}")))?;
    // SAFETY: both paths are NUL-terminated strings that live across the call; linkat only
    // reads them.
    let mut rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    let mut err = std::io::Error::last_os_error();
    if rc != 0 && err.raw_os_error() != Some(libc::EEXIST) {
        let empty = c"";
        // SAFETY: `fd` is the open RAM file; both strings live across the call.
        rc = unsafe {
            libc::linkat(
                fd,
                empty.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        if rc != 0 {
            err = std::io::Error::last_os_error();
        }
    }
    if rc != 0 {
        return Err(snap_err(format!(
            "linking guest RAM to {}: {err}",
            tmp.display()
        )));
    }
    let file = ram.file.try_clone().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        snap_err(format!("{}: {e}", tmp.display()))
    })?;
    Ok(PendingFile::from_parts(file, tmp, mem_path.to_path_buf()))
}

/// Map every region of `mem` privately from `ram`'s file, at the same host address and file
/// offset as now. The vCPUs must be paused, and nothing else may write guest memory meanwhile
/// (the VMM's device writers run on the calling thread).
pub fn map_private(mem: &GuestMemoryMmap, ram: &RamFile) -> Result<(), VmmError> {
    for (host, len, offset) in region_layout(mem) {
        // SAFETY: `host..host+len` is exactly one guest region's live mapping, which `mem`
        // made from this file at `offset`; MAP_FIXED replaces only that mapping, with the same
        // file's pages at the same offset, so every address stays mapped with the same content.
        // Guest memory is only ever accessed through volatile copies, never Rust references.
        let p = unsafe {
            libc::mmap(
                host as *mut libc::c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                ram.file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED || p as u64 != host {
            return Err(snap_err(format!(
                "guest RAM's private mapping at {host:#x} (+{len:#x}): {}; the VM's memory \
                 cannot be trusted any more, stop it",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}
