//! [`Remote`]: a bucket of an S3-compatible object store, laid out as
//!
//! ```text
//! <prefix>/chunks/<ab>/<id>                    chunk bytes, named by their BLAKE3 hash
//! <prefix>/sandboxes/<name>/manifest.json     the sandbox's last push (written last, conditionally)
//! <prefix>/sandboxes/<name>/lease.json        which host may run it, until when
//! ```
//!
//! The client is `object_store`'s S3 store, configured from the usual `AWS_*` environment
//! variables. Conditional writes (`If-None-Match: *`, `If-Match: <etag>`) guard the manifest and
//! the lease.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use crate::chunk::{ChunkId, ChunkRef};
use crate::error::{Result, StoreError};
use crate::local::LocalStore;
use crate::manifest::{FileEntry, Manifest};

/// Requests in flight at once for chunk transfers.
const PARALLEL: usize = 8;

/// `CAIRN_STORE`: a bucket and a key prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// The bucket.
    pub bucket: String,
    /// Key prefix inside it (no leading or trailing `/`; may be empty).
    pub prefix: String,
}

impl StoreUrl {
    /// Parse `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<StoreUrl> {
        let bad = || StoreError::BadUrl(url.to_string());
        let rest = url.strip_prefix("s3://").ok_or_else(bad)?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        let prefix = prefix.trim_matches('/').to_string();
        let prefix_ok = prefix
            .split('/')
            .all(|p| p.is_empty() && prefix.is_empty() || !p.is_empty() && p != "." && p != "..");
        if !bucket_ok || !prefix_ok {
            return Err(bad());
        }
        Ok(StoreUrl {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// `CAIRN_STORE`, if set and not empty.
    pub fn from_env() -> Result<Option<StoreUrl>> {
        match std::env::var("CAIRN_STORE") {
            Ok(v) if !v.is_empty() => Ok(Some(StoreUrl::parse(&v)?)),
            _ => Ok(None),
        }
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// A file of a sandbox to push: where it is here, and how it is named in the manifest.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Its path here.
    pub path: PathBuf,
    /// Its path relative to the sandbox's directory.
    pub rel: String,
    /// The checkpoint it belongs to, if any.
    pub checkpoint: Option<String>,
}

/// What [`Remote::push`] did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PushReport {
    /// Files in the manifest.
    pub files: usize,
    /// Distinct chunks the sandbox has.
    pub chunks: usize,
    /// Chunks uploaded (the bucket lacked them).
    pub chunks_uploaded: usize,
    /// Bytes uploaded in chunks.
    pub bytes_uploaded: u64,
    /// Bytes of non-zero chunks in the sandbox's files.
    pub logical_bytes: u64,
    /// Seconds the push took.
    pub seconds: f64,
}

/// What [`Remote::pull`] did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PullReport {
    /// Files written.
    pub files: usize,
    /// Chunks fetched from the bucket.
    pub chunks_fetched: usize,
    /// Bytes fetched from the bucket.
    pub bytes_fetched: u64,
    /// Chunks found in the local chunk cache.
    pub chunks_cached: usize,
    /// Bytes of non-zero chunks written.
    pub logical_bytes: u64,
    /// Seconds the pull took.
    pub seconds: f64,
}

/// Where a chunk to push is read from.
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    offset: u64,
    len: u64,
    /// For a file pulled lazily (it may not be here): the sandbox and the file's place, for
    /// the error when neither the file nor the cache has the chunk.
    lazy: Option<(String, String)>,
}

/// An open bucket.
#[derive(Debug)]
pub struct Remote {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) s3: Arc<dyn ObjectStore>,
    pub(crate) url: StoreUrl,
}

