//! [`CheckpointStore`]: named checkpoints in one directory, with parent links, chains and safe deletes.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::disk::{merge_disk_layer_into_child, BlockIndex};
use crate::durable::{CommitSet, PendingFile, WrittenFile};
use crate::error::{Error, Result};
use crate::file::{sync_parent_dir, temp_path};
use crate::memory::{
    index_path, merge_into_child, open_layer, seal_layer, verify_layer, LayerChain,
};

use super::fork::make_private;
use super::meta::{CheckpointMeta, META_FORMAT_VERSION};

/// The state file's name in a checkpoint directory.
pub const STATE_FILE: &str = "state";
/// The memory layer's name in a checkpoint directory.
pub const MEM_LAYER_FILE: &str = "mem.layer";
/// The metadata file's name in a checkpoint directory; its presence marks the checkpoint complete.
pub const META_FILE: &str = "meta.json";

/// Where a running VM's active disk deltas and its `HEAD` live, under the store's root.
pub const ACTIVE_DIR: &str = ".active";
/// Names the checkpoint the active deltas sit on (empty: the bare base images), in [`ACTIVE_DIR`].
pub const HEAD_FILE: &str = "HEAD";

/// Prefix of the marker file a delete in progress keeps in the store's root.
const DELETING_PREFIX: &str = ".deleting-";

/// The disk layer's name for `drive_id`: `disk.<drive_id>.layer`.
pub fn disk_layer_file(drive_id: &str) -> String {
    format!("disk.{drive_id}.layer")
}

/// Check a checkpoint name (also used for drive ids and file names): 1 to 64 characters of
/// `[A-Za-z0-9._-]`, not starting with `.`, without `..`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// What [`CheckpointStore::delete`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteReport {
    /// Children whose layers absorbed the deleted checkpoint's (they now point at its parent).
    pub merged_into: Vec<String>,
    /// Memory pages copied into children.
    pub pages_copied: u64,
    /// Disk blocks copied into children.
    pub blocks_copied: u64,
}

/// A directory of checkpoints, one subdirectory per name.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    root: PathBuf,
    /// Metadata already read in this operation, by name ([`CheckpointStore::memoized`]).
    memo: Option<Arc<Mutex<HashMap<String, CheckpointMeta>>>>,
}

