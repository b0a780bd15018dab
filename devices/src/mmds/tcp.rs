//! A small TCP server for MMDS: one local address and port, passive opens only, one HTTP
//! request answered at a time per connection.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections (a new one may evict one idle for
//! [`IDLE_EVICTION`]; otherwise its SYN is dropped and the guest retries), [`RCV_BUF_MAX`] bytes
//! of unanswered request per connection (a request that does not fit resets the connection),
//! and [`MAX_PENDING_RESETS`] queued RSTs for stray segments.
//!
//! Frames to the guest travel through its rx queue, which loses nothing, so retransmission is
//! rare: unacknowledged data is sent again (go-back-N) after three duplicate ACKs, or when the
//! retransmission timer has expired at the next time the device looks for frames to deliver
//! (each guest transmit, tap frame or rx kick). After [`MAX_RETRANSMISSIONS`] the connection is
//! reset. The window is the guest's, unscaled; cairn's is what is left of its receive buffer.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::data_store::Mmds;
use super::http;
use super::pdu::{flags, Tcp, TcpHeader};

/// Most connections at once.
pub const MAX_CONNECTIONS: usize = 30;
/// Most RSTs waiting to be sent.
pub const MAX_PENDING_RESETS: usize = 100;
/// Largest request (bytes received and not yet answered) a connection holds.
pub const RCV_BUF_MAX: usize = 2500;
/// How long a connection must be silent before a new one may take its place.
pub const IDLE_EVICTION: Duration = Duration::from_secs(10);
/// Retransmissions of the same data before the connection is reset.
pub const MAX_RETRANSMISSIONS: u32 = 15;
const RTO_INITIAL: Duration = Duration::from_millis(300);
const RTO_MAX: Duration = Duration::from_secs(10);
const DEFAULT_MSS: u16 = 536;

fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SynReceived,
    Established,
}

/// One connection, named by the guest's address and port.
#[derive(Debug)]
struct Connection {
    state: State,
    iss: u32,
    irs: u32,
    snd_una: u32,
    snd_nxt: u32,
    /// Sequence number of `send[0]`.
    data_base: u32,
    rcv_nxt: u32,
    remote_window: u16,
    remote_mss: u16,
    /// Response bytes not yet acknowledged.
    send: Vec<u8>,
    /// Request bytes not yet answered.
    recv: Vec<u8>,
    need_ack: bool,
    fin_received: bool,
    /// No more requests: send FIN after the data.
    closing: bool,
    fin_acked: bool,
    last_rx: Instant,
    rto: Duration,
    rto_at: Option<Instant>,
    retransmissions: u32,
    dup_acks: u8,
}

impl Connection {
    fn new(syn: &Tcp, iss: u32, now: Instant) -> Self {
        Self {
            state: State::SynReceived,
            iss,
            irs: syn.seq,
            snd_una: iss,
            snd_nxt: iss,
            data_base: iss.wrapping_add(1),
            rcv_nxt: syn.seq.wrapping_add(1),
            remote_window: syn.window,
            remote_mss: syn.mss.unwrap_or(DEFAULT_MSS).max(64),
            send: Vec::new(),
            recv: Vec::new(),
            need_ack: false,
            fin_received: false,
            closing: false,
            fin_acked: false,
            last_rx: now,
            rto: RTO_INITIAL,
            rto_at: None,
            retransmissions: 0,
            dup_acks: 0,
        }
    }

    fn fin_seq(&self) -> u32 {
        self.data_base.wrapping_add(self.send.len() as u32)
    }

    fn window(&self) -> u16 {
        (RCV_BUF_MAX - self.recv.len().min(RCV_BUF_MAX)) as u16
    }

    fn done(&self) -> bool {
        self.fin_received && self.fin_acked
    }

    /// Take in one segment. Returns `false` when the connection must be reset.
    fn receive(&mut self, seg: &Tcp, now: Instant) -> bool {
        self.last_rx = now;
        if seg.flags & flags::SYN != 0 {
            // A retransmitted SYN: send the SYN-ACK again.
            if self.state == State::SynReceived && seg.seq == self.irs {
                self.snd_nxt = self.iss;
            }
            return true;
        }
        if seg.flags & flags::ACK == 0 {
            return true;
        }
        let ack = seg.ack;
        if seq_lt(self.snd_nxt, ack) {
            // Acknowledges what was never sent.
            self.need_ack = true;
            return true;
        }
        if self.state == State::SynReceived {
            if ack != self.iss.wrapping_add(1) {
                return false;
            }
            self.state = State::Established;
        }
        if seq_lt(self.snd_una, ack) {
            let acked_data = ack.wrapping_sub(self.data_base) as usize;
            if seq_lt(self.data_base, ack) {
                let n = acked_data.min(self.send.len());
                self.send.drain(..n);
                self.data_base = self.data_base.wrapping_add(n as u32);
            }
            if self.closing && seq_lt(self.fin_seq(), ack) {
                self.fin_acked = true;
            }
            self.snd_una = ack;
            self.retransmissions = 0;
            self.rto = RTO_INITIAL;
            self.rto_at = (self.snd_una != self.snd_nxt).then(|| now + self.rto);
            self.dup_acks = 0;
        } else if ack == self.snd_una
            && self.snd_nxt != self.snd_una
            && seg.payload.is_empty()
            && seg.flags & flags::FIN == 0
        {
            self.dup_acks += 1;
            if self.dup_acks >= 3 {
                self.dup_acks = 0;
                self.snd_nxt = self.snd_una;
            }
        }
        self.remote_window = seg.window;
        self.take_data(seg);
        true
    }

