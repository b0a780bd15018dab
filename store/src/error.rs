//! [`StoreError`]: why a chunk, manifest, lease or bucket operation failed.

use std::path::{Path, PathBuf};

/// Why a store operation failed. Messages are one line and end with a hint where one helps.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A local file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `CAIRN_STORE` is not a usable `s3://bucket/prefix` URL.
    #[error("CAIRN_STORE={0:?} is not s3://BUCKET[/PREFIX] (hint: e.g. CAIRN_STORE=s3://cairn/prod; endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION)")]
    BadUrl(String),
    /// No store is configured.
    #[error("no store configured (hint: set CAIRN_STORE=s3://BUCKET/PREFIX and the AWS_* variables; docs/storage.md)")]
    NotConfigured,
    /// The bucket refused or the request failed.
    #[error("{what}")]
    Bucket {
        /// What was being done (names the object).
        what: String,
        /// The client's error (boxed: it is large, and this error travels up the CLI's).
        #[source]
        source: Box<object_store::Error>,
    },
    /// The bucket has no manifest for the sandbox.
    #[error("the store has no sandbox {0:?} (hint: `cairn push {0}` on the host that has it)")]
    NoSuchSandbox(String),
    /// A manifest in the bucket or a local index cannot be decoded.
    #[error("{what}: {detail}")]
    Corrupt {
        /// What was being read.
        what: String,
        /// Why it is refused.
        detail: String,
    },
    /// A chunk fetched from the bucket is missing or does not hash to its name.
    #[error("sandbox {sandbox:?}, {place}: chunk {chunk} {problem} (hint: push the sandbox again from a host that has it, or `cairn pull` again if a push was in flight)")]
    BadChunk {
        /// The sandbox being pulled.
        sandbox: String,
        /// `checkpoint "c1" (mem.layer)` or `file disk.img`.
        place: String,
        /// The chunk's name.
        chunk: String,
        /// `is missing from the store` or `does not match its hash`.
        problem: &'static str,
    },
    /// Another push changed the manifest between our read and our write.
    #[error("sandbox {0:?} was pushed by another host meanwhile (hint: pull it first, or push again to overwrite)")]
    Conflict(String),
    /// The lease is held by another host.
    #[error("sandbox {sandbox:?} is leased by host {holder} for {secs_left} s more (hint: stop it there and `cairn push {sandbox}`, or wait for the lease to expire)")]
    Leased {
        /// The sandbox.
        sandbox: String,
        /// The holder's host id.
        holder: String,
        /// Seconds until it expires.
        secs_left: u64,
    },
    /// The async runtime could not be started.
    #[error("start the I/O runtime: {0}")]
    Runtime(std::io::Error),
}

impl StoreError {
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| StoreError::Io { what, path, source }
    }

    pub(crate) fn bucket(what: impl Into<String>) -> impl FnOnce(object_store::Error) -> Self {
        let what = what.into();
        move |source| StoreError::Bucket {
            what,
            source: Box::new(source),
        }
    }
}

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
