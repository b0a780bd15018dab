//! The cairn guest agent: its wire protocol, the agent itself and the host client.
//!
//! - [`proto`]: framing (`u32` LE length + postcard payload, at most 1 MiB), the hello with the
//!   protocol version, and every message. See `docs/agent-protocol.md`.
//! - [`server`]: the guest side. The `cairn-agent` binary listens on vsock port 52
//!   ([`proto::AGENT_PORT`]) or, for tests, on a Unix socket, and serves one request per
//!   connection on a thread of its own: exec (pipes or a pty), put, get, sync, ping.
//! - [`client`]: the host side, reaching the agent through the VMM's vsock Unix socket
//!   (Firecracker's `CONNECT <port>` convention) or directly on a Unix socket.
//! - [`tree`]: files and directory trees as a stream of entries, used by put and get.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(missing_docs)]

pub mod client;
pub mod proto;
pub mod server;
pub mod tree;

/// An error and its sources, joined with `: `.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
