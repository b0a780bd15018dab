use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::*;
use crate::virtio::test_utils::*;

fn cfg(amount_mib: u32, deflate_on_oom: bool, stats: u16) -> BalloonConfig {
    BalloonConfig {
        amount_mib,
        deflate_on_oom,
        stats_polling_interval_s: stats,
    }
}

/// Activate `dev` with one mock queue per queue it has (each in its own part of guest memory).
fn activate_all<'a>(
    dev: &mut Balloon,
    mem: &'a GuestMemoryMmap,
) -> (
    Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    Vec<EventFd>,
    Arc<IrqTrigger>,
) {
    let n = dev.queue_max_sizes().len();
    let vqs: Vec<_> = (0..n)
        .map(|i| MockSplitQueue::create(mem, GuestAddress(0x30_0000 + i as u64 * 0x2_0000), 16))
        .collect();
    let evts: Vec<_> = (0..n)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let irq = Arc::new(IrqTrigger::new().unwrap());
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues: vqs.iter().map(|vq| vq.create_queue().unwrap()).collect(),
        queue_evts: evts.iter().map(|e| e.try_clone().unwrap()).collect(),
        interrupt: irq.clone(),
    };
    dev.activate(ctx).unwrap();
    (vqs, evts, irq)
}

fn fill(mem: &GuestMemoryMmap, addr: u64, len: usize, byte: u8) {
    mem.write_slice(&vec![byte; len], GuestAddress(addr))
        .unwrap();
}

fn page_is(mem: &GuestMemoryMmap, addr: u64, byte: u8) -> bool {
    let mut v = vec![0u8; 4096];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v.iter().all(|&b| b == byte)
}

#[test]
fn features_queues_and_config_space() {
    let dev = Balloon::new(cfg(0, false, 0)).unwrap();
    assert_eq!(dev.device_type(), 5);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(dev.avail_features(), 1 << VIRTIO_F_VERSION_1);
    let mut dev = Balloon::new(cfg(2, true, 1)).unwrap();
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_eq!(
        dev.avail_features(),
        (1 << VIRTIO_F_VERSION_1) | (1 << 1) | (1 << 2)
    );
    let mut space = [0u8; 8];
    dev.read_config(0, &mut space);
    assert_eq!(space, [0, 2, 0, 0, 0, 0, 0, 0]);
    // The driver writes `actual`; `num_pages` is the host's.
    dev.write_config(4, &300u32.to_le_bytes());
    dev.write_config(0, &7u32.to_le_bytes());
    dev.write_config(6, &[0, 0, 0, 0]); // past the end: ignored
    dev.write_config(u64::MAX, &[1]);
    assert_eq!(dev.actual_pages(), 300);
    assert_eq!(dev.num_pages(), 512);
    assert_eq!(dev.config(), cfg(2, true, 1));
    assert!(matches!(
        Balloon::new(cfg(u32::MAX, false, 0)),
        Err(BalloonError::TooMuchMemoryRequested(_))
    ));
}

#[test]
fn inflate_discards_pages_and_ignores_hostile_pfns() {
    let mem = guest_mem();
    let mut dev = Balloon::new(cfg(0, false, 0)).unwrap();
    let (vqs, _evts, irq) = activate_all(&mut dev, &mem);
    fill(&mem, 0x10_0000, 0x3000, 0xaa);
    // PFNs: two real pages, one past RAM, u32::MAX, and the last page of RAM.
    let last = (MEM_SIZE >> 12) as u32 - 1;
    fill(&mem, (u64::from(last)) << 12, 4096, 0xbb);
    let pfns: Vec<u8> = [0x100u32, 0x102, 0x1_0000, u32::MAX, last]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    mem.write_slice(&pfns, GuestAddress(0x20_0000)).unwrap();
    vqs[INFLATE_INDEX]
        .add_desc_chains(&chain(0, &[(0x20_0000, pfns.len() as u32, R)]), 0)
        .unwrap();
    // A descriptor outside RAM, one whose length is not a multiple of 4, a writable one.
    vqs[INFLATE_INDEX]
        .add_desc_chains(&chain(1, &[(MEM_SIZE + 0x1000, 8, R)]), 1)
        .unwrap();
    vqs[INFLATE_INDEX]
        .add_desc_chains(&chain(2, &[(0x20_0000, 3, R)]), 2)
        .unwrap();
    vqs[INFLATE_INDEX]
        .add_desc_chains(&chain(3, &[(0x20_0000, 4, W)]), 3)
        .unwrap();
    dev.process_inflate();
    assert_eq!(used_idx(&vqs[INFLATE_INDEX]), 4);
    assert!(page_is(&mem, 0x10_0000, 0), "pfn 0x100 discarded");
    assert!(page_is(&mem, 0x10_1000, 0xaa), "pfn 0x101 kept");
    assert!(page_is(&mem, 0x10_2000, 0), "pfn 0x102 discarded");
    assert!(page_is(&mem, u64::from(last) << 12, 0));
    assert_eq!(irq.eventfd().read().unwrap(), 1);
    assert_eq!(
        dev.counts().inflate_count,
        4,
        "every buffer served is counted"
    );
}

