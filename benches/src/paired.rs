//! `cairn-bench vs`: cairn-vmm and Firecracker side by side, in alternating pairs on the same
//! tiny guest, files and directory: boot, Full and Diff snapshot create, restore (from a fresh
//! process, and from one started 100 ms ahead, as a standby a sandbox host keeps); in a `--dir`
//! off tmpfs, also each create followed by the bench's `fsync` of both files (both VMMs sync
//! their files before replying, so this adds little). Each run measures one sample of each VMM back to back (the
//! order alternates), so both see the same host load; a figure reports each VMM's median and
//! the median of the pair-by-pair ratios cairn / Firecracker (below 1: cairn is faster).
//!
//! Firecracker comes from `--vs PATH` or `FIRECRACKER`; docs/benchmarks.md says how to build
//! v1.16.1. It runs with `--level Off` (its log would share the serial's stdout) and, when
//! `FIRECRACKER_NO_SECCOMP=1`, `--no-seccomp` (a glibc build with the musl seccomp policy is
//! killed by its filters); cairn-vmm runs as shipped, filters on.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::guests;
use cairn_vmm_api::config::{
    CreateSnapshotParams, LoadSnapshotParams, MemBackendConfig, MemBackendType, SnapshotType,
    VmState,
};

use crate::util::{
    dir_label, figure, fsync_all, is_tmpfs, ms, remove_files, scratch_dir, touch_timeout,
    vm_config, vmm_bin, Figure, Options, Outcome, Vmm,
};

/// How long before its `/snapshot/load` a standby process is started (both VMMs alike).
const STANDBY_LEAD: Duration = Duration::from_millis(100);

/// One of the two VMMs: its binary and the flags it needs here.
struct Bin {
    path: PathBuf,
    extra: Vec<&'static str>,
}

impl Bin {
    fn cairn() -> Bin {
        Bin {
            path: vmm_bin(),
            extra: vec![],
        }
    }

    fn firecracker(path: &Path) -> Bin {
        let mut extra = vec!["--level", "Off"];
        if std::env::var("FIRECRACKER_NO_SECCOMP").as_deref() == Ok("1") {
            extra.push("--no-seccomp");
        }
        Bin {
            path: path.to_path_buf(),
            extra,
        }
    }

    fn args<'a>(&'a self, more: &[&'a OsStr]) -> Vec<&'a OsStr> {
        let mut v: Vec<&OsStr> = self.extra.iter().map(OsStr::new).collect();
        v.extend_from_slice(more);
        v
    }
}

/// Samples of one figure for both VMMs, in pairs.
#[derive(Default)]
struct Pairs {
    cairn: Vec<f64>,
    fc: Vec<f64>,
}

impl Pairs {
    fn push(
        &mut self,
        run: usize,
        mut sample: impl FnMut(&Bin) -> Result<f64, String>,
        c: &Bin,
        f: &Bin,
    ) -> Result<(), String> {
        // Alternate which goes first.
        if run % 2 == 0 {
            self.cairn.push(sample(c)?);
            self.fc.push(sample(f)?);
        } else {
            self.fc.push(sample(f)?);
            self.cairn.push(sample(c)?);
        }
        Ok(())
    }

    fn figures(self, what: &str) -> Vec<Figure> {
        let ratios = self
            .cairn
            .iter()
            .zip(&self.fc)
            .map(|(c, f)| c / f)
            .collect();
        vec![
            figure(format!("{what}: cairn-vmm"), self.cairn, "ms"),
            figure(format!("{what}: Firecracker"), self.fc, "ms"),
            figure(format!("{what}: ratio cairn / Firecracker"), ratios, "x"),
        ]
    }
}

/// Every paired figure at 256 MiB and 1 GiB (or `--mem`).
pub fn vs(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    let Some(fc) = opts.vs.clone() else {
        out.take(
            "vs",
            Err("no Firecracker: give --vs PATH or FIRECRACKER=PATH (docs/benchmarks.md)".into()),
        );
        return out;
    };
    let (c, f) = (Bin::cairn(), Bin::firecracker(&fc));
    for mem in opts.mem_or(&[256, 1024]) {
        out.take(&format!("boot {mem} MiB"), boot(opts, &c, &f, mem));
        for dir in &opts.dirs {
            out.take(
                &format!("snapshot and restore {mem} MiB in {}", dir.display()),
                snapshots(opts, &c, &f, dir, mem),
            );
        }
    }
    out
}

/// Process start (`--no-api --config-file`) to the guest's first serial byte.
fn boot(opts: &Options, c: &Bin, f: &Bin, mem: usize) -> Result<Vec<Figure>, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cfg = vm_config(tmp.path(), guests::TICKER64, mem, false, None)?;
    let sample = |bin: &Bin| -> Result<f64, String> {
        let start = Instant::now();
        let mut child = Command::new(&bin.path)
            .args(bin.args(&[
                "--no-api".as_ref(),
                "--config-file".as_ref(),
                cfg.as_os_str(),
            ]))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.path.display()))?;
        let mut first = [0u8; 1];
        let read = child
            .stdout
            .as_mut()
            .ok_or("no stdout")?
            .read_exact(&mut first);
        let took = ms(start.elapsed());
        let _ = child.kill();
        let _ = child.wait();
        read.map_err(|e| format!("{}: no serial byte: {e}", bin.path.display()))?;
        Ok(took)
    };
    let mut pairs = Pairs::default();
    for run in 0..opts.runs {
        pairs.push(run, sample, c, f)?;
    }
    Ok(pairs.figures(&format!("process start -> first serial byte, {mem} MiB")))
}

