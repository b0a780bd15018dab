//! Free page hinting and free page reporting (virtio 1.2, 5.5.6.7 and 5.5.6.8).
//!
//! **Hinting** is driven by the host. `start_hinting` writes a new command id (2 and up) into
//! the configuration space and raises a configuration interrupt. The driver answers on the
//! hinting queue with that id (a 4-byte device-readable buffer), then hands over free blocks it
//! has taken out of its allocator (device-writable buffers), then the id `STOP`. The device
//! gives each block of the current run back to the host. The driver keeps the blocks until the
//! host writes `DONE` (`stop_hinting`, or on its own at `STOP` when the run was started with
//! `acknowledge_on_stop`); then it frees them again. Blocks of an older run, and blocks that
//! arrive while no run is on, are returned untouched.
//!
//! **Reporting** is driven by the guest: it hands over free blocks (device-writable buffers), the
//! device gives them back to the host and returns the buffer, and only then does the driver put
//! the blocks back in its allocator. Linux reports blocks of `pageblock_order` (4 MiB on x86
//! without hugetlb) once a zone has that many free above its low watermark, about 2 s after
//! memory was freed.
//!
//! Either way a given-back page reads back as zero the next time the guest touches it, which the
//! guest expects of a free page. A range outside guest RAM is counted as a failure and ignored;
//! the buffer is returned all the same.

use serde::{Deserialize, Serialize};
use vm_memory::Bytes;

use super::device::{discard_range, Balloon, BalloonError};
use super::{FREE_PAGE_HINT_DONE, FREE_PAGE_HINT_STOP};
use crate::virtio::serve::serve_queue;
use crate::virtio::IrqKind;

/// Where a free page hinting run stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintingState {
    /// The command id the host last wrote: `STOP` (0) before any run, `DONE` (1) after one,
    /// else the running run's id.
    pub host_cmd: u32,
    /// The id of the last run started (ids count up from 2, wrapping past 1).
    pub last_cmd_id: u32,
    /// The command id the driver last sent, if any.
    pub guest_cmd: Option<u32>,
    /// Write `DONE` as soon as the driver sends `STOP`.
    pub acknowledge_on_stop: bool,
}

/// `GET /balloon/hinting/status`: the host's last command and the driver's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HintingStatus {
    /// The command id the host last wrote.
    pub host_cmd: u32,
    /// The command id the driver last sent, if any.
    pub guest_cmd: Option<u32>,
}

/// A command id that names a run (0 and 1 are `STOP` and `DONE`).
fn is_run(cmd: u32) -> bool {
    cmd > FREE_PAGE_HINT_DONE
}

impl Balloon {
    /// Start a hinting run: a new command id goes to the driver. With `acknowledge_on_stop`, the
    /// device writes `DONE` itself when the driver has sent every hint.
    pub fn start_hinting(&mut self, acknowledge_on_stop: bool) -> Result<(), BalloonError> {
        if !self.free_page_hinting() {
            return Err(BalloonError::HintingNotEnabled);
        }
        if self.active.is_none() {
            return Err(BalloonError::DeviceNotActive);
        }
        let mut id = self.hinting.last_cmd_id.wrapping_add(1);
        if !is_run(id) {
            id = FREE_PAGE_HINT_DONE + 1;
        }
        self.hinting.last_cmd_id = id;
        self.hinting.acknowledge_on_stop = acknowledge_on_stop;
        self.set_hint_cmd(id)
    }

