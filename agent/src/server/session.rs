//! Sessions: detached processes that outlive the connection that started them.
//!
//! The session table lives in the agent process, so it is checkpointed with the VM: a session
//! keeps running across a stop and start (or an idle sleep and wake). Each session's output
//! goes into a ring buffer of at most [`RING_BYTES`]; the oldest output is dropped when it is
//! full, so a session never waits for a reader and never grows the agent's memory. An attached
//! client gets the buffer's contents, then live output. Closing the connection detaches.
//!
//! Threads per session: one per output pipe (or one for the pty) and a waiter, for the
//! session's life; per attached client, the connection thread (reading stdin, signals,
//! resizes) and one writer thread.

use super::exec::{self, Spawned, OUT_CHUNK};
use super::{msg_name, pty, Conn, ServerError};
use crate::proto::{
    AgentMsg, ClientMsg, ExecRequest, FrameReader, FrameWriter, SessionInfo, SessionStatus,
};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most output bytes a session keeps (stdout and stderr together).
pub const RING_BYTES: usize = 256 << 10;

/// The most sessions an agent keeps; ended ones are forgotten, oldest first, to make room.
pub const MAX_SESSIONS: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One piece of output, at byte `offset` of the session's whole output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk {
    offset: u64,
    stderr: bool,
    data: Vec<u8>,
}

/// The bounded output buffer: whole chunks, the oldest dropped first.
#[derive(Debug)]
struct Ring {
    chunks: VecDeque<Chunk>,
    cap: usize,
    held: usize,
    total: u64,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            chunks: VecDeque::new(),
            cap,
            held: 0,
            total: 0,
        }
    }

    fn push(&mut self, stderr: bool, data: &[u8]) {
        self.chunks.push_back(Chunk {
            offset: self.total,
            stderr,
            data: data.to_vec(),
        });
        self.total += data.len() as u64;
        self.held += data.len();
        while self.held > self.cap {
            match self.chunks.pop_front() {
                Some(c) => self.held -= c.data.len(),
                None => break,
            }
        }
    }

    /// The offset of the oldest byte still held: the bytes dropped so far.
    fn start(&self) -> u64 {
        self.total - self.held as u64
    }

    /// The chunks from `pos` on (from the oldest held, if `pos` has been dropped); moves `pos`
    /// to the end.
    fn since(&self, pos: &mut u64) -> Vec<Chunk> {
        let out = self
            .chunks
            .iter()
            .filter(|c| c.offset >= *pos)
            .cloned()
            .collect();
        *pos = self.total;
        out
    }
}

#[derive(Debug)]
struct State {
    ring: Ring,
    status: SessionStatus,
    attached: u32,
}

struct Session {
    id: u32,
    pid: u32,
    argv: Vec<String>,
    started_unix: u64,
    tty: bool,
    stdin: bool,
    reaped: Mutex<bool>,
    input: Mutex<Option<Box<dyn Write + Send>>>,
    pty_master: Option<File>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Session {
    fn info(&self) -> SessionInfo {
        let st = lock(&self.state);
        SessionInfo {
            id: self.id,
            pid: self.pid,
            argv: self.argv.clone(),
            started_unix: self.started_unix,
            tty: self.tty,
            stdin: self.stdin,
            status: st.status,
            output_bytes: st.ring.total,
            dropped_bytes: st.ring.start(),
            attached: st.attached,
        }
    }

    fn push(&self, stderr: bool, data: &[u8]) {
        lock(&self.state).ring.push(stderr, data);
        self.changed.notify_all();
    }

    fn end(&self, status: SessionStatus) {
        lock(&self.state).status = status;
        self.changed.notify_all();
    }
}

struct Table {
    next_id: u32,
    sessions: Vec<Arc<Session>>,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    next_id: 1,
    sessions: Vec::new(),
});

fn find(id: u32) -> Result<Arc<Session>, ServerError> {
    lock(&TABLE)
        .sessions
        .iter()
        .find(|s| s.id == id)
        .cloned()
        .ok_or(ServerError::NoSession(id))
}

