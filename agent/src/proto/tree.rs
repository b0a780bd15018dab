//! The tree stream that carries a file or a directory tree for `Put` and `Get`.
//!
//! A stream is: one `Entry` with an empty `path` for the root, then (for a directory) one `Entry`
//! per descendant with a `/`-separated path relative to the root, parents before children. Each
//! `File` entry is followed by `Data` chunks that add up to exactly its `size`. `End` closes the
//! stream.

use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file; `Data` chunks follow.
    File,
    /// A directory.
    Dir,
}

/// One element of a tree stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TreeMsg {
    /// A file or directory.
    Entry {
        /// Path relative to the root, `/`-separated, empty for the root itself. Never absolute,
        /// never containing `.` or `..`.
        path: String,
        /// File or directory.
        kind: EntryKind,
        /// Permission bits (`mode & 0o7777`).
        mode: u32,
        /// Byte count of a file; 0 for a directory.
        size: u64,
    },
    /// Part of the current file's contents.
    Data(#[serde(with = "super::bytes")] Vec<u8>),
    /// The stream is complete.
    End {
        /// Entries the sender left out because they are neither files nor directories
        /// (symlinks, devices, sockets, fifos).
        skipped: u64,
    },
}

/// Joins a tree-stream path onto `root`, refusing anything that could leave it: absolute paths,
/// `.`, `..`, empty components and NUL bytes. The empty path is the root itself.
pub fn join_relative(root: &Path, rel: &str) -> Result<PathBuf, String> {
    if rel.is_empty() {
        return Ok(root.to_path_buf());
    }
    if rel.contains('\0') {
        return Err(format!("tree path {rel:?} contains a NUL byte"));
    }
    let mut out = root.to_path_buf();
    for part in rel.split('/') {
        match Path::new(part).components().next() {
            Some(Component::Normal(p)) if p.len() == part.len() => out.push(p),
            _ => return Err(format!("tree path {rel:?} is not a plain relative path")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_relative_accepts_plain_paths() {
        let root = Path::new("/r");
        assert_eq!(join_relative(root, "").unwrap(), PathBuf::from("/r"));
        assert_eq!(
            join_relative(root, "a/b.txt").unwrap(),
            PathBuf::from("/r/a/b.txt")
        );
        assert_eq!(join_relative(root, "..a").unwrap(), PathBuf::from("/r/..a"));
    }

    #[test]
    fn join_relative_refuses_escapes() {
        let root = Path::new("/r");
        for bad in ["/etc", "..", "a/../b", "./a", "a//b", "a/", "a/.", "a\0b"] {
            assert!(join_relative(root, bad).is_err(), "{bad:?} accepted");
        }
    }
}
