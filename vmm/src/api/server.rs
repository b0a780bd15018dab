//! [`ApiServer`]: the API socket, served by one thread.
//!
//! The thread runs an epoll loop over the listening socket and every open connection, so an
//! idle keep-alive client never blocks another. Connections stay in blocking mode: a connection
//! is read once per readiness event (which cannot block), and responses are written with a
//! timeout. Requests are handled one at a time, in arrival order: each goes to the VMM thread
//! over the channel, the EventFd is written to wake the VMM's event loop, and the thread waits
//! for the answer.
//!
//! Nothing a client sends can stop the server: framing errors close that connection only, and
//! at most [`MAX_CONNECTIONS`] are kept open (the least recently active is dropped for a new
//! one). The thread ends when the VMM side of the channel is gone.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::http::{self, Framing, RequestHead};
use super::{routes, ApiRequest, ApiResponse};

/// The highest body limit [`ApiServer::with_max_body_size`] accepts.
pub const MAX_BODY_SIZE_LIMIT: usize = 16 * 1024 * 1024;
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long writing one response may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Safety net for reads, which only happen after a readiness event.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes read per readiness event.
const READ_CHUNK: usize = 16 * 1024;
/// The epoll token of the listening socket; connections count up from 1.
const LISTENER_TOKEN: u64 = 0;
/// Name of the server thread (seccomp filters are per thread kind).
pub const THREAD_NAME: &str = "cairn_api";

/// The sending half the server uses: each request comes with the sender for its answer.
pub type RequestSender = Sender<(ApiRequest, Sender<ApiResponse>)>;

/// The API socket, bound and listening, not yet served.
///
/// Clients can connect as soon as [`ApiServer::bind`] returns: their connections wait in the
/// listen backlog until [`ApiServer::spawn`]'s thread accepts them. So bind first thing in
/// `main` and report readiness right away; nothing else needs to happen before.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: Option<PathBuf>,
    max_body: usize,
    in_flight: Arc<AtomicUsize>,
}

impl ApiServer {
    /// Binds and listens on the Unix socket at `path`. A stale socket file left there by a dead
    /// process is removed first; a live one (something accepts connections on it) gives
    /// `AddrInUse`, and a file that is not a socket gives `AlreadyExists`, both untouched.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{} is served by another process", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        Ok(ApiServer {
            listener,
            path: Some(path.to_path_buf()),
            max_body: http::MAX_BODY_SIZE,
            in_flight: Arc::default(),
        })
    }

    /// Serves an already listening socket (one handed over by a jailer, for example).
    pub fn from_listener(listener: UnixListener) -> Self {
        ApiServer {
            listener,
            path: None,
            max_body: http::MAX_BODY_SIZE,
            in_flight: Arc::default(),
        }
    }

    /// Sets the largest request body accepted (Firecracker's `--http-api-max-payload-size`);
    /// larger ones get 400 (Firecracker's answer). The default is [`http::MAX_BODY_SIZE`]; values over
    /// [`MAX_BODY_SIZE_LIMIT`] are lowered to it, so that open connections cannot hold much
    /// memory.
    pub fn with_max_body_size(mut self, bytes: usize) -> Self {
        self.max_body = bytes.min(MAX_BODY_SIZE_LIMIT);
        self
    }

    /// How many requests were handed to the VMM and not yet answered on their connection. A VMM
    /// that must end after answering (a failed `/snapshot/load`) waits for it to reach 0.
    pub fn in_flight(&self) -> Arc<AtomicUsize> {
        self.in_flight.clone()
    }

    /// The socket's path, when it was bound by [`ApiServer::bind`].
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Starts the server thread. Each request is sent on `tx` with a fresh sender for its
    /// answer, then `wake` is written (1) so the VMM's event loop looks at the channel. The
    /// thread ends once `tx`'s receiver is dropped (after answering that request with 503).
    pub fn spawn(self, tx: RequestSender, wake: EventFd) -> io::Result<JoinHandle<()>> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            self.listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        let mut worker = Worker {
            listener: self.listener,
            epoll,
            conns: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            max_body: self.max_body,
            tx,
            wake,
            in_flight: self.in_flight,
        };
        std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || {
                // Narrow this thread before it reads anything a client sends.
                let filtered = crate::seccomp::install_for_thread(crate::seccomp::ThreadKind::Api);
                if let Err(e) = filtered {
                    tracing::error!("API server not started: seccomp: {e}");
                    return;
                }
                worker.run()
            })
    }
}

/// What to do with a connection after serving it.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Keep,
    Close,
    /// The VMM is gone: stop the server.
    Stop,
}

struct Conn {
    stream: UnixStream,
    /// Bytes received and not yet consumed by a request.
    buf: Vec<u8>,
    /// The head of the request being received, once complete.
    head: Option<RequestHead>,
    last_active: Instant,
}

struct Worker {
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    max_body: usize,
    tx: RequestSender,
    wake: EventFd,
    in_flight: Arc<AtomicUsize>,
}

