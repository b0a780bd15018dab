//! The host side of sessions: start, list, attach to and kill detached processes in the guest
//! (see `crate::server`'s sessions and `docs/agent-protocol.md`).

use super::{unexpected, Client, ClientError, ExecControl, ExecEvent, ExitStatus};
use crate::proto::{AgentMsg, ClientMsg, ExecRequest, FrameReader, SessionInfo};
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

impl Client {
    /// Starts `req` as a detached session; returns its id and guest pid. The process outlives
    /// this connection; its output is kept (bounded) in the agent until someone attaches.
    pub fn session_start(&mut self, req: &ExecRequest) -> Result<(u32, u32), ClientError> {
        let mut s = self.session()?;
        s.writer.write(&ClientMsg::SessionStart(req.clone()))?;
        match s.reader.read::<AgentMsg>()? {
            Some(AgentMsg::SessionStarted { id, pid }) => Ok((id, pid)),
            other => Err(unexpected(other)),
        }
    }

    /// The guest's sessions, oldest first.
    pub fn session_list(&mut self) -> Result<Vec<SessionInfo>, ClientError> {
        let mut s = self.session()?;
        s.writer.write(&ClientMsg::SessionList)?;
        match s.reader.read::<AgentMsg>()? {
            Some(AgentMsg::Sessions(list)) => Ok(list),
            other => Err(unexpected(other)),
        }
    }

    /// Kills session `id`'s process group (if it still runs) and forgets the session.
    pub fn session_kill(&mut self, id: u32) -> Result<(), ClientError> {
        self.simple(ClientMsg::SessionKill { id }, |m| {
            matches!(m, AgentMsg::Done)
        })
    }

    /// Attaches to session `id`: its buffered output comes first, then live output. Dropping
    /// the returned handle detaches; the process keeps running.
    pub fn session_attach(&mut self, id: u32) -> Result<AttachedSession, ClientError> {
        let mut s = self.session()?;
        s.writer.write(&ClientMsg::SessionAttach { id })?;
        match s.reader.read::<AgentMsg>()? {
            Some(AgentMsg::SessionAttached { dropped, replay }) => Ok(AttachedSession {
                dropped,
                replay,
                reader: s.reader,
                control: ExecControl {
                    writer: Arc::new(Mutex::new(s.writer)),
                },
            }),
            other => Err(unexpected(other)),
        }
    }
}

/// A client attached to a session.
#[derive(Debug)]
pub struct AttachedSession {
    dropped: u64,
    replay: u64,
    reader: FrameReader<UnixStream>,
    control: ExecControl,
}

impl AttachedSession {
    /// Output bytes the ring buffer had dropped before its oldest byte when this attached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes of buffered output sent first, before any live output.
    pub fn replay_bytes(&self) -> u64 {
        self.replay
    }

    /// A handle for stdin, signals and resizes (stdin reaches a session started with
    /// `stdin: true` only).
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }

    /// The next output, or the end of the session.
    pub fn next_event(&mut self) -> Result<ExecEvent, ClientError> {
        super::exec_event(self.reader.read::<AgentMsg>()?)
    }

    /// Copies output until the session ends; returns how it ended.
    pub fn wait(
        mut self,
        stdout: impl Write,
        stderr: impl Write,
    ) -> Result<ExitStatus, ClientError> {
        let status = super::copy_output(|| self.next_event(), stdout, stderr)?;
        self.detach();
        Ok(status)
    }

    /// Closes the connection: the session goes on without this client.
    pub fn detach(self) {
        let _ = self.reader.get_ref().shutdown(Shutdown::Both);
    }

    /// A handle that detaches from another thread (a reader blocked in
    /// [`AttachedSession::next_event`] then gets an error).
    pub fn detacher(&self) -> Result<Detacher, ClientError> {
        self.reader
            .get_ref()
            .try_clone()
            .map(Detacher)
            .map_err(|e| ClientError::Frame(e.into()))
    }
}

/// Detaches an [`AttachedSession`] from another thread.
#[derive(Debug)]
pub struct Detacher(UnixStream);

impl Detacher {
    /// Closes the attached connection; the session goes on.
    pub fn detach(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}
