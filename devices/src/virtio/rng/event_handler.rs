//! The event-loop side of virtio-rng: the activation eventfd (re)registers the queue eventfd,
//! and each queue event fills every available buffer, unless the rate limiter throttles it; the
//! limiter's timerfd, registered once a limit is set, resumes it.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Rng;
use crate::rate_limiter::watch_timer;

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("virtio-rng: cannot register activation eventfd: {e}");
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
            tracing::warn!("virtio-rng: event on unknown fd {fd}");
        }
    }
}

impl Rng {
    /// Watch the rate limiter's timerfd (it exists once a limit is set).
    fn sync_limiter_timer(&mut self, ops: &mut EventOps) {
        let fd = self.limiter.timer_fd();
        watch_timer(ops, fd, &mut self.limiter_registered, "virtio-rng");
    }
}
