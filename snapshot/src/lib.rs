//! cairn's state and file formats.
//!
//! This crate knows nothing of KVM or of devices. It defines:
//! - [`Persist`], the one trait every stateful component implements;
//! - [`file`]: the checksummed, versioned container for state files and indexes;
//! - [`durable`]: making new files durable, one or several together;
//! - [`memory`]: memory layers (a Full base plus Diff layers) and the page index;
//! - [`disk`]: the layered block store for disks (a base image plus per-checkpoint deltas);
//! - [`checkpoint`]: checkpoint metadata and the store of named checkpoints.
//!
//! The byte-by-byte formats are in `docs/checkpoint-format.md`.
//!
//! # A checkpoint and a restore, end to end
//!
//! ```
//! use cairn_snapshot::checkpoint::*;
//! use cairn_snapshot::disk::LayeredDisk;
//! use cairn_snapshot::file::{self, FileKind};
//! use cairn_snapshot::memory::{write_layer_with, PageIndex, PAGE_SIZE};
//! use std::os::unix::fs::FileExt;
//!
//! # fn main() -> cairn_snapshot::Result<()> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let rootfs = tmp.path().join("rootfs.img");
//! # std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
//! let guest = vec![1u8; 64 * PAGE_SIZE as usize]; // the VMM's guest memory
//! let mut disk = LayeredDisk::open(&rootfs, &[], tmp.path().join("rootfs.active"))?;
//! disk.write_at(4096, b"hello")?;
//!
//! let store = CheckpointStore::open(tmp.path().join("checkpoints"))?;
//! let dir = store.create_dir_for("base")?;
//! file::save(&dir.join(STATE_FILE), FileKind::State, &("vm state", 42u32))?;
//! // Pages to write: all of them for a base; for a diff, from KVM's dirty bitmaps:
//! // `let mut pages = PageIndex::new(); pages.add_bitmap(&bitmap, region_offset / PAGE_SIZE);`
//! let pages = PageIndex::full(64);
//! write_layer_with(&dir.join(MEM_LAYER_FILE), guest.len() as u64, &pages, |f, off, len| {
//!     f.write_all_at(&guest[off as usize..(off + len) as usize], off) // the VMM: pwrite from its mmap
//! })?;
//! let delta = disk.checkpoint(&dir.join(disk_layer_file("rootfs")))?;
//! store.commit(&CheckpointMeta {
//!     name: "base".into(),
//!     parent: None,
//!     created_unix_ms: now_unix_ms(),
//!     format_version: META_FORMAT_VERSION,
//!     cpu_template: None,
//!     memory: MemoryMeta { dirty_mib: pages.byte_len() as f64 / 1048576.0, layer_file: MEM_LAYER_FILE.into() },
//!     disks: vec![DiskMeta {
//!         drive_id: "rootfs".into(),
//!         delta_mib: delta.bytes as f64 / 1048576.0,
//!         layer_file: disk_layer_file("rootfs"),
//!     }],
//!     pause_ms: 0.1,
//!     write_ms: 1.0,
//!     total_ms: 0.0,
//!     files: Default::default(),
//! })?;
//!
//! // Restore: the mapping plan for memory, and the disk with a fresh active delta.
//! let plan = store.memory_chain("base")?.resolve();
//! assert_eq!(plan.len(), 1); // one mmap of the whole Full layer
//! let layers = store.disk_layers("base", "rootfs")?;
//! let restored = LayeredDisk::open(&rootfs, &layers, tmp.path().join("rootfs.active2"))?;
//! let mut buf = [0u8; 5];
//! restored.read_at(4096, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod checkpoint;
pub mod disk;
pub mod durable;
pub mod error;
pub mod file;
pub mod memory;
pub mod persist;
pub mod safe_path;

pub use error::{Error, Result};
pub use persist::Persist;
