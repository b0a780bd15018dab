//! Restored guest memory as anonymous pages, filled on first touch from the local layer files,
//! so that a VM restored from checkpoint layers on a disk file system can take checkpoints
//! without stopping the guest.
//!
//! A restore normally maps the layer files `MAP_PRIVATE` (checkpoint/memory.rs). Linux allows
//! userfaultfd write-protection only on anonymous, shmem and hugetlbfs memory, so on ext4, xfs
//! or btrfs a background checkpoint (checkpoint/background.rs) could not arm and copied with
//! the guest paused. Here the restore maps anonymous memory instead, registered with a
//! userfaultfd for missing-page faults (the same mapping and registration as memory served by a
//! page server, checkpoint/served_memory.rs), and two threads of the VMM put the pages in:
//!
//! - the fault thread answers every first touch (a vCPU through KVM, or a device) with
//!   `UFFDIO_COPY` of the page and the next few of its layer range ([`FAULT_RUN`]), read with
//!   `pread` from the layer that holds it (the chain's resolution,
//!   [`cairn_snapshot::memory::LayerChain::resolve`]), or
//!   `UFFDIO_ZEROPAGE` where no layer holds the page;
//! - the filler thread, at the lowest priority (nice 19: it takes the CPU the guest and the VMM
//!   leave), copies every range some layer holds, in steps of [`FILL_STEP`], in address order.
//!   A page already present (the fault thread's, or one the guest wrote) is left as it is:
//!   `UFFDIO_COPY` never replaces a page. When every step is done (and no checkpoint holds the
//!   registration, lease.rs), it stops the fault thread and unregisters: pages no layer holds
//!   then read as zeros the ordinary anonymous way, which is their content.
//!
//! So `/snapshot/load` and `PUT /checkpoints/restore` still return without reading memory; only
//! the first touch of a page waits, for a local read. A Diff checkpoint taken while the fill runs
//! tracks writes on the fill's own userfaultfd and lets the fill go on
//! ([`FilledMemory::write_tracker`], lease.rs). A Full one first ends it
//! ([`FilledMemory::finish`]: the checkpoint's thread takes the steps left itself, at its own
//! priority, with the guest running; bounded by the local read speed), and then arms
//! write-protection as for a booted VM.
//!
//! No page ever reads as zeros unless that is its content: until the filler has put every
//! layer page in, the registration stays and every missing page waits for the fault thread.
//! If a layer cannot be read, the fault thread stops the VM (`CorruptMemory`) and keeps the
//! userfaultfd open, so the waiting thread never gets a zero page.
//!
//! Used ([`wanted`]) when background checkpoints are on and some layer lies on a file system
//! where the kernel refuses write-protection of a file mapping (not tmpfs, not hugetlbfs), for
//! restores of checkpoints and for `/snapshot/load` in a VMM with a checkpoint store and dirty
//! page tracking (the only VMMs that take background checkpoints). The cost: memory is the
//! VMM's own anonymous pages, not page cache shared with other VMs restored from the same
//! files (docs/checkpoints.md).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_devices::GuestMemoryMmap;
use cairn_snapshot::memory::uffd::{
    UffdioCopy, UffdioRange, UffdioZeropage, UFFDIO_COPY, UFFDIO_UNREGISTER, UFFDIO_ZEROPAGE,
};
use cairn_snapshot::memory::{MappedRange, PageIndex};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::checkpoint::background::{self, ioctl, read_faults};
use crate::checkpoint::memory::{region_layout, PAGE_SIZE};
use crate::checkpoint::served_memory::{chain_pages, map_anonymous, open_chain, register_missing};
use crate::error::VmmError;
use crate::vstate::vcpu::{ExitReason, ExitSignal};

/// Bytes one fault copies in at most: the page and the next ones of its layer range (64 KiB).
pub const FAULT_RUN: u64 = 16 * PAGE_SIZE;
/// Bytes the filler copies per step (1 MiB).
pub const FILL_STEP: u64 = 256 * PAGE_SIZE;
/// The filler thread's nice value: it runs on what CPU the guest and the VMM leave.
const FILLER_NICE: libc::c_int = 19;

