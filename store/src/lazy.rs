//! A lazily pulled sandbox's files: memory layers, disk layers and the base disk image made
//! sparse by the pull, filled chunk by chunk on demand ([`LazySet`]) and completed in the
//! background. Memory is read through [`ChainSource`] (a [`PageSource`] for the page server),
//! disk files through the block server ([`crate::disk_server`]).
//!
//! A lazy pull leaves `lazy.json` ([`LazyFiles`]) in the sandbox's directory: the manifest's
//! entries of the files it did not fill. Every chunk put into such a file comes from the chunk
//! cache or the bucket and is checked against its name first; once every chunk of every lazy
//! file is in, the file is removed and the sandbox restores from its files as any other.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkRef, CHUNK_SIZE};
use crate::error::{Result, StoreError};
use crate::local::LocalStore;
use crate::manifest::FileEntry;
use crate::page_server::PageSource;
use crate::presence::{self, LazyLock, Present};
use crate::remote::Remote;

/// The file in a sandbox's directory that lists its files not fetched yet.
pub const LAZY_FILE: &str = "lazy.json";

/// The files a lazy pull left sparse, as the manifest names them (paths relative to the
/// sandbox's directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LazyFiles {
    /// The sandbox's name in the bucket.
    pub sandbox: String,
    /// The files.
    pub files: Vec<FileEntry>,
}

impl LazyFiles {
    /// `dir`'s lazy files, if it has any.
    pub fn load(dir: &Path) -> Result<Option<LazyFiles>> {
        let path = dir.join(LAZY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", &path)(e)),
        };
        let lazy: LazyFiles = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            what: path.display().to_string(),
            detail: e.to_string(),
        })?;
        for f in &lazy.files {
            f.path_under(dir)?;
        }
        Ok(Some(lazy))
    }

    /// Write it into `dir` (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        crate::local::write_atomic(&dir.join(LAZY_FILE), &json)
    }

    /// Bytes of data in the lazy files.
    pub fn data_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.content.data_bytes()).sum()
    }
}

/// Bytes fetched, by why.
#[derive(Debug, Default, Serialize)]
pub struct FetchStats {
    /// Bytes fetched from the bucket for memory faults.
    pub fault_bytes_fetched: AtomicU64,
    /// Bytes fetched from the bucket for disk reads.
    pub disk_bytes_fetched: AtomicU64,
    /// Bytes fetched from the bucket by the background completion.
    pub background_bytes_fetched: AtomicU64,
    /// Chunks taken from the local chunk cache.
    pub chunks_from_cache: AtomicU64,
    /// Chunks found in the files at the start, as an earlier run recorded them
    /// ([`crate::presence`]): neither fetched nor read from the cache again.
    pub chunks_recorded_present: AtomicU64,
}

/// Why a chunk is wanted (which counter it goes to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A memory fault.
    Fault,
    /// A disk read.
    DiskRead,
    /// The background completion.
    Background,
}

struct LazyFile {
    path: PathBuf,
    file: File,
    /// `(st_dev, st_ino)`.
    id: (u64, u64),
    entry: FileEntry,
    /// The manifest's chunks by offset.
    chunks: HashMap<u64, ChunkRef>,
    /// Chunk offsets written into the file.
    present: Mutex<HashSet<u64>>,
}

/// Every lazy file of a sandbox, filled on demand from the chunk cache or the bucket.
///
/// What is present is remembered across starts in `lazy.present` ([`crate::presence`]):
/// chunks written are recorded by [`LazySet::flush_presence`] once their files are synced.
/// Several sets over one directory (the page server, a `cairn fork` filling the files) may
/// fill it at once: they write the same bytes. Once one of them ends the lazy state
/// ([`LazySet::finish`]), the others write nothing more.
pub struct LazySet<'a> {
    sandbox: String,
    dir: PathBuf,
    remote: &'a Remote,
    local: &'a LocalStore,
    files: Vec<LazyFile>,
    /// Set once `lazy.json` is gone: every chunk is in, and the files are no longer ours.
    finished: AtomicBool,
    /// Chunks written but not yet recorded: (file, offset).
    unrecorded: Mutex<Vec<(usize, u64)>>,
    /// What was fetched.
    pub stats: FetchStats,
}

