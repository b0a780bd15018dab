//! Types of `Restored`: everything a restored guest is told, in one request on the connection
//! whose hello proved the agent up (protocol v2, additive). Before it, a restore cost three vsock
//! connections (`SetClock`, `NetConfigure`, `Identity`), each about half a second of guest
//! kernel work where that kernel is emulated. See `docs/agent-protocol.md`.

use super::{IdentityRequest, NetConfig};
use serde::{Deserialize, Serialize};

/// After a restore (a wake, a fork's start, a create from a golden checkpoint, a checkpoint
/// restore): the wall clock, the network (when it changed) and the identity, applied in that
/// order. Answered by [`super::AgentMsg::Restored`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredRequest {
    /// Set CLOCK_REALTIME to this (nanoseconds since the Unix epoch, read on the host just
    /// before sending), as `SetClock` does; left alone when `None`.
    pub clock_unix_nanos: Option<u64>,
    /// Configure the interface, as `NetConfigure` does; left alone when `None` (the guest has
    /// this sandbox's configuration already, or no network).
    pub net: Option<NetConfig>,
    /// Reseed the RNG and set hostname and machine-id, as `Identity` does.
    pub identity: IdentityRequest,
}

/// How each part of a [`RestoredRequest`] went. Every part is tried, whatever the others did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredReport {
    /// Why setting the clock failed, if it did.
    pub clock_error: Option<String>,
    /// Why configuring the network failed, if it did.
    pub net_error: Option<String>,
    /// Why the identity could not be set, if it could not.
    pub identity_error: Option<String>,
    /// Microseconds the agent spent on the clock, the identity and the network, in that order
    /// (for `CAIRN_TIMES`).
    pub micros: [u32; 3],
}
