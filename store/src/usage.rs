//! `cairn df`: logical against stored size, per sandbox and overall.
//!
//! Logical bytes are what a sandbox's files hold, each file counted in full for each sandbox
//! (zero chunks and holes left out): what copying the sandbox would cost. Stored bytes are the
//! bytes of the distinct chunks among them: what the content-addressed form costs, in the bucket
//! after a push and in the chunk cache after a pull. Forks and sandboxes of one image share most
//! chunks, so the total's stored bytes grow by what each of them changed.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::chunk::{ChunkId, FileChunks, CHUNK_SIZE};
use crate::error::Result;
use crate::local::LocalStore;

/// A sandbox and the files that make it up (its checkpoints' layers and its base disk image).
#[derive(Debug, Clone)]
pub struct SandboxFiles {
    /// The sandbox's name.
    pub name: String,
    /// Its files.
    pub files: Vec<PathBuf>,
    /// The chunks of those of its files that are not all here (a lazily pulled sandbox's, as
    /// its `lazy.json` names them): counted as named, not hashed.
    pub known: HashMap<PathBuf, FileChunks>,
}

/// Sizes of one sandbox or of all.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    /// Bytes of non-zero chunks, each file counted in full.
    pub logical_bytes: u64,
    /// Bytes of the distinct chunks.
    pub stored_bytes: u64,
    /// `logical_bytes / stored_bytes` (1 when nothing is stored).
    pub dedup_ratio: f64,
    /// Distinct chunks.
    pub chunks: u64,
}

/// One sandbox's line of `cairn df`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SandboxUsage {
    /// The sandbox.
    pub name: String,
    /// Its sizes (its own chunks deduplicated among themselves).
    #[serde(flatten)]
    pub usage: Usage,
}

/// What `cairn df --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DfReport {
    /// Bytes in a chunk.
    pub chunk_size: u64,
    /// Each sandbox.
    pub sandboxes: Vec<SandboxUsage>,
    /// All sandboxes together (chunks shared between sandboxes counted once).
    pub total: Usage,
}

#[derive(Default)]
struct Tally {
    logical: u64,
    distinct: HashMap<ChunkId, u64>,
}

impl Tally {
    fn usage(&self) -> Usage {
        let stored: u64 = self.distinct.values().sum();
        Usage {
            logical_bytes: self.logical,
            stored_bytes: stored,
            dedup_ratio: if stored == 0 {
                1.0
            } else {
                self.logical as f64 / stored as f64
            },
            chunks: self.distinct.len() as u64,
        }
    }
}

/// Sizes of `sandboxes`, hashing each file once (then from `local`'s index).
pub fn df(local: &LocalStore, sandboxes: &[SandboxFiles]) -> Result<DfReport> {
    let mut total = Tally::default();
    let mut out = Vec::new();
    for sb in sandboxes {
        let mut tally = Tally::default();
        for f in &sb.files {
            let chunks = match sb.known.get(f) {
                Some(c) => c.clone(),
                None => local.chunks_of(f)?,
            };
            for c in chunks.chunks {
                tally.logical += c.len;
                total.logical += c.len;
                total.distinct.insert(c.id.clone(), c.len);
                tally.distinct.insert(c.id, c.len);
            }
        }
        out.push(SandboxUsage {
            name: sb.name.clone(),
            usage: tally.usage(),
        });
    }
    Ok(DfReport {
        chunk_size: CHUNK_SIZE,
        sandboxes: out,
        total: total.usage(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn two_forks_sharing_a_layer_dedup_to_about_half() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalStore::in_home(dir.path());
        let base = dir.path().join("base");
        let f = std::fs::File::create(&base).unwrap();
        for i in 0..8u8 {
            f.write_all_at(&vec![i + 1; CHUNK_SIZE as usize], u64::from(i) * CHUNK_SIZE)
                .unwrap();
        }
        // Each fork: the shared base (a hard link) plus one chunk of its own.
        let mut sandboxes = Vec::new();
        for n in 0..2u8 {
            let link = dir.path().join(format!("base{n}"));
            std::fs::hard_link(&base, &link).unwrap();
            let own = dir.path().join(format!("own{n}"));
            std::fs::write(&own, vec![100 + n; CHUNK_SIZE as usize]).unwrap();
            sandboxes.push(SandboxFiles {
                name: format!("f{n}"),
                files: vec![link, own],
                known: HashMap::new(),
            });
        }
        let r = df(&local, &sandboxes).unwrap();
        assert_eq!(r.sandboxes[0].usage.logical_bytes, 9 * CHUNK_SIZE);
        assert_eq!(r.sandboxes[0].usage.stored_bytes, 9 * CHUNK_SIZE);
        assert_eq!(r.total.logical_bytes, 18 * CHUNK_SIZE);
        assert_eq!(r.total.stored_bytes, 10 * CHUNK_SIZE);
        assert!((r.total.dedup_ratio - 1.8).abs() < 1e-9);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["total"]["stored_bytes"], 10 * CHUNK_SIZE);
        assert_eq!(json["sandboxes"][1]["name"], "f1");
        assert_eq!(json["sandboxes"][1]["logical_bytes"], 9 * CHUNK_SIZE);
    }
}
