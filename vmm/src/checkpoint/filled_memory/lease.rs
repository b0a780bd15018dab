//! Checkpoints taken while the fill runs, tracking writes on the fill's own userfaultfd.
//!
//! The kernel lets one userfaultfd only own a range of memory, and the fill's owns guest memory
//! (missing-page mode) until every layer page is in. A checkpoint that needs write-protection
//! of that memory would otherwise first wait for the fill to end ([`FilledMemory::finish`]):
//! the rest of the layers read at the local disk's speed, 40–60 ms per 256 MiB on the
//! development host, with the guest running but the checkpoint waiting.
//!
//! A Diff needs no page the fill has still to put in: it saves the pages the guest dirtied since
//! its parent, and a page the guest wrote is present (its write faulted it in first). So
//! [`FilledMemory::write_tracker`] adds write-protect mode to the fill's registration (the same
//! userfaultfd may widen its own registration; no page table is walked) and hands the
//! checkpoint a [`WriteTracker`] on a duplicate of the fill's descriptor. Both the fill's fault
//! thread and the checkpoint read faults from it: the fault thread passes write faults on
//! ([`Shared::write_faults`]), the checkpoint answers missing-page faults the way the fault
//! thread does ([`SharedFaults::serve_missing`]). A page the fill or a fault puts in while the
//! copy runs is not in the Diff and is not protected (`UFFDIO_COPY` without
//! `UFFDIO_COPY_MODE_WP`); the guest's writes to it are in KVM's dirty log for the next
//! checkpoint.
//!
//! The tracker holds a lease for its life. The fill, once done, waits for the lease to end before
//! it stops its fault thread and unregisters (which, with write-protect mode in the registration,
//! walks every page table entry to clear the protection bits: on the filler thread, at the lowest
//! priority, once per restore). A Full checkpoint saves pages the fill may still have to read and
//! keeps finishing the fill first.

use std::sync::Arc;
use std::time::Duration;

use cairn_snapshot::memory::uffd::{
    UffdioRange, UffdioRegister, UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_MISSING,
    UFFDIO_REGISTER_MODE_WP,
};

use super::{lock, FilledMemory, LeaseState, Shared, FAULT_RUN};
use crate::checkpoint::background::{ioctl, SharedFaults, WriteTracker, IOCTL_WRITEPROTECT_BIT};

/// How often a fill that waits for a lease to end looks whether it was aborted.
const ABORT_CHECK: Duration = Duration::from_millis(10);

/// A checkpoint's hold on the fill's registration (see the module doc).
#[derive(Debug)]
struct FillLease {
    shared: Arc<Shared>,
}

impl SharedFaults for FillLease {
    fn serve_missing(&self, host: u64) -> std::io::Result<()> {
        let mut buf = vec![0u8; FAULT_RUN as usize];
        self.shared
            .source
            .serve_fault(host, &mut buf)
            .inspect_err(|e| self.shared.fail(e))
    }

    fn take_write_faults(&self, out: &mut Vec<u64>) {
        out.append(&mut lock(&self.shared.write_faults));
    }
}

impl Drop for FillLease {
    fn drop(&mut self) {
        lock(&self.shared.lease).held -= 1;
        self.shared.lease_ended.notify_all();
    }
}

impl Shared {
    /// Mark the fill ended, once no checkpoint holds a lease (or the fill was stopped): no
    /// lease is given from here on.
    pub(super) fn end_when_unleased(&self) {
        let mut state = self.unleased();
        state.ended = true;
    }

    /// The lease state once no checkpoint holds a lease or the fill is stopped.
    fn unleased(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        let mut state = lock(&self.lease);
        while state.held > 0 && !self.stopped() {
            state = self
                .lease_ended
                .wait_timeout(state, ABORT_CHECK)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        state
    }

    /// Wait while a checkpoint holds a lease (or until the fill is stopped): the filler yields
    /// to a checkpoint's pause and copy, which need the CPU and the disk more.
    pub(super) fn wait_while_leased(&self) {
        drop(self.unleased());
    }

    fn stopped(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.abort.load(Relaxed) || self.failed.load(Relaxed)
    }

    /// Add write-protect mode to the registration of every region (missing-page mode stays).
    fn register_write_protect(&self) -> std::io::Result<()> {
        for &(host, len, _) in &self.source.layout {
            let mut reg = UffdioRegister {
                range: UffdioRange { start: host, len },
                mode: UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
                ioctls: 0,
            };
            ioctl(&self.source.uffd, UFFDIO_REGISTER, &mut reg)?;
            if reg.ioctls & IOCTL_WRITEPROTECT_BIT == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "this memory cannot be write-protected",
                ));
            }
        }
        Ok(())
    }
}

impl FilledMemory {
    /// A write tracker on the fill's userfaultfd for one checkpoint taken while the fill runs
    /// (see the module doc), or `None` when the fill is over (then [`Self::finish`] returns at
    /// once and the machine registers a tracker of its own), failed, or this kernel cannot
    /// write-protect the memory.
    pub fn write_tracker(&self) -> Option<WriteTracker> {
        let shared = &self.shared;
        let mut state = lock(&shared.lease);
        if state.ended || shared.stopped() {
            return None;
        }
        if !state.write_protect {
            if let Err(e) = shared.register_write_protect() {
                tracing::debug!("restored memory: no write-protection during the fill: {e}");
                return None;
            }
            state.write_protect = true;
        }
        let uffd = match shared.source.uffd.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!("restored memory: duplicating the userfaultfd: {e}");
                return None;
            }
        };
        state.held += 1;
        // Left from an earlier lease: its writers were all let go when it lifted its protection.
        lock(&shared.write_faults).clear();
        let regions = shared
            .source
            .layout
            .iter()
            .map(|&(host, len, _)| (host, len))
            .collect();
        let lease = FillLease {
            shared: shared.clone(),
        };
        Some(WriteTracker::shared(uffd, regions, Box::new(lease)))
    }

    /// Whether the fill still owns guest memory's registration (it has not ended).
    pub fn running(&self) -> bool {
        !lock(&self.shared.lease).ended
    }
}
