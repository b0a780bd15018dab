//! Helpers for device tests: guest memory, descriptor chains on a `MockSplitQueue`, activation.

use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateContext, IrqTrigger};
use crate::GuestMemoryMmap;

/// Guest RAM size in tests (4 MiB, from address 0).
pub(crate) const MEM_SIZE: u64 = 0x40_0000;
/// `VRING_DESC_F_NEXT`.
pub(crate) const NEXT: u16 = 1;
/// Device-writable descriptor flag (`VRING_DESC_F_WRITE`).
pub(crate) const W: u16 = 2;
/// Device-readable descriptor flag (none).
pub(crate) const R: u16 = 0;

/// 4 MiB of guest RAM at address 0.
pub(crate) fn guest_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

/// One raw split descriptor.
pub(crate) fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A chain starting at descriptor index `first`: `(addr, len, R|W)` parts, linked in order.
pub(crate) fn chain(first: u16, parts: &[(u64, u32, u16)]) -> Vec<RawDescriptor> {
    parts
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, flags))| {
            let i = i as u16;
            if usize::from(i) + 1 < parts.len() {
                desc(addr, len, flags | NEXT, first + i + 1)
            } else {
                desc(addr, len, flags, 0)
            }
        })
        .collect()
}

/// An activation context for `vq` (queue count 1), with the queue eventfd and interrupt line
/// also returned to the test.
pub(crate) fn activate_ctx(
    mem: &GuestMemoryMmap,
    vq: &MockSplitQueue<GuestMemoryMmap>,
    event_idx: bool,
) -> (ActivateContext, EventFd, Arc<IrqTrigger>) {
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_event_idx(event_idx);
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let irq = Arc::new(IrqTrigger::new().unwrap());
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues: vec![q],
        queue_evts: vec![evt.try_clone().unwrap()],
        interrupt: irq.clone(),
    };
    (ctx, evt, irq)
}

/// Used ring entry `i`: (head index, length).
pub(crate) fn used(vq: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
    let e = vq.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

/// The used ring's index.
pub(crate) fn used_idx(vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
    vq.used().idx().load()
}
