//! Checkpoints that do not stop the guest, of a VM restored from checkpoint layers on a disk
//! file system (checkpoint/filled_memory.rs). Such layers cannot be write-protected as a file
//! mapping, so the restore fills anonymous memory from them; a Diff checkpoint taken while that
//! fill runs tracks writes on the fill's own userfaultfd and leaves the fill to go on
//! (checkpoint/filled_memory/lease.rs), then copies in the background as for a booted VM.
//! The `dirty256m` ticker rewrites a 256 MiB window all along: each checkpoint must hold the
//! memory at its pause page by page (`CAIRN_VERIFY_MEMORY`), must not have copied inside the
//! pause, and must restore to exactly that memory.

use std::path::Path;
use std::time::{Duration, Instant};

#[allow(dead_code)] // page_hashes is for the other tests
mod common;

use cairn_snapshot::memory::PageIndex;
use cairn_tests::capture::Capture;
use cairn_tests::{guests, on_tmpfs};
use cairn_vmm::builder::BuildSpec;
use cairn_vmm::checkpoint::verify;
use cairn_vmm::machine::RunState;
use cairn_vmm::runtime::Runtime;
use common::{console, kvm_and_userfaultfd, wait_dots};

const WINDOW_FIRST_PAGE: u64 = 0x20_0000 / 4096;
const WINDOW_PAGES: u64 = 256 * 256;

