//! [`LayeredDisk`]: base image + frozen deltas + the active delta, with copy-on-write block writes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::durable::{commit, PendingFile};
use crate::error::{Error, Result};
use crate::file::{crc64, replace_atomic_with, sync_parent_dir, FileKind};

use super::index::{check_block_size, index_path, BlockEntry, BlockIndex, ZERO_OFFSET};
use super::served::{DiskFetch, FileId};
use super::DEFAULT_BLOCK_SIZE;

/// The cost of one checkpoint's disk layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskLayerStats {
    /// Blocks the layer records (data and zero).
    pub blocks: u64,
    /// Bytes of block data the layer holds (data blocks × block size).
    pub bytes: u64,
    /// Size of the layer's data file (includes slots freed by rewrites).
    pub file_bytes: u64,
}

/// A frozen delta: immutable data file plus its index.
#[derive(Debug)]
struct Frozen {
    path: PathBuf,
    file: File,
    /// Its identity, for a [`DiskFetch`].
    id: FileId,
    index: BlockIndex,
}

#[derive(Debug, Clone, Copy)]
struct ActiveEntry {
    offset: u64,
    crc: u64,
    /// Referenced by the index on disk: never overwritten in place, so a crash keeps that index valid.
    durable: bool,
}

#[derive(Debug)]
struct Active {
    path: PathBuf,
    file: File,
    map: HashMap<u64, ActiveEntry>,
    data_len: u64,
    /// Slots no index on disk refers to: reusable now.
    free: Vec<u64>,
    /// Slots the index on disk still refers to: reusable after the next flush.
    pending_free: Vec<u64>,
}

impl Active {
    /// An empty active delta: its data file, new and empty at `path`, open as `file` for
    /// reading and writing.
    fn empty(path: PathBuf, file: File) -> Self {
        Self {
            path,
            file,
            map: HashMap::new(),
            data_len: 0,
            free: Vec::new(),
            pending_free: Vec::new(),
        }
    }
}

/// The encoded index of an empty delta of a disk of `disk_len` bytes in `block_size` blocks.
fn empty_index_bytes(block_size: u32, disk_len: u64) -> Vec<u8> {
    let empty = BlockIndex {
        block_size,
        disk_len,
        data_len: 0,
        entries: Vec::new(),
    };
    crate::file::encode(FileKind::DiskIndex, &empty.encode())
}

/// Where the current contents of a block come from.
enum Source {
    Active(ActiveEntry),
    Layer(usize, BlockEntry),
    Zero,
    Base,
}

/// A virtual disk made of a read-only base image, frozen delta layers (oldest first) and an active delta.
#[derive(Debug)]
pub struct LayeredDisk {
    base_path: PathBuf,
    base: File,
    base_id: FileId,
    base_len: u64,
    block_size: u32,
    layers: Vec<Frozen>,
    active: Active,
    /// Fills absent ranges of the base and the frozen layers before they are read (a lazily
    /// pulled sandbox's disk, see [`super::served`]); the active delta is always local.
    fetch: Option<Arc<dyn DiskFetch>>,
}

fn open_frozen(path: &Path) -> Result<Frozen> {
    let index = BlockIndex::load(&index_path(path))?;
    let file = File::open(path).map_err(|e| Error::io("open disk layer", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("stat disk layer", path, e))?;
    let (len, id) = (
        meta.len(),
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        },
    );
    if len < index.data_len {
        return Err(Error::LengthMismatch {
            declared: index.data_len,
            actual: len,
        }
        .in_file(path));
    }
    Ok(Frozen {
        path: path.to_path_buf(),
        file,
        id,
        index,
    })
}

impl LayeredDisk {
    /// Open a disk: `base` (raw image, opened read-only), `layers` (frozen deltas, oldest first) and the
    /// `active` delta. The block size is the layers' (they must agree), or [`DEFAULT_BLOCK_SIZE`].
    ///
    /// If `active` has an index (`<active>.index`) its delta is resumed; otherwise a fresh, empty active
    /// delta is created there. To restore a checkpoint, pass a new `active` path: that is instant.
    pub fn open(base: &Path, layers: &[PathBuf], active: PathBuf) -> Result<Self> {
        Self::open_with_block_size(base, layers, active, None)
    }

