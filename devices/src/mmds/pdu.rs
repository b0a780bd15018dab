//! The few protocol headers MMDS reads and writes: Ethernet II, ARP (IPv4 over Ethernet), IPv4
//! and TCP. Readers check every length before indexing, so a hostile frame gives `None`, never a
//! panic; writers fill a caller's buffer and compute the checksums.

use std::net::Ipv4Addr;

/// Length of an Ethernet II header.
pub const ETH_HDR_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Length of an ARP packet for IPv4 over Ethernet.
pub const ARP_LEN: usize = 28;
/// Length of an IPv4 header without options (the only kind written).
pub const IPV4_HDR_LEN: usize = 20;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// Length of a TCP header without options.
pub const TCP_HDR_LEN: usize = 20;

/// TCP flags.
pub mod flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn ip_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s = b.get(at..at + 4)?;
    Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

fn mac_at(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6)?.try_into().ok()
}

/// An Ethernet frame's header fields and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ethernet<'a> {
    /// Source MAC.
    pub src: [u8; 6],
    /// EtherType.
    pub ethertype: u16,
    /// What follows the header.
    pub payload: &'a [u8],
}

impl<'a> Ethernet<'a> {
    /// Read a frame's header.
    pub fn parse(frame: &'a [u8]) -> Option<Self> {
        Some(Self {
            src: mac_at(frame, 6)?,
            ethertype: be16(frame, 12)?,
            payload: frame.get(ETH_HDR_LEN..)?,
        })
    }
}

/// Write an Ethernet header into `buf`; returns the payload's slice.
pub fn write_ethernet(
    buf: &mut [u8],
    dst: [u8; 6],
    src: [u8; 6],
    ethertype: u16,
) -> Option<&mut [u8]> {
    let hdr = buf.get_mut(..ETH_HDR_LEN)?;
    hdr[..6].copy_from_slice(&dst);
    hdr[6..12].copy_from_slice(&src);
    hdr[12..].copy_from_slice(&ethertype.to_be_bytes());
    buf.get_mut(ETH_HDR_LEN..)
}

/// An ARP request for an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRequest {
    /// Sender MAC.
    pub sha: [u8; 6],
    /// Sender IPv4 address.
    pub spa: Ipv4Addr,
    /// The address asked about.
    pub tpa: Ipv4Addr,
}

impl ArpRequest {
    /// Read an ARP request (Ethernet, IPv4, operation 1); anything else is `None`.
    pub fn parse(p: &[u8]) -> Option<Self> {
        if be16(p, 0)? != 1 || be16(p, 2)? != ETHERTYPE_IPV4 || p.get(4..6)? != [6, 4] {
            return None;
        }
        if be16(p, 6)? != 1 {
            return None;
        }
        Some(Self {
            sha: mac_at(p, 8)?,
            spa: ip_at(p, 14)?,
            tpa: ip_at(p, 24)?,
        })
    }
}

/// Write an ARP reply ("`spa` is at `sha`") for `tha`/`tpa` into `buf`; returns its length.
pub fn write_arp_reply(
    buf: &mut [u8],
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> Option<usize> {
    let p = buf.get_mut(..ARP_LEN)?;
    p[..2].copy_from_slice(&1u16.to_be_bytes());
    p[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&2u16.to_be_bytes());
    p[8..14].copy_from_slice(&sha);
    p[14..18].copy_from_slice(&spa.octets());
    p[18..24].copy_from_slice(&tha);
    p[24..28].copy_from_slice(&tpa.octets());
    Some(ARP_LEN)
}

/// An IPv4 packet's fields and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4<'a> {
    /// Protocol number.
    pub protocol: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Whether this is a fragment (more fragments follow, or a non-zero offset).
    pub fragment: bool,
    /// The payload, cut at the header's total length.
    pub payload: &'a [u8],
}

impl<'a> Ipv4<'a> {
    /// Read a packet's header (version 4, sane lengths). The header checksum is not checked.
    pub fn parse(p: &'a [u8]) -> Option<Self> {
        let first = *p.first()?;
        let ihl = usize::from(first & 0x0f) * 4;
        if first >> 4 != 4 || ihl < IPV4_HDR_LEN {
            return None;
        }
        let total = usize::from(be16(p, 2)?);
        if total < ihl || total > p.len() {
            return None;
        }
        let frag = be16(p, 6)?;
        Some(Self {
            protocol: *p.get(9)?,
            src: ip_at(p, 12)?,
            dst: ip_at(p, 16)?,
            fragment: frag & 0x2000 != 0 || frag & 0x1fff != 0,
            payload: p.get(ihl..total)?,
        })
    }
}

