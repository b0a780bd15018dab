//! Checkpoints that do not stop the guest: copy-before-write of guest memory with userfaultfd
//! write-protection.
//!
//! While the vCPUs are paused, [`arm`] registers guest memory with a userfaultfd in write-protect
//! mode and write-protects exactly the pages the checkpoint must save. The guest then runs again
//! and [`MemoryCopy::run`] copies those pages into the layer file, a chunk at a time, on the
//! thread that took the checkpoint. A write to a page not yet copied (by a vCPU through KVM, or by
//! a device on another thread) blocks in the kernel and arrives here as a fault message: the page
//! is copied first, with the content it had at the pause, then unprotected, which lets the writer
//! go on. Copied chunks stay protected until a writer waits on one of them, the copy moves to
//! another region, or it ends, and are then lifted together (`MemoryCopy::copied`: each lift
//! interrupts the CPUs running vCPUs). So the layer holds guest memory exactly as it was at the
//! pause, and the guest waits only for the pages it writes before their protection is lifted (one
//! 4 KiB copy each for a page not yet copied, or at most one chunk's copy until the next look at
//! the fault queue).
//!
//! Only this thread writes the layer and lifts protection, so no lock is needed: a page is never
//! unprotected before its old content is in the file. [`WriteTracker`]'s `Drop` lifts every
//! protection and unregisters, so an error part way never leaves the guest blocked.
//!
//! A copy that ends well hands its [`WriteTracker`] back, with nothing protected, and the machine
//! keeps it registered for its next checkpoint ([`crate::machine::Machine`]'s `write_tracker`):
//! unregistering makes the kernel walk every page table entry of guest memory and KVM drop all
//! its mappings of it, which cost 8–28 ms for 256 MiB on the development host, most of a small
//! checkpoint's time. A registered range with nothing protected costs nothing: no write faults.
//!
//! The kernel must allow write-protection on the memory's type: anonymous memory (a booted VM)
//! always; a `MAP_PRIVATE` file mapping (a restored VM's layers) only on tmpfs/shmem or
//! hugetlbfs. A VM restored from layers on any other file system therefore gets anonymous memory
//! filled from them by the VMM (checkpoint/filled_memory.rs). A Diff taken while that fill runs
//! tracks writes on the fill's own userfaultfd (a [`WriteTracker::shared`] one, see
//! [`SharedFaults`] and checkpoint/filled_memory/lease.rs); a Full waits for the fill to end,
//! with the guest running, and then arms as for a booted VM. [`arm`] fails where the memory
//! still cannot be tracked (no userfaultfd, `CAIRN_RESTORE_FILL=0`), and the caller copies with
//! the vCPUs paused instead.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use cairn_devices::GuestMemoryMmap;
use cairn_snapshot::memory::uffd::{
    UffdMsg, UffdioApi, UffdioRange, UffdioRegister, UffdioWriteprotect, UFFDIO_API,
    UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_WP, UFFDIO_UNREGISTER, UFFDIO_WAKE, UFFDIO_WRITEPROTECT,
    UFFDIO_WRITEPROTECT_MODE_WP, UFFD_API, UFFD_EVENT_PAGEFAULT, UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
    UFFD_PAGEFAULT_FLAG_WP, USERFAULTFD_IOC_NEW,
};
use cairn_snapshot::memory::PageIndex;

use crate::checkpoint::memory::{region_layout, LayerFile, PAGE_SIZE};
use crate::checkpoint::named::Phases;
use crate::error::VmmError;

/// Bit of `_UFFDIO_WRITEPROTECT` in the `ioctls` a registration reports.
pub(crate) const IOCTL_WRITEPROTECT_BIT: u64 = 1 << 0x06;

/// Pages copied per step between two looks at the fault queue (1 MiB).
const CHUNK_PAGES: u64 = 256;

/// Whether checkpoints copy memory in the background (the default). `CAIRN_CHECKPOINT_BACKGROUND=0`
/// in the VMM's environment makes them copy with the guest paused, as before.
pub fn enabled() -> bool {
    std::env::var("CAIRN_CHECKPOINT_BACKGROUND").as_deref() != Ok("0")
}

