//! The host side of virtio-vsock, following Firecracker's Unix-socket convention.
//!
//! - Host-initiated: a client connects to the listening socket at `uds_path` and sends
//!   `CONNECT <port>\n`. The muxer sends the guest a REQUEST for that port, from a local
//!   ephemeral port; when the guest answers RESPONSE it writes `OK <local port>\n` to the client,
//!   then relays bytes both ways. A RST from the guest closes the client.
//! - Guest-initiated: a REQUEST to host port `P` connects to the Unix socket `<uds_path>_P`;
//!   RESPONSE on success, RST otherwise.
//!
//! Flow control is virtio-vsock's credit scheme: the guest may have at most `buf_alloc` bytes in
//! flight toward a host socket ([`CONN_BUF_SIZE`], buffered here while the socket is full), and
//! the muxer sends the guest only as much as the guest's own `buf_alloc`/`fwd_cnt` allow.
//!
//! The muxer has its own epoll set (listener, handshakes, connection streams); the device adds
//! only that epoll fd to the VMM's loop and calls [`Muxer::process_events`] when it is readable.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::{Op, VsockHeader, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Most live connections at once; further requests are refused with RST.
pub const MAX_CONNECTIONS: usize = 256;
/// Most host clients that have connected but not yet sent their `CONNECT` line.
pub const MAX_HANDSHAKES: usize = 64;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_HANDSHAKE_LINE: usize = 32;
/// Guest data buffered per connection (the `buf_alloc` the guest is told).
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Forwarded bytes after which the guest is told its credit grew.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;
/// RST packets for unknown connections waiting for an rx buffer; beyond that, new ones are dropped
/// and the tx queue is not processed until they drain.
const MAX_RAW_RX: usize = 256;
/// First local port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Epoll data of the listening socket (other entries carry their fd).
const LISTENER_KEY: u64 = u64::MAX;

/// (host port, guest port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Host-initiated, waiting for the guest's RESPONSE.
    LocalInit,
    /// Data may flow.
    Established,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    state: ConnState,
    /// LocalInit: REQUEST already sent to the guest.
    request_sent: bool,
    /// Guest-initiated: RESPONSE still to be sent.
    pending_response: bool,
    pending_credit_update: bool,
    /// A CREDIT_REQUEST went out and no credit arrived since.
    credit_requested: bool,
    /// The host stream may have data (or EOF) to read.
    host_readable: bool,
    /// The host side reached EOF and the guest was sent SHUTDOWN.
    local_eof: bool,
    /// SHUTDOWN flags received from the guest.
    peer_shutdown: u32,
    /// Reset the connection once `tx_buf` is flushed (guest closed both directions).
    closing: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Data bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes written to the host stream.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest data the host stream has not taken yet (at most [`CONN_BUF_SIZE`]).
    tx_buf: VecDeque<u8>,
    in_rxq: bool,
    /// Interest currently registered with the muxer's epoll (empty: not registered).
    registered: EventSet,
}

