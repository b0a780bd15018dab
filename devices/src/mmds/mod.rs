//! MMDS, Firecracker's microVM metadata service: a JSON document the host sets through the API
//! and the guest reads over HTTP at a link-local address (169.254.169.254 by default), answered
//! by the VMM itself on the network interfaces it is enabled for.
//!
//! - [`data_store`]: the document, its size limit, RFC 7396 merge patches, and how a value is
//!   shown to the guest (IMDS text or JSON).
//! - [`token`]: MMDS V2 session tokens.
//! - [`http`]: one guest request in, one response out.
//! - [`pdu`]: Ethernet, ARP, IPv4 and TCP headers.
//! - [`tcp`]: a small TCP server endpoint (one port, bounded connections and buffers).
//! - [`stack`]: the per-interface stack the virtio-net device hands MMDS frames to.
//! - [`persist`]: what a snapshot keeps of MMDS (its settings, not the data).

pub mod data_store;
pub mod http;
pub mod pdu;
pub mod persist;
pub mod stack;
pub mod tcp;
pub mod token;

pub use data_store::{Mmds, MmdsError, MmdsVersion, OutputFormat, DEFAULT_MMDS_SIZE_LIMIT};
pub use persist::MmdsState;
pub use stack::{MmdsStack, DEFAULT_MMDS_IPV4};