pub(crate) fn ioctl<T>(fd: &OwnedFd, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request used here takes a pointer to the `#[repr(C)]` struct `T` that
    // matches it in linux/userfaultfd.h, which lives for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn new_uffd() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: userfaultfd(2) takes only flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd >= 0 {
        // SAFETY: `fd` was just returned to us and is owned by nobody else.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    // Faults taken inside the kernel (KVM's) need CAP_SYS_PTRACE for the syscall; the device
    // node grants the same by file permission.
    let syscall_err = io::Error::last_os_error();
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
        .map_err(|_| syscall_err)?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its integer argument and returns a new fd.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above, a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The other user of a userfaultfd that a [`WriteTracker`] shares: guest memory restored from
/// layer files and still being filled (checkpoint/filled_memory.rs) is registered for
/// missing-page faults, and the kernel lets one userfaultfd only own a range, so a checkpoint
/// taken during the fill tracks writes on the fill's userfaultfd. Either reader may read a fault
/// meant for the other: the fill's thread hands write faults over, the tracker answers
/// missing-page faults through [`Self::serve_missing`]. Dropping it tells the fill that this
/// checkpoint no longer needs the registration.
pub(crate) trait SharedFaults: Send + std::fmt::Debug {
    /// Put the page at host address `host` in place (a missing-page fault the tracker read).
    fn serve_missing(&self, host: u64) -> io::Result<()>;
    /// Append the write faults the other reader has read to `out`.
    fn take_write_faults(&self, out: &mut Vec<u64>);
}

/// A userfaultfd with guest memory registered for write-protect faults.
#[derive(Debug)]
pub struct WriteTracker {
    uffd: OwnedFd,
    registered: Vec<(u64, u64)>,
    /// Some page may be protected (set by every protection; cleared by a copy that ended with
    /// nothing protected). A tracker that protects nothing is dropped by closing it alone.
    protecting: bool,
    /// The registration's owner when it is another's (see [`SharedFaults`]); dropped after the
    /// tracker has lifted its protection.
    shared: Option<Box<dyn SharedFaults>>,
}

impl WriteTracker {
    /// A userfaultfd that can write-protect anonymous memory, and shmem and hugetlbfs memory
    /// where the kernel allows it.
    pub fn open() -> io::Result<Self> {
        for features in [UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0] {
            let uffd = new_uffd()?;
            let mut api = UffdioApi {
                api: UFFD_API,
                features,
                ioctls: 0,
            };
            if ioctl(&uffd, UFFDIO_API, &mut api).is_ok() {
                return Ok(Self {
                    uffd,
                    registered: vec![],
                    protecting: false,
                    shared: None,
                });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel refused the userfaultfd handshake",
        ))
    }

    /// A tracker on `uffd`, where `registered` is registered for write-protect faults (and
    /// missing-page faults) by `owner`, which also reads the faults (see [`SharedFaults`]).
    /// It serves one checkpoint: the machine does not keep it for the next one.
    pub(crate) fn shared(
        uffd: OwnedFd,
        registered: Vec<(u64, u64)>,
        owner: Box<dyn SharedFaults>,
    ) -> Self {
        Self {
            uffd,
            registered,
            protecting: false,
            shared: Some(owner),
        }
    }

    /// Whether the registration is another's (see [`Self::shared`]).
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Register `[host, host + len)` for write-protect faults.
    pub fn register(&mut self, host: u64, len: u64) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start: host, len },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        ioctl(&self.uffd, UFFDIO_REGISTER, &mut reg)?;
        self.registered.push((host, len));
        if reg.ioctls & IOCTL_WRITEPROTECT_BIT == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this memory cannot be write-protected",
            ));
        }
        Ok(())
    }

    /// Set (`on`) or lift write-protection of `[host, host + len)`; lifting wakes its waiters.
    pub fn protect(&mut self, host: u64, len: u64, on: bool) -> io::Result<()> {
        self.protecting |= on;
        let mut wp = UffdioWriteprotect {
            range: UffdioRange { start: host, len },
            mode: if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
        };
        ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut wp)
    }

    /// Close a tracker that protects nothing on a thread of its own, for a machine that goes
    /// away: while its memory is still mapped (devices still hold it) the kernel walks every
    /// page table entry of it as it unregisters (3–10 ms for 256 MiB on the development host),
    /// which a restore replacing the machine need not wait for. Closing is safe whenever it
    /// happens: it touches only the ranges registered on this userfaultfd, and a range unmapped
    /// meanwhile is no longer registered. A tracker that protects something is dropped here, at
    /// once, so that no writer waits on it.
    pub(crate) fn close_aside(self) {
        if self.protecting {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("uffd-close".into())
            .spawn(move || drop(self));
        if let Err(e) = spawned {
            tracing::debug!("closing the write tracker in place: {e}");
        }
    }

    pub(crate) fn wake(&self, host: u64, len: u64) -> io::Result<()> {
        wake(&self.uffd, host, len)
    }

    /// The page addresses of the write faults queued now (none: an empty vector). On a shared
    /// userfaultfd, missing-page faults read here are answered by its owner.
    pub(crate) fn pending_faults(&self, out: &mut Vec<u64>) -> io::Result<()> {
        let Some(owner) = &self.shared else {
            return pending_faults(&self.uffd, out);
        };
        out.clear();
        owner.take_write_faults(out);
        let mut missing = Vec::new();
        read_faults(&self.uffd, &mut missing, out)?;
        for host in missing {
            owner.serve_missing(host)?;
        }
        Ok(())
    }
}

