//! virtio-vsock with Firecracker's host-side convention (Unix sockets).
//!
//! - [`packet`] — the 44-byte header, strictly validated, and reading/writing packets in chains.
//! - [`muxer`] — connections between guest ports and host Unix sockets, with credit-based flow
//!   control (see the module for the `CONNECT <port>\n` / `<uds_path>_<port>` convention).
//! - [`device`] — the virtio device: three queues (rx, tx, event), the guest CID in config space.
//! - [`event_handler`] — the `event-manager` subscriber.
//! - [`persist`] — save/restore. Live connections are not saved; after a restore the VMM calls
//!   [`Vsock::send_transport_reset`] so the guest drops its stale connections.

pub mod device;
pub mod event_handler;
pub mod muxer;
pub mod packet;
pub mod persist;

pub use device::{Vsock, VsockConfig, VsockError};

/// Index of the receive (host to guest) queue.
pub const RX_INDEX: usize = 0;
/// Index of the transmit (guest to host) queue.
pub const TX_INDEX: usize = 1;
/// Index of the event queue.
pub const EVQ_INDEX: usize = 2;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`.
pub const EVENT_TRANSPORT_RESET: u32 = 0;
