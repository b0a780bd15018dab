//! Firecracker-API figures: pause/resume, Full and Diff snapshot create, and restore (process
//! start -> `/snapshot/load` returns, and -> the guest running again), all measured from
//! outside through the API socket, as the anchors were.

use std::path::Path;
use std::time::Duration;

use cairn_tests::guests;
use cairn_vmm_api::config::{
    CreateSnapshotParams, LoadSnapshotParams, MemBackendConfig, MemBackendType, SnapshotType,
    VmState,
};

use crate::util::{
    allocated_bytes, dir_label, drop_caches, figure, fsync_all, is_tmpfs, ms, remove_files,
    scratch_dir, touch_timeout, vm_config, Figure, Options, Outcome, Vmm,
};

const MIB: f64 = 1024.0 * 1024.0;

/// PATCH /vm Paused and Resumed round trips at 256 MiB (or `--mem`).
pub fn pause(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    for mem in opts.mem_or(&[256]) {
        out.take(&format!("pause {mem} MiB"), pause_one(opts, mem));
    }
    out
}

fn pause_one(opts: &Options, mem: usize) -> Result<Vec<Figure>, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let vm = Vmm::boot(&vm_config(tmp.path(), guests::TICKER64, mem, false, None)?)?;
    vm.wait_marker("T\n", touch_timeout(mem))?;
    let (mut paused, mut resumed, mut running) = (vec![], vec![], vec![]);
    for _ in 0..opts.runs {
        let n = vm.dots();
        vm.wait_dots(n + 1, Duration::from_secs(10))?;
        paused.push(ms(vm.set_state(VmState::Paused)?));
        std::thread::sleep(Duration::from_millis(20));
        let n = vm.dots();
        let before = std::time::Instant::now();
        resumed.push(ms(vm.set_state(VmState::Resumed)?));
        let t = vm.wait_dots(n + 1, Duration::from_secs(10))?;
        running.push(ms(t - before));
    }
    Ok(vec![
        figure(
            format!("pause: PATCH /vm Paused round trip, {mem} MiB"),
            paused,
            "ms",
        ),
        figure(
            format!("resume: PATCH /vm Resumed round trip, {mem} MiB"),
            resumed,
            "ms",
        ),
        figure(
            format!("resume: PATCH Resumed sent -> next '.', {mem} MiB"),
            running,
            "ms",
        ),
    ])
}

fn create_body(kind: SnapshotType, state: &Path, mem: &Path) -> CreateSnapshotParams {
    CreateSnapshotParams {
        snapshot_type: kind,
        snapshot_path: state.to_path_buf(),
        mem_file_path: mem.to_path_buf(),
        version: None,
    }
}

/// Full snapshots (all pages touched) at 256 MiB and 1 GiB; Diff snapshots with 1, 16 and
/// 256 MiB dirty.
pub fn snapshot(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    for dir in &opts.dirs {
        for mem in opts.mem_or(&[256, 1024]) {
            out.take(
                &format!("full snapshot {mem} MiB in {}", dir.display()),
                full_one(opts, dir, mem),
            );
        }
        for (kernel, window, mem) in [
            (guests::DIRTY1M, 1, 256),
            (guests::TICKER64, 16, 256),
            (guests::TICKER64, 16, 1024),
            (guests::DIRTY256M, 256, 512),
        ] {
            out.take(
                &format!(
                    "diff snapshot {window} MiB dirty of {mem} MiB in {}",
                    dir.display()
                ),
                diff_one(opts, dir, kernel, window, mem),
            );
        }
    }
    out
}

fn full_one(opts: &Options, dir: &Path, mem: usize) -> Result<Vec<Figure>, String> {
    let work = scratch_dir(dir, "full")?;
    let vm = Vmm::boot(&vm_config(work.path(), guests::TICKER64, mem, false, None)?)?;
    vm.wait_marker("T\n", touch_timeout(mem))?;
    vm.set_state(VmState::Paused)?;
    let (state, memf) = (work.path().join("full.state"), work.path().join("full.mem"));
    let (mut create, mut synced, mut alloc) = (vec![], vec![], vec![]);
    for _ in 0..opts.runs {
        remove_files(&[&state, &memf]);
        let (_, took) =
            vm.call(|c| c.snapshot_create(&create_body(SnapshotType::Full, &state, &memf)))?;
        // The VMM does not fsync snapshots; do it here so the next run starts clean, and report
        // create + fsync for comparison with Firecracker's ext4-with-fsync figure.
        let sync = fsync_all(&[&memf, &state])?;
        create.push(ms(took));
        synced.push(ms(took + sync));
        alloc.push(allocated_bytes(&memf)? as f64 / MIB);
    }
    let d = dir_label(dir);
    let mut figs = vec![figure(
        format!("snapshot create Full, {mem} MiB all touched [{d}]"),
        create,
        "ms",
    )];
    if !is_tmpfs(dir) {
        figs.push(figure(
            format!("snapshot create Full + fsync, {mem} MiB [{d}]"),
            synced,
            "ms",
        ));
    }
    figs.push(figure(
        format!("  Full memory file allocated, {mem} MiB [{d}]"),
        alloc,
        "MiB",
    ));
    remove_files(&[&state, &memf]);
    Ok(figs)
}

