//! Parsing a virtio-blk descriptor chain into a [`Request`], and running it against a [`Disk`].
//!
//! The chain comes from an untrusted driver. Layout accepted (the one Linux uses):
//! `header (16 bytes, device-readable) | data descriptors | status (device-writable, >= 1 byte)`.
//! Every descriptor must lie in guest RAM; data descriptors must point the way the request type
//! needs (device-writable for IN and GET_ID, device-readable for OUT, DISCARD, WRITE_ZEROES);
//! the chain may hold at most [`SEG_MAX`] data descriptors of at most [`SIZE_MAX`] bytes each;
//! sector ranges must lie inside the disk. Nothing is allocated from a guest-supplied length:
//! data moves through the disk's fixed bounce buffer.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::backend::DiskBackend;
use super::{
    req_status, req_type, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, SECTOR_SHIFT,
    SECTOR_SIZE, SEG_MAX, SIZE_MAX,
};
use crate::rate_limiter::RateLimiter;
use crate::virtio::serve::Handled;
use crate::GuestMemoryMmap;

/// Most descriptors in one chain: header, data segments, status.
pub const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Size of the request header (`type`, `reserved`, `sector`).
const HEADER_LEN: u32 = 16;
/// Size of one DISCARD / WRITE_ZEROES range (`sector`, `num_sectors`, `flags`).
const RANGE_LEN: usize = 16;
/// WRITE_ZEROES flag: the device may deallocate the range.
const FLAG_UNMAP: u32 = 1;
/// Size of the bounce buffer data moves through between guest memory and the backend.
pub const BOUNCE_SIZE: usize = 128 * 1024;

/// Why a request was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain has more than [`MAX_DESCRIPTORS`] descriptors.
    #[error("descriptor chain longer than {MAX_DESCRIPTORS}")]
    ChainTooLong,
    /// The chain ends on a descriptor that says it has a successor (a loop, or a bad index).
    #[error("descriptor chain is truncated or loops")]
    ChainTruncated,
    /// The last descriptor cannot hold the status byte.
    #[error("no writable status descriptor in guest RAM")]
    BadStatus,
    /// The chain has no header.
    #[error("request has no header")]
    NoHeader,
    /// The header descriptor is device-writable or shorter than 16 bytes.
    #[error("request header is not a readable 16-byte buffer")]
    BadHeader,
    /// A descriptor points outside guest RAM.
    #[error("descriptor {addr:#x}+{len:#x} is outside guest RAM")]
    OutsideMemory {
        /// Guest address of the buffer.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A data descriptor points the wrong way for the request type.
    #[error("data descriptor has the wrong direction")]
    WrongDirection,
    /// A data descriptor is empty or longer than [`SIZE_MAX`].
    #[error("data descriptor of {0} bytes")]
    BadSegmentLength(u32),
    /// The request needs data and has none.
    #[error("request has no data")]
    NoData,
    /// The data length is not a whole number of sectors (or of discard ranges).
    #[error("data length {0} is not a multiple of the unit")]
    BadDataLength(u64),
    /// The sector range goes past the end of the disk.
    #[error("sectors {sector}+{count} are past the end of the disk")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
    },
    /// A DISCARD / WRITE_ZEROES range is longer than [`MAX_DISCARD_SECTORS`].
    #[error("discard range of {0} sectors is too long")]
    RangeTooLong(u32),
    /// The request type is not supported.
    #[error("unsupported request type {0}")]
    UnsupportedType(u32),
    /// A DISCARD / WRITE_ZEROES range has flags the device does not support.
    #[error("unsupported range flags {0:#x}")]
    UnsupportedFlags(u32),
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// Guest memory could not be accessed.
    #[error("guest memory access failed")]
    GuestMemory,
    /// The backend failed.
    #[error("disk I/O failed: {0}")]
    Io(String),
}

impl RequestError {
    /// The status byte the driver gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::UnsupportedType(_) | RequestError::UnsupportedFlags(_) => {
                req_status::UNSUPP
            }
            _ => req_status::IOERR,
        }
    }
}

/// A malformed request: the error, and where its status byte goes if the chain has a usable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// What is wrong.
    pub error: RequestError,
    /// The status byte's guest address, when the chain has a valid status descriptor.
    pub status: Option<GuestAddress>,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make completed writes durable.
    Flush,
    /// Return the drive ID.
    GetId,
    /// Discard the ranges.
    Discard,
    /// Zero the ranges.
    WriteZeroes,
}