/// `statfs.f_type` of tmpfs/shmem and of hugetlbfs: file mappings the kernel write-protects.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// Whether a restore from `layers` should fill anonymous memory (see the module doc).
/// `CAIRN_RESTORE_FILL=0` keeps the file mapping; `=1` fills wherever the layers lie.
pub fn wanted(layers: &[PathBuf]) -> bool {
    match std::env::var("CAIRN_RESTORE_FILL").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => background::enabled() && layers.iter().any(|l| !write_protectable(l)),
    }
}

/// Whether the kernel write-protects a private mapping of the file at `path` (it lies on tmpfs
/// or hugetlbfs). A path it cannot look at counts as not.
// `statfs` field types differ between architectures and libcs; the cast is a no-op on x86_64.
#[allow(clippy::unnecessary_cast)]
fn write_protectable(path: &std::path::Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes one `statfs` into the buffer we own; the fd is open.
    if unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so it filled the whole struct.
    let kind = unsafe { st.assume_init() }.f_type as i64;
    kind == TMPFS_MAGIC || kind == HUGETLBFS_MAGIC
}

/// What the fill did.
#[derive(Debug, Default)]
pub struct FillStats {
    /// Faults the fault thread answered.
    pub faults: AtomicU64,
    /// Bytes the fault thread put in (zero pages included).
    pub fault_bytes: AtomicU64,
    /// Bytes the fill copied in (the filler thread's, and a checkpoint's that helped).
    pub filled_bytes: AtomicU64,
}

/// The layer files and where each page of guest memory comes from.
struct Source {
    uffd: OwnedFd,
    /// Guest memory, kept mapped while the threads fill it (a machine torn down mid-fill must
    /// not unmap it under them).
    _mem: GuestMemoryMmap,
    files: Vec<File>,
    /// The chain's resolution: ascending, non-overlapping; pages in none are zero.
    plan: Vec<MappedRange>,
    /// `(host address, len, file offset)` of each region.
    layout: Vec<(u64, u64, u64)>,
    stats: FillStats,
}

/// Where a run starting at a guest offset comes from.
enum Origin {
    /// `file` at `file_offset`, for at most `len` bytes.
    Layer {
        file: usize,
        file_offset: u64,
        len: u64,
    },
    /// Zeros, for at most `len` bytes.
    Zero { len: u64 },
}

impl Source {
    fn host_of(&self, offset: u64) -> Option<(u64, u64)> {
        self.layout
            .iter()
            .find(|(_, len, foff)| offset >= *foff && offset < foff + len)
            .map(|(host, len, foff)| (host + (offset - foff), foff + len - offset))
    }

    fn offset_of(&self, host: u64) -> Option<u64> {
        self.layout
            .iter()
            .find(|(h, len, _)| host >= *h && host < h + len)
            .map(|(h, _, foff)| foff + (host - h))
    }

    fn origin(&self, offset: u64) -> Origin {
        let i = self
            .plan
            .partition_point(|r| r.guest_offset + r.len <= offset);
        match self.plan.get(i) {
            Some(r) if r.guest_offset <= offset => Origin::Layer {
                file: r.layer,
                file_offset: r.file_offset + (offset - r.guest_offset),
                len: r.guest_offset + r.len - offset,
            },
            Some(r) => Origin::Zero {
                len: r.guest_offset - offset,
            },
            None => Origin::Zero { len: u64::MAX },
        }
    }

    /// Put the content of at most `max` bytes at guest `offset` in place (one origin, one
    /// region). Returns the bytes it covered, present before or placed now.
    fn place(&self, offset: u64, max: u64, buf: &mut [u8]) -> io::Result<(u64, u64)> {
        let (host, region_left) = self
            .host_of(offset)
            .ok_or_else(|| io::Error::other(format!("offset {offset:#x} outside guest RAM")))?;
        match self.origin(offset) {
            Origin::Layer {
                file,
                file_offset,
                len,
            } => {
                let len = len.min(max).min(region_left).min(buf.len() as u64);
                let bytes = &mut buf[..len as usize];
                self.files[file].read_exact_at(bytes, file_offset)?;
                let placed = self.copy(host, Some(bytes), len)?;
                Ok((len, placed))
            }
            Origin::Zero { len } => {
                let len = len.min(max).min(region_left);
                let placed = self.copy(host, None, len)?;
                Ok((len, placed))
            }
        }
    }

