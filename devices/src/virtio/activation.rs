//! Keeping a device's queue eventfds registered with the event loop across activation and reset.
//!
//! A device's [`crate::virtio::VirtioDevice::activate`] and `reset` run on a vCPU thread and
//! cannot touch the event loop; they signal the device's activation eventfd instead. On that
//! event the device's subscriber calls [`QueueEvents::sync`], which drops the eventfds
//! registered before (their clones are kept until then, so epoll never sees a closed fd) and
//! registers the current ones.

use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, EventSet, Events};
use vmm_sys_util::eventfd::EventFd;

/// The queue eventfds a device has registered with the event loop.
#[derive(Debug, Default)]
pub struct QueueEvents {
    registered: Vec<EventFd>,
}

impl QueueEvents {
    /// Unregister the old eventfds and register clones of `current` (empty after a reset).
    pub fn sync(&mut self, ops: &mut EventOps, current: &[EventFd]) {
        for old in self.registered.drain(..) {
            if let Err(e) = ops.remove(Events::new(&old, EventSet::IN)) {
                tracing::warn!("cannot unregister queue eventfd: {e}");
            }
        }
        for evt in current {
            let clone = match evt.try_clone() {
                Ok(clone) => clone,
                Err(e) => {
                    tracing::error!("cannot clone queue eventfd: {e}");
                    continue;
                }
            };
            match ops.add(Events::new(&clone, EventSet::IN)) {
                Ok(()) => self.registered.push(clone),
                Err(e) => tracing::error!("cannot register queue eventfd: {e}"),
            }
        }
    }

    /// If `fd` is one of the registered queue eventfds: consume its count and return its
    /// position (the queue index when all of a device's queues are registered).
    pub fn take_event(&self, fd: RawFd) -> Option<usize> {
        let i = self.registered.iter().position(|e| e.as_raw_fd() == fd)?;
        // Nonblocking: EAGAIN on a spurious wake-up is fine.
        let _ = self.registered[i].read();
        Some(i)
    }

    /// How many eventfds are registered.
    pub fn len(&self) -> usize {
        self.registered.len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.registered.is_empty()
    }
}