/// Only the destination address of an IPv4 packet (for the quick "is it for MMDS" test).
pub fn ipv4_dst(p: &[u8]) -> Option<Ipv4Addr> {
    ip_at(p, 16)
}

/// The Internet checksum (RFC 1071) of `data`, continuing from `sum`.
fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> u32 {
    let mut sum = checksum_add(0, &src.octets());
    sum = checksum_add(sum, &dst.octets());
    sum + u32::from(PROTO_TCP) + (len as u32 & 0xffff)
}

/// Write a 20-byte IPv4 header for `payload_len` bytes of TCP into `buf`; returns the payload's
/// slice.
pub fn write_ipv4(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload_len: usize,
) -> Option<&mut [u8]> {
    let total = u16::try_from(IPV4_HDR_LEN + payload_len).ok()?;
    let h = buf.get_mut(..IPV4_HDR_LEN)?;
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&[0, 0]);
    h[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    h[8] = 64;
    h[9] = PROTO_TCP;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let sum = checksum_fold(checksum_add(0, h));
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    buf.get_mut(IPV4_HDR_LEN..IPV4_HDR_LEN + payload_len)
}

/// A TCP segment's fields and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags ([`flags`]).
    pub flags: u8,
    /// Receive window (unscaled: cairn never offers window scaling).
    pub window: u16,
    /// The MSS option, if the segment carries one.
    pub mss: Option<u16>,
    /// The data.
    pub payload: &'a [u8],
}

impl<'a> Tcp<'a> {
    /// Read a segment carried from `src` to `dst`, checking its length and checksum.
    pub fn parse(s: &'a [u8], src: Ipv4Addr, dst: Ipv4Addr) -> Option<Self> {
        let offset = usize::from(*s.get(12)? >> 4) * 4;
        if offset < TCP_HDR_LEN || offset > s.len() {
            return None;
        }
        if checksum_fold(checksum_add(pseudo_header_sum(src, dst, s.len()), s)) != 0 {
            return None;
        }
        let options = s.get(TCP_HDR_LEN..offset)?;
        Some(Self {
            src_port: be16(s, 0)?,
            dst_port: be16(s, 2)?,
            seq: be32(s, 4)?,
            ack: be32(s, 8)?,
            flags: *s.get(13)? & 0x3f,
            window: be16(s, 14)?,
            mss: find_mss(options),
            payload: s.get(offset..)?,
        })
    }

    /// Sequence space the segment takes: its data, plus one each for SYN and FIN.
    pub fn seq_len(&self) -> u32 {
        let mut n = self.payload.len() as u32;
        if self.flags & flags::SYN != 0 {
            n += 1;
        }
        if self.flags & flags::FIN != 0 {
            n += 1;
        }
        n
    }
}

fn find_mss(mut o: &[u8]) -> Option<u16> {
    while let Some(&kind) = o.first() {
        match kind {
            0 => return None,
            1 => o = &o[1..],
            _ => {
                let len = usize::from(*o.get(1)?);
                if len < 2 || len > o.len() {
                    return None;
                }
                if kind == 2 && len == 4 {
                    return be16(o, 2);
                }
                o = &o[len..];
            }
        }
    }
    None
}

/// What a TCP segment to write says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flags.
    pub flags: u8,
    /// Receive window.
    pub window: u16,
    /// MSS option to add (on a SYN).
    pub mss: Option<u16>,
}

