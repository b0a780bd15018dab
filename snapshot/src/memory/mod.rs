//! Memory layers: a Full base plus Diff layers, each a guest-memory-sized sparse file, and their page indexes.
//!
//! A layer file holds guest memory at its own offsets (the VMM's linear memory offset space: regions laid
//! end to end, as Firecracker lays out its snapshot files). A Full layer has every page (untouched pages
//! are holes, so they read as zero); a Diff layer has only the pages dirtied since its parent and is the
//! same size. This is exactly Firecracker's Full/Diff memory file format, so either file can be handed to
//! Firecracker, and a Diff can be layered over a Full.
//!
//! Which pages a layer holds is recorded in a sidecar `<layer>.index` container ([`LayerIndex`]). Restore
//! never merges files: [`LayerChain::resolve`] tells the VMM which ranges to map from which file.
//!
//! - [`index`]: [`PageIndex`] (sorted, coalesced page ranges) and the sidecar [`LayerIndex`].
//! - [`layer`]: writing layer files (the VMM supplies the bytes; a safe slice-based writer for tests).
//! - [`chain`]: [`LayerChain`] and the restore mapping plan.
//! - [`checksum`]: per-chunk CRC-64s of a layer's data, sealed into its index and verified after restore.
//! - [`merge`]: folding a deleted checkpoint's layer into its child.
//! - [`served`]: the handshake of memory served on first touch by a page server.
//! - [`uffd`]: the userfaultfd ABI that the VMM and the page server share.

pub mod chain;
pub mod checksum;
pub mod index;
pub mod layer;
pub mod merge;
pub mod served;
pub mod streamed_crcs;
pub mod uffd;

pub use chain::{LayerChain, MappedRange, MemoryLayer};
pub use checksum::{seal_layer, verify_layer, CHUNK_PAGES};
pub use index::{LayerIndex, PageIndex, PageRange};
pub use layer::{
    index_path, open_layer, write_layer_from_slice, write_layer_from_slice_to, write_layer_with,
};
pub use merge::{merge_into_child, MergeStats};
pub use streamed_crcs::StreamedCrcs;

/// Page size of every memory layer and index.
pub const PAGE_SIZE: u64 = 4096;
/// Upper bound on a page index's payload when reading it back (64 MiB: 4 M ranges).
pub const MAX_INDEX_PAYLOAD: u64 = 64 << 20;
