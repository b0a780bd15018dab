//! What the guest agent is told once it answers after a boot or a restore.
//!
//! - **Clock**: after every restore (start, wake, fork, checkpoint restore) the guest's wall
//!   clock is still the one it had when checkpointed. The agent sets it from the host's
//!   (`SetClock`), a few ms after the restore; the error is the vsock round trip.
//! - **Network**: after a boot, and after a restore whose guest has another sandbox's
//!   configuration (a fork's first start: the parent's address and MAC), the agent configures
//!   the interface (`NetConfigure`). `net.applied` records the spec last applied, so a plain
//!   wake costs nothing more.
//!
//! After a restore both go in the one `Restored` request with the identity
//! (`crate::identity::after_restore`, using [`pending`] and [`mark_applied`]); [`after_agent`]
//! serves a boot, and agents older than that request.

use super::{load, NetSpec};
use crate::sandbox::Paths;
use cairn_agent::client::{Client, ClientError};
use cairn_agent::proto::{NetConfig, AGENT_PORT};
use std::fs;
use std::time::Duration;

fn applied_path(paths: &Paths) -> std::path::PathBuf {
    paths.dir.join("net.applied")
}

/// The agent's view of `spec`.
pub fn agent_config(spec: &NetSpec) -> NetConfig {
    NetConfig {
        iface: None,
        mac: spec.mac.clone(),
        addr: spec.guest.octets(),
        prefix: spec.prefix,
        gateway: spec.gateway.octets(),
        dns: vec![spec.gateway.octets()],
    }
}

/// After the agent answers: sets the clock, and configures the network when the guest does not
/// have this sandbox's yet (always when not `restored`, i.e. after a boot).
pub fn after_agent(paths: &Paths, restored: bool) -> Result<(), ClientError> {
    let connect = || Client::connect_uds_timeout(&paths.vsock, AGENT_PORT, Duration::from_secs(10));
    // A booted guest took its clock from kvmclock; setting it anyway costs one round trip.
    // Best effort: an agent older than `SetClock` (a sandbox made before it) still wakes.
    if let Err(e) = connect().and_then(|mut c| c.set_clock()) {
        eprintln!(
            "cairn: note: the guest clock was not set ({}); it may be behind",
            cairn_agent::error_text(&e)
        );
    }
    let Ok(Some(spec)) = load(paths) else {
        return Ok(());
    };
    let want = serde_json::to_string(&spec).unwrap_or_default();
    if restored && fs::read_to_string(applied_path(paths)).is_ok_and(|a| a == want) {
        return Ok(());
    }
    connect()?.net_configure(&agent_config(&spec))?;
    let _ = fs::write(applied_path(paths), want);
    Ok(())
}

/// After a restore: the configuration the guest still needs (none when it has this sandbox's
/// already, or the sandbox has no network), with the marker to record once the guest has it
/// ([`mark_applied`]). For a caller that sends it with other requests (`Restored`).
pub fn pending(paths: &Paths) -> Option<(NetConfig, String)> {
    let spec = load(paths).ok()??;
    let want = serde_json::to_string(&spec).unwrap_or_default();
    if fs::read_to_string(applied_path(paths)).is_ok_and(|a| a == want) {
        return None;
    }
    Some((agent_config(&spec), want))
}

/// Records that the guest has the configuration [`pending`] returned with `marker`.
pub fn mark_applied(paths: &Paths, marker: &str) {
    let _ = fs::write(applied_path(paths), marker);
}