#[test]
fn deflate_returns_buffers_and_update_size_interrupts() {
    let mem = guest_mem();
    let mut dev = Balloon::new(cfg(0, false, 0)).unwrap();
    assert!(matches!(
        dev.update_size(1),
        Err(BalloonError::DeviceNotActive)
    ));
    let (vqs, _evts, irq) = activate_all(&mut dev, &mem);
    vqs[DEFLATE_INDEX]
        .add_desc_chains(&chain(0, &[(0x20_0000, 8, R)]), 0)
        .unwrap();
    dev.process_deflate();
    assert_eq!(used_idx(&vqs[DEFLATE_INDEX]), 1);
    assert_eq!(dev.counts().deflate_count, 1);
    irq.eventfd().read().unwrap();
    dev.update_size(2).unwrap();
    assert_eq!(dev.num_pages(), 512);
    assert_eq!(irq.status() & crate::virtio::VIRTIO_MMIO_INT_CONFIG, 2);
    // 4 MiB of guest memory: 5 MiB is too much.
    assert!(matches!(
        dev.update_size(5),
        Err(BalloonError::TooMuchMemoryRequested(5))
    ));
    assert_eq!(dev.num_pages(), 512);
}

fn stats_buf(entries: &[(u16, u64)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|(t, v)| {
            let mut e = t.to_le_bytes().to_vec();
            e.extend_from_slice(&v.to_le_bytes());
            e
        })
        .collect()
}

#[test]
fn statistics_are_read_held_and_handed_back() {
    let mem = guest_mem();
    let mut dev = Balloon::new(cfg(0, false, 1)).unwrap();
    assert_eq!(dev.latest_stats().unwrap(), BalloonStats::default());
    let (vqs, _evts, irq) = activate_all(&mut dev, &mem);
    let buf = stats_buf(&[(4, 1000), (5, 4096), (6, 2000)]);
    mem.write_slice(&buf, GuestAddress(0x20_0000)).unwrap();
    vqs[STATS_INDEX]
        .add_desc_chains(&chain(0, &[(0x20_0000, buf.len() as u32, R)]), 0)
        .unwrap();
    dev.process_stats();
    assert_eq!(used_idx(&vqs[STATS_INDEX]), 0, "the buffer is held");
    let named: Vec<_> = dev.latest_stats().unwrap().named().collect();
    assert_eq!(
        named,
        vec![
            ("free_memory", 1000),
            ("total_memory", 4096),
            ("available_memory", 2000)
        ]
    );
    dev.trigger_stats_update();
    assert_eq!(used_idx(&vqs[STATS_INDEX]), 1);
    assert_eq!(irq.eventfd().read().unwrap(), 1);
    // A huge buffer is read only as far as MAX_STATS entries; one outside RAM is held unread.
    vqs[STATS_INDEX]
        .add_desc_chains(&chain(1, &[(0x20_0000, u32::MAX, R)]), 1)
        .unwrap();
    vqs[STATS_INDEX]
        .add_desc_chains(&chain(2, &[(MEM_SIZE, 64, R)]), 2)
        .unwrap();
    dev.process_stats();
    assert_eq!(used_idx(&vqs[STATS_INDEX]), 2, "the first was returned");
    assert_eq!(dev.stats_desc_index, Some(2));
    let counts = dev.counts();
    assert_eq!(
        (counts.stats_updates_count, counts.stats_update_fails),
        (2, 1),
        "two buffers read, the one outside RAM not"
    );
    // Interval changes: on stays on; on/off switches are refused.
    assert!(matches!(
        dev.update_stats_polling_interval(0),
        Err(BalloonError::StatisticsStateChange)
    ));
    dev.update_stats_polling_interval(3).unwrap();
    assert_eq!(dev.config().stats_polling_interval_s, 3);
    assert_eq!(
        used_idx(&vqs[STATS_INDEX]),
        3,
        "a new interval polls at once"
    );
    let mut off = Balloon::new(cfg(0, false, 0)).unwrap();
    assert!(matches!(
        off.latest_stats(),
        Err(BalloonError::StatisticsDisabled)
    ));
    assert!(matches!(
        off.update_stats_polling_interval(1),
        Err(BalloonError::StatisticsStateChange)
    ));
    off.update_stats_polling_interval(0).unwrap();
}

#[test]
fn event_handler_timer_and_reset() {
    let mem = guest_mem();
    let dev = Arc::new(Mutex::new(Balloon::new(cfg(0, false, 1)).unwrap()));
    let mut em = EventManager::<Arc<Mutex<Balloon>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    let (vqs, evts, _irq) = activate_all(&mut dev.lock().unwrap(), &mem);
    em.run_with_timeout(100).unwrap();
    assert_eq!(dev.lock().unwrap().registered.len(), 3);
    let buf = stats_buf(&[(4, 1)]);
    mem.write_slice(&buf, GuestAddress(0x20_0000)).unwrap();
    vqs[STATS_INDEX]
        .add_desc_chains(&chain(0, &[(0x20_0000, buf.len() as u32, R)]), 0)
        .unwrap();
    evts[STATS_INDEX].write(1).unwrap();
    em.run_with_timeout(100).unwrap();
    assert_eq!(dev.lock().unwrap().stats_desc_index, Some(0));
    // The 1 s timer hands the buffer back.
    em.run_with_timeout(2000).unwrap();
    assert_eq!(used_idx(&vqs[STATS_INDEX]), 1);
    assert!(dev.lock().unwrap().reset());
    assert!(!dev.lock().unwrap().is_activated());
    em.run_with_timeout(100).unwrap();
    assert!(dev.lock().unwrap().registered.is_empty());
}

#[test]
fn wrong_queue_count_is_refused() {
    let mem = guest_mem();
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let mut dev = Balloon::new(cfg(0, false, 0)).unwrap();
    let (ctx, _evt, _irq) = activate_ctx(&mem, &vq, false);
    assert!(dev.activate(ctx).is_err());
    assert!(!dev.is_activated());
}
