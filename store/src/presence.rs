//! What of a lazily pulled sandbox's files is already here, remembered across starts, and the
//! lock that ends its lazy state.
//!
//! A sparse file's zeros cannot be told from data, so the chunks written into the lazy files
//! are recorded in `lazy.present` beside `lazy.json`: one line per chunk,
//!
//! ```text
//! v1 <chunk id> <offset> <st_dev> <st_ino> <path relative to the sandbox's directory>
//! ```
//!
//! Crash safety: a line is appended only after the chunk's file was synced (`fdatasync`), so a
//! crash can lose lines (the chunk is fetched again) but never record a chunk that is not on
//! disk. A line counts only when it is whole (ends in a newline), parses, and names the chunk
//! the lazy list has at that offset of a file with that device and inode: a torn last line, a
//! line of another pull's files or of a file since replaced is ignored.
//!
//! `lazy.lock` orders the end of the lazy state against the writers of chunks: each chunk is
//! written under a shared lock, after checking that `lazy.json` is still there; whoever ends
//! the lazy state (every chunk in) removes `lazy.present` and `lazy.json` under the exclusive
//! lock. After that no server writes into the files again, so they may change (a checkpoint
//! delete merges layers in place).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::chunk::ChunkId;
use crate::error::{Result, StoreError};

/// The record of chunks present, in the sandbox's directory.
pub const PRESENT_FILE: &str = "lazy.present";
/// The lock that orders chunk writes against the end of the lazy state.
pub const LOCK_FILE: &str = "lazy.lock";

/// One chunk known to be in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Present {
    /// The file's path relative to the sandbox's directory (as `lazy.json` names it).
    pub rel: String,
    /// The chunk's offset in the file.
    pub offset: u64,
    /// The chunk.
    pub id: ChunkId,
    /// The file's `(st_dev, st_ino)`.
    pub file_id: (u64, u64),
}

impl Present {
    fn line(&self) -> String {
        format!(
            "v1 {} {} {} {} {}\n",
            self.id, self.offset, self.file_id.0, self.file_id.1, self.rel
        )
    }

    fn parse(line: &str) -> Option<Present> {
        let mut parts = line.splitn(6, ' ');
        if parts.next()? != "v1" {
            return None;
        }
        let id = ChunkId::parse(parts.next()?)?;
        let offset = parts.next()?.parse().ok()?;
        let dev = parts.next()?.parse().ok()?;
        let ino = parts.next()?.parse().ok()?;
        let rel = parts.next()?.to_string();
        (!rel.is_empty()).then_some(Present {
            rel,
            offset,
            id,
            file_id: (dev, ino),
        })
    }
}

/// The whole lines of `dir`'s record (not yet checked against the lazy list).
pub fn load(dir: &Path) -> Result<Vec<Present>> {
    let path = dir.join(PRESENT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("read", &path)(e)),
    };
    let text = String::from_utf8_lossy(&bytes);
    // Only lines that end in a newline: a crash may have cut the last one.
    let whole = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    Ok(whole.lines().filter_map(Present::parse).collect())
}

/// Append `records` to `dir`'s record. The caller has synced the chunks' files first.
pub fn append(dir: &Path, records: &[Present]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let path = dir.join(PRESENT_FILE);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(StoreError::io("open", &path))?;
    let mut text = String::new();
    // A line a crash cut short must not swallow the first new one.
    let len = f.metadata().map_err(StoreError::io("stat", &path))?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        std::os::unix::fs::FileExt::read_at(
            &File::open(&path).map_err(StoreError::io("open", &path))?,
            &mut last,
            len - 1,
        )
        .map_err(StoreError::io("read", &path))?;
        if last[0] != b'\n' {
            text.push('\n');
        }
    }
    for r in records {
        text.push_str(&r.line());
    }
    // One write: appends of concurrent writers (the page server, a `cairn fork` filling the
    // files) do not interleave.
    f.write_all(text.as_bytes())
        .map_err(StoreError::io("append to", &path))?;
    f.sync_data().map_err(StoreError::io("fsync", &path))
}

/// A held `lazy.lock` (released on drop). Each holds its own open file, so two threads of one
/// process hold and release theirs independently.
pub struct LazyLock {
    _file: File,
}

impl LazyLock {
    /// Take `dir`'s lock: shared (a chunk write) or exclusive (ending the lazy state).
    pub fn take(dir: &Path, exclusive: bool) -> Result<LazyLock> {
        let path: PathBuf = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: flock(2) on a file descriptor this function owns; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
            if rc == 0 {
                return Ok(LazyLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(StoreError::io("lock", &path)(e));
            }
        }
    }
}

/// End `dir`'s lazy state: every chunk of its lazy files is in them and synced (the caller
/// made sure). Under the exclusive lock, removes the record then `lazy.json` (a crash between
/// forgets what is present, which is safe), so no writer puts a chunk in afterwards.
pub fn finish(dir: &Path) -> Result<()> {
    let _lock = LazyLock::take(dir, true)?;
    for name in [PRESENT_FILE, crate::lazy::LAZY_FILE] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", &path)(e)),
        }
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: u64, rel: &str) -> Present {
        Present {
            rel: rel.into(),
            offset,
            id: ChunkId::of(&offset.to_le_bytes()),
            file_id: (1, 2),
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_line_counts_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let a = [rec(0, "checkpoints/c1/mem.layer"), rec(1 << 20, "disk img")];
        append(dir.path(), &a).unwrap();
        assert_eq!(load(dir.path()).unwrap(), a);
        // A crash mid-append: half a line, no newline. It is not a record...
        let path = dir.path().join(PRESENT_FILE);
        let line = rec(2 << 20, "disk.img").line();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&line.as_bytes()[..line.len() / 2]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), a);
        // ...and does not spoil the next append.
        let b = rec(3 << 20, "disk.img");
        append(dir.path(), std::slice::from_ref(&b)).unwrap();
        let mut want = a.to_vec();
        want.push(b);
        assert_eq!(load(dir.path()).unwrap(), want);
        // Garbage lines are skipped.
        std::fs::write(&path, "v1 zz 0 1 2 x\nv2 a b\n\n").unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn finish_removes_the_record_and_the_list_and_tolerates_their_absence() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &[rec(0, "f")]).unwrap();
        std::fs::write(dir.path().join(crate::lazy::LAZY_FILE), b"{}").unwrap();
        let shared = LazyLock::take(dir.path(), false).unwrap();
        let other = LazyLock::take(dir.path(), false).unwrap();
        drop((shared, other));
        finish(dir.path()).unwrap();
        assert!(!dir.path().join(PRESENT_FILE).exists());
        assert!(!dir.path().join(crate::lazy::LAZY_FILE).exists());
        finish(dir.path()).unwrap();
    }
}
