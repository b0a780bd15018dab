//! The virtio-vsock packet: a 44-byte `virtio_vsock_hdr` followed by `len` bytes of data.
//!
//! Everything the guest hands over is checked before use: the header must sit whole in the
//! chain's first descriptor, `len` is at most [`MAX_PKT_DATA`], only stream packets with a known
//! operation are accepted, and only `RW` packets may carry data.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestMemoryBackend};

use crate::GuestMemoryMmap;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// Most data one packet may carry (the guest's rx buffers are 4 KiB; this bounds what it sends).
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// The host's well-known CID.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`.
pub const TYPE_STREAM: u16 = 1;
/// `SHUTDOWN` flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `SHUTDOWN` flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations (`VIRTIO_VSOCK_OP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset or refused.
    Rst = 3,
    /// One or both directions are closed (see [`SHUTDOWN_RCV`], [`SHUTDOWN_SEND`]).
    Shutdown = 4,
    /// Data.
    Rw = 5,
    /// The sender's `buf_alloc`/`fwd_cnt` changed.
    CreditUpdate = 6,
    /// The sender asks for a credit update.
    CreditRequest = 7,
}

impl Op {
    /// The operation with wire value `v`.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// Why a packet was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer than 44 bytes where a header should be.
    #[error("header needs {HDR_LEN} bytes, got {0}")]
    ShortHeader(usize),
    /// The socket type is not STREAM.
    #[error("unsupported socket type {0}")]
    BadType(u16),
    /// Unknown operation.
    #[error("unknown operation {0}")]
    BadOp(u16),
    /// `len` is above [`MAX_PKT_DATA`].
    #[error("data length {0} is too large")]
    DataTooLong(u32),
    /// A packet other than RW declares data.
    #[error("operation {0:?} carries {1} bytes of data")]
    UnexpectedData(Op, u32),
    /// The buffer holds less data than `len` declares.
    #[error("{declared} bytes of data declared, {available} present")]
    Truncated {
        /// `len` from the header.
        declared: u32,
        /// Bytes actually there.
        available: usize,
    },
    /// A tx chain has a device-writable descriptor where data should be, or an rx chain a
    /// device-readable one.
    #[error("descriptor has the wrong direction")]
    WrongDirection,
    /// The chain has no descriptor.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// A descriptor points outside guest memory.
    #[error("descriptor outside guest memory")]
    BadMemory,
    /// An rx chain is too small for the packet.
    #[error("rx buffer too small")]
    NoRoom,
}

/// `struct virtio_vsock_hdr`, decoded (all fields little-endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockHeader {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Bytes of data after the header.
    pub len: u32,
    /// Socket type (1: stream).
    pub type_: u16,
    /// Operation (see [`Op`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN's RCV/SEND).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wraps).
    pub fwd_cnt: u32,
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u16_at(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl VsockHeader {
    /// Decode the wire layout, without any check.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Self {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encode to the wire layout.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Check the fields that do not depend on a connection; returns the operation.
    pub fn validate(&self) -> Result<Op, PacketError> {
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::BadType(self.type_));
        }
        let op = Op::from_u16(self.op).ok_or(PacketError::BadOp(self.op))?;
        if self.len > MAX_PKT_DATA {
            return Err(PacketError::DataTooLong(self.len));
        }
        if op != Op::Rw && self.len != 0 {
            return Err(PacketError::UnexpectedData(op, self.len));
        }
        Ok(op)
    }

    /// The operation, once [`VsockHeader::validate`] accepted the header.
    pub fn op(&self) -> Option<Op> {
        Op::from_u16(self.op)
    }
}