impl<'a> LazySet<'a> {
    /// The files `lazy` lists under `dir`, filled from `local`'s cache or `remote`.
    pub fn open(
        dir: &Path,
        lazy: &LazyFiles,
        remote: &'a Remote,
        local: &'a LocalStore,
    ) -> Result<LazySet<'a>> {
        let mut files = Vec::with_capacity(lazy.files.len());
        for entry in &lazy.files {
            let path = entry.path_under(dir)?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(StoreError::io("open", &path))?;
            let m = file.metadata().map_err(StoreError::io("stat", &path))?;
            let chunks = entry
                .content
                .chunks
                .iter()
                .map(|c| (c.offset, c.clone()))
                .collect();
            files.push(LazyFile {
                path,
                file,
                id: (m.dev(), m.ino()),
                entry: entry.clone(),
                chunks,
                present: Mutex::new(HashSet::new()),
            });
        }
        // What earlier runs recorded, where it still holds: the same file (device and inode),
        // the chunk the list has at that offset.
        for p in presence::load(dir)? {
            let Some(f) = files
                .iter_mut()
                .find(|f| f.entry.path == p.rel && f.id == p.file_id)
            else {
                continue;
            };
            if f.chunks.get(&p.offset).is_some_and(|c| c.id == p.id) {
                f.present
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(p.offset);
            }
        }
        let recorded: usize = files
            .iter_mut()
            .map(|f| f.present.get_mut().unwrap_or_else(|e| e.into_inner()).len())
            .sum();
        let stats = FetchStats::default();
        stats
            .chunks_recorded_present
            .store(recorded as u64, Ordering::Relaxed);
        Ok(LazySet {
            sandbox: lazy.sandbox.clone(),
            dir: dir.to_path_buf(),
            remote,
            local,
            files,
            finished: AtomicBool::new(false),
            unrecorded: Mutex::new(Vec::new()),
            stats,
        })
    }

    /// Chunks already in the lazy files (recorded by earlier runs, or written by this one).
    pub fn chunks_present(&self) -> usize {
        self.files
            .iter()
            .map(|f| f.present.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Chunks of the lazy files not in them yet (as far as this set knows).
    pub fn chunks_missing(&self) -> usize {
        self.files.iter().map(|f| f.chunks.len()).sum::<usize>() - self.chunks_present()
    }

    /// Whether the lazy state has ended (here or in another process).
    fn still_lazy(&self) -> bool {
        if self.finished.load(Ordering::Relaxed) {
            return false;
        }
        if self.dir.join(LAZY_FILE).exists() {
            return true;
        }
        self.finished.store(true, Ordering::Relaxed);
        false
    }

    /// Record the chunks written since the last call as present (`lazy.present`), after
    /// syncing their files: a crash never leaves a chunk recorded that is not on disk.
    pub fn flush_presence(&self) -> Result<()> {
        let batch = std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() || !self.still_lazy() {
            return Ok(());
        }
        let mut synced = HashSet::new();
        let mut records = Vec::with_capacity(batch.len());
        for (i, offset) in batch {
            let f = &self.files[i];
            if synced.insert(i) {
                f.file
                    .sync_data()
                    .map_err(StoreError::io("fsync", &f.path))?;
            }
            let Some(c) = f.chunks.get(&offset) else {
                continue;
            };
            records.push(Present {
                rel: f.entry.path.clone(),
                offset,
                id: c.id.clone(),
                file_id: f.id,
            });
        }
        presence::append(&self.dir, &records)
    }

    /// End the lazy state: every chunk is in ([`LazySet::complete`] returned). Removes
    /// `lazy.json` (and the record) under the exclusive lock, so no set writes into the files
    /// after this returns.
    pub fn finish(&self) -> Result<()> {
        presence::finish(&self.dir)?;
        self.finished.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The sandbox's name in the bucket.
    pub fn sandbox(&self) -> &str {
        &self.sandbox
    }

    /// The lazy file at `path`, if it is one.
    pub fn find(&self, path: &Path) -> Option<usize> {
        self.files.iter().position(|f| f.path == path)
    }

    /// The lazy file with this `(st_dev, st_ino)`, if it is one.
    pub fn find_id(&self, dev: u64, ino: u64) -> Option<usize> {
        self.files.iter().position(|f| f.id == (dev, ino))
    }

    /// Every lazy file: its path, `(st_dev, st_ino)` and length.
    pub fn files(&self) -> impl Iterator<Item = (&Path, (u64, u64), u64)> {
        self.files
            .iter()
            .map(|f| (f.path.as_path(), f.id, f.entry.content.size))
    }

    /// Bytes of data in the lazy files whose paths `pick` chooses.
    pub fn data_bytes(&self, pick: impl Fn(&Path) -> bool) -> u64 {
        self.files
            .iter()
            .filter(|f| pick(&f.path))
            .map(|f| f.entry.content.data_bytes())
            .sum()
    }

    /// Make sure file `i`'s chunk at `chunk_offset` is in the file.
    fn ensure_chunk(&self, i: usize, chunk_offset: u64, why: Why) -> Result<()> {
        let f = &self.files[i];
        let Some(c) = f.chunks.get(&chunk_offset) else {
            // Not in the manifest: zeros, which the sparse file reads as.
            return Ok(());
        };
        if self.is_present(i, chunk_offset) || !self.still_lazy() {
            return Ok(());
        }
        let (bytes, fetched) = self
            .remote
            .fetch_chunk(self.local, &self.sandbox, &f.entry, c)?;
        let counter = match (fetched, why) {
            (false, _) => &self.stats.chunks_from_cache,
            (true, Why::Fault) => &self.stats.fault_bytes_fetched,
            (true, Why::DiskRead) => &self.stats.disk_bytes_fetched,
            (true, Why::Background) => &self.stats.background_bytes_fetched,
        };
        counter.fetch_add(if fetched { c.len } else { 1 }, Ordering::Relaxed);
        {
            // Written only while the files are still lazy: once another set ended that, they
            // are whole and may be changing (a merge).
            let _lock = LazyLock::take(&self.dir, false)?;
            if !self.still_lazy() {
                return Ok(());
            }
            f.file
                .write_all_at(&bytes, c.offset)
                .map_err(StoreError::io("write", &f.path))?;
        }
        f.present
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(chunk_offset);
        self.unrecorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((i, chunk_offset));
        Ok(())
    }

    fn is_present(&self, i: usize, chunk_offset: u64) -> bool {
        self.files[i]
            .present
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&chunk_offset)
    }

    /// Make `len` bytes of file `i` at `offset` present (every chunk they touch).
    pub fn ensure(&self, i: usize, offset: u64, len: u64, why: Why) -> Result<()> {
        let end = offset
            .saturating_add(len)
            .min(self.files[i].entry.content.size);
        let mut c = offset / CHUNK_SIZE * CHUNK_SIZE;
        while c < end {
            self.ensure_chunk(i, c, why)?;
            c += CHUNK_SIZE;
        }
        Ok(())
    }

    /// Fetch every chunk of every lazy file not in yet, then sync the files (and record them
    /// present, file by file: a completion cut short keeps what it fetched).
    pub fn complete(&self) -> Result<()> {
        for (i, f) in self.files.iter().enumerate() {
            let mut offsets: Vec<u64> = f.chunks.keys().copied().collect();
            offsets.sort_unstable();
            for off in offsets {
                self.ensure_chunk(i, off, Why::Background)?;
            }
            f.file
                .sync_all()
                .map_err(StoreError::io("fsync", &f.path))?;
            self.flush_presence()?;
        }
        Ok(())
    }
}

struct Layer {
    path: PathBuf,
    file: File,
    /// Its place in the [`LazySet`] while it is lazy.
    lazy: Option<usize>,
}

/// The memory of a chain of layers (base first), some of them lazy.
pub struct ChainSource<'s, 'a> {
    set: &'s LazySet<'a>,
    layers: Vec<Layer>,
    /// The ranges each later layer supplies over the base (newest wins).
    over_base: Vec<cairn_snapshot::memory::MappedRange>,
}

impl<'s, 'a> ChainSource<'s, 'a> {
    /// The memory chain `layers` (paths, base first); those in `set` are filled from it.
    pub fn open(set: &'s LazySet<'a>, layers: &[PathBuf]) -> Result<ChainSource<'s, 'a>> {
        let mut out = Vec::with_capacity(layers.len());
        let mut total = 0;
        let mut chain_indexes = Vec::new();
        for path in layers {
            let file = File::open(path).map_err(StoreError::io("open", path))?;
            let index =
                cairn_snapshot::memory::open_layer(path).map_err(|e| StoreError::Corrupt {
                    what: path.display().to_string(),
                    detail: e.to_string(),
                })?;
            total = total.max(index.mem_size);
            chain_indexes.push((path.clone(), index));
            out.push(Layer {
                path: path.clone(),
                file,
                lazy: set.find(path),
            });
        }
        let mut chain = cairn_snapshot::memory::LayerChain::new(total);
        for (path, index) in chain_indexes {
            chain.push(&path, index).map_err(|e| StoreError::Corrupt {
                what: path.display().to_string(),
                detail: e.to_string(),
            })?;
        }
        let over_base = chain
            .resolve()
            .into_iter()
            .filter(|r| r.layer > 0)
            .collect();
        Ok(ChainSource {
            set,
            layers: out,
            over_base,
        })
    }

    /// Whether any layer of the chain is lazy.
    pub fn is_lazy(&self) -> bool {
        self.layers.iter().any(|l| l.lazy.is_some())
    }

    /// Read `len` bytes of layer `i` at `offset` into `buf`, fetching what is missing.
    fn read(&self, i: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        let layer = &self.layers[i];
        if let Some(k) = layer.lazy {
            self.set.ensure(k, offset, buf.len() as u64, Why::Fault)?;
        }
        let mut done = 0;
        while done < buf.len() {
            let n = layer
                .file
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(StoreError::io("read", &layer.path))?;
            if n == 0 {
                // Past the end of the file: zeros (the buffer came zeroed).
                break;
            }
            done += n;
        }
        Ok(())
    }
}

impl PageSource for ChainSource<'_, '_> {
    fn fill(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), String> {
        let end = offset + buf.len() as u64;
        // The base in full, then what later layers supply over it: as restore maps them.
        self.read(0, offset, buf).map_err(|e| e.to_string())?;
        for r in &self.over_base {
            let (from, to) = (
                r.guest_offset.max(offset),
                (r.guest_offset + r.len).min(end),
            );
            if from >= to {
                continue;
            }
            let at = (from - offset) as usize;
            let part = &mut buf[at..at + (to - from) as usize];
            part.fill(0);
            let file_offset = r.file_offset + (from - r.guest_offset);
            self.read(r.layer, file_offset, part)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
