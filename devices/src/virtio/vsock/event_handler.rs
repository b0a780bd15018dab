//! The vsock device as an `event-manager` subscriber.
//!
//! At `init` only `activate_evt` is watched. When it fires (after activation, reset, or the
//! transport re-activating a restored device), the handler swaps the registered queue eventfds
//! for the current ones and adds or removes the muxer's epoll fd (which stands for every host
//! socket).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::device::Vsock;
use super::{EVQ_INDEX, RX_INDEX, TX_INDEX};

impl Vsock {
    /// Bring the loop's watch list in line with the device's state.
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        let mut registered = std::mem::take(&mut self.registered);
        registered.sync(ops, self.queue_evts());
        self.registered = registered;

        let want = self.active.is_some();
        let fd = self.muxer.as_raw_fd();
        if want && !self.muxer_registered {
            match ops.add(Events::new_raw(fd, EventSet::IN)) {
                Ok(()) => self.muxer_registered = true,
                Err(e) => tracing::error!("vsock: cannot watch the muxer: {e:?}"),
            }
        } else if !want && self.muxer_registered {
            if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                tracing::warn!("vsock: cannot stop watching the muxer: {e:?}");
            }
            self.muxer_registered = false;
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("vsock: cannot watch the activation eventfd: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            self.sync_registrations(ops);
            self.process_tx();
        } else if let Some(index) = self.registered.take_event(fd) {
            match index {
                RX_INDEX => {
                    self.process_rx();
                    // Replies held back for lack of rx buffers may now fit.
                    self.process_tx();
                }
                TX_INDEX => {
                    self.process_tx();
                }
                // The guest posted event buffers (used only for transport resets): after a
                // reset, this is its acknowledgement.
                EVQ_INDEX => {
                    self.process_event_queue();
                }
                _ => {}
            }
        } else if self.muxer_registered && fd == self.muxer.as_raw_fd() {
            self.process_host_events();
        } else {
            tracing::warn!("vsock: event on unknown fd {fd}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::super::device::tests::mem;
    use super::super::device::VsockConfig;
    use super::super::packet::{Op, VsockHeader, HDR_LEN};
    use super::*;
    use crate::virtio::{ActivateContext, IrqTrigger, VirtioDevice};

    #[test]
    fn host_connect_reaches_the_guest_through_the_event_loop() {
        let mem = mem();
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let qs: Vec<_> = (0..3u64)
            .map(|i| MockSplitQueue::create(&mem, GuestAddress(i * 0x4000), 16))
            .collect();
        let vsock = Arc::new(Mutex::new(
            Vsock::new(VsockConfig {
                guest_cid: 3,
                uds_path: uds.clone(),
            })
            .unwrap(),
        ));
        let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        em.add_subscriber(vsock.clone());
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        vsock
            .lock()
            .unwrap()
            .activate(ActivateContext {
                mem: mem.clone(),
                queues: qs.iter().map(|q| q.create_queue().unwrap()).collect(),
                queue_evts: evts.iter().map(|e| e.try_clone().unwrap()).collect(),
                interrupt: Arc::new(IrqTrigger::new().unwrap()),
            })
            .unwrap();
        em.run_with_timeout(100).unwrap();
        {
            let dev = vsock.lock().unwrap();
            assert_eq!(dev.registered.len(), 3);
            assert!(dev.muxer_registered);
        }

        let raw = virtio_queue::desc::RawDescriptor::from(
            virtio_queue::desc::split::Descriptor::new(0x10_0000, 4096, 2, 0),
        );
        qs[RX_INDEX].add_desc_chains(&[raw], 0).unwrap();
        evts[RX_INDEX].write(1).unwrap();
        em.run_with_timeout(100).unwrap();

        // As after a restore: a transport reset the guest has not handled yet holds the
        // request back until the guest kicks the event queue.
        let raw = virtio_queue::desc::RawDescriptor::from(
            virtio_queue::desc::split::Descriptor::new(0x20_0000, 8, 2, 0),
        );
        qs[EVQ_INDEX].add_desc_chains(&[raw], 0).unwrap();
        vsock.lock().unwrap().send_transport_reset().unwrap();
        let mut client = std::os::unix::net::UnixStream::connect(&uds).unwrap();
        client.write_all(b"CONNECT 77\n").unwrap();
        for _ in 0..5 {
            em.run_with_timeout(20).unwrap();
        }
        assert_eq!(qs[RX_INDEX].used().idx().load(), 0);
        evts[EVQ_INDEX].write(1).unwrap();
        for _ in 0..20 {
            em.run_with_timeout(50).unwrap();
            if qs[RX_INDEX].used().idx().load() == 1 {
                break;
            }
        }
        assert_eq!(qs[RX_INDEX].used().idx().load(), 1);
        let mut head = [0u8; HDR_LEN];
        mem.read_slice(&mut head, GuestAddress(0x10_0000)).unwrap();
        let hdr = VsockHeader::from_bytes(&head);
        assert_eq!(hdr.op(), Some(Op::Request));
        assert_eq!(hdr.dst_port, 77);

        assert!(vsock.lock().unwrap().reset());
        em.run_with_timeout(100).unwrap();
        let dev = vsock.lock().unwrap();
        assert!(dev.registered.is_empty());
        assert!(!dev.muxer_registered);
        assert_eq!(dev.connection_count(), 0);
    }
}
