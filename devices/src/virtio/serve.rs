//! The loop every request/response queue runs: pop each available chain, handle it, return it
//! on the used ring, and interrupt the driver once at the end if it wants to hear about it.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use crate::virtio::{IrqKind, IrqTrigger};
use crate::GuestMemoryMmap;

/// Serve every chain the driver made available on `queue`. `handle` processes one chain and
/// returns how many bytes it wrote into the chain's device-writable buffers. Returns the number
/// of chains served.
///
/// Notifications are disabled while draining and re-enabled at the end (with EVENT_IDX, by
/// publishing `avail_event`); chains added meanwhile are served before returning. The interrupt
/// is raised only if `needs_notification` says the driver asked for one. A broken available ring
/// (an index too far ahead) stops the loop rather than spinning on it.
pub fn serve_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &IrqTrigger,
    mut handle: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
) -> usize {
    serve_queue_throttled(queue, mem, interrupt, |chain| Handled::Done(handle(chain)))
}

/// What a handler did with one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Served; this many bytes were written into the chain.
    Done(u32),
    /// Not served (a rate limiter refused it): the chain goes back on the available ring and
    /// the queue stops until the device resumes it.
    Throttled,
}

/// [`serve_queue`], with a handler that may throttle: a [`Handled::Throttled`] chain is put back
/// (it is the first one seen next time) and serving stops, leaving notifications disabled (the
/// device's rate-limiter timer resumes it).
pub fn serve_queue_throttled(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &IrqTrigger,
    mut handle: impl FnMut(DescriptorChain<&GuestMemoryMmap>) -> Handled,
) -> usize {
    let mut served = 0usize;
    let mut throttled = false;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            tracing::warn!("virtio: cannot disable notifications: {e}");
            break;
        }
        let before = served;
        loop {
            let chain = match queue.iter(mem) {
                Ok(mut it) => it.next(),
                Err(e) => {
                    tracing::warn!("virtio: bad available ring: {e}");
                    None
                }
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            let Handled::Done(len) = handle(chain) else {
                queue.go_to_previous_position();
                throttled = true;
                break;
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                tracing::warn!("virtio: cannot return descriptor {head}: {e}");
            }
            served += 1;
        }
        if throttled {
            break;
        }
        match queue.enable_notification(mem) {
            // More chains arrived while notifications were off; but only go round again if this
            // round made progress, so a ring we cannot read does not keep us here.
            Ok(true) if served > before => continue,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!("virtio: cannot enable notifications: {e}");
                break;
            }
        }
    }
    if served > 0 && queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.trigger(IrqKind::Vring) {
            tracing::warn!("virtio: cannot raise interrupt: {e}");
        }
    }
    served
}

#[cfg(test)]
mod tests {
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes};

    use super::*;
    use crate::virtio::test_utils::*;

    #[test]
    fn avail_index_too_far_ahead_does_not_spin() {
        let mem = guest_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let (mut ctx, _evt, irq) = activate_ctx(&mem, &vq, false);
        let queue = &mut ctx.queues[0];
        // avail.idx = 100 with a queue of 16: virtio-queue refuses to iterate.
        mem.write_obj(100u16, vq.avail_addr().unchecked_add(2))
            .unwrap();
        assert_eq!(serve_queue(queue, &mem, &irq, |_| 0), 0);
        assert!(irq.eventfd().read().is_err());
    }

    #[test]
    fn serves_all_and_interrupts_once() {
        let mem = guest_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let (mut ctx, _evt, irq) = activate_ctx(&mem, &vq, false);
        for i in 0..5u16 {
            vq.add_desc_chains(&chain(i, &[(0x10_0000, 8, W)]), i)
                .unwrap();
        }
        assert_eq!(serve_queue(&mut ctx.queues[0], &mem, &irq, |_| 3), 5);
        assert_eq!(used_idx(&vq), 5);
        assert_eq!(used(&vq, 4), (4, 3));
        assert_eq!(irq.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn throttled_chain_is_put_back_and_served_next_time() {
        let mem = guest_mem();
        let vq = MockSplitQueue::new(&mem, 16);
        let (mut ctx, _evt, irq) = activate_ctx(&mem, &vq, false);
        for i in 0..4u16 {
            vq.add_desc_chains(&chain(i, &[(0x10_0000, 8, W)]), i)
                .unwrap();
        }
        let mut budget = 2;
        let mut take = |_: DescriptorChain<&GuestMemoryMmap>| {
            if budget == 0 {
                return Handled::Throttled;
            }
            budget -= 1;
            Handled::Done(1)
        };
        assert_eq!(
            serve_queue_throttled(&mut ctx.queues[0], &mem, &irq, &mut take),
            2
        );
        assert_eq!(used_idx(&vq), 2);
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        assert_eq!(serve_queue(&mut ctx.queues[0], &mem, &irq, |_| 1), 2);
        assert_eq!(used(&vq, 2).0, 2, "the throttled chain comes first");
        assert_eq!(used_idx(&vq), 4);
    }
}