/// Wake the threads waiting on a fault in `[host, host + len)` of `uffd`.
pub(crate) fn wake(uffd: &OwnedFd, host: u64, len: u64) -> io::Result<()> {
    let mut range = UffdioRange { start: host, len };
    ioctl(uffd, UFFDIO_WAKE, &mut range)
}

/// The page addresses of the faults queued on `uffd` (non-blocking) now: none, an empty vector.
pub(crate) fn pending_faults(uffd: &OwnedFd, out: &mut Vec<u64>) -> io::Result<()> {
    out.clear();
    read_each_fault(uffd, |page, _| out.push(page))
}

/// Append the page addresses of the faults queued on `uffd` (non-blocking) now to `missing` and
/// `write_protected`, by kind.
pub(crate) fn read_faults(
    uffd: &OwnedFd,
    missing: &mut Vec<u64>,
    write_protected: &mut Vec<u64>,
) -> io::Result<()> {
    read_each_fault(uffd, |page, wp| {
        if wp {
            write_protected.push(page)
        } else {
            missing.push(page)
        }
    })
}

/// Call `each(page address, write-protect fault)` for every fault queued on `uffd` now.
fn read_each_fault(uffd: &OwnedFd, mut each: impl FnMut(u64, bool)) -> io::Result<()> {
    let mut msgs = [UffdMsg::default(); 64];
    loop {
        let bytes = std::mem::size_of_val(&msgs);
        // SAFETY: reading at most `bytes` into our own array of plain-data messages.
        let n = unsafe {
            libc::read(
                uffd.as_raw_fd(),
                msgs.as_mut_ptr() as *mut libc::c_void,
                bytes,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(()),
                io::ErrorKind::Interrupted => continue,
                _ => Err(e),
            };
        }
        let count = n as usize / std::mem::size_of::<UffdMsg>();
        for m in msgs[..count]
            .iter()
            .filter(|m| m.event == UFFD_EVENT_PAGEFAULT)
        {
            each(
                m.address & !(PAGE_SIZE - 1),
                m.flags & UFFD_PAGEFAULT_FLAG_WP != 0,
            );
        }
        if count < msgs.len() {
            return Ok(());
        }
    }
}

impl Drop for WriteTracker {
    fn drop(&mut self) {
        // Nothing protected: closing the userfaultfd unregisters its ranges, without the walk of
        // every page table entry that lifting protection and UFFDIO_UNREGISTER make (a shared
        // one's close only drops this descriptor: the owner keeps its registration).
        if !self.protecting {
            return;
        }
        for &(host, len) in &self.registered.clone() {
            let _ = self.protect(host, len, false);
            // A shared registration stays: its owner still needs it (and ends it).
            if self.shared.is_none() {
                let mut range = UffdioRange { start: host, len };
                let _ = ioctl(&self.uffd, UFFDIO_UNREGISTER, &mut range);
            }
        }
    }
}

