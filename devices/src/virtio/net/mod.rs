//! virtio-net backed by a Linux tap device.
//!
//! - [`tap`] — opening `/dev/net/tun` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) and the [`NetBackend`]
//!   trait the device talks to, so the RX/TX paths can be tested with an in-memory double.
//! - [`device`] — the virtio device: two queues (rx, tx), features `VERSION_1` and `MAC`.
//! - [`event_handler`] — the `event-manager` subscriber (activation, queue kicks, tap readable).
//! - [`persist`] — save/restore.
//! - [`limits`] — the rx and tx rate limiters (Firecracker's `rx_rate_limiter`/`tx_rate_limiter`).
//!
//! Frames cross the device unchanged: the tap is configured with a 12-byte vnet header, the same
//! size as the guest's `virtio_net_hdr_v1`, so a frame read from the tap is copied as is into an
//! rx buffer (with `num_buffers` set to 1), and a tx chain is written as is to the tap. No offloads
//! are offered, so the header carries no checksum or GSO work.
//!
//! With MMDS enabled on the interface ([`Net::set_mmds`]), guest frames for the MMDS address go
//! to its stack ([`crate::mmds::MmdsStack`]) instead of the tap, and its answers are delivered
//! before the tap's frames.

pub mod device;
pub mod event_handler;
pub mod limits;
pub mod persist;
pub mod tap;

pub use device::{Net, NetConfig, NetError};
pub use tap::{NetBackend, Tap};

/// Index of the receive queue.
pub const RX_INDEX: usize = 0;
/// Index of the transmit queue.
pub const TX_INDEX: usize = 1;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Size of `virtio_net_hdr_v1` (the header that prefixes every frame, on both sides).
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame handled, vnet header included (64 KiB of payload, an Ethernet header with a VLAN
/// tag, and the vnet header).
pub const MAX_FRAME_LEN: usize = 65562;

/// Feature bit: the device has a MAC address in its configuration space.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature bit: the device advertises an MTU in its configuration space.
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// Smallest MTU that may be advertised (Firecracker's and the virtio spec's lower bound).
pub const MIN_MTU: u16 = 68;
