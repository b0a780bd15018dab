//! Making several new files durable together: the one mechanism for a set of files that only
//! means something whole (a snapshot's memory file, page index and state file; a fresh disk
//! delta and its index).
//!
//! Each file is first written under a temporary name beside its path ([`PendingFile`]). Then
//! [`commit`] (or [`commit_with`]):
//!
//! 1. starts writeback of every file (a hook, `sync_file_range` in the VMM; this crate has no
//!    `unsafe`), so the file system allocates all their blocks in the same running transaction;
//! 2. fsyncs each file (the first fsync commits that transaction; the others find their inodes
//!    committed and only wait for their data);
//! 3. renames the files into place in the order given, and fsyncs each directory they are in
//!    once (they may be in several: a Firecracker snapshot's state and memory paths are the
//!    client's).
//!
//! Made durable one by one (fsync, rename, fsync the directory), three files cost six fsyncs,
//! and on ext4 nearly each is a journal commit of its own.
//!
//! # What a crash or an error leaves
//!
//! The decision, for every caller: **the new set is complete or absent, and nothing else is
//! touched.**
//!
//! - The caller orders the files so that the one whose presence makes the set count comes last
//!   (the state file; a disk delta's index). A journaling file system commits renames in the
//!   order they were made, so after a crash that last file in place means every earlier one is.
//!   A crash before it leaves at most some earlier files of an incomplete set, which nothing
//!   reads as a checkpoint.
//! - On an error, no file is renamed unless every one was written and synced, every temporary
//!   file is removed, and the files already renamed are taken back (removed, and their
//!   directories synced, best effort). An error therefore reports a set that is not there, even
//!   when only the last directory fsync failed: a caller that retries or gives up never finds
//!   half of a set it was told failed.
//! - Earlier checkpoints stay restorable: their files are never written, renamed over or
//!   removed (each named checkpoint is a directory of its own; the disk delta is the running
//!   VM's). A path that already holds a file is replaced by the rename, so an older file at
//!   the same path is gone once its replacement is renamed, whether the commit then succeeds or
//!   not: a Firecracker snapshot written over an older one at the same paths replaces it, as in
//!   Firecracker, which truncates its files.
//!
//! One file replacing another on its own (an index rewritten, `meta.json`, `HEAD`) goes through
//! [`replace_with`], the same steps for one file. An error before its rename leaves the old
//! file; after the rename (only the directory fsync can fail there) the new file, complete and
//! synced, stays: taking it back would leave no file at all.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::file::{sync_parent_dir, temp_path};

/// A new file written under a temporary name beside its final path, which [`commit`] renames
/// it to.
#[derive(Debug)]
pub struct PendingFile {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
}