    /// `UFFDIO_COPY` of `src` (or `UFFDIO_ZEROPAGE` without it) to `[host, host + len)`,
    /// leaving pages present already as they are. Returns the bytes placed.
    fn copy(&self, host: u64, src: Option<&[u8]>, len: u64) -> io::Result<u64> {
        let (mut at, mut placed) = (0u64, 0u64);
        while at < len {
            let (rc, done) = match src {
                Some(bytes) => {
                    let mut c = UffdioCopy {
                        dst: host + at,
                        src: bytes[at as usize..].as_ptr() as u64,
                        len: len - at,
                        mode: 0,
                        copy: 0,
                    };
                    // SAFETY: UFFDIO_COPY takes a `struct uffdio_copy`; `src` points into our
                    // buffer of `len - at` bytes, `dst` into a range registered on this uffd.
                    let rc = unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_COPY, &mut c) };
                    (rc, c.copy)
                }
                None => {
                    let mut z = UffdioZeropage {
                        range: UffdioRange {
                            start: host + at,
                            len: len - at,
                        },
                        mode: 0,
                        zeropage: 0,
                    };
                    // SAFETY: UFFDIO_ZEROPAGE takes a `struct uffdio_zeropage`, ours for the
                    // call, over a range registered on this uffd.
                    let rc = unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z) };
                    (rc, z.zeropage)
                }
            };
            if rc == 0 {
                return Ok(placed + (len - at));
            }
            let e = io::Error::last_os_error();
            if done > 0 {
                // Part placed, then a page present already (or the mappings changed).
                at += done as u64;
                placed += done as u64;
            } else if e.raw_os_error() == Some(libc::EEXIST) {
                // The first page is there already: never replaced.
                at += PAGE_SIZE;
            } else if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(e);
            }
        }
        Ok(placed)
    }

    /// Answer the fault at host address `addr`.
    fn serve_fault(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let offset = self.offset_of(addr).ok_or_else(|| {
            io::Error::other(format!("a fault at {addr:#x} is outside guest RAM"))
        })?;
        let (_, placed) = self.place(offset, FAULT_RUN, buf)?;
        if placed == 0 {
            // Present already (the filler was first, and its copy woke the waiter): wake
            // anyway, a lost wake-up would stall a vCPU.
            background::wake(&self.uffd, addr, PAGE_SIZE)?;
        }
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        self.stats.fault_bytes.fetch_add(placed, Ordering::Relaxed);
        Ok(())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("lease", &*lock(&self.lease))
            .finish()
    }
}

/// Who holds the registration (see lease.rs).
#[derive(Debug, Default)]
struct LeaseState {
    /// Checkpoints tracking writes on the fill's userfaultfd now.
    held: usize,
    /// The registration includes write-protect mode (added by the first lease).
    write_protect: bool,
    /// The fill is over (or given up): no new lease, the registration ends once none is held.
    ended: bool,
}

/// State the threads share.
struct Shared {
    source: Source,
    /// Written to stop the fault thread.
    stop_faults: EventFd,
    /// Set to end the fill early (the machine goes away).
    abort: AtomicBool,
    /// The machine's exit, to stop it when a layer cannot be read.
    exit: OnceLock<Arc<ExitSignal>>,
    started: Instant,
    /// How long the filler waits before it starts (tests: to let faults do all the work).
    fill_delay: Duration,
    /// The fill's steps, `(start, end)` guest offsets of at most [`FILL_STEP`] in one layer
    /// range, in address order.
    steps: Vec<(u64, u64)>,
    /// The next step to take.
    cursor: AtomicUsize,
    /// Steps done.
    completed: AtomicUsize,
    /// A page could not be read: the fill never ends the registration.
    failed: AtomicBool,
    /// Checkpoints that track writes on this userfaultfd while the fill runs (lease.rs).
    lease: Mutex<LeaseState>,
    /// Signalled when a lease ends.
    lease_ended: Condvar,
    /// Write faults the fault thread read, for the lease holder's copy.
    write_faults: Mutex<Vec<u64>>,
}

