//! The MMDS stack driven with crafted Ethernet frames, as a guest would send them.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::mmds::data_store::MmdsVersion;
use crate::mmds::pdu::{flags, write_tcp_frame, TcpHeader};
use crate::mmds::tcp::{MAX_CONNECTIONS, MAX_RETRANSMISSIONS, RCV_BUF_MAX};

const GUEST_MAC: [u8; 6] = [0x06, 0, 0xac, 0x10, 0, 2];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);

/// A segment MMDS sent, as the guest reads it.
#[derive(Debug, Clone)]
struct Seg {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    mss: Option<u16>,
    payload: Vec<u8>,
}

fn store(version: MmdsVersion) -> Arc<Mutex<Mmds>> {
    let mut m = Mmds::new(51200).unwrap();
    m.put_data(
        json!({"latest": {"meta-data": {"ami-id": "ami-12345678", "big": "x".repeat(5000)}}}),
    )
    .unwrap();
    m.set_version(version);
    Arc::new(Mutex::new(m))
}

struct Guest {
    stack: MmdsStack,
    now: Instant,
}

impl Guest {
    fn new(version: MmdsVersion) -> Self {
        Self {
            stack: MmdsStack::new(DEFAULT_MMDS_IPV4, store(version)),
            now: Instant::now(),
        }
    }

