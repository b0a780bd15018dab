//! Thin, checked wrappers over the few libc calls the jailer makes. Every `unsafe` block of the crate that
//! is not about a specific data structure lives here.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Turns a path into a C string; paths with NUL bytes are rejected.
pub fn cstring(path: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(path.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Maps a `-1` return to the current `errno`.
pub fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `openat(dirfd, name, flags | O_CLOEXEC)`.
pub fn openat(dirfd: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string; the kernel validates `dirfd`.
    let fd = check(unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory (for later `*at` calls) with `O_CLOEXEC`.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    openat(
        libc::AT_FDCWD,
        &cstring(path)?,
        libc::O_RDONLY | libc::O_DIRECTORY,
    )
}

/// `unlinkat(dirfd, name, flags)`.
pub fn unlinkat(dirfd: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string.
    check(unsafe { libc::unlinkat(dirfd, name.as_ptr(), flags) }).map(drop)
}

/// Removes `name` under `dirfd` and everything below it, without following symlinks. Works through file
/// descriptors only, so it still works after `pivot_root` has hidden the host's paths.
pub fn remove_tree_at(dirfd: RawFd, name: &CStr) -> io::Result<()> {
    match unlinkat(dirfd, name, 0) {
        Ok(()) => return Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EISDIR) || e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let dir = openat(
        dirfd,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )?;
    for child in read_dir_fd(&dir)? {
        remove_tree_at(dir.as_raw_fd(), &child)?;
    }
    drop(dir);
    unlinkat(dirfd, name, libc::AT_REMOVEDIR)
}

/// Lists the entries of an open directory, except `.` and `..`.
fn read_dir_fd(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    // fdopendir takes ownership of the fd it is given, so hand it a duplicate.
    // SAFETY: `dir` is an open fd; F_DUPFD_CLOEXEC returns a new fd or -1.
    let dup = check(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `dup` is a valid directory fd that we own; on success the DIR stream owns it.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `dup` is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // fdopendir shares the file offset with `dir`; rewind in case it was read before.
    // SAFETY: `stream` is a valid DIR stream.
    unsafe { libc::rewinddir(stream) };
    let mut names = Vec::new();
    loop {
        // SAFETY: `stream` is a valid DIR stream; readdir returns NULL at the end or on error.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: `entry` points to a dirent whose d_name is NUL-terminated, valid until the next readdir.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    // SAFETY: `stream` is valid and closed exactly once.
    unsafe { libc::closedir(stream) };
    Ok(names)
}

/// `mknod(path, S_IFCHR | mode, makedev(major, minor))`, then `chmod` (to ignore the umask) and `chown`.
pub fn mknod_char(
    path: &Path,
    major: u32,
    minor: u32,
    mode: u32,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let c = cstring(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a valid NUL-terminated path.
    check(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | mode, dev) })?;
    chmod(&c, mode)?;
    chown(&c, uid, gid)
}

/// `chmod(path, mode)`.
pub fn chmod(path: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated path.
    check(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

/// `lchown(path, uid, gid)`.
pub fn chown(path: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated path.
    check(unsafe { libc::lchown(path.as_ptr(), uid, gid) }).map(drop)
}

/// Closes every fd above 2, so nothing the caller leaked reaches the VMM.
pub fn close_fds_above_stdio() -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; no memory is involved.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if ret == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close what /proc/self/fd lists.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing an fd we do not otherwise use (the read_dir fd is already closed, and closing it
        // again would only return EBADF).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// `fork()`. Returns the child's pid in the parent and 0 in the child.
///
/// The jailer is single-threaded, so the child may go on running ordinary Rust code.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: the process has one thread, so no lock can be held by a thread that vanishes in the child.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

/// A pipe, both ends close-on-exec: (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `waitpid(pid)` until the child terminates; returns the raw status.
pub fn wait_for(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// The shell convention for a wait status: the exit code, or 128 + the signal number.
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

/// `_exit(code)`: leaves without running destructors or atexit handlers (used in forked children).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}
