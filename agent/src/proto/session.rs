//! Types of the session messages: detachable processes that outlive the connection that
//! started them, with their output kept in a bounded ring buffer in the agent (protocol v2,
//! additive). See `docs/agent-protocol.md`, "Sessions".

use serde::{Deserialize, Serialize};

/// How a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionStatus {
    /// The process runs.
    Running,
    /// The process exited with this code.
    Exited(i32),
    /// The process was killed by this signal.
    Killed(i32),
}

/// One session, as `SessionList` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session's id, unique in this guest agent's life (across checkpoints and restores).
    pub id: u32,
    /// The process's guest pid.
    pub pid: u32,
    /// What runs.
    pub argv: Vec<String>,
    /// When it started, Unix seconds of the guest's clock.
    pub started_unix: u64,
    /// Whether it runs under a pseudo-terminal.
    pub tty: bool,
    /// Whether it reads stdin (an attached client may type into it).
    pub stdin: bool,
    /// Running, or how it ended.
    pub status: SessionStatus,
    /// Output bytes produced so far (stdout and stderr).
    pub output_bytes: u64,
    /// Of those, the bytes no longer in the ring buffer (the oldest, dropped).
    pub dropped_bytes: u64,
    /// Clients attached now.
    pub attached: u32,
}
