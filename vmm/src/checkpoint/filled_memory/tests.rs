use super::*;
use vm_memory::{Bytes, GuestAddress};

/// Two layers over 1024 pages (0..600, then 500..800 over it; the rest in none), each page's
/// first dword naming its layer: the files, the memory they make, the page count.
fn two_layers(dir: &std::path::Path) -> (Vec<PathBuf>, Vec<u8>, u64) {
    let pages = 1024u64;
    let size = pages * PAGE_SIZE;
    let mut expect = vec![0u8; size as usize];
    let mut layers = vec![];
    for (i, (first, count)) in [(0u64, 600u64), (500, 300)].into_iter().enumerate() {
        let mut mem = vec![0u8; size as usize];
        for p in first..first + count {
            let v = (p as u32) * 3 + i as u32 + 1;
            mem[(p * PAGE_SIZE) as usize..][..4].copy_from_slice(&v.to_le_bytes());
            expect[(p * PAGE_SIZE) as usize..][..4].copy_from_slice(&v.to_le_bytes());
        }
        let path = dir.join(format!("l{i}"));
        let index = PageIndex::from_ranges([(first, count)]);
        cairn_snapshot::memory::layer::write_layer_from_slice_to(&path, &index, &mem).unwrap();
        layers.push(path);
    }
    (layers, expect, pages)
}