/// What a background copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CopyStats {
    /// Bytes written to the layer.
    pub bytes: u64,
    /// Pages the guest (or a device) wrote before the copy reached them, copied first.
    pub early_pages: u64,
    /// Time from the first copy to the last, ms.
    pub copy_ms: f64,
    /// Of `copy_ms`: reading the fault queue, copying the faulting pages and letting go their
    /// writers.
    pub fault_ms: f64,
    /// Of `copy_ms`: writing the chunks to the layer.
    pub chunk_write_ms: f64,
    /// Of `copy_ms`: lifting the chunks' protection.
    pub unprotect_ms: f64,
    /// `UFFDIO_WRITEPROTECT` calls that lifted copied chunks (for a writer, or at the end).
    pub lifts: u64,
    /// After `copy_ms`: lifting the protection of pages armed but not saved.
    pub release_ms: f64,
}

/// A set of pages write-protected at a pause, to be copied while the guest runs.
#[derive(Debug)]
pub struct MemoryCopy {
    tracker: WriteTracker,
    /// `(host address, len, file offset)` of each region.
    layout: Vec<(u64, u64, u64)>,
    /// What to copy, in steps of at most [`CHUNK_PAGES`]: `(file offset, len)`.
    chunks: Vec<(u64, u64)>,
    /// One bit per page of guest memory: copied already.
    done: Vec<u64>,
    /// Pages that may be protected though the copy does not save them: lifted at the end.
    leftover: PageIndex,
    /// Copied pages still protected: `[start, end)` host addresses within one region, lifted
    /// together when a writer waits on one of them, or at the end (see [`Self::copied`]).
    unlifted: Option<(u64, u64)>,
}

/// Write-protect `pages` of `mem` (the vCPUs must be paused). An error means the kernel cannot
/// track writes to this memory; nothing stays protected then.
pub fn arm(
    kept: Option<WriteTracker>,
    mem: &GuestMemoryMmap,
    pages: &PageIndex,
    phases: &mut Phases,
) -> Result<MemoryCopy, VmmError> {
    let mut tracker = match kept {
        Some(t) => t,
        None => open_registered(mem)?,
    };
    phases.mark("open and register userfaultfd");
    let layout = region_layout(mem);
    for (offset, len) in pages.write_plan() {
        let host = crate::checkpoint::memory::host_range_for(&layout, offset, len)
            .ok_or_else(|| VmmError::Snapshot("page range outside guest RAM".into()))?;
        tracker
            .protect(host, len, true)
            .map_err(|e| track_err("write-protect", e))?;
    }
    phases.mark("write-protect");
    Ok(MemoryCopy::new(tracker, mem, pages, PageIndex::new()))
}

pub(crate) fn track_err(what: &str, e: io::Error) -> VmmError {
    VmmError::Snapshot(format!("write tracking: {what}: {e}"))
}

/// A userfaultfd with all of `mem` registered for write-protect faults (nothing protected yet).
pub(crate) fn open_registered(mem: &GuestMemoryMmap) -> Result<WriteTracker, VmmError> {
    let mut tracker = WriteTracker::open().map_err(|e| track_err("userfaultfd", e))?;
    for (host, len, _) in region_layout(mem) {
        tracker
            .register(host, len)
            .map_err(|e| track_err("register guest memory", e))?;
    }
    Ok(tracker)
}

