//! Chunks: a file cut into fixed 1 MiB pieces at 1 MiB-aligned offsets, each named by the BLAKE3
//! hash of its bytes. All-zero pieces (holes, or zeros written) are not chunks: a sparse memory
//! layer or disk image costs only what it holds, and is rebuilt sparse.
//!
//! Fixed, aligned chunks fit cairn's layers: memory layers are page-aligned images at guest
//! offsets and disk layers hold whole blocks, so the same guest page or block lands in the same
//! chunk in every fork and every checkpoint that did not change it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// Bytes in a chunk (the last chunk of a file may be shorter).
pub const CHUNK_SIZE: u64 = 1 << 20;

/// A chunk's name: the lowercase hex BLAKE3 hash of its bytes (64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChunkId(String);

impl ChunkId {
    /// The name of `bytes`.
    pub fn of(bytes: &[u8]) -> ChunkId {
        ChunkId(blake3::hash(bytes).to_hex().to_string())
    }

    /// A name read from outside (a bucket listing, a manifest): 64 lowercase hex digits.
    pub fn parse(s: &str) -> Option<ChunkId> {
        (s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| ChunkId(s.to_string()))
    }

    /// The hex name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `bytes` hash to this name.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Self::of(bytes) == *self
    }
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One chunk of a file: where it lies and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// Byte offset in the file (a multiple of [`CHUNK_SIZE`]).
    pub offset: u64,
    /// Its length (`CHUNK_SIZE`, or less for the file's last chunk).
    pub len: u64,
    /// Its name.
    pub id: ChunkId,
}

/// A file as chunks: its length and its non-zero chunks, ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileChunks {
    /// The file's length in bytes (holes included).
    pub size: u64,
    /// The chunks that are not all zero, by offset.
    pub chunks: Vec<ChunkRef>,
}

impl FileChunks {
    /// Bytes the chunks hold (the file's logical size less its all-zero chunks).
    pub fn data_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.len).sum()
    }

    /// Check the list is one [`chunk_file`] could have made: aligned, ascending, inside the file.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let mut next = 0u64;
        for c in &self.chunks {
            let end = c.offset.checked_add(c.len).ok_or("chunk end overflows")?;
            let full = c.len == CHUNK_SIZE || end == self.size;
            if c.offset % CHUNK_SIZE != 0 || c.offset < next || c.len == 0 || !full {
                return Err(format!(
                    "chunk at {} of {} bytes is misplaced",
                    c.offset, c.len
                ));
            }
            if end > self.size {
                return Err(format!("chunk at {} runs past the file's end", c.offset));
            }
            next = end;
        }
        Ok(())
    }
}

/// Cut `path` into chunks. Reads only the file's data extents (`SEEK_DATA`), so a 100 GiB sparse
/// disk image holding 300 MiB costs a 300 MiB read.
pub fn chunk_file(path: &Path) -> Result<FileChunks> {
    let file = File::open(path).map_err(StoreError::io("open", path))?;
    let size = file.metadata().map_err(StoreError::io("stat", path))?.len();
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; CHUNK_SIZE as usize];
    let mut off = 0u64;
    while off < size {
        let Some(data) = next_data(&file, off).map_err(StoreError::io("seek data in", path))?
        else {
            break;
        };
        let start = data - data % CHUNK_SIZE;
        if start >= size {
            break;
        }
        let len = (size - start).min(CHUNK_SIZE);
        let piece = &mut buf[..len as usize];
        file.read_exact_at(piece, start)
            .map_err(StoreError::io("read", path))?;
        if piece.iter().any(|&b| b != 0) {
            chunks.push(ChunkRef {
                offset: start,
                len,
                id: ChunkId::of(piece),
            });
        }
        off = start + len;
    }
    Ok(FileChunks { size, chunks })
}

/// The first offset at or after `off` that holds data, or `None` past the last data.
fn next_data(file: &File, off: u64) -> std::io::Result<Option<u64>> {
    let off = i64::try_from(off).map_err(std::io::Error::other)?;
    // SAFETY: lseek on a file descriptor `file` owns and keeps open; no memory is passed.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        // A file system without SEEK_DATA: every byte counts as data.
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some(off as u64)),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn holes_and_zeros_make_no_chunks_and_equal_pieces_share_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let f = File::create(&p).unwrap();
        f.set_len(10 * CHUNK_SIZE + 100).unwrap();
        f.write_all_at(&[7u8; 10], 3 * CHUNK_SIZE + 5).unwrap();
        f.write_all_at(&[0u8; 4096], 5 * CHUNK_SIZE).unwrap(); // written zeros
        f.write_all_at(&[7u8; 10], 8 * CHUNK_SIZE + 5).unwrap();
        f.write_all_at(&[1u8; 50], 10 * CHUNK_SIZE).unwrap(); // short last chunk
        let c = chunk_file(&p).unwrap();
        assert_eq!(c.size, 10 * CHUNK_SIZE + 100);
        let offs: Vec<_> = c.chunks.iter().map(|c| c.offset / CHUNK_SIZE).collect();
        assert_eq!(offs, [3, 8, 10]);
        assert_eq!(c.chunks[0].id, c.chunks[1].id, "same bytes, same name");
        assert_eq!(c.chunks[2].len, 100);
        assert_eq!(c.data_bytes(), 2 * CHUNK_SIZE + 100);
        c.validate().unwrap();
    }

    #[test]
    fn a_dense_file_is_all_chunks_and_names_parse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = File::create(&p).unwrap();
        f.write_all(&vec![9u8; 3 * CHUNK_SIZE as usize]).unwrap();
        let c = chunk_file(&p).unwrap();
        assert_eq!(c.chunks.len(), 3);
        let id = &c.chunks[0].id;
        assert_eq!(ChunkId::parse(id.as_str()).as_ref(), Some(id));
        assert!(ChunkId::parse("xyz").is_none());
        assert!(id.matches(&vec![9u8; CHUNK_SIZE as usize]));
        let mut bad = c.clone();
        bad.chunks[1].offset = 5;
        assert!(bad.validate().is_err());
    }
}