    /// [`LayeredDisk::open`] choosing the block size of a chain with no layers yet.
    pub fn open_with_block_size(
        base: &Path,
        layers: &[PathBuf],
        active: PathBuf,
        block_size: Option<u32>,
    ) -> Result<Self> {
        let base_file = File::open(base).map_err(|e| Error::io("open base image", base, e))?;
        let base_meta = base_file
            .metadata()
            .map_err(|e| Error::io("stat base image", base, e))?;
        let base_len = base_meta.len();
        let base_id = FileId {
            dev: base_meta.dev(),
            ino: base_meta.ino(),
        };
        let frozen = layers
            .iter()
            .map(|p| open_frozen(p))
            .collect::<Result<Vec<_>>>()?;
        let block_size = match (frozen.first(), block_size) {
            (Some(f), _) => f.index.block_size,
            (None, Some(bs)) => bs,
            (None, None) => DEFAULT_BLOCK_SIZE,
        };
        check_block_size(block_size)?;
        for f in &frozen {
            if f.index.block_size != block_size || f.index.disk_len != base_len {
                return Err(Error::Geometry(format!(
                    "layer {} has block size {} and disk size {}, the chain {} and {}",
                    f.path.display(),
                    f.index.block_size,
                    f.index.disk_len,
                    block_size,
                    base_len
                )));
            }
        }
        let active = Self::open_active(active, block_size, base_len)?;
        Ok(Self {
            base_path: base.to_path_buf(),
            base: base_file,
            base_id,
            base_len,
            block_size,
            layers: frozen,
            active,
            fetch: None,
        })
    }

