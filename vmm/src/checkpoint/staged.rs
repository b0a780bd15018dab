//! Small Diffs copied through memory: the pause copies the dirty pages into a buffer, and the
//! layer file is written from it after the resume.
//!
//! A Diff of a few pages is copied with the guest paused (named.rs, `PAUSED_DIFF_PAGES`):
//! tracking writes costs more than such a copy. But a paused copy straight into a layer file on
//! a disk file system is one `pwrite` per run of dirty pages (a Linux guest's few dirty pages
//! lie in hundreds of runs), each through the file system's page cache, block allocation and
//! journal (the file's times), any of which may wait on other work of the disk. On the
//! development host a woken sandbox's 1.7 MiB Diff on ext4 was paused 1.2–9.5 ms that way (which
//! wait it was in the slow runs was not traced). Copying the pages into memory takes no system
//! call and no lock: the pause is the `memcpy` (0.6–0.7 ms for that Diff, with the rest of the
//! pause), and the writes follow with the guest running. On tmpfs the paused write is itself one
//! `memcpy` into the page cache, so there the copy goes straight to the file.
//!
//! The buffer's pages are faulted in before the pause (a page fault per page of the buffer
//! would otherwise land in it; `MADV_POPULATE_WRITE` does them all in one system call), and it
//! holds the dirty pages known then with room for those the guest dirties before it stops; if
//! more than that are dirty at the pause, the copy goes straight to the file as before. The
//! checkpoint manager makes it on a thread of its own when it opens ([`StagingBuffer::prewarmed`]:
//! faulting it in at the checkpoint cost 0.15–0.2 ms of a 1 MiB checkpoint's 0.6 ms, and 0.8 ms of
//! a woken sandbox's first small checkpoint, on the development host) and keeps it: 2.5 MiB of
//! memory in a VMM with a checkpoint store.

use cairn_snapshot::memory::PageIndex;

use crate::checkpoint::memory::{for_each_host_range, LayerFile, PAGE_SIZE};
use crate::error::VmmError;
use cairn_devices::GuestMemoryMmap;

/// Pages of room for what the guest dirties between the sizing and the pause.
const ROOM_PAGES: u64 = 128;

/// Memory for a small Diff's pages, faulted in already.
#[derive(Default)]
pub struct StagingBuffer {
    buf: Vec<u8>,
    /// The buffer being made by [`StagingBuffer::prewarmed`]'s thread.
    making: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl std::fmt::Debug for StagingBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagingBuffer")
            .field("bytes", &self.buf.len())
            .finish()
    }
}

/// The pages a [`StagingBuffer`] holds: `(buffer offset, layer offset, len)` runs.
pub struct Staged<'a> {
    buf: &'a [u8],
    runs: Vec<(usize, u64, u64)>,
}

impl StagingBuffer {
    /// A buffer for `pages` dirty pages and [`ROOM_PAGES`] more, made and faulted in on a
    /// thread of its own: this returns at once.
    pub fn prewarmed(pages: u64) -> Self {
        let making = std::thread::Builder::new()
            .name("ckpt-staging".into())
            .spawn(move || populated(bytes_for(pages)));
        if let Err(e) = &making {
            tracing::debug!("staging buffer: made at the first small checkpoint: {e}");
        }
        Self {
            buf: Vec::new(),
            making: making.ok(),
        }
    }

    /// Make room for `pages` dirty pages and [`ROOM_PAGES`] more, every page of it faulted in.
    pub fn reserve(&mut self, pages: u64) {
        if let Some(made) = self.making.take().map(|t| t.join()) {
            self.buf = made.unwrap_or_default();
        }
        let len = bytes_for(pages);
        if len > self.buf.len() {
            self.buf = Vec::new();
            self.buf = populated(len);
        }
    }

