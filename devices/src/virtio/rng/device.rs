//! The virtio-rng device.

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Address, Bytes};
use vmm_sys_util::eventfd::EventFd;

use super::{MAX_BYTES_PER_REQUEST, QUEUE_SIZE};
use crate::rate_limiter::{LimiterConfig, RateLimiter};
use crate::virtio::activation::QueueEvents;
use crate::virtio::serve::{serve_queue, serve_queue_throttled, Handled};
use crate::virtio::{
    device_type, ActivateContext, ActivateError, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::GuestMemoryMmap;

/// Random bytes are produced this many at a time.
const CHUNK: usize = 4096;

/// Why an rng device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// Creating the activation eventfd failed.
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
}

struct Active {
    mem: GuestMemoryMmap,
    queue_evt: EventFd,
    interrupt: Arc<IrqTrigger>,
}

/// A virtio entropy device.
pub struct Rng {
    pub(super) acked_features: u64,
    /// Signalled on activation and reset, so the event handler (re)registers the queue eventfd.
    pub(super) activate_evt: EventFd,
    /// The queue eventfd as registered with the event loop.
    pub(super) registered: QueueEvents,
    active: Option<Active>,
    /// Empty, or the one queue while activated.
    queues: Vec<Queue>,
    buf: Vec<u8>,
    /// Firecracker's entropy `rate_limiter` (unlimited by default): one op and the request's
    /// bytes per request, as Firecracker counts them.
    pub(super) limiter: RateLimiter,
    /// The limiter timerfd as registered with the event loop.
    pub(super) limiter_registered: Option<std::os::fd::RawFd>,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("acked_features", &self.acked_features)
            .field("activated", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

/// Fill `buf` from the kernel's CSPRNG.
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Rng {
    /// A new, inactive device.
    pub fn new() -> Result<Self, RngError> {
        Ok(Self {
            acked_features: 0,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(RngError::EventFd)?,
            registered: QueueEvents::default(),
            active: None,
            queues: Vec::new(),
            buf: vec![0; CHUNK],
            limiter: RateLimiter::default(),
            limiter_registered: None,
        })
    }

    /// Set or change the rate limiter (a bucket left `None` is kept). Signals the event handler
    /// so that a new limiter timer gets watched.
    pub fn update_rate_limiter(&mut self, cfg: &LimiterConfig) -> std::io::Result<()> {
        self.limiter.update(cfg)?;
        self.watch_new_timer()
    }

    /// The rate limiter.
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Replace the rate limiter (a restored one).
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) -> std::io::Result<()> {
        self.limiter = limiter;
        self.watch_new_timer()
    }

    fn watch_new_timer(&self) -> std::io::Result<()> {
        if self.limiter.timer_fd() != self.limiter_registered {
            self.activate_evt.write(1)?;
        }
        Ok(())
    }

    /// The eventfd the event handler watches for activation and reset.
    pub fn activate_evt(&self) -> &EventFd {
        &self.activate_evt
    }

    /// The queue eventfd of the active device (none while inactive).
    pub(super) fn queue_evts(&self) -> &[EventFd] {
        self.active
            .as_ref()
            .map_or(&[], |a| std::slice::from_ref(&a.queue_evt))
    }

    /// Fill every available buffer, then notify the driver if it asked for it.
    pub fn process_queue(&mut self) {
        let (Some(active), Some(queue)) = (self.active.as_ref(), self.queues.first_mut()) else {
            return;
        };
        let buf = &mut self.buf;
        if !self.limiter.is_limiting() {
            serve_queue(queue, &active.mem, &active.interrupt, |chain| {
                fill_chain(chain, &active.mem, buf)
            });
            return;
        }
        if self.limiter.is_blocked() {
            return;
        }
        let limiter = &mut self.limiter;
        serve_queue_throttled(queue, &active.mem, &active.interrupt, |chain| {
            // What the request asks for, as Firecracker counts it: the writable length, capped.
            let asked = chain
                .clone()
                .writable()
                .fold(0u64, |n, d| n.saturating_add(u64::from(d.len())))
                .min(u64::from(MAX_BYTES_PER_REQUEST));
            if !limiter.consume_request(asked) {
                return Handled::Throttled;
            }
            let written = fill_chain(chain, &active.mem, buf);
            // A request cut short (a buffer outside RAM) pays only for what it got.
            limiter.manual_replenish(
                asked - u64::from(written),
                crate::rate_limiter::TokenType::Bytes,
            );
            Handled::Done(written)
        });
    }
}

/// Fill the device-writable buffers of `chain` with random bytes, at most
/// [`MAX_BYTES_PER_REQUEST`] in all. Device-readable descriptors are skipped; a buffer outside
/// guest RAM ends the request. Returns the number of bytes written.
pub(super) fn fill_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
) -> u32 {
    let mut written = 0u32;
    for desc in chain.writable() {
        let mut done = 0u32;
        while done < desc.len() && written < MAX_BYTES_PER_REQUEST {
            let n = (desc.len() - done)
                .min(MAX_BYTES_PER_REQUEST - written)
                .min(buf.len() as u32);
            let chunk = &mut buf[..n as usize];
            if let Err(e) = fill_random(chunk) {
                tracing::error!("virtio-rng: getrandom failed: {e}");
                return written;
            }
            let Some(addr) = desc.addr().checked_add(u64::from(done)) else {
                return written;
            };
            if mem.write_slice(chunk, addr).is_err() {
                tracing::debug!("virtio-rng: buffer outside guest RAM");
                return written;
            }
            done += n;
            written += n;
        }
        if written >= MAX_BYTES_PER_REQUEST {
            break;
        }
    }
    written
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, _offset: u64, _data: &mut [u8]) {
        // virtio-rng has no configuration space.
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        tracing::debug!("virtio-rng: ignoring config write at {offset:#x}");
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let got = ctx.queues.len();
        let (Ok([queue]), Ok([queue_evt])) = (
            <[Queue; 1]>::try_from(ctx.queues),
            <[EventFd; 1]>::try_from(ctx.queue_evts),
        ) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        self.queues = vec![queue];
        self.active = Some(Active {
            mem: ctx.mem,
            queue_evt,
            interrupt: ctx.interrupt,
        });
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.queues.clear();
        self.acked_features = 0;
        if let Err(e) = self.activate_evt.write(1) {
            tracing::warn!("virtio-rng: cannot signal reset: {e}");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::virtio::test_utils::*;

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    #[test]
    fn fills_writable_buffers_and_caps_requests() {
        let mem = guest_mem();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let mut rng = Rng::new().unwrap();
        assert_eq!(rng.device_type(), device_type::RNG);
        let (ctx, _evt, irq) = activate_ctx(&mem, &vq, false);
        rng.activate(ctx).unwrap();
        // Chain 0: a readable descriptor (skipped) then two writable ones.
        vq.add_desc_chains(
            &chain(
                0,
                &[(0x10_0000, 64, R), (0x11_0000, 100, W), (0x12_0000, 28, W)],
            ),
            0,
        )
        .unwrap();
        // Chain 1: a 1 MiB buffer, capped.
        vq.add_desc_chains(&chain(3, &[(0x20_0000, 1 << 20, W)]), 3)
            .unwrap();
        // Chain 2: outside RAM.
        vq.add_desc_chains(&chain(4, &[(MEM_SIZE, 16, W)]), 4)
            .unwrap();
        // Chain 3: straddling the end of RAM: the part inside is filled... or nothing; no panic.
        vq.add_desc_chains(&chain(5, &[(MEM_SIZE - 8, 16, W)]), 5)
            .unwrap();
        // Chain 4: a normal one after the bad ones.
        vq.add_desc_chains(&chain(6, &[(0x13_0000, 32, W)]), 6)
            .unwrap();
        rng.process_queue();
        assert_eq!(used_idx(&vq), 5);
        assert_eq!(used(&vq, 0), (0, 128));
        assert_eq!(used(&vq, 1), (3, MAX_BYTES_PER_REQUEST));
        assert_eq!(used(&vq, 2), (4, 0));
        assert_eq!(used(&vq, 3).1, 0);
        assert_eq!(used(&vq, 4), (6, 32));
        assert_eq!(
            read(&mem, 0x10_0000, 64),
            vec![0; 64],
            "readable buffer untouched"
        );
        assert_ne!(read(&mem, 0x11_0000, 100), vec![0; 100]);
        assert_ne!(read(&mem, 0x12_0000, 28), vec![0; 28]);
        let big = read(&mem, 0x20_0000, 1 << 20);
        assert!(big[MAX_BYTES_PER_REQUEST as usize..]
            .iter()
            .all(|&b| b == 0));
        assert_ne!(
            big[..MAX_BYTES_PER_REQUEST as usize],
            vec![0; 64 * 1024][..]
        );
        assert_eq!(irq.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn event_handler_and_reset() {
        let mem = guest_mem();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let dev = Arc::new(Mutex::new(Rng::new().unwrap()));
        let mut em = EventManager::<Arc<Mutex<Rng>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let (ctx, evt, _irq) = activate_ctx(&mem, &vq, false);
        dev.lock().unwrap().activate(ctx).unwrap();
        em.run_with_timeout(100).unwrap();
        assert_eq!(dev.lock().unwrap().registered.len(), 1);
        vq.add_desc_chains(&chain(0, &[(0x10_0000, 16, W)]), 0)
            .unwrap();
        evt.write(1).unwrap();
        em.run_with_timeout(100).unwrap();
        assert_eq!(used_idx(&vq), 1);
        assert!(dev.lock().unwrap().reset());
        assert!(!dev.lock().unwrap().is_activated());
        assert!(dev.lock().unwrap().queues().is_empty());
        em.run_with_timeout(100).unwrap();
        assert!(dev.lock().unwrap().registered.is_empty());
    }

    #[test]
    fn rate_limiter_throttles_and_resumes() {
        use crate::rate_limiter::BucketConfig;
        let mem = guest_mem();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let mut rng = Rng::new().unwrap();
        // 100 bytes, refilled over 100 s: the first 64-byte request fits, the second does not.
        let cfg = LimiterConfig {
            bandwidth: Some(BucketConfig {
                size: 100,
                one_time_burst: 0,
                refill_time_ms: 100_000,
            }),
            ops: None,
        };
        rng.update_rate_limiter(&cfg).unwrap();
        assert!(rng.rate_limiter().timer_fd().is_some());
        let (ctx, _evt, _irq) = activate_ctx(&mem, &vq, false);
        rng.activate(ctx).unwrap();
        vq.add_desc_chains(&chain(0, &[(0x10_0000, 64, W)]), 0)
            .unwrap();
        vq.add_desc_chains(&chain(1, &[(0x11_0000, 64, W)]), 1)
            .unwrap();
        rng.process_queue();
        assert_eq!(used_idx(&vq), 1, "the second request is held back");
        assert_eq!(used(&vq, 0), (0, 64));
        assert!(rng.rate_limiter().is_blocked());
        assert_eq!(read(&mem, 0x11_0000, 64), vec![0; 64]);
        // Blocked: a queue event does nothing until the timer fires.
        rng.process_queue();
        assert_eq!(used_idx(&vq), 1);
        // The limit is lifted (size 0 removes the bucket): the held request is served.
        rng.update_rate_limiter(&LimiterConfig {
            bandwidth: Some(BucketConfig::default()),
            ops: None,
        })
        .unwrap();
        // The timer was armed for REFILL_INTERVAL; once it has fired, reading it does not block.
        std::thread::sleep(crate::rate_limiter::REFILL_INTERVAL);
        rng.limiter.on_timer();
        rng.process_queue();
        assert_eq!(used_idx(&vq), 2);
        assert_eq!(used(&vq, 1), (1, 64));
        assert_ne!(read(&mem, 0x11_0000, 64), vec![0; 64]);
    }

    #[test]
    fn ops_limit_counts_requests() {
        use crate::rate_limiter::BucketConfig;
        let mem = guest_mem();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let mut rng = Rng::new().unwrap();
        rng.update_rate_limiter(&LimiterConfig {
            bandwidth: None,
            ops: Some(BucketConfig {
                size: 2,
                one_time_burst: 1,
                refill_time_ms: 100_000,
            }),
        })
        .unwrap();
        let (ctx, _evt, _irq) = activate_ctx(&mem, &vq, false);
        rng.activate(ctx).unwrap();
        for i in 0..5u16 {
            vq.add_desc_chains(&chain(i, &[(0x10_0000 + u64::from(i) * 0x1000, 8, W)]), i)
                .unwrap();
        }
        rng.process_queue();
        assert_eq!(used_idx(&vq), 3, "burst 1 + bucket 2");
        assert_eq!(rng.rate_limiter().throttled_count(), 1);
    }

    #[test]
    fn wrong_queue_count_is_refused() {
        let mem = guest_mem();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let mut rng = Rng::new().unwrap();
        let (mut ctx, _evt, _irq) = activate_ctx(&mem, &vq, false);
        ctx.queues.clear();
        assert!(rng.activate(ctx).is_err());
        assert!(!rng.is_activated());
    }
}