fn diff_one(
    opts: &Options,
    dir: &Path,
    kernel: &str,
    window: usize,
    mem: usize,
) -> Result<Vec<Figure>, String> {
    let work = scratch_dir(dir, "diff")?;
    let vm = Vmm::boot(&vm_config(work.path(), kernel, mem, true, None)?)?;
    vm.wait_marker("T\n", touch_timeout(mem))?;
    vm.set_state(VmState::Paused)?;
    let (base_s, base_m) = (work.path().join("base.state"), work.path().join("base.mem"));
    vm.call(|c| c.snapshot_create(&create_body(SnapshotType::Full, &base_s, &base_m)))?;
    fsync_all(&[&base_m, &base_s])?;
    let (state, memf) = (work.path().join("diff.state"), work.path().join("diff.mem"));
    let (mut create, mut synced, mut alloc) = (vec![], vec![], vec![]);
    for _ in 0..opts.runs {
        vm.set_state(VmState::Resumed)?;
        // The pass under way when resumed is partial: 3 more dots = at least 2 whole passes.
        let n = vm.dots();
        vm.wait_dots(n + 3, Duration::from_secs(30))?;
        vm.set_state(VmState::Paused)?;
        remove_files(&[&state, &memf]);
        let (_, took) =
            vm.call(|c| c.snapshot_create(&create_body(SnapshotType::Diff, &state, &memf)))?;
        let sync = fsync_all(&[&memf, &state])?;
        create.push(ms(took));
        synced.push(ms(took + sync));
        alloc.push(allocated_bytes(&memf)? as f64 / MIB);
    }
    let d = dir_label(dir);
    let mut figs = vec![figure(
        format!("snapshot create Diff, {window} MiB dirty of {mem} MiB [{d}]"),
        create,
        "ms",
    )];
    if !is_tmpfs(dir) {
        figs.push(figure(
            format!("snapshot create Diff + fsync, {window} MiB dirty of {mem} MiB [{d}]"),
            synced,
            "ms",
        ));
    }
    figs.push(figure(
        format!("  Diff memory file allocated, {window} MiB dirty [{d}]"),
        alloc,
        "MiB",
    ));
    Ok(figs)
}

/// Guests larger than this have RAM above the MMIO gap (3.25 GiB..4 GiB). The ticker guest
/// writes every page up to the end of RAM through the gap and past the 4 GiB identity map, so it
/// never prints "T": such guests are snapshotted mid-touch, with this much RAM touched, and only
/// the load figures are measured.
const GAP_START_MIB: usize = 3328;
const PARTIAL_TOUCH_MIB: f64 = 3000.0;

/// Restore at 256 MiB, 1, 3 and 4 GiB: process start -> API socket, -> `/snapshot/load`
/// returns, -> next '.' (guest running again); warm and (as root, on a disk) cold page cache.
pub fn restore(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    for dir in &opts.dirs {
        for mem in opts.mem_or(&[256, 1024, 3072, 4096]) {
            out.take(
                &format!("restore {mem} MiB from {}", dir.display()),
                restore_one(opts, dir, mem),
            );
        }
    }
    out
}

fn restore_one(opts: &Options, dir: &Path, mem: usize) -> Result<Vec<Figure>, String> {
    let partial = mem > GAP_START_MIB;
    let work = scratch_dir(dir, "restore")?;
    let (state, memf) = (work.path().join("snap.state"), work.path().join("snap.mem"));
    {
        let vm = Vmm::boot(&vm_config(work.path(), guests::TICKER64, mem, false, None)?)?;
        if partial {
            vm.wait_marker("S\n", Duration::from_secs(10))?;
            vm.wait_rss(PARTIAL_TOUCH_MIB, touch_timeout(mem))?;
        } else {
            vm.wait_marker("T\n", touch_timeout(mem))?;
            let n = vm.dots();
            vm.wait_dots(n + 1, Duration::from_secs(10))?;
        }
        vm.set_state(VmState::Paused)?;
        vm.call(|c| c.snapshot_create(&create_body(SnapshotType::Full, &state, &memf)))?;
        fsync_all(&[&memf, &state])?;
    }
    let load = LoadSnapshotParams {
        snapshot_path: state.clone(),
        mem_backend: Some(MemBackendConfig {
            backend_type: MemBackendType::File,
            backend_path: memf.clone(),
        }),
        track_dirty_pages: Some(false),
        resume_vm: Some(true),
        ..LoadSnapshotParams::default()
    };
    let d = dir_label(dir);
    let mut figs = vec![];
    let mut variants = vec![false];
    // tmpfs pages are not page cache that drop_caches can drop: cold only on a disk.
    if !opts.no_cold && !is_tmpfs(dir) {
        variants.push(true);
    }
    for cold in variants {
        let (mut sock, mut loaded, mut running) = (vec![], vec![], vec![]);
        for _ in 0..opts.runs {
            if cold {
                drop_caches()?;
            }
            let vm = Vmm::spawn(&[])?;
            vm.wait_socket()?;
            sock.push(ms(vm.started.elapsed()));
            vm.call(|c| c.snapshot_load(&load))?;
            loaded.push(ms(vm.started.elapsed()));
            if !partial {
                let t = vm.wait_dots(1, Duration::from_secs(30))?;
                running.push(ms(t - vm.started));
            }
        }
        let c = if cold { ", cold page cache" } else { "" };
        let c = if partial {
            format!("{c}, {PARTIAL_TOUCH_MIB} MiB touched")
        } else {
            c.to_string()
        };
        if !cold {
            figs.push(figure(
                format!("restore: process start -> API socket, {mem} MiB [{d}]"),
                sock,
                "ms",
            ));
        }
        figs.push(figure(
            format!("restore: start -> /snapshot/load returns, {mem} MiB{c} [{d}]"),
            loaded,
            "ms",
        ));
        if !partial {
            figs.push(figure(
                format!("restore: start -> guest running ('.'), {mem} MiB{c} [{d}]"),
                running,
                "ms",
            ));
        }
    }
    Ok(figs)
}
