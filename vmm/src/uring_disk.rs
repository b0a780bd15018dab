//! Firecracker's `io_engine: "Async"`: a drive whose reads, writes and flushes go through
//! io_uring instead of `pread`/`pwrite`/`fdatasync`.
//!
//! Each operation is submitted and waited for before the device moves on, so an Async drive
//! serves its queue in the same order, with the same results, as a Sync one: what differs is
//! only how the kernel is asked. (Firecracker keeps several requests in flight; cairn does not
//! yet, see docs/vmm.md.) Discards stay `fallocate(2)` calls, as in Firecracker.
//!
//! The ring is set up when the drive is opened, so a host whose kernel lacks io_uring, or has it
//! switched off (`kernel.io_uring_disabled`), refuses the drive at boot with the reason, instead
//! of failing the guest's first request.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use cairn_devices::virtio::block::{DiskBackend, RawFile};
use io_uring::{opcode, squeue, types, IoUring};

/// Submission queue entries: one operation is in flight at a time.
const RING_ENTRIES: u32 = 4;

/// A raw image served through io_uring.
pub struct UringDisk {
    file: File,
    /// The same file for what does not go through the ring (its size and discards).
    raw: RawFile,
    /// `None` once a submission failed in a way that may have left an entry in the ring: the
    /// ring is dropped (never submitted again) and every later operation fails.
    ring: Option<IoUring>,
}

impl std::fmt::Debug for UringDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDisk")
            .field("len", &self.raw.len())
            .field("ring", &self.ring.is_some())
            .finish()
    }
}

impl UringDisk {
    /// Open the image at `path`, read-only or read-write, and set up its ring.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = RawFile::open_image(path, read_only)?;
        let raw = RawFile::from_file(file.try_clone()?)?;
        let ring = IoUring::new(RING_ENTRIES).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("io_uring (io_engine \"Async\") is not available on this host: {e}"),
            )
        })?;
        Ok(Self {
            file,
            raw,
            ring: Some(ring),
        })
    }

    /// Submit `entry` and wait for its completion; its result (bytes moved, or 0).
    ///
    /// # Safety
    /// The buffer `entry` points to, if any, must stay valid until this returns.
    unsafe fn run(&mut self, entry: squeue::Entry) -> io::Result<u32> {
        let ring = self
            .ring
            .as_mut()
            .ok_or_else(|| io::Error::other("the drive's io_uring failed earlier"))?;
        // SAFETY: the caller keeps the buffer alive until we return, and we return only once
        // the operation completed, or after dropping the ring so it is never submitted.
        unsafe { ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        loop {
            match ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The entry may still be queued: never submit this ring again.
                    self.ring = None;
                    return Err(e);
                }
            }
        }
        let Some(cqe) = ring.completion().next() else {
            self.ring = None;
            return Err(io::Error::other("io_uring returned no completion"));
        };
        let res = cqe.result();
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
        Ok(res.unsigned_abs())
    }
}

/// Most bytes asked of one operation (io_uring takes a u32 length).
fn op_len(remaining: usize) -> u32 {
    u32::try_from(remaining).unwrap_or(!0xfff)
}

impl DiskBackend for UringDisk {
    fn len(&self) -> u64 {
        self.raw.len()
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let entry = opcode::Read::new(fd, rest.as_mut_ptr(), op_len(rest.len()))
                .offset(off + done as u64)
                .build();
            // SAFETY: `rest` is borrowed for the whole call.
            let n = unsafe { self.run(entry) }?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            done += n as usize;
        }
        Ok(())
    }

    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &buf[done..];
            let entry = opcode::Write::new(fd, rest.as_ptr(), op_len(rest.len()))
                .offset(off + done as u64)
                .build();
            // SAFETY: `rest` is borrowed for the whole call.
            let n = unsafe { self.run(entry) }?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n as usize;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        // SAFETY: an fsync points to no buffer.
        unsafe { self.run(entry) }.map(drop)
    }

    fn discard(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.raw.discard(off, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_and_flushes_through_the_ring() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), vec![7u8; 3 * 4096]).unwrap();
        let mut disk = UringDisk::open(tmp.path(), false).unwrap();
        assert_eq!(disk.len(), 3 * 4096);
        disk.write_at(4096, &[1, 2, 3, 4]).unwrap();
        disk.flush().unwrap();
        let mut buf = [0u8; 6];
        disk.read_at(4095, &mut buf).unwrap();
        assert_eq!(buf, [7, 1, 2, 3, 4, 7]);
        // Past the end: a clear error, not a short read.
        let mut past = [0u8; 8];
        let err = disk.read_at(3 * 4096 - 4, &mut past).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        disk.discard(0, 4096).unwrap();
        let mut first = [1u8; 16];
        disk.read_at(0, &mut first).unwrap();
        assert_eq!(first, [0; 16]);
        // What the ring wrote is in the file.
        let bytes = std::fs::read(tmp.path()).unwrap();
        assert_eq!(&bytes[4096..4100], &[1, 2, 3, 4]);
    }

    #[test]
    fn a_read_only_drive_refuses_writes() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), vec![0u8; 4096]).unwrap();
        let mut disk = UringDisk::open(tmp.path(), true).unwrap();
        assert!(disk.write_at(0, &[1]).is_err());
        assert_eq!(std::fs::read(tmp.path()).unwrap(), vec![0u8; 4096]);
    }
}