/// The saved window reads N, ..., N, N-1, ..., N-1 (the ticker's passes, in page order).
fn check_one_step(layer: &Path, pages: &PageIndex) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(layer).unwrap();
    let mut values = vec![];
    for page in WINDOW_FIRST_PAGE..WINDOW_FIRST_PAGE + WINDOW_PAGES {
        if pages.contains(page) {
            let mut b = [0u8; 4];
            file.read_exact_at(&mut b, page * 4096).unwrap();
            values.push((page, u32::from_le_bytes(b)));
        }
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

/// Take checkpoint `name` of the running machine and check it holds the memory at its pause
/// and was copied with the guest running.
fn checkpoint_in_background(rt: &mut Runtime, store: &Path, name: &str) {
    let meta = rt.create_checkpoint(Some(name)).unwrap();
    assert_eq!(rt.machine().unwrap().state(), RunState::Running);
    eprintln!(
        "{name}: {:.1} MiB, pause {:.2} ms, copy {:.2} ms, total {:.2} ms",
        meta.memory.dirty_mib, meta.pause_ms, meta.write_ms, meta.total_ms
    );
    // A restored machine's vCPUs once reported a stale pause: the pause measured nothing.
    assert!(meta.pause_ms > 0.0, "{name}: {meta:?}");
    // A copy made paused counts in both pause_ms and write_ms.
    assert!(
        meta.total_ms + 1.0 >= meta.pause_ms + meta.write_ms,
        "{name}: the copy ran inside the pause (no background checkpoint): {meta:?}"
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

/// Restore `name` and check every page against the hashes taken at its pause.
fn restore_exactly(rt: &mut Runtime, store: &Path, name: &str) -> Capture {
    let out = Capture::default();
    let began = Instant::now();
    rt.restore_checkpoint(name, None, false, None, || console(&out))
        .unwrap();
    eprintln!(
        "restore {name}: {:.1} ms",
        began.elapsed().as_secs_f64() * 1e3
    );
    let restored = verify::page_hashes(rt.machine().unwrap().memory());
    let saved = verify::load(&store.join(name)).unwrap();
    // The VM generation id's page is rewritten by every restore, by design.
    let vmgenid_page = cairn_vmm::arch::x86_64::layout::VMGENID_ADDR / 4096;
    let expected = PageIndex::from_ranges([(vmgenid_page, 1)]);
    let differ = verify::unexpected_changes(&saved, &restored, &expected);
    assert!(differ.is_empty(), "{name}: {} pages differ", differ.len());
    out
}

#[test]
fn checkpoints_after_a_restore_from_a_disk_file_system_do_not_stop_the_guest() {
    let test = "checkpoints_after_a_restore_from_a_disk_file_system_do_not_stop_the_guest";
    if !kvm_and_userfaultfd(test) {
        return;
    }
    // This test binary runs only this test, so the variables reach no other.
    std::env::set_var("CAIRN_VERIFY_MEMORY", "1");
    // The build's own directory: on the disk that holds the workspace.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if on_tmpfs(dir.path()) {
        // Here a file mapping could be write-protected: make the restore fill anyway.
        eprintln!("{test}: the target directory is on tmpfs; CAIRN_RESTORE_FILL=1");
        std::env::set_var("CAIRN_RESTORE_FILL", "1");
    }
    let store = dir.path().join("ckpts");
    let mut spec = BuildSpec::linux(guests::DIRTY256M);
    spec.mem_size_mib = 300;
    spec.checkpoint_dir = Some(store.clone());
    spec.track_dirty_pages = true;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    wait_dots(&mut rt, &out, out.dots());
    checkpoint_in_background(&mut rt, &store, "booted");

    // Restored from the disk, the guest rewrites its window at once; the first checkpoint
    // may find the fill under way (it has 260 MiB to read), the second one a plain anonymous
    // memory, and it is a Diff over the first.
    let out = restore_exactly(&mut rt, &store, "booted");
    rt.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt, &out, 0);
    checkpoint_in_background(&mut rt, &store, "r1");
    let seen = out.dots();
    wait_dots(&mut rt, &out, seen);
    checkpoint_in_background(&mut rt, &store, "r2");

    for name in ["r1", "r2"] {
        let out = restore_exactly(&mut rt, &store, name);
        rt.machine_mut().unwrap().resume().unwrap();
        wait_dots(&mut rt, &out, 0);
    }
    checkpoint_in_background(&mut rt, &store, "r3");
    // A checkpoint soon after a restore and resume, with the guest running. (The restore's
    // own CAIRN_VERIFY_MEMORY pass reads every page, so here the fill is over by then; the
    // fill under way is `finish_fills_what_the_filler_has_not` in filled_memory.rs.) The guest
    // gets a moment to write into its window first: the vCPU thread may not have entered the
    // guest yet when the call returns, and a checkpoint of a guest that wrote nothing saves no
    // window page for `check_one_step` to read.
    let out = Capture::default();
    rt.restore_checkpoint("r3", None, true, None, || console(&out))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    checkpoint_in_background(&mut rt, &store, "r4");
    let out = restore_exactly(&mut rt, &store, "r4");
    rt.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt, &out, 0);

    // Diffs taken while the fill runs (held back here: only faults put pages in) do not wait
    // for it, and leave it running; each restores to its pause.
    std::env::set_var("CAIRN_RESTORE_FILL_DELAY_MS", "600000");
    let out = restore_exactly(&mut rt, &store, "r4");
    rt.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt, &out, 0);
    for name in ["f1", "f2"] {
        assert!(rt.machine().unwrap().memory_fill_running());
        checkpoint_in_background(&mut rt, &store, name);
        assert!(
            rt.machine().unwrap().memory_fill_running(),
            "{name} waited for the fill to end"
        );
        let seen = out.dots();
        wait_dots(&mut rt, &out, seen);
    }
    std::env::remove_var("CAIRN_RESTORE_FILL_DELAY_MS");
    for name in ["f1", "f2"] {
        let out = restore_exactly(&mut rt, &store, name);
        rt.machine_mut().unwrap().resume().unwrap();
        wait_dots(&mut rt, &out, 0);
    }
    // The fill of f2's restore ends on its own; the next Diff registers a tracker of its own.
    let deadline = Instant::now() + Duration::from_secs(120);
    while rt.machine().unwrap().memory_fill_running() {
        assert!(Instant::now() < deadline, "the fill never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    checkpoint_in_background(&mut rt, &store, "f3");
    let out = restore_exactly(&mut rt, &store, "f3");
    rt.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt, &out, 0);
}