    /// With the vCPUs paused: copy `pages` of `mem` into the buffer, or `None` (nothing copied)
    /// when they do not fit.
    pub fn stage(
        &mut self,
        mem: &GuestMemoryMmap,
        pages: &PageIndex,
    ) -> Result<Option<Staged<'_>>, VmmError> {
        if pages.page_count() * PAGE_SIZE > self.buf.len() as u64 {
            return Ok(None);
        }
        let mut runs = Vec::new();
        let mut at = 0usize;
        let buf = &mut self.buf;
        for_each_host_range(mem, pages, |host, offset, len| {
            let n = len as usize;
            let dst = &mut buf[at..at + n];
            // SAFETY: `host..host + len` lies inside a live guest mapping (for_each_host_range
            // resolved it from the memory's own regions) and the vCPUs are paused, so nothing
            // writes it while it is read; `dst` is `len` bytes of our own buffer, which does
            // not overlap guest memory.
            unsafe { std::ptr::copy_nonoverlapping(host as *const u8, dst.as_mut_ptr(), n) };
            runs.push((at, offset, len));
            at += n;
            Ok(())
        })?;
        Ok(Some(Staged { buf, runs }))
    }
}

fn bytes_for(pages: u64) -> usize {
    ((pages + ROOM_PAGES) * PAGE_SIZE) as usize
}

/// `len` zero bytes, their pages faulted in.
fn populated(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    populate(&mut buf);
    buf
}

/// Fault every page of `buf` in now, with one system call; where the kernel has no
/// `MADV_POPULATE_WRITE` (before Linux 5.14) they fault in on their first write.
fn populate(buf: &mut [u8]) {
    let start = buf.as_mut_ptr() as usize;
    let first_page = start & !(PAGE_SIZE as usize - 1);
    let len = buf.len() + (start - first_page);
    // SAFETY: MADV_POPULATE_WRITE faults pages in as a write would, without changing a byte;
    // the range is the pages `buf` lies in (from the start of the page holding its first byte),
    // all mapped while `buf` is borrowed.
    let populated = unsafe {
        rustix::mm::madvise(
            first_page as *mut std::ffi::c_void,
            len,
            rustix::mm::Advice::LinuxPopulateWrite,
        )
    };
    if let Err(e) = populated {
        tracing::debug!("staging buffer: MADV_POPULATE_WRITE: {e}");
    }
}

impl Staged<'_> {
    /// Write the staged pages to `layer` (the guest may run). Returns the bytes written.
    pub fn write_to(&self, layer: &LayerFile) -> Result<u64, VmmError> {
        let mut written = 0;
        for &(at, offset, len) in &self.runs {
            let bytes = &self.buf[at..at + len as usize];
            layer.write_slice(bytes, offset)?;
            written += len;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    /// Staged pages land in the layer at their own offsets, as they were when staged, however
    /// the memory changes afterwards; more pages than fit stage nothing.
    #[test]
    fn staged_pages_are_written_as_they_were_at_staging() {
        let mem =
            crate::vstate::memory::create_guest_memory(4, crate::config::HugePages::None).unwrap();
        let pages = 4 * 256u64;
        for p in 0..pages {
            mem.write_obj(p + 1, GuestAddress(p * PAGE_SIZE)).unwrap();
        }
        let dirty = PageIndex::from_ranges([(3, 2), (10, 1), (700, 5)]);
        let mut staging = StagingBuffer::default();
        staging.reserve(dirty.page_count());
        let staged = staging.stage(&mem, &dirty).unwrap().unwrap();
        for p in 0..pages {
            mem.write_obj(0u64, GuestAddress(p * PAGE_SIZE)).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.layer");
        let layer = LayerFile::create(&path, pages * PAGE_SIZE).unwrap();
        assert_eq!(staged.write_to(&layer).unwrap(), 8 * PAGE_SIZE);
        layer.finish(&dirty, false).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for p in 0..pages {
            let at = (p * PAGE_SIZE) as usize;
            let v = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            let want = if dirty.contains(p) { p + 1 } else { 0 };
            assert_eq!(v, want, "page {p}");
        }
        let mut small = StagingBuffer::prewarmed(0);
        small.reserve(0);
        assert_eq!(small.buf.len(), bytes_for(0));
        let too_many = PageIndex::from_ranges([(0, ROOM_PAGES + 1)]);
        assert!(small.stage(&mem, &too_many).unwrap().is_none());
    }
}
