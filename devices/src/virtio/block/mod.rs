//! virtio-blk: one request queue served from a [`DiskBackend`].
//!
//! - [`backend`]: the storage interface and its raw-file and in-memory implementations.
//! - [`request`]: turning a descriptor chain into a validated [`request::Request`], and running it.
//! - [`device`]: the [`Block`] device (features, config space, activation, queue processing).
//! - [`event_handler`]: the event-loop side (activation eventfd, queue eventfd).
//! - [`persist`]: checkpoint state.
//!
//! Supported requests: IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES. Malformed requests
//! complete with `VIRTIO_BLK_S_IOERR` (unknown types with `VIRTIO_BLK_S_UNSUPP`) and the device
//! goes on with the next one.

pub mod backend;
pub mod device;
pub mod event_handler;
pub mod persist;
pub mod request;

pub use backend::{DiskBackend, MemDisk, RawFile};
pub use device::{Block, BlockConfig, BlockError};
pub use persist::{BlockConstructorArgs, BlockState};

/// Bytes per virtio-blk sector (always 512, whatever the disk's block size).
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Size of the queue the device offers.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// Most data segments in one request (advertised as `seg_max`).
pub const SEG_MAX: u32 = 128;
/// Largest data segment (advertised as `size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Most ranges in one DISCARD or WRITE_ZEROES request.
pub const MAX_DISCARD_SEG: u32 = 16;
/// Most sectors in one DISCARD or WRITE_ZEROES range (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;

/// Request types (virtio 1.2, 5.2.6).
pub mod req_type {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device ID string.
    pub const GET_ID: u32 = 8;
    /// Discard ranges.
    pub const DISCARD: u32 = 11;
    /// Zero ranges.
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request status values.
pub mod req_status {
    /// Success.
    pub const OK: u8 = 0;
    /// Device or driver error.
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

/// virtio-blk feature bits.
pub mod features {
    /// `size_max` is valid.
    pub const SIZE_MAX: u32 = 1;
    /// `seg_max` is valid.
    pub const SEG_MAX: u32 = 2;
    /// The device is read-only.
    pub const RO: u32 = 5;
    /// FLUSH is supported.
    pub const FLUSH: u32 = 9;
    /// DISCARD is supported.
    pub const DISCARD: u32 = 13;
    /// WRITE_ZEROES is supported.
    pub const WRITE_ZEROES: u32 = 14;
}