/// `SessionStart`: spawns the process and the threads that keep its output.
pub(super) fn start(req: ExecRequest) -> Result<AgentMsg, ServerError> {
    let mut table = lock(&TABLE);
    if table.sessions.len() >= MAX_SESSIONS {
        let ended = table
            .sessions
            .iter()
            .position(|s| lock(&s.state).status != SessionStatus::Running);
        match ended {
            Some(i) => drop(table.sessions.remove(i)),
            None => return Err(ServerError::TooManySessions(MAX_SESSIONS)),
        }
    }
    let Spawned {
        child,
        input,
        outputs,
        pty_master,
    } = exec::spawn(&req).map_err(|source| ServerError::Spawn {
        argv0: req.argv.first().cloned().unwrap_or_default(),
        source,
    })?;
    let (id, pid) = (table.next_id, child.id());
    table.next_id = table.next_id.wrapping_add(1).max(1);
    let session = Arc::new(Session {
        id,
        pid,
        argv: req.argv,
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        tty: req.pty.is_some(),
        stdin: req.stdin,
        reaped: Mutex::new(false),
        input: Mutex::new(input),
        pty_master,
        state: Mutex::new(State {
            ring: Ring::new(RING_BYTES),
            status: SessionStatus::Running,
            attached: 0,
        }),
        changed: Condvar::new(),
    });
    let pumps = outputs
        .into_iter()
        .map(|(src, stderr)| {
            let s = Arc::clone(&session);
            thread::spawn(move || pump(&s, src, stderr))
        })
        .collect();
    let s = Arc::clone(&session);
    thread::spawn(move || wait(&s, child, pumps));
    table.sessions.push(session);
    Ok(AgentMsg::SessionStarted { id, pid })
}

fn pump(session: &Session, mut src: Box<dyn Read + Send>, stderr: bool) {
    let mut buf = vec![0u8; OUT_CHUNK];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => session.push(stderr, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EIO on a pty whose terminal every process has closed.
            Err(_) => return,
        }
    }
}

fn wait(session: &Session, mut child: Child, pumps: Vec<JoinHandle<()>>) {
    let status = exec::wait_exit_unreaped(session.pid).and_then(|()| {
        *lock(&session.reaped) = true;
        child.wait()
    });
    // All output is in the ring before the session is marked ended.
    for p in pumps {
        let _ = p.join();
    }
    let status = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => SessionStatus::Exited(code),
            (None, Some(sig)) => SessionStatus::Killed(sig),
            (None, None) => SessionStatus::Exited(-1),
        },
        Err(source) => {
            super::log::error(&ServerError::Wait {
                pid: session.pid,
                source,
            });
            SessionStatus::Exited(-1)
        }
    };
    // The input of an ended process goes nowhere.
    *lock(&session.input) = None;
    session.end(status);
}

/// `SessionList`: every session, oldest first.
pub(super) fn list() -> AgentMsg {
    let sessions: Vec<Arc<Session>> = lock(&TABLE).sessions.clone();
    AgentMsg::Sessions(sessions.iter().map(|s| s.info()).collect())
}

/// `SessionKill`: SIGKILL to the process group (if it runs) and forget the session.
pub(super) fn kill(id: u32) -> Result<AgentMsg, ServerError> {
    let session = {
        let mut table = lock(&TABLE);
        let i = table
            .sessions
            .iter()
            .position(|s| s.id == id)
            .ok_or(ServerError::NoSession(id))?;
        table.sessions.remove(i)
    };
    exec::signal(session.pid, libc::SIGKILL, &session.reaped);
    Ok(AgentMsg::Done)
}

/// `SessionAttach`: the buffered output, then live output until the session ends or the client
/// detaches (closes the connection).
pub(super) fn attach<S: Conn>(
    id: u32,
    mut reader: FrameReader<S>,
    mut writer: FrameWriter<S>,
) -> Result<(), ServerError> {
    let session = match find(id) {
        Ok(s) => s,
        Err(e) => {
            let _ = writer.write(&AgentMsg::Error {
                message: crate::error_text(&e),
            });
            return Err(e);
        }
    };
    // The replay is taken under the same lock as the position live output follows from, so
    // nothing is sent twice or skipped between them.
    let (mut pos, dropped, replay) = {
        let mut st = lock(&session.state);
        st.attached += 1;
        let mut pos = st.ring.start();
        let dropped = pos;
        let replay = st.ring.since(&mut pos);
        (pos, dropped, replay)
    };
    let detached = Arc::new(AtomicBool::new(false));
    let sent = (|| {
        writer.write(&AgentMsg::SessionAttached {
            dropped,
            replay: replay.iter().map(|c| c.data.len() as u64).sum(),
        })?;
        replay
            .into_iter()
            .try_for_each(|c| writer.write(&output_msg(c)))
    })();
    let sender = match sent {
        Ok(()) => {
            let (s, d) = (Arc::clone(&session), Arc::clone(&detached));
            Some(thread::spawn(move || follow(&s, &d, &mut pos, writer)))
        }
        Err(_) => None,
    };
    if sender.is_some() {
        control(&session, &mut reader);
    }
    detached.store(true, Ordering::SeqCst);
    session.changed.notify_all();
    if let Some(t) = sender {
        let _ = t.join();
    }
    lock(&session.state).attached -= 1;
    Ok(())
}