impl Conn {
    fn new(stream: UnixStream, state: ConnState) -> Self {
        Self {
            stream,
            state,
            request_sent: false,
            pending_response: false,
            pending_credit_update: false,
            credit_requested: false,
            host_readable: false,
            local_eof: false,
            peer_shutdown: 0,
            closing: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            in_rxq: false,
            registered: EventSet::empty(),
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wants_to_read_host(&self) -> bool {
        self.state == ConnState::Established
            && !self.local_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && !self.closing
    }

    /// Whether [`Muxer::next_rx`] has something to send (it must agree with it).
    fn has_pending_rx(&self) -> bool {
        match self.state {
            ConnState::LocalInit => !self.request_sent,
            ConnState::Established => {
                self.pending_response
                    || self.pending_credit_update
                    || (self.wants_to_read_host()
                        && self.host_readable
                        && (self.peer_credit() > 0 || !self.credit_requested))
            }
        }
    }

    fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.wants_to_read_host() && !self.host_readable {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    fn maybe_credit_update(&mut self) {
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending_credit_update = true;
        }
    }

    /// Write guest data to the host stream, buffering what it does not take.
    fn write_from_guest(&mut self, data: &[u8]) -> io::Result<()> {
        let mut data = data;
        if self.tx_buf.is_empty() {
            while !data.is_empty() {
                match self.stream.write(data) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.fwd_cnt += Wrapping(n as u32);
                        data = &data[n..];
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        self.tx_buf.extend(data);
        self.maybe_credit_update();
        Ok(())
    }

    /// Write buffered guest data to the host stream.
    fn flush(&mut self) -> io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.maybe_credit_update();
        if self.tx_buf.is_empty() && self.peer_shutdown & SHUTDOWN_SEND != 0 {
            // The guest sends no more: pass the EOF on. Failure means the socket is gone anyway.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

/// A host client that has connected and not yet sent its whole `CONNECT` line.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// What [`Conn::next_rx`]-style logic decided to send.
enum RxOutcome {
    Packet(VsockHeader),
    Nothing,
    Kill,
}

/// The connection multiplexer.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<ConnKey, Conn>,
    fd_to_key: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Connections with something to send to the guest, each at most once.
    rxq: VecDeque<ConnKey>,
    /// RST packets for connections that do not exist (any more).
    raw_rx: VecDeque<VsockHeader>,
    next_local_port: u32,
}

impl AsRawFd for Muxer {
    /// The muxer's epoll fd: readable when a host socket needs attention.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

fn bind_listener(path: &Path) -> io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            // A socket file left by a process that is gone: nobody answers on it.
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false);
            let stale = is_socket
                && matches!(UnixStream::connect(path), Err(ref c) if c.kind() == io::ErrorKind::ConnectionRefused);
            if !stale {
                return Err(e);
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        other => other,
    }
}

impl Muxer {
    /// Listen on `uds_path` for host clients of a guest with CID `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        let listener = bind_listener(uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_KEY),
        )?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            fd_to_key: HashMap::new(),
            handshakes: HashMap::new(),
            rxq: VecDeque::new(),
            raw_rx: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The path the muxer listens on.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether there is a packet for the guest.
    pub fn has_pending_rx(&self) -> bool {
        !self.raw_rx.is_empty() || !self.rxq.is_empty()
    }

    /// Whether guest packets should wait (too many unsent RSTs).
    pub fn tx_backlogged(&self) -> bool {
        self.raw_rx.len() >= MAX_RAW_RX
    }

    /// Drop every connection and pending handshake (device reset, transport reset).
    pub fn reset(&mut self) {
        let fds: Vec<RawFd> = self.fd_to_key.keys().copied().collect();
        for fd in fds {
            self.remove_by_fd(fd);
        }
        let hs: Vec<RawFd> = self.handshakes.keys().copied().collect();
        for fd in hs {
            self.drop_handshake(fd);
        }
        self.rxq.clear();
        self.raw_rx.clear();
    }

    /// Handle whatever the host sockets reported (non-blocking).
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!("vsock: epoll_wait failed: {e}");
                }
                return;
            }
        };
        for ev in &events[..n] {
            let data = ev.data();
            let set = ev.event_set();
            if data == LISTENER_KEY {
                self.accept_clients();
                continue;
            }
            let Ok(fd) = RawFd::try_from(data) else {
                continue;
            };
            if self.handshakes.contains_key(&fd) {
                self.advance_handshake(fd);
                continue;
            }
            let Some(key) = self.fd_to_key.get(&fd).copied() else {
                continue;
            };
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if set.contains(EventSet::OUT) {
                if let Err(e) = conn.flush() {
                    tracing::debug!("vsock: host socket write failed: {e}");
                    self.kill(key);
                    continue;
                }
            }
            if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
                conn.host_readable = true;
            }
            self.refresh(key);
        }
    }

    fn accept_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() >= MAX_HANDSHAKES {
                        tracing::debug!("vsock: too many pending host clients, closing one");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if let Err(e) = self.epoll.ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(EventSet::IN, fd as u64),
                    ) {
                        tracing::warn!("vsock: cannot watch a host client: {e}");
                        continue;
                    }
                    self.handshakes.insert(
                        fd,
                        Handshake {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("vsock: accept failed: {e}");
                    break;
                }
            }
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) -> Option<Handshake> {
        let hs = self.handshakes.remove(&fd)?;
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        Some(hs)
    }

    /// Read the `CONNECT <port>\n` line one byte at a time (so no payload is consumed).
    fn advance_handshake(&mut self, fd: RawFd) {
        let port = {
            let Some(hs) = self.handshakes.get_mut(&fd) else {
                return;
            };
            let mut done = None;
            loop {
                let mut byte = [0u8; 1];
                match hs.stream.read(&mut byte) {
                    Ok(0) => {
                        done = Some(None);
                        break;
                    }
                    Ok(_) if byte[0] == b'\n' => {
                        done = Some(parse_connect(&hs.line));
                        break;
                    }
                    Ok(_) => {
                        hs.line.push(byte[0]);
                        if hs.line.len() > MAX_HANDSHAKE_LINE {
                            done = Some(None);
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        done = Some(None);
                        break;
                    }
                }
            }
            match done {
                None => return, // wait for more bytes
                Some(port) => port,
            }
        };
        let Some(hs) = self.drop_handshake(fd) else {
            return;
        };
        let Some(peer_port) = port else {
            tracing::debug!("vsock: bad CONNECT line from a host client");
            return; // dropping the stream closes the client
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!("vsock: connection limit reached, refusing a host client");
            return;
        }
        let Some(local_port) = self.alloc_local_port() else {
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        self.insert(key, Conn::new(hs.stream, ConnState::LocalInit));
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .filter(|&p| p != u32::MAX)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }

    fn insert(&mut self, key: ConnKey, conn: Conn) {
        self.fd_to_key.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.refresh(key);
    }

    /// Remove a connection without telling the guest.
    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            self.fd_to_key.remove(&fd);
            if !conn.registered.is_empty() {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            if conn.in_rxq {
                self.rxq.retain(|k| *k != key);
            }
        }
    }

    fn remove_by_fd(&mut self, fd: RawFd) {
        if let Some(key) = self.fd_to_key.get(&fd).copied() {
            self.remove(key);
        }
    }

    /// Remove a connection and reset it on the guest's side.
    fn kill(&mut self, key: ConnKey) {
        self.remove(key);
        self.push_rst(key.local_port, key.peer_port);
    }

    fn push_rst(&mut self, local_port: u32, peer_port: u32) {
        if self.raw_rx.len() >= MAX_RAW_RX {
            tracing::debug!("vsock: rx backlog full, dropping a RST");
            return;
        }
        let hdr = self.header(local_port, peer_port, Op::Rst);
        self.raw_rx.push_back(hdr);
    }

    fn header(&self, local_port: u32, peer_port: u32, op: Op) -> VsockHeader {
        VsockHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: 0,
        }
    }

    /// Schedule the connection for rx, update its epoll interest, finish a pending close.
    fn refresh(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.closing && conn.tx_buf.is_empty() {
            self.kill(key);
            return;
        }
        if conn.has_pending_rx() && !conn.in_rxq {
            conn.in_rxq = true;
            self.rxq.push_back(key);
        }
        let want = conn.interest();
        if want != conn.registered {
            let fd = conn.stream.as_raw_fd();
            let op = if conn.registered.is_empty() {
                ControlOperation::Add
            } else if want.is_empty() {
                ControlOperation::Delete
            } else {
                ControlOperation::Modify
            };
            match self.epoll.ctl(op, fd, EpollEvent::new(want, fd as u64)) {
                Ok(()) => conn.registered = want,
                Err(e) => {
                    tracing::warn!("vsock: cannot update a host socket's watch: {e}");
                    self.kill(key);
                }
            }
        }
    }

    /// A packet from the guest, already validated by the packet parser.
    pub fn send_pkt(&mut self, hdr: &VsockHeader, data: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            tracing::debug!("vsock: dropping a packet from CID {}", hdr.src_cid);
            return;
        }
        let Some(op) = hdr.op() else {
            return;
        };
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            if op != Op::Rst {
                self.push_rst(hdr.dst_port, hdr.src_port);
            }
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            match op {
                Op::Request => self.guest_connect(key, hdr),
                Op::Rst => {}
                _ => self.push_rst(key.local_port, key.peer_port),
            }
            return;
        };
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if conn.peer_credit() > 0 {
            conn.credit_requested = false;
        }
        let ok = match op {
            Op::Response if conn.state == ConnState::LocalInit && conn.request_sent => {
                conn.state = ConnState::Established;
                // Not guest data, so not counted in fwd_cnt. The client has not read anything
                // yet, so its socket buffer has room for these few bytes.
                let line = format!("OK {}\n", key.local_port);
                matches!(conn.stream.write(line.as_bytes()), Ok(n) if n == line.len())
            }
            Op::Rw
                if conn.state == ConnState::Established
                    && conn.peer_shutdown & SHUTDOWN_SEND == 0 =>
            {
                if conn.tx_buf.len() + data.len() > CONN_BUF_SIZE as usize {
                    tracing::debug!("vsock: guest overran its credit");
                    false
                } else {
                    conn.write_from_guest(data).is_ok()
                }
            }
            Op::Shutdown if conn.state == ConnState::Established => {
                conn.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if conn.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    conn.closing = true;
                }
                conn.flush().is_ok()
            }
            Op::CreditUpdate => true,
            Op::CreditRequest => {
                conn.pending_credit_update = true;
                true
            }
            Op::Rst => {
                self.remove(key);
                return;
            }
            _ => false,
        };
        if ok {
            self.refresh(key);
        } else {
            self.kill(key);
        }
    }

    fn guest_connect(&mut self, key: ConnKey, hdr: &VsockHeader) {
        if self.conns.len() >= MAX_CONNECTIONS {
            self.push_rst(key.local_port, key.peer_port);
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", key.local_port));
        let stream = match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                self.push_rst(key.local_port, key.peer_port);
                return;
            }
        };
        let mut conn = Conn::new(stream, ConnState::Established);
        conn.pending_response = true;
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        self.insert(key, conn);
    }

    /// The next packet for the guest, its data written to the front of `buf` (`len` in the
    /// header says how much; never more than `buf.len()`).
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<VsockHeader> {
        if let Some(hdr) = self.raw_rx.pop_front() {
            return Some(hdr);
        }
        // Each connection gets one chance per call: one that has nothing that fits `buf` goes
        // back to the end of the queue.
        for _ in 0..self.rxq.len() {
            let Some(key) = self.rxq.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rxq = false;
            let outcome = Self::next_rx(conn, buf);
            match outcome {
                RxOutcome::Packet(mut hdr) => {
                    hdr.src_cid = HOST_CID;
                    hdr.dst_cid = self.guest_cid;
                    hdr.src_port = key.local_port;
                    hdr.dst_port = key.peer_port;
                    hdr.type_ = TYPE_STREAM;
                    hdr.buf_alloc = CONN_BUF_SIZE;
                    hdr.fwd_cnt = conn.fwd_cnt.0;
                    conn.last_fwd_cnt_sent = conn.fwd_cnt;
                    conn.pending_credit_update = false;
                    self.refresh(key);
                    return Some(hdr);
                }
                RxOutcome::Nothing => self.refresh(key),
                RxOutcome::Kill => {
                    self.kill(key);
                    return self.raw_rx.pop_front();
                }
            }
        }
        None
    }

    fn next_rx(conn: &mut Conn, buf: &mut [u8]) -> RxOutcome {
        let pkt = |op: Op, len: u32, flags: u32| {
            RxOutcome::Packet(VsockHeader {
                len,
                op: op as u16,
                flags,
                ..VsockHeader::default()
            })
        };
        if conn.state == ConnState::LocalInit {
            if !conn.request_sent {
                conn.request_sent = true;
                return pkt(Op::Request, 0, 0);
            }
            return RxOutcome::Nothing;
        }
        if conn.pending_response {
            conn.pending_response = false;
            return pkt(Op::Response, 0, 0);
        }
        if conn.wants_to_read_host() && conn.host_readable {
            let credit = conn.peer_credit() as usize;
            if credit == 0 {
                if !conn.credit_requested {
                    conn.credit_requested = true;
                    return pkt(Op::CreditRequest, 0, 0);
                }
            } else {
                let max = credit.min(buf.len());
                if max > 0 {
                    match conn.stream.read(&mut buf[..max]) {
                        Ok(0) => {
                            conn.local_eof = true;
                            conn.host_readable = false;
                            return pkt(Op::Shutdown, 0, SHUTDOWN_RCV | SHUTDOWN_SEND);
                        }
                        Ok(n) => {
                            conn.rx_cnt += Wrapping(n as u32);
                            return pkt(Op::Rw, n as u32, 0);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            conn.host_readable = false;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return RxOutcome::Kill,
                    }
                }
            }
        }
        if conn.pending_credit_update {
            return pkt(Op::CreditUpdate, 0, 0);
        }
        RxOutcome::Nothing
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // The socket file is ours; leaving it would make the next bind fail.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// `CONNECT <port>` (without the newline) to the port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("CONNECT"), Some(port), None) => port.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