impl Shared {
    /// A page cannot be had: stop the VM, and keep the userfaultfd open for the process's life
    /// so that the waiting thread never gets a zero page.
    fn fail(&self, e: &io::Error) {
        self.failed.store(true, Ordering::Relaxed);
        tracing::error!("restored memory: a layer page cannot be read: {e}; stopping the VM");
        if let Ok(dup) = self.source.uffd.try_clone() {
            lock(&LEAKED).push(dup);
        }
        if let Some(exit) = self.exit.get() {
            exit.signal(ExitReason::CorruptMemory(format!(
                "a memory layer cannot be read: {e}"
            )));
        }
    }
}

/// Userfaultfds of memory that failed to fill, never closed.
static LEAKED: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Guest memory being filled from the layer files (see the module doc). Dropping it ends the
/// fill (for a machine that goes away).
pub struct FilledMemory {
    shared: Arc<Shared>,
    filler: Option<JoinHandle<Result<(), String>>>,
}

impl std::fmt::Debug for FilledMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilledMemory")
            .field("stats", &self.shared.source.stats)
            .finish()
    }
}

/// Guest RAM for `regions`, anonymous, filled from the memory chain `layers` (base first) by
/// threads of this VMM, and the pages the chain holds. Returns before any page is read.
/// `CAIRN_RESTORE_FILL_DELAY_MS` holds the filler back that long (faults are answered
/// meanwhile): tests use it to take checkpoints while the fill runs.
pub fn map_filled(
    regions: &[(u64, u64)],
    layers: &[PathBuf],
) -> Result<(GuestMemoryMmap, PageIndex, FilledMemory), VmmError> {
    let delay = std::env::var("CAIRN_RESTORE_FILL_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::ZERO);
    map_filled_after(regions, layers, delay)
}

/// [`map_filled`], its filler starting after `fill_delay`.
fn map_filled_after(
    regions: &[(u64, u64)],
    layers: &[PathBuf],
    fill_delay: Duration,
) -> Result<(GuestMemoryMmap, PageIndex, FilledMemory), VmmError> {
    let err = |what: String| VmmError::Snapshot(format!("restore into anonymous memory: {what}"));
    let total: u64 = regions.iter().map(|(_, len)| len).sum();
    let chain = open_chain(total, layers)?;
    let files = layers
        .iter()
        .map(|p| {
            cairn_snapshot::safe_path::open_input(
                p,
                false,
                cairn_snapshot::safe_path::InputKind::Regular,
            )
            .map_err(|e| err(format!("{}: {e}", p.display())))
        })
        .collect::<Result<Vec<File>, _>>()?;
    for (file, path) in files.iter().zip(layers) {
        let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        if len < total {
            return Err(err(format!(
                "memory file {} is {len} bytes, the VM needs {total}",
                path.display()
            )));
        }
    }
    let mem = map_anonymous(regions).map_err(err)?;
    let uffd = register_missing(&mem).map_err(err)?;
    let plan = chain.resolve();
    let steps = fill_steps_of(&plan);
    let shared = Arc::new(Shared {
        source: Source {
            uffd,
            _mem: mem.clone(),
            files,
            plan,
            layout: region_layout(&mem),
            stats: FillStats::default(),
        },
        stop_faults: EventFd::new(libc::EFD_NONBLOCK).map_err(|e| err(e.to_string()))?,
        abort: AtomicBool::new(false),
        exit: OnceLock::new(),
        started: Instant::now(),
        fill_delay,
        steps,
        cursor: AtomicUsize::new(0),
        completed: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        lease: Mutex::new(LeaseState::default()),
        lease_ended: Condvar::new(),
        write_faults: Mutex::new(Vec::new()),
    });
    let epoll = Epoll::new().map_err(|e| err(format!("epoll: {e}")))?;
    for (fd, token) in [
        (shared.source.uffd.as_raw_fd(), 0u64),
        (shared.stop_faults.as_raw_fd(), 1),
    ] {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(|e| err(format!("epoll: {e}")))?;
    }
    let faults = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("mem-faults".into())
            .spawn(move || fault_loop(&shared, &epoll))
            .map_err(|e| err(format!("fault thread: {e}")))?
    };
    let filler = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("mem-fill".into())
            .spawn(move || fill(&shared, faults))
    };
    let filler = match filler {
        Ok(f) => f,
        Err(e) => {
            // The caller maps the files instead: this memory is never used.
            let _ = shared.stop_faults.write(1);
            return Err(err(format!("filler thread: {e}")));
        }
    };
    let pages = chain_pages(&chain);
    Ok((
        mem,
        pages,
        FilledMemory {
            shared,
            filler: Some(filler),
        },
    ))
}