impl MemoryCopy {
    /// The copy of `pages` of `mem`, which `tracker` has write-protected (the vCPUs paused).
    /// Other pages it may protect (`leftover`) are let go when written, never copied, and at the
    /// end.
    pub(crate) fn new(
        tracker: WriteTracker,
        mem: &GuestMemoryMmap,
        pages: &PageIndex,
        leftover: PageIndex,
    ) -> Self {
        let layout = region_layout(mem);
        let step = CHUNK_PAGES * PAGE_SIZE;
        let mut chunks = Vec::new();
        for (offset, len) in pages.write_plan() {
            let mut at = 0;
            while at < len {
                chunks.push((offset + at, step.min(len - at)));
                at += step;
            }
        }
        let total_pages: u64 = layout.iter().map(|(_, len, _)| len / PAGE_SIZE).sum();
        // Pages outside the plan count as copied already.
        let mut done = vec![u64::MAX; total_pages.div_ceil(64) as usize];
        for r in pages.ranges() {
            let (mut page, end) = (r.start, r.end().min(total_pages));
            while page < end {
                let (word, bit) = ((page / 64) as usize, page % 64);
                let n = (64 - bit).min(end - page);
                let mask = if n == 64 {
                    u64::MAX
                } else {
                    ((1u64 << n) - 1) << bit
                };
                done[word] &= !mask;
                page += n;
            }
        }
        Self {
            tracker,
            layout,
            chunks,
            done,
            leftover,
            unlifted: None,
        }
    }

    /// Lift the protection of the copied pages that still have it, if any (waking their
    /// writers).
    fn lift_copied(&mut self, stats: &mut CopyStats) -> Result<(), VmmError> {
        if let Some((start, end)) = self.unlifted.take() {
            self.tracker
                .protect(start, end - start, false)
                .map_err(|e| track_err("lift protection", e))?;
            stats.lifts += 1;
        }
        Ok(())
    }

    /// `[host, host + len)` is copied. Its protection is lifted later, with all that is copied
    /// before it in the same region, in one `UFFDIO_WRITEPROTECT`: when a writer waits on one of
    /// those pages, when the copy moves to another region, or at the end. Every lift changes
    /// page table entries that the running vCPUs' threads may have cached, so the kernel
    /// interrupts their CPUs (TLB flush, KVM dropping its mappings of the range): on the
    /// development host (nested KVM) 0.7–1.7 ms a lift while the guest runs, which made a
    /// background copy of 256 MiB that lifted each 1 MiB chunk after its copy 2.6–2.9× as long
    /// as the paused copy. The range lifted may hold pages between the copied ones that the
    /// copy does not save: those are not protected, or are pages armed only to be let go
    /// (`leftover`), never pages still to copy, because the plan is copied in address order.
    fn copied(&mut self, host: u64, len: u64, stats: &mut CopyStats) -> Result<(), VmmError> {
        let region_end = |h: u64| {
            self.layout
                .iter()
                .find(|(start, len, _)| h >= *start && h < start + len)
                .map(|(start, len, _)| start + len)
        };
        match self.unlifted {
            Some((start, end)) if host >= end && region_end(start) == region_end(host) => {
                self.unlifted = Some((start, host + len));
            }
            _ => {
                self.lift_copied(stats)?;
                self.unlifted = Some((host, host + len));
            }
        }
        Ok(())
    }

    /// Copy the pages of the chunk `[offset, offset + len)` that no fault copied yet; their
    /// protection is lifted later ([`Self::copied`]).
    fn copy_chunk(
        &mut self,
        layer: &LayerFile,
        offset: u64,
        len: u64,
        stats: &mut CopyStats,
    ) -> Result<(), VmmError> {
        let t = Instant::now();
        let first = offset / PAGE_SIZE;
        let pages = len / PAGE_SIZE;
        let mut page = first;
        while page < first + pages {
            if self.is_done(page) {
                page += 1;
                continue;
            }
            let run_start = page;
            while page < first + pages && !self.is_done(page) {
                self.mark_done(page);
                page += 1;
            }
            let run_off = run_start * PAGE_SIZE;
            let run_len = (page - run_start) * PAGE_SIZE;
            let host = self
                .host_of(run_off)
                .ok_or_else(|| VmmError::Snapshot("page outside guest RAM".into()))?;
            layer.write_from(host, run_len, run_off)?;
            stats.bytes += run_len;
        }
        stats.chunk_write_ms += ms_since(t);
        let t = Instant::now();
        let host = self
            .host_of(offset)
            .ok_or_else(|| VmmError::Snapshot("page outside guest RAM".into()))?;
        self.copied(host, len, stats)?;
        stats.unprotect_ms += ms_since(t);
        Ok(())
    }

