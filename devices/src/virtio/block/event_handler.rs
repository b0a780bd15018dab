//! The event-loop side of virtio-blk.
//!
//! At init the device registers its activation eventfd. Activation (and reset) signal it; the
//! handler then swaps the registered queue eventfd for the current one (or drops it after a
//! reset) and serves whatever the driver queued meanwhile, which also covers requests pending in
//! a restored checkpoint. Each queue event serves the whole available ring, unless the rate
//! limiter throttles it; the limiter's timerfd, registered once a limit is set, resumes it.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Block;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("virtio-blk: cannot register activation eventfd: {e}");
        }
        self.sync_limiter_timer(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            let mut registered = std::mem::take(&mut self.registered);
            registered.sync(ops, self.queue_evts());
            self.registered = registered;
            self.sync_limiter_timer(ops);
            self.process_queue();
        } else if Some(fd) == self.limiter_registered {
            self.limiter.on_timer();
            self.process_queue();
        } else if self.registered.take_event(fd).is_some() {
            self.process_queue();
        } else {
            tracing::warn!("virtio-blk: event on unknown fd {fd}");
        }
    }
}

impl Block {
    /// Watch the rate limiter's timerfd (it exists once a limit is set, and is replaced when a
    /// restored limiter is swapped in).
    fn sync_limiter_timer(&mut self, ops: &mut EventOps) {
        let fd = self.limiter.timer_fd();
        if fd == self.limiter_registered {
            return;
        }
        if let Some(old) = self.limiter_registered.take() {
            // The old timer may already be closed; then epoll has dropped it by itself.
            let _ = ops.remove(Events::new_raw(old, EventSet::IN));
        }
        if let Some(new) = fd {
            match ops.add(Events::new_raw(new, EventSet::IN)) {
                Ok(()) => self.limiter_registered = Some(new),
                Err(e) => tracing::error!("virtio-blk: cannot register rate limiter timer: {e}"),
            }
        }
    }
}