    fn tcp_frame(
        port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        f: u8,
        window: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 100 + payload.len()];
        let h = TcpHeader {
            src_port: port,
            dst_port,
            seq,
            ack,
            flags: f,
            window,
            mss: (f & flags::SYN != 0).then_some(1000),
        };
        let n = write_tcp_frame(
            &mut buf,
            MMDS_MAC,
            GUEST_MAC,
            GUEST_IP,
            DEFAULT_MMDS_IPV4,
            &h,
            payload,
        )
        .unwrap();
        buf.truncate(n);
        buf
    }

    fn send_frame(&mut self, frame: &[u8]) {
        assert!(self.stack.is_mmds_frame(frame));
        self.stack.detour_frame(frame, self.now);
    }

    #[allow(clippy::too_many_arguments)]
    fn send(&mut self, port: u16, seq: u32, ack: u32, f: u8, payload: &[u8]) {
        let frame = Self::tcp_frame(port, MMDS_TCP_PORT, seq, ack, f, 65535, payload);
        self.send_frame(&frame);
    }

    /// Every frame MMDS has for the guest now, as TCP segments (checksums checked).
    fn recv(&mut self) -> Vec<Seg> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Some(n) = self.stack.write_next_frame(&mut buf, self.now) {
            let eth = pdu::Ethernet::parse(&buf[..n]).unwrap();
            assert_eq!(eth.src, MMDS_MAC);
            assert_eq!(&buf[..6], &GUEST_MAC);
            let ip = pdu::Ipv4::parse(eth.payload).unwrap();
            assert_eq!((ip.src, ip.dst), (DEFAULT_MMDS_IPV4, GUEST_IP));
            let t = pdu::Tcp::parse(ip.payload, ip.src, ip.dst).unwrap();
            out.push(Seg {
                src_port: t.src_port,
                dst_port: t.dst_port,
                seq: t.seq,
                ack: t.ack,
                flags: t.flags,
                window: t.window,
                mss: t.mss,
                payload: t.payload.to_vec(),
            });
            assert!(out.len() < 1000, "MMDS keeps sending");
        }
        out
    }

    /// Take whatever MMDS has, without looking (frames may be odd after hostile input).
    fn drain(&mut self) {
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while self.stack.write_next_frame(&mut buf, self.now).is_some() {
            n += 1;
            assert!(n < 1000, "MMDS keeps sending");
        }
    }

    /// Open a connection from `port` with initial sequence 1000; returns MMDS's ISS.
    fn connect(&mut self, port: u16) -> u32 {
        self.send(port, 1000, 0, flags::SYN, &[]);
        let segs = self.recv();
        assert_eq!(segs.len(), 1);
        let s = &segs[0];
        assert_eq!(s.flags, flags::SYN | flags::ACK);
        assert_eq!((s.src_port, s.dst_port, s.ack), (80, port, 1001));
        assert_eq!(s.mss, Some(1460));
        self.send(port, 1001, s.seq.wrapping_add(1), flags::ACK, &[]);
        assert!(self.recv().is_empty());
        s.seq
    }

    /// Send `request` on an open connection and collect the whole response, acknowledging it.
    fn request(&mut self, port: u16, seq: u32, iss_next: u32, request: &str) -> (Vec<u8>, u32) {
        self.send(
            port,
            seq,
            iss_next,
            flags::ACK | flags::PSH,
            request.as_bytes(),
        );
        let mut body = Vec::new();
        let mut next = iss_next;
        for s in self.recv() {
            assert_eq!(s.seq, next);
            assert_eq!(s.ack, seq.wrapping_add(request.len() as u32));
            next = next.wrapping_add(s.payload.len() as u32);
            body.extend_from_slice(&s.payload);
        }
        self.send(
            port,
            seq.wrapping_add(request.len() as u32),
            next,
            flags::ACK,
            &[],
        );
        (body, next)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn arp_for_the_mmds_address_is_answered() {
    let mut g = Guest::new(MmdsVersion::V1);
    let mut frame = vec![0u8; 42];
    pdu::write_ethernet(&mut frame, [0xff; 6], GUEST_MAC, ETHERTYPE_ARP).unwrap();
    pdu::write_arp_reply(
        &mut frame[14..],
        GUEST_MAC,
        GUEST_IP,
        [0; 6],
        DEFAULT_MMDS_IPV4,
    )
    .unwrap();
    frame[21] = 1; // a request
    assert!(g.stack.is_mmds_frame(&frame));
    g.stack.detour_frame(&frame, g.now);
    let mut buf = [0u8; 100];
    let n = g.stack.write_next_frame(&mut buf, g.now).unwrap();
    assert_eq!(n, 42);
    assert_eq!(&buf[..6], &GUEST_MAC);
    assert_eq!(&buf[6..12], &MMDS_MAC);
    assert_eq!(&buf[12..14], &[8, 6]);
    assert_eq!(&buf[20..22], &[0, 2], "a reply");
    assert_eq!(&buf[22..28], &MMDS_MAC);
    assert_eq!(&buf[28..32], &[169, 254, 169, 254]);
    assert_eq!(&buf[32..38], &GUEST_MAC);
    assert_eq!(&buf[38..42], &GUEST_IP.octets());
    assert!(g.stack.write_next_frame(&mut buf, g.now).is_none());

    // ARP for another address, and IPv4 elsewhere, are not MMDS's.
    frame[38..42].copy_from_slice(&[172, 16, 0, 1]);
    assert!(!g.stack.is_mmds_frame(&frame));
    let mut other = Guest::tcp_frame(5, 80, 0, 0, flags::SYN, 100, &[]);
    other[30..34].copy_from_slice(&[1, 2, 3, 4]);
    assert!(!g.stack.is_mmds_frame(&other));
    assert!(!g.stack.is_mmds_frame(&frame[..20]));
}

#[test]
fn a_v1_get_over_tcp_and_an_orderly_close() {
    let mut g = Guest::new(MmdsVersion::V1);
    let iss = g.connect(40000);
    assert_eq!(g.stack.connection_count(), 1);
    let req = "GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n";
    let (resp, next) = g.request(40000, 1001, iss.wrapping_add(1), req);
    let resp = text(&resp);
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nami-12345678"), "{resp}");

    // A second request on the same connection, in JSON.
    let seq = 1001 + req.len() as u32;
    let req2 = "GET /latest HTTP/1.1\r\nAccept: application/json\r\n\r\n";
    let (resp2, next) = g.request(40000, seq, next, req2);
    assert!(text(&resp2).contains("\"ami-id\":\"ami-12345678\""));

    // The guest closes; MMDS acknowledges and closes too.
    let seq = seq + req2.len() as u32;
    g.send(40000, seq, next, flags::FIN | flags::ACK, &[]);
    let segs = g.recv();
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].flags, flags::FIN | flags::ACK);
    assert_eq!((segs[0].seq, segs[0].ack), (next, seq + 1));
    g.send(40000, seq + 1, next + 1, flags::ACK, &[]);
    assert_eq!(g.stack.connection_count(), 0);
    assert!(g.recv().is_empty());
    let st = g.stack.stats();
    assert_eq!((st.connections_created, st.connections_destroyed), (1, 1));
    assert!(st.tx_frames >= 4 && st.tx_bytes > 100, "{st:?}");
    assert_eq!(st.rx_dropped, 0);
}

