//! Writing a snapshot's memory file past the page cache (`O_DIRECT`).
//!
//! `PUT /snapshot/create` must leave both files on the disk before it replies (Firecracker
//! fsyncs them). Through the page cache that is two passes over the data: the copy into freshly
//! allocated cache pages (slow on a host that hands freed memory back to its hypervisor, and
//! throttled once dirty pages pile up), then the writeback the fsync waits for. With `O_DIRECT`
//! the disk reads the (paused) guest's pages straight from guest memory: one pass, no cache
//! pages allocated, none of the host's other cached files evicted, and the fsync only commits
//! the file's metadata. The cost is that the file is not cached afterwards: a restore that
//! follows soon reads its pages from the disk (docs/vmm.md, "Snapshot files on disk").
//!
//! Only for the paused copy of a snapshot: a background checkpoint copies pages one at a time
//! while the guest waits on them, where a synchronous disk write per page would stall it.
//! `CAIRN_SNAPSHOT_DIRECT_IO=0` turns it off; tmpfs (no disk) and file systems that refuse
//! `O_DIRECT` write through the cache as before.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Alignment `O_DIRECT` needs of the buffer, the offset and the length: a page covers every
/// logical block size Linux supports for it.
const ALIGN: u64 = 4096;

/// Whether snapshots write their memory file with `O_DIRECT` (`CAIRN_SNAPSHOT_DIRECT_IO`,
/// default on).
pub fn enabled() -> bool {
    std::env::var("CAIRN_SNAPSHOT_DIRECT_IO").as_deref() != Ok("0")
}

/// A second descriptor of a file being written, opened with `O_DIRECT`.
#[derive(Debug)]
pub struct DirectFile {
    file: File,
}

impl DirectFile {
    /// Open `path` for direct writes; `None` where its file system refuses `O_DIRECT`.
    pub fn open(path: &Path) -> io::Result<Option<DirectFile>> {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(file) => Ok(Some(DirectFile { file })),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write `len` bytes of guest memory at host address `host` (inside a live guest mapping)
    /// to `offset`. Returns how many bytes went to the disk directly, from the start: fewer
    /// than `len` (often 0) where the range is not aligned or the file system refused, and the
    /// caller writes the rest through the page cache.
    pub fn write(&self, host: u64, len: u64, offset: u64) -> io::Result<u64> {
        if host % ALIGN != 0 || len % ALIGN != 0 || offset % ALIGN != 0 {
            return Ok(0);
        }
        let mut done = 0u64;
        while done < len {
            // SAFETY: the caller passes a range inside a live guest mapping, or a slice it
            // borrows for the call; pwrite only reads from it (the disk's DMA reads the pinned
            // pages).
            let n = unsafe {
                libc::pwrite(
                    self.file.as_raw_fd(),
                    (host + done) as *const libc::c_void,
                    (len - done) as usize,
                    (offset + done) as libc::off_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    return Ok(done);
                }
                return Err(e);
            }
            if n == 0 || n as u64 % ALIGN != 0 {
                // A short write that leaves the rest unaligned: the cache takes the rest.
                return Ok(done + n as u64);
            }
            done += n as u64;
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page-aligned buffer of `pages` pages, each filled with its number + 1.
    fn pages(pages: usize) -> (Vec<u8>, u64) {
        let mut buf = vec![0u8; (pages + 1) * ALIGN as usize];
        let start = buf.as_ptr() as u64;
        let skip = ((ALIGN - start % ALIGN) % ALIGN) as usize;
        for p in 0..pages {
            let at = skip + p * ALIGN as usize;
            buf[at..at + ALIGN as usize].fill(p as u8 + 1);
        }
        let host = start + skip as u64;
        (buf, host)
    }

    #[test]
    fn writes_aligned_ranges_and_declines_the_rest() {
        // /var/tmp is a disk file system on most hosts; tmpfs refuses O_DIRECT on older
        // kernels (then nothing is written directly, which is what the caller handles).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("mem");
        std::fs::write(&path, vec![0u8; 4 * ALIGN as usize]).unwrap();
        let Some(direct) = DirectFile::open(&path).unwrap() else {
            eprintln!("SKIP writes_aligned_ranges_and_declines_the_rest: no O_DIRECT here");
            return;
        };
        let (_buf, host) = pages(2);
        assert_eq!(direct.write(host, 2 * ALIGN, ALIGN).unwrap(), 2 * ALIGN);
        // Unaligned: declined, nothing written.
        assert_eq!(direct.write(host + 1, ALIGN, 0).unwrap(), 0);
        assert_eq!(direct.write(host, ALIGN, 100).unwrap(), 0);
        let data = std::fs::read(&path).unwrap();
        assert!(data[..ALIGN as usize].iter().all(|&b| b == 0));
        assert!(data[ALIGN as usize..2 * ALIGN as usize]
            .iter()
            .all(|&b| b == 1));
        assert!(data[2 * ALIGN as usize..3 * ALIGN as usize]
            .iter()
            .all(|&b| b == 2));
        assert!(data[3 * ALIGN as usize..].iter().all(|&b| b == 0));
    }
}
