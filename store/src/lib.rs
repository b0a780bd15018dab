//! cairn-store: checkpoint layers as content-addressed chunks, and their sync with an
//! S3-compatible bucket.
//!
//! - [`chunk`]: a file cut into 1 MiB aligned chunks named by BLAKE3; zeros are not stored.
//! - [`local`]: `$CAIRN_HOME/store/`: the host id, the chunk index (hash each file once) and the
//!   chunk cache that pulls fill.
//! - [`usage`]: `cairn df`, logical against stored (deduplicated) bytes.
//! - [`manifest`]: what one push of a sandbox holds; the only object that names chunks.
//! - [`remote`]: the bucket (`CAIRN_STORE=s3://bucket/prefix`, `AWS_*` variables): push, pull.
//! - [`gc`], [`lease`]: deleting unreferenced chunks; one host at a time per sandbox.
//! - [`lazy`], [`page_server`], [`disk_server`]: a lazily pulled sandbox's memory, fetched on
//!   first touch (userfaultfd), and its disk, fetched on first read (the VMM asks a block
//!   server); both completed in the background. [`presence`] remembers what is here across
//!   starts.
//!
//! The checkpoint files that restore maps stay as they are (restore stays lazy and as fast):
//! chunks are the form a sandbox takes in the bucket and in the cache, and the unit of `df`'s
//! accounting. Which files make up a sandbox is the sandbox crate's business; this crate knows
//! files, chunks and manifests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod chunk;
pub mod disk_server;
pub mod error;
pub mod gc;
pub mod lazy;
pub mod lease;
pub mod local;
pub mod manifest;
pub mod page_server;
pub mod presence;
pub mod remote;
mod test_pause;
pub mod usage;

pub use error::{Result, StoreError};
pub use local::LocalStore;
pub use manifest::{Manifest, SandboxSpec};
pub use remote::{LocalFile, PullReport, PushReport, Remote, StoreUrl};
pub use usage::{df, DfReport, SandboxFiles};