/// Take steps of the fill until none is left (`Ok`), the fill is aborted or a page cannot be
/// read (`Err`).
fn fill_steps(shared: &Shared, yield_to_checkpoints: bool) -> Result<(), String> {
    let mut buf = vec![0u8; FILL_STEP as usize];
    loop {
        if yield_to_checkpoints {
            shared.wait_while_leased();
        }
        let i = shared.cursor.fetch_add(1, Ordering::Relaxed);
        let Some(&(start, end)) = shared.steps.get(i) else {
            return Ok(());
        };
        let mut at = start;
        while at < end {
            if shared.abort.load(Ordering::Relaxed) || shared.failed.load(Ordering::Relaxed) {
                return Err("stopped".to_string());
            }
            match shared.source.place(at, end - at, &mut buf) {
                Ok((covered, placed)) => {
                    shared
                        .source
                        .stats
                        .filled_bytes
                        .fetch_add(placed, Ordering::Relaxed);
                    at += covered;
                }
                Err(e) => {
                    if !shared.abort.load(Ordering::Relaxed) {
                        shared.fail(&e);
                    }
                    return Err(e.to_string());
                }
            }
        }
        shared.completed.fetch_add(1, Ordering::Release);
    }
}

/// `plan`'s ranges cut into steps of at most [`FILL_STEP`].
fn fill_steps_of(plan: &[MappedRange]) -> Vec<(u64, u64)> {
    let mut steps = Vec::new();
    for r in plan {
        let end = r.guest_offset + r.len;
        let mut at = r.guest_offset;
        while at < end {
            let next = (at + FILL_STEP).min(end);
            steps.push((at, next));
            at = next;
        }
    }
    steps
}

/// The fault thread: answer missing-page faults until told to stop, and hand write faults
/// (of a checkpoint holding a lease, lease.rs) to the checkpoint.
fn fault_loop(shared: &Shared, epoll: &Epoll) -> Result<(), String> {
    let mut buf = vec![0u8; FAULT_RUN as usize];
    let mut faults = Vec::with_capacity(64);
    let mut writes = Vec::new();
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("epoll_wait: {e}")),
        };
        if events[..n].iter().any(|e| e.data() == 1) {
            return Ok(());
        }
        faults.clear();
        if let Err(e) = read_faults(&shared.source.uffd, &mut faults, &mut writes) {
            return Err(format!("read userfaultfd: {e}"));
        }
        if !writes.is_empty() {
            lock(&shared.write_faults).append(&mut writes);
        }
        for &addr in &faults {
            if let Err(e) = shared.source.serve_fault(addr, &mut buf) {
                shared.fail(&e);
                return Err(e.to_string());
            }
        }
    }
}

