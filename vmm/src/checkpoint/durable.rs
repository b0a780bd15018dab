//! Making a snapshot's files durable together, in as few journal commits as the file system
//! allows.
//!
//! A snapshot is three new files: the memory file, its page index and the state file. Each is
//! written under a temporary name. Made durable one by one (fsync the file, rename it, fsync
//! the directory), they cost six fsyncs, and on ext4 nearly each is a journal commit of its own
//! (a few ms apiece on a busy disk): more than the whole write of a small Diff. Firecracker
//! fsyncs its two files once each. Here the three are committed together:
//!
//! 1. writeback of every file is started (`sync_file_range`), so the file system allocates all
//!    their blocks in the same running transaction;
//! 2. each file is fsynced (the first fsync commits that transaction; the others find their
//!    inodes committed and only wait for their data);
//! 3. the files are renamed into place in order (index, memory, state last), and each
//!    directory is fsynced once.
//!
//! A journaling file system commits the renames in the order they were made, so after a crash a
//! state file in place means its memory file and index are too. On any error every temporary
//! file is removed and nothing is renamed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::VmmError;

fn snap_err(what: impl std::fmt::Display) -> VmmError {
    VmmError::Snapshot(what.to_string())
}

/// A file written under a temporary name, to be renamed to its final path by [`commit`].
#[derive(Debug)]
pub struct PendingFile {
    /// The open temporary file.
    pub file: File,
    /// Its temporary name.
    pub tmp: PathBuf,
    /// Where [`commit`] puts it.
    pub path: PathBuf,
}

impl PendingFile {
    /// Write `bytes` to a new temporary file beside `path`.
    pub fn write_new(path: &Path, bytes: &[u8]) -> Result<Self, VmmError> {
        cairn_snapshot::safe_path::check_output_target(path)
            .map_err(|e| snap_err(format!("{}: {e}", path.display())))?;
        let tmp = cairn_snapshot::file::temp_path(path);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| snap_err(format!("{}: {e}", tmp.display())))?;
        if let Err(e) = file.write_all(bytes) {
            let _ = std::fs::remove_file(&tmp);
            return Err(snap_err(format!("writing {}: {e}", tmp.display())));
        }
        Ok(Self {
            file,
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// Remove the temporary file.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Make `files` durable and rename each into place, in order (see the module comment). On error
/// every temporary file is removed, and no file is renamed unless all were synced.
pub fn commit(files: Vec<PendingFile>) -> Result<(), VmmError> {
    if let Err(e) = sync_all(&files) {
        for f in files {
            f.discard();
        }
        return Err(e);
    }
    let mut renamed: Vec<PathBuf> = Vec::new();
    let result = rename_all(files, &mut renamed);
    if result.is_err() {
        // A snapshot is all of its files or none: take back the ones already in place.
        for p in renamed {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

fn rename_all(files: Vec<PendingFile>, renamed: &mut Vec<PathBuf>) -> Result<(), VmmError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut iter = files.into_iter();
    while let Some(f) = iter.next() {
        if let Err(e) = std::fs::rename(&f.tmp, &f.path) {
            let msg = format!("rename {}: {e}", f.path.display());
            f.discard();
            for rest in iter {
                rest.discard();
            }
            return Err(snap_err(msg));
        }
        renamed.push(f.path.clone());
        let dir = match f.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| snap_err(format!("fsync {}: {e}", dir.display())))?;
    }
    Ok(())
}

fn sync_all(files: &[PendingFile]) -> Result<(), VmmError> {
    for f in files {
        // SAFETY: sync_file_range only starts writeback of this open file's dirty pages
        // (offset 0, length 0: the whole file).
        let rc =
            unsafe { libc::sync_file_range(f.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            return Err(snap_err(format!(
                "starting writeback of {}: {}",
                f.tmp.display(),
                std::io::Error::last_os_error()
            )));
        }
    }
    for f in files {
        f.file
            .sync_all()
            .map_err(|e| snap_err(format!("fsync {}: {e}", f.tmp.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_land_in_order_and_nothing_is_left_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let files = vec![
            PendingFile::write_new(&a, b"first").unwrap(),
            PendingFile::write_new(&b, b"second").unwrap(),
        ];
        commit(files).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"first");
        assert_eq!(std::fs::read(&b).unwrap(), b"second");
        let names = |d: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(dir.path()), ["a", "b"]);

        // A rename that fails (its target is a non-empty directory) leaves no temporary file
        // behind, takes back the files renamed before it, and renames none after it.
        let (c, d) = (dir.path().join("c"), dir.path().join("d"));
        let blocker = dir.path().join("blocker");
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), b"x").unwrap();
        let mut bad = PendingFile::write_new(&c, b"c").unwrap();
        bad.path = blocker.clone();
        let files = vec![
            PendingFile::write_new(&d, b"d").unwrap(),
            bad,
            PendingFile::write_new(&dir.path().join("e"), b"e").unwrap(),
        ];
        assert!(commit(files).is_err());
        assert_eq!(names(dir.path()), ["a", "b", "blocker"]);
    }

    #[test]
    fn bad_targets_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(PendingFile::write_new(&sub, b"x").is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
