//! The event-loop side of virtio-rng: the activation eventfd (re)registers the queue eventfd,
//! and each queue event fills every available buffer.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Rng;

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("virtio-rng: cannot register activation eventfd: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            let mut registered = std::mem::take(&mut self.registered);
            registered.sync(ops, self.queue_evts());
            self.registered = registered;
            self.process_queue();
        } else if self.registered.take_event(fd).is_some() {
            self.process_queue();
        } else {
            tracing::warn!("virtio-rng: event on unknown fd {fd}");
        }
    }
}