/// The filler thread: copy every layer range in, then end the fault thread and unregister.
fn fill(shared: &Shared, faults: JoinHandle<Result<(), String>>) -> Result<(), String> {
    // Behind the guest and the rest of the VMM: the filler takes what CPU is left (a
    // checkpoint that needs the fill done helps at normal priority, FilledMemory::finish).
    // SAFETY: setpriority on this thread's own id only changes its nice value.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, FILLER_NICE);
    }
    while shared.started.elapsed() < shared.fill_delay
        && !shared.abort.load(Ordering::Relaxed)
        && shared.cursor.load(Ordering::Relaxed) < shared.steps.len()
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut result = fill_steps(shared, true);
    // A step another thread took may still be under way: every one must be done before the
    // registration ends, or its pages would read as zeros.
    while result.is_ok() && shared.completed.load(Ordering::Acquire) < shared.steps.len() {
        if shared.abort.load(Ordering::Relaxed) || shared.failed.load(Ordering::Relaxed) {
            result = Err("stopped".to_string());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // No new lease from here on; a checkpoint still copying needs the registration (and the
    // fault thread) until it is done.
    shared.end_when_unleased();
    let _ = shared.stop_faults.write(1);
    let faulted = faults
        .join()
        .unwrap_or_else(|_| Err("the fault thread panicked".to_string()));
    result?;
    faulted?;
    // Every layer page is in: what is missing now is zero. Unregistering wakes any thread
    // that faulted since the fault thread stopped; it takes a zero page, its content.
    for (host, len, _) in &shared.source.layout {
        let mut range = UffdioRange {
            start: *host,
            len: *len,
        };
        ioctl(&shared.source.uffd, UFFDIO_UNREGISTER, &mut range)
            .map_err(|e| format!("UFFDIO_UNREGISTER: {e}"))?;
    }
    let s = &shared.source.stats;
    tracing::info!(
        "restored memory filled in {:.1} ms: {} MiB by the fill, {} faults ({} MiB)",
        shared.started.elapsed().as_secs_f64() * 1e3,
        s.filled_bytes.load(Ordering::Relaxed) >> 20,
        s.faults.load(Ordering::Relaxed),
        s.fault_bytes.load(Ordering::Relaxed) >> 20,
    );
    Ok(())
}

impl FilledMemory {
    /// Stop the VM through `exit` if a layer page cannot be read.
    pub fn stop_on_error(&self, exit: Arc<ExitSignal>) {
        let _ = self.shared.exit.set(exit);
    }

    /// Wait until every page is in and the registration is gone: guest memory is then plain
    /// anonymous memory, which write-protection can track. Refused while a checkpoint holds a
    /// lease (it would wait for itself).
    pub fn finish(mut self) -> Result<(), VmmError> {
        if lock(&self.shared.lease).held > 0 {
            return Err(VmmError::InvalidState(
                "the memory fill's registration is held by a checkpoint".into(),
            ));
        }
        let t = Instant::now();
        // Take the steps left at this thread's priority (the filler's is the lowest).
        let helped = fill_steps(&self.shared, false);
        let filler = self.filler.take();
        let r = filler.map(|f| f.join());
        if let Err(e) = helped {
            return Err(VmmError::Snapshot(format!("filling restored memory: {e}")));
        }
        tracing::debug!(
            "checkpoint: waited {:.1} ms for the restored memory's fill",
            t.elapsed().as_secs_f64() * 1e3
        );
        match r {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(VmmError::Snapshot(format!("filling restored memory: {e}"))),
            Some(Err(_)) => Err(VmmError::Snapshot(
                "filling restored memory: the filler panicked".into(),
            )),
        }
    }

    /// End the fill and let go of its userfaultfd and memory on a thread of its own, for a
    /// machine that goes away: once a checkpoint added write-protect mode to the registration
    /// (lease.rs), closing the userfaultfd makes the kernel walk every page table entry of the
    /// memory to clear the protection bits, which a restore replacing the machine need not wait
    /// for. The thread touches only this fill's userfaultfd and mapping.
    pub fn close_aside(self) {
        let spawned = std::thread::Builder::new()
            .name("fill-close".into())
            .spawn(move || drop(self));
        if let Err(e) = spawned {
            tracing::debug!("ending the memory fill in place: {e}");
        }
    }

    /// What the fill did so far.
    pub fn stats(&self) -> &FillStats {
        &self.shared.source.stats
    }
}

impl Drop for FilledMemory {
    fn drop(&mut self) {
        if let Some(filler) = self.filler.take() {
            self.shared.abort.store(true, Ordering::Relaxed);
            let _ = filler.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

mod lease;

#[cfg(test)]
mod tests;
