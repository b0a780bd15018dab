//! The virtio-net device as an `event-manager` subscriber.
//!
//! At `init` only `activate_evt` is watched. When it fires (after activation, reset, or the
//! transport re-activating a restored device), the handler swaps the registered queue eventfds
//! for the current ones and adds or removes the tap fd. The tap is watched edge-triggered: the RX
//! path reads until the tap is empty or the guest has no buffer left, and the rx queue's kick
//! resumes it.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Net;
use super::tap::NetBackend;
use super::{RX_INDEX, TX_INDEX};

impl<B: NetBackend> Net<B> {
    /// Bring the loop's watch list in line with the device's state.
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        let mut registered = std::mem::take(&mut self.registered);
        registered.sync(ops, self.queue_evts());
        self.registered = registered;
        self.sync_limiter_timers(ops);

        let want = self.active.is_some();
        if let Some(fd) = self.backend.poll_fd() {
            if want && !self.backend_registered {
                let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
                match ops.add(Events::new_raw(fd, set)) {
                    Ok(()) => self.backend_registered = true,
                    Err(e) => tracing::error!("net: cannot watch the tap: {e:?}"),
                }
            } else if !want && self.backend_registered {
                if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                    tracing::warn!("net: cannot stop watching the tap: {e:?}");
                }
                self.backend_registered = false;
            }
        }
    }
}

impl<B: NetBackend> MutEventSubscriber for Net<B> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("net: cannot watch the activation eventfd: {e:?}");
        }
        self.sync_limiter_timers(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            self.sync_registrations(ops);
            self.process_rx();
            self.process_tx();
        } else if let Some(index) = self.registered.take_event(fd) {
            match index {
                RX_INDEX => {
                    self.process_rx();
                }
                TX_INDEX => {
                    self.process_tx();
                }
                _ => {}
            }
        } else if self.backend_registered && Some(fd) == self.backend.poll_fd() {
            self.process_rx();
        } else if let Some(which) = self.limiter_timer(fd) {
            self.on_limiter_timer(which);
        } else {
            tracing::warn!("net: event on unknown fd {fd}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::RawFd;
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::super::device::tests::{config, mem, MockBackend};
    use super::*;
    use crate::virtio::{ActivateContext, IrqTrigger, VirtioDevice};

    /// The mock backend with a pollable fd (an eventfd standing in for the tap).
    struct PolledMock {
        inner: MockBackend,
        evt: EventFd,
    }

    impl NetBackend for PolledMock {
        fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let _ = self.evt.read();
            self.inner.read_frame(buf)
        }
        fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
            self.inner.write_frame(frame)
        }
        fn poll_fd(&self) -> Option<RawFd> {
            Some(self.evt.as_raw_fd())
        }
    }

    #[test]
    fn activation_registers_fds_and_kicks_are_served() {
        let mem = mem();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let backend = MockBackend::default();
        let tap_evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let polled = PolledMock {
            inner: backend.clone(),
            evt: tap_evt.try_clone().unwrap(),
        };
        let net = Arc::new(Mutex::new(Net::with_backend(config(), polled).unwrap()));
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        em.add_subscriber(net.clone());

        let tx_evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ctx = ActivateContext {
            mem: mem.clone(),
            queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            queue_evts: vec![
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                tx_evt.try_clone().unwrap(),
            ],
            interrupt: Arc::new(IrqTrigger::new().unwrap()),
        };
        net.lock().unwrap().activate(ctx).unwrap();
        em.run_with_timeout(100).unwrap();
        {
            let dev = net.lock().unwrap();
            assert_eq!(dev.registered.len(), 2);
            assert!(dev.backend_registered);
        }

        // TX kick.
        let frame = vec![0u8; 40];
        mem.write_slice(&frame, GuestAddress(0x10_0000)).unwrap();
        let raw = virtio_queue::desc::RawDescriptor::from(
            virtio_queue::desc::split::Descriptor::new(0x10_0000, 40, 0, 0),
        );
        txq.add_desc_chains(&[raw], 0).unwrap();
        tx_evt.write(1).unwrap();
        em.run_with_timeout(100).unwrap();
        assert_eq!(backend.inner.lock().unwrap().from_guest.len(), 1);
        assert_eq!(txq.used().idx().load(), 1);

        // The tap becomes readable.
        let raw = virtio_queue::desc::RawDescriptor::from(
            virtio_queue::desc::split::Descriptor::new(0x20_0000, 2048, 2, 0),
        );
        rxq.add_desc_chains(&[raw], 0).unwrap();
        backend
            .inner
            .lock()
            .unwrap()
            .to_guest
            .push_back(vec![0u8; 60]);
        tap_evt.write(1).unwrap();
        em.run_with_timeout(100).unwrap();
        assert_eq!(rxq.used().idx().load(), 1);

        // A reset takes the queue eventfds and the tap out of the loop.
        assert!(net.lock().unwrap().reset());
        em.run_with_timeout(100).unwrap();
        let dev = net.lock().unwrap();
        assert!(dev.registered.is_empty());
        assert!(!dev.backend_registered);
    }
}
