//! `cairn gc`: delete the bucket's chunks that no manifest names.
//!
//! Safe against a concurrent push by order and age: the chunks are listed *before* the
//! manifests, so a manifest written before the manifest listing protects its chunks; a chunk
//! uploaded by a push whose manifest is not written yet is younger than the grace period, and
//! is kept. A push that reuses an old, unreferenced chunk that `gc` deletes meanwhile finds it
//! missing when it lists the chunks again after its manifest, and uploads it again.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::ObjectStoreExt;

use crate::error::{Result, StoreError};
use crate::remote::Remote;

/// The default grace period: chunks younger than this are never deleted.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What [`Remote::gc`] did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GcReport {
    /// Manifests read.
    pub manifests: usize,
    /// Chunks in the bucket.
    pub chunks: usize,
    /// Chunks some manifest names.
    pub referenced: usize,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub kept_young: usize,
    /// Chunks deleted.
    pub deleted: usize,
    /// Bytes deleted.
    pub bytes_deleted: u64,
}

impl Remote {
    /// Delete every chunk no manifest names and older than `grace`.
    pub fn gc(&self, grace: Duration, dry_run: bool) -> Result<GcReport> {
        self.rt.block_on(async {
            let chunks = self.list_chunks().await?;
            let mut referenced = HashSet::new();
            let names = self.sandbox_names().await?;
            for name in &names {
                if let Some((m, _)) = self.read_manifest(name).await? {
                    referenced.extend(m.chunk_ids().cloned());
                }
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs() as i64;
            let cutoff = now - grace.as_secs() as i64;
            let mut r = GcReport {
                manifests: names.len(),
                chunks: chunks.len(),
                ..GcReport::default()
            };
            for (id, (modified, size)) in chunks {
                if referenced.contains(&id) {
                    r.referenced += 1;
                } else if modified > cutoff {
                    r.kept_young += 1;
                } else {
                    if !dry_run {
                        let key = self.chunk_key(&id);
                        match self.s3.delete(&key).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(StoreError::bucket(format!("delete {key}"))(e)),
                        }
                    }
                    r.deleted += 1;
                    r.bytes_deleted += size;
                }
            }
            Ok(r)
        })
    }
}