/// Two layers on this host's file system: every page reads as the chain says, whether the
/// filler or a fault put it in, and the registration ends.
#[test]
fn memory_reads_as_the_chain_and_the_fill_ends() {
    if crate::checkpoint::background::WriteTracker::open().is_err() {
        eprintln!("SKIP memory_reads_as_the_chain: no userfaultfd here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (layers, expect, pages) = two_layers(dir.path());
    let size = pages * PAGE_SIZE;
    let regions = [(0u64, size / 2), (1 << 32, size / 2)];
    let (mem, claimed, filled) = map_filled(&regions, &layers).unwrap();
    assert_eq!(claimed.page_count(), 800);
    // Touch pages in reverse while the filler runs forward.
    let mut buf = [0u8; 4];
    for p in (0..pages).rev() {
        let gpa = if p < pages / 2 {
            p * PAGE_SIZE
        } else {
            (1 << 32) + (p - pages / 2) * PAGE_SIZE
        };
        mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        assert_eq!(buf, expect[(p * PAGE_SIZE) as usize..][..4], "page {p}");
    }
    filled.finish().unwrap();
    // Unregistered: pages no layer holds are plain zero-fill memory now.
    mem.write_obj(7u32, GuestAddress(900 * PAGE_SIZE + (1 << 32) - size / 2))
        .unwrap();
}

/// With the filler held back, every page comes through the fault thread: layer pages in
/// runs (across the two layers and the region boundary), holes as zero pages; a page written
/// after its fault keeps what was written. Dropping ends the fill early.
#[test]
fn faults_alone_read_as_the_chain() {
    if crate::checkpoint::background::WriteTracker::open().is_err() {
        eprintln!("SKIP faults_alone_read_as_the_chain: no userfaultfd here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (layers, expect, pages) = two_layers(dir.path());
    let size = pages * PAGE_SIZE;
    let regions = [(0u64, size / 2), (1 << 32, size / 2)];
    let (mem, _, filled) = map_filled_after(&regions, &layers, Duration::from_secs(600)).unwrap();
    let gpa = |p: u64| {
        if p < pages / 2 {
            p * PAGE_SIZE
        } else {
            (1 << 32) + (p - pages / 2) * PAGE_SIZE
        }
    };
    mem.write_obj(0xdead_beefu32, GuestAddress(gpa(501) + 8))
        .unwrap();
    let mut buf = [0u8; 12];
    for p in 0..pages {
        mem.read_slice(&mut buf, GuestAddress(gpa(p))).unwrap();
        let want = &expect[(p * PAGE_SIZE) as usize..][..4];
        assert_eq!(&buf[..4], want, "page {p}");
        let tail = if p == 501 { 0xdead_beefu32 } else { 0 };
        assert_eq!(buf[8..12], tail.to_le_bytes(), "page {p}");
    }
    let stats = filled.stats();
    assert_eq!(stats.filled_bytes.load(Ordering::Relaxed), 0);
    let faults = stats.faults.load(Ordering::Relaxed);
    assert!(faults > 0 && faults < pages / 4, "{faults} faults");
    drop(filled);
}

/// A checkpoint that needs the fill done does the steps the (held back) filler has not,
/// then the registration ends.
#[test]
fn finish_fills_what_the_filler_has_not() {
    if crate::checkpoint::background::WriteTracker::open().is_err() {
        eprintln!("SKIP finish_fills_what_the_filler_has_not: no userfaultfd here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (layers, expect, pages) = two_layers(dir.path());
    let regions = [(0u64, pages * PAGE_SIZE)];
    let (mem, _, filled) = map_filled_after(&regions, &layers, Duration::from_secs(600)).unwrap();
    let shared = filled.shared.clone();
    let started = Instant::now();
    filled.finish().unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        shared.source.stats.filled_bytes.load(Ordering::Relaxed),
        800 * PAGE_SIZE
    );
    assert_eq!(shared.source.stats.faults.load(Ordering::Relaxed), 0);
    let mut buf = [0u8; 4];
    for p in 0..pages {
        mem.read_slice(&mut buf, GuestAddress(p * PAGE_SIZE))
            .unwrap();
        assert_eq!(buf, expect[(p * PAGE_SIZE) as usize..][..4], "page {p}");
    }
    // Unregistered: the reads of pages in no layer took no fault.
    assert_eq!(shared.source.stats.faults.load(Ordering::Relaxed), 0);
}

/// A Diff checkpoint taken while the fill runs tracks writes on the fill's userfaultfd: a
/// writer rewrites every page (the dirty ones, protected, and the missing ones, which faults
/// put in) while the copy runs, and the copy saves the dirty pages as they were at arming. The
/// fill then ends its registration only once the checkpoint has let go of it.
#[test]
fn a_copy_during_the_fill_keeps_the_content_at_arming() {
    use crate::checkpoint::background::arm;
    use crate::checkpoint::memory::LayerFile;
    use crate::checkpoint::named::Phases;

    if crate::checkpoint::background::WriteTracker::open().is_err() {
        eprintln!("SKIP a_copy_during_the_fill: no userfaultfd here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (layers, expect, pages) = two_layers(dir.path());
    let regions = [(0u64, pages * PAGE_SIZE)];
    let (mem, _, filled) = map_filled_after(&regions, &layers, Duration::from_secs(600)).unwrap();
    // The "dirty" pages: 0..300 (layer pages) and 900..950 (in no layer), written after their
    // faults put them in.
    let dirty = PageIndex::from_ranges([(0, 300), (900, 50)]);
    for r in dirty.ranges() {
        for p in r.start..r.end() {
            mem.write_obj(p + 0x1000, GuestAddress(p * PAGE_SIZE + 16))
                .unwrap();
        }
    }
    let tracker = filled
        .write_tracker()
        .expect("a tracker on the fill's userfaultfd");
    assert!(tracker.is_shared());
    let layer_path = dir.path().join("mem.layer");
    let layer = LayerFile::create(&layer_path, pages * PAGE_SIZE).unwrap();
    let copy = arm(
        Some(tracker),
        &mem,
        &dirty,
        &mut Phases::new(Instant::now()),
    )
    .unwrap();
    let started = std::sync::Arc::new(std::sync::Barrier::new(2));
    let writer = {
        let (mem, started) = (mem.clone(), started.clone());
        std::thread::spawn(move || {
            started.wait();
            // A protected page first: the writer waits on it until the copy starts.
            mem.write_obj(7u64, GuestAddress(920 * PAGE_SIZE + 16))
                .unwrap();
            for p in (0..pages).rev() {
                mem.write_obj(7u64, GuestAddress(p * PAGE_SIZE + 16))
                    .unwrap();
            }
        })
    };
    started.wait();
    // The fill's fault thread reads that write fault and passes it on.
    let shared = filled.shared.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock(&shared.write_faults).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the write fault never reached the queue"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let (stats, tracker) = copy.run(&layer).unwrap();
    writer.join().unwrap();
    assert!(stats.early_pages >= 1, "{stats:?}");
    assert_eq!(stats.bytes, dirty.page_count() * PAGE_SIZE);
    layer.finish(&dirty, false).unwrap();
    let bytes = std::fs::read(&layer_path).unwrap();
    for r in dirty.ranges() {
        for p in r.start..r.end() {
            let at = (p * PAGE_SIZE) as usize;
            assert_eq!(bytes[at..at + 4], expect[at..at + 4], "page {p}");
            let v = u64::from_le_bytes(bytes[at + 16..at + 24].try_into().unwrap());
            assert_eq!(v, p + 0x1000, "page {p}: saved after the writer");
        }
    }
    // The fill still runs, and its registration outlives the checkpoint's hold on it.
    assert!(filled.running());
    fill_steps(&shared, false).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        filled.running(),
        "the registration ended under a checkpoint"
    );
    drop(tracker);
    let deadline = Instant::now() + Duration::from_secs(10);
    while filled.running() {
        assert!(Instant::now() < deadline, "the fill never ended");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(filled.write_tracker().is_none(), "a lease after the end");
    filled.finish().unwrap();
    // Every page reads as the writer left it, over the chain's first dword.
    let mut buf = [0u8; 24];
    for p in 0..pages {
        mem.read_slice(&mut buf, GuestAddress(p * PAGE_SIZE))
            .unwrap();
        let at = (p * PAGE_SIZE) as usize;
        assert_eq!(buf[..4], expect[at..at + 4], "page {p}");
        assert_eq!(buf[16..24], 7u64.to_le_bytes(), "page {p}");
    }
}