/// Parse a packet laid out flat: header, then at least `len` bytes of data (anything after those
/// is ignored). Returns the header and its data.
pub fn parse(bytes: &[u8]) -> Result<(VsockHeader, &[u8]), PacketError> {
    let head: &[u8; HDR_LEN] = bytes
        .get(..HDR_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(PacketError::ShortHeader(bytes.len()))?;
    let hdr = VsockHeader::from_bytes(head);
    hdr.validate()?;
    let rest = &bytes[HDR_LEN..];
    let data = rest.get(..hdr.len as usize).ok_or(PacketError::Truncated {
        declared: hdr.len,
        available: rest.len(),
    })?;
    Ok((hdr, data))
}

/// Read a guest-to-host packet from a tx chain. The header must be whole in the first
/// descriptor; the data follows it there and in the next readable descriptors. The data is copied
/// into `data` (at least [`MAX_PKT_DATA`] bytes long) and its length is the header's `len`.
pub fn read_tx_packet<C>(
    mem: &GuestMemoryMmap,
    chain: C,
    data: &mut [u8],
) -> Result<VsockHeader, PacketError>
where
    C: Iterator<Item = Descriptor>,
{
    let mut chain = chain;
    let first = chain.next().ok_or(PacketError::EmptyChain)?;
    if first.is_write_only() {
        return Err(PacketError::WrongDirection);
    }
    if (first.len() as usize) < HDR_LEN {
        return Err(PacketError::ShortHeader(first.len() as usize));
    }
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, first.addr())
        .map_err(|_| PacketError::BadMemory)?;
    let hdr = VsockHeader::from_bytes(&raw);
    hdr.validate()?;
    let want = hdr.len as usize;
    if want > data.len() {
        return Err(PacketError::DataTooLong(hdr.len));
    }
    let mut got = 0usize;
    // The rest of the first descriptor, then the following ones.
    let first_rest = (
        first.addr().0.checked_add(HDR_LEN as u64),
        first.len() as usize - HDR_LEN,
    );
    let mut pieces = std::iter::once(Ok(first_rest)).chain(chain.map(|d| {
        if d.is_write_only() {
            Err(PacketError::WrongDirection)
        } else {
            Ok((Some(d.addr().0), d.len() as usize))
        }
    }));
    while got < want {
        let Some(piece) = pieces.next() else {
            return Err(PacketError::Truncated {
                declared: hdr.len,
                available: got,
            });
        };
        let (addr, len) = piece?;
        let n = len.min(want - got);
        if n == 0 {
            continue;
        }
        let addr = addr.ok_or(PacketError::BadMemory)?;
        mem.read_slice(&mut data[got..got + n], vm_memory::GuestAddress(addr))
            .map_err(|_| PacketError::BadMemory)?;
        got += n;
    }
    Ok(hdr)
}

/// How many data bytes an rx chain can take after the header (capped at [`MAX_PKT_DATA`]). The
/// chain must start with a device-writable descriptor of at least 44 bytes, contain only
/// device-writable descriptors, and lie in guest memory.
pub fn rx_data_capacity<C>(mem: &GuestMemoryMmap, chain: C) -> Result<usize, PacketError>
where
    C: Iterator<Item = Descriptor>,
{
    let mut total: u64 = 0;
    let mut first = true;
    for d in chain {
        if !d.is_write_only() {
            return Err(PacketError::WrongDirection);
        }
        if first && (d.len() as usize) < HDR_LEN {
            return Err(PacketError::NoRoom);
        }
        first = false;
        if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return Err(PacketError::BadMemory);
        }
        total += u64::from(d.len());
        if total >= HDR_LEN as u64 + u64::from(MAX_PKT_DATA) {
            break;
        }
    }
    if first {
        return Err(PacketError::EmptyChain);
    }
    let data = total
        .saturating_sub(HDR_LEN as u64)
        .min(u64::from(MAX_PKT_DATA));
    Ok(data as usize)
}