impl Worker {
    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); MAX_CONNECTIONS + 1];
        loop {
            let count = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("API server stops: epoll_wait failed: {e}");
                    return;
                }
            };
            for event in &events[..count] {
                let token = event.data();
                if token == LISTENER_TOKEN {
                    self.accept();
                    continue;
                }
                match self.serve(token, event.event_set()) {
                    Next::Keep => {}
                    Next::Close => self.close(token),
                    Next::Stop => {
                        tracing::info!("API server stops: the VMM is gone");
                        return;
                    }
                }
            }
        }
    }

    fn accept(&mut self) {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("API accept failed: {e}");
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    // Out of descriptors: make room rather than spin on the listener.
                    self.evict_oldest();
                }
                return;
            }
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            self.evict_oldest();
        }
        // Timeouts only fail for a zero duration.
        let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let token = self.next_token;
        self.next_token += 1;
        let interest = EventSet::IN | EventSet::READ_HANG_UP;
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            stream.as_raw_fd(),
            EpollEvent::new(interest, token),
        ) {
            tracing::warn!("API connection dropped: epoll_ctl failed: {e}");
            return;
        }
        self.conns.insert(
            token,
            Conn {
                stream,
                buf: Vec::new(),
                head: None,
                last_active: Instant::now(),
            },
        );
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .conns
            .iter()
            .min_by_key(|(_, c)| c.last_active)
            .map(|(token, _)| *token);
        if let Some(token) = oldest {
            tracing::warn!("API: too many connections, dropping the least recently active");
            self.close(token);
        }
    }

    fn close(&mut self, token: u64) {
        if let Some(conn) = self.conns.remove(&token) {
            // Closing the descriptor would remove it from the interest list anyway.
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn serve(&mut self, token: u64, events: EventSet) -> Next {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Next::Keep; // Closed earlier in this batch of events.
        };
        if events.contains(EventSet::ERROR) {
            return Next::Close;
        }
        conn.last_active = Instant::now();
        let mut chunk = [0u8; READ_CHUNK];
        match conn.stream.read(&mut chunk) {
            Ok(0) => return Next::Close,
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                return Next::Keep
            }
            Err(_) => return Next::Close,
        }
        process(conn, self.max_body, &self.tx, &self.wake, &self.in_flight)
    }
}

/// Serves every complete request in the connection's buffer.
fn process(
    conn: &mut Conn,
    max_body: usize,
    tx: &RequestSender,
    wake: &EventFd,
    in_flight: &AtomicUsize,
) -> Next {
    loop {
        let head = match conn.head.take() {
            Some(head) => head,
            None => match http::parse_head(&conn.buf, max_body) {
                Framing::Partial => return Next::Keep,
                Framing::Reject(response) => {
                    tracing::debug!("API request refused: {response:?}");
                    let _ = send_all(&conn.stream, &http::response_bytes(&response, false));
                    return Next::Close;
                }
                Framing::Head(head) => {
                    let total = head.header_len.saturating_add(head.content_length);
                    if head.expect_continue
                        && conn.buf.len() < total
                        && send_all(&conn.stream, http::CONTINUE).is_err()
                    {
                        return Next::Close;
                    }
                    head
                }
            },
        };
        let total = head.header_len.saturating_add(head.content_length);
        if conn.buf.len() < total {
            conn.head = Some(head);
            return Next::Keep;
        }
        let body = &conn.buf[head.header_len..total];
        let (response, gone) = match routes::route(&head.method, &head.path, body) {
            Ok(request) => {
                let name = request.name();
                in_flight.fetch_add(1, Ordering::SeqCst);
                match dispatch(request, tx, wake) {
                    Some(response) => {
                        tracing::debug!(
                            "API {} {} ({name}) -> {}",
                            head.method,
                            head.path,
                            response.status()
                        );
                        (response, false)
                    }
                    None => (ApiResponse::error(503, "The VMM is shutting down"), true),
                }
            }
            Err(response) => {
                tracing::debug!("API {} {} refused: {:?}", head.method, head.path, response);
                (response, false)
            }
        };
        conn.buf.drain(..total);
        if conn.buf.is_empty() && conn.buf.capacity() > READ_CHUNK {
            conn.buf = Vec::new(); // Give back what a large body took.
        }
        let keep_alive = head.keep_alive && !gone;
        let written = send_all(&conn.stream, &http::response_bytes(&response, keep_alive));
        // Answered (or the client is gone): a routed request is no longer in flight.
        let _ = in_flight.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if gone {
            return Next::Stop;
        }
        if written.is_err() || !keep_alive {
            return Next::Close;
        }
    }
}

/// Writes all of `bytes`. `MSG_NOSIGNAL` turns a vanished peer into `EPIPE` instead of a
/// SIGPIPE that would kill the process whatever the signal setup. The socket's write timeout
/// bounds how long a client that does not read can stall the server.
fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe the live `bytes` slice, which send() only
        // reads; the descriptor is owned by `stream` and open for the whole call.
        let sent = unsafe {
            libc::send(
                stream.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if sent < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let sent = usize::try_from(sent).unwrap_or(0);
        if sent == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        bytes = &bytes[sent.min(bytes.len())..];
    }
    Ok(())
}

/// Hands one request to the VMM thread and waits for the answer; `None` if the VMM is gone.
fn dispatch(request: ApiRequest, tx: &RequestSender, wake: &EventFd) -> Option<ApiResponse> {
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((request, reply_tx)).ok()?;
    if let Err(e) = wake.write(1) {
        // EAGAIN means the counter is already huge: the VMM is being woken anyway.
        if e.kind() != io::ErrorKind::WouldBlock {
            tracing::warn!("API: cannot wake the VMM: {e}");
        }
    }
    Some(reply_rx.recv().unwrap_or_else(|_| {
        ApiResponse::error(500, "The VMM dropped the request without answering")
    }))
}
