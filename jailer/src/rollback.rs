//! Undo list for a failed start: everything the jailer creates is recorded here and removed again, newest
//! first, unless the start succeeds.
//!
//! Each entry holds a file descriptor of the directory it lives in (opened when the entry was created), not
//! a path, so the undo also works after `pivot_root` has hidden the host's file system.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::sys;

#[derive(Debug)]
enum Action {
    /// Remove `name` under `parent`, recursively (the jail's directories).
    RemoveTree {
        parent: OwnedFd,
        name: CString,
        path: PathBuf,
    },
    /// `rmdir` `name` under `parent` (a cgroup, or a directory that may be shared and so must be empty).
    RemoveDir {
        parent: OwnedFd,
        name: CString,
        path: PathBuf,
        quiet_if_busy: bool,
    },
    /// Write `data` to an already open file (moves the process back to its original cgroup).
    Write {
        file: File,
        data: &'static str,
        path: PathBuf,
    },
}

/// The undo list. Dropping it undoes everything still recorded; [`Rollback::disarm`] forgets it all.
#[derive(Debug, Default)]
pub struct Rollback {
    actions: Vec<Action>,
}

impl Rollback {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    fn parent_and_name(path: &Path) -> std::io::Result<(OwnedFd, CString)> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other("path has no file name"))?;
        Ok((sys::open_dir(parent)?, sys::cstring(name)?))
    }

    /// Records a directory tree the jailer created.
    pub fn remove_tree(&mut self, path: &Path) -> std::io::Result<()> {
        let (parent, name) = Self::parent_and_name(path)?;
        self.actions.push(Action::RemoveTree {
            parent,
            name,
            path: path.to_owned(),
        });
        Ok(())
    }

    /// Records a directory to `rmdir` (a cgroup, or a jail directory others may share: left alone if not
    /// empty when `quiet_if_busy`).
    pub fn remove_dir(&mut self, path: &Path, quiet_if_busy: bool) -> std::io::Result<()> {
        let (parent, name) = Self::parent_and_name(path)?;
        self.actions.push(Action::RemoveDir {
            parent,
            name,
            path: path.to_owned(),
            quiet_if_busy,
        });
        Ok(())
    }

    /// Records a write to do on undo, through a file opened now.
    pub fn write_on_undo(&mut self, path: &Path, data: &'static str) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        self.actions.push(Action::Write {
            file,
            data,
            path: path.to_owned(),
        });
        Ok(())
    }

    /// Forgets every entry: the start succeeded (or this is a forked child whose parent owns the undo).
    pub fn disarm(&mut self) {
        self.actions.clear();
    }

    /// Undoes everything, newest first. Problems are reported on stderr and do not stop the rest.
    pub fn run(&mut self) {
        while let Some(action) = self.actions.pop() {
            let (result, path, quiet) = match action {
                Action::RemoveTree { parent, name, path } => {
                    (sys::remove_tree_at(parent.as_raw_fd(), &name), path, false)
                }
                Action::RemoveDir {
                    parent,
                    name,
                    path,
                    quiet_if_busy,
                } => (
                    sys::unlinkat(parent.as_raw_fd(), &name, libc::AT_REMOVEDIR),
                    path,
                    quiet_if_busy,
                ),
                Action::Write {
                    mut file,
                    data,
                    path,
                } => (file.write_all(data.as_bytes()), path, false),
            };
            if let Err(e) = result {
                let busy = matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST));
                if !(quiet && busy) && e.raw_os_error() != Some(libc::ENOENT) {
                    eprintln!(
                        "cairn-jailer: warning: could not undo {}: {e}",
                        path.display()
                    );
                }
            }
        }
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        self.run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undoes_newest_first_and_disarm_forgets() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        let tree = shared.join("tree");
        std::fs::create_dir(&shared).unwrap();
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", tree.join("link")).unwrap();

        let mut rb = Rollback::new();
        rb.remove_dir(&shared, true).unwrap();
        rb.remove_tree(&tree).unwrap();
        rb.run();
        assert!(!shared.exists());
        assert!(Path::new("/etc").exists());

        std::fs::create_dir_all(&tree).unwrap();
        let mut rb = Rollback::new();
        rb.remove_tree(&tree).unwrap();
        rb.disarm();
        drop(rb);
        assert!(tree.exists());
    }

    #[test]
    fn shared_dir_left_alone_when_busy() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir_all(shared.join("other-jail")).unwrap();
        {
            let mut rb = Rollback::new();
            rb.remove_dir(&shared, true).unwrap();
        }
        assert!(shared.join("other-jail").exists());
    }
}