impl Remote {
    /// Open `url` with endpoint, region and credentials from the `AWS_*` environment variables
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...). An
    /// `http://` endpoint is allowed (a server on this host); the region defaults to `us-east-1`.
    pub fn open(url: &StoreUrl) -> Result<Remote> {
        Remote::open_with(url, &[])
    }

    /// [`Remote::open`], with `vars` (`AWS_*` names and values) taking the place of the
    /// environment's variables of those names.
    pub fn open_with(url: &StoreUrl, vars: &[(String, String)]) -> Result<Remote> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let var = |k: &str| {
            vars.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(k).ok())
        };
        let mut b = AmazonS3Builder::from_env();
        for (k, v) in vars {
            if let Ok(key) = k.to_ascii_lowercase().parse() {
                b = b.with_config(key, v);
            }
        }
        b = b.with_bucket_name(&url.bucket);
        let endpoint = var("AWS_ENDPOINT_URL_S3")
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .unwrap_or_default();
        if endpoint.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        if var("AWS_REGION").is_none() && var("AWS_DEFAULT_REGION").is_none() {
            b = b.with_region("us-east-1");
        }
        let s3 = b
            .build()
            .map_err(StoreError::bucket(format!("open {url}")))?;
        Ok(Remote {
            rt,
            s3: Arc::new(s3),
            url: url.clone(),
        })
    }

    /// The store's URL.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    pub(crate) fn key(&self, rel: &str) -> Key {
        if self.url.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.url.prefix))
        }
    }

    pub(crate) fn chunk_key(&self, id: &ChunkId) -> Key {
        let s = id.as_str();
        self.key(&format!("chunks/{}/{s}", &s[..2]))
    }

    pub(crate) fn manifest_key(&self, sandbox: &str) -> Key {
        self.key(&format!("sandboxes/{sandbox}/manifest.json"))
    }

    /// Every object under `<prefix>/<under>`.
    async fn list_all(&self, under: &str) -> Result<Vec<object_store::ObjectMeta>> {
        let prefix = self.key(under);
        let what = format!("list {prefix}");
        self.s3
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(StoreError::bucket(what))
    }

    /// The chunks in the bucket, with their age in seconds.
    pub(crate) async fn list_chunks(&self) -> Result<HashMap<ChunkId, (i64, u64)>> {
        let metas = self.list_all("chunks").await?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                Some((ChunkId::parse(name)?, (m.last_modified.timestamp(), m.size)))
            })
            .collect())
    }

    /// The sandboxes that have a manifest in the bucket.
    pub fn list_sandboxes(&self) -> Result<Vec<String>> {
        self.rt.block_on(self.sandbox_names())
    }

    pub(crate) async fn sandbox_names(&self) -> Result<Vec<String>> {
        let metas = self.list_all("sandboxes").await?;
        let mut names: Vec<String> = metas
            .into_iter()
            .filter(|m| m.location.filename() == Some("manifest.json"))
            .filter_map(|m| {
                let parts: Vec<_> = m.location.parts().collect();
                let n = parts.len();
                (n >= 2).then(|| parts[n - 2].as_ref().to_string())
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// The sandbox's manifest and its version, if it has one.
    pub fn manifest(&self, sandbox: &str) -> Result<Option<(Manifest, UpdateVersion)>> {
        self.rt.block_on(self.read_manifest(sandbox))
    }

    pub(crate) async fn read_manifest(
        &self,
        sandbox: &str,
    ) -> Result<Option<(Manifest, UpdateVersion)>> {
        let key = self.manifest_key(sandbox);
        let Some((bytes, version)) = self.get_versioned(&key).await? else {
            return Ok(None);
        };
        Ok(Some((Manifest::from_json(&bytes, key.as_ref())?, version)))
    }

    /// An object's bytes and the version a conditional write over it must name; `None` when
    /// there is no such object (the manifest and the lease are read this way).
    pub(crate) async fn get_versioned(
        &self,
        key: &Key,
    ) -> Result<Option<(bytes::Bytes, UpdateVersion)>> {
        let got = match self.s3.get(key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(StoreError::bucket(format!("read {key}"))(e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(StoreError::bucket(format!("read {key}")))?;
        Ok(Some((bytes, version)))
    }

    /// Push a stopped sandbox: chunk its files (through `local`'s index), upload the chunks the
    /// bucket lacks, then write the manifest, conditionally on the manifest read before (or on
    /// there being none), so a concurrent push of the same sandbox is refused, never merged.
    /// Last, the chunks are listed again and any that went missing meanwhile (a `gc` racing a
    /// push that reused an unreferenced chunk) are uploaded again.
    pub fn push(
        &self,
        local: &LocalStore,
        manifest: Manifest,
        files: &[LocalFile],
    ) -> Result<PushReport> {
        self.push_with(local, manifest, files, &HashMap::new())
    }

    /// [`Remote::push`], with the chunks of some files already known (`known`, by path): the
    /// files of a lazily pulled sandbox that are not all here. They are named as `known` says,
    /// not read; a chunk of theirs the bucket lacks is uploaded from the chunk cache or from
    /// the file where it is there (checked against its name), and is an error otherwise.
    pub fn push_with(
        &self,
        local: &LocalStore,
        mut manifest: Manifest,
        files: &[LocalFile],
        known: &HashMap<PathBuf, FileEntry>,
    ) -> Result<PushReport> {
        let t0 = Instant::now();
        let mut sources: HashMap<ChunkId, Source> = HashMap::new();
        manifest.files.clear();
        for f in files {
            let lazy = known.get(&f.path);
            let content = match lazy {
                Some(e) => e.content.clone(),
                None => local.chunks_of(&f.path)?,
            };
            let meta = std::fs::metadata(&f.path).map_err(StoreError::io("stat", &f.path))?;
            for c in &content.chunks {
                sources.entry(c.id.clone()).or_insert_with(|| Source {
                    path: f.path.clone(),
                    offset: c.offset,
                    len: c.len,
                    lazy: lazy.map(|e| (manifest.sandbox.clone(), e.place())),
                });
            }
            manifest.files.push(FileEntry {
                path: f.rel.clone(),
                checkpoint: f.checkpoint.clone(),
                mode: meta.permissions().mode() & 0o7777,
                content,
            });
        }
        let name = manifest.sandbox.clone();
        self.rt.block_on(async {
            let before = self.read_manifest(&name).await?;
            let present = self.list_chunks().await?;
            let missing: Vec<_> = sources
                .iter()
                .filter(|(id, _)| !present.contains_key(*id))
                .collect();
            let (uploaded, bytes) = self.upload(local, &missing).await?;
            crate::test_pause::at("manifest");
            self.write_manifest(&manifest, before.map(|(_, v)| v))
                .await?;
            let now = self.list_chunks().await?;
            let lost: Vec<_> = sources
                .iter()
                .filter(|(id, _)| !now.contains_key(*id))
                .collect();
            let (again, again_bytes) = self.upload(local, &lost).await?;
            Ok(PushReport {
                files: manifest.files.len(),
                chunks: sources.len(),
                chunks_uploaded: uploaded + again,
                bytes_uploaded: bytes + again_bytes,
                logical_bytes: manifest.logical_bytes(),
                seconds: t0.elapsed().as_secs_f64(),
            })
        })
    }

    /// Write `manifest` if the bucket's manifest of the sandbox is still `expected` (`None`: if
    /// it has none); [`StoreError::Conflict`] otherwise.
    pub fn put_manifest(&self, manifest: &Manifest, expected: Option<UpdateVersion>) -> Result<()> {
        self.rt.block_on(self.write_manifest(manifest, expected))
    }

    async fn write_manifest(
        &self,
        manifest: &Manifest,
        expected: Option<UpdateVersion>,
    ) -> Result<()> {
        let mode = match expected {
            Some(v) => PutMode::Update(v),
            None => PutMode::Create,
        };
        let key = self.manifest_key(&manifest.sandbox);
        let put = self
            .s3
            .put_opts(&key, PutPayload::from(manifest.to_json()), mode.into())
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                Err(StoreError::Conflict(manifest.sandbox.clone()))
            }
            Err(e) => Err(StoreError::bucket(format!("write {key}"))(e)),
        }
    }

    async fn upload(
        &self,
        local: &LocalStore,
        chunks: &[(&ChunkId, &Source)],
    ) -> Result<(usize, u64)> {
        let results: Vec<u64> =
            futures::stream::iter(chunks.iter().map(|(id, src)| {
                let (id, path, off, len) = ((*id).clone(), src.path.clone(), src.offset, src.len);
                let lazy = src.lazy.clone();
                async move {
                    let cached = match lazy {
                        Some(_) => local.cached(&id),
                        None => None,
                    };
                    let buf = match cached {
                        Some(b) => b,
                        None => {
                            let mut buf = vec![0u8; len as usize];
                            File::open(&path)
                                .and_then(|f| f.read_exact_at(&mut buf, off))
                                .map_err(StoreError::io("read", &path))?;
                            buf
                        }
                    };
                    if !id.matches(&buf) {
                        if let Some((sandbox, place)) = lazy {
                            // Pulled lazily and never fetched here: only the bucket had it.
                            return Err(StoreError::BadChunk {
                                sandbox,
                                place,
                                chunk: id.to_string(),
                                problem: "is missing from the store and was never fetched here (the sandbox was pulled lazily)",
                            });
                        }
                        return Err(StoreError::Corrupt {
                            what: path.display().to_string(),
                            detail: format!("changed while being pushed (chunk at {off})"),
                        });
                    }
                    let key = self.chunk_key(&id);
                    // Chunks are named by their content: overwriting one writes the same bytes.
                    self.s3
                        .put_opts(&key, PutPayload::from(buf), PutOptions::default())
                        .await
                        .map_err(StoreError::bucket(format!("upload {key}")))?;
                    crate::test_pause::chunk_uploaded();
                    Ok(len)
                }
            }))
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        Ok((results.len(), results.iter().sum()))
    }

    /// Pull sandbox `name` into `dest` (a new, empty directory): every file of its manifest,
    /// sparse, each chunk taken from `local`'s cache or fetched and checked against its name.
    /// A chunk that is missing or does not match fails the pull, naming the sandbox and the
    /// checkpoint; `dest` is then left for the caller to remove.
    pub fn pull(
        &self,
        local: &LocalStore,
        name: &str,
        dest: &Path,
    ) -> Result<(Manifest, PullReport)> {
        self.pull_with(local, name, dest, &|_| false)
    }

    /// [`Remote::pull`], but the files `lazy` picks are only made (sparse, their full length,
    /// no data): their chunks are fetched later, on demand ([`Remote::fetch_chunk`]).
    pub fn pull_with(
        &self,
        local: &LocalStore,
        name: &str,
        dest: &Path,
        lazy: &dyn Fn(&FileEntry) -> bool,
    ) -> Result<(Manifest, PullReport)> {
        let t0 = Instant::now();
        let (manifest, _) = self
            .manifest(name)?
            .ok_or_else(|| StoreError::NoSuchSandbox(name.to_string()))?;
        let mut report = PullReport::default();
        for entry in &manifest.files {
            self.rt.block_on(self.pull_file(
                local,
                &manifest.sandbox,
                entry,
                dest,
                lazy(entry),
                &mut report,
            ))?;
        }
        local.trim_cache(crate::local::cache_limit_from_env());
        report.files = manifest.files.len();
        report.logical_bytes = manifest.logical_bytes();
        report.seconds = t0.elapsed().as_secs_f64();
        Ok((manifest, report))
    }

    /// Chunk `c` of `entry` (of `sandbox`'s manifest): from `local`'s cache, else fetched,
    /// checked against its name and cached. Also says whether it was fetched.
    pub fn fetch_chunk(
        &self,
        local: &LocalStore,
        sandbox: &str,
        entry: &FileEntry,
        c: &ChunkRef,
    ) -> Result<(Vec<u8>, bool)> {
        let (bytes, fetched) = self.rt.block_on(self.get_chunk(local, sandbox, entry, c))?;
        if fetched {
            local.cache(&c.id, &bytes)?;
        }
        Ok((bytes, fetched))
    }

    async fn get_chunk(
        &self,
        local: &LocalStore,
        sandbox: &str,
        entry: &FileEntry,
        c: &ChunkRef,
    ) -> Result<(Vec<u8>, bool)> {
        if let Some(bytes) = local.cached(&c.id) {
            return Ok((bytes, false));
        }
        let key = self.chunk_key(&c.id);
        let bad = |problem| StoreError::BadChunk {
            sandbox: sandbox.to_string(),
            place: entry.place(),
            chunk: c.id.to_string(),
            problem,
        };
        let bytes = match self.s3.get(&key).await {
            Ok(g) => g.bytes().await,
            Err(e) => Err(e),
        };
        let bytes = match bytes {
            Ok(b) => b.to_vec(),
            Err(object_store::Error::NotFound { .. }) => {
                return Err(bad("is missing from the store"))
            }
            Err(e) => return Err(StoreError::bucket(format!("fetch {key}"))(e)),
        };
        if bytes.len() as u64 != c.len || !c.id.matches(&bytes) {
            return Err(bad("does not match its hash"));
        }
        Ok((bytes, true))
    }

    async fn pull_file(
        &self,
        local: &LocalStore,
        sandbox: &str,
        entry: &FileEntry,
        dest: &Path,
        lazy: bool,
        report: &mut PullReport,
    ) -> Result<()> {
        let path = entry.path_under(dest)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(StoreError::io("create", dir))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StoreError::io("create", &path))?;
        file.set_len(entry.content.size)
            .map_err(StoreError::io("size", &path))?;
        let chunks = if lazy {
            &[][..]
        } else {
            &entry.content.chunks[..]
        };
        let mut fetches = futures::stream::iter(chunks.iter().map(|c| async move {
            let (bytes, fetched) = self.get_chunk(local, sandbox, entry, c).await?;
            Ok::<_, StoreError>((c, bytes, fetched))
        }))
        .buffer_unordered(PARALLEL);
        let mut seen = HashSet::new();
        while let Some(r) = fetches.next().await {
            let (c, bytes, fetched) = r?;
            file.write_all_at(&bytes, c.offset)
                .map_err(StoreError::io("write", &path))?;
            if fetched {
                report.chunks_fetched += 1;
                report.bytes_fetched += c.len;
                if seen.insert(c.id.clone()) {
                    local.cache(&c.id, &bytes)?;
                }
            } else {
                report.chunks_cached += 1;
            }
        }
        file.set_permissions(std::fs::Permissions::from_mode(entry.mode & 0o777))
            .map_err(StoreError::io("chmod", &path))?;
        file.sync_all().map_err(StoreError::io("fsync", &path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_and_bad_ones_are_refused() {
        let u = StoreUrl::parse("s3://cairn-test/a/b/").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str()),
            ("cairn-test", "a/b")
        );
        let u = StoreUrl::parse("s3://bucket").unwrap();
        assert_eq!(u.prefix, "");
        for bad in [
            "http://x/y",
            "s3://",
            "s3://Bad_Bucket/x",
            "s3://ok-bucket/a/../b",
            "s3://ok-bucket/a//b",
        ] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
