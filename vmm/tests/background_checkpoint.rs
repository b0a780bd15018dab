//! Checkpoints that do not stop the guest (checkpoint/background.rs). The `dirty256m` ticker
//! rewrites a 256 MiB window as fast as it can while each checkpoint's memory is copied; every
//! saved page must be as it was at the pause (page by page against hashes taken while paused,
//! `CAIRN_VERIFY_MEMORY`), the window must show the ticker's one-step pattern, and every
//! checkpoint must restore to exactly that memory.

use std::path::Path;

#[allow(dead_code)] // page_hashes is for the other tests
mod common;

use cairn_snapshot::memory::PageIndex;
use cairn_tests::capture::Capture;
use cairn_tests::guests;
use cairn_vmm::builder::BuildSpec;
use cairn_vmm::checkpoint::verify;
use cairn_vmm::machine::RunState;
use cairn_vmm::runtime::Runtime;
use common::{console, kvm_and_userfaultfd, wait_dots};

const WINDOW_FIRST_PAGE: u64 = 0x20_0000 / 4096;
const WINDOW_PAGES: u64 = 256 * 256;

/// The ticker writes its pass number into the first dword of each window page, in order, so at
/// any instant the window reads N, ..., N, N-1, ..., N-1. A page saved after the guest rewrote
/// it breaks that.
fn check_one_step(layer: &Path, pages: &PageIndex) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(layer).unwrap();
    let mut values = vec![];
    for page in WINDOW_FIRST_PAGE..WINDOW_FIRST_PAGE + WINDOW_PAGES {
        if !pages.contains(page) {
            continue;
        }
        let mut b = [0u8; 4];
        file.read_exact_at(&mut b, page * 4096).unwrap();
        values.push((page, u32::from_le_bytes(b)));
    }
    assert!(!values.is_empty(), "no window page saved");
    let top = values[0].1;
    for pair in values.windows(2) {
        let ((_, a), (page, b)) = (pair[0], pair[1]);
        assert!(
            b <= a && top - b <= 1,
            "page {page:#x} holds pass {b} after {a} (first {top}): saved after the guest wrote it"
        );
    }
}

#[test]
fn checkpoints_of_a_running_guest_hold_the_memory_at_the_pause() {
    if !kvm_and_userfaultfd("checkpoints_of_a_running_guest_hold_the_memory_at_the_pause") {
        return;
    }
    // This test binary runs only this test, so the variable reaches no other.
    std::env::set_var("CAIRN_VERIFY_MEMORY", "1");
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let store = dir.path().join("ckpts");
    let mut spec = BuildSpec::linux(guests::DIRTY256M);
    spec.mem_size_mib = 300;
    spec.checkpoint_dir = Some(store.clone());
    spec.track_dirty_pages = true;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();

    let names = ["c0", "c1", "c2"];
    for name in names {
        let seen = out.dots();
        wait_dots(&mut rt, &out, seen);
        let meta = rt.create_checkpoint(Some(name)).unwrap();
        assert_eq!(rt.machine().unwrap().state(), RunState::Running);
        eprintln!(
            "{name}: {:.1} MiB, pause {:.2} ms, copy {:.2} ms, total {:.2} ms",
            meta.memory.dirty_mib, meta.pause_ms, meta.write_ms, meta.total_ms
        );
        assert!(
            meta.total_ms + 1.0 >= meta.pause_ms + meta.write_ms,
            "the copy ran inside the pause: {meta:?}"
        );
        let ck = store.join(name);
        let hashes = verify::load(&ck).expect("hashes taken at the pause");
        let layer = ck.join("mem.layer");
        let index = cairn_snapshot::memory::open_layer(&layer).unwrap();
        let differ = verify::layer_mismatches(&layer, &index.pages, &hashes).unwrap();
        assert!(
            differ.is_empty(),
            "{name}: {} pages differ from the pause, first {:#x?}",
            differ.len(),
            &differ[..differ.len().min(8)]
        );
        // The chunk checksums, computed from the pages as they were written, are the file's.
        assert!(!index.chunk_crcs.is_empty(), "{name}: no chunk checksums");
        cairn_snapshot::memory::verify_layer(&layer)
            .unwrap_or_else(|e| panic!("{name}: chunk checksums: {e}"));
        check_one_step(&layer, &index.pages);
    }

    for name in names {
        let out = Capture::default();
        rt.restore_checkpoint(name, None, false, None, || console(&out))
            .unwrap();
        let restored = verify::page_hashes(rt.machine().unwrap().memory());
        let saved = verify::load(&store.join(name)).unwrap();
        // The VM generation id's page is rewritten by every restore, by design.
        let vmgenid_page = cairn_vmm::arch::x86_64::layout::VMGENID_ADDR / 4096;
        let expected = PageIndex::from_ranges([(vmgenid_page, 1)]);
        let differ = verify::unexpected_changes(&saved, &restored, &expected);
        assert!(differ.is_empty(), "{name}: {} pages differ", differ.len());
        rt.machine_mut().unwrap().resume().unwrap();
        wait_dots(&mut rt, &out, 0);
    }
}
