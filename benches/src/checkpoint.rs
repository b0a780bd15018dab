//! cairn's named checkpoints: PUT /checkpoints (incremental, after a Full base) with the cost
//! the VMM reports for each (`pause_ms`: the guest stopped; `total_ms`: request to files
//! written), PUT /checkpoints/restore (in the same VMM, and in a fresh one as a sandbox wake),
//! and a checkpoint of each restored VM.
//! `CAIRN_CHECKPOINT_BACKGROUND=0` in the bench's environment (the VMMs inherit it) measures
//! checkpoints that copy with the guest paused; `CAIRN_RESTORE_FILL=0` restores from a disk
//! file system by mapping the layer files, whose checkpoints copy paused (as before
//! checkpoint/filled_memory.rs).

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_tests::guests;
use cairn_vmm_api::config::{CheckpointCreate, CheckpointRestore};

use crate::util::{
    add_drive, dir_label, figure, ms, scratch_dir, touch_timeout, vm_config, Figure, Options,
    Outcome, Vmm,
};

/// Incremental checkpoints with 1, 16, 256 and 1024 MiB dirty, and restores of them.
/// `--mem` picks windows by size (1, 16, 256, 1024).
pub fn checkpoint(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    let all = [
        (guests::DIRTY1M, 1, 256),
        (guests::TICKER64, 16, 256),
        (guests::DIRTY256M, 256, 512),
        (guests::DIRTY1G, 1024, 1088),
    ];
    let windows = opts.mem_or(&[1, 16, 256, 1024]);
    for dir in &opts.dirs {
        for (kernel, window, mem) in all {
            if !windows.contains(&window) {
                continue;
            }
            out.take(
                &format!(
                    "checkpoint {window} MiB dirty of {mem} MiB in {}",
                    dir.display()
                ),
                checkpoint_one(opts, dir, kernel, window, mem),
            );
        }
    }
    out
}

fn named(name: &str) -> CheckpointCreate {
    CheckpointCreate {
        name: Some(name.to_string()),
    }
}

/// A reported figure; `+ 0.0` turns a reported -0.0 (an empty f64 sum) into 0.0.
fn figure_of(x: f64) -> f64 {
    x + 0.0
}