#[test]
fn v2_tokens_over_tcp() {
    let mut g = Guest::new(MmdsVersion::V2);
    let iss = g.connect(1);
    let req = "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n";
    let (resp, next) = g.request(1, 1001, iss + 1, req);
    assert!(text(&resp).starts_with("HTTP/1.1 401 Unauthorized\r\n"));
    let mut seq = 1001 + req.len() as u32;
    let put = "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n";
    let (resp, next) = g.request(1, seq, next, put);
    let resp = text(&resp);
    let token = resp.rsplit("\r\n\r\n").next().unwrap().to_string();
    assert_eq!(token.len(), 44, "{resp}");
    seq += put.len() as u32;
    let get = format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
    let (resp, _) = g.request(1, seq, next, &get);
    assert!(text(&resp).ends_with("ami-12345678"));
}

#[test]
fn a_split_request_and_a_response_over_many_segments() {
    let mut g = Guest::new(MmdsVersion::V1);
    let iss = g.connect(7);
    g.send(
        7,
        1001,
        iss + 1,
        flags::ACK,
        b"GET /latest/meta-data/big HT",
    );
    let segs = g.recv();
    assert_eq!(segs.len(), 1, "an ACK for the first part");
    assert_eq!((segs[0].ack, segs[0].payload.len()), (1001 + 28, 0));
    assert_eq!(segs[0].window as usize, RCV_BUF_MAX - 28);
    g.send(7, 1029, iss + 1, flags::ACK, b"TP/1.1\r\n\r\n");
    let segs = g.recv();
    // 5000 bytes of body plus headers in segments of at most the guest's MSS (1000).
    assert!(segs.len() >= 6, "{}", segs.len());
    assert!(segs.iter().all(|s| s.payload.len() <= 1000));
    let all: Vec<u8> = segs.iter().flat_map(|s| s.payload.clone()).collect();
    assert!(text(&all).ends_with(&"x".repeat(5000)));
}

#[test]
fn the_guest_window_is_respected_and_lost_data_is_sent_again() {
    let mut g = Guest::new(MmdsVersion::V1);
    let iss = g.connect(9);
    // A window of 1500 bytes.
    let req = b"GET /latest/meta-data/big HTTP/1.1\r\n\r\n";
    let f = Guest::tcp_frame(9, 80, 1001, iss + 1, flags::ACK, 1500, req);
    g.send_frame(&f);
    let segs = g.recv();
    let sent: usize = segs.iter().map(|s| s.payload.len()).sum();
    assert_eq!(sent, 1500);
    // Nothing acknowledged: after the timeout the first segment comes again.
    g.now += Duration::from_millis(350);
    let again = g.recv();
    assert_eq!(again[0].seq, iss + 1);
    assert_eq!(again[0].payload, segs[0].payload);
    // Three duplicate ACKs also bring it back.
    let seq = 1001 + req.len() as u32;
    for _ in 0..3 {
        let f = Guest::tcp_frame(9, 80, seq, iss + 1, flags::ACK, 1500, &[]);
        g.send_frame(&f);
    }
    let again = g.recv();
    assert_eq!(again[0].seq, iss + 1);
    // Never acknowledged: the connection is reset in the end.
    for _ in 0..=MAX_RETRANSMISSIONS + 1 {
        g.now += Duration::from_secs(11);
        let segs = g.recv();
        if segs.iter().any(|s| s.flags & flags::RST != 0) {
            assert_eq!(g.stack.connection_count(), 0);
            return;
        }
    }
    panic!("never reset");
}

