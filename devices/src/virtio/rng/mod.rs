//! virtio-rng: one queue of device-writable buffers, filled from the host's `getrandom(2)`.
//!
//! - [`device`]: the [`Rng`] device.
//! - [`event_handler`]: the event-loop side (activation eventfd, queue eventfd).
//! - [`persist`]: checkpoint state.

pub mod device;
pub mod event_handler;
pub mod persist;

pub use device::{Rng, RngError};
pub use persist::RngState;

/// Size of the queue the device offers.
pub const QUEUE_SIZE: u16 = 256;
/// Most random bytes handed out per request; a larger buffer is filled only this far.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;