/// Write a host-to-guest packet into an rx chain: the header at the start of the first
/// descriptor, the data after it. Returns the bytes written (the used length).
pub fn write_rx_packet<C>(
    mem: &GuestMemoryMmap,
    chain: C,
    hdr: &VsockHeader,
    data: &[u8],
) -> Result<u32, PacketError>
where
    C: Iterator<Item = Descriptor> + Clone,
{
    if rx_data_capacity(mem, chain.clone())? < data.len() {
        return Err(PacketError::NoRoom);
    }
    let head = hdr.to_bytes();
    let mut src = head.iter().chain(data.iter()).copied();
    let total = HDR_LEN + data.len();
    let mut written = 0usize;
    let mut scratch = [0u8; 4096];
    for d in chain {
        if written == total {
            break;
        }
        let mut addr = d.addr();
        let mut room = (d.len() as usize).min(total - written);
        while room > 0 {
            let n = room.min(scratch.len());
            for b in scratch.iter_mut().take(n) {
                *b = src.next().unwrap_or(0);
            }
            mem.write_slice(&scratch[..n], addr)
                .map_err(|_| PacketError::BadMemory)?;
            addr = vm_memory::GuestAddress(addr.0.wrapping_add(n as u64));
            room -= n;
            written += n;
        }
    }
    u32::try_from(written).map_err(|_| PacketError::NoRoom)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn hdr(op: Op, len: u32) -> VsockHeader {
        VsockHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: op as u16,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn header_round_trip_and_layout() {
        let h = VsockHeader {
            src_cid: 0x0102030405060708,
            dst_cid: 2,
            src_port: 0xaabbccdd,
            dst_port: 9,
            len: 5,
            type_: 1,
            op: 5,
            flags: 3,
            buf_alloc: 0x10000,
            fwd_cnt: 0xfffffff0,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 0x08);
        assert_eq!(&b[16..20], &[0xdd, 0xcc, 0xbb, 0xaa]);
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(VsockHeader::from_bytes(&b), h);
    }

    #[test]
    fn parse_accepts_good_packets() {
        let mut bytes = hdr(Op::Rw, 3).to_bytes().to_vec();
        bytes.extend_from_slice(b"abcdef");
        let (h, data) = parse(&bytes).unwrap();
        assert_eq!(h.op(), Some(Op::Rw));
        assert_eq!(data, b"abc");
        for op in [
            Op::Request,
            Op::Response,
            Op::Rst,
            Op::Shutdown,
            Op::CreditUpdate,
            Op::CreditRequest,
        ] {
            let bytes = hdr(op, 0).to_bytes();
            let (h, data) = parse(&bytes).unwrap();
            assert_eq!(h.op(), Some(op));
            assert!(data.is_empty());
        }
    }

    #[test]
    fn parse_rejects_malformed_packets() {
        assert_eq!(parse(&[0u8; 43]), Err(PacketError::ShortHeader(43)));
        assert_eq!(parse(&[]), Err(PacketError::ShortHeader(0)));

        let mut h = hdr(Op::Rw, 0);
        h.type_ = 2;
        assert_eq!(parse(&h.to_bytes()), Err(PacketError::BadType(2)));

        for bad in [0u16, 8, 0xffff] {
            let mut h = hdr(Op::Rw, 0);
            h.op = bad;
            assert_eq!(parse(&h.to_bytes()), Err(PacketError::BadOp(bad)));
        }

        let h = hdr(Op::Rw, MAX_PKT_DATA + 1);
        assert_eq!(
            parse(&h.to_bytes()),
            Err(PacketError::DataTooLong(MAX_PKT_DATA + 1))
        );
        let h = hdr(Op::Rw, u32::MAX);
        assert_eq!(
            parse(&h.to_bytes()),
            Err(PacketError::DataTooLong(u32::MAX))
        );

        let h = hdr(Op::Request, 4);
        assert_eq!(
            parse(&h.to_bytes()),
            Err(PacketError::UnexpectedData(Op::Request, 4))
        );

        let mut bytes = hdr(Op::Rw, 10).to_bytes().to_vec();
        bytes.extend_from_slice(b"short");
        assert_eq!(
            parse(&bytes),
            Err(PacketError::Truncated {
                declared: 10,
                available: 5
            })
        );
    }
}
