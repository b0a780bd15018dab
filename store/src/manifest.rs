//! [`Manifest`]: what one push of a sandbox holds. It is the only object that names chunks; a
//! sandbox exists in the bucket once its manifest does, and the manifest is written last.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkId, FileChunks};
use crate::error::{Result, StoreError};

/// The manifest format this crate writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// The largest manifest read from a bucket (a 100 GiB disk with every chunk used is ~15 MiB).
pub const MAX_MANIFEST_LEN: usize = 64 << 20;

/// What a sandbox is, apart from its files: the registry row's shape, as pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Disk size in GiB.
    pub disk_gib: u64,
    /// Idle timeout in seconds (0 = never).
    pub idle_timeout: u64,
    /// The checkpoint the sandbox was stopped at (restored by `cairn start` after a pull).
    pub head_checkpoint: String,
}

/// One file of the sandbox, by its path relative to the sandbox's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path, `/`-separated, no `..` (e.g. `checkpoints/c1/mem.layer`).
    pub path: String,
    /// The checkpoint the file belongs to, if any (named in errors).
    pub checkpoint: Option<String>,
    /// Permission bits.
    pub mode: u32,
    /// Length and chunks.
    #[serde(flatten)]
    pub content: FileChunks,
}

impl FileEntry {
    /// Where the entry is, for messages: `checkpoint "c1" (mem.layer)` or `file disk.img`.
    pub fn place(&self) -> String {
        match &self.checkpoint {
            Some(c) => {
                let file = self.path.rsplit('/').next().unwrap_or(&self.path);
                format!("checkpoint {c:?} ({file})")
            }
            None => format!("file {}", self.path),
        }
    }

    /// The entry's path under `dir`, refusing absolute paths and `..`.
    pub fn path_under(&self, dir: &Path) -> Result<PathBuf> {
        let rel = Path::new(&self.path);
        let ok =
            !self.path.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !ok {
            return Err(StoreError::Corrupt {
                what: "manifest".into(),
                detail: format!("file path {:?} is not a plain relative path", self.path),
            });
        }
        Ok(dir.join(rel))
    }
}

/// One push of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The sandbox's name.
    pub sandbox: String,
    /// The host (its `CAIRN_HOME`'s id) that pushed it.
    pub host: String,
    /// Unix milliseconds of the push.
    pub pushed_at_ms: u64,
    /// The sandbox's directory on the pushing host (paths in its config are rebased from it).
    pub origin_dir: PathBuf,
    /// Its shape and head.
    pub spec: SandboxSpec,
    /// Its files.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Every chunk the manifest names (with repeats).
    pub fn chunk_ids(&self) -> impl Iterator<Item = &ChunkId> {
        self.files
            .iter()
            .flat_map(|f| f.content.chunks.iter().map(|c| &c.id))
    }

    /// Bytes of all files' chunks (the sandbox's logical size, less zeros).
    pub fn logical_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.content.data_bytes()).sum()
    }

    /// Encode as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, integers and vectors always encodes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decode and check a manifest read from `what` (a bucket key).
    pub fn from_json(bytes: &[u8], what: &str) -> Result<Manifest> {
        let corrupt = |detail: String| StoreError::Corrupt {
            what: what.to_string(),
            detail,
        };
        if bytes.len() > MAX_MANIFEST_LEN {
            return Err(corrupt(format!("{} bytes is too large", bytes.len())));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if m.format != MANIFEST_FORMAT {
            return Err(corrupt(format!(
                "format {} (this cairn reads {MANIFEST_FORMAT}; hint: upgrade cairn)",
                m.format
            )));
        }
        cairn_snapshot::checkpoint::validate_name(&m.sandbox)
            .map_err(|e| corrupt(e.to_string()))?;
        for f in &m.files {
            f.path_under(Path::new("/"))?;
            if let Some(c) = &f.checkpoint {
                cairn_snapshot::checkpoint::validate_name(c).map_err(|e| corrupt(e.to_string()))?;
            }
            f.content
                .validate()
                .map_err(|e| corrupt(format!("{}: {e}", f.path)))?;
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{ChunkRef, CHUNK_SIZE};

    fn sample() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            sandbox: "dev".into(),
            host: "h1".into(),
            pushed_at_ms: 1,
            origin_dir: "/h/sandboxes/dev".into(),
            spec: SandboxSpec {
                cpus: 1,
                mem_mib: 256,
                disk_gib: 1,
                idle_timeout: 0,
                head_checkpoint: "c1".into(),
            },
            files: vec![FileEntry {
                path: "checkpoints/c1/mem.layer".into(),
                checkpoint: Some("c1".into()),
                mode: 0o600,
                content: FileChunks {
                    size: 2 * CHUNK_SIZE,
                    chunks: vec![ChunkRef {
                        offset: CHUNK_SIZE,
                        len: CHUNK_SIZE,
                        id: ChunkId::of(b"x"),
                    }],
                },
            }],
        }
    }

    #[test]
    fn round_trips_and_names_its_places() {
        let m = sample();
        assert_eq!(Manifest::from_json(&m.to_json(), "k").unwrap(), m);
        assert_eq!(m.files[0].place(), "checkpoint \"c1\" (mem.layer)");
        assert_eq!(m.logical_bytes(), CHUNK_SIZE);
    }

    #[test]
    fn bad_paths_formats_and_chunks_are_refused() {
        let mut m = sample();
        m.files[0].path = "../etc/passwd".into();
        assert!(Manifest::from_json(&m.to_json(), "k").is_err());
        let mut m = sample();
        m.format = 99;
        let e = Manifest::from_json(&m.to_json(), "k").unwrap_err();
        assert!(e.to_string().contains("upgrade"), "{e}");
        let mut m = sample();
        m.files[0].content.chunks[0].offset = 3 * CHUNK_SIZE;
        assert!(Manifest::from_json(&m.to_json(), "k").is_err());
        assert!(Manifest::from_json(b"{", "k").is_err());
    }
}
