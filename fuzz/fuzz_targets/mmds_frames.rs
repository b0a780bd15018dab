//! Fuzz the MMDS network stack with runs of guest frames. The first byte picks V1 or V2 and
//! how fast the clock moves; then each record is either raw bytes (a 2-byte length and the
//! frame, sent if the quick check says it is for MMDS) or a well-formed TCP segment to MMDS
//! (flags, port, sequence offset, acknowledgment relative to the last SYN-ACK MMDS sent, window,
//! payload), so the fuzzer gets past checksums and random initial sequence numbers into the TCP
//! endpoint and the HTTP answers. Every frame MMDS has for the guest is drained after each
//! record. Nothing may panic, and MMDS must stop sending within a bounded number of frames.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_devices::mmds::pdu::{self, flags, TcpHeader};
use cairn_devices::mmds::{Mmds, MmdsStack, MmdsVersion};
use libfuzzer_sys::fuzz_target;

const GUEST_MAC: [u8; 6] = [6, 0, 0xac, 0x10, 0, 2];
const MMDS_MAC: [u8; 6] = [6, 1, 0x23, 0x45, 0x67, 1];
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
const MMDS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn u16_of(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, mut rest)) = data.split_first() else {
        return;
    };
    let Ok(mut store) = Mmds::new(4096) else {
        return;
    };
    let _ = store.put_data(serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-1"}}}));
    if ctl & 1 != 0 {
        store.set_version(MmdsVersion::V2);
    }
    let mut stack = MmdsStack::new(MMDS_IP, Arc::new(Mutex::new(store)));
    let mut now = Instant::now();
    let mut out = vec![0u8; 65536];
    let mut frame = vec![0u8; 2048];
    let mut iss = 0u32;
    while let Some(kind) = take(&mut rest, 1) {
        if kind[0] & 1 == 0 {
            let Some(len) = take(&mut rest, 2) else { break };
            let len = usize::from(u16_of(len)).min(rest.len());
            let raw = take(&mut rest, len).unwrap_or_default();
            if stack.is_mmds_frame(raw) {
                stack.detour_frame(raw, now);
            }
        } else {
            let Some(h) = take(&mut rest, 9) else { break };
            let plen = usize::from(h[8]).min(rest.len());
            let payload = take(&mut rest, plen).unwrap_or_default();
            let header = TcpHeader {
                src_port: 40000 + u16::from(h[1] & 3),
                dst_port: if h[1] & 0x80 != 0 { 8080 } else { 80 },
                seq: 1000u32.wrapping_add(u32::from(u16_of(&h[2..4]))),
                ack: iss.wrapping_add(u32::from(u16_of(&h[4..6]))),
                flags: h[0] & 0x3f,
                window: u16_of(&h[6..8]),
                mss: (h[0] & flags::SYN != 0).then_some(536 + u16::from(h[1] & 0x70)),
            };
            let n = pdu::write_tcp_frame(
                &mut frame, MMDS_MAC, GUEST_MAC, GUEST_IP, MMDS_IP, &header, payload,
            );
            if let Some(n) = n {
                assert!(stack.is_mmds_frame(&frame[..n]));
                stack.detour_frame(&frame[..n], now);
            }
        }
        let mut sent = 0;
        while let Some(n) = stack.write_next_frame(&mut out, now) {
            assert!(n <= out.len());
            // Learn MMDS's initial sequence number from its SYN-ACK.
            if let Some(t) = pdu::Ethernet::parse(&out[..n])
                .and_then(|e| pdu::Ipv4::parse(e.payload))
                .and_then(|ip| pdu::Tcp::parse(ip.payload, ip.src, ip.dst))
            {
                if t.flags & flags::SYN != 0 {
                    iss = t.seq;
                }
            }
            sent += 1;
            assert!(sent < 10_000, "MMDS keeps sending");
        }
        now += Duration::from_millis(u64::from(ctl >> 1) * 10);
    }
});
