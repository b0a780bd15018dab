//! A Diff checkpoint of a few dirty pages is copied with the guest paused (its copy is cheaper
//! than tracking writes; on a disk file system into memory, written to the file after the
//! resume, checkpoint/staged.rs), a large one in the background (checkpoint/named.rs,
//! `PAUSED_DIFF_PAGES`). The `dirty1m` ticker rewrites a 1 MiB window. Which way each went is
//! read from the VMM's debug log. The store is in the build's directory (a disk here) and on
//! tmpfs.

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
    // This test binary runs only this test: the process's logger is its own.
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("vmm.log");
    let logger = cairn_vmm::config::LoggerConfig {
        log_path: Some(log.clone()),
        level: Some(cairn_vmm::config::LogLevel::Debug),
        ..Default::default()
    };
    cairn_vmm::logger::init("small-diff", &logger).unwrap();
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    for dir in std::iter::once(&disk).chain(shm.as_ref()) {
        checkpoints_in(dir.path(), &log);
    }
}

/// Boot the `dirty1m` guest with its store in `dir`, take a Full and three small Diffs, and
/// restore two of them; `log` is the VMM's debug log.
fn checkpoints_in(dir: &std::path::Path, log: &std::path::Path) {
    let staged = !cairn_tests::on_tmpfs(dir);
    eprintln!("store in {} (staged in memory: {staged})", dir.display());
    let store = dir.join("ckpts");
    let logged = |name: &str, what: &str| {
        let text = std::fs::read_to_string(log).unwrap();
        text.lines()
            .any(|l| l.contains(&format!("checkpoint {name}: ")) && l.contains(what))
    };
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
    // Names differ between the two stores: the log is the process's.
    let kind = if staged { "disk" } else { "shm" };
    let name_of = |n: &str| format!("{kind}-{n}");
    let full_name = name_of("full");
    let full = rt.create_checkpoint(Some(&full_name)).unwrap();
    assert!(
        full.total_ms + 1.0 >= full.pause_ms + full.write_ms,
        "the Full was copied in the pause: {full:?}"
    );
    assert!(
        logged(&full_name, "then copied"),
        "no background copy logged"
    );
    // Each Diff holds the 1 MiB window and a few pages more: copied in the pause, through
    // memory, never by the background copy.
    for name in ["d1", "d2", "d3"].map(name_of) {
        let name = name.as_str();
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
        assert!(logged(name, "dirty pages: copied in the pause"), "{name}");
        assert!(
            !logged(name, "then copied"),
            "{name}: copied in the background"
        );
        assert!(
            !logged(name, "more than the buffer"),
            "{name}: not through memory"
        );
        assert_eq!(logged(name, "staged in memory"), staged, "{name}");
        let layer = store.join(name).join("mem.layer");
        cairn_snapshot::memory::verify_layer(&layer).unwrap();
    }
    // And each restores.
    for name in ["full", "d3"].map(name_of) {
        let out = Capture::default();
        rt.restore_checkpoint(&name, None, false, None, || console(&out))
            .unwrap();
        rt.machine_mut().unwrap().resume().unwrap();
        wait_dots(&mut rt, &out, 0);
    }
}
