//! Sessions (`cairn exec -d`, `cairn sessions …`, the API's `/sessions` routes): detached
//! processes kept by the guest agent, so they are checkpointed with the VM and keep running
//! across a stop and start or an idle sleep and wake. Their output waits in the agent's
//! bounded ring buffer (256 KiB) until someone attaches. See `docs/sessions.md`.
//!
//! Each call wakes the sandbox as an exec does ([`sandbox::enter`]). An attach holds the
//! sandbox's activity lock for as long as it lasts, so an attached client keeps the sandbox
//! awake; a detached session does not.

use crate::lock::FileLock;
use crate::sandbox::{self, Home, SandboxError};
use cairn_agent::client::{AttachedSession, Client, ClientError};
use cairn_agent::proto::{ExecRequest, SessionInfo, SessionStatus};
use serde::{Deserialize, Serialize};

/// A session as the CLI (`--json`) and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// The session's id in its sandbox.
    pub id: u32,
    /// Its process's guest pid.
    pub pid: u32,
    /// What runs.
    pub argv: Vec<String>,
    /// Start time, Unix seconds (the guest's clock).
    pub started: u64,
    /// Runs under a terminal.
    pub tty: bool,
    /// Reads stdin (typed by an attached client).
    pub stdin: bool,
    /// `running`, `exited` or `killed`.
    pub state: String,
    /// The exit code once it exited (128 + N once killed by signal N).
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// Output produced so far, bytes.
    pub output_bytes: u64,
    /// Of those, the oldest bytes dropped from the ring buffer.
    pub dropped_bytes: u64,
    /// Clients attached now.
    pub attached: u32,
}

impl From<&SessionInfo> for SessionView {
    fn from(s: &SessionInfo) -> SessionView {
        let (state, exit_code, signal) = match s.status {
            SessionStatus::Running => ("running", None, None),
            SessionStatus::Exited(c) => ("exited", Some(c), None),
            SessionStatus::Killed(n) => ("killed", Some(128 + n), Some(n)),
        };
        SessionView {
            id: s.id,
            pid: s.pid,
            argv: s.argv.clone(),
            started: s.started_unix,
            tty: s.tty,
            stdin: s.stdin,
            state: state.into(),
            exit_code,
            signal,
            output_bytes: s.output_bytes,
            dropped_bytes: s.dropped_bytes,
            attached: s.attached,
        }
    }
}

/// A started session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The session's id.
    pub id: u32,
    /// Its guest pid.
    pub pid: u32,
}

/// An agent that predates sessions drops the connection on their requests: say so.
fn explain(e: ClientError) -> SandboxError {
    SandboxError::Agent(match e {
        ClientError::Closed => ClientError::Agent(
            "the guest agent closed the connection: it may predate sessions (hint: `cairn start \
             NAME --cold` boots the current agent; running processes are lost)"
                .into(),
        ),
        e => e,
    })
}

/// Wakes `name` if needed and runs `f` with its agent; the activity lock is handed back.
fn with_agent<T>(
    home: &Home,
    name: &str,
    f: impl FnOnce(&mut Client) -> Result<T, ClientError>,
) -> Result<(T, FileLock), SandboxError> {
    let (r, active, woken) = sandbox::enter(home, name)?;
    let (mut client, turn) = match woken {
        Some(c) => (c, None),
        None => {
            let (c, t) = crate::serve::agent_gate::connect_in_turn(&r.vsock_sock)?;
            (c, Some(t))
        }
    };
    let out = f(&mut client).map_err(explain);
    drop(turn);
    let _ = sandbox::touch(home, name);
    Ok((out?, active))
}

/// Starts `req` as a detached session in sandbox `name`.
pub fn start(home: &Home, name: &str, req: &ExecRequest) -> Result<Started, SandboxError> {
    if req.argv.is_empty() {
        return Err(SandboxError::Agent(ClientError::Agent(
            "empty command".into(),
        )));
    }
    let ((id, pid), _active) = with_agent(home, name, |c| c.session_start(req))?;
    Ok(Started { id, pid })
}

/// The sessions of sandbox `name`, oldest first.
pub fn list(home: &Home, name: &str) -> Result<Vec<SessionView>, SandboxError> {
    let (list, _active) = with_agent(home, name, |c| c.session_list())?;
    Ok(list.iter().map(SessionView::from).collect())
}

/// Kills session `id` of sandbox `name` and forgets it.
pub fn kill(home: &Home, name: &str, id: u32) -> Result<(), SandboxError> {
    with_agent(home, name, |c| c.session_kill(id)).map(drop)
}

/// Attaches to session `id` of sandbox `name`. Keep the lock while attached: it keeps the
/// sandbox from idling; drop both to detach.
pub fn attach(
    home: &Home,
    name: &str,
    id: u32,
) -> Result<(AttachedSession, FileLock), SandboxError> {
    with_agent(home, name, |c| c.session_attach(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_name_the_state() {
        let mut info = SessionInfo {
            id: 3,
            pid: 40,
            argv: vec!["sleep".into(), "9".into()],
            started_unix: 1,
            tty: false,
            stdin: false,
            status: SessionStatus::Running,
            output_bytes: 10,
            dropped_bytes: 0,
            attached: 1,
        };
        let v = SessionView::from(&info);
        assert_eq!(
            (v.state.as_str(), v.exit_code, v.signal),
            ("running", None, None)
        );
        info.status = SessionStatus::Killed(9);
        let v = SessionView::from(&info);
        assert_eq!(
            (v.state.as_str(), v.exit_code, v.signal),
            ("killed", Some(137), Some(9))
        );
        info.status = SessionStatus::Exited(2);
        assert_eq!(SessionView::from(&info).exit_code, Some(2));
    }
}