    fn take_data(&mut self, seg: &Tcp) {
        let fin = seg.flags & flags::FIN != 0;
        if seg.payload.is_empty() && !fin {
            return;
        }
        let offset = self.rcv_nxt.wrapping_sub(seg.seq);
        if seq_lt(self.rcv_nxt, seg.seq) || offset as usize > seg.payload.len() + 1 {
            // Out of order (a gap) or wholly old: say where we are.
            self.need_ack = true;
            return;
        }
        let new = seg.payload.get(offset as usize..).unwrap_or(&[]);
        let room = RCV_BUF_MAX - self.recv.len().min(RCV_BUF_MAX);
        let take = new.len().min(room);
        self.recv.extend_from_slice(&new[..take]);
        self.rcv_nxt = self.rcv_nxt.wrapping_add(take as u32);
        self.need_ack = true;
        if fin && take == new.len() && !self.fin_received && offset as usize <= seg.payload.len() {
            self.fin_received = true;
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        }
    }

    /// Answer the next complete request if the previous answer is fully acknowledged. Returns
    /// `false` when the connection must be reset (a request larger than the buffer).
    fn serve(&mut self, mmds: &Mutex<Mmds>) -> bool {
        if self.state != State::Established || !self.send.is_empty() || self.closing {
            return true;
        }
        match http::request_end(&self.recv) {
            Some(end) => {
                let response = http::respond(mmds, &self.recv[..end]);
                self.recv.drain(..end);
                self.send = response.to_bytes();
            }
            None if self.recv.len() >= RCV_BUF_MAX => return false,
            None if self.fin_received => {
                self.recv.clear();
                self.closing = true;
            }
            None => {}
        }
        true
    }

    /// The next segment to send, if any: SYN-ACK, data, FIN, or a bare ACK.
    fn next_segment(&mut self, now: Instant) -> Option<(TcpHeader, std::ops::Range<usize>)> {
        if let Some(at) = self.rto_at {
            if now >= at {
                self.retransmissions += 1;
                self.rto = (self.rto * 2).min(RTO_MAX);
                self.rto_at = None;
                self.snd_nxt = self.snd_una;
            }
        }
        let mut h = TcpHeader {
            src_port: 0,
            dst_port: 0,
            seq: self.snd_nxt,
            ack: self.rcv_nxt,
            flags: flags::ACK,
            window: self.window(),
            mss: None,
        };
        let mut range = 0..0;
        if self.state == State::SynReceived {
            if self.snd_nxt != self.iss {
                return None;
            }
            h.flags |= flags::SYN;
            h.mss = Some(1460);
            self.snd_nxt = self.iss.wrapping_add(1);
        } else {
            let offset = self.snd_nxt.wrapping_sub(self.data_base) as usize;
            let in_flight = self.snd_nxt.wrapping_sub(self.snd_una);
            let window_left = u32::from(self.remote_window).saturating_sub(in_flight) as usize;
            if offset < self.send.len() && window_left > 0 {
                let n = (self.send.len() - offset)
                    .min(usize::from(self.remote_mss))
                    .min(window_left);
                range = offset..offset + n;
                h.flags |= flags::PSH;
                self.snd_nxt = self.snd_nxt.wrapping_add(n as u32);
            } else if self.closing && offset == self.send.len() && !self.fin_acked {
                h.flags |= flags::FIN;
                self.snd_nxt = self.snd_nxt.wrapping_add(1);
            } else if !self.need_ack {
                return None;
            }
        }
        if self.snd_nxt != self.snd_una && self.rto_at.is_none() {
            self.rto_at = Some(now + self.rto);
        }
        self.need_ack = false;
        Some((h, range))
    }
}

/// A connection's key: the guest's address and port.
type Key = (Ipv4Addr, u16);

/// The TCP server of one MMDS stack.
#[derive(Debug)]
pub struct TcpServer {
    local_port: u16,
    connections: HashMap<Key, Connection>,
    resets: VecDeque<(Ipv4Addr, TcpHeader)>,
    next_iss: u32,
    created: u64,
    destroyed: u64,
}

impl TcpServer {
    /// A server on `local_port`, with no connections.
    pub fn new(local_port: u16) -> Self {
        let mut seed = [0u8; 4];
        // Any value works; a random one makes sequence numbers harder to guess.
        let _ = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
        Self {
            local_port,
            connections: HashMap::new(),
            resets: VecDeque::new(),
            next_iss: u32::from_ne_bytes(seed),
            created: 0,
            destroyed: 0,
        }
    }

