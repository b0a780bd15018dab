//! The userfaultfd ABI (`linux/userfaultfd.h`), which the libc crate does not carry: the ioctl
//! numbers and the `#[repr(C)]` structs they take, as plain data.
//!
//! One home for the VMM (background checkpoints, filled and served restores) and the store's
//! page server. The ioctls and reads themselves stay with each caller: this crate has no
//! `unsafe`. The sizes are checked at compile time against the kernel's.

use std::mem::size_of;

/// `UFFD_API`: the API version `UFFDIO_API` asks for.
pub const UFFD_API: u64 = 0xAA;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
pub const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
/// `_IOR(0xAA, 0x01, struct uffdio_range)`.
pub const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_AA01;
/// `_IOR(0xAA, 0x02, struct uffdio_range)`.
pub const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
pub const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
/// `_IOWR(0xAA, 0x04, struct uffdio_zeropage)`.
pub const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;
/// `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)`.
pub const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xC018_AA06;
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`: `_IO(0xAA, 0x00)`.
pub const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xAA00;
/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP`.
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`.
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// `UFFD_EVENT_PAGEFAULT`: [`UffdMsg::event`] of a page fault.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_PAGEFAULT_FLAG_WP` in [`UffdMsg::flags`]: a write to a write-protected page (else the
/// page is missing).
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioApi {
    /// [`UFFD_API`].
    pub api: u64,
    /// Features asked for; on return, those the kernel has.
    pub features: u64,
    /// On return: the ioctls the descriptor takes.
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRegister {
    /// The range registered.
    pub range: UffdioRange,
    /// `UFFDIO_REGISTER_MODE_*`.
    pub mode: u64,
    /// On return: the ioctls the range takes (bit n: ioctl number n).
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioCopy {
    /// Destination in the registered range.
    pub dst: u64,
    /// Source address in the caller's memory.
    pub src: u64,
    /// Bytes to copy.
    pub len: u64,
    /// `UFFDIO_COPY_MODE_*`.
    pub mode: u64,
    /// On return: bytes copied, or a negative errno.
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioZeropage {
    /// The range to map zero pages into.
    pub range: UffdioRange,
    /// `UFFDIO_ZEROPAGE_MODE_*`.
    pub mode: u64,
    /// On return: bytes zeroed, or a negative errno.
    pub zeropage: i64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioWriteprotect {
    /// The range.
    pub range: UffdioRange,
    /// [`UFFDIO_WRITEPROTECT_MODE_WP`] to protect, 0 to resolve.
    pub mode: u64,
}

/// `struct uffd_msg` as a page fault reads it (32 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    /// `UFFD_PAGEFAULT_FLAG_*`.
    pub flags: u64,
    /// The faulting address.
    pub address: u64,
    _feat: u64,
}

const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(size_of::<UffdioRange>() == 16);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdioZeropage>() == 32);
const _: () = assert!(size_of::<UffdioWriteprotect>() == 24);
const _: () = assert!(size_of::<UffdMsg>() == 32);

#[cfg(test)]
mod tests {
    use super::*;

    /// `_IOC(dir, 0xAA, nr, size)` as linux/ioctl.h builds it.
    fn ioc(dir: u64, nr: u64, size: usize) -> libc::c_ulong {
        ((dir << 30) | ((size as u64) << 16) | (0xAA << 8) | nr) as libc::c_ulong
    }

    #[test]
    fn ioctl_numbers_encode_their_structs() {
        let (r, wr) = (2, 3);
        assert_eq!(UFFDIO_API, ioc(wr, 0x3F, size_of::<UffdioApi>()));
        assert_eq!(UFFDIO_REGISTER, ioc(wr, 0x00, size_of::<UffdioRegister>()));
        assert_eq!(UFFDIO_UNREGISTER, ioc(r, 0x01, size_of::<UffdioRange>()));
        assert_eq!(UFFDIO_WAKE, ioc(r, 0x02, size_of::<UffdioRange>()));
        assert_eq!(UFFDIO_COPY, ioc(wr, 0x03, size_of::<UffdioCopy>()));
        assert_eq!(UFFDIO_ZEROPAGE, ioc(wr, 0x04, size_of::<UffdioZeropage>()));
        assert_eq!(
            UFFDIO_WRITEPROTECT,
            ioc(wr, 0x06, size_of::<UffdioWriteprotect>())
        );
        assert_eq!(USERFAULTFD_IOC_NEW, ioc(0, 0x00, 0));
    }
}
