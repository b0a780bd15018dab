//! Content keys for files the image store shares between sandboxes (root images, kernels):
//! the SHA-256 of the file's bytes, never its name or directory.
//!
//! Hashing a 1 GiB root image costs seconds, so a key is computed once per file version and
//! remembered in `<images>/.keys/<dev>-<ino>-<size>-<mtime ns>-<ctime ns>`. Any write to the
//! file changes its mtime and ctime (and a replaced file has a new inode), so a remembered key
//! never outlives the bytes it describes.

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Length of the hex prefix of the hash used in file names (64 bits: collisions between a
/// user's images are not a concern at that size).
pub const SHORT: usize = 16;

/// Names one version of a file: `<dev>-<ino>-<size>-<mtime>.<ns>-<ctime>.<ns>`. Any write
/// changes the times, and a replaced file has a new inode.
pub fn version_tag(m: &fs::Metadata) -> String {
    format!(
        "{}-{}-{}-{}.{}-{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// Where the remembered key for the current version of a file with metadata `m` lives.
fn memo_path(memo_dir: &Path, m: &fs::Metadata) -> PathBuf {
    memo_dir.join(version_tag(m))
}

/// The full hex SHA-256 of `file`'s content, from the memo in `memo_dir` when the file has not
/// changed since it was last hashed.
pub fn content_hash(file: &Path, memo_dir: &Path) -> io::Result<String> {
    let before = fs::metadata(file)?;
    let memo = memo_path(memo_dir, &before);
    if let Ok(s) = fs::read_to_string(&memo) {
        let s = s.trim();
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(s.to_owned());
        }
    }
    let hex = hash_file(file)?;
    // Only remember it when the file did not change while it was read.
    if fs::metadata(file).is_ok_and(|after| memo_path(memo_dir, &after) == memo) {
        fs::create_dir_all(memo_dir)?;
        let tmp = memo.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, &hex)?;
        fs::rename(&tmp, &memo)?;
    }
    Ok(hex)
}

/// The first [`SHORT`] hex digits of [`content_hash`].
pub fn short_hash(file: &Path, memo_dir: &Path) -> io::Result<String> {
    let mut h = content_hash(file, memo_dir)?;
    h.truncate(SHORT);
    Ok(h)
}

/// SHA-256 of a file's bytes, hex.
pub fn hash_file(file: &Path) -> io::Result<String> {
    let mut f = File::open(file)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 of several byte strings, each length-prefixed (so ("ab","c") != ("a","bc")), hex.
pub fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for p in parts {
        hasher.update((p.len() as u64).to_le_bytes());
        hasher.update(p);
    }
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_content_not_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let memo = dir.path().join("memo");
        let a = dir.path().join("a/rootfs.ext4");
        let b = dir.path().join("b/rootfs.ext4");
        fs::create_dir_all(a.parent().unwrap()).unwrap();
        fs::create_dir_all(b.parent().unwrap()).unwrap();
        fs::write(&a, b"one").unwrap();
        fs::write(&b, b"two").unwrap();
        let ka = content_hash(&a, &memo).unwrap();
        assert_ne!(ka, content_hash(&b, &memo).unwrap());
        // Remembered: one memo per file.
        assert_eq!(fs::read_dir(&memo).unwrap().count(), 2);
        assert_eq!(content_hash(&a, &memo).unwrap(), ka);
        // Rewritten in place with other bytes: a new key, not the memo.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&a, b"three").unwrap();
        assert_ne!(content_hash(&a, &memo).unwrap(), ka);
        // Same bytes, other file: same key.
        fs::write(&b, b"three").unwrap();
        assert_eq!(
            content_hash(&a, &memo).unwrap(),
            content_hash(&b, &memo).unwrap()
        );
        assert_eq!(short_hash(&a, &memo).unwrap().len(), SHORT);
    }

    #[test]
    fn a_forged_memo_is_ignored_when_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let memo = dir.path().join("memo");
        let a = dir.path().join("a");
        fs::write(&a, b"x").unwrap();
        let k = content_hash(&a, &memo).unwrap();
        let m = fs::read_dir(&memo).unwrap().next().unwrap().unwrap().path();
        fs::write(&m, "garbage").unwrap();
        assert_eq!(content_hash(&a, &memo).unwrap(), k);
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(
            hash_parts([b"ab".as_slice(), b"c"]),
            hash_parts([b"a".as_slice(), b"bc"])
        );
    }
}