    /// The port served.
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Connections opened and closed (or reset) so far.
    pub fn connections_created_destroyed(&self) -> (u64, u64) {
        (self.created, self.destroyed)
    }

    fn remove(&mut self, key: &Key) -> Option<Connection> {
        let c = self.connections.remove(key);
        if c.is_some() {
            self.destroyed += 1;
        }
        c
    }

    fn queue_reset(&mut self, remote: Ipv4Addr, seg: &Tcp) {
        if seg.flags & flags::RST != 0 || self.resets.len() >= MAX_PENDING_RESETS {
            return;
        }
        let (seq, ack, f) = if seg.flags & flags::ACK != 0 {
            (seg.ack, 0, flags::RST)
        } else {
            (
                0,
                seg.seq.wrapping_add(seg.seq_len()),
                flags::RST | flags::ACK,
            )
        };
        self.resets.push_back((
            remote,
            TcpHeader {
                src_port: seg.dst_port,
                dst_port: seg.src_port,
                seq,
                ack,
                flags: f,
                window: 0,
                mss: None,
            },
        ));
    }

    fn reset_connection(&mut self, key: Key) {
        if let Some(c) = self.remove(&key) {
            self.resets.push_back((
                key.0,
                TcpHeader {
                    src_port: self.local_port,
                    dst_port: key.1,
                    seq: c.snd_nxt,
                    ack: c.rcv_nxt,
                    flags: flags::RST | flags::ACK,
                    window: 0,
                    mss: None,
                },
            ));
        }
    }

    /// Take in one segment from `remote`, answering requests from `mmds`.
    pub fn receive(&mut self, remote: Ipv4Addr, seg: &Tcp, mmds: &Mutex<Mmds>, now: Instant) {
        if seg.dst_port != self.local_port {
            self.queue_reset(remote, seg);
            return;
        }
        let key = (remote, seg.src_port);
        let is_syn = seg.flags & (flags::SYN | flags::ACK | flags::RST) == flags::SYN;
        if let Some(c) = self.connections.get_mut(&key) {
            if seg.flags & flags::RST != 0 {
                let in_window = seg.seq.wrapping_sub(c.rcv_nxt) <= u32::from(c.window());
                if in_window {
                    self.remove(&key);
                }
                return;
            }
            if is_syn && !(c.state == State::SynReceived && seg.seq == c.irs) {
                // The guest reuses the port for a new connection.
                self.remove(&key);
            } else {
                let ok = c.receive(seg, now) && c.serve(mmds);
                let done = c.done();
                if !ok {
                    self.reset_connection(key);
                } else if done {
                    self.remove(&key);
                }
                return;
            }
        }
        if !is_syn {
            self.queue_reset(remote, seg);
            return;
        }
        if self.connections.len() >= MAX_CONNECTIONS {
            let idle = self
                .connections
                .iter()
                .filter(|(_, c)| now.duration_since(c.last_rx) >= IDLE_EVICTION)
                .min_by_key(|(_, c)| c.last_rx)
                .map(|(k, _)| *k);
            match idle {
                Some(k) => self.reset_connection(k),
                // Full of live connections: drop the SYN; the guest will try again.
                None => return,
            }
        }
        let iss = self.next_iss;
        self.next_iss = self.next_iss.wrapping_add(64_000);
        self.connections.insert(key, Connection::new(seg, iss, now));
        self.created += 1;
    }

    /// Whether a segment may be ready (an RST or a connection with something to say).
    pub fn has_work(&self) -> bool {
        !self.resets.is_empty() || !self.connections.is_empty()
    }

    /// Hand the next segment to `write(remote, header, payload)`, which returns the frame's
    /// length. `None` when there is nothing to send (or it did not fit).
    pub fn write_next(
        &mut self,
        now: Instant,
        write: impl FnOnce(Ipv4Addr, &TcpHeader, &[u8]) -> Option<usize>,
    ) -> Option<usize> {
        if let Some((remote, h)) = self.resets.pop_front() {
            return write(remote, &h, &[]);
        }
        let keys: Vec<Key> = self.connections.keys().copied().collect();
        let mut expired = None;
        for key in keys {
            let Some(c) = self.connections.get_mut(&key) else {
                continue;
            };
            if c.retransmissions > MAX_RETRANSMISSIONS {
                expired = Some(key);
                break;
            }
            if let Some((mut h, range)) = c.next_segment(now) {
                h.src_port = self.local_port;
                h.dst_port = key.1;
                let payload = c.send.get(range).unwrap_or(&[]);
                return write(key.0, &h, payload);
            }
        }
        if let Some(key) = expired {
            self.reset_connection(key);
            if let Some((remote, h)) = self.resets.pop_front() {
                return write(remote, &h, &[]);
            }
        }
        None
    }
}
