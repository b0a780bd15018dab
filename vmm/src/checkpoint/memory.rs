//! Guest memory in checkpoints: which pages to write, writing them, and mapping memory files
//! back (MAP_PRIVATE, so restore time does not grow with guest RAM).
//!
//! Memory files follow Firecracker's layout: the guest's RAM regions one after the other (so for
//! guests under 3.25 GiB the file offset is the guest physical address). A Full file holds every
//! page the guest ever touched; a Diff file holds the pages dirtied since the previous snapshot.
//! Both are sparse: pages not written are holes. Each file has a page index beside it
//! (`<file>.index`), so a chain of layers can be mapped without reading the files.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use cairn_devices::{GuestMemoryMmap, GuestRegionMmap};
use cairn_snapshot::durable::{PendingFile, WrittenFile};
use cairn_snapshot::file::FileKind;
use cairn_snapshot::memory::{LayerIndex, PageIndex, StreamedCrcs};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::checkpoint::direct_io::DirectFile;
use crate::checkpoint::holes::{anonymize_tmpfs_holes, MappedRange};
use crate::error::VmmError;
use crate::vstate::vm::Vm;

/// Page size of every bitmap and index.
pub const PAGE_SIZE: u64 = 4096;

fn snap_err(what: impl std::fmt::Display) -> VmmError {
    VmmError::Snapshot(what.to_string())
}

/// `e` as a [`VmmError::Snapshot`], with its causes (the OS error of a failed fsync or rename).
pub fn snapshot_error(e: cairn_snapshot::Error) -> VmmError {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    VmmError::Snapshot(msg)
}

/// `(host address, length, file offset)` of each region.
pub fn region_layout(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u64)> {
    let mut file_offset = 0;
    mem.iter()
        .map(|r| {
            let host = r.as_ptr() as u64;
            let out = (host, r.len(), file_offset);
            file_offset += r.len();
            out
        })
        .collect()
}

/// Total size of guest RAM (= memory file size).
pub fn mem_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Pages dirtied since the last call: KVM's dirty log (guest writes) plus the VMM's own writes
/// (vm-memory's bitmap, fed by virtio devices). Both are cleared.
pub fn take_dirty_pages(mem: &GuestMemoryMmap, vm: &Vm) -> Result<PageIndex, VmmError> {
    let kvm_logs = if vm.dirty_tracking() {
        Some(vm.take_dirty_log()?)
    } else {
        None
    };
    let mut index = PageIndex::new();
    for (i, (region, (_, _, file_offset))) in mem.iter().zip(region_layout(mem)).enumerate() {
        let base_page = file_offset / PAGE_SIZE;
        let vmm_bits = std::ops::Deref::deref(region).bitmap().get_and_reset();
        index.add_bitmap(&vmm_bits, base_page);
        if let Some(log) = kvm_logs.as_ref().and_then(|l| l.get(i)) {
            index.add_bitmap(log, base_page);
        }
    }
    Ok(index)
}

