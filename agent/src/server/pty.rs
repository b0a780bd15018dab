//! Pseudo-terminals through posix_openpt, with every descriptor close-on-exec from the start.

use crate::proto::PtySize;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pty pair of the given size: (master, slave).
pub(super) fn open(size: PtySize) -> io::Result<(File, File)> {
    // SAFETY: posix_openpt takes flags only; the result is checked.
    let raw =
        check(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let master = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    // SAFETY: grantpt/unlockpt take a descriptor we own.
    check(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: as above.
    check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: `name` is writable for the length passed.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) };
    // SAFETY: `name` is a valid C string for the duration of the call.
    let raw = check(unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let slave = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    resize(&master, size)?;
    Ok((master, slave))
}

/// Sets the terminal size; the foreground process group gets SIGWINCH.
pub(super) fn resize(master: &File, size: PtySize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is valid for the call.
    check(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

/// Runs in the child between fork and exec: new session, with the pty (already on fd 0) as its
/// controlling terminal. Only async-signal-safe calls.
pub(super) fn make_controlling() -> io::Result<()> {
    // SAFETY: setsid(2) takes no arguments.
    check(unsafe { libc::setsid() })?;
    // SAFETY: TIOCSCTTY takes an integer argument, no pointer.
    check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })?;
    Ok(())
}
