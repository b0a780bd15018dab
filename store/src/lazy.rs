//! A lazily pulled sandbox's memory: layer files made sparse by the pull, filled chunk by chunk
//! on demand ([`ChainSource`], a [`PageSource`]) and completed in the background.
//!
//! A lazy pull leaves `lazy.json` ([`LazyFiles`]) in the sandbox's directory: the manifest's
//! entries of the files it did not fill. Every chunk put into such a file comes from the chunk
//! cache or the bucket and is checked against its name first; once every chunk of every lazy
//! file is in, the file is removed and the sandbox restores from its files as any other.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkRef, CHUNK_SIZE};
use crate::error::{Result, StoreError};
use crate::local::LocalStore;
use crate::manifest::FileEntry;
use crate::page_server::PageSource;
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

/// Bytes a source fetched, by why.
#[derive(Debug, Default, Serialize)]
pub struct FetchStats {
    /// Bytes fetched from the bucket for faults.
    pub fault_bytes_fetched: AtomicU64,
    /// Bytes fetched from the bucket by the background completion.
    pub background_bytes_fetched: AtomicU64,
    /// Chunks taken from the local chunk cache.
    pub chunks_from_cache: AtomicU64,
}

struct Layer {
    path: PathBuf,
    file: File,
    /// The manifest's entry while the file is lazy; its chunks by offset.
    entry: Option<(FileEntry, HashMap<u64, ChunkRef>)>,
}

/// The memory of a chain of layers (base first), some of them lazy.
pub struct ChainSource<'a> {
    sandbox: String,
    remote: &'a Remote,
    local: &'a LocalStore,
    layers: Vec<Layer>,
    /// The ranges each later layer supplies over the base (newest wins).
    over_base: Vec<cairn_snapshot::memory::MappedRange>,
    /// `(layer, chunk offset)` written into the layer files.
    present: Mutex<HashSet<(usize, u64)>>,
    /// What was fetched.
    pub stats: FetchStats,
}

impl<'a> ChainSource<'a> {
    /// The memory chain `layers` (paths, base first) of sandbox `lazy.sandbox` in `dir`; the
    /// files `lazy` lists are filled from `local`'s cache or `remote`.
    pub fn open(
        dir: &Path,
        layers: &[PathBuf],
        lazy: &LazyFiles,
        remote: &'a Remote,
        local: &'a LocalStore,
    ) -> Result<ChainSource<'a>> {
        let mut by_path = HashMap::new();
        for f in &lazy.files {
            by_path.insert(f.path_under(dir)?, f.clone());
        }
        let mut out = Vec::with_capacity(layers.len());
        let mut total = 0;
        let mut chain_indexes = Vec::new();
        for path in layers {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(StoreError::io("open", path))?;
            let index =
                cairn_snapshot::memory::open_layer(path).map_err(|e| StoreError::Corrupt {
                    what: path.display().to_string(),
                    detail: e.to_string(),
                })?;
            total = total.max(index.mem_size);
            chain_indexes.push((path.clone(), index));
            let entry = by_path.get(path).map(|e| {
                let chunks = e
                    .content
                    .chunks
                    .iter()
                    .map(|c| (c.offset, c.clone()))
                    .collect();
                (e.clone(), chunks)
            });
            out.push(Layer {
                path: path.clone(),
                file,
                entry,
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
            sandbox: lazy.sandbox.clone(),
            remote,
            local,
            layers: out,
            over_base,
            present: Mutex::new(HashSet::new()),
            stats: FetchStats::default(),
        })
    }

    /// Make sure layer `i`'s chunk at `chunk_offset` is in its file.
    fn ensure(&self, i: usize, chunk_offset: u64, for_fault: bool) -> Result<()> {
        let Some((entry, chunks)) = &self.layers[i].entry else {
            return Ok(());
        };
        let Some(c) = chunks.get(&chunk_offset) else {
            // Not in the manifest: zeros, which the sparse file reads as.
            return Ok(());
        };
        if self.is_present(i, chunk_offset) {
            return Ok(());
        }
        let (bytes, fetched) = self
            .remote
            .fetch_chunk(self.local, &self.sandbox, entry, c)?;
        let counter = match (fetched, for_fault) {
            (false, _) => &self.stats.chunks_from_cache,
            (true, true) => &self.stats.fault_bytes_fetched,
            (true, false) => &self.stats.background_bytes_fetched,
        };
        counter.fetch_add(if fetched { c.len } else { 1 }, Ordering::Relaxed);
        let layer = &self.layers[i];
        layer
            .file
            .write_all_at(&bytes, c.offset)
            .map_err(StoreError::io("write", &layer.path))?;
        self.present
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((i, chunk_offset));
        Ok(())
    }

    fn is_present(&self, i: usize, chunk_offset: u64) -> bool {
        self.present
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(i, chunk_offset))
    }

    /// Read `len` bytes of layer `i` at `offset` into `buf`, fetching what is missing.
    fn read(&self, i: usize, offset: u64, buf: &mut [u8], for_fault: bool) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut c = offset / CHUNK_SIZE * CHUNK_SIZE;
        while c < end {
            self.ensure(i, c, for_fault)?;
            c += CHUNK_SIZE;
        }
        let layer = &self.layers[i];
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

    /// Fetch every chunk of every lazy layer not in yet, then sync the files.
    pub fn complete(&self) -> Result<()> {
        for (i, layer) in self.layers.iter().enumerate() {
            let Some((_, chunks)) = &layer.entry else {
                continue;
            };
            let mut offsets: Vec<u64> = chunks.keys().copied().collect();
            offsets.sort_unstable();
            for off in offsets {
                self.ensure(i, off, false)?;
            }
            layer
                .file
                .sync_all()
                .map_err(StoreError::io("fsync", &layer.path))?;
        }
        Ok(())
    }
}

impl PageSource for ChainSource<'_> {
    fn fill(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), String> {
        let end = offset + buf.len() as u64;
        // The base in full, then what later layers supply over it: as restore maps them.
        self.read(0, offset, buf, true).map_err(|e| e.to_string())?;
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
            self.read(r.layer, file_offset, part, true)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
