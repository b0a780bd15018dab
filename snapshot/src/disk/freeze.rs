//! [`LayeredDisk::freeze`]: the disk half of a checkpoint taken while the guest is paused, and
//! [`LayeredDisk::thaw`], its undo for a checkpoint that failed before its commit.
//!
//! [`LayeredDisk::checkpoint`] makes the frozen layer and the fresh active delta durable before
//! it returns: on ext4 that is ten or so fsyncs (the active delta's data, its index written
//! atomically, the two directories, the fresh delta and its index), each a journal commit, all
//! while the guest waits. `freeze` does only what must happen at the pause, with no fsync: it
//! takes the active delta's index (in memory), moves the index file aside, renames the data file to
//! the layer's path and creates an empty data file in its place, which the guest's writes go to
//! from then on. [`FrozenLayer::into_written`], after the guest has resumed, writes the layer's
//! index and the new delta's empty index and returns the four files for the checkpoint's one
//! commit ([`crate::checkpoint::CheckpointStore::commit_with`]), which syncs them with the rest
//! of the checkpoint before `meta.json` is renamed in.
//!
//! # What a crash leaves
//!
//! The steps run in this order: move the old active index aside (into the layer's directory, to
//! be removed after the resume), rename the active data to the
//! layer, create the new active data file; later, write the layer's index and the new active
//! index. A journaling file system commits them in that order, so after a crash the active
//! delta's path holds either the old delta without its index, nothing, or the new empty delta
//! with or without its index: each opens as a fresh, empty active delta
//! ([`LayeredDisk::open`]), never as a data file read through an index of another. The layer belongs to a checkpoint without `meta.json` until the commit, so
//! nothing reads it; the writes the active delta held since the last checkpoint survive a crash
//! only through the commit (as with [`LayeredDisk::checkpoint`], whose renamed layer is equally
//! unreferenced until then).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::durable::WrittenFile;
use crate::error::{Error, Result};
use crate::file::FileKind;

use super::{empty_index_bytes, Active, DiskLayerStats, FileId, Frozen, LayeredDisk};
use crate::disk::index::index_path;

/// A layer [`LayeredDisk::freeze`] made, with the files a commit must sync.
#[derive(Debug)]
pub struct FrozenLayer {
    /// The layer's size.
    pub stats: DiskLayerStats,
    /// Still to write (none where the layer was copied and is durable already).
    rest: Option<Unwritten>,
}

#[derive(Debug)]
struct Unwritten {
    layer: WrittenFile,
    layer_index: (PathBuf, Vec<u8>),
    active: WrittenFile,
    active_index: (PathBuf, Vec<u8>),
    /// The old active index, moved aside at the pause, to remove.
    replaced_index: PathBuf,
}

impl FrozenLayer {
    /// Write the layer's index and the new active delta's (empty) index, and return the files
    /// to sync before the checkpoint that holds the layer counts: the layer's data and index,
    /// then the new active delta's data and index. Empty where the layer had to be copied
    /// (another file system) and is durable already.
    pub fn into_written(self) -> Result<Vec<WrittenFile>> {
        let Some(rest) = self.rest else {
            return Ok(Vec::new());
        };
        match std::fs::remove_file(&rest.replaced_index) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    "remove old active index",
                    &rest.replaced_index,
                    e,
                ))
            }
        }
        let layer_index = WrittenFile::write_new(&rest.layer_index.0, &rest.layer_index.1)?;
        let active_index = WrittenFile::write_new(&rest.active_index.0, &rest.active_index.1)?;
        Ok(vec![rest.layer, layer_index, rest.active, active_index])
    }
}