/// Write a whole Ethernet + IPv4 + TCP frame into `buf`; returns the frame's length.
#[allow(clippy::too_many_arguments)]
pub fn write_tcp_frame(
    buf: &mut [u8],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    h: &TcpHeader,
    payload: &[u8],
) -> Option<usize> {
    let hdr_len = TCP_HDR_LEN + if h.mss.is_some() { 4 } else { 0 };
    let seg_len = hdr_len + payload.len();
    let ip = write_ethernet(buf, dst_mac, src_mac, ETHERTYPE_IPV4)?;
    let s = write_ipv4(ip, src, dst, seg_len)?;
    s[0..2].copy_from_slice(&h.src_port.to_be_bytes());
    s[2..4].copy_from_slice(&h.dst_port.to_be_bytes());
    s[4..8].copy_from_slice(&h.seq.to_be_bytes());
    s[8..12].copy_from_slice(&h.ack.to_be_bytes());
    s[12] = ((hdr_len / 4) as u8) << 4;
    s[13] = h.flags;
    s[14..16].copy_from_slice(&h.window.to_be_bytes());
    s[16..20].copy_from_slice(&[0, 0, 0, 0]);
    if let Some(mss) = h.mss {
        s[20..22].copy_from_slice(&[2, 4]);
        s[22..24].copy_from_slice(&mss.to_be_bytes());
    }
    s[hdr_len..].copy_from_slice(payload);
    let sum = checksum_fold(checksum_add(pseudo_header_sum(src, dst, seg_len), s));
    s[16..18].copy_from_slice(&sum.to_be_bytes());
    Some(ETH_HDR_LEN + IPV4_HDR_LEN + seg_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

    #[test]
    fn a_written_tcp_frame_reads_back() {
        let mut buf = [0u8; 200];
        let h = TcpHeader {
            src_port: 80,
            dst_port: 4000,
            seq: 7,
            ack: 9,
            flags: flags::SYN | flags::ACK,
            window: 2500,
            mss: Some(1460),
        };
        let n = write_tcp_frame(&mut buf, [1; 6], [2; 6], B, A, &h, b"odd").unwrap();
        assert_eq!(n, 14 + 20 + 24 + 3);
        let eth = Ethernet::parse(&buf[..n]).unwrap();
        assert_eq!((eth.src, eth.ethertype), ([2; 6], ETHERTYPE_IPV4));
        let ip = Ipv4::parse(eth.payload).unwrap();
        assert_eq!(
            (ip.src, ip.dst, ip.protocol, ip.fragment),
            (B, A, PROTO_TCP, false)
        );
        // The header checksum verifies.
        assert_eq!(checksum_fold(checksum_add(0, &eth.payload[..20])), 0);
        let t = Tcp::parse(ip.payload, B, A).unwrap();
        assert_eq!((t.src_port, t.dst_port, t.seq, t.ack), (80, 4000, 7, 9));
        assert_eq!(
            (t.flags, t.window, t.mss, t.payload),
            (h.flags, 2500, Some(1460), &b"odd"[..])
        );
        assert_eq!(t.seq_len(), 4);
        // A flipped bit breaks the checksum; a wrong pseudo header too.
        let mut bad = ip.payload.to_vec();
        bad[25] ^= 1;
        assert!(Tcp::parse(&bad, B, A).is_none());
        assert!(Tcp::parse(ip.payload, B, Ipv4Addr::new(10, 0, 0, 3)).is_none());
    }

    #[test]
    fn arp_round_trip_and_junk() {
        let mut buf = [0u8; 28];
        write_arp_reply(&mut buf, [1; 6], B, [2; 6], A).unwrap();
        assert!(
            ArpRequest::parse(&buf).is_none(),
            "a reply is not a request"
        );
        buf[7] = 1;
        let r = ArpRequest::parse(&buf).unwrap();
        assert_eq!((r.sha, r.spa, r.tpa), ([1; 6], B, A));
        assert!(ArpRequest::parse(&buf[..27]).is_none());
        assert!(write_arp_reply(&mut [0u8; 27], [1; 6], B, [2; 6], A).is_none());
    }

    #[test]
    fn truncated_and_hostile_headers_are_none() {
        assert!(Ethernet::parse(&[0u8; 13]).is_none());
        assert!(Ipv4::parse(&[]).is_none());
        assert!(Ipv4::parse(&[0x45, 0, 0, 200, 0, 0, 0, 0, 64, 6, 0, 0]).is_none());
        let mut p = [0u8; 20];
        p[0] = 0x44; // IHL 16 bytes
        assert!(Ipv4::parse(&p).is_none());
        p[0] = 0x65; // version 6
        assert!(Ipv4::parse(&p).is_none());
        p[0] = 0x45;
        p[3] = 10; // total length shorter than the header
        assert!(Ipv4::parse(&p).is_none());
        p[3] = 20;
        p[6] = 0x20; // more fragments
        assert!(Ipv4::parse(&p).unwrap().fragment);
        assert!(Tcp::parse(&[0u8; 19], A, B).is_none());
        let mut t = [0u8; 20];
        t[12] = 0xf0; // data offset 60 > length
        assert!(Tcp::parse(&t, A, B).is_none());
        // Options: a zero length, an overlong one, and NOPs before an MSS.
        assert_eq!(find_mss(&[3, 0]), None);
        assert_eq!(find_mss(&[3, 9, 0]), None);
        assert_eq!(find_mss(&[1, 1, 2, 4, 5, 0xb4]), Some(1460));
        assert_eq!(find_mss(&[2, 4, 5]), None);
        for len in 0..40 {
            assert!(write_tcp_frame(
                &mut vec![0u8; len],
                [0; 6],
                [0; 6],
                A,
                B,
                &TcpHeader {
                    src_port: 1,
                    dst_port: 2,
                    seq: 0,
                    ack: 0,
                    flags: 0,
                    window: 0,
                    mss: None,
                },
                b"x"
            )
            .is_none());
        }
    }
}