    /// The host's last command and the driver's.
    pub fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        if !self.free_page_hinting() {
            return Err(BalloonError::HintingNotEnabled);
        }
        Ok(HintingStatus {
            host_cmd: self.hinting.host_cmd,
            guest_cmd: self.hinting.guest_cmd,
        })
    }

    /// End the run: `DONE` lets the driver use the hinted pages again.
    pub fn stop_hinting(&mut self) -> Result<(), BalloonError> {
        if !self.free_page_hinting() {
            return Err(BalloonError::HintingNotEnabled);
        }
        self.set_hint_cmd(FREE_PAGE_HINT_DONE)
    }

    /// Write `cmd` into the configuration space and tell the driver.
    pub(super) fn set_hint_cmd(&mut self, cmd: u32) -> Result<(), BalloonError> {
        let Some(active) = &self.active else {
            return Err(BalloonError::DeviceNotActive);
        };
        self.hinting.host_cmd = cmd;
        active
            .interrupt
            .trigger(IrqKind::Config)
            .map_err(BalloonError::Interrupt)
    }

    /// Serve the hinting queue: record the driver's command ids, give back the blocks of the
    /// current run, and return every buffer.
    pub fn process_hinting(&mut self) {
        let Some(idx) = self.hinting_index() else {
            return;
        };
        let (Some(active), Some(queue)) = (self.active.as_ref(), self.queues.get_mut(idx)) else {
            return;
        };
        let mem = &active.mem;
        let host_cmd = self.hinting.host_cmd;
        let hinting = &mut self.hinting;
        let counts = &mut self.counts;
        let mut finished = false;
        serve_queue(queue, mem, &active.interrupt, |chain| {
            for desc in chain {
                // A command id: four bytes for the device to read.
                if !desc.is_write_only() && desc.len() == 4 {
                    match mem.read_obj::<u32>(desc.addr()) {
                        Ok(cmd) => {
                            hinting.guest_cmd = Some(cmd);
                            // DONE is the host's word; from the driver, treat it as STOP.
                            finished = !is_run(cmd);
                        }
                        Err(e) => tracing::debug!("virtio-balloon: unreadable hint command: {e}"),
                    }
                    continue;
                }
                if !is_run(host_cmd) || hinting.guest_cmd != Some(host_cmd) {
                    // No run on, or a block of an earlier run: leave it alone.
                    continue;
                }
                counts.free_page_hint_count += 1;
                match discard_range(mem, desc.addr(), u64::from(desc.len())) {
                    Ok(bytes) => counts.free_page_hint_freed += bytes,
                    Err(e) => {
                        counts.free_page_hint_fails += 1;
                        tracing::debug!("virtio-balloon: hint not taken: {e}");
                    }
                }
            }
            0
        });
        if finished && is_run(host_cmd) && self.hinting.acknowledge_on_stop {
            if let Err(e) = self.set_hint_cmd(FREE_PAGE_HINT_DONE) {
                tracing::warn!("virtio-balloon: cannot acknowledge the end of hinting: {e}");
            }
        }
    }

    /// Serve the reporting queue: give every reported block back to the host, then return the
    /// buffer (the driver reuses the blocks only after that).
    pub fn process_reporting(&mut self) {
        let Some(idx) = self.reporting_index() else {
            return;
        };
        let (Some(active), Some(queue)) = (self.active.as_ref(), self.queues.get_mut(idx)) else {
            return;
        };
        let mem = &active.mem;
        let counts = &mut self.counts;
        serve_queue(queue, mem, &active.interrupt, |chain| {
            for desc in chain {
                counts.free_page_report_count += 1;
                match discard_range(mem, desc.addr(), u64::from(desc.len())) {
                    Ok(bytes) => counts.free_page_report_freed += bytes,
                    Err(e) => {
                        counts.free_page_report_fails += 1;
                        tracing::debug!("virtio-balloon: report not taken: {e}");
                    }
                }
            }
            0
        });
    }

    /// After a restore, on the first activation: end the saved run, if any, so the driver frees
    /// the blocks it holds for it (nobody is left to stop it).
    pub(super) fn end_restored_hinting(&mut self) {
        if self.active.is_none() || !std::mem::take(&mut self.end_hinting_on_activate) {
            return;
        }
        if !self.free_page_hinting() || self.hinting.host_cmd == FREE_PAGE_HINT_STOP {
            return;
        }
        if let Err(e) = self.set_hint_cmd(FREE_PAGE_HINT_DONE) {
            tracing::warn!("virtio-balloon: cannot end the restored hinting run: {e}");
        }
    }
}
