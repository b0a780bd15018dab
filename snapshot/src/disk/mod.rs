//! The layered block store behind virtio-blk: a read-only base image, a chain of frozen delta layers (one
//! per checkpoint) and one writable active delta.
//!
//! A delta is a data file of fixed-size blocks in any order plus a sidecar `<delta>.index` container
//! ([`BlockIndex`]: block number → offset in the data file and CRC64 of the block, or "zero"). Reads take
//! each block from the newest delta that has it, else from the base, else zero (past the base's end).
//! Writes copy-on-write whole blocks into the active delta. A checkpoint freezes the active delta by
//! renaming it (O(dirty blocks) index work, no data copied) and starts a fresh one. Restoring a checkpoint
//! is opening the base plus the layers up to it with a fresh active delta.
//!
//! Block size: 4 KiB by default ([`DEFAULT_BLOCK_SIZE`]), any power of two from 512 B to 1 MiB per disk.
//! Small blocks match the guest's filesystem block, so typical writes need no read-modify-write and a
//! checkpoint's delta holds only what was written; the cost is a larger index (24 bytes per block, 6 MiB
//! per GiB of dirty data) and one lookup per block on reads. 64 KiB blocks cut the index 16× but turn every
//! scattered 4 KiB write into a 64 KiB copy-on-write and inflate deltas up to 16×.

pub mod index;
pub mod layered;
pub mod merge;
pub mod served;

pub use index::{BlockEntry, BlockIndex};
pub use layered::{DiskLayerStats, FrozenLayer, LayeredDisk};
pub use merge::{merge_disk_layer_into_child, DiskMergeStats};
pub use served::{DiskFetch, FileId, ServedDisk};

/// Default block size of a new disk chain.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Upper bound on a block index payload when reading it back.
pub const MAX_DISK_INDEX_PAYLOAD: u64 = 1 << 30;
