//! Local terminal helpers for interactive execs (`cairn agent exec -t`).

use crate::proto::PtySize;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Whether the descriptor is a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: isatty takes a descriptor and no pointers.
    unsafe { libc::isatty(fd.as_raw_fd()) == 1 }
}

/// The terminal's size, if the descriptor is a terminal.
pub fn size(fd: BorrowedFd<'_>) -> Option<PtySize> {
    // SAFETY: winsize is plain data; all-zeroes is a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, valid for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some(PtySize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Puts a terminal in raw mode until dropped, so keys (Ctrl-C included) go to the guest.
#[derive(Debug)]
pub struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    /// Switches `fd` to raw mode.
    pub fn enable(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let fd = fd.as_raw_fd();
        // SAFETY: termios is plain data; all-zeroes is a valid value.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes one termios through the pointer, valid for the call.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the termios it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: tcsetattr reads one termios through the pointer, valid for the call.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable` on the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
