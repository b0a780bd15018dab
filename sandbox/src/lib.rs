//! The library behind the `cairn` CLI: a registry of sandboxes under `CAIRN_HOME`, their
//! lifecycle (create, stop, start, rm, checkpoints) over `cairn-vmm`'s REST API, the default
//! guest image, per-sandbox locks and the auto-idle watcher. See `docs/sandbox.md`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

pub mod build_answer;
pub mod content_key;
pub mod detached;
pub mod doctor;
pub mod fork;
pub mod golden;
pub mod host_fit;
pub mod identity;
pub mod idle;
pub mod image;
pub mod image_store;
pub mod lease_renew;
pub mod lock;
pub mod logs;
pub mod mcp;
pub mod net;
pub mod oci;
pub mod phase_times;
pub mod ports;
pub mod prune;
pub mod reconcile;
pub mod registry;
pub mod rootdisk;
pub mod sandbox;
pub mod serve;
pub mod sessions;
pub mod store_lazy;
pub mod store_sync;
pub mod vmm_api;
