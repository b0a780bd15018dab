//! Named checkpoints: their metadata ([`CheckpointMeta`], `meta.json`) and the [`CheckpointStore`] that
//! creates, lists, chains and deletes them in one directory.
//!
//! A checkpoint directory `<root>/<name>/` holds:
//! - `state`: every device's and vCPU's Persist state, a [`crate::file::FileKind::State`] container;
//! - `mem.layer` + `mem.layer.index`: the memory layer (Full for a base, Diff otherwise);
//! - `disk.<drive>.layer` + `disk.<drive>.layer.index`: one disk delta per drive;
//! - `meta.json`: written last, atomically. A directory without it is an incomplete checkpoint and is
//!   ignored (and removed by [`CheckpointStore::cleanup_incomplete`]).
//!
//! Beside them, `<root>/.active/` holds the running VM's active disk deltas and `HEAD` (the
//! checkpoint they sit on). [`CheckpointStore`] is the only owner of this layout.
//!
//! [`CheckpointStore::fork_chain`] starts another store from one checkpoint, sharing its files.

pub mod fork;
pub mod meta;
pub mod store;

pub use fork::{ForkReport, BASES_FILE};
pub use meta::{now_unix_ms, CheckpointMeta, DiskMeta, MemoryMeta, META_FORMAT_VERSION};
pub use store::{
    disk_layer_file, validate_name, CheckpointStore, DeleteReport, ACTIVE_DIR, HEAD_FILE,
    MEM_LAYER_FILE, META_FILE, STATE_FILE,
};
