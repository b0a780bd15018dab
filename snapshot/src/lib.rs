//! cairn's state and file formats.
//!
//! This crate knows nothing of KVM or of devices. It defines:
//! - [`Persist`], the one trait every stateful component implements;
//! - the checksummed, versioned container for state files;
//! - memory layers (base + diffs) and the layered block store for disks.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod persist;

pub use persist::Persist;