fn checkpoint_one(
    opts: &Options,
    dir: &Path,
    kernel: &str,
    window: usize,
    mem: usize,
) -> Result<Vec<Figure>, String> {
    let work = scratch_dir(dir, "ckpt")?;
    let ckdir = work.path().join("checkpoints");
    let config = vm_config(work.path(), kernel, mem, false, Some(&ckdir))?;
    if let Some(mib) = opts.drive_mib {
        add_drive(&config, work.path(), mib)?;
    }
    let vm = Vmm::boot(&config)?;
    vm.wait_marker("T\n", touch_timeout(mem))?;
    let (base_meta, base) = vm.call(|c| c.create_checkpoint(&named("base")))?;
    let (mut put, mut dirty, mut disk, mut pause, mut write, mut total) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..opts.runs {
        // Create resumes a running VM: wait for 2+ whole passes so exactly the window is dirty.
        let n = vm.dots();
        vm.wait_dots(n + 3, Duration::from_secs(30))?;
        let name = format!("c{i}");
        let (meta, took) = vm.call(|c| c.create_checkpoint(&named(&name)))?;
        put.push(ms(took));
        dirty.push(figure_of(meta.dirty_memory_mib));
        disk.push(figure_of(meta.disk_delta_mib));
        pause.push(figure_of(meta.pause_ms));
        write.push(figure_of(meta.write_ms));
        total.push(figure_of(meta.total_ms));
    }
    let (list, _) = vm.call(|c| c.list_checkpoints())?;
    if list.len() != opts.runs + 1 {
        let names: Vec<&str> = list.iter().map(|c| c.name.as_str()).collect();
        return Err(format!(
            "GET /checkpoints listed {names:?}, expected {} checkpoints",
            opts.runs + 1
        ));
    }
    let (mut restore, mut running) = (vec![], vec![]);
    let (mut after_pause, mut after_write, mut after_total) = (vec![], vec![], vec![]);
    for i in 0..opts.runs {
        // Alternate between the newest and older layers of the chain.
        let name = format!("c{}", (i * 3) % opts.runs);
        let start = Instant::now();
        let restore_to = CheckpointRestore {
            name,
            vsock_uds_path: None,
            paused: None,
        };
        let (_, took) = vm.call(|c| c.restore_checkpoint(&restore_to))?;
        // Counted after the call: dots the old machine printed before it was replaced must
        // not count as the restored guest running.
        let n = vm.dots();
        restore.push(ms(took));
        let t = vm.wait_dots(n + 1, Duration::from_secs(30))?;
        running.push(ms(t.saturating_duration_since(start)));
        // A checkpoint of the restored VM (its memory comes from the layer files: copied in
        // the background where the restore filled anonymous memory, checkpoint/filled_memory.rs).
        let (meta, _) = vm.call(|c| c.create_checkpoint(&named(&format!("r{i}"))))?;
        after_pause.push(figure_of(meta.pause_ms));
        after_write.push(figure_of(meta.write_ms));
        after_total.push(figure_of(meta.total_ms));
    }
    drop(vm);
    // A fresh VMM per restore, as a sandbox wake: spawn -> restore answered -> guest running,
    // then a checkpoint of it.
    let (mut w_loaded, mut w_running, mut w_pause, mut w_total) = (vec![], vec![], vec![], vec![]);
    for i in 0..opts.runs {
        let vm = Vmm::spawn(&["--checkpoint-dir".as_ref(), ckdir.as_os_str()])?;
        vm.wait_socket()?;
        let restore_to = CheckpointRestore {
            name: format!("c{i}"),
            vsock_uds_path: None,
            paused: None,
        };
        vm.call(|c| c.restore_checkpoint(&restore_to))?;
        w_loaded.push(ms(vm.started.elapsed()));
        let t = vm.wait_dots(1, Duration::from_secs(30))?;
        w_running.push(ms(t.saturating_duration_since(vm.started)));
        let (meta, _) = vm.call(|c| c.create_checkpoint(&named(&format!("w{i}"))))?;
        w_pause.push(figure_of(meta.pause_ms));
        w_total.push(figure_of(meta.total_ms));
    }
    let d = dir_label(dir);
    let w = format!("{window} MiB dirty of {mem} MiB");
    Ok(vec![
        figure(
            format!("checkpoint: PUT /checkpoints, Full base, {mem} MiB [{d}]"),
            vec![ms(base)],
            "ms",
        ),
        figure(
            format!("  reported pause_ms, Full base, {mem} MiB [{d}]"),
            vec![base_meta.pause_ms],
            "ms",
        ),
        figure(
            format!("  reported total_ms, Full base, {mem} MiB [{d}]"),
            vec![base_meta.total_ms],
            "ms",
        ),
        figure(
            format!("checkpoint: PUT /checkpoints, {w} [{d}]"),
            put,
            "ms",
        ),
        figure(
            format!("  reported dirty_memory_mib, {w} [{d}]"),
            dirty,
            "MiB",
        ),
        figure(format!("  reported disk_delta_mib, {w} [{d}]"), disk, "MiB"),
        figure(format!("  reported pause_ms, {w} [{d}]"), pause, "ms"),
        figure(format!("  reported write_ms, {w} [{d}]"), write, "ms"),
        figure(format!("  reported total_ms, {w} [{d}]"), total, "ms"),
        figure(
            format!("checkpoint: PUT /checkpoints/restore, {w} [{d}]"),
            restore,
            "ms",
        ),
        figure(
            format!("checkpoint: restore sent -> next '.', {w} [{d}]"),
            running,
            "ms",
        ),
        figure(
            format!("  after a restore: reported pause_ms, {w} [{d}]"),
            after_pause,
            "ms",
        ),
        figure(
            format!("  after a restore: reported write_ms, {w} [{d}]"),
            after_write,
            "ms",
        ),
        figure(
            format!("  after a restore: reported total_ms, {w} [{d}]"),
            after_total,
            "ms",
        ),
        figure(
            format!("fresh VMM: spawn -> PUT /checkpoints/restore answered, {w} [{d}]"),
            w_loaded,
            "ms",
        ),
        figure(
            format!("fresh VMM: spawn -> first '.', {w} [{d}]"),
            w_running,
            "ms",
        ),
        figure(
            format!("  fresh VMM, then a checkpoint: reported pause_ms, {w} [{d}]"),
            w_pause,
            "ms",
        ),
        figure(
            format!("  fresh VMM, then a checkpoint: reported total_ms, {w} [{d}]"),
            w_total,
            "ms",
        ),
    ])
}