impl LayeredDisk {
    /// Freeze the active delta as the immutable layer `dest` (plus `<dest>.index`) and start an
    /// empty active delta, without syncing anything (see the module comment). `dest` must not
    /// exist. Costs O(dirty blocks) for the index and a few metadata operations; on another
    /// file system than the active delta's the layer is copied and made durable as
    /// [`LayeredDisk::checkpoint`] does.
    pub fn freeze(&mut self, dest: &Path) -> Result<FrozenLayer> {
        let index = self.active_index();
        let stats = DiskLayerStats {
            blocks: index.entries.len() as u64,
            bytes: index.data_blocks() * u64::from(self.block_size),
            file_bytes: index.data_len,
        };
        let active_path = self.active.path.clone();
        let active_index = index_path(&active_path);
        let dest_index = index_path(dest);
        let same_fs = match (dest.parent(), active_path.parent()) {
            (Some(d), Some(a)) => dev_of(d)? == dev_of(a)?,
            _ => false,
        };
        if !same_fs {
            let stats = self.checkpoint(dest)?;
            return Ok(FrozenLayer { stats, rest: None });
        }
        if dest.exists() || dest_index.exists() {
            return Err(Error::io(
                "freeze active delta",
                dest,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let layer_index = crate::file::encode(FileKind::DiskIndex, &index.encode());
        let frozen_file = self
            .active
            .file
            .try_clone()
            .map_err(|e| Error::io("duplicate active delta", &active_path, e))?;
        let meta = frozen_file
            .metadata()
            .map_err(|e| Error::io("stat active delta", &active_path, e))?;
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        // Out of the active path by a rename into the layer's (uncommitted) directory: an
        // unlink, which frees the file's blocks, took 0.3 ms on ext4 here; into_written removes
        // it after the resume.
        let replaced_index = PathBuf::from(format!("{}.replaced-index", dest.display()));
        match std::fs::rename(&active_index, &replaced_index) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("move active index", &active_index, e)),
        }
        std::fs::rename(&active_path, dest)
            .map_err(|e| Error::io("rename active delta to layer", dest, e))?;
        let layer_data = self
            .active
            .file
            .try_clone()
            .map_err(|e| Error::io("duplicate disk layer", dest, e))?;
        let new_data = WrittenFile::write_new(&active_path, &[])?;
        let active_index = (
            active_index,
            empty_index_bytes(self.block_size, self.base_len),
        );
        let file = new_data
            .file()
            .try_clone()
            .map_err(|e| Error::io("duplicate active delta", &active_path, e))?;
        self.active = Active::empty(active_path, file);
        self.layers.push(Frozen {
            path: dest.to_path_buf(),
            file: frozen_file,
            id,
            index,
        });
        Ok(FrozenLayer {
            stats,
            rest: Some(Unwritten {
                layer: WrittenFile::from_parts(layer_data, dest.to_path_buf()),
                layer_index: (dest_index, layer_index),
                active: new_data,
                active_index,
                replaced_index,
            }),
        })
    }
}

impl LayeredDisk {
    /// Undo [`LayeredDisk::freeze`] for a checkpoint that failed before its commit: when the
    /// newest frozen layer is `dest` and the active delta has taken no write since, the layer's
    /// data file is renamed back to the active path and its index written there (durably), so
    /// its blocks stay the running disk's when the caller removes the checkpoint's directory.
    /// Returns whether it did; `false` leaves everything as it was. A crash between the rename
    /// and the index leaves the data beside the fresh, empty index, which opens as an empty
    /// delta (as after a crash during the freeze).
    pub fn thaw(&mut self, dest: &Path) -> Result<bool> {
        let newest = self.layers.last().map(|l| l.path.as_path());
        if newest != Some(dest) || !self.active.map.is_empty() || self.active.data_len != 0 {
            return Ok(false);
        }
        let Some(frozen) = self.layers.pop() else {
            return Ok(false);
        };
        let active_path = self.active.path.clone();
        if let Err(e) = std::fs::rename(dest, &active_path) {
            self.layers.push(frozen);
            return Err(Error::io(
                "rename disk layer back to the active delta",
                dest,
                e,
            ));
        }
        frozen.index.save(&index_path(&active_path))?;
        self.active = Self::open_active(active_path, self.block_size, self.base_len)?;
        Ok(true)
    }
}

/// The device of directory `dir` (an empty path is the current directory).
fn dev_of(dir: &Path) -> Result<u64> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::metadata(dir)
        .map(|m| m.dev())
        .map_err(|e| Error::io("stat directory", dir, e))
}
