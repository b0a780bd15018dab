//! Forking: a new store that starts from one checkpoint of another, sharing its files.
//!
//! Committed checkpoint files never change in place, with one exception: deleting a checkpoint
//! folds its layers into its children's layer files (see [`CheckpointStore::delete`]). So a fork
//! is the chain of the checkpoint (it and its ancestors) *hard-linked* into the new store, plus a
//! fresh `meta.json` each, and a delete first gives a child whose files are shared (link count
//! above one) a private copy before merging into it. Either store can then delete, restore or
//! grow its chain without the other noticing. Across filesystems the files are copied (sparse).
//!
//! A store can also record, per drive, the base image its disk layers apply over
//! ([`CheckpointStore::set_drive_base`]): a forked sandbox keeps its own link to the base, so
//! removing the original does not take the base away.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::file::{sync_parent_dir, temp_path, write_bytes_atomic};
use crate::memory::index_path;

use super::store::{validate_name, CheckpointStore, STATE_FILE};

/// The file (in the store's root) naming each drive's base image, when it is not the one the
/// checkpoints' saved config names. Starts with `.`, so it can never be a checkpoint's name.
pub const BASES_FILE: &str = ".bases.json";

/// Largest `.bases.json` read back.
const MAX_BASES_LEN: u64 = 1 << 20;

const CHUNK: usize = 1 << 20;

/// What [`CheckpointStore::fork_chain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForkReport {
    /// The checkpoints now in the new store, base first.
    pub checkpoints: Vec<String>,
    /// Files shared by a hard link (no data written).
    pub files_linked: u64,
    /// Files copied (another filesystem, or links refused).
    pub files_copied: u64,
    /// Bytes allocated by the shared files (not used again by the fork).
    pub bytes_linked: u64,
    /// Bytes allocated by the copies.
    pub bytes_copied: u64,
}

/// How [`share_file`] made the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// A hard link: `n` bytes allocated, now shared.
    Linked(u64),
    /// A sparse copy: `n` bytes allocated by the copy.
    Copied(u64),
}

/// Make `dst` (which must not exist) hold the same data as `src`: a hard link when the
/// filesystem allows, else a sparse copy written under a temporary name and renamed.
pub fn share_file(src: &Path, dst: &Path) -> Result<Shared> {
    let meta = std::fs::metadata(src).map_err(|e| Error::io("stat", src, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidMeta(format!(
            "{} is not a regular file",
            src.display()
        )));
    }
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(Shared::Linked(meta.blocks() * 512));
    }
    let tmp = temp_path(dst);
    let result = copy_sparse(src, &tmp).and_then(|()| {
        std::fs::rename(&tmp, dst).map_err(|e| Error::io("rename into place", dst, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    let blocks = std::fs::metadata(dst)
        .map_err(|e| Error::io("stat", dst, e))?
        .blocks();
    Ok(Shared::Copied(blocks * 512))
}

/// Copy `src` to a new file `dst`, leaving holes where `src` reads zeros, and fsync it.
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<()> {
    let input = File::open(src).map_err(|e| Error::io("open", src, e))?;
    let len = input
        .metadata()
        .map_err(|e| Error::io("stat", src, e))?
        .len();
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| Error::io("create", dst, e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        input
            .read_exact_at(&mut buf[..n], off)
            .map_err(|e| Error::io("read", src, e))?;
        if buf[..n].iter().any(|&b| b != 0) {
            out.write_all_at(&buf[..n], off)
                .map_err(|e| Error::io("write", dst, e))?;
        }
        off += n as u64;
    }
    out.set_len(len)
        .map_err(|e| Error::io("set length", dst, e))?;
    out.sync_all().map_err(|e| Error::io("fsync", dst, e))
}

/// If `path` has other hard links (it is shared with a fork), replace it by a private copy
/// (atomically), so writing into it cannot change the other store's file. Returns whether a
/// copy was made.
pub fn make_private(path: &Path) -> Result<bool> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    if meta.nlink() <= 1 {
        return Ok(false);
    }
    let tmp = temp_path(path);
    let result = copy_sparse(path, &tmp).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_parent_dir(path)?;
    Ok(true)
}

impl CheckpointStore {
    /// Put checkpoint `name` and its ancestors into `dest` (normally a new, empty store), with
    /// the same names and parent links: every data file hard-linked (copied across
    /// filesystems), a fresh `meta.json` committed for each, base first. `dest` can then
    /// restore `name` while neither store's later deletes or checkpoints affect the other.
    /// On error `dest` may hold part of the chain (complete checkpoints only).
    pub fn fork_chain(&self, name: &str, dest: &CheckpointStore) -> Result<ForkReport> {
        if dest.root() == self.root() {
            return Err(Error::InvalidMeta(format!(
                "cannot fork {name:?} into its own store {}",
                self.root().display()
            )));
        }
        let mut report = ForkReport::default();
        for meta in self.chain_to(name)? {
            let from = self.dir_of(&meta.name)?;
            let to = dest.create_dir_for(&meta.name)?;
            let mut files = vec![STATE_FILE.to_string(), meta.memory.layer_file.clone()];
            files.extend(meta.disks.iter().map(|d| d.layer_file.clone()));
            for f in files {
                let layer_like = f != STATE_FILE;
                self.share_into(&from.join(&f), &to.join(&f), &mut report)?;
                if layer_like {
                    let (fi, ti) = (index_path(&from.join(&f)), index_path(&to.join(&f)));
                    self.share_into(&fi, &ti, &mut report)?;
                }
            }
            sync_parent_dir(&to.join(STATE_FILE))?;
            dest.commit(&meta)?;
            report.checkpoints.push(meta.name.clone());
        }
        Ok(report)
    }

    fn share_into(&self, src: &Path, dst: &Path, report: &mut ForkReport) -> Result<()> {
        match share_file(src, dst)? {
            Shared::Linked(b) => {
                report.files_linked += 1;
                report.bytes_linked += b;
            }
            Shared::Copied(b) => {
                report.files_copied += 1;
                report.bytes_copied += b;
            }
        }
        Ok(())
    }

    /// Record that drive `drive_id`'s layers in this store apply over the base image `path`
    /// (instead of the path a checkpoint's saved config names).
    pub fn set_drive_base(&self, drive_id: &str, path: &Path) -> Result<()> {
        validate_name(drive_id)?;
        let mut bases = self.drive_bases()?;
        bases.insert(drive_id.to_string(), path.to_path_buf());
        let text = serde_json::to_vec_pretty(&bases)
            .map_err(|e| Error::InvalidMeta(format!("encode {BASES_FILE}: {e}")))?;
        write_bytes_atomic(&self.root().join(BASES_FILE), &text)
    }

    /// The base image recorded for `drive_id` by [`CheckpointStore::set_drive_base`], if any.
    pub fn drive_base(&self, drive_id: &str) -> Result<Option<PathBuf>> {
        Ok(self.drive_bases()?.remove(drive_id))
    }

    fn drive_bases(&self) -> Result<BTreeMap<String, PathBuf>> {
        let path = self.root().join(BASES_FILE);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(Error::io("open", &path, e)),
        };
        let len = f.metadata().map_err(|e| Error::io("stat", &path, e))?.len();
        if len > MAX_BASES_LEN {
            return Err(Error::PayloadTooLarge {
                len,
                max: MAX_BASES_LEN,
            }
            .in_file(path));
        }
        serde_json::from_reader(f)
            .map_err(|e| Error::InvalidMeta(format!("{BASES_FILE}: {e}")).in_file(path))
    }
}

#[cfg(test)]
#[path = "fork_tests.rs"]
mod tests;