#[test]
fn stray_segments_get_resets_and_oversized_requests_reset() {
    let mut g = Guest::new(MmdsVersion::V1);
    // An ACK for no connection: RST with its ack as sequence.
    g.send(3, 50, 777, flags::ACK, b"x");
    let segs = g.recv();
    assert_eq!(segs.len(), 1);
    assert_eq!((segs[0].flags, segs[0].seq), (flags::RST, 777));
    // A SYN to another port: RST|ACK.
    let f = Guest::tcp_frame(3, 8080, 50, 0, flags::SYN, 100, &[]);
    g.send_frame(&f);
    let segs = g.recv();
    assert_eq!((segs[0].flags, segs[0].ack), (flags::RST | flags::ACK, 51));
    // An RST for no connection is ignored.
    g.send(3, 50, 0, flags::RST, &[]);
    assert!(g.recv().is_empty());

    // A request that never ends resets the connection.
    let iss = g.connect(4);
    let junk = vec![b'a'; 1000];
    let mut seq = 1001u32;
    for _ in 0..3 {
        g.send(4, seq, iss + 1, flags::ACK, &junk);
        seq += 1000;
    }
    let segs = g.recv();
    assert!(segs.iter().any(|s| s.flags & flags::RST != 0), "{segs:?}");
    assert_eq!(g.stack.connection_count(), 0);
}

#[test]
fn out_of_order_and_repeated_data_is_taken_once() {
    let mut g = Guest::new(MmdsVersion::V1);
    let iss = g.connect(11);
    // A segment past a gap: only a duplicate ACK.
    g.send(11, 1005, iss + 1, flags::ACK, b"/ HTTP/1.1\r\n\r\n");
    let segs = g.recv();
    assert_eq!((segs.len(), segs[0].ack), (1, 1001));
    g.send(11, 1001, iss + 1, flags::ACK, b"GET ");
    assert_eq!(g.recv()[0].ack, 1005);
    // The same bytes again, then overlapping ones completing the request.
    g.send(11, 1001, iss + 1, flags::ACK, b"GET ");
    assert_eq!(g.recv()[0].ack, 1005);
    g.send(11, 1003, iss + 1, flags::ACK, b"T / HTTP/1.1\r\n\r\n");
    let segs = g.recv();
    let all: Vec<u8> = segs.iter().flat_map(|s| s.payload.clone()).collect();
    assert!(text(&all).ends_with("\r\n\r\nlatest/"), "{}", text(&all));
}

#[test]
fn connections_are_bounded_and_idle_ones_evicted() {
    let mut g = Guest::new(MmdsVersion::V1);
    for port in 0..MAX_CONNECTIONS as u16 {
        g.connect(100 + port);
    }
    assert_eq!(g.stack.connection_count(), MAX_CONNECTIONS);
    // One more: dropped while the others are live.
    g.send(99, 1000, 0, flags::SYN, &[]);
    assert!(g.recv().is_empty());
    // Once they are idle, the oldest makes room (and is reset).
    g.now += Duration::from_secs(11);
    g.send(99, 1000, 0, flags::SYN, &[]);
    let segs = g.recv();
    assert!(segs.iter().any(|s| s.flags & flags::RST != 0));
    assert!(segs
        .iter()
        .any(|s| s.flags == flags::SYN | flags::ACK && s.dst_port == 99));
    assert_eq!(g.stack.connection_count(), MAX_CONNECTIONS);
    // A retransmitted SYN gets the same SYN-ACK; an RST closes.
    g.send(99, 1000, 0, flags::SYN, &[]);
    let again = g.recv();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].flags, flags::SYN | flags::ACK);
    g.send(99, 1001, 0, flags::RST, &[]);
    assert_eq!(g.stack.connection_count(), MAX_CONNECTIONS - 1);
}

#[test]
fn hostile_frames_never_panic() {
    let mut g = Guest::new(MmdsVersion::V2);
    let iss = g.connect(5);
    let good = Guest::tcp_frame(
        5,
        80,
        1001,
        iss + 1,
        flags::ACK,
        100,
        b"GET / HTTP/1.1\r\n\r\n",
    );
    // Every truncation, and bytes flipped by a simple generator.
    for n in 0..good.len() {
        if g.stack.is_mmds_frame(&good[..n]) {
            g.stack.detour_frame(&good[..n], g.now);
        }
        g.drain();
    }
    let mut x: u32 = 0x1234_5678;
    for _ in 0..20_000 {
        let mut f = good.clone();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = (x as usize) % f.len();
            f[i] = (x >> 8) as u8;
        }
        f.truncate(14 + (x as usize % (f.len() - 13)));
        if g.stack.is_mmds_frame(&f) {
            g.stack.detour_frame(&f, g.now);
        }
        g.drain();
    }
    let st = g.stack.stats();
    assert!(st.rx_dropped > 0 && st.rx_frames > st.rx_dropped, "{st:?}");
}