    fn open_active(path: PathBuf, block_size: u32, disk_len: u64) -> Result<Active> {
        let ipath = index_path(&path);
        let index = if ipath.exists() {
            Some(BlockIndex::load(&ipath)?)
        } else {
            None
        };
        let Some(index) = index.filter(|ix| ix.data_len > 0 || !ix.entries.is_empty()) else {
            // Fresh delta: a new empty data file (never reuse an inode a frozen layer may share)
            // and its empty index, made durable together, the index last (a restore waits for
            // this; an active delta without its index is a fresh one).
            let index_bytes = empty_index_bytes(block_size, disk_len);
            let data = PendingFile::write_new(&path, &[])?;
            match PendingFile::write_new(&ipath, &index_bytes) {
                Ok(index) => commit(vec![data, index])?,
                Err(e) => {
                    data.discard();
                    return Err(e);
                }
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("open active delta", &path, e))?;
            return Ok(Active::empty(path, file));
        };
        if index.block_size != block_size || index.disk_len != disk_len {
            return Err(Error::Geometry(format!(
                "active delta {} does not match the chain's geometry",
                path.display()
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open active delta", &path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("stat active delta", &path, e))?;
        if meta.len() < index.data_len {
            return Err(Error::LengthMismatch {
                declared: index.data_len,
                actual: meta.len(),
            }
            .in_file(&path));
        }
        if meta.nlink() > 1 {
            return Err(Error::Geometry(format!(
                "active delta {} is shared with another file (hard link)",
                path.display()
            )));
        }
        let bs = u64::from(block_size);
        let mut used = std::collections::HashSet::new();
        let mut map = HashMap::with_capacity(index.entries.len());
        for e in &index.entries {
            if !e.is_zero() {
                used.insert(e.offset);
            }
            map.insert(
                e.block,
                ActiveEntry {
                    offset: e.offset,
                    crc: e.crc,
                    durable: true,
                },
            );
        }
        let free = (0..index.data_len / bs)
            .rev()
            .map(|k| k * bs)
            .filter(|o| !used.contains(o))
            .collect();
        Ok(Active {
            path,
            file,
            map,
            data_len: index.data_len,
            free,
            pending_free: Vec::new(),
        })
    }

    /// Read the base image and the frozen layers through `fetch`: every range is made present
    /// by it before it is read, and one it cannot make present fails the read
    /// ([`Error::Fetch`]).
    pub fn set_fetcher(&mut self, fetch: Arc<dyn DiskFetch>) {
        self.fetch = Some(fetch);
    }

    /// Make `len` bytes at `offset` of the base (`None`) or frozen layer `Some(i)` present.
    fn fetch(&self, file: Option<usize>, offset: u64, len: u64) -> Result<()> {
        let Some(fetch) = &self.fetch else {
            return Ok(());
        };
        let (id, path) = match file {
            None => (self.base_id, &self.base_path),
            Some(i) => (self.layers[i].id, &self.layers[i].path),
        };
        fetch
            .ensure(id, offset, len)
            .map_err(|detail| Error::Fetch {
                path: path.clone(),
                detail,
            })
    }

    /// Size of the virtual disk in bytes (the base image's size).
    pub fn len(&self) -> u64 {
        self.base_len
    }

    /// Whether the disk has zero size.
    pub fn is_empty(&self) -> bool {
        self.base_len == 0
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The frozen layers' data files, oldest first.
    pub fn layer_paths(&self) -> Vec<PathBuf> {
        self.layers.iter().map(|f| f.path.clone()).collect()
    }

    /// The base image.
    pub fn base_path(&self) -> &Path {
        &self.base_path
    }

    fn check_range(&self, off: u64, len: usize) -> Result<()> {
        match off.checked_add(len as u64) {
            Some(end) if end <= self.base_len => Ok(()),
            _ => Err(Error::OutOfRange {
                offset: off,
                len: len as u64,
                size: self.base_len,
            }),
        }
    }

    fn source(&self, block: u64) -> Source {
        if let Some(e) = self.active.map.get(&block) {
            return if e.offset == ZERO_OFFSET {
                Source::Zero
            } else {
                Source::Active(*e)
            };
        }
        for (i, f) in self.layers.iter().enumerate().rev() {
            if let Some(e) = f.index.get(block) {
                return if e.is_zero() {
                    Source::Zero
                } else {
                    Source::Layer(i, *e)
                };
            }
        }
        Source::Base
    }

    /// Read bytes `within .. within + out.len()` of `block` into `out`.
    fn read_block_part(
        &self,
        block: u64,
        within: usize,
        out: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<()> {
        let bs = self.block_size as usize;
        let (file, path, offset, crc) = match self.source(block) {
            Source::Zero => {
                out.fill(0);
                return Ok(());
            }
            Source::Base => {
                let at = block * bs as u64 + within as u64;
                let avail = self.base_len.saturating_sub(at).min(out.len() as u64) as usize;
                self.fetch(None, at, avail as u64)?;
                self.base
                    .read_exact_at(&mut out[..avail], at)
                    .map_err(|e| Error::io("read base image", &self.base_path, e))?;
                out[avail..].fill(0);
                return Ok(());
            }
            Source::Active(e) => (&self.active.file, &self.active.path, e.offset, e.crc),
            Source::Layer(i, e) => {
                self.fetch(Some(i), e.offset, bs as u64)?;
                (&self.layers[i].file, &self.layers[i].path, e.offset, e.crc)
            }
        };
        scratch.resize(bs, 0);
        file.read_exact_at(scratch, offset)
            .map_err(|e| Error::io("read disk delta", path, e))?;
        if crc64(scratch) != crc {
            return Err(Error::BlockChecksum {
                path: path.clone(),
                block,
            });
        }
        out.copy_from_slice(&scratch[within..within + out.len()]);
        Ok(())
    }

    /// Read `buf.len()` bytes at `off`: each block from the newest delta holding it, else the base.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(off, buf.len())?;
        let bs = u64::from(self.block_size);
        let ubs = bs as usize;
        let mut scratch = Vec::new();
        let mut crcs = Vec::new();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let block = pos / bs;
            let within = (pos % bs) as usize;
            let n = (ubs - within).min(buf.len() - done);
            if n < ubs {
                self.read_block_part(block, within, &mut buf[done..done + n], &mut scratch)?;
                done += n;
                continue;
            }
            // Whole blocks: read a run of blocks that are contiguous in one file with one pread.
            let max = (buf.len() - done) / ubs;
            let first = self.source(block);
            let mut count = 1;
            crcs.clear();
            match first {
                Source::Zero => {
                    while count < max && matches!(self.source(block + count as u64), Source::Zero) {
                        count += 1;
                    }
                    buf[done..done + count * ubs].fill(0);
                }
                Source::Base => {
                    while count < max && matches!(self.source(block + count as u64), Source::Base) {
                        count += 1;
                    }
                    let out = &mut buf[done..done + count * ubs];
                    let avail = self.base_len.saturating_sub(pos).min(out.len() as u64) as usize;
                    self.fetch(None, pos, avail as u64)?;
                    self.base
                        .read_exact_at(&mut out[..avail], pos)
                        .map_err(|e| Error::io("read base image", &self.base_path, e))?;
                    out[avail..].fill(0);
                }
                Source::Active(e) => {
                    crcs.push(e.crc);
                    while count < max {
                        match self.source(block + count as u64) {
                            Source::Active(n) if n.offset == e.offset + count as u64 * bs => {
                                crcs.push(n.crc)
                            }
                            _ => break,
                        }
                        count += 1;
                    }
                    let out = &mut buf[done..done + count * ubs];
                    self.read_run(
                        &self.active.file,
                        &self.active.path,
                        e.offset,
                        block,
                        &crcs,
                        out,
                    )?;
                }
                Source::Layer(i, e) => {
                    crcs.push(e.crc);
                    while count < max {
                        match self.source(block + count as u64) {
                            Source::Layer(j, n)
                                if j == i && n.offset == e.offset + count as u64 * bs =>
                            {
                                crcs.push(n.crc)
                            }
                            _ => break,
                        }
                        count += 1;
                    }
                    let out = &mut buf[done..done + count * ubs];
                    self.fetch(Some(i), e.offset, out.len() as u64)?;
                    let f = &self.layers[i];
                    self.read_run(&f.file, &f.path, e.offset, block, &crcs, out)?;
                }
            }
            done += count * ubs;
        }
        Ok(())
    }

    /// Read `crcs.len()` whole blocks stored contiguously at `offset` of a delta, checking each CRC.
    fn read_run(
        &self,
        file: &File,
        path: &Path,
        offset: u64,
        first_block: u64,
        crcs: &[u64],
        out: &mut [u8],
    ) -> Result<()> {
        file.read_exact_at(out, offset)
            .map_err(|e| Error::io("read disk delta", path, e))?;
        for (k, chunk) in out.chunks(self.block_size as usize).enumerate() {
            if crc64(chunk) != crcs[k] {
                return Err(Error::BlockChecksum {
                    path: path.to_path_buf(),
                    block: first_block + k as u64,
                });
            }
        }
        Ok(())
    }

    /// Write `buf` at `off`, copy-on-write: partial blocks are completed from the current contents.
    /// Whole blocks landing in contiguous slots of the active delta are written with one pwrite.
    pub fn write_at(&mut self, off: u64, buf: &[u8]) -> Result<()> {
        self.check_range(off, buf.len())?;
        let bs = u64::from(self.block_size);
        let ubs = bs as usize;
        let mut block_buf = Vec::new();
        let mut scratch = Vec::new();
        // A pending run: (slot of its first block, start in buf, length).
        let mut run: Option<(u64, usize, usize)> = None;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let block = pos / bs;
            let within = (pos % bs) as usize;
            let n = (ubs - within).min(buf.len() - done);
            if n == ubs {
                let data = &buf[done..done + n];
                if let Some(slot) = self.place_block(block, data) {
                    run = match run {
                        Some((s, start, len)) if s + len as u64 == slot && start + len == done => {
                            Some((s, start, len + n))
                        }
                        other => {
                            self.write_run(other, buf)?;
                            Some((slot, done, n))
                        }
                    };
                }
            } else {
                self.write_run(run.take(), buf)?;
                block_buf.resize(ubs, 0);
                self.read_block_part(block, 0, &mut block_buf, &mut scratch)?;
                block_buf[within..within + n].copy_from_slice(&buf[done..done + n]);
                if let Some(slot) = self.place_block(block, &block_buf) {
                    self.write_run(Some((slot, 0, ubs)), &block_buf)?;
                }
            }
            done += n;
        }
        self.write_run(run, buf)
    }

    fn write_run(&self, run: Option<(u64, usize, usize)>, buf: &[u8]) -> Result<()> {
        if let Some((slot, start, len)) = run {
            let a = &self.active;
            a.file
                .write_all_at(&buf[start..start + len], slot)
                .map_err(|e| Error::io("write active delta", &a.path, e))?;
        }
        Ok(())
    }

    /// Zero `len` bytes at `off`. Whole blocks are recorded as zero blocks (no data stored, lower layers
    /// masked); partial blocks at the edges are written with zeros.
    pub fn discard(&mut self, off: u64, len: u64) -> Result<()> {
        let ulen = usize::try_from(len).map_err(|_| Error::OutOfRange {
            offset: off,
            len,
            size: self.base_len,
        })?;
        self.check_range(off, ulen)?;
        let bs = u64::from(self.block_size);
        let end = off + len;
        let first_full = off.div_ceil(bs);
        let last_full = end / bs; // exclusive
        if first_full >= last_full {
            return self.write_at(off, &vec![0u8; ulen]);
        }
        if off < first_full * bs {
            self.write_at(off, &vec![0u8; (first_full * bs - off) as usize])?;
        }
        for block in first_full..last_full {
            self.set_entry(block, ZERO_OFFSET, 0);
        }
        if end > last_full * bs {
            self.write_at(last_full * bs, &vec![0u8; (end - last_full * bs) as usize])?;
        }
        Ok(())
    }

    /// Record that `block` now holds `data` and choose where it goes: `None` for a zero block (nothing
    /// to write), else the active delta's slot the caller must write `data` to.
    fn place_block(&mut self, block: u64, data: &[u8]) -> Option<u64> {
        if data.iter().all(|&b| b == 0) {
            self.set_entry(block, ZERO_OFFSET, 0);
            return None;
        }
        let crc = crc64(data);
        let bs = u64::from(self.block_size);
        let a = &mut self.active;
        let offset = match a.map.get(&block) {
            // Written since the last flush: no index on disk refers to the slot, overwrite it.
            Some(e) if e.offset != ZERO_OFFSET && !e.durable => e.offset,
            _ => a.free.pop().unwrap_or_else(|| {
                a.data_len += bs;
                a.data_len - bs
            }),
        };
        self.set_entry(block, offset, crc);
        Some(offset)
    }

    /// Point `block` at `offset` (or zero), releasing its previous slot.
    fn set_entry(&mut self, block: u64, offset: u64, crc: u64) {
        let a = &mut self.active;
        if let Some(old) = a.map.insert(
            block,
            ActiveEntry {
                offset,
                crc,
                durable: false,
            },
        ) {
            if old.offset != ZERO_OFFSET && old.offset != offset {
                if old.durable {
                    a.pending_free.push(old.offset);
                } else {
                    a.free.push(old.offset);
                }
            }
        }
    }

    fn active_index(&self) -> BlockIndex {
        let mut entries: Vec<BlockEntry> = self
            .active
            .map
            .iter()
            .map(|(&block, e)| BlockEntry {
                block,
                offset: e.offset,
                crc: e.crc,
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.block);
        BlockIndex {
            block_size: self.block_size,
            disk_len: self.base_len,
            data_len: self.active.data_len,
            entries,
        }
    }

    /// Make every write so far durable: fsync the active data, then atomically replace its index.
    pub fn flush(&mut self) -> Result<()> {
        let a = &self.active;
        a.file
            .sync_data()
            .map_err(|e| Error::io("fsync active delta", &a.path, e))?;
        self.active_index().save(&index_path(&self.active.path))?;
        let a = &mut self.active;
        for e in a.map.values_mut() {
            e.durable = true;
        }
        let pending = std::mem::take(&mut a.pending_free);
        a.free.extend(pending);
        // Highest first, so pop() hands out ascending, often contiguous, slots.
        a.free.sort_unstable_by(|x, y| y.cmp(x));
        Ok(())
    }

    /// Freeze the active delta as the immutable layer `dest` (plus `<dest>.index`) and start a fresh active
    /// delta. Costs O(dirty blocks): the data file is renamed, never copied (copied only if `dest` is on
    /// another filesystem). Order: fsync data; write `<dest>.index`; rename the data to `dest`; fsync both
    /// directories; create a fresh active data file and index. A kill at any point leaves every earlier
    /// layer untouched; an interrupted checkpoint leaves an unreferenced `dest` (its checkpoint has no
    /// `meta.json`).
    pub fn checkpoint(&mut self, dest: &Path) -> Result<DiskLayerStats> {
        let index = self.active_index();
        let a = &self.active;
        a.file
            .sync_data()
            .map_err(|e| Error::io("fsync active delta", &a.path, e))?;
        index.save(&index_path(dest))?;
        if let Err(e) = std::fs::rename(&a.path, dest) {
            if e.raw_os_error() != Some(18) {
                return Err(Error::io("rename active delta to layer", dest, e));
            }
            // EXDEV: another filesystem; copy, then drop the old active.
            let src = &a.path;
            replace_atomic_with(dest, |mut out| {
                let mut input =
                    File::open(src).map_err(|e| Error::io("open active delta", src, e))?;
                std::io::copy(&mut input, &mut out)
                    .map_err(|e| Error::io("copy active delta", dest, e))?;
                Ok(())
            })?;
        }
        sync_parent_dir(dest)?;
        sync_parent_dir(&a.path)?;
        let stats = DiskLayerStats {
            blocks: index.entries.len() as u64,
            bytes: index.data_blocks() * u64::from(self.block_size),
            file_bytes: index.data_len,
        };
        let active_path = self.active.path.clone();
        let _ = std::fs::remove_file(index_path(&active_path));
        self.active = Self::open_active(active_path, self.block_size, self.base_len)?;
        self.layers.push(open_frozen(dest)?);
        Ok(stats)
    }

    /// Remove frozen layer `i` from this disk's chain by merging it into layer `i + 1` (see
    /// [`super::merge_disk_layer_into_child`]). The newest frozen layer cannot be removed this way. The
    /// files of layer `i` are left for the caller to delete.
    pub fn delete_layer(&mut self, i: usize) -> Result<()> {
        if i + 1 >= self.layers.len() {
            return Err(Error::InvalidMeta(format!(
                "layer {i} has no newer frozen layer to merge into"
            )));
        }
        super::merge_disk_layer_into_child(&self.layers[i].path, &self.layers[i + 1].path)?;
        self.layers[i + 1] = open_frozen(&self.layers[i + 1].path)?;
        self.layers.remove(i);
        Ok(())
    }

    /// Statistics of the active delta (what a checkpoint now would record).
    pub fn active_stats(&self) -> DiskLayerStats {
        let data = self
            .active
            .map
            .values()
            .filter(|e| e.offset != ZERO_OFFSET)
            .count() as u64;
        DiskLayerStats {
            blocks: self.active.map.len() as u64,
            bytes: data * u64::from(self.block_size),
            file_bytes: self.active.data_len,
        }
    }
}

#[path = "freeze.rs"]
mod freeze;
pub use freeze::FrozenLayer;

#[cfg(test)]
#[path = "layered_tests.rs"]
mod tests;
