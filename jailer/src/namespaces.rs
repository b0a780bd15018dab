//! Namespaces: join the given network namespace, and give the VMM its own mount, IPC and UTS (and, with
//! `--new-pid-ns`, pid) namespaces.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::sys;
use crate::Error;

/// `statfs` magic of nsfs, the file system of `/proc/<pid>/ns/*` and their bind mounts.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `ioctl(fd, NS_GET_NSTYPE)`: which kind of namespace an nsfs file is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An opened `--netns` file, checked to be a network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens and checks `path`; done before anything is created, so a wrong path leaves nothing behind.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|source| Error::NetnsOpen {
            path: path.to_owned(),
            source,
        })?;
        // SAFETY: an all-zero statfs is a valid value for the kernel to overwrite.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `file` is open and `st` is a valid out-pointer.
        let ok = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } == 0;
        #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs.
        if !ok || st.f_type as i64 != NSFS_MAGIC {
            return Err(Error::NotANetns(path.to_owned()));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only returns a value.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != -1 && kind != libc::CLONE_NEWNET {
            return Err(Error::NotANetns(path.to_owned()));
        }
        Ok(NetNs {
            file,
            path: path.to_owned(),
        })
    }

    /// Moves the calling process into the namespace.
    pub fn join(&self) -> Result<(), Error> {
        // SAFETY: `file` is an open nsfs file of a network namespace.
        sys::check(unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) })
            .map(drop)
            .map_err(|source| Error::Setns {
                path: self.path.clone(),
                source,
            })
    }
}

/// New mount, IPC and UTS namespaces for the calling process.
pub fn unshare_mount_ipc_uts() -> Result<(), Error> {
    // SAFETY: unshare only changes kernel-side namespace membership.
    sys::check(unsafe {
        libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS)
    })
    .map(drop)
    .map_err(|source| Error::Unshare {
        what: "mount, IPC and UTS",
        source,
    })
}

/// A new pid namespace for the children of the calling process (the next `fork` makes its pid 1).
pub fn unshare_pid() -> Result<(), Error> {
    // SAFETY: as above.
    sys::check(unsafe { libc::unshare(libc::CLONE_NEWPID) })
        .map(drop)
        .map_err(|source| Error::Unshare {
            what: "pid",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_namespace_files() {
        assert!(matches!(
            NetNs::open(Path::new("/etc/hostname")),
            Err(Error::NotANetns(_)) | Err(Error::NetnsOpen { .. })
        ));
        assert!(matches!(
            NetNs::open(Path::new("/nonexistent/netns")),
            Err(Error::NetnsOpen { .. })
        ));
        // Our own pid namespace is nsfs but not a network namespace.
        if Path::new("/proc/self/ns/pid").exists() {
            assert!(matches!(
                NetNs::open(Path::new("/proc/self/ns/pid")),
                Err(Error::NotANetns(_)) | Err(Error::NetnsOpen { .. })
            ));
        }
        if Path::new("/proc/self/ns/net").exists() {
            assert!(NetNs::open(Path::new("/proc/self/ns/net")).is_ok());
        }
    }
}