impl PendingFile {
    /// A new, empty temporary file beside `path`, open for reading and writing. `path` must be
    /// a regular file or absent, in a directory this process may write
    /// ([`crate::safe_path::check_output_target`]): nothing else is ever replaced.
    pub fn create(path: &Path) -> Result<Self> {
        crate::safe_path::check_output_target(path)
            .map_err(|e| Error::io("check target", path, e))?;
        let tmp = temp_path(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io("create temporary file", &tmp, e))?;
        Ok(Self {
            file,
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// A new temporary file beside `path` holding `bytes` (see [`PendingFile::create`]).
    pub fn write_new(path: &Path, bytes: &[u8]) -> Result<Self> {
        let pending = Self::create(path)?;
        if let Err(e) = (&pending.file).write_all(bytes) {
            let tmp = pending.tmp.clone();
            pending.discard();
            return Err(Error::io("write", tmp, e));
        }
        Ok(pending)
    }

    /// A file the caller already wrote under the temporary name `tmp` (open as `file`), to be
    /// renamed to `path`. `tmp` must be beside `path` (the rename is within one file system),
    /// and `path` checked as [`PendingFile::create`] does.
    pub fn from_parts(file: File, tmp: PathBuf, path: PathBuf) -> Self {
        Self { file, tmp, path }
    }

    /// The open temporary file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where [`commit`] puts it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the temporary file.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// A file written at its final path, not under a temporary name, inside a directory that
/// nothing reads until a later file of the same commit is in place (a new checkpoint's
/// directory before its `meta.json`): a [`CommitSet`] syncs it with the others and never
/// renames it. A failed commit leaves it where it is; the caller removes that directory.
#[derive(Debug)]
pub struct WrittenFile {
    file: File,
    path: PathBuf,
}

impl WrittenFile {
    /// A new file at `path` holding `bytes` (`path` must not exist).
    pub fn write_new(path: &Path, bytes: &[u8]) -> Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        file.write_all(bytes)
            .map_err(|e| Error::io("write", path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// A file the caller already wrote at `path`, open as `file`.
    pub fn from_parts(file: File, path: PathBuf) -> Self {
        Self { file, path }
    }

    /// The open file (read and write).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What one commit makes durable: files written in place ([`WrittenFile`]), then files renamed
/// into place in order ([`PendingFile`]), then every directory either kind is in, and the
/// directories added with [`CommitSet::dir`]. All files are synced before the first rename, so
/// one journal commit carries them all.
#[derive(Debug, Default)]
pub struct CommitSet {
    written: Vec<WrittenFile>,
    pending: Vec<PendingFile>,
    dirs: Vec<PathBuf>,
}

impl CommitSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sync `file` with the set (it is not renamed).
    pub fn written(&mut self, file: WrittenFile) {
        self.written.push(file);
    }

    /// Sync `file` with the set and rename it into place after the files added before it.
    pub fn pending(&mut self, file: PendingFile) {
        self.pending.push(file);
    }

    /// Also sync directory `dir` (one whose entries changed before the commit, such as the
    /// parent of a directory made for the set).
    pub fn dir(&mut self, dir: PathBuf) {
        self.dirs.push(dir);
    }

    /// Remove the pending files' temporary files (the written files are the caller's).
    pub fn discard(self) {
        for f in self.pending {
            f.discard();
        }
    }

    /// Commit the set: `start_writeback` is called on each file before the first fsync (see
    /// the module comment for the steps and for what a crash or an error leaves).
    pub fn commit_with(self, start_writeback: impl Fn(&File) -> std::io::Result<()>) -> Result<()> {
        commit_steps(self, &mut RealFs { start_writeback })
    }
}

/// [`commit_with`] without starting writeback first: for small files, or where the caller
/// started it while writing.
pub fn commit(files: Vec<PendingFile>) -> Result<()> {
    commit_with(files, |_| Ok(()))
}

/// Make `files` durable together and rename each into place, in order; `start_writeback` is
/// called on each file before the first fsync (see the module comment for the steps and for
/// what a crash or an error leaves).
pub fn commit_with(
    files: Vec<PendingFile>,
    start_writeback: impl Fn(&File) -> std::io::Result<()>,
) -> Result<()> {
    CommitSet {
        pending: files,
        ..CommitSet::default()
    }
    .commit_with(start_writeback)
}

/// The file system calls a commit makes, so that tests can fail each one.
trait Steps {
    fn start_writeback(&mut self, file: &File) -> std::io::Result<()>;
    fn sync_file(&mut self, file: &File) -> std::io::Result<()>;
    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()>;
    fn sync_dir(&mut self, dir: &Path) -> Result<()>;
}

struct RealFs<F> {
    start_writeback: F,
}

impl<F: Fn(&File) -> std::io::Result<()>> Steps for RealFs<F> {
    fn start_writeback(&mut self, file: &File) -> std::io::Result<()> {
        (self.start_writeback)(file)
    }
    fn sync_file(&mut self, file: &File) -> std::io::Result<()> {
        file.sync_all()
    }
    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&mut self, dir: &Path) -> Result<()> {
        sync_dir(dir)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// The directory a file at `path` is in.
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn commit_steps(set: CommitSet, fs: &mut impl Steps) -> Result<()> {
    let CommitSet {
        written,
        pending: files,
        dirs: extra_dirs,
    } = set;
    if let Err(e) = sync_all(&written, &files, fs) {
        for f in files {
            f.discard();
        }
        return Err(e);
    }
    let mut renamed: Vec<PathBuf> = Vec::with_capacity(files.len());
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut add_dir = |d: PathBuf| {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    };
    for w in &written {
        add_dir(dir_of(&w.path));
    }
    let mut iter = files.into_iter();
    let mut result = Ok(());
    while let Some(f) = iter.next() {
        if let Err(e) = fs.rename(&f.tmp, &f.path) {
            result = Err(Error::io("rename into place", &f.path, e));
            f.discard();
            for rest in iter.by_ref() {
                rest.discard();
            }
            break;
        }
        add_dir(dir_of(&f.path));
        renamed.push(f.path);
    }
    extra_dirs.into_iter().for_each(&mut add_dir);
    if result.is_ok() {
        result = dirs.iter().try_for_each(|d| fs.sync_dir(d));
    }
    if result.is_err() {
        // The set is all of its files or none: take back the ones already in place.
        for p in &renamed {
            let _ = std::fs::remove_file(p);
        }
        if !renamed.is_empty() {
            for d in &dirs {
                let _ = sync_dir(d);
            }
        }
    }
    result
}

fn sync_all(written: &[WrittenFile], files: &[PendingFile], fs: &mut impl Steps) -> Result<()> {
    let all = || {
        written
            .iter()
            .map(|w| (&w.file, &w.path))
            .chain(files.iter().map(|f| (&f.file, &f.tmp)))
    };
    for (file, path) in all() {
        fs.start_writeback(file)
            .map_err(|e| Error::io("start writeback", path, e))?;
    }
    for (file, path) in all() {
        fs.sync_file(file)
            .map_err(|e| Error::io("fsync", path, e))?;
    }
    Ok(())
}

/// Replace the regular file or nothing at `path` with a new file `fill` writes, durably
/// (temporary name, fsync, rename, fsync of the directory). On a failure before the rename the
/// temporary file is removed and `path` keeps its old file (see the module comment).
pub fn replace_with(path: &Path, fill: impl FnOnce(&File) -> Result<()>) -> Result<()> {
    let pending = PendingFile::create(path)?;
    if let Err(e) = fill(&pending.file) {
        pending.discard();
        return Err(e);
    }
    let result = pending
        .file
        .sync_all()
        .map_err(|e| Error::io("fsync", &pending.tmp, e));
    if let Err(e) = result {
        pending.discard();
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&pending.tmp, &pending.path) {
        let path = pending.path.clone();
        pending.discard();
        return Err(Error::io("rename into place", path, e));
    }
    sync_parent_dir(&pending.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The real calls, failing the `fail_at`-th one (counting every step from 0).
    struct Failing {
        fail_at: usize,
        done: usize,
        calls: Vec<String>,
    }

    impl Failing {
        fn new(fail_at: usize) -> Self {
            Self {
                fail_at,
                done: 0,
                calls: Vec::new(),
            }
        }
        fn step(&mut self, what: String) -> std::io::Result<()> {
            self.calls.push(what);
            self.done += 1;
            if self.done - 1 == self.fail_at {
                return Err(std::io::Error::other("injected failure"));
            }
            Ok(())
        }
    }

    impl Steps for Failing {
        fn start_writeback(&mut self, _file: &File) -> std::io::Result<()> {
            self.step("writeback".into())
        }
        fn sync_file(&mut self, file: &File) -> std::io::Result<()> {
            self.step("fsync".into())?;
            file.sync_all()
        }
        fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
            self.step(format!(
                "rename {}",
                to.file_name().unwrap().to_string_lossy()
            ))?;
            std::fs::rename(from, to)
        }
        fn sync_dir(&mut self, dir: &Path) -> Result<()> {
            self.step(format!("fsync dir {}", dir.display()))
                .map_err(|e| Error::io("fsync directory", dir, e))?;
            sync_dir(dir)
        }
    }

    fn set_of(files: Vec<PendingFile>) -> CommitSet {
        CommitSet {
            pending: files,
            ..CommitSet::default()
        }
    }

    #[test]
    fn written_files_sync_with_the_set_and_stay_when_it_fails() {
        // A new checkpoint directory: two files written in place, then `meta.json` renamed in,
        // then the store's root (where the directory was made) synced too.
        for fail_at in [usize::MAX, 0, 3, 4, 5, 6, 7] {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("c1");
            std::fs::create_dir(&dir).unwrap();
            let mut set = CommitSet::new();
            set.written(WrittenFile::write_new(&dir.join("state"), b"s").unwrap());
            set.written(WrittenFile::write_new(&dir.join("index"), b"i").unwrap());
            assert!(WrittenFile::write_new(&dir.join("index"), b"again").is_err());
            set.pending(PendingFile::write_new(&dir.join("meta.json"), b"m").unwrap());
            set.dir(root.path().to_path_buf());
            let mut fs = Failing::new(fail_at);
            let result = commit_steps(set, &mut fs);
            if fail_at == usize::MAX {
                result.unwrap();
                let (d, r) = (
                    format!("fsync dir {}", dir.display()),
                    format!("fsync dir {}", root.path().display()),
                );
                assert_eq!(
                    fs.calls,
                    [
                        "writeback",
                        "writeback",
                        "writeback",
                        "fsync",
                        "fsync",
                        "fsync",
                        "rename meta.json",
                        d.as_str(),
                        r.as_str()
                    ]
                );
                assert_eq!(names(&dir), ["index", "meta.json", "state"]);
            } else {
                assert!(result.is_err(), "step {fail_at}");
                // No meta.json: the directory is not a checkpoint; the written files are the
                // caller's to remove.
                assert_eq!(names(&dir), ["index", "state"], "step {fail_at}");
            }
            assert_eq!(std::fs::read(dir.join("state")).unwrap(), b"s");
        }
    }

    #[test]
    fn files_land_in_order_across_directories() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let (a, b, c) = (dir.path().join("a"), sub.join("b"), dir.path().join("c"));
        std::fs::write(&a, b"old a").unwrap();
        let files = vec![
            PendingFile::write_new(&a, b"new a").unwrap(),
            PendingFile::write_new(&b, b"b").unwrap(),
            PendingFile::write_new(&c, b"c").unwrap(),
        ];
        let mut fs = Failing::new(usize::MAX);
        commit_steps(set_of(files), &mut fs).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"new a");
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        assert_eq!(std::fs::read(&c).unwrap(), b"c");
        assert_eq!(names(dir.path()), ["a", "c", "sub"]);
        assert_eq!(names(&sub), ["b"]);
        // Writeback of all, then fsync of all, then the renames in order, then each directory
        // once.
        let top = format!("fsync dir {}", dir.path().display());
        let low = format!("fsync dir {}", sub.display());
        assert_eq!(
            fs.calls,
            [
                "writeback",
                "writeback",
                "writeback",
                "fsync",
                "fsync",
                "fsync",
                "rename a",
                "rename b",
                "rename c",
                top.as_str(),
                low.as_str(),
            ]
        );
    }

    #[test]
    fn every_failing_step_leaves_the_set_absent_and_older_files_alone() {
        // 3 writebacks, 3 fsyncs, 3 renames, 2 directory fsyncs: fail each in turn.
        for fail_at in 0..11 {
            let dir = tempfile::tempdir().unwrap();
            let sub = dir.path().join("sub");
            std::fs::create_dir(&sub).unwrap();
            // An earlier checkpoint beside the new one: never touched.
            std::fs::write(dir.path().join("earlier"), b"kept").unwrap();
            let (a, b, c) = (dir.path().join("a"), sub.join("b"), dir.path().join("c"));
            let files = vec![
                PendingFile::write_new(&a, b"a").unwrap(),
                PendingFile::write_new(&b, b"b").unwrap(),
                PendingFile::write_new(&c, b"c").unwrap(),
            ];
            let mut fs = Failing::new(fail_at);
            let err = commit_steps(set_of(files), &mut fs).unwrap_err();
            assert!(format!("{err:?}").contains("injected failure"), "{err:?}");
            assert_eq!(fs.calls.len(), fail_at + 1, "stopped at the failure");
            assert_eq!(names(dir.path()), ["earlier", "sub"], "step {fail_at}");
            assert!(names(&sub).is_empty(), "step {fail_at}");
            assert_eq!(std::fs::read(dir.path().join("earlier")).unwrap(), b"kept");
        }
    }

    #[test]
    fn a_rename_that_fails_takes_back_the_earlier_ones() {
        // Real calls only: the second target is a non-empty directory, which rename refuses.
        let dir = tempfile::tempdir().unwrap();
        let (d, e) = (dir.path().join("d"), dir.path().join("e"));
        let blocker = dir.path().join("blocker");
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), b"x").unwrap();
        let mut bad = PendingFile::write_new(&dir.path().join("c"), b"c").unwrap();
        bad.path = blocker.clone();
        let files = vec![
            PendingFile::write_new(&d, b"d").unwrap(),
            bad,
            PendingFile::write_new(&e, b"e").unwrap(),
        ];
        assert!(commit(files).is_err());
        assert_eq!(names(dir.path()), ["blocker"]);
    }

    #[test]
    fn bad_targets_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(PendingFile::write_new(&sub, b"x").is_err());
        assert!(replace_with(&sub, |_| Ok(())).is_err());
        assert_eq!(names(dir.path()), ["sub"]);
    }

    #[test]
    fn the_writeback_hook_sees_every_file_and_its_error_discards_them() {
        let dir = tempfile::tempdir().unwrap();
        let seen = std::cell::Cell::new(0);
        let files = vec![
            PendingFile::write_new(&dir.path().join("a"), b"a").unwrap(),
            PendingFile::write_new(&dir.path().join("b"), b"b").unwrap(),
        ];
        commit_with(files, |f| {
            assert_eq!(f.metadata()?.len(), 1);
            seen.set(seen.get() + 1);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.get(), 2);
        let files = vec![PendingFile::write_new(&dir.path().join("c"), b"c").unwrap()];
        let err = commit_with(files, |_| Err(std::io::Error::other("no writeback")));
        assert!(format!("{:?}", err.unwrap_err()).contains("no writeback"));
        assert_eq!(names(dir.path()), ["a", "b"]);
    }

    #[test]
    fn replace_with_keeps_the_old_file_when_fill_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.json");
        std::fs::write(&p, b"old").unwrap();
        let err = replace_with(&p, |_| Err(Error::Reserved(1)));
        assert!(matches!(err, Err(Error::Reserved(1))));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        replace_with(&p, |mut f| {
            f.write_all(b"new").map_err(|e| Error::io("write", "x", e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["meta.json"]);
    }
}
