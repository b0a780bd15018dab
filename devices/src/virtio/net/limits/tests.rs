use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::super::device::tests::{config, mem, MockBackend};
use super::super::{RX_INDEX, TX_INDEX, VNET_HDR_LEN};
use super::*;
use crate::rate_limiter::BucketConfig;
use crate::virtio::{ActivateContext, IrqTrigger, VirtioDevice};

const FRAME: usize = 1000;

fn limit(size: u64) -> LimiterConfig {
    LimiterConfig {
        bandwidth: None,
        ops: Some(BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms: 100,
        }),
    }
}

fn bytes(size: u64) -> LimiterConfig {
    LimiterConfig {
        bandwidth: Some(BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms: 100,
        }),
        ops: None,
    }
}

/// `n` frames each way through a device with `rx`/`tx` limits in an event loop: returns, for
/// rx and tx, (frames at once, frames in all, time until all).
fn run(rx: LimiterConfig, tx: LimiterConfig, n: u16) -> [(u16, u16, Duration); 2] {
    let mem = mem();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
    let backend = MockBackend::default();
    let mut net = Net::with_backend(config(), backend.clone()).unwrap();
    net.update_rate_limiters(&rx, &tx).unwrap();
    let frame = vec![7u8; FRAME];
    mem.write_slice(&frame, GuestAddress(0x10_0000)).unwrap();
    for i in 0..n {
        backend
            .inner
            .lock()
            .unwrap()
            .to_guest
            .push_back(frame.clone());
        let d = |addr, flags| RawDescriptor::from(SplitDescriptor::new(addr, 2048, flags, 0));
        rxq.add_desc_chains(&[d(0x20_0000 + u64::from(i) * 0x1000, 2)], i)
            .unwrap();
        let t = RawDescriptor::from(SplitDescriptor::new(0x10_0000, FRAME as u32, 0, 0));
        txq.add_desc_chains(&[t], i).unwrap();
    }
    let net = Arc::new(Mutex::new(net));
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(net.clone());
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
        queue_evts: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
        interrupt: Arc::new(IrqTrigger::new().unwrap()),
    };
    let start = Instant::now();
    net.lock().unwrap().activate(ctx).unwrap();
    em.run_with_timeout(0).unwrap();
    let idx = |q: &MockSplitQueue<_>| q.used().idx().load();
    let at_once = [idx(&rxq), idx(&txq)];
    let mut done = [None, None];
    while done.iter().any(Option::is_none) && start.elapsed() < Duration::from_secs(10) {
        em.run_with_timeout(20).unwrap();
        for (q, d) in [&rxq, &txq].into_iter().zip(done.iter_mut()) {
            if d.is_none() && idx(q) == n {
                *d = Some(start.elapsed());
            }
        }
    }
    assert_eq!(
        backend.inner.lock().unwrap().from_guest.len(),
        usize::from(n)
    );
    let stats = net.lock().unwrap().stats();
    assert_eq!(
        (stats.rx_frames, stats.tx_frames),
        (u64::from(n), u64::from(n))
    );
    [RX_INDEX, TX_INDEX].map(|q| {
        (
            at_once[q],
            idx([&rxq, &txq][q]),
            done[q].unwrap_or_default(),
        )
    })
}

#[test]
fn rx_and_tx_throughput_is_bounded_by_their_limiters_and_unlimited_is_not() {
    const { assert!(FRAME > VNET_HDR_LEN) };
    // rx: 3 frames' worth of bytes per 100 ms; tx: 4 frames per 100 ms. 12 frames each way.
    let [rx, tx] = run(bytes(3 * FRAME as u64), limit(4), 12);
    assert_eq!((rx.0, rx.1), (3, 12), "rx {rx:?}");
    assert!(rx.2 >= Duration::from_millis(280), "rx {rx:?}");
    assert_eq!((tx.0, tx.1), (4, 12), "tx {tx:?}");
    assert!(tx.2 >= Duration::from_millis(180), "tx {tx:?}");

    let none = LimiterConfig::default();
    let [rx, tx] = run(none, none, 12);
    assert_eq!((rx.0, tx.0), (12, 12), "unlimited: all at once");
}

#[test]
fn update_and_restore_set_the_limiters() {
    use cairn_snapshot::Persist;
    let mut net = Net::with_backend(config(), MockBackend::default()).unwrap();
    assert!(!net.rate_limiters().0.is_limiting());
    net.update_rate_limiters(&limit(5), &LimiterConfig::default())
        .unwrap();
    assert_eq!(net.rate_limiters().0.config(), limit(5));
    assert!(!net.rate_limiters().1.is_limiting());
    assert_eq!(
        net.activate_evt.read().unwrap(),
        1,
        "new timer: handler told"
    );
    let rx = net.rate_limiters().0.save().unwrap();
    let mut other = Net::with_backend(config(), MockBackend::default()).unwrap();
    other
        .set_rate_limiters(
            RateLimiter::restore((), &rx).unwrap(),
            RateLimiter::default(),
        )
        .unwrap();
    assert_eq!(other.rate_limiters().0.config(), limit(5));
}
