use super::*;

/// A writer thread rewrites every page as fast as it can while the copy runs; the layer
/// must hold each page as it was when armed.
#[test]
fn copy_keeps_the_content_at_arming_under_concurrent_writes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress};

    if WriteTracker::open().is_err() {
        eprintln!("SKIP copy_keeps_the_content_at_arming: no userfaultfd here");
        return;
    }
    let mem =
        crate::vstate::memory::create_guest_memory(16, crate::config::HugePages::None).unwrap();
    let pages = 16 * 256u64;
    for p in 0..pages {
        mem.write_obj(p * 7 + 1, GuestAddress(p * PAGE_SIZE))
            .unwrap();
    }
    let plan = PageIndex::from_ranges([(0, pages)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem.layer");
    let layer = LayerFile::create(&path, pages * PAGE_SIZE).unwrap();
    let copy = arm(None, &mem, &plan, &mut Phases::new(Instant::now())).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // The copy starts once the writer runs: a 16 MiB copy can end before a new thread is
    // first scheduled.
    let started = Arc::new(std::sync::Barrier::new(2));
    let writer = {
        let (mem, stop, started) = (mem.clone(), stop.clone(), started.clone());
        std::thread::spawn(move || {
            started.wait();
            let mut round = 0u64;
            loop {
                for p in (0..pages).rev() {
                    mem.write_obj(u64::MAX - round, GuestAddress(p * PAGE_SIZE + 8))
                        .unwrap();
                }
                round += 1;
                if stop.load(Ordering::Relaxed) {
                    return round;
                }
            }
        })
    };
    started.wait();
    let (stats, _tracker) = copy.run(&layer).unwrap();
    eprintln!("background copy: {stats:?}");
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    assert_eq!(stats.bytes, pages * PAGE_SIZE);
    layer.finish(&plan, false).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for p in 0..pages as usize {
        let page = &bytes[p * 4096..(p + 1) * 4096];
        let first = u64::from_le_bytes(page[..8].try_into().unwrap());
        let second = u64::from_le_bytes(page[8..16].try_into().unwrap());
        assert_eq!((first, second), (p as u64 * 7 + 1, 0), "page {p}");
    }
    // Nothing stays protected: the VMM and the guest write freely afterwards.
    mem.write_obj(5u64, GuestAddress(0)).unwrap();
}

/// Write one u64 at the start of every page of `mem` on another thread; panics if that does
/// not finish in 10 s (a page left protected, with nobody reading the faults, blocks it).
fn write_every_page_within(mem: &GuestMemoryMmap, pages: u64, value: u64) {
    use vm_memory::{Bytes, GuestAddress};
    let (tx, rx) = std::sync::mpsc::channel();
    let mem = mem.clone();
    std::thread::spawn(move || {
        for p in 0..pages {
            mem.write_obj(value + p, GuestAddress(p * PAGE_SIZE))
                .unwrap();
        }
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("a write blocked: some page stayed write-protected");
}

/// 4 MiB of guest memory and its page count, page `p` starting with `1 + p`; `None`, after a
/// SKIP line for `test`, where this kernel gives no userfaultfd.
fn four_mib_written(test: &str) -> Option<(GuestMemoryMmap, u64)> {
    if WriteTracker::open().is_err() {
        eprintln!("SKIP {test}: no userfaultfd here");
        return None;
    }
    let mem =
        crate::vstate::memory::create_guest_memory(4, crate::config::HugePages::None).unwrap();
    let pages = 4 * 256u64;
    write_every_page_within(&mem, pages, 1);
    Some((mem, pages))
}

/// A copy hands back its tracker with nothing protected, pages armed outside its plan
/// included; the next checkpoint arms that tracker again and saves the content at its own
/// arming.
#[test]
fn a_kept_tracker_arms_again_and_leaves_nothing_protected() {
    use vm_memory::{Bytes, GuestAddress};

    let Some((mem, pages)) = four_mib_written("a_kept_tracker_arms_again") else {
        return;
    };
    // First checkpoint: all of memory protected (as a Full armed before the pause), two
    // ranges saved; the rest is lifted at the end.
    let mut tracker = open_registered(&mem).unwrap();
    for (host, len, _) in region_layout(&mem) {
        tracker.protect(host, len, true).unwrap();
    }
    let plan = PageIndex::from_ranges([(0, 100), (500, 100)]);
    let leftover = PageIndex::full(pages).subtract(&plan);
    let dir = tempfile::tempdir().unwrap();
    let layer = LayerFile::create(&dir.path().join("a"), pages * PAGE_SIZE).unwrap();
    let (stats, tracker) = MemoryCopy::new(tracker, &mem, &plan, leftover)
        .run(&layer)
        .unwrap();
    assert_eq!(stats.bytes, 200 * PAGE_SIZE);
    // Both ranges are in one region, so one lift lets them go, the gap of leftover pages
    // between them with them.
    assert_eq!(stats.lifts, 1);
    assert!(!tracker.protecting);
    write_every_page_within(&mem, pages, 1000);

    // Second checkpoint on the kept tracker, a writer running meanwhile.
    let plan = PageIndex::from_ranges([(200, 300)]);
    let path = dir.path().join("b");
    let layer = LayerFile::create(&path, pages * PAGE_SIZE).unwrap();
    let copy = arm(Some(tracker), &mem, &plan, &mut Phases::new(Instant::now())).unwrap();
    let writer = {
        let mem = mem.clone();
        std::thread::spawn(move || {
            for p in (0..pages).rev() {
                mem.write_obj(7u64, GuestAddress(p * PAGE_SIZE)).unwrap();
            }
        })
    };
    let (_, tracker) = copy.run(&layer).unwrap();
    writer.join().unwrap();
    layer.finish(&plan, false).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for p in 200..500usize {
        let first = u64::from_le_bytes(bytes[p * 4096..p * 4096 + 8].try_into().unwrap());
        assert_eq!(first, 1000 + p as u64, "page {p}");
    }
    write_every_page_within(&mem, pages, 5);
    drop(tracker);
    write_every_page_within(&mem, pages, 9);
}

/// A page copied but still protected, written by the guest: the writer is let go at the
/// next look at the fault queue, with everything copied before it, not at the end of the
/// copy; the layer keeps the content at arming.
#[test]
fn a_writer_on_a_copied_page_is_let_go_with_all_copied_so_far() {
    use vm_memory::{Bytes, GuestAddress};

    let Some((mem, pages)) = four_mib_written("a_writer_on_a_copied_page") else {
        return;
    };
    let plan = PageIndex::from_ranges([(0, pages)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mem.layer");
    let layer = LayerFile::create(&path, pages * PAGE_SIZE).unwrap();
    let mut copy = arm(None, &mem, &plan, &mut Phases::new(Instant::now())).unwrap();
    let mut stats = CopyStats::default();
    let chunks = std::mem::take(&mut copy.chunks);
    // The first two chunks copied, nothing lifted yet.
    for &(offset, len) in &chunks[..2] {
        copy.copy_chunk(&layer, offset, len, &mut stats).unwrap();
    }
    assert_eq!(stats.lifts, 0);
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = {
        let mem = mem.clone();
        std::thread::spawn(move || {
            mem.write_obj(77u64, GuestAddress(300 * PAGE_SIZE)).unwrap();
            let _ = tx.send(());
        })
    };
    let mut faults = Vec::new();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while rx.try_recv().is_err() {
        assert!(Instant::now() < deadline, "the writer was never let go");
        copy.serve_faults(&layer, &mut faults, &mut stats).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    writer.join().unwrap();
    assert_eq!(stats.lifts, 1, "one lift for both copied chunks");
    assert_eq!(stats.early_pages, 0, "the page was copied already");
    // Pages of the first chunk are free to write as well, without anyone serving faults.
    write_every_page_within(&mem, 256, 1000);
    copy.chunks = chunks[2..].to_vec();
    let (stats, _tracker) = copy.run(&layer).unwrap();
    assert_eq!(stats.lifts, 1);
    layer.finish(&plan, false).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for p in 0..pages as usize {
        let first = u64::from_le_bytes(bytes[p * 4096..p * 4096 + 8].try_into().unwrap());
        assert_eq!(first, 1 + p as u64, "page {p}");
    }
}
