//! cairn's named checkpoints: PUT /checkpoints (incremental, after a Full base) with the cost
//! the VMM reports for each, and PUT /checkpoints/restore.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_tests::guests;
use serde_json::json;

use crate::util::{
    dir_label, figure, ms, scratch_dir, touch_timeout, vm_config, Figure, Options, Outcome, Vmm,
};

/// Incremental checkpoints with 1, 16 and 256 MiB dirty, and restores of them.
pub fn checkpoint(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    for dir in &opts.dirs {
        for (kernel, window, mem) in [
            (guests::DIRTY1M, 1, 256),
            (guests::TICKER64, 16, 256),
            (guests::DIRTY256M, 256, 512),
        ] {
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

fn field(v: &serde_json::Value, key: &str) -> Result<f64, String> {
    // `+ 0.0` turns a reported -0.0 (an empty f64 sum) into 0.0.
    v.get(key)
        .and_then(|x| x.as_f64())
        .map(|x| x + 0.0)
        .ok_or_else(|| format!("checkpoint reply has no numeric {key:?}: {v}"))
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
    let vm = Vmm::boot(&vm_config(work.path(), kernel, mem, false, Some(&ckdir))?)?;
    vm.wait_marker("T\n", touch_timeout(mem))?;
    let (_, base) = vm.call("PUT", "/checkpoints", Some(&json!({"name": "base"})))?;
    let (mut put, mut dirty, mut disk, mut pause, mut write) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..opts.runs {
        // Create resumes a running VM: wait for 2+ whole passes so exactly the window is dirty.
        let n = vm.dots();
        vm.wait_dots(n + 3, Duration::from_secs(30))?;
        let name = format!("c{i}");
        let (reply, took) = vm.call("PUT", "/checkpoints", Some(&json!({"name": name})))?;
        let meta: serde_json::Value = match serde_json::from_str(&reply) {
            Ok(v) => v,
            Err(_) => {
                // No body: find it in the list.
                let (list, _) = vm.call("GET", "/checkpoints", None)?;
                let list: serde_json::Value = serde_json::from_str(&list)
                    .map_err(|e| format!("GET /checkpoints: {e}: {list}"))?;
                list.as_array()
                    .and_then(|a| a.iter().find(|c| c["name"] == name.as_str()).cloned())
                    .ok_or_else(|| format!("GET /checkpoints lists no {name}: {list}"))?
            }
        };
        put.push(ms(took));
        dirty.push(field(&meta, "dirty_memory_mib")?);
        disk.push(field(&meta, "disk_delta_mib")?);
        pause.push(field(&meta, "pause_ms")?);
        write.push(field(&meta, "write_ms")?);
    }
    let (list, _) = vm.call("GET", "/checkpoints", None)?;
    let listed = serde_json::from_str::<serde_json::Value>(&list)
        .ok()
        .and_then(|v| v.as_array().map(|a| a.len()))
        .unwrap_or(0);
    if listed != opts.runs + 1 {
        return Err(format!(
            "GET /checkpoints listed {listed} checkpoints, expected {}: {list}",
            opts.runs + 1
        ));
    }
    let (mut restore, mut running) = (vec![], vec![]);
    for i in 0..opts.runs {
        // Alternate between the newest and older layers of the chain.
        let name = format!("c{}", (i * 3) % opts.runs);
        let start = Instant::now();
        let (_, took) = vm.call("PUT", "/checkpoints/restore", Some(&json!({"name": name})))?;
        // Counted after the call: dots the old machine printed before it was replaced must
        // not count as the restored guest running.
        let n = vm.dots();
        restore.push(ms(took));
        let t = vm.wait_dots(n + 1, Duration::from_secs(30))?;
        running.push(ms(t.saturating_duration_since(start)));
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
    ])
}
