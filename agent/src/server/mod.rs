//! The guest side: accepts connections and serves one request on each, one thread per connection.

mod exec;
mod identity;
mod loopback;
pub mod netcfg;
mod pty;
mod restored;
mod session;
mod tcp;
mod vsock;

pub use loopback::bring_up_loopback;
pub use vsock::{connect_host, VsockListener, VsockStream};

use crate::proto::{
    AgentMsg, ClientMsg, FrameError, FrameReader, FrameWriter, Hello, UNKNOWN_REQUEST,
};
use crate::tree::{send_tree, TreeError, TreeWriter};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread;
use std::time::Duration;

/// A connected byte stream the agent can serve: a Unix or vsock socket.
pub trait Conn: Read + Write + Send + Sized + 'static {
    /// A second handle to the same stream, so one thread can read while another writes.
    fn try_clone(&self) -> io::Result<Self>;
}

impl Conn for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
}

impl Conn for File {
    fn try_clone(&self) -> io::Result<Self> {
        File::try_clone(self)
    }
}

/// Why serving a connection failed. The client is told with an `Error` message where possible.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Reading or writing a frame failed.
    #[error("agent connection")]
    Frame(#[from] FrameError),
    /// The connection closed before the client's hello.
    #[error("client closed the connection before its hello")]
    NoHello,
    /// The client's hello was not acceptable.
    #[error("handshake: {0}")]
    Handshake(String),
    /// A message arrived that the request in progress does not allow.
    #[error("unexpected {0} message")]
    Unexpected(&'static str),
    /// The request named a relative path.
    #[error("path {0:?} is not absolute")]
    RelativePath(String),
    /// Put or Get failed.
    #[error("file transfer")]
    Tree(#[from] TreeError),
    /// The client closed the connection in the middle of a `Put`.
    #[error("client closed the connection in the middle of a put")]
    PutTruncated,
    /// Setting the guest's identity (entropy, hostname, machine-id) failed.
    #[error("identity: {what}")]
    Identity {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The process could not be started.
    #[error("cannot run {argv0:?}")]
    Spawn {
        /// The program.
        argv0: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The guest TCP connection of a `Connect` could not be opened.
    #[error("connect to {addr} in the guest")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The guest TCP connection of a `Connect` failed.
    #[error("guest connection to {addr}")]
    TcpIo {
        /// `host:port`.
        addr: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `NetConfigure` or `SetClock` failed.
    #[error("guest configuration")]
    NetCfg(#[from] netcfg::NetCfgError),
    /// A session request named no session the agent keeps.
    #[error("no session {0} (hint: `cairn sessions ls` lists them)")]
    NoSession(u32),
    /// The session table is full of running sessions.
    #[error("{0} sessions run already (hint: kill one first)")]
    TooManySessions(usize),
    /// Waiting for the process failed.
    #[error("waiting for pid {pid}")]
    Wait {
        /// The process.
        pid: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Serves every connection on a Unix listener, one thread each, until accepting fails hard.
pub fn serve_unix(listener: UnixListener) -> io::Result<()> {
    serve(|| listener.accept().map(|(s, _)| s))
}

/// Serves every connection on a vsock listener, one thread each, until accepting fails hard.
pub fn serve_vsock(listener: VsockListener) -> io::Result<()> {
    serve(|| listener.accept())
}

fn serve<S: Conn>(mut accept: impl FnMut() -> io::Result<S>) -> io::Result<()> {
    loop {
        match accept() {
            Ok(stream) => {
                let spawned = thread::Builder::new()
                    .name("agent-conn".into())
                    .spawn(move || {
                        if let Err(e) = handle_connection(stream) {
                            log::error(&e);
                        }
                    });
                if let Err(e) = spawned {
                    log::error(&e);
                }
            }
            // Out of descriptors or memory: wait for other connections to finish.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                log::error(&e);
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Serves the one request on a connection: hello, request, answer.
pub fn handle_connection<S: Conn>(stream: S) -> Result<(), ServerError> {
    let mut reader = FrameReader::new(stream.try_clone().map_err(FrameError::Io)?);
    let mut writer = FrameWriter::new(stream);
    // Ours goes first, without waiting for the client's: on a freshly woken guest that saves a
    // round trip through the guest kernel before the client knows the agent is up.
    writer.write(&Hello::ours("cairn-agent"))?;
    let hello: Hello = reader.read()?.ok_or(ServerError::NoHello)?;
    hello.check().map_err(ServerError::Handshake)?;
    let request = match reader.read::<ClientMsg>() {
        Ok(Some(request)) => request,
        Ok(None) => return Ok(()),
        // A request this agent does not know (a newer host's): say so, so the host can fall
        // back to older requests instead of guessing from a closed connection.
        Err(e @ FrameError::Decode(_)) => {
            let _ = writer.write(&AgentMsg::Error {
                message: format!("{UNKNOWN_REQUEST} (this agent is older than the host?)"),
            });
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let answer = match request {
        ClientMsg::Exec(req) => return exec::run(req, reader, writer),
        ClientMsg::Connect(req) => return tcp::run(req, reader, writer),
        ClientMsg::Put { path } => put(&path, &mut reader).map(|()| Some(AgentMsg::Done)),
        ClientMsg::Get { path } => get(&path, &mut writer).map(|()| None),
        ClientMsg::Sync => {
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { libc::sync() };
            Ok(Some(AgentMsg::Done))
        }
        ClientMsg::Ping => Ok(Some(AgentMsg::Pong)),
        ClientMsg::NetConfigure(cfg) => netcfg::configure(&cfg)
            .map(|()| Some(AgentMsg::Done))
            .map_err(ServerError::from),
        ClientMsg::SetClock { unix_nanos } => netcfg::set_clock(unix_nanos)
            .map(|()| Some(AgentMsg::Done))
            .map_err(ServerError::from),
        ClientMsg::Identity(req) => identity::apply(&req).map(|()| Some(AgentMsg::Done)),
        ClientMsg::SessionStart(req) => session::start(req).map(Some),
        ClientMsg::SessionList => Ok(Some(session::list())),
        ClientMsg::SessionAttach { id } => return session::attach(id, reader, writer),
        ClientMsg::SessionKill { id } => session::kill(id).map(Some),
        ClientMsg::Restored(req) => Ok(Some(AgentMsg::Restored(restored::apply(&req)))),
        other => Err(ServerError::Unexpected(msg_name(&other))),
    };
    match answer {
        Ok(Some(msg)) => Ok(writer.write(&msg)?),
        Ok(None) => Ok(()),
        Err(e) => {
            // The client may be gone already; the error is what matters.
            let _ = writer.write(&AgentMsg::Error {
                message: crate::error_text(&e),
            });
            Err(e)
        }
    }
}

fn absolute(path: &str) -> Result<&Path, ServerError> {
    let p = Path::new(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(ServerError::RelativePath(path.to_string()))
    }
}

fn put<S: Conn>(path: &str, reader: &mut FrameReader<S>) -> Result<(), ServerError> {
    let mut tree = TreeWriter::new(absolute(path)?);
    loop {
        match reader.read::<ClientMsg>()? {
            Some(ClientMsg::Tree(msg)) => {
                if tree.apply(msg)?.is_some() {
                    return Ok(());
                }
            }
            Some(other) => return Err(ServerError::Unexpected(msg_name(&other))),
            None => return Err(ServerError::PutTruncated),
        }
    }
}

fn get<S: Conn>(path: &str, writer: &mut FrameWriter<S>) -> Result<(), ServerError> {
    send_tree(absolute(path)?, |msg| {
        Ok(writer.write(&AgentMsg::Tree(msg))?)
    })?;
    Ok(())
}

fn msg_name(msg: &ClientMsg) -> &'static str {
    match msg {
        ClientMsg::Exec(_) => "Exec",
        ClientMsg::Stdin(_) => "Stdin",
        ClientMsg::StdinClose => "StdinClose",
        ClientMsg::Resize(_) => "Resize",
        ClientMsg::Signal(_) => "Signal",
        ClientMsg::Put { .. } => "Put",
        ClientMsg::Tree(_) => "Tree",
        ClientMsg::Get { .. } => "Get",
        ClientMsg::Sync => "Sync",
        ClientMsg::Ping => "Ping",
        ClientMsg::Connect(_) => "Connect",
        ClientMsg::Data(_) => "Data",
        ClientMsg::DataEnd => "DataEnd",
        ClientMsg::NetConfigure(_) => "NetConfigure",
        ClientMsg::SetClock { .. } => "SetClock",
        ClientMsg::Identity(_) => "Identity",
        ClientMsg::SessionStart(_) => "SessionStart",
        ClientMsg::SessionList => "SessionList",
        ClientMsg::SessionAttach { .. } => "SessionAttach",
        ClientMsg::SessionKill { .. } => "SessionKill",
        ClientMsg::Restored(_) => "Restored",
    }
}

pub(crate) mod log {
    //! The agent logs to stderr (the guest console); there is nothing else to log to.

    /// Logs an error with its sources.
    pub(crate) fn error(e: &(dyn std::error::Error + 'static)) {
        eprintln!("cairn-agent: {}", crate::error_text(e));
    }
}