impl CheckpointStore {
    /// Open (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::io("create checkpoint store", &root, e))?;
        Ok(Self { root, memo: None })
    }

    /// This store, reading each checkpoint's `meta.json` at most once: for one operation that
    /// walks a chain several times (a restore checks the chain, then maps its memory layers, then
    /// opens its disk layers: with a 16-checkpoint chain that was 65 reads of `meta.json`). Use it
    /// for that operation only, then go back to [`CheckpointStore::unmemoized`]: it does not see
    /// later changes made by other processes (its own commits and deletes clear it).
    pub fn memoized(&self) -> Self {
        Self {
            root: self.root.clone(),
            memo: Some(Arc::default()),
        }
    }

    /// This store, reading `meta.json` afresh every time (the default).
    pub fn unmemoized(&self) -> Self {
        Self {
            root: self.root.clone(),
            memo: None,
        }
    }

    fn forget_memo(&self) {
        if let Some(memo) = &self.memo {
            memo.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of the running VM's active disk deltas and `HEAD`.
    pub fn active_dir(&self) -> PathBuf {
        self.root.join(ACTIVE_DIR)
    }

    /// The active disk delta of `drive_id`.
    pub fn active_delta(&self, drive_id: &str) -> PathBuf {
        self.active_dir().join(format!("{drive_id}.active"))
    }

    /// The head: the checkpoint the VM last took or restored, if `HEAD` names a complete one. This
    /// is the truth about where a VM without a VMM resumes; other records follow it.
    pub fn head(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.active_dir().join(HEAD_FILE)).ok()?;
        let h = text.trim();
        (!h.is_empty() && self.exists(h)).then(|| h.to_string())
    }

    /// Record `head` (None: the bare base images) atomically.
    pub fn set_head(&self, head: Option<&str>) -> Result<()> {
        crate::file::write_bytes_atomic(&self.head_path()?, head.unwrap_or_default().as_bytes())
    }

    /// Where `HEAD` is, its directory made if missing.
    fn head_path(&self) -> Result<PathBuf> {
        let dir = self.active_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create active dir", &dir, e))?;
        Ok(dir.join(HEAD_FILE))
    }

    /// Check that [`CheckpointStore::set_head`] can succeed (the active directory takes a new
    /// file, `HEAD` is not a directory), without changing the head: a restore checks this before
    /// it touches the running VM.
    pub fn check_head_writable(&self) -> Result<()> {
        let dir = self.active_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create active dir", &dir, e))?;
        let head = dir.join(HEAD_FILE);
        if let Ok(m) = std::fs::symlink_metadata(&head) {
            if !m.is_file() {
                return Err(Error::io(
                    "check head",
                    &head,
                    std::io::Error::other("not a regular file"),
                ));
            }
        }
        // A write is the check: no fsync, since a restore is waiting (a full disk or a
        // read-only directory fails the write itself; the head's own write fsyncs).
        let probe = dir.join(".write-probe");
        let r = std::fs::write(&probe, b"probe");
        let _ = std::fs::remove_file(&probe);
        r.map_err(|e| Error::io("write to the active directory", &dir, e))
    }

    /// The directory of checkpoint `name` (which need not exist).
    pub fn dir_of(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        Ok(self.root.join(name))
    }

    /// Whether a complete checkpoint `name` exists.
    pub fn exists(&self, name: &str) -> bool {
        self.dir_of(name).is_ok_and(|d| d.join(META_FILE).is_file())
    }

    /// Make the directory for a new checkpoint `name` and return it. The caller writes the state, layer
    /// and disk files into it, then calls [`CheckpointStore::commit`]. A leftover incomplete directory of
    /// that name (no `meta.json`) is cleared first. The new directory's entry is made durable by the
    /// commit (nothing reads a directory without `meta.json`).
    pub fn create_dir_for(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir_of(name)?;
        if dir.join(META_FILE).exists() {
            return Err(Error::CheckpointExists(name.to_string()));
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io("remove incomplete checkpoint", &dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| Error::io("create checkpoint directory", &dir, e))?;
        Ok(dir)
    }

    /// Complete a checkpoint: check its parent exists and its files are present and well-formed, seal
    /// them (chunk checksums into the memory layer's index, each small file's CRC into
    /// [`CheckpointMeta::files`]), then write `meta.json` atomically. This is the commit point. Returns
    /// the metadata as committed.
    pub fn commit(&self, meta: &CheckpointMeta) -> Result<CheckpointMeta> {
        self.commit_with(meta, Vec::new(), false, |_| Ok(()))
    }

    /// [`CheckpointStore::commit`] in one durable commit ([`crate::durable::CommitSet`]) with
    /// the files the caller wrote in place without syncing them (`written`: files of the new
    /// directory, and any others the checkpoint needs durable, such as the active disk deltas
    /// it started), and, when `make_head`, `HEAD` naming the new checkpoint (renamed in after
    /// `meta.json`, so a `HEAD` that names it means it is complete). Every file is synced
    /// before the first rename; `start_writeback` is called on each first. On an error nothing
    /// is renamed into place (or it is taken back) and `written` stays where it is.
    pub fn commit_with(
        &self,
        meta: &CheckpointMeta,
        written: Vec<WrittenFile>,
        make_head: bool,
        start_writeback: impl Fn(&std::fs::File) -> std::io::Result<()>,
    ) -> Result<CheckpointMeta> {
        self.forget_memo();
        meta.validate()?;
        let dir = self.dir_of(&meta.name)?;
        if dir.join(META_FILE).exists() {
            return Err(Error::CheckpointExists(meta.name.clone()));
        }
        if let Some(p) = &meta.parent {
            // The parent must exist (creation times are not compared: wall clocks can step back).
            self.get(p)?;
        }
        self.check_files(&dir, meta)?;
        let mut meta = meta.clone();
        self.seal(&dir, &mut meta)?;
        meta.validate()?;
        let mut set = CommitSet::new();
        for w in written {
            set.written(w);
        }
        set.pending(PendingFile::write_new(
            &dir.join(META_FILE),
            &meta.to_json()?,
        )?);
        if make_head {
            let head = self
                .head_path()
                .and_then(|p| PendingFile::write_new(&p, meta.name.as_bytes()));
            match head {
                Ok(head) => set.pending(head),
                Err(e) => {
                    set.discard();
                    return Err(e);
                }
            }
        }
        // The checkpoint's own entry in the root (create_dir_for does not sync it).
        set.dir(self.root.clone());
        set.commit_with(start_writeback)?;
        Ok(meta)
    }

    /// Checksum the memory layer's chunks into its index and record each small file's CRC in `meta`.
    fn seal(&self, dir: &Path, meta: &mut CheckpointMeta) -> Result<()> {
        seal_layer(&dir.join(&meta.memory.layer_file))?;
        meta.format_version = META_FORMAT_VERSION;
        meta.files = Self::small_files(meta)
            .into_iter()
            .map(|f| Ok((f.clone(), file_crc(&dir.join(&f))?)))
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// The files whose CRC binds them to a checkpoint: the state and every layer's index.
    fn small_files(meta: &CheckpointMeta) -> Vec<String> {
        let index = |f: &str| format!("{f}.index");
        let mut out = vec![STATE_FILE.to_string(), index(&meta.memory.layer_file)];
        out.extend(meta.disks.iter().map(|d| index(&d.layer_file)));
        out
    }

    /// Check that the index files of `meta` (and its state file when `state`) are the ones it was
    /// committed with (a version 1 checkpoint records none and passes).
    fn check_bound(&self, meta: &CheckpointMeta, state: bool) -> Result<()> {
        if meta.files.is_empty() {
            return Ok(());
        }
        let dir = self.dir_of(&meta.name)?;
        for f in Self::small_files(meta)
            .into_iter()
            .filter(|f| state || f != STATE_FILE)
        {
            let path = dir.join(&f);
            let want = meta.files.get(&f);
            if want != Some(&file_crc(&path)?) {
                return Err(Error::NotBound {
                    path,
                    checkpoint: meta.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Read every memory layer of `name`'s chain and check it against its chunk checksums. Slow (reads
    /// the layers): a VMM runs it in the background after a restore.
    pub fn verify_memory(&self, name: &str) -> Result<()> {
        for p in self.memory_layers(name)? {
            verify_layer(&p)?;
        }
        Ok(())
    }

    fn check_files(&self, dir: &Path, meta: &CheckpointMeta) -> Result<()> {
        let state = dir.join(STATE_FILE);
        if !state.is_file() {
            return Err(Error::InvalidMeta(format!(
                "{} is missing",
                state.display()
            )));
        }
        open_layer(&dir.join(&meta.memory.layer_file))?;
        for d in &meta.disks {
            let p = dir.join(&d.layer_file);
            BlockIndex::load(&index_path(&p))?;
            std::fs::metadata(&p).map_err(|e| Error::io("stat disk layer", &p, e))?;
        }
        Ok(())
    }

    /// The metadata of checkpoint `name`.
    pub fn get(&self, name: &str) -> Result<CheckpointMeta> {
        if let Some(memo) = &self.memo {
            if let Some(m) = memo.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
                return Ok(m.clone());
            }
        }
        let path = self.dir_of(name)?.join(META_FILE);
        if !path.exists() {
            return Err(Error::NoSuchCheckpoint(name.to_string()));
        }
        let m = CheckpointMeta::load(&path)?;
        if m.name != name {
            return Err(Error::InvalidMeta(format!(
                "directory {name:?} holds checkpoint {:?}",
                m.name
            ))
            .in_file(path));
        }
        if let Some(memo) = &self.memo {
            memo.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string(), m.clone());
        }
        Ok(m)
    }

    /// Every complete checkpoint, oldest first (by creation time, then name). Each carries its parent link.
    /// Incomplete directories are skipped; a `meta.json` that fails to load is an error.
    pub fn list(&self) -> Result<Vec<CheckpointMeta>> {
        let rd = std::fs::read_dir(&self.root)
            .map_err(|e| Error::io("list checkpoint store", &self.root, e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("list checkpoint store", &self.root, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_name(&name).is_err() || !entry.path().join(META_FILE).is_file() {
                continue;
            }
            out.push(self.get(&name)?);
        }
        out.sort_by(|a, b| (a.created_unix_ms, &a.name).cmp(&(b.created_unix_ms, &b.name)));
        Ok(out)
    }

    /// Checkpoints whose parent is `name`.
    pub fn children(&self, name: &str) -> Result<Vec<CheckpointMeta>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|m| m.parent.as_deref() == Some(name))
            .collect())
    }

    /// The chain to restore `name`: base first, `name` last, following parent links.
    pub fn chain_to(&self, name: &str) -> Result<Vec<CheckpointMeta>> {
        let mut chain = vec![self.get(name)?];
        let mut seen = HashSet::from([name.to_string()]);
        while let Some(p) = chain.last().and_then(|m| m.parent.clone()) {
            if !seen.insert(p.clone()) {
                return Err(Error::BrokenChain(p));
            }
            let m = self.get(&p).map_err(|e| match e {
                Error::NoSuchCheckpoint(_) => Error::BrokenChain(p.clone()),
                e => e,
            })?;
            chain.push(m);
        }
        chain.reverse();
        Ok(chain)
    }

    /// Check everything about restoring `name` that can be checked without a VM: the chain, its state
    /// file, every memory layer (index, size, geometry) and every disk layer (index, file). Returns
    /// the memory chain. A restore calls this before it touches the running VM.
    pub fn check_restorable(&self, name: &str) -> Result<LayerChain> {
        let chain = self.chain_to(name)?;
        let state = self.dir_of(name)?.join(STATE_FILE);
        let is_file = std::fs::metadata(&state)
            .map_err(|e| Error::io("stat state file", &state, e))?
            .is_file();
        if !is_file {
            return Err(Error::InvalidMeta(format!(
                "{} is not a file",
                state.display()
            )));
        }
        let memory = self.memory_chain(name)?;
        for m in &chain {
            // A restore reads only the last checkpoint's state; every layer's index.
            self.check_bound(m, m.name == name)?;
            let dir = self.dir_of(&m.name)?;
            for d in &m.disks {
                let p = dir.join(&d.layer_file);
                BlockIndex::load(&index_path(&p))?;
                std::fs::metadata(&p).map_err(|e| Error::io("stat disk layer", &p, e))?;
            }
        }
        Ok(memory)
    }

    /// The memory layer files to map for restoring `name`, base first.
    pub fn memory_layers(&self, name: &str) -> Result<Vec<PathBuf>> {
        self.chain_to(name)?
            .iter()
            .map(|m| Ok(self.dir_of(&m.name)?.join(&m.memory.layer_file)))
            .collect()
    }

    /// The memory [`LayerChain`] for restoring `name` (indexes loaded and checked); call
    /// [`LayerChain::resolve`] for the mapping plan.
    pub fn memory_chain(&self, name: &str) -> Result<LayerChain> {
        LayerChain::open(&self.memory_layers(name)?)
    }

    /// The disk layers of `drive_id` for restoring `name`, oldest first (pass them to
    /// [`crate::disk::LayeredDisk::open`] with the base image and a fresh active delta).
    pub fn disk_layers(&self, name: &str, drive_id: &str) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for m in self.chain_to(name)? {
            if let Some(d) = m.disks.iter().find(|d| d.drive_id == drive_id) {
                out.push(self.dir_of(&m.name)?.join(&d.layer_file));
            }
        }
        Ok(out)
    }

    /// Delete checkpoint `name`, keeping every other checkpoint restorable: its memory and disk layers are
    /// merged into each child (which then points at `name`'s parent; a child of a deleted base becomes a
    /// base), then its directory is removed. Every step is idempotent and each child's `meta.json` is
    /// rewritten only after its layers are complete, so a crash mid-way leaves all checkpoints restorable
    /// and the delete can be run again.
    ///
    /// A running VM whose active disk delta sits on top of `name` should checkpoint before `name` is
    /// deleted, or it loses the parent its next checkpoint would name.
    pub fn delete(&self, name: &str) -> Result<DeleteReport> {
        self.forget_memo();
        let report = self.delete_unmemoized(name);
        self.forget_memo();
        report
    }

    fn delete_unmemoized(&self, name: &str) -> Result<DeleteReport> {
        let meta = self.get(name)?;
        let dir = self.dir_of(name)?;
        // A child's files and its sealed checksums change one after the other: until the delete is
        // finished (see `finish_interrupted_deletes`), this marker says so.
        let marker = self.root.join(format!("{DELETING_PREFIX}{name}"));
        std::fs::write(&marker, b"").map_err(|e| Error::io("mark delete", &marker, e))?;
        sync_parent_dir(&marker)?;
        let mut report = DeleteReport::default();
        for mut child in self.children(name)? {
            let cdir = self.dir_of(&child.name)?;
            // A fork may share the child's files (hard links): write into a private copy.
            make_private(&cdir.join(&child.memory.layer_file))?;
            let st = merge_into_child(
                &dir.join(&meta.memory.layer_file),
                &cdir.join(&child.memory.layer_file),
            )?;
            report.pages_copied += st.pages_copied;
            let cix = open_layer(&cdir.join(&child.memory.layer_file))?;
            child.memory.dirty_mib = mib(cix.pages.byte_len());
            for d in &meta.disks {
                let Some(cd) = child.disks.iter_mut().find(|c| c.drive_id == d.drive_id) else {
                    continue;
                };
                let cpath = cdir.join(&cd.layer_file);
                make_private(&cpath)?;
                let st = merge_disk_layer_into_child(&dir.join(&d.layer_file), &cpath)?;
                report.blocks_copied += st.blocks_copied;
                let bix = BlockIndex::load(&index_path(&cpath))?;
                cd.delta_mib = mib(bix.data_blocks() * u64::from(bix.block_size));
            }
            child.parent = meta.parent.clone();
            self.seal(&cdir, &mut child)?;
            child.save(&cdir.join(META_FILE))?;
            report.merged_into.push(child.name.clone());
        }
        // Remove meta.json first (the checkpoint stops existing), then the rest.
        let meta_path = dir.join(META_FILE);
        std::fs::remove_file(&meta_path)
            .map_err(|e| Error::io("remove checkpoint metadata", &meta_path, e))?;
        sync_parent_dir(&meta_path)?;
        self.remove_dir(&dir)?;
        std::fs::remove_file(&marker).map_err(|e| Error::io("unmark delete", &marker, e))?;
        Ok(report)
    }

    /// Finish deletes a crash interrupted (a child may hold merged layers its `meta.json` does not
    /// vouch for yet). Call when no other process uses this store, as [`Self::cleanup_incomplete`].
    /// Returns the names deleted.
    pub fn finish_interrupted_deletes(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.root)
            .map_err(|e| Error::io("list checkpoint store", &self.root, e))?;
        let mut done = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("list checkpoint store", &self.root, e))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_prefix(DELETING_PREFIX) else {
                continue;
            };
            if self.exists(name) {
                self.delete(name)?;
                done.push(name.to_string());
            } else {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(|e| Error::io("unmark delete", &p, e))?;
            }
        }
        Ok(done)
    }

    fn remove_dir(&self, dir: &Path) -> Result<()> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let trash = temp_path(&self.root.join(format!(".deleted-{name}")));
        std::fs::rename(dir, &trash).map_err(|e| Error::io("move checkpoint to trash", dir, e))?;
        sync_parent_dir(dir)?;
        std::fs::remove_dir_all(&trash).map_err(|e| Error::io("remove checkpoint", &trash, e))
    }

    /// Remove incomplete checkpoint directories (no `meta.json`) and leftovers of interrupted deletes.
    /// Call only when no checkpoint is being written into this store. Returns the names removed.
    pub fn cleanup_incomplete(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.root)
            .map_err(|e| Error::io("list checkpoint store", &self.root, e))?;
        let mut removed = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("list checkpoint store", &self.root, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry
                .file_type()
                .map_err(|e| Error::io("stat", &path, e))?
                .is_dir();
            let incomplete = validate_name(&name).is_ok() && !path.join(META_FILE).exists();
            if is_dir && (name.starts_with(".deleted-") || incomplete) {
                std::fs::remove_dir_all(&path)
                    .map_err(|e| Error::io("remove incomplete checkpoint", &path, e))?;
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

/// CRC-64/GO-ISO of a (small) file's bytes. Not CRC-64/XZ: each of these files ends in its own
/// CRC-64/XZ, and the XZ CRC of any message followed by its CRC is one constant.
fn file_crc(path: &Path) -> Result<u64> {
    const GO_ISO: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    Ok(GO_ISO.checksum(&bytes))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
#[path = "store_tests.rs"]
pub(crate) mod tests;
