//! A Diff checkpoint of a few dirty pages is copied with the guest paused (its copy is cheaper
//! than tracking writes), a large one in the background (checkpoint/named.rs,
//! `PAUSED_DIFF_PAGES`). The `dirty1m` ticker rewrites a 1 MiB window.

#[allow(dead_code)] // page_hashes is for the other tests
mod common;

use cairn_tests::capture::Capture;
use cairn_tests::guests;
use cairn_vmm::builder::BuildSpec;
use cairn_vmm::machine::RunState;
use cairn_vmm::runtime::Runtime;
use common::{console, kvm_and_userfaultfd, wait_dots};

#[test]
fn a_small_diff_is_copied_paused_and_a_large_checkpoint_in_the_background() {
    if !kvm_and_userfaultfd(
        "a_small_diff_is_copied_paused_and_a_large_checkpoint_in_the_background",
    ) {
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let store = dir.path().join("ckpts");
    let mut spec = BuildSpec::linux(guests::DIRTY1M);
    spec.mem_size_mib = 64;
    spec.checkpoint_dir = Some(store.clone());
    spec.track_dirty_pages = true;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    wait_dots(&mut rt, &out, 1);

    // The first checkpoint is a Full of 64 MiB: copied with the guest running. A copy made in
    // the pause counts in both pause_ms and write_ms.
    let full = rt.create_checkpoint(Some("full")).unwrap();
    assert!(
        full.total_ms + 1.0 >= full.pause_ms + full.write_ms,
        "the Full was copied in the pause: {full:?}"
    );
    // Each Diff holds the 1 MiB window and a few pages more: copied in the pause, so the
    // pause covers the copy (in the background the pause ends before the copy starts).
    for name in ["d1", "d2", "d3"] {
        let seen = out.dots();
        wait_dots(&mut rt, &out, seen + 1);
        let meta = rt.create_checkpoint(Some(name)).unwrap();
        assert_eq!(rt.machine().unwrap().state(), RunState::Running);
        eprintln!(
            "{name}: {:.2} MiB, pause {:.3} ms, copy {:.3} ms, total {:.3} ms",
            meta.memory.dirty_mib, meta.pause_ms, meta.write_ms, meta.total_ms
        );
        assert!(
            meta.memory.dirty_mib >= 1.0 && meta.memory.dirty_mib <= 2.0,
            "{meta:?}"
        );
        assert!(
            meta.pause_ms >= meta.write_ms,
            "{name}: copied after the pause: {meta:?}"
        );
        let layer = store.join(name).join("mem.layer");
        cairn_snapshot::memory::verify_layer(&layer).unwrap();
    }
    // And each restores.
    for name in ["full", "d3"] {
        let out = Capture::default();
        rt.restore_checkpoint(name, None, false, None, || console(&out))
            .unwrap();
        rt.machine_mut().unwrap().resume().unwrap();
        wait_dots(&mut rt, &out, 0);
    }
}
