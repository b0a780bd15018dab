//! [`LocalStore`]: the store's room in `CAIRN_HOME` (`$CAIRN_HOME/store/`), which it alone lays out:
//!
//! ```text
//! store/
//!   host-id                  this home's id: lease holder and pusher name (random, made once)
//!   index/<key>.json         a file's chunk list, keyed by (device, inode, size, mtime, ctime)
//!   chunks/<ab>/<id>         the chunk cache: chunks pulled from the bucket, by BLAKE3 name
//! ```
//!
//! Committed checkpoint files and base images are never rewritten in place (a delete that merges
//! layers writes new versions), so a file whose identity and times are unchanged has the same
//! chunks: hashing a 1 GiB disk image happens once, not at every `df` or `push`.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::chunk::{chunk_file, ChunkId, FileChunks};
use crate::error::{Result, StoreError};

/// The chunk cache's default size limit (bytes): `CAIRN_STORE_CACHE_MIB` overrides it.
pub const DEFAULT_CACHE_LIMIT: u64 = 4 << 30;

/// `$CAIRN_HOME/store`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// The store room of the home at `cairn_home` (created on first write).
    pub fn in_home(cairn_home: &Path) -> LocalStore {
        LocalStore {
            root: cairn_home.join("store"),
        }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This home's host id (16 hex digits), made on first use.
    pub fn host_id(&self) -> Result<String> {
        let path = self.root.join("host-id");
        if let Ok(id) = fs::read_to_string(&path) {
            let id = id.trim();
            if !id.is_empty() {
                return Ok(id.to_string());
            }
        }
        let mut raw = [0u8; 8];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut raw))
            .map_err(StoreError::io("read", Path::new("/dev/urandom")))?;
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        write_atomic(&path, id.as_bytes())?;
        Ok(id)
    }

    /// The chunks of `path`, from the index when the file is unchanged, else hashed (and indexed).
    pub fn chunks_of(&self, path: &Path) -> Result<FileChunks> {
        let m = fs::metadata(path).map_err(StoreError::io("stat", path))?;
        let key = format!(
            "{}-{}-{}-{}.{}-{}.{}",
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        );
        let entry = self.root.join("index").join(format!("{key}.json"));
        if let Ok(bytes) = fs::read(&entry) {
            if let Ok(c) = serde_json::from_slice::<FileChunks>(&bytes) {
                if c.size == m.len() && c.validate().is_ok() {
                    return Ok(c);
                }
            }
        }
        let c = chunk_file(path)?;
        // The index is a cache: failing to write it costs a rehash next time, nothing more.
        if let Ok(bytes) = serde_json::to_vec(&c) {
            let _ = write_atomic(&entry, &bytes);
        }
        Ok(c)
    }

    fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let s = id.as_str();
        self.root.join("chunks").join(&s[..2]).join(s)
    }

    /// A cached chunk, if present and whole (a cached chunk that fails its hash is dropped).
    pub fn cached(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let path = self.chunk_path(id);
        let bytes = fs::read(&path).ok()?;
        if id.matches(&bytes) {
            Some(bytes)
        } else {
            let _ = fs::remove_file(&path);
            None
        }
    }

    /// Keep a chunk in the cache.
    pub fn cache(&self, id: &ChunkId, bytes: &[u8]) -> Result<()> {
        let path = self.chunk_path(id);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, bytes)
    }

    /// Bytes in the chunk cache.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_entries().iter().map(|(_, len, _)| len).sum()
    }

    /// Drop the least recently written chunks until the cache holds at most `limit` bytes.
    /// Returns the bytes dropped.
    pub fn trim_cache(&self, limit: u64) -> u64 {
        let mut entries = self.cache_entries();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort_by_key(|(_, _, t)| *t);
        let mut dropped = 0;
        for (path, len, _) in entries {
            if total <= limit {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
                dropped += len;
            }
        }
        dropped
    }

    fn cache_entries(&self) -> Vec<(PathBuf, u64, i64)> {
        let mut out = Vec::new();
        let Ok(dirs) = fs::read_dir(self.root.join("chunks")) else {
            return out;
        };
        for d in dirs.flatten() {
            let Ok(files) = fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                if let Ok(m) = f.metadata() {
                    out.push((f.path(), m.len(), m.mtime()));
                }
            }
        }
        out
    }
}

/// The cache limit from `CAIRN_STORE_CACHE_MIB`, else [`DEFAULT_CACHE_LIMIT`].
pub fn cache_limit_from_env() -> u64 {
    std::env::var("CAIRN_STORE_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_CACHE_LIMIT, |mib| mib << 20)
}

/// Write `bytes` to `path` under a temporary name, fsync, rename into place.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(StoreError::io("create", dir))?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let r = (|| {
        let f = fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut &f, bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map_err(StoreError::io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_reused_until_the_file_changes_and_the_cache_checks_and_trims() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::in_home(dir.path());
        let f = dir.path().join("f");
        fs::write(&f, b"hello").unwrap();
        let a = s.chunks_of(&f).unwrap();
        assert_eq!(fs::read_dir(s.root().join("index")).unwrap().count(), 1);
        assert_eq!(s.chunks_of(&f).unwrap(), a);
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&f, b"world").unwrap();
        assert_ne!(
            s.chunks_of(&f).unwrap(),
            a,
            "a changed file is hashed again"
        );

        let id = ChunkId::of(b"hello");
        assert!(s.cached(&id).is_none());
        s.cache(&id, b"hello").unwrap();
        assert_eq!(s.cached(&id).unwrap(), b"hello");
        fs::write(s.chunk_path(&id), b"hellO").unwrap();
        assert!(s.cached(&id).is_none(), "a damaged chunk is not served");
        s.cache(&id, b"hello").unwrap();
        s.cache(&ChunkId::of(b"other"), b"other").unwrap();
        assert_eq!(s.cache_bytes(), 10);
        assert_eq!(s.trim_cache(5), 5);
        assert_eq!(s.cache_bytes(), 5);

        let h = s.host_id().unwrap();
        assert_eq!(h.len(), 16);
        assert_eq!(s.host_id().unwrap(), h);
    }
}