fn create(kind: SnapshotType, state: &Path, mem: &Path) -> CreateSnapshotParams {
    CreateSnapshotParams {
        snapshot_type: kind,
        snapshot_path: state.to_path_buf(),
        mem_file_path: mem.to_path_buf(),
        version: None,
    }
}

/// One VM per sample and VMM: Full snapshot (all pages touched, paused), a Diff with the
/// ticker's 16 MiB window dirty, then a fresh process restoring the Full one (spawn ->
/// `/snapshot/load` returns). Off tmpfs, each create is also reported with an `fsync` of its
/// state and memory files by the bench right after the reply, inside the figure, for both VMMs
/// alike (Firecracker fsyncs both files itself before it replies, so its fsync here finds
/// nothing left to write).
fn snapshots(
    opts: &Options,
    c: &Bin,
    f: &Bin,
    dir: &Path,
    mem: usize,
) -> Result<Vec<Figure>, String> {
    let work = scratch_dir(dir, "vs")?;
    let cfg = vm_config(work.path(), guests::TICKER64, mem, true, None)?;
    let on_disk = !is_tmpfs(dir);
    // On tmpfs, cairn also runs with its opt-in `guest_memory_dir` in the same tmpfs (a Full
    // snapshot then hands guest RAM over instead of copying it); never the default.
    let shared_cfg = if on_disk {
        None
    } else {
        Some(shared_ram_config(&cfg, work.path())?)
    };
    let (mut full, mut diff, mut restore) = (Pairs::default(), Pairs::default(), Pairs::default());
    let (mut standby, mut full_sync, mut diff_sync) =
        (Pairs::default(), Pairs::default(), Pairs::default());
    let mut shared = [Pairs::default(), Pairs::default(), Pairs::default()];
    let one = |bin: &Bin, cfg: &Path| -> Result<[f64; 6], String> {
        let (state, memf) = (work.path().join("full.state"), work.path().join("full.mem"));
        let (dstate, dmem) = (work.path().join("diff.state"), work.path().join("diff.mem"));
        remove_files(&[&state, &memf, &dstate, &dmem]);
        let vm = Vmm::spawn_bin(
            &bin.path,
            &bin.args(&["--config-file".as_ref(), cfg.as_os_str()]),
        )?;
        vm.wait_socket()?;
        vm.wait_marker("T\n", touch_timeout(mem))?;
        vm.set_state(VmState::Paused)?;
        let (_, full_took) =
            vm.call(|a| a.snapshot_create(&create(SnapshotType::Full, &state, &memf)))?;
        let full_synced = full_took + fsync_all(&[&state, &memf])?;
        vm.set_state(VmState::Resumed)?;
        let n = vm.dots();
        vm.wait_dots(n + 3, Duration::from_secs(30))?;
        vm.set_state(VmState::Paused)?;
        let (_, diff_took) =
            vm.call(|a| a.snapshot_create(&create(SnapshotType::Diff, &dstate, &dmem)))?;
        let diff_synced = diff_took + fsync_all(&[&dstate, &dmem])?;
        drop(vm);
        let load = LoadSnapshotParams {
            snapshot_path: state.clone(),
            mem_backend: Some(MemBackendConfig {
                backend_type: MemBackendType::File,
                backend_path: memf.clone(),
            }),
            resume_vm: Some(false),
            ..LoadSnapshotParams::default()
        };
        let vm = Vmm::spawn_bin(&bin.path, &bin.args(&[]))?;
        vm.wait_socket()?;
        vm.call(|a| a.snapshot_load(&load))?;
        let loaded = ms(vm.started.elapsed());
        drop(vm);
        // A process started ahead (a standby a sandbox host keeps ready): request -> loaded.
        let vm = Vmm::spawn_bin(&bin.path, &bin.args(&[]))?;
        vm.wait_socket()?;
        std::thread::sleep(STANDBY_LEAD);
        let (_, standby) = vm.call(|a| a.snapshot_load(&load))?;
        drop(vm);
        remove_files(&[&state, &memf, &dstate, &dmem]);
        Ok([
            ms(full_took),
            ms(diff_took),
            loaded,
            ms(standby),
            ms(full_synced),
            ms(diff_synced),
        ])
    };
    for run in 0..opts.runs {
        let order: [&Bin; 2] = if run % 2 == 0 { [c, f] } else { [f, c] };
        if let Some(scfg) = &shared_cfg {
            // Between the pair, so it sees the load both of them see.
            let [fu, di, re, ..] = one(c, scfg).map_err(|e| format!("cairn, shared RAM: {e}"))?;
            for (p, v) in shared.iter_mut().zip([fu, di, re]) {
                p.cairn.push(v);
            }
        }
        for bin in order {
            let [fu, di, re, sb, fs, ds] =
                one(bin, &cfg).map_err(|e| format!("{}: {e}", bin.path.display()))?;
            let is_cairn = std::ptr::eq(bin, c);
            for (p, v) in [
                (&mut full, fu),
                (&mut diff, di),
                (&mut restore, re),
                (&mut standby, sb),
                (&mut full_sync, fs),
                (&mut diff_sync, ds),
            ] {
                if is_cairn {
                    p.cairn.push(v)
                } else {
                    p.fc.push(v)
                }
            }
            if !is_cairn && shared_cfg.is_some() {
                for (p, v) in shared.iter_mut().zip([fu, di, re]) {
                    p.fc.push(v);
                }
            }
        }
    }
    let d = dir_label(dir);
    let mut figs = full.figures(&format!(
        "snapshot create Full, {mem} MiB all touched [{d}]"
    ));
    figs.extend(diff.figures(&format!(
        "snapshot create Diff, 16 MiB dirty of {mem} MiB [{d}]"
    )));
    if on_disk {
        figs.extend(full_sync.figures(&format!(
            "snapshot create Full + fsync of both files, {mem} MiB all touched [{d}]"
        )));
        figs.extend(diff_sync.figures(&format!(
            "snapshot create Diff + fsync of both files, 16 MiB dirty of {mem} MiB [{d}]"
        )));
    }
    figs.extend(restore.figures(&format!(
        "restore: spawn -> /snapshot/load returns, {mem} MiB [{d}]"
    )));
    figs.extend(standby.figures(&format!(
        "restore: process started {} ms ahead, request -> /snapshot/load returns, {mem} MiB [{d}]",
        STANDBY_LEAD.as_millis()
    )));
    if shared_cfg.is_some() {
        let [fu, di, re] = shared;
        let opt_in = "cairn with opt-in guest_memory_dir (RAM in this tmpfs, NOT the default)";
        figs.extend(fu.figures(&format!(
            "snapshot create Full, {mem} MiB all touched [{d}], {opt_in}"
        )));
        figs.extend(di.figures(&format!(
            "snapshot create Diff, 16 MiB dirty of {mem} MiB [{d}], {opt_in}"
        )));
        figs.extend(re.figures(&format!(
            "restore of the handed-over file: spawn -> /snapshot/load returns, {mem} MiB [{d}], \
             {opt_in}"
        )));
    }
    Ok(figs)
}

/// `cfg` with cairn's `"cairn": {"guest_memory_dir"}` set to `dir`, written beside it.
fn shared_ram_config(cfg: &Path, dir: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read(cfg).map_err(|e| format!("{}: {e}", cfg.display()))?;
    let mut v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    v["cairn"]["guest_memory_dir"] = serde_json::Value::from(dir.to_string_lossy().as_ref());
    let p = dir.join("vm-shared-ram.json");
    let text = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}
