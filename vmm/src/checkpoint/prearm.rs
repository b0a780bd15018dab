//! Write-protection armed before the pause, so that a background checkpoint's pause does not
//! grow with guest memory.
//!
//! Write-protecting guest memory costs time in proportion to the pages protected (the kernel
//! rewrites each page table entry, and KVM drops its mappings of them). [`PreArmed::start`] does
//! that while the guest still runs: it protects the pages the checkpoint will save as far as they
//! are known (the dirty pages collected so far for a Diff; every page for a Full), and until the
//! pause [`PreArmed::serve`] lets any writer of a protected page go on at once, remembering the
//! page. Old content is not needed then: the checkpoint is the state at the pause. A few rounds
//! of KVM's dirty log re-protect what the guest wrote meanwhile. At the pause,
//! [`PreArmed::seal`] protects only what the guest wrote since the last round and what the
//! checkpoint saves but was not protected: a small set, whatever the memory size.
//!
//! Why that is exact: a page in `protected` that no fault let go is protected now (a write that
//! races the protecting ioctl lands before the page is protected, and every later one faults).
//! So every page the checkpoint saves is protected at the end of [`PreArmed::seal`], and from
//! there on the background copy ([`super::background::MemoryCopy`]) saves its content at the
//! pause first.

use cairn_devices::GuestMemoryMmap;
use cairn_snapshot::memory::PageIndex;

use crate::checkpoint::background::{open_registered, track_err, MemoryCopy, WriteTracker};
use crate::checkpoint::memory::{mem_size, region_layout, resident_pages, PAGE_SIZE};
use crate::checkpoint::named::Phases;
use crate::error::VmmError;
use crate::machine::{DirtyConsumer, Machine};

/// Bytes protected per ioctl while the guest runs.
const STEP_BYTES: u64 = 8 << 20;
/// Rounds of "fetch the dirty log, protect it" before the pause.
const ROUNDS: usize = 3;
/// A round that finds fewer pages than this to protect again ends the rounds.
const SETTLED_PAGES: u64 = 64;

/// Guest memory write-protected while the guest runs, waiting for the pause.
#[derive(Debug)]
pub struct PreArmed {
    tracker: WriteTracker,
    /// `(host address, len, file offset)` of each region.
    layout: Vec<(u64, u64, u64)>,
    /// Pages protected (less those in `released`).
    protected: PageIndex,
    /// Every page protection was asked for (a Full's: all of memory), released or not: what
    /// the copy must lift at its end if it does not save it.
    armed: PageIndex,
    /// Pages a fault let go since they were last protected.
    released: Vec<u64>,
    faults: Vec<u64>,
}

impl PreArmed {
    /// Protect what a checkpoint of `machine` (running, dirty tracking on) will save: every page
    /// for a `full` one, else the dirty pages collected so far (for a Diff the caller has just
    /// fetched KVM's dirty log: named.rs does, to choose between a paused and a background
    /// copy; what the guest wrote since is protected by the rounds below or at the pause). The
    /// machine's tracker, kept registered by its last checkpoint, is used where there is one.
    /// An error means the kernel cannot track writes to this memory; nothing stays protected
    /// then.
    pub fn start(machine: &mut Machine, full: bool, phases: &mut Phases) -> Result<Self, VmmError> {
        let tracker = match machine.write_tracker.take() {
            Some(kept) => kept,
            None => open_registered(machine.memory())?,
        };
        let layout = region_layout(machine.memory());
        let mut armed = Self {
            tracker,
            layout,
            protected: PageIndex::new(),
            armed: PageIndex::new(),
            released: Vec::new(),
            faults: Vec::with_capacity(64),
        };
        if full {
            machine.collect_dirty()?;
            // Protecting a whole region protects exactly its present pages (and the pages of a
            // restored machine's files).
            let resident = resident_pages(machine.memory())?.union(&machine.restored_pages);
            for (host, len, _) in armed.layout.clone() {
                armed.protect_range(host, len)?;
            }
            armed.armed = PageIndex::full(mem_size(machine.memory()) / PAGE_SIZE);
            armed.protected = resident.union(machine.dirty_so_far(DirtyConsumer::Checkpoint));
        } else {
            let pages = machine.dirty_so_far(DirtyConsumer::Checkpoint).clone();
            armed.protect(&pages)?;
        }
        phases.mark("pre-arm write-protect (guest running)");
        for _ in 0..ROUNDS {
            armed.serve()?;
            let again = machine.collect_dirty()?.union(&armed.take_released());
            armed.protect(&again)?;
            if again.page_count() < SETTLED_PAGES {
                break;
            }
        }
        phases.mark("pre-arm rounds (guest running)");
        Ok(armed)
    }