    fn host_of(&self, offset: u64) -> Option<u64> {
        self.layout
            .iter()
            .find(|(_, len, foff)| offset >= *foff && offset < foff + len)
            .map(|(host, _, foff)| host + (offset - foff))
    }

    fn offset_of(&self, host: u64) -> Option<u64> {
        self.layout
            .iter()
            .find(|(h, len, _)| host >= *h && host < h + len)
            .map(|(h, _, foff)| foff + (host - h))
    }

    fn is_done(&self, page: u64) -> bool {
        self.done[(page / 64) as usize] & (1 << (page % 64)) != 0
    }

    fn mark_done(&mut self, page: u64) {
        self.done[(page / 64) as usize] |= 1 << (page % 64);
    }

    /// Copy the faulting pages not yet copied, then let their writers go on.
    fn serve_faults(
        &mut self,
        layer: &LayerFile,
        faults: &mut Vec<u64>,
        stats: &mut CopyStats,
    ) -> Result<(), VmmError> {
        let io_err = |e: io::Error| VmmError::Snapshot(format!("write tracking: {e}"));
        self.tracker.pending_faults(faults).map_err(io_err)?;
        for &host in faults.iter() {
            // A writer on a page copied but still protected: lift all that is copied (it is
            // likely to write the pages next to it too). That lift wakes it: the range holds
            // nothing left to copy (see `copied`), so this page needs no lift or wake of its own.
            if self
                .unlifted
                .is_some_and(|(start, end)| host >= start && host < end)
            {
                self.lift_copied(stats)?;
                continue;
            }
            if let Some(offset) = self.offset_of(host) {
                let page = offset / PAGE_SIZE;
                if !self.is_done(page) {
                    layer.write_from(host, PAGE_SIZE, offset)?;
                    self.mark_done(page);
                    stats.early_pages += 1;
                    stats.bytes += PAGE_SIZE;
                }
            }
            // Lifting protection wakes the writer; a page lifted already needs only the wake.
            self.tracker
                .protect(host, PAGE_SIZE, false)
                .map_err(io_err)?;
            self.tracker.wake(host, PAGE_SIZE).map_err(io_err)?;
        }
        Ok(())
    }

    /// Copy every protected page into `layer` while the guest runs, old content first where the
    /// guest writes. Returns when all are copied and no page is protected any more, with the
    /// tracker, still registered, for the next checkpoint.
    pub fn run(mut self, layer: &LayerFile) -> Result<(CopyStats, WriteTracker), VmmError> {
        let started = Instant::now();
        let mut stats = CopyStats::default();
        let mut faults = Vec::with_capacity(64);
        let chunks = std::mem::take(&mut self.chunks);
        for (offset, len) in chunks {
            let t = Instant::now();
            self.serve_faults(layer, &mut faults, &mut stats)?;
            stats.fault_ms += ms_since(t);
            self.copy_chunk(layer, offset, len, &mut stats)?;
        }
        let t = Instant::now();
        self.lift_copied(&mut stats)?;
        stats.unprotect_ms += ms_since(t);
        let t = Instant::now();
        self.serve_faults(layer, &mut faults, &mut stats)?;
        stats.fault_ms += ms_since(t);
        stats.copy_ms = ms_since(started);
        let t = Instant::now();
        for (offset, len) in self.leftover.write_plan() {
            let host = crate::checkpoint::memory::host_range_for(&self.layout, offset, len)
                .ok_or_else(|| VmmError::Snapshot("page range outside guest RAM".into()))?;
            self.tracker
                .protect(host, len, false)
                .map_err(|e| track_err("lift protection", e))?;
        }
        // Every page of the plan was let go after its copy, every faulting page after its fault,
        // and the rest just now: nothing is protected, so a write can no longer wait for a
        // reader of the fault queue.
        self.tracker.protecting = false;
        stats.release_ms = ms_since(t);
        Ok((stats, self.tracker))
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests;