/// One guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes (1..=[`SIZE_MAX`]).
    pub len: u32,
}

/// One DISCARD / WRITE_ZEROES range, checked against the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorRange {
    /// First sector.
    pub sector: u64,
    /// Number of sectors.
    pub count: u32,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request type.
    pub kind: RequestType,
    /// First sector (IN / OUT).
    pub sector: u64,
    /// Data buffers (at most [`SEG_MAX`]).
    pub data: Vec<Segment>,
    /// Total length of `data`.
    pub data_len: u64,
    /// Ranges of a DISCARD / WRITE_ZEROES request (at most [`MAX_DISCARD_SEG`]).
    pub ranges: Vec<SectorRange>,
    /// Guest address of the status byte.
    pub status: GuestAddress,
}

/// A disk as the request code sees it: the backend plus what the device knows about it.
pub struct Disk {
    backend: Box<dyn DiskBackend>,
    read_only: bool,
    id: [u8; ID_BYTES],
    sectors: u64,
    bounce: Vec<u8>,
    stats: BlockStats,
}

/// Counters of the requests served (for the VMM's metrics); they start at 0 with the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Reads served.
    pub read_count: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Writes served.
    pub write_count: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Flushes served.
    pub flush_count: u64,
    /// Requests refused as malformed.
    pub invalid_reqs_count: u64,
    /// Well-formed requests that failed (I/O error, read-only disk...).
    pub execute_fails: u64,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("read_only", &self.read_only)
            .field("id", &self.id)
            .field("sectors", &self.sectors)
            .finish_non_exhaustive()
    }
}

impl Disk {
    /// Wrap `backend`. `drive_id` is cut or zero-padded to 20 bytes for GET_ID. A partial last
    /// sector of the backend is not visible to the guest.
    pub fn new(backend: Box<dyn DiskBackend>, read_only: bool, drive_id: &str) -> Self {
        let mut id = [0u8; ID_BYTES];
        let n = drive_id.len().min(ID_BYTES);
        id[..n].copy_from_slice(&drive_id.as_bytes()[..n]);
        let sectors = backend.len() >> SECTOR_SHIFT;
        Self {
            backend,
            read_only,
            id,
            sectors,
            bounce: vec![0; BOUNCE_SIZE],
            stats: BlockStats::default(),
        }
    }

