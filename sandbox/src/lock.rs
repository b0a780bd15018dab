//! Per-sandbox locks: `flock(2)` on files in the sandbox's directory.
//!
//! - `lock`: exclusive, held by every lifecycle change (create, start, stop, checkpoint, rm)
//!   and briefly by exec/cp while they make sure the VMM runs. Concurrent CLI calls on one
//!   sandbox therefore queue up instead of racing.
//! - `active`: shared, held by each exec/cp for its whole duration; the idle watcher stops a
//!   VMM only when it can take it exclusively, i.e. when no exec is in flight.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A held `flock`; released on drop (closing the file releases it).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

/// How to take a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One holder at a time.
    Exclusive,
    /// Any number of shared holders, no exclusive one.
    Shared,
}

impl FileLock {
    /// Takes the lock on `path` (created if missing), waiting for it.
    pub fn acquire(path: &Path, mode: Mode) -> io::Result<FileLock> {
        Self::take(path, mode, true).map(|l| l.ok_or_else(|| io::Error::other("lock not taken")))?
    }

    /// Takes the lock on `path` if it is free now; `Ok(None)` if someone else holds it.
    pub fn try_acquire(path: &Path, mode: Mode) -> io::Result<Option<FileLock>> {
        Self::take(path, mode, false)
    }

    /// [`FileLock::try_acquire`], tried a few more times over about 100 ms before concluding
    /// that someone holds the lock: a child that another thread of this process (or of any
    /// holder) is forking shares the holder's open lock file until its `exec` closes it, so a
    /// lock just released can look held for an instant. For `cairn doctor`, which must not
    /// call a free sandbox busy.
    pub fn try_acquire_patiently(path: &Path, mode: Mode) -> io::Result<Option<FileLock>> {
        for _ in 0..4 {
            if let Some(l) = Self::take(path, mode, false)? {
                return Ok(Some(l));
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        Self::take(path, mode, false)
    }

    fn take(path: &Path, mode: Mode, wait: bool) -> io::Result<Option<FileLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut op = match mode {
            Mode::Exclusive => libc::LOCK_EX,
            Mode::Shared => libc::LOCK_SH,
        };
        if !wait {
            op |= libc::LOCK_NB;
        }
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(Some(FileLock {
                    _file: file,
                    path: path.to_path_buf(),
                }));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if !wait => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_releases_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let a = FileLock::acquire(&p, Mode::Exclusive).unwrap();
        assert!(FileLock::try_acquire(&p, Mode::Exclusive)
            .unwrap()
            .is_none());
        assert!(FileLock::try_acquire(&p, Mode::Shared).unwrap().is_none());
        drop(a);
        assert!(FileLock::try_acquire(&p, Mode::Exclusive)
            .unwrap()
            .is_some());
    }

    #[test]
    fn shared_holders_coexist_and_block_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("active");
        let a = FileLock::acquire(&p, Mode::Shared).unwrap();
        let b = FileLock::try_acquire(&p, Mode::Shared).unwrap();
        assert!(b.is_some());
        assert!(FileLock::try_acquire(&p, Mode::Exclusive)
            .unwrap()
            .is_none());
        drop((a, b));
        assert!(FileLock::try_acquire(&p, Mode::Exclusive)
            .unwrap()
            .is_some());
    }

    #[test]
    fn waiting_acquire_gets_the_lock_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let held = FileLock::acquire(&p, Mode::Exclusive).unwrap();
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let _l = FileLock::acquire(&p2, Mode::Exclusive).unwrap();
            start.elapsed()
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(held);
        assert!(t.join().unwrap() >= std::time::Duration::from_millis(150));
    }
}
