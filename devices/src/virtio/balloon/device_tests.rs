use std::sync::Mutex;

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::*;
use crate::virtio::balloon::{HintingStatus, FREE_PAGE_HINT_DONE};
use crate::virtio::test_utils::*;

fn cfg(amount_mib: u32, deflate_on_oom: bool, stats: u16) -> BalloonConfig {
    BalloonConfig {
        amount_mib,
        deflate_on_oom,
        stats_polling_interval_s: stats,
        ..Default::default()
    }
}

/// A balloon with free page hinting and/or reporting (statistics off unless `stats`).
fn free_page_cfg(hinting: bool, reporting: bool, stats: u16) -> BalloonConfig {
    BalloonConfig {
        stats_polling_interval_s: stats,
        free_page_hinting: hinting,
        free_page_reporting: reporting,
        ..Default::default()
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
    let mut space = [0u8; 12];
    dev.read_config(0, &mut space);
    assert_eq!(space, [0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // The driver writes `actual`; `num_pages` is the host's.
    dev.write_config(4, &300u32.to_le_bytes());
    dev.write_config(0, &7u32.to_le_bytes());
    dev.write_config(6, &[0, 0, 0, 0]); // past `actual`: ignored
    dev.write_config(8, &[9, 9, 9, 9]); // the hint command id is the host's: ignored
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

#[test]
fn free_page_features_and_queue_order() {
    // Queues: inflate, deflate, then statistics, hinting, reporting, each only when on.
    for (hinting, reporting, stats, queues, hint_at, report_at) in [
        (true, false, 0, 3, Some(2), None),
        (false, true, 0, 3, None, Some(2)),
        (true, true, 0, 4, Some(2), Some(3)),
        (true, true, 1, 5, Some(3), Some(4)),
        (false, true, 1, 4, None, Some(3)),
    ] {
        let dev = Balloon::new(free_page_cfg(hinting, reporting, stats)).unwrap();
        assert_eq!(dev.queue_max_sizes().len(), queues);
        assert_eq!(dev.hinting_index(), hint_at);
        assert_eq!(dev.reporting_index(), report_at);
        assert_eq!(
            dev.avail_features()
                & ((1 << VIRTIO_BALLOON_F_FREE_PAGE_HINT) | (1 << VIRTIO_BALLOON_F_REPORTING)),
            (u64::from(hinting) << 3) | (u64::from(reporting) << 5)
        );
        assert_eq!(dev.config(), free_page_cfg(hinting, reporting, stats));
    }
}

#[test]
fn reporting_discards_whole_pages_and_survives_hostile_descriptors() {
    let mem = guest_mem();
    let mut dev = Balloon::new(free_page_cfg(false, true, 0)).unwrap();
    let (vqs, _evts, irq) = activate_all(&mut dev, &mem);
    let q = &vqs[2];
    fill(&mem, 0x10_0000, 0x8000, 0xaa);
    // One chain as Linux sends it: device-writable ranges, here 2 pages and 1 page.
    q.add_desc_chains(
        &chain(0, &[(0x10_0000, 0x2000, W), (0x10_4000, 0x1000, W)]),
        0,
    )
    .unwrap();
    // A range with a partial page at each end: only the whole page between goes.
    q.add_desc_chains(&chain(2, &[(0x10_5800, 0x2000, W)]), 2)
        .unwrap();
    dev.process_reporting();
    assert_eq!(used_idx(q), 2);
    assert!(page_is(&mem, 0x10_0000, 0) && page_is(&mem, 0x10_1000, 0));
    assert!(page_is(&mem, 0x10_2000, 0xaa), "between the ranges: kept");
    assert!(page_is(&mem, 0x10_4000, 0));
    assert!(page_is(&mem, 0x10_5000, 0xaa), "partly reported: kept");
    assert!(page_is(&mem, 0x10_6000, 0), "wholly reported");
    assert!(page_is(&mem, 0x10_7000, 0xaa), "partly reported: kept");
    assert_eq!(irq.eventfd().read().unwrap(), 1);
    let c = dev.counts();
    assert_eq!(
        (
            c.free_page_report_count,
            c.free_page_report_freed,
            c.free_page_report_fails
        ),
        (3, 4 * 4096, 0)
    );
    // Hostile ranges: outside RAM, a huge length, one crossing the end of RAM, address
    // u64::MAX. Each is a counted failure; every buffer comes back; nothing panics.
    fill(&mem, MEM_SIZE - 0x1000, 0x1000, 0xcc);
    for (i, (addr, len)) in [
        (MEM_SIZE, 0x1000),
        (0x10_0000, u32::MAX),
        (MEM_SIZE - 0x1000, 0x2000),
        (u64::MAX, 0x1000),
    ]
    .into_iter()
    .enumerate()
    {
        let i = 3 + i as u16;
        q.add_desc_chains(&chain(i, &[(addr, len, W)]), i).unwrap();
    }
    dev.process_reporting();
    assert_eq!(used_idx(q), 6);
    assert!(
        page_is(&mem, MEM_SIZE - 0x1000, 0xcc),
        "a range crossing RAM's end is refused whole"
    );
    let c = dev.counts();
    assert_eq!((c.free_page_report_count, c.free_page_report_fails), (7, 4));
}

#[test]
fn bad_chains_are_returned_without_panic() {
    let mem = guest_mem();
    let mut dev = Balloon::new(free_page_cfg(true, true, 0)).unwrap();
    let (vqs, _evts, _irq) = activate_all(&mut dev, &mem);
    dev.start_hinting(false).unwrap();
    for (qi, process) in [
        (2usize, Balloon::process_hinting as fn(&mut Balloon)),
        (3, Balloon::process_reporting),
    ] {
        let q = &vqs[qi];
        // A descriptor whose `next` is itself, one whose `next` is past the table, and an
        // indirect table outside RAM.
        q.add_desc_chains(&[desc(0x10_0000, 0x1000, W | NEXT, 0)], 0)
            .unwrap();
        q.add_desc_chains(&[desc(0x10_0000, 0x1000, W | NEXT, 999)], 1)
            .unwrap();
        q.add_desc_chains(&[desc(MEM_SIZE, 0x100, 4, 0)], 2)
            .unwrap();
        process(&mut dev);
        process(&mut dev);
        // An available index far ahead of the ring: the queue stops instead of spinning.
        q.avail().idx().store(u16::MAX);
        process(&mut dev);
    }
    assert!(dev.is_activated());
}

/// A 4-byte command id for the device to read, at `at`.
fn hint_cmd(mem: &GuestMemoryMmap, at: u64, cmd: u32) -> (u64, u32, u16) {
    mem.write_obj(cmd, GuestAddress(at)).unwrap();
    (at, 4, R)
}

#[test]
fn hinting_runs_take_only_the_current_runs_blocks() {
    let mem = guest_mem();
    let mut off = Balloon::new(cfg(0, false, 0)).unwrap();
    assert!(matches!(
        off.start_hinting(true),
        Err(BalloonError::HintingNotEnabled)
    ));
    assert!(matches!(
        off.hinting_status(),
        Err(BalloonError::HintingNotEnabled)
    ));
    assert!(matches!(
        off.stop_hinting(),
        Err(BalloonError::HintingNotEnabled)
    ));
    let mut dev = Balloon::new(free_page_cfg(true, false, 1)).unwrap();
    assert!(matches!(
        dev.start_hinting(true),
        Err(BalloonError::DeviceNotActive)
    ));
    assert!(matches!(
        dev.stop_hinting(),
        Err(BalloonError::DeviceNotActive)
    ));
    assert_eq!(dev.hinting_status().unwrap(), HintingStatus::default());
    let (vqs, _evts, irq) = activate_all(&mut dev, &mem);
    // The mock queues have 16 descriptors, but their avail ring meets the used ring's flags
    // after 8 entries: this test adds 8 chains at most.
    let q = &vqs[3];
    let read_cmd = |dev: &Balloon| {
        let mut b = [0u8; 4];
        dev.read_config(8, &mut b);
        u32::from_le_bytes(b)
    };

    // A block before any run: returned untouched.
    fill(&mem, 0x10_0000, 0x10000, 0xaa);
    q.add_desc_chains(&chain(0, &[(0x10_0000, 0x1000, W)]), 0)
        .unwrap();
    dev.process_hinting();
    assert!(page_is(&mem, 0x10_0000, 0xaa));

    // Run 2: the host writes the id and interrupts.
    dev.start_hinting(false).unwrap();
    assert_eq!(read_cmd(&dev), 2);
    assert_eq!(irq.status() & crate::virtio::VIRTIO_MMIO_INT_CONFIG, 2);
    // A block sent under the wrong id is left alone.
    q.add_desc_chains(
        &chain(1, &[hint_cmd(&mem, 0x20_0000, 9), (0x10_1000, 0x1000, W)]),
        1,
    )
    .unwrap();
    // The driver acknowledges run 2 and sends two blocks (one partly outside RAM), then STOP.
    q.add_desc_chains(
        &chain(3, &[hint_cmd(&mem, 0x20_0010, 2), (0x10_2000, 0x2000, W)]),
        3,
    )
    .unwrap();
    q.add_desc_chains(&chain(5, &[(MEM_SIZE - 0x1000, 0x2000, W)]), 5)
        .unwrap();
    q.add_desc_chains(&chain(6, &[hint_cmd(&mem, 0x20_0020, 0)]), 6)
        .unwrap();
    dev.process_hinting();
    assert_eq!(used_idx(q), 5, "every buffer is returned");
    assert!(page_is(&mem, 0x10_1000, 0xaa), "wrong id: kept");
    assert!(page_is(&mem, 0x10_2000, 0) && page_is(&mem, 0x10_3000, 0));
    let c = dev.counts();
    assert_eq!(
        (
            c.free_page_hint_count,
            c.free_page_hint_freed,
            c.free_page_hint_fails
        ),
        (2, 0x2000, 1)
    );
    assert_eq!(
        dev.hinting_status().unwrap(),
        HintingStatus {
            host_cmd: 2,
            guest_cmd: Some(0)
        },
        "no acknowledgement asked for: the run stays until stopped"
    );
    dev.stop_hinting().unwrap();
    assert_eq!(read_cmd(&dev), FREE_PAGE_HINT_DONE);
    // After DONE, blocks (even with the old id) are left alone.
    q.add_desc_chains(
        &chain(7, &[hint_cmd(&mem, 0x20_0030, 2), (0x10_4000, 0x1000, W)]),
        7,
    )
    .unwrap();
    dev.process_hinting();
    assert!(page_is(&mem, 0x10_4000, 0xaa));

    // Run 3 with acknowledge_on_stop: the driver's STOP brings DONE at once. A command
    // descriptor outside RAM is ignored.
    dev.start_hinting(true).unwrap();
    assert_eq!(read_cmd(&dev), 3);
    q.add_desc_chains(
        &chain(
            9,
            &[
                (MEM_SIZE, 4, R),
                hint_cmd(&mem, 0x20_0040, 3),
                (0x10_5000, 0x1000, W),
            ],
        ),
        9,
    )
    .unwrap();
    q.add_desc_chains(&chain(12, &[hint_cmd(&mem, 0x20_0050, 0)]), 12)
        .unwrap();
    dev.process_hinting();
    assert!(page_is(&mem, 0x10_5000, 0));
    assert_eq!(
        dev.hinting_status().unwrap(),
        HintingStatus {
            host_cmd: FREE_PAGE_HINT_DONE,
            guest_cmd: Some(0)
        }
    );
    // Ids wrap past 0 and 1.
    dev.hinting.last_cmd_id = u32::MAX;
    dev.start_hinting(true).unwrap();
    assert_eq!(read_cmd(&dev), 2);
}

#[test]
fn restored_balloon_ends_a_saved_hinting_run_on_activation() {
    use cairn_snapshot::Persist;
    let mem = guest_mem();
    let mut dev = Balloon::new(free_page_cfg(true, false, 0)).unwrap();
    let _active = activate_all(&mut dev, &mem);
    dev.start_hinting(false).unwrap();
    let state = dev.save().unwrap();
    let restored = Arc::new(Mutex::new(Balloon::restore((), &state).unwrap()));
    assert_eq!(
        restored.lock().unwrap().hinting_status().unwrap().host_cmd,
        2
    );
    let mut em = EventManager::<Arc<Mutex<Balloon>>>::new().unwrap();
    em.add_subscriber(restored.clone());
    let (_vqs, _evts, irq) = activate_all(&mut restored.lock().unwrap(), &mem);
    em.run_with_timeout(100).unwrap();
    assert_eq!(
        restored.lock().unwrap().hinting_status().unwrap().host_cmd,
        FREE_PAGE_HINT_DONE
    );
    assert_eq!(irq.status() & crate::virtio::VIRTIO_MMIO_INT_CONFIG, 2);
}

#[test]
fn discards_punch_holes_in_shared_tmpfs_memory() {
    use std::os::unix::fs::MetadataExt;
    use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::FileOffset;

    // Guest RAM as cairn's guest_memory_dir makes it: a tmpfs file mapped shared.
    let Ok(file) = tempfile::tempfile_in("/dev/shm") else {
        eprintln!("SKIP: no /dev/shm");
        return;
    };
    let len = 1usize << 20;
    file.set_len(len as u64).unwrap();
    let region =
        MmapRegionBuilder::<AtomicBitmap>::new_with_bitmap(len, AtomicBitmap::with_len(len))
            .with_file_offset(FileOffset::new(file.try_clone().unwrap(), 0))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED)
            .build()
            .unwrap();
    let mem =
        GuestMemoryMmap::from_regions(vec![
            crate::GuestRegionMmap::new(region, GuestAddress(0)).unwrap()
        ])
        .unwrap();
    fill(&mem, 0, len, 0x5a);
    let blocks = || file.metadata().unwrap().blocks();
    let before = blocks();
    assert_eq!(
        discard_range(&mem, GuestAddress(0x4_0000), 0x4_0000).unwrap(),
        0x4_0000
    );
    // The file gave the 256 KiB back (MADV_DONTNEED would have left them allocated).
    let after = blocks();
    assert_eq!(before - after, 0x4_0000 / 512, "blocks {before} -> {after}");
    assert!(page_is(&mem, 0x4_0000, 0) && page_is(&mem, 0x7_f000, 0));
    assert!(page_is(&mem, 0x3_f000, 0x5a) && page_is(&mem, 0x8_0000, 0x5a));
}
