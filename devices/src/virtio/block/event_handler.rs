//! The event-loop side of virtio-blk.
//!
//! At init the device registers its activation eventfd. Activation (and reset) signal it; the
//! handler then swaps the registered queue eventfd for the current one (or drops it after a
//! reset) and serves whatever the driver queued meanwhile, which also covers requests pending in
//! a restored checkpoint. Each queue event serves the whole available ring.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Block;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("virtio-blk: cannot register activation eventfd: {e}");
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
            tracing::warn!("virtio-blk: event on unknown fd {fd}");
        }
    }
}
