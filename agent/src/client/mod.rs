//! The host side: connects to an agent and runs requests on it.
//!
//! Each request uses its own connection. [`Client::connect_uds`] and [`Client::connect_unix`]
//! open (and check) the first one at once; later requests reconnect the same way.
//!
//! ```no_run
//! use cairn_agent::client::Client;
//! use cairn_agent::proto::ExecRequest;
//! let mut client = Client::connect_uds("/run/vm/vsock.sock", 52)?;
//! let req = ExecRequest { argv: vec!["uname".into(), "-a".into()], ..Default::default() };
//! let status = client.exec(&req, std::io::empty(), std::io::stdout(), std::io::stderr())?;
//! assert!(status.success());
//! # Ok::<(), cairn_agent::client::ClientError>(())
//! ```

pub mod exit_code;
mod session;
pub mod tty;
mod tunnel;

pub use session::{AttachedSession, Detacher};
pub use tunnel::{LocalStream, SpliceStats, Tunnel, TunnelAbort};

use crate::proto::{
    AgentMsg, ClientMsg, ConnectRequest, ExecRequest, FrameError, FrameReader, FrameWriter, Hello,
    PtySize, CHUNK,
};
use crate::tree::{send_tree, TransferStats, TreeError, TreeWriter};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long connecting (including the `CONNECT` handshake and the hellos) may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The Unix socket could not be reached.
    #[error("connect to {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The VMM's vsock proxy did not accept `CONNECT`.
    #[error("vsock CONNECT to port {port} via {path}: {reason}")]
    VsockConnect {
        /// The VMM's vsock Unix socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
        /// What went wrong.
        reason: String,
    },
    /// The connection setup took longer than allowed.
    #[error("timed out after {0:?} connecting to the agent")]
    Timeout(Duration),
    /// The agent's hello was not acceptable.
    #[error("handshake: {0}")]
    Handshake(String),
    /// Reading or writing a frame failed.
    #[error("agent connection")]
    Frame(#[from] FrameError),
    /// The agent closed the connection before answering.
    #[error("agent closed the connection before answering")]
    Closed,
    /// The agent reported an error.
    #[error("agent: {0}")]
    Agent(String),
    /// The agent does not know this request (it is older than the client).
    #[error("the guest agent does not know the {0} request (it is older than this cairn)")]
    Unsupported(&'static str),
    /// The agent sent a message that does not fit the request.
    #[error("unexpected message from agent: {0}")]
    Unexpected(String),
    /// A local tree could not be read or written.
    #[error("file transfer")]
    Tree(#[from] TreeError),
    /// Reading local stdin or writing local stdout/stderr failed.
    #[error("local stdio")]
    Stdio(#[source] io::Error),
}

/// How a guest process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }

    /// The code a shell would report: the exit code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

#[derive(Debug, Clone)]
enum Target {
    /// A Unix socket the agent itself listens on.
    Unix(PathBuf),
    /// A Firecracker-style vsock proxy: `CONNECT <port>`.
    Uds { path: PathBuf, port: u32 },
}

/// A connection whose hellos have been exchanged and that carries no request yet.
#[derive(Debug)]
struct Session {
    reader: FrameReader<UnixStream>,
    writer: FrameWriter<UnixStream>,
    agent: Hello,
}

/// A handle on one guest agent.
#[derive(Debug)]
pub struct Client {
    target: Target,
    timeout: Duration,
    idle: Option<Session>,
}

impl Client {
    /// Connects through a VMM's vsock Unix socket (`uds_path`), asking for guest `port` with
    /// Firecracker's `CONNECT <port>\n` / `OK <hostport>\n` exchange, then exchanges hellos.
    pub fn connect_uds(uds_path: impl Into<PathBuf>, port: u32) -> Result<Self, ClientError> {
        Self::connect(
            Target::Uds {
                path: uds_path.into(),
                port,
            },
            DEFAULT_CONNECT_TIMEOUT,
        )
    }

    /// Connects to an agent listening on a Unix socket (`cairn-agent --listen-unix PATH`).
    pub fn connect_unix(path: impl Into<PathBuf>) -> Result<Self, ClientError> {
        Self::connect(Target::Unix(path.into()), DEFAULT_CONNECT_TIMEOUT)
    }

    /// Like [`Client::connect_uds`] with a connect timeout of your choosing (for this and every
    /// later connection).
    pub fn connect_uds_timeout(
        uds_path: impl Into<PathBuf>,
        port: u32,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::connect(
            Target::Uds {
                path: uds_path.into(),
                port,
            },
            timeout,
        )
    }

    fn connect(target: Target, timeout: Duration) -> Result<Self, ClientError> {
        let mut client = Client {
            target,
            timeout,
            idle: None,
        };
        client.idle = Some(client.open()?);
        Ok(client)
    }

    /// The agent's hello from the most recent connection, if one is open and unused.
    pub fn agent_software(&self) -> Option<&str> {
        self.idle.as_ref().map(|s| s.agent.software.as_str())
    }

    /// Opens a fresh connection: socket, CONNECT (for vsock), hellos; all within the timeout.
    fn open(&self) -> Result<Session, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let path = match &self.target {
            Target::Unix(p) | Target::Uds { path: p, .. } => p,
        };
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.clone(),
            source,
        })?;
        let timed_out = |e: &FrameError| matches!(e, FrameError::Io(io) if is_timeout(io));
        set_timeouts(&stream, remaining(deadline, self.timeout)?)?;
        if let Target::Uds { path, port } = &self.target {
            vsock_connect(&stream, path, *port, deadline, self.timeout)?;
        }
        let mut reader = FrameReader::new(stream.try_clone().map_err(FrameError::Io)?);
        let mut writer = FrameWriter::new(stream);
        let hello = (|| -> Result<Hello, ClientError> {
            writer.write(&Hello::ours("cairn-agent-client"))?;
            set_timeouts(writer.get_ref(), remaining(deadline, self.timeout)?)?;
            reader.read::<Hello>()?.ok_or(ClientError::Closed)
        })()
        .map_err(|e| match e {
            ClientError::Frame(f) if timed_out(&f) => ClientError::Timeout(self.timeout),
            e => e,
        })?;
        hello.check().map_err(ClientError::Handshake)?;
        // Requests themselves may take as long as they take.
        set_timeouts(writer.get_ref(), None)?;
        Ok(Session {
            reader,
            writer,
            agent: hello,
        })
    }

    fn session(&mut self) -> Result<Session, ClientError> {
        match self.idle.take() {
            Some(s) => Ok(s),
            None => self.open(),
        }
    }

    /// Round trip of a `Ping` on a fresh connection (or the one `connect_*` opened).
    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.simple(ClientMsg::Ping, |m| matches!(m, AgentMsg::Pong))
    }

    /// Asks the guest to sync(2) all file systems and waits until it has.
    pub fn sync(&mut self) -> Result<(), ClientError> {
        self.simple(ClientMsg::Sync, |m| matches!(m, AgentMsg::Done))
    }

    /// Configures the guest's network interface (address, MAC, route, resolver).
    pub fn net_configure(&mut self, cfg: &crate::proto::NetConfig) -> Result<(), ClientError> {
        self.simple(ClientMsg::NetConfigure(cfg.clone()), |m| {
            matches!(m, AgentMsg::Done)
        })
    }

    /// Sets the guest's wall clock to the host's, now.
    pub fn set_clock(&mut self) -> Result<(), ClientError> {
        let unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        self.simple(ClientMsg::SetClock { unix_nanos }, |m| {
            matches!(m, AgentMsg::Done)
        })
    }

    /// Makes the guest its own machine after a restore: reseeds its RNG from `req.entropy`,
    /// sets its hostname and machine-id (see [`crate::proto::IdentityRequest`]).
    pub fn identity(&mut self, req: &crate::proto::IdentityRequest) -> Result<(), ClientError> {
        self.simple(ClientMsg::Identity(req.clone()), |m| {
            matches!(m, AgentMsg::Done)
        })
    }

    /// Tells a restored guest its clock, network and identity in one request (see
    /// [`crate::proto::RestoredRequest`]), on the connection `connect_*` opened when there is
    /// one. An agent that does not know the request (one older than it) is
    /// [`ClientError::Unsupported`]: the caller then sends `SetClock`, `NetConfigure` and
    /// `Identity` instead.
    pub fn restored(
        &mut self,
        req: &crate::proto::RestoredRequest,
    ) -> Result<crate::proto::RestoredReport, ClientError> {
        let mut s = self.session()?;
        s.writer.write(&ClientMsg::Restored(req.clone()))?;
        match s.reader.read::<AgentMsg>() {
            Ok(Some(AgentMsg::Restored(report))) => Ok(report),
            // Agents before `Restored` drop a connection whose request they cannot decode;
            // later ones say so.
            Ok(None) | Err(FrameError::Io(_)) => Err(ClientError::Unsupported("Restored")),
            Ok(Some(AgentMsg::Error { message }))
                if message.starts_with(crate::proto::UNKNOWN_REQUEST) =>
            {
                Err(ClientError::Unsupported("Restored"))
            }
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e.into()),
        }
    }

    fn simple(
        &mut self,
        req: ClientMsg,
        ok: impl Fn(&AgentMsg) -> bool,
    ) -> Result<(), ClientError> {
        let mut s = self.session()?;
        s.writer.write(&req)?;
        match s.reader.read::<AgentMsg>()? {
            Some(m) if ok(&m) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Copies the local file or directory tree `local` to `remote` (an absolute guest path),
    /// keeping permission bits. Parents of `remote` are created; existing files are overwritten.
    pub fn put(
        &mut self,
        local: impl AsRef<Path>,
        remote: &str,
    ) -> Result<TransferStats, ClientError> {
        let mut s = self.session()?;
        s.writer.write(&ClientMsg::Put {
            path: remote.to_string(),
        })?;
        let sent = send_tree(local.as_ref(), |m| {
            Ok(s.writer.write(&ClientMsg::Tree(m))?)
        });
        let stats = match sent {
            Ok(stats) => stats,
            // The agent gave up half-way: its Error message says why, better than a broken pipe.
            Err(TreeError::Send(e)) => {
                return Err(match s.reader.read::<AgentMsg>() {
                    Ok(Some(AgentMsg::Error { message })) => ClientError::Agent(message),
                    _ => TreeError::Send(e).into(),
                })
            }
            // A local failure: dropping the connection makes the agent abandon the put.
            Err(e) => return Err(e.into()),
        };
        match s.reader.read::<AgentMsg>()? {
            Some(AgentMsg::Done) => Ok(stats),
            other => Err(unexpected(other)),
        }
    }

    /// Copies the guest file or directory tree at `remote` to `local` (into it, when `local` is an
    /// existing directory), keeping permission bits but no setuid, setgid or sticky bit, less the
    /// umask.
    pub fn get(
        &mut self,
        remote: &str,
        local: impl AsRef<Path>,
    ) -> Result<TransferStats, ClientError> {
        let mut s = self.session()?;
        s.writer.write(&ClientMsg::Get {
            path: remote.to_string(),
        })?;
        // Into an existing directory, as cp does; on the host, without privilege bits.
        let local = local.as_ref();
        let target = match Path::new(remote).file_name() {
            Some(name) if local.is_dir() => local.join(name),
            _ => local.to_path_buf(),
        };
        let mut tree = TreeWriter::for_host(target);
        loop {
            match s.reader.read::<AgentMsg>()? {
                Some(AgentMsg::Tree(m)) => {
                    if let Some(stats) = tree.apply(m)? {
                        return Ok(stats);
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Opens a TCP connection inside the guest to `req.host:req.port` (from the guest's point of
    /// view: `127.0.0.1` is the guest itself). A refused or failed connection is
    /// [`ClientError::Agent`] with the guest's reason. [`Tunnel::splice`] then carries it.
    pub fn connect_tcp(&mut self, req: &ConnectRequest) -> Result<Tunnel, ClientError> {
        let mut s = self.session()?;
        s.writer.write(&ClientMsg::Connect(req.clone()))?;
        match s.reader.read::<AgentMsg>()? {
            Some(AgentMsg::Connected) => Ok(Tunnel {
                reader: s.reader,
                writer: s.writer,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Starts a process in the guest. Use the returned [`RunningExec`] to feed it and collect
    /// its output; [`Client::exec`] does both for the common case.
    pub fn spawn(&mut self, req: &ExecRequest) -> Result<RunningExec, ClientError> {
        let mut s = self.session()?;
        s.writer.write(&ClientMsg::Exec(req.clone()))?;
        match s.reader.read::<AgentMsg>()? {
            Some(AgentMsg::Started { pid }) => Ok(RunningExec {
                pid,
                reader: s.reader,
                control: ExecControl {
                    writer: Arc::new(Mutex::new(s.writer)),
                },
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a process in the guest to its end, streaming `stdin` to it (when `req.stdin` is set)
    /// and its output to `stdout` and `stderr` as it arrives.
    ///
    /// Stdin is read on a thread of its own that is not waited for: after the process ends,
    /// a `stdin` blocked in `read` is left behind, and its next bytes go nowhere.
    pub fn exec(
        &mut self,
        req: &ExecRequest,
        stdin: impl Read + Send + 'static,
        stdout: impl Write,
        stderr: impl Write,
    ) -> Result<ExitStatus, ClientError> {
        let running = self.spawn(req)?;
        if req.stdin {
            let control = running.control();
            std::thread::spawn(move || control.pump_stdin(stdin));
        }
        running.wait(stdout, stderr)
    }
}

/// A process running in the guest.
#[derive(Debug)]
pub struct RunningExec {
    pid: u32,
    reader: FrameReader<UnixStream>,
    control: ExecControl,
}

/// One thing that happened to a running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Output on stdout (or the pty).
    Stdout(Vec<u8>),
    /// Output on stderr.
    Stderr(Vec<u8>),
    /// The process ended; no events follow.
    Exited(ExitStatus),
}

impl RunningExec {
    /// The guest pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A handle for sending stdin, signals and resizes, usable from other threads.
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }

    /// The next output or the end.
    pub fn next_event(&mut self) -> Result<ExecEvent, ClientError> {
        exec_event(self.reader.read::<AgentMsg>()?)
    }

    /// Copies output until the process ends, then closes the connection.
    pub fn wait(
        mut self,
        stdout: impl Write,
        stderr: impl Write,
    ) -> Result<ExitStatus, ClientError> {
        let status = copy_output(|| self.next_event(), stdout, stderr)?;
        // Wakes a stdin pump blocked on a full socket, and tells the agent we are done.
        let _ = self.reader.get_ref().shutdown(Shutdown::Both);
        Ok(status)
    }
}

/// An agent message of an exec's (or an attached session's) output stream as an [`ExecEvent`].
pub(crate) fn exec_event(msg: Option<AgentMsg>) -> Result<ExecEvent, ClientError> {
    match msg {
        Some(AgentMsg::Stdout(d)) => Ok(ExecEvent::Stdout(d)),
        Some(AgentMsg::Stderr(d)) => Ok(ExecEvent::Stderr(d)),
        Some(AgentMsg::Exit { code }) => Ok(ExecEvent::Exited(ExitStatus::Code(code))),
        Some(AgentMsg::Killed { signal }) => Ok(ExecEvent::Exited(ExitStatus::Signal(signal))),
        other => Err(unexpected(other)),
    }
}

/// Copies the events `next` yields to `stdout` and `stderr` (flushed as they come) until the
/// process ends; returns how it ended.
pub(crate) fn copy_output(
    mut next: impl FnMut() -> Result<ExecEvent, ClientError>,
    mut stdout: impl Write,
    mut stderr: impl Write,
) -> Result<ExitStatus, ClientError> {
    loop {
        match next()? {
            ExecEvent::Stdout(d) => stdout.write_all(&d).and_then(|()| stdout.flush()),
            ExecEvent::Stderr(d) => stderr.write_all(&d).and_then(|()| stderr.flush()),
            ExecEvent::Exited(status) => return Ok(status),
        }
        .map_err(ClientError::Stdio)?;
    }
}

/// Sends stdin, signals and resizes to a running process.
#[derive(Debug, Clone)]
pub struct ExecControl {
    writer: Arc<Mutex<FrameWriter<UnixStream>>>,
}

impl ExecControl {
    fn send(&self, msg: &ClientMsg) -> Result<(), ClientError> {
        Ok(self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(msg)?)
    }

    /// Writes bytes to the process's stdin.
    pub fn stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        data.chunks(CHUNK)
            .try_for_each(|c| self.send(&ClientMsg::Stdin(c.to_vec())))
    }

    /// Closes the process's stdin (with a pty: types ^D).
    pub fn close_stdin(&self) -> Result<(), ClientError> {
        self.send(&ClientMsg::StdinClose)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.send(&ClientMsg::Signal(signal))
    }

    /// Changes the pty size.
    pub fn resize(&self, size: PtySize) -> Result<(), ClientError> {
        self.send(&ClientMsg::Resize(size))
    }

    /// Copies `src` to the process's stdin until EOF, then closes it. Stops quietly when the
    /// connection has gone (the process ended).
    pub fn pump_stdin(&self, mut src: impl Read) -> Result<(), ClientError> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => return self.close_stdin(),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::Stdio(e)),
            };
            self.stdin(&buf[..n])?;
        }
    }
}

fn unexpected(msg: Option<AgentMsg>) -> ClientError {
    match msg {
        None => ClientError::Closed,
        Some(AgentMsg::Error { message }) => ClientError::Agent(message),
        Some(other) => ClientError::Unexpected(format!("{other:?}").chars().take(200).collect()),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn remaining(deadline: Instant, total: Duration) -> Result<Option<Duration>, ClientError> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(Some(d)),
        _ => Err(ClientError::Timeout(total)),
    }
}

fn set_timeouts(stream: &UnixStream, t: Option<Duration>) -> Result<(), ClientError> {
    stream
        .set_read_timeout(t)
        .and_then(|()| stream.set_write_timeout(t))
        .map_err(|e| ClientError::Frame(e.into()))
}

/// Firecracker's host-initiated vsock connection: send `CONNECT <port>\n`, expect
/// `OK <hostport>\n`. Reads byte by byte so nothing after the line is consumed.
fn vsock_connect(
    stream: &UnixStream,
    path: &Path,
    port: u32,
    deadline: Instant,
    total: Duration,
) -> Result<(), ClientError> {
    let fail = |reason: String| ClientError::VsockConnect {
        path: path.to_path_buf(),
        port,
        reason,
    };
    let io_fail = |e: io::Error| {
        if is_timeout(&e) {
            ClientError::Timeout(total)
        } else {
            fail(e.to_string())
        }
    };
    let mut s = stream;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_fail)?;
    let mut line = Vec::with_capacity(32);
    loop {
        set_timeouts(stream, remaining(deadline, total)?)?;
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {
                return Err(fail(format!(
                    "connection closed{} (is the agent listening on port {port}?)",
                    if line.is_empty() {
                        String::new()
                    } else {
                        format!(" after {:?}", String::from_utf8_lossy(&line))
                    }
                )))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() >= 64 => return Err(fail("reply line too long".into())),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_fail(e)),
        }
    }
    let line = String::from_utf8_lossy(&line);
    match line.strip_prefix("OK ") {
        Some(hostport) if hostport.trim().parse::<u32>().is_ok() => Ok(()),
        _ => Err(fail(format!("unexpected reply {line:?}"))),
    }
}