    /// Protect `pages` (adding them to `protected`), letting writers go on between ranges.
    fn protect(&mut self, pages: &PageIndex) -> Result<(), VmmError> {
        for (offset, len) in pages.write_plan() {
            let host = crate::checkpoint::memory::host_range_for(&self.layout, offset, len)
                .ok_or_else(|| VmmError::Snapshot("page range outside guest RAM".into()))?;
            self.protect_range(host, len)?;
        }
        self.protected = self.protected.union(pages);
        self.armed = self.armed.union(pages);
        Ok(())
    }

    /// Protect `[host, host + len)` a step at a time, letting blocked writers go on between
    /// steps: a writer waits at most one step's protection, never the whole range's.
    fn protect_range(&mut self, host: u64, len: u64) -> Result<(), VmmError> {
        let mut at = 0;
        while at < len {
            let step = STEP_BYTES.min(len - at);
            self.tracker
                .protect(host + at, step, true)
                .map_err(|e| track_err("write-protect", e))?;
            self.serve()?;
            at += step;
        }
        Ok(())
    }

    /// Let every writer blocked on a protected page go on, remembering the page.
    pub fn serve(&mut self) -> Result<(), VmmError> {
        let io_err = |e| track_err("fault", e);
        self.tracker
            .pending_faults(&mut self.faults)
            .map_err(io_err)?;
        for &host in &self.faults {
            self.tracker
                .protect(host, PAGE_SIZE, false)
                .map_err(io_err)?;
            self.tracker.wake(host, PAGE_SIZE).map_err(io_err)?;
            if let Some((h, _, foff)) = self
                .layout
                .iter()
                .find(|(h, len, _)| host >= *h && host < h + len)
            {
                self.released.push((foff + (host - h)) / PAGE_SIZE);
            }
        }
        Ok(())
    }

    fn take_released(&mut self) -> PageIndex {
        let pages = PageIndex::from_ranges(self.released.drain(..).map(|p| (p, 1)));
        self.protected = self.protected.subtract(&pages);
        pages
    }

    /// With the vCPUs paused and `plan` the pages the checkpoint saves: protect what of `plan`
    /// is not protected now, and hand over to the background copy of `plan`.
    pub fn seal(
        mut self,
        mem: &GuestMemoryMmap,
        plan: &PageIndex,
        phases: &mut Phases,
    ) -> Result<MemoryCopy, VmmError> {
        // Faults queued now are a device's (the vCPUs are parked): left to the copy, which
        // saves the page's old content before letting the writer go on.
        self.take_released();
        let missing = plan.subtract(&self.protected);
        for (offset, len) in missing.write_plan() {
            let host = crate::checkpoint::memory::host_range_for(&self.layout, offset, len)
                .ok_or_else(|| VmmError::Snapshot("page range outside guest RAM".into()))?;
            self.tracker
                .protect(host, len, true)
                .map_err(|e| track_err("write-protect", e))?;
        }
        phases.mark("write-protect the rest");
        let leftover = self.armed.subtract(plan);
        let copy = MemoryCopy::new(self.tracker, mem, plan, leftover);
        phases.mark("copy plan");
        Ok(copy)
    }
}