    /// The requests served so far.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    fn count(&mut self, kind: RequestType, len: u64, ok: bool) {
        let s = &mut self.stats;
        match (kind, ok) {
            (_, false) => s.execute_fails += 1,
            (RequestType::In, true) => {
                s.read_count += 1;
                s.read_bytes += len;
            }
            (RequestType::Out, true) => {
                s.write_count += 1;
                s.write_bytes += len;
            }
            (RequestType::Flush, true) => s.flush_count += 1,
            _ => {}
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The backend (e.g. to flush it before a checkpoint).
    pub fn backend_mut(&mut self) -> &mut dyn DiskBackend {
        self.backend.as_mut()
    }

    /// Parse and run one chain, and write its status byte. Returns the number of bytes written
    /// to device-writable buffers (the used length), 0 when the chain had no usable status byte.
    pub fn process_chain(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> u32 {
        match self.process_chain_limited(chain, mem, None) {
            Handled::Done(len) => len,
            Handled::Throttled => 0,
        }
    }

    /// [`Disk::process_chain`] under a rate limiter: a valid request takes one op, and a read or
    /// write also its data length in bytes (as Firecracker counts them); when the limiter
    /// refuses, nothing is run and the chain is reported [`Handled::Throttled`].
    pub fn process_chain_limited(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        limiter: Option<&mut RateLimiter>,
    ) -> Handled {
        let (status_addr, result) = match Request::parse(chain, mem, self.sectors) {
            Ok(req) => {
                if let Some(limiter) = limiter {
                    let bytes = match req.kind {
                        RequestType::In | RequestType::Out => req.data_len,
                        _ => 0,
                    };
                    if !limiter.consume_request(bytes) {
                        return Handled::Throttled;
                    }
                }
                let result = req.execute(mem, self);
                self.count(req.kind, req.data_len, result.is_ok());
                (Some(req.status), result)
            }
            Err(m) => {
                self.stats.invalid_reqs_count += 1;
                (m.status, Err(m.error))
            }
        };
        let (status, written) = match result {
            Ok(written) => (req_status::OK, written),
            Err(e) => {
                tracing::debug!("virtio-blk: request failed: {e}");
                (e.status(), 0)
            }
        };
        let Some(addr) = status_addr else {
            return Handled::Done(0);
        };
        if mem.write_slice(&[status], addr).is_err() {
            return Handled::Done(0);
        }
        Handled::Done(written.saturating_add(1))
    }
}

/// Whether `[addr, addr + len)` is guest RAM.
fn in_ram(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    GuestMemoryBackend::check_range(mem, addr, len as usize)
}

impl Request {
    /// Validate `chain` against guest memory and a disk of `sectors` sectors.
    pub fn parse(
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        sectors: u64,
    ) -> Result<Request, Malformed> {
        let fail = |error, status| Err(Malformed { error, status });

        // Walk the chain, bounded: virtio-queue stops a loop after `queue size` steps, and we
        // stop well before that.
        let mut descs = Vec::with_capacity(4);
        let mut last_has_next = false;
        for desc in chain {
            if descs.len() == MAX_DESCRIPTORS {
                return fail(RequestError::ChainTooLong, None);
            }
            last_has_next = desc.has_next();
            descs.push(desc);
        }
        if last_has_next {
            return fail(RequestError::ChainTruncated, None);
        }

        // The status byte is the last byte of the last descriptor.
        let Some(status_desc) = descs.last() else {
            return fail(RequestError::NoHeader, None);
        };
        if !status_desc.is_write_only()
            || status_desc.len() == 0
            || !in_ram(mem, status_desc.addr(), status_desc.len())
        {
            return fail(RequestError::BadStatus, None);
        }
        let Some(status) = status_desc
            .addr()
            .checked_add(u64::from(status_desc.len()) - 1)
        else {
            return fail(RequestError::BadStatus, None);
        };
        let fail = |error| {
            Err(Malformed {
                error,
                status: Some(status),
            })
        };

        let [header, data @ .., _status] = &descs[..] else {
            return fail(RequestError::NoHeader);
        };
        if header.is_write_only() || header.len() < HEADER_LEN {
            return fail(RequestError::BadHeader);
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        if mem.read_slice(&mut raw, header.addr()).is_err() {
            return fail(RequestError::OutsideMemory {
                addr: header.addr().raw_value(),
                len: header.len(),
            });
        }
        let [t0, t1, t2, t3, _, _, _, _, s @ ..] = raw;
        let type_ = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes(s);

        let (kind, writable) = match type_ {
            req_type::IN => (RequestType::In, true),
            req_type::OUT => (RequestType::Out, false),
            req_type::FLUSH => (RequestType::Flush, false),
            req_type::GET_ID => (RequestType::GetId, true),
            req_type::DISCARD => (RequestType::Discard, false),
            req_type::WRITE_ZEROES => (RequestType::WriteZeroes, false),
            other => return fail(RequestError::UnsupportedType(other)),
        };

        let mut req = Request {
            kind,
            sector,
            data: Vec::new(),
            data_len: 0,
            ranges: Vec::new(),
            status,
        };
        if kind == RequestType::Flush {
            // FLUSH carries no data; anything between header and status is ignored.
            return Ok(req);
        }
        req.data.reserve_exact(data.len());
        for d in data {
            if d.is_write_only() != writable {
                return fail(RequestError::WrongDirection);
            }
            if d.len() == 0 || d.len() > SIZE_MAX {
                return fail(RequestError::BadSegmentLength(d.len()));
            }
            if !in_ram(mem, d.addr(), d.len()) {
                return fail(RequestError::OutsideMemory {
                    addr: d.addr().raw_value(),
                    len: d.len(),
                });
            }
            req.data.push(Segment {
                addr: d.addr(),
                len: d.len(),
            });
            req.data_len += u64::from(d.len());
        }
        if req.data.is_empty() {
            return fail(RequestError::NoData);
        }

        match kind {
            RequestType::In | RequestType::Out => {
                if req.data_len % SECTOR_SIZE != 0 {
                    return fail(RequestError::BadDataLength(req.data_len));
                }
                let count = req.data_len >> SECTOR_SHIFT;
                if sector.checked_add(count).is_none_or(|end| end > sectors) {
                    return fail(RequestError::OutOfRange { sector, count });
                }
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                let max = RANGE_LEN as u64 * u64::from(MAX_DISCARD_SEG);
                if req.data_len % RANGE_LEN as u64 != 0 || req.data_len > max {
                    return fail(RequestError::BadDataLength(req.data_len));
                }
                let mut buf = [0u8; RANGE_LEN * MAX_DISCARD_SEG as usize];
                let mut filled = 0usize;
                for seg in &req.data {
                    let end = filled + seg.len as usize;
                    if mem.read_slice(&mut buf[filled..end], seg.addr).is_err() {
                        return fail(RequestError::GuestMemory);
                    }
                    filled = end;
                }
                for raw in buf[..filled].chunks_exact(RANGE_LEN) {
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&raw[..8]);
                    let mut n = [0u8; 4];
                    n.copy_from_slice(&raw[8..12]);
                    let mut f = [0u8; 4];
                    f.copy_from_slice(&raw[12..16]);
                    let (sector, count, flags) = (
                        u64::from_le_bytes(s),
                        u32::from_le_bytes(n),
                        u32::from_le_bytes(f),
                    );
                    let allowed = if kind == RequestType::WriteZeroes {
                        FLAG_UNMAP
                    } else {
                        0
                    };
                    if flags & !allowed != 0 {
                        return fail(RequestError::UnsupportedFlags(flags));
                    }
                    if count > MAX_DISCARD_SECTORS {
                        return fail(RequestError::RangeTooLong(count));
                    }
                    if sector
                        .checked_add(u64::from(count))
                        .is_none_or(|end| end > sectors)
                    {
                        return fail(RequestError::OutOfRange {
                            sector,
                            count: u64::from(count),
                        });
                    }
                    req.ranges.push(SectorRange { sector, count });
                }
            }
            RequestType::GetId | RequestType::Flush => {}
        }
        Ok(req)
    }

    /// Run the request. Returns the number of bytes written to guest buffers.
    pub fn execute(&self, mem: &GuestMemoryMmap, disk: &mut Disk) -> Result<u32, RequestError> {
        let io = |e: std::io::Error| RequestError::Io(e.to_string());
        match self.kind {
            RequestType::In => {
                let mut off = self.sector << SECTOR_SHIFT;
                for seg in &self.data {
                    let mut done = 0u32;
                    while done < seg.len {
                        let n = (seg.len - done).min(BOUNCE_SIZE as u32);
                        let buf = &mut disk.bounce[..n as usize];
                        disk.backend.read_at(off, buf).map_err(io)?;
                        mem.write_slice(buf, seg.addr.unchecked_add(u64::from(done)))
                            .map_err(|_| RequestError::GuestMemory)?;
                        done += n;
                        off += u64::from(n);
                    }
                }
                // data_len <= SEG_MAX * SIZE_MAX, well inside u32.
                Ok(u32::try_from(self.data_len).unwrap_or(u32::MAX))
            }
            RequestType::Out => {
                if disk.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let mut off = self.sector << SECTOR_SHIFT;
                for seg in &self.data {
                    let mut done = 0u32;
                    while done < seg.len {
                        let n = (seg.len - done).min(BOUNCE_SIZE as u32);
                        let buf = &mut disk.bounce[..n as usize];
                        mem.read_slice(buf, seg.addr.unchecked_add(u64::from(done)))
                            .map_err(|_| RequestError::GuestMemory)?;
                        disk.backend.write_at(off, buf).map_err(io)?;
                        done += n;
                        off += u64::from(n);
                    }
                }
                Ok(0)
            }
            RequestType::Flush => {
                if !disk.read_only {
                    disk.backend.flush().map_err(io)?;
                }
                Ok(0)
            }
            RequestType::GetId => {
                let mut id = &disk.id[..];
                let mut written = 0u32;
                for seg in &self.data {
                    if id.is_empty() {
                        break;
                    }
                    let n = id.len().min(seg.len as usize);
                    mem.write_slice(&id[..n], seg.addr)
                        .map_err(|_| RequestError::GuestMemory)?;
                    id = &id[n..];
                    written += n as u32;
                }
                Ok(written)
            }
            RequestType::Discard | RequestType::WriteZeroes => {
                if disk.read_only {
                    return Err(RequestError::ReadOnly);
                }
                for r in &self.ranges {
                    disk.backend
                        .discard(r.sector << SECTOR_SHIFT, u64::from(r.count) << SECTOR_SHIFT)
                        .map_err(io)?;
                }
                Ok(0)
            }
        }
    }
}