/// Pages resident in the guest's mappings: for anonymous memory, exactly the pages the guest
/// has touched.
pub fn resident_pages(mem: &GuestMemoryMmap) -> Result<PageIndex, VmmError> {
    let mut index = PageIndex::new();
    for (host, len, file_offset) in region_layout(mem) {
        let pages = (len / PAGE_SIZE) as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: [host, host+len) is a live mapping owned by `mem`; `vec` has one byte per page.
        let rc =
            unsafe { libc::mincore(host as *mut libc::c_void, len as usize, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(snap_err(format!(
                "mincore: {}",
                std::io::Error::last_os_error()
            )));
        }
        let base = file_offset / PAGE_SIZE;
        let mut start: Option<u64> = None;
        let mut ranges = Vec::new();
        for (i, b) in vec.iter().enumerate() {
            match (b & 1 == 1, start) {
                (true, None) => start = Some(i as u64),
                (false, Some(s)) => {
                    ranges.push((base + s, i as u64 - s));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            ranges.push((base + s, pages as u64 - s));
        }
        index = index.union(&PageIndex::from_ranges(ranges));
    }
    Ok(index)
}

pub(crate) fn host_range_for(
    layout: &[(u64, u64, u64)],
    file_offset: u64,
    len: u64,
) -> Option<u64> {
    layout
        .iter()
        .find(|(_, rlen, foff)| file_offset >= *foff && file_offset + len <= foff + rlen)
        .map(|(host, _, foff)| host + (file_offset - foff))
}

/// Write `pages` of guest memory into a new sparse memory file at `path` (atomically: temp
/// file, fsync, rename) and its page index beside it. Returns the bytes written.
pub fn write_memory_file(
    mem: &GuestMemoryMmap,
    pages: &PageIndex,
    path: &Path,
    sync: bool,
) -> Result<u64, VmmError> {
    write_layer(mem, pages, pages, path, sync, ZeroPages::Write)
}

/// How [`copy_pages_with`] treats guest pages that are all zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroPages {
    /// Written like any other page.
    Write,
    /// Left as holes of the new file, which read as zeros: they cost neither a copy nor a page
    /// of the file system. Only for a file that holds all of memory (a Full snapshot): a
    /// Diff's zero pages must be data, or a merge that copies a Diff's data ranges onto its
    /// base (Firecracker's `rebase-snap`) would miss them.
    Holes,
}

/// [`write_memory_file`] with an index that claims `index_pages` (a superset of `pages`): pages
/// claimed but not written are holes, which read as zeros. A layer that must hide every older
/// layer (memory after a fresh boot) claims all of memory this way at the cost of its real pages.
pub fn write_memory_layer(
    mem: &GuestMemoryMmap,
    pages: &PageIndex,
    index_pages: &PageIndex,
    path: &Path,
    sync: bool,
) -> Result<u64, VmmError> {
    write_layer(mem, pages, index_pages, path, sync, ZeroPages::Write)
}

fn write_layer(
    mem: &GuestMemoryMmap,
    pages: &PageIndex,
    index_pages: &PageIndex,
    path: &Path,
    sync: bool,
    zeros: ZeroPages,
) -> Result<u64, VmmError> {
    let writes = if sync {
        LayerWrites::EarlyWriteback
    } else {
        LayerWrites::Cached
    };
    let (layer, written) = write_unfinished(mem, pages, path, writes, zeros)?;
    layer.finish(index_pages, sync).map(|()| written)
}

/// How a new layer file's pages reach its file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerWrites {
    /// Through the page cache, written back whenever the kernel likes.
    Cached,
    /// Through the page cache, each 4 MiB handed to the disk's writeback as soon as it is
    /// written: for a layer that will be fsynced.
    EarlyWriteback,
    /// Past the page cache where the file system has a disk and takes `O_DIRECT`
    /// (checkpoint/direct_io.rs), else as `EarlyWriteback`: for a paused snapshot that will be
    /// fsynced, never for a copy the guest may wait on page by page. The page at file offset
    /// `keep_cached` (one the VMM itself writes on every restore) is then written through the
    /// cache as well, so a restore soon after does not wait on the disk for it.
    Direct { keep_cached: u64 },
}

/// Copy `pages` into a new layer file for `path`, left under its temporary name for the caller
/// to finish or commit, its pages written as `writes` says. Returns the layer and the bytes
/// written.
pub fn write_unfinished(
    mem: &GuestMemoryMmap,
    pages: &PageIndex,
    path: &Path,
    writes: LayerWrites,
    zeros: ZeroPages,
) -> Result<(LayerFile, u64), VmmError> {
    let mut layer = LayerFile::create(path, mem_size(mem))?;
    let direct = match writes {
        LayerWrites::Direct { .. } => layer.start_direct(),
        _ => Ok(false),
    };
    let prepared = match direct {
        Ok(false) if writes != LayerWrites::Cached => layer.start_writeback_early().map(|()| false),
        other => other,
    };
    let direct = match prepared {
        Ok(direct) => direct,
        Err(e) => {
            layer.discard();
            return Err(e);
        }
    };
    let copied = copy_pages_with(mem, pages, &layer, zeros).and_then(|written| {
        if let (true, LayerWrites::Direct { keep_cached }) = (direct, writes) {
            layer.write_cached(mem, pages, keep_cached / PAGE_SIZE)?;
        }
        Ok(written)
    });
    match copied {
        Ok(written) => Ok((layer, written)),
        Err(e) => {
            layer.discard();
            Err(e)
        }
    }
}

/// A memory layer being written: a sparse file under a temporary name, renamed into place with
/// its page index by [`LayerFile::finish`].
#[derive(Debug)]
pub struct LayerFile {
    /// The open temporary file.
    pub file: File,
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    size: u64,
    /// Set where the layer will be fsynced and its file system writes back to a disk: the span
    /// written and not yet handed to writeback.
    writeback: Option<Writeback>,
    /// Set where pages go to the disk past the page cache ([`LayerWrites::Direct`]).
    direct: Option<DirectFile>,
    /// Set where the layer's chunk checksums are computed as its pages are written
    /// ([`LayerFile::checksum_as_written`]).
    checksums: Option<Mutex<StreamedCrcs>>,
}

/// The span `[start, end)` written and not yet handed to the disk's writeback (`end` 0: none);
/// see [`LayerFile::start_writeback_early`].
#[derive(Debug, Default)]
struct Writeback {
    start: AtomicU64,
    end: AtomicU64,
}

/// Bytes written before [`LayerFile::write_from`] starts their writeback.
const WRITEBACK_CHUNK: u64 = 4 << 20;

impl LayerFile {
    /// Create the temporary file for the layer at `path`, `size` bytes long (all holes).
    pub fn create(path: &Path, size: u64) -> Result<Self, VmmError> {
        cairn_snapshot::safe_path::check_output_target(path)
            .map_err(|e| snap_err(format!("{}: {e}", path.display())))?;
        let tmp = cairn_snapshot::file::temp_path(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| snap_err(format!("{}: {e}", tmp.display())))?;
        let layer = Self {
            file,
            tmp,
            path: path.to_path_buf(),
            size,
            writeback: None,
            direct: None,
            checksums: None,
        };
        if let Err(e) = layer.file.set_len(size) {
            let msg = format!("{}: {e}", layer.tmp.display());
            layer.discard();
            return Err(snap_err(msg));
        }
        Ok(layer)
    }

    /// Start the disk's writeback of each 4 MiB written as soon as it is written, so that the
    /// copy and the disk work side by side and [`LayerFile::finish`]'s fsync finds little left
    /// (an fsync after the whole copy waited for all of it: 256 MiB on this host's ext4 took
    /// 100 ms to write and 145 ms more to fsync). For layers that will be fsynced; nothing
    /// changes on tmpfs, which has no disk.
    pub fn start_writeback_early(&mut self) -> Result<(), VmmError> {
        if !crate::checkpoint::holes::on_tmpfs(&self.file)? {
            self.writeback = Some(Writeback::default());
        }
        Ok(())
    }

    /// Write the layer's pages past the page cache from now on, where its file system has a
    /// disk and takes `O_DIRECT` and `CAIRN_SNAPSHOT_DIRECT_IO` is not `0`. Returns whether it
    /// will.
    pub fn start_direct(&mut self) -> Result<bool, VmmError> {
        if !crate::checkpoint::direct_io::enabled()
            || crate::checkpoint::holes::on_tmpfs(&self.file)?
        {
            return Ok(false);
        }
        self.direct = DirectFile::open(&self.tmp)
            .map_err(|e| snap_err(format!("{}: O_DIRECT: {e}", self.tmp.display())))?;
        Ok(self.direct.is_some())
    }

    /// Compute the layer's chunk checksums from the pages as [`LayerFile::write_from`] writes
    /// them, for an index that will claim `claimed`, of which `written` will be written (the
    /// rest are holes): [`LayerFile::finish`] then stores them in the index, and committing the
    /// checkpoint does not read the layer back (`cairn_snapshot::memory::StreamedCrcs`).
    pub fn checksum_as_written(&mut self, claimed: &PageIndex, written: &PageIndex) {
        self.checksums = Some(Mutex::new(StreamedCrcs::new(self.size, claimed, written)));
    }

    /// Feed `[host, host + len)`, just written at `offset`, to the checksums.
    fn checksum(&self, host: u64, len: u64, offset: u64) {
        let Some(checksums) = &self.checksums else {
            return;
        };
        // SAFETY: `host..host + len` lies inside a live guest mapping (the write that just read
        // it was given it), and nothing writes it while the slice lives: the vCPUs are paused,
        // or these pages are write-protected until the background copy lifts them, after this
        // returns; devices are not served during a checkpoint. Or it is a slice the caller
        // borrows for the call (`write_slice`).
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len as usize) };
        checksums
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wrote(offset / PAGE_SIZE, bytes);
    }

    /// Hand `[offset, offset + len)`, just written, to writeback once 4 MiB have gathered.
    fn written(&self, offset: u64, len: u64) -> Result<(), VmmError> {
        let Some(wb) = &self.writeback else {
            return Ok(());
        };
        let end = offset + len;
        let (mut start, mut last) = (wb.start.load(Relaxed), wb.end.load(Relaxed));
        if last == 0 {
            start = offset;
        }
        start = start.min(offset);
        last = last.max(end);
        if last - start < WRITEBACK_CHUNK {
            wb.start.store(start, Relaxed);
            wb.end.store(last, Relaxed);
            return Ok(());
        }
        wb.start.store(0, Relaxed);
        wb.end.store(0, Relaxed);
        start_writeback(&self.file, start, last - start)
            .map_err(|e| snap_err(format!("starting writeback of {}: {e}", self.tmp.display())))
    }

    /// Copy `len` bytes of guest memory at host address `host` to file offset `offset`.
    pub fn write_from(&self, host: u64, len: u64, offset: u64) -> Result<(), VmmError> {
        if self.writeback.is_some() {
            // In 4 MiB pieces, each handed to writeback once written.
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(WRITEBACK_CHUNK);
                self.write_all_from(host + done, n, offset + done)?;
                self.written(offset + done, n)?;
                done += n;
            }
        } else {
            self.write_all_from(host, len, offset)?;
        }
        self.checksum(host, len, offset);
        Ok(())
    }

    /// Write `bytes`, guest pages copied out while the vCPUs were paused
    /// (checkpoint/staged.rs), at file offset `offset`.
    pub fn write_slice(&self, bytes: &[u8], offset: u64) -> Result<(), VmmError> {
        // A slice borrowed for the whole call is as good a source as a guest range.
        self.write_from(bytes.as_ptr() as u64, bytes.len() as u64, offset)
    }

    /// Write `page` of `mem` again through the page cache (a layer written past it), if it is
    /// one of `pages` and not a hole of a Full file: the cache then holds it for the next reader.
    fn write_cached(
        &self,
        mem: &GuestMemoryMmap,
        pages: &PageIndex,
        page: u64,
    ) -> Result<(), VmmError> {
        let offset = page * PAGE_SIZE;
        if !pages.contains(page) || !self.holds_data(offset)? {
            return Ok(());
        }
        let Some(host) = host_range_for(&region_layout(mem), offset, PAGE_SIZE) else {
            return Ok(());
        };
        pwrite_guest(&self.file, &self.tmp, host, PAGE_SIZE, offset)
    }

    /// Whether the page at `offset` of the layer was written (is not a hole).
    fn holds_data(&self, offset: u64) -> Result<bool, VmmError> {
        // SAFETY: lseek on the layer's own open descriptor only moves its file offset.
        let data = unsafe { libc::lseek(self.file.as_raw_fd(), offset as i64, libc::SEEK_DATA) };
        Ok(data >= 0 && data as u64 == offset)
    }

    fn write_all_from(&self, host: u64, len: u64, offset: u64) -> Result<(), VmmError> {
        let direct = match &self.direct {
            Some(d) => d
                .write(host, len, offset)
                .map_err(|e| snap_err(format!("writing {}: {e}", self.tmp.display())))?,
            None => 0,
        };
        if direct == len {
            return Ok(());
        }
        pwrite_guest(
            &self.file,
            &self.tmp,
            host + direct,
            len - direct,
            offset + direct,
        )
    }

    /// Write the page index claiming `index_pages` and rename the layer into place.
    pub fn finish(mut self, index_pages: &PageIndex, sync: bool) -> Result<(), VmmError> {
        let result = (|| {
            if sync {
                self.file
                    .sync_all()
                    .map_err(|e| snap_err(format!("fsync {}: {e}", self.tmp.display())))?;
            }
            self.index(index_pages)?
                .save(&cairn_snapshot::memory::index_path(&self.path))
                .map_err(snap_err)?;
            std::fs::rename(&self.tmp, &self.path)
                .map_err(|e| snap_err(format!("rename {}: {e}", self.path.display())))?;
            if sync {
                cairn_snapshot::file::sync_parent_dir(&self.path).map_err(snap_err)?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }

    /// [`LayerFile::finish`] into a new checkpoint's directory, which nothing reads before its
    /// commit: the index is written at its final path and the layer renamed, neither synced.
    /// Returns the index for the commit to sync (the layer's data is not synced: see
    /// docs/checkpoint-format.md).
    pub fn finish_unsynced(mut self, index_pages: &PageIndex) -> Result<WrittenFile, VmmError> {
        let index_file = cairn_snapshot::memory::index_path(&self.path);
        let result = self
            .index(index_pages)
            .and_then(|index| {
                let bytes = cairn_snapshot::file::encode(FileKind::PageIndex, &index.encode());
                WrittenFile::write_new(&index_file, &bytes).map_err(snap_err)
            })
            .and_then(|index| {
                std::fs::rename(&self.tmp, &self.path)
                    .map_err(|e| snap_err(format!("rename {}: {e}", self.path.display())))?;
                Ok(index)
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }

    /// The layer's page index claiming `index_pages`, with its chunk checksums where they were
    /// computed as the pages were written ([`LayerFile::checksum_as_written`]).
    fn index(&mut self, index_pages: &PageIndex) -> Result<LayerIndex, VmmError> {
        let mut index = LayerIndex::new(self.size, index_pages.clone()).map_err(snap_err)?;
        if let Some(checksums) = self.checksums.take() {
            let checksums = checksums.into_inner().unwrap_or_else(|p| p.into_inner());
            let read_back = checksums.chunks_read_back();
            index.chunk_crcs = checksums.finish(&self.tmp).map_err(snap_err)?;
            tracing::debug!(
                "{}: chunk checksums computed as written, {read_back} of {} chunks read back",
                self.path.display(),
                index.chunk_crcs.len()
            );
        }
        Ok(index)
    }

    /// The layer as files for [`cairn_snapshot::durable::commit`]: its page index claiming
    /// `index_pages` (written to a temporary file), then the layer itself.
    pub fn into_pending(self, index_pages: &PageIndex) -> Result<[PendingFile; 2], VmmError> {
        match pending_index(&self.path, self.size, index_pages.clone()) {
            Ok(index) => Ok([
                index,
                PendingFile::from_parts(self.file, self.tmp, self.path),
            ]),
            Err(e) => {
                self.discard();
                Err(e)
            }
        }
    }

    /// Remove the temporary file.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The page index of the memory file `path` (of guest memory `size` bytes) claiming `pages`,
/// written to a temporary file for [`cairn_snapshot::durable::commit`].
pub fn pending_index(path: &Path, size: u64, pages: PageIndex) -> Result<PendingFile, VmmError> {
    LayerIndex::new(size, pages)
        .map(|i| cairn_snapshot::file::encode(FileKind::PageIndex, &i.encode()))
        .and_then(|bytes| PendingFile::write_new(&cairn_snapshot::memory::index_path(path), &bytes))
        .map_err(snapshot_error)
}

/// Start the disk's writeback of `len` bytes of `file` from `offset` (`len` 0: to the end),
/// without waiting for it: the hook [`cairn_snapshot::durable::commit_with`] calls before its
/// fsyncs, and the early writeback of a layer being copied.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: sync_file_range only starts writeback of this open file's dirty pages; it reads
    // no memory of ours.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Write `len` bytes of guest memory at host address `host` (a range inside a live guest
/// mapping: from [`host_range_for`] or [`region_layout`]) to `file` at `offset`.
fn pwrite_guest(
    file: &File,
    name: &Path,
    host: u64,
    len: u64,
    offset: u64,
) -> Result<(), VmmError> {
    let mut done = 0u64;
    while done < len {
        // SAFETY: callers pass a range inside a live guest mapping (checked by host_range_for
        // or taken from region_layout), or a slice they borrow for the call (`write_slice`);
        // pwrite only reads from it.
        let n = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                (host + done) as *const libc::c_void,
                (len - done) as usize,
                (offset + done) as libc::off_t,
            )
        };
        if n <= 0 {
            return Err(snap_err(format!(
                "writing {}: {}",
                name.display(),
                std::io::Error::last_os_error()
            )));
        }
        done += n as u64;
    }
    Ok(())
}

/// Write `pages` of guest memory into `file`, an existing memory file as large as guest memory,
/// at their own offsets (Firecracker's merge of a Diff into the file it names), and fsync it.
/// Returns the bytes written.
pub fn merge_pages_into(
    mem: &GuestMemoryMmap,
    pages: &PageIndex,
    file: &File,
    name: &Path,
) -> Result<u64, VmmError> {
    let mut written = 0;
    for_each_host_range(mem, pages, |host, offset, len| {
        written += len;
        pwrite_guest(file, name, host, len, offset)
    })?;
    file.sync_all()
        .map_err(|e| snap_err(format!("fsync {}: {e}", name.display())))?;
    Ok(written)
}

/// Call `f(host, file_offset, len)` for each run of `pages`, with the run's host address in
/// guest memory's mapping.
pub(crate) fn for_each_host_range(
    mem: &GuestMemoryMmap,
    pages: &PageIndex,
    mut f: impl FnMut(u64, u64, u64) -> Result<(), VmmError>,
) -> Result<(), VmmError> {
    let layout = region_layout(mem);
    for (offset, len) in pages.write_plan() {
        let host = host_range_for(&layout, offset, len).ok_or_else(|| {
            snap_err(format!(
                "page range {offset:#x}+{len:#x} is outside guest RAM"
            ))
        })?;
        f(host, offset, len)?;
    }
    Ok(())
}

/// Copy `pages` of guest memory into `layer` (the vCPUs paused). Returns the bytes written.
pub fn copy_pages(
    mem: &GuestMemoryMmap,
    pages: &PageIndex,
    layer: &LayerFile,
) -> Result<u64, VmmError> {
    copy_pages_with(mem, pages, layer, ZeroPages::Write)
}

/// [`copy_pages`], with zero pages written or left as holes. Returns the bytes written.
pub fn copy_pages_with(
    mem: &GuestMemoryMmap,
    pages: &PageIndex,
    layer: &LayerFile,
    zeros: ZeroPages,
) -> Result<u64, VmmError> {
    let mut written = 0;
    for_each_host_range(mem, pages, |host, offset, len| {
        let runs = match zeros {
            ZeroPages::Write => vec![(0, len)],
            ZeroPages::Holes => nonzero_runs(host, len),
        };
        for (at, n) in runs {
            layer.write_from(host + at, n, offset + at)?;
            written += n;
        }
        Ok(())
    })?;
    Ok(written)
}

/// The runs of pages of `[host, host + len)` (a page-aligned range of guest memory) that hold
/// a byte other than zero, as `(offset from host, length)`.
fn nonzero_runs(host: u64, len: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut at = 0;
    while at < len {
        if !page_is_zero(host + at) {
            match runs.last_mut() {
                Some((start, n)) if *start + *n == at => *n += PAGE_SIZE,
                _ => runs.push((at, PAGE_SIZE)),
            }
        }
        at += PAGE_SIZE;
    }
    runs
}

/// Whether the page at `host` (inside guest memory, page-aligned) is all zeros. Reads stop at
/// the first word that is not, which for most pages that hold data is the first.
fn page_is_zero(host: u64) -> bool {
    let words = host as *const u64;
    (0..(PAGE_SIZE / 8) as usize).all(|i| {
        // SAFETY: `host` is a page inside a live guest mapping (from host_range_for), so each of
        // its 512 words is readable; a volatile read, as guest memory may be shared with
        // devices.
        unsafe { words.add(i).read_volatile() == 0 }
    })
}

/// Guest memory mapped MAP_PRIVATE from a chain of memory files (base first). Pages are read
/// lazily by the kernel on first touch; writes stay private to this VM.
pub fn map_memory_chain(
    regions: &[(u64, u64)],
    layers: &[std::path::PathBuf],
) -> Result<(GuestMemoryMmap, PageIndex), VmmError> {
    let base_path = layers
        .first()
        .ok_or_else(|| snap_err("no memory file given"))?;
    let base = cairn_snapshot::safe_path::open_input(
        base_path,
        false,
        cairn_snapshot::safe_path::InputKind::Regular,
    )
    .map_err(|e| snap_err(format!("{}: {e}", base_path.display())))?;
    let total: u64 = regions.iter().map(|(_, len)| len).sum();
    let file_len = base.metadata().map_err(|e| snap_err(e.to_string()))?.len();
    if file_len < total {
        return Err(snap_err(format!(
            "memory file {} is {file_len} bytes, the VM needs {total}",
            base_path.display()
        )));
    }
    let mut file_offset = 0u64;
    let mut mapped = Vec::with_capacity(regions.len());
    for &(gpa, len) in regions {
        let f = base.try_clone().map_err(|e| snap_err(e.to_string()))?;
        let region = MmapRegionBuilder::<AtomicBitmap>::new_with_bitmap(
            len as usize,
            <AtomicBitmap as vm_memory::bitmap::NewBitmap>::with_len(len as usize),
        )
        .with_file_offset(FileOffset::new(f, file_offset))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| snap_err(format!("mmap {}: {e}", base_path.display())))?;
        let region = GuestRegionMmap::new(region, GuestAddress(gpa))
            .ok_or_else(|| snap_err("region overflows"))?;
        mapped.push(region);
        file_offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(mapped).map_err(|e| snap_err(e.to_string()))?;
    let base_ranges: Vec<MappedRange<'_>> = region_layout(&mem)
        .into_iter()
        .map(|(host, len, file_offset)| MappedRange {
            file: &base,
            file_offset,
            len,
            host,
        })
        .collect();
    anonymize_tmpfs_holes(&base_ranges)?;
    // Layers after the base: map each one's pages over the base, newest last.
    let mut chain = cairn_snapshot::memory::LayerChain::new(total);
    for layer in layers {
        let index = cairn_snapshot::memory::open_layer(layer)
            .map_err(|e| snap_err(format!("{}: {e}", layer.display())))?;
        chain.push(layer, index).map_err(snap_err)?;
    }
    let layout = region_layout(&mem);
    let files: Vec<File> = layers
        .iter()
        .map(|p| {
            cairn_snapshot::safe_path::open_input(
                p,
                false,
                cairn_snapshot::safe_path::InputKind::Regular,
            )
            .map_err(|e| snap_err(format!("{}: {e}", p.display())))
        })
        .collect::<Result<_, _>>()?;
    let mut layer_ranges = Vec::new();
    for range in chain.resolve() {
        if range.layer == 0 {
            continue;
        }
        let host = host_range_for(&layout, range.guest_offset, range.len)
            .ok_or_else(|| snap_err("layer range outside guest RAM"))?;
        let file = &files[range.layer];
        // SAFETY: the target range lies inside our own guest mapping (checked above), so
        // MAP_FIXED only replaces pages of that mapping; the file stays open while mapped
        // (the kernel holds its own reference).
        let p = unsafe {
            libc::mmap(
                host as *mut libc::c_void,
                range.len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                range.file_offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(snap_err(format!(
                "mmap layer: {}",
                std::io::Error::last_os_error()
            )));
        }
        layer_ranges.push(MappedRange {
            file,
            file_offset: range.file_offset,
            len: range.len,
            host,
        });
    }
    anonymize_tmpfs_holes(&layer_ranges)?;
    let all_pages = chain
        .layers()
        .iter()
        .fold(PageIndex::new(), |acc, l| acc.union(&l.pages));
    Ok((mem, all_pages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    /// 64 pages of guest memory: pages 1, 2, 40 hold data (page 40 only in its last byte), the
    /// rest are zeros.
    fn memory() -> GuestMemoryMmap {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 * PAGE_SIZE as usize)]).unwrap();
        mem.write_slice(&[7u8; 2 * PAGE_SIZE as usize], GuestAddress(PAGE_SIZE))
            .unwrap();
        mem.write_slice(&[9u8], GuestAddress(41 * PAGE_SIZE - 1))
            .unwrap();
        mem
    }

    fn written(zeros: ZeroPages) -> (Vec<u8>, u64, u64) {
        let mem = memory();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let all = PageIndex::from_ranges([(0, 64)]);
        let (layer, bytes) =
            write_unfinished(&mem, &all, &path, LayerWrites::EarlyWriteback, zeros).unwrap();
        layer.finish(&all, true).unwrap();
        let data = std::fs::read(&path).unwrap();
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        // The index claims every page either way: holes read as zeros.
        let index = cairn_snapshot::memory::open_layer(&path).unwrap();
        assert_eq!(index.pages.page_count(), 64);
        (data, bytes, allocated)
    }

    #[test]
    fn zero_pages_become_holes_and_the_file_reads_the_same() {
        let mem = memory();
        let mut expected = vec![0u8; 64 * PAGE_SIZE as usize];
        mem.read_slice(&mut expected, GuestAddress(0)).unwrap();
        let (holes, holes_bytes, holes_alloc) = written(ZeroPages::Holes);
        let (full, full_bytes, _) = written(ZeroPages::Write);
        assert_eq!(holes, expected);
        assert_eq!(full, expected);
        assert_eq!(holes_bytes, 3 * PAGE_SIZE);
        assert_eq!(full_bytes, 64 * PAGE_SIZE);
        // File systems may round allocations up; the zero pages must not all be allocated.
        assert!(
            holes_alloc < 16 * PAGE_SIZE,
            "{holes_alloc} bytes allocated"
        );
    }

    #[test]
    fn a_layer_checksummed_as_written_holds_the_checksums_of_its_file() {
        let mem = memory();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        // A Full over a chain: every page claimed, three runs written, one page twice.
        let claimed = PageIndex::full(64);
        let written = PageIndex::from_ranges([(0, 3), (10, 4), (40, 1)]);
        let mut layer = LayerFile::create(&path, 64 * PAGE_SIZE).unwrap();
        layer.checksum_as_written(&claimed, &written);
        copy_pages(&mem, &written, &layer).unwrap();
        layer.finish(&claimed, false).unwrap();
        let index = cairn_snapshot::memory::open_layer(&path).unwrap();
        assert_eq!(index.chunk_crcs.len(), 1);
        cairn_snapshot::memory::verify_layer(&path).unwrap();
        // Sealing keeps them and reads nothing back.
        assert_eq!(cairn_snapshot::memory::seal_layer(&path).unwrap(), index);
        // Without the checksums (a Firecracker snapshot's layer) the index has none.
        let other = dir.path().join("other");
        let layer = LayerFile::create(&other, 64 * PAGE_SIZE).unwrap();
        copy_pages(&mem, &written, &layer).unwrap();
        layer.finish(&written, false).unwrap();
        let index = cairn_snapshot::memory::open_layer(&other).unwrap();
        assert!(index.chunk_crcs.is_empty());
    }

    #[test]
    fn runs_of_pages_with_data_are_found() {
        let mem = memory();
        let host = mem.iter().next().unwrap().as_ptr() as u64;
        assert_eq!(
            nonzero_runs(host, 64 * PAGE_SIZE),
            vec![(PAGE_SIZE, 2 * PAGE_SIZE), (40 * PAGE_SIZE, PAGE_SIZE)]
        );
        assert!(nonzero_runs(host + 3 * PAGE_SIZE, 37 * PAGE_SIZE).is_empty());
    }
}
