//! Where a virtio-blk device keeps its bytes.
//!
//! [`DiskBackend`] is the whole interface the device needs; [`RawFile`] implements it on a plain
//! image file and [`MemDisk`] in memory (tests, fuzzing). The layered checkpoint store implements
//! it too.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Byte-addressed storage behind a virtio-blk device. The device only calls it with ranges it
/// has checked against [`DiskBackend::len`].
#[allow(clippy::len_without_is_empty)] // a zero-length disk is not a case worth a method
pub trait DiskBackend: Send {
    /// Size of the disk in bytes. Must not change while a guest uses the disk.
    fn len(&self) -> u64;
    /// Fill `buf` with the bytes at `off`.
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Store `buf` at `off`.
    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Drop the contents of `[off, off + len)`. Afterwards the range must read as zeros: the
    /// device also serves `WRITE_ZEROES` with it.
    fn discard(&mut self, off: u64, len: u64) -> io::Result<()>;
}

/// How many zero bytes [`RawFile::discard`] writes at a time when the filesystem cannot punch
/// holes.
const ZERO_CHUNK: usize = 64 * 1024;

/// A raw disk image in a file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    len: u64,
    /// Set once the filesystem refused `FALLOC_FL_PUNCH_HOLE`; later discards write zeros.
    no_punch_hole: bool,
}

impl RawFile {
    /// Open the image at `path`, read-only or read-write.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        Self::from_file(Self::open_image(path, read_only)?)
    }

    /// The image file at `path`, opened as a drive's image is: a regular file or a block
    /// device, read-only or read-write (for backends that do their own I/O on it).
    pub fn open_image(path: &Path, read_only: bool) -> io::Result<File> {
        cairn_snapshot::safe_path::open_input(
            path,
            !read_only,
            cairn_snapshot::safe_path::InputKind::RegularOrBlockDevice,
        )
    }

    /// Use an already open image.
    pub fn from_file(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            no_punch_hole: false,
        })
    }

    fn write_zeros(&mut self, mut off: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; ZERO_CHUNK];
        let end = off.saturating_add(len);
        while off < end {
            let n = usize::try_from(end - off).map_or(ZERO_CHUNK, |n| n.min(ZERO_CHUNK));
            self.file.write_all_at(&zeros[..n], off)?;
            off += n as u64;
        }
        Ok(())
    }
}

impl DiskBackend for RawFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, off)
    }

    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, off)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&mut self, off: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if !self.no_punch_hole {
            use rustix::fs::{fallocate, FallocateFlags};
            let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            match fallocate(&self.file, mode, off, len) {
                Ok(()) => return Ok(()),
                Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                    tracing::info!("virtio-blk: no hole punching here, discard writes zeros");
                    self.no_punch_hole = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.write_zeros(off, len)
    }
}

/// A disk held in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemDisk {
    /// The disk's bytes.
    pub data: Vec<u8>,
}

impl MemDisk {
    /// A zero-filled disk of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self { data: vec![0; len] }
    }

    fn range(&self, off: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(off).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(len).ok_or(io::ErrorKind::UnexpectedEof)?;
        if end > self.data.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(start..end)
    }
}

impl DiskBackend for MemDisk {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(off, buf.len())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<()> {
        let r = self.range(off, buf.len())?;
        self.data[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&mut self, off: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let r = self.range(off, len)?;
        self.data[r].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_file_round_trip_and_discard() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(1 << 20).unwrap();
        let mut disk = RawFile::open(tmp.path(), false).unwrap();
        assert_eq!(disk.len(), 1 << 20);
        disk.write_at(4096, &[0xab; 8192]).unwrap();
        let mut buf = [0u8; 8192];
        disk.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf, [0xab; 8192]);
        disk.flush().unwrap();
        disk.discard(4096 + 100, 5000).unwrap();
        disk.read_at(4096, &mut buf).unwrap();
        assert_eq!(buf[..100], [0xab; 100]);
        assert!(buf[100..5100].iter().all(|&b| b == 0));
        assert_eq!(buf[5100..], [0xab; 8192 - 5100]);
        // The zero-writing fallback gives the same result.
        disk.write_at(4096, &[0xab; 8192]).unwrap();
        disk.write_zeros(4096 + 100, 5000).unwrap();
        disk.read_at(4096, &mut buf).unwrap();
        assert!(buf[100..5100].iter().all(|&b| b == 0));
        assert_eq!(buf[5100..], [0xab; 8192 - 5100]);
        // Reads past the end fail.
        assert!(disk.read_at((1 << 20) - 10, &mut buf).is_err());
    }

    #[test]
    fn raw_file_read_only_refuses_writes() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(4096).unwrap();
        let mut disk = RawFile::open(tmp.path(), true).unwrap();
        assert!(disk.write_at(0, &[1]).is_err());
    }

    #[test]
    fn mem_disk_bounds() {
        let mut disk = MemDisk::new(1024);
        disk.write_at(1000, &[1; 24]).unwrap();
        assert!(disk.write_at(1001, &[1; 24]).is_err());
        assert!(disk.read_at(u64::MAX, &mut [0; 1]).is_err());
        assert!(disk.discard(1000, u64::MAX).is_err());
        disk.discard(1000, 24).unwrap();
        assert_eq!(disk.data, vec![0; 1024]);
    }
}