/// Sends output from `pos` on as it comes, then the end.
fn follow<S: Conn>(
    session: &Session,
    detached: &AtomicBool,
    pos: &mut u64,
    mut writer: FrameWriter<S>,
) {
    loop {
        let (chunks, ended) = {
            let mut st = lock(&session.state);
            loop {
                if detached.load(Ordering::SeqCst) {
                    return;
                }
                if st.ring.total > *pos || st.status != SessionStatus::Running {
                    break;
                }
                st = session
                    .changed
                    .wait_timeout(st, Duration::from_secs(1))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let ended = (st.status != SessionStatus::Running).then_some(st.status);
            (st.ring.since(pos), ended)
        };
        for c in chunks {
            if writer.write(&output_msg(c)).is_err() {
                return;
            }
        }
        if let Some(status) = ended {
            let _ = writer.write(&match status {
                SessionStatus::Killed(signal) => AgentMsg::Killed { signal },
                SessionStatus::Exited(code) => AgentMsg::Exit { code },
                // `ended` is only set once the session is no longer running.
                SessionStatus::Running => AgentMsg::Exit { code: -1 },
            });
            return;
        }
    }
}

fn output_msg(c: Chunk) -> AgentMsg {
    if c.stderr {
        AgentMsg::Stderr(c.data)
    } else {
        AgentMsg::Stdout(c.data)
    }
}

/// Applies an attached client's stdin, resize and signal messages until it detaches.
fn control<S: Conn>(session: &Session, reader: &mut FrameReader<S>) {
    loop {
        let msg = match reader.read::<ClientMsg>() {
            Ok(Some(msg)) => msg,
            Ok(None) => return,
            Err(e) => {
                super::log::error(&e);
                return;
            }
        };
        match msg {
            ClientMsg::Stdin(data) => {
                let mut input = lock(&session.input);
                if let Some(w) = input.as_mut() {
                    if w.write_all(&data).is_err() {
                        *input = None;
                    }
                }
            }
            ClientMsg::StdinClose => {
                let mut input = lock(&session.input);
                match (session.tty, input.as_mut()) {
                    (true, Some(w)) => {
                        let _ = w.write_all(&[0x04]);
                    }
                    _ => *input = None,
                }
            }
            ClientMsg::Resize(size) => {
                if let Some(m) = &session.pty_master {
                    let _ = pty::resize(m, size);
                }
            }
            ClientMsg::Signal(sig) => exec::signal(session.pid, sig, &session.reaped),
            other => {
                super::log::error(&ServerError::Unexpected(msg_name(&other)));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_whole_chunks_within_its_cap() {
        let mut r = Ring::new(10);
        r.push(false, b"abcd");
        r.push(true, b"efgh");
        assert_eq!(r.start(), 0);
        r.push(false, b"ijkl");
        // 12 > 10: the oldest chunk goes.
        assert_eq!((r.start(), r.total, r.held), (4, 12, 8));
        let mut pos = 0;
        let got = r.since(&mut pos);
        assert_eq!(pos, 12);
        assert_eq!(
            got.iter().map(|c| c.data.as_slice()).collect::<Vec<_>>(),
            [b"efgh", b"ijkl"]
        );
        assert!(got[0].stderr && !got[1].stderr);
        assert!(r.since(&mut pos).is_empty());
        r.push(false, b"m");
        assert_eq!(r.since(&mut pos)[0].data, b"m");
    }
}
