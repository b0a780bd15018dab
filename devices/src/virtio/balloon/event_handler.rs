//! The event-loop side of virtio-balloon: the activation eventfd (re)registers the queue
//! eventfds; each queue event serves its queue (inflate, deflate, statistics, hinting,
//! reporting, as far as present); the statistics timer hands the held statistics buffer back to
//! the driver.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Balloon;
use super::{DEFLATE_INDEX, INFLATE_INDEX, STATS_INDEX};

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("virtio-balloon: cannot register activation eventfd: {e}");
        }
        if let Err(e) = ops.add(Events::new(&self.stats_timer, EventSet::IN)) {
            tracing::error!("virtio-balloon: cannot register statistics timer: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            let mut registered = std::mem::take(&mut self.registered);
            registered.sync(ops, self.queue_evts());
            self.registered = registered;
            self.arm_stats_timer();
            self.end_restored_hinting();
            self.process_inflate();
            self.process_deflate();
            self.process_stats();
            self.process_hinting();
            self.process_reporting();
        } else if fd == self.stats_timer.as_raw_fd() {
            // Nonblocking read of the expiry count; a spurious wake-up is fine.
            let _ = rustix::io::read(&self.stats_timer, &mut [0u8; 8]);
            self.trigger_stats_update();
        } else {
            match self.registered.take_event(fd) {
                Some(INFLATE_INDEX) => self.process_inflate(),
                Some(DEFLATE_INDEX) => self.process_deflate(),
                Some(i) if i == STATS_INDEX && self.stats_polling_interval_s > 0 => {
                    self.process_stats()
                }
                Some(i) if Some(i) == self.hinting_index() => self.process_hinting(),
                Some(i) if Some(i) == self.reporting_index() => self.process_reporting(),
                _ => tracing::warn!("virtio-balloon: event on unknown fd {fd}"),
            }
        }
    }
}
