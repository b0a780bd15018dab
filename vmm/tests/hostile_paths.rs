//! No path in a request can harm the host: a snapshot never replaces a non-regular file, a FIFO
//! given as a kernel or memory file is refused at once instead of blocking, and a failed snapshot
//! leaves no memory file behind.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

#[allow(dead_code)]
mod common;

use cairn_tests::capture::Capture;
use cairn_tests::{guests, kvm_available};
use cairn_vmm::builder::BuildSpec;
use cairn_vmm::checkpoint::restore::RestoreOptions;
use cairn_vmm::checkpoint::snapshot::SnapshotKind;
use cairn_vmm::runtime::Runtime;
use common::{console, wait_dots};

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

/// Run `f` on a thread; it must finish within 20 s (a FIFO opened for reading blocks forever).
fn within_20s<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} blocked"))
}

fn booted() -> (Runtime, Capture) {
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 16;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    wait_dots(&mut rt, &out, 0);
    rt.machine_mut().unwrap().pause().unwrap();
    (rt, out)
}

#[test]
fn snapshots_never_replace_special_files_nor_leave_halves() {
    if !kvm_available("snapshots_never_replace_special_files_nor_leave_halves") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut rt, _out) = booted();
    let state = dir.path().join("state");
    let mem = dir.path().join("mem");
    // A FIFO (standing in for /dev/null) as either target: refused, left as it was.
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    assert!(rt.snapshot(SnapshotKind::Full, &fifo, &mem).is_err());
    assert!(rt.snapshot(SnapshotKind::Full, &state, &fifo).is_err());
    assert!(is_fifo(&fifo), "the FIFO was replaced");
    assert!(!mem.exists() && !state.exists());
    // A directory as target, or a parent that is a file.
    assert!(rt.snapshot(SnapshotKind::Full, dir.path(), &mem).is_err());
    assert!(rt
        .snapshot(SnapshotKind::Full, &state.join("x"), &mem)
        .is_err());
    // The state file cannot be written (its temporary name is too long): no memory file remains.
    let long: PathBuf = dir.path().join("s".repeat(250));
    assert!(rt.snapshot(SnapshotKind::Full, &long, &mem).is_err());
    assert!(!mem.exists(), "a failed snapshot left its memory file");
    // A good one still works.
    rt.snapshot(SnapshotKind::Full, &state, &mem).unwrap();
    assert!(state.is_file() && mem.is_file());
}

#[test]
fn a_fifo_never_blocks_the_vmm() {
    if !kvm_available("a_fifo_never_blocks_the_vmm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    // As a kernel.
    let kernel = fifo.clone();
    let boot = within_20s("booting a FIFO kernel", move || {
        let mut rt = Runtime::new().unwrap();
        let out = Capture::default();
        rt.boot(&BuildSpec::linux(kernel), console(&out))
            .map_err(|e| e.to_string())
    });
    let e = boot.unwrap_err();
    assert!(e.contains("not a regular file"), "{e}");

    // As a snapshot's memory file, and as its state file.
    let (mut rt, _out) = booted();
    let (state, mem) = (dir.path().join("state"), dir.path().join("mem"));
    rt.snapshot(SnapshotKind::Full, &state, &mem).unwrap();
    drop(rt);
    for (s, m) in [(state.clone(), fifo.clone()), (fifo.clone(), mem.clone())] {
        let r = within_20s("restoring from a FIFO", move || {
            let mut rt = Runtime::new().unwrap();
            let out = Capture::default();
            let opts = RestoreOptions {
                fill_anonymous: false,
                memory_layers: vec![m],
                track_dirty_pages: false,
                resume: false,
                network_overrides: vec![],
                vsock_uds_path: None,
            };
            rt.restore(&s, &opts, console(&out))
                .map_err(|e| e.to_string())
        });
        let e = r.unwrap_err();
        assert!(e.contains("fifo"), "{e}");
    }
}
