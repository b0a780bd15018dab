//! Options, statistics, reporting and process helpers shared by the benchmarks.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cairn_vmm_api::config::{BootSourceConfig, CairnConfig, MachineConfig, VmConfig, VmState};
use cairn_vmm_api::{Client, ClientError};

/// Command-line options common to every benchmark.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs per figure.
    pub runs: usize,
    /// Guest memory sizes in MiB.
    pub mem: Vec<usize>,
    /// Whether `--mem` was given (each benchmark has its own default otherwise).
    pub mem_given: bool,
    /// Print JSON instead of a table.
    pub json: bool,
    /// Where snapshot and checkpoint files go (`--dir a,b`: every figure once per directory).
    pub dirs: Vec<PathBuf>,
    /// Skip the cold-page-cache restore variant.
    pub no_cold: bool,
    /// Firecracker to compare with (`--vs PATH`, else `FIRECRACKER`): `cairn-bench vs`.
    pub vs: Option<PathBuf>,
    /// `--drive MiB`: `cairn-bench checkpoint` gives its VMs a read-write drive of this size
    /// (a sparse file the tiny guests never touch), so each checkpoint freezes a disk delta.
    pub drive_mib: Option<u64>,
}

impl Options {
    /// Parse `--runs N`, `--mem a,b`, `--dir a,b`, `--no-cold` and `--json`.
    pub fn parse(args: &[String]) -> Self {
        let mut o = Options {
            runs: 7,
            mem: vec![256, 1024],
            mem_given: false,
            json: false,
            dirs: vec![PathBuf::from("/dev/shm")],
            no_cold: false,
            vs: std::env::var_os("FIRECRACKER").map(PathBuf::from),
            drive_mib: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--runs" => o.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
                "--mem" => {
                    o.mem = it
                        .next()
                        .expect("--mem MiB,...")
                        .split(',')
                        .map(|v| v.parse().expect("--mem takes MiB numbers"))
                        .collect();
                    o.mem_given = true;
                }
                "--dir" => {
                    o.dirs = it
                        .next()
                        .expect("--dir PATH,...")
                        .split(',')
                        .map(PathBuf::from)
                        .collect()
                }
                "--no-cold" => o.no_cold = true,
                "--vs" => o.vs = Some(PathBuf::from(it.next().expect("--vs PATH"))),
                "--drive" => {
                    o.drive_mib = Some(it.next().and_then(|v| v.parse().ok()).expect("--drive MiB"))
                }
                "--json" => o.json = true,
                other => panic!("unknown option {other}"),
            }
        }
        assert!(o.runs > 0, "--runs must be at least 1");
        o
    }

    /// `--mem` if given, else `default`.
    pub fn mem_or(&self, default: &[usize]) -> Vec<usize> {
        if self.mem_given {
            self.mem.clone()
        } else {
            default.to_vec()
        }
    }
}

/// One reported figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Unit.
    pub unit: &'static str,
}

/// Median, min and max of `samples`.
pub fn figure(name: String, mut samples: Vec<f64>, unit: &'static str) -> Figure {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = samples[samples.len() / 2];
    Figure {
        name,
        median,
        min: samples[0],
        max: samples[samples.len() - 1],
        unit,
    }
}

/// What one benchmark produced: figures, and what failed (with the request and reply).
#[derive(Debug, Default)]
pub struct Outcome {
    /// Figures measured.
    pub figures: Vec<Figure>,
    /// One line per failure.
    pub failures: Vec<String>,
}

impl Outcome {
    /// Record `r`'s figures, or its error under `what`.
    pub fn take(&mut self, what: &str, r: Result<Vec<Figure>, String>) {
        match r {
            Ok(f) => self.figures.extend(f),
            Err(e) => {
                eprintln!("FAILED {what}: {e}");
                self.failures.push(format!("{what}: {e}"));
            }
        }
    }

    /// Add another outcome.
    pub fn extend(&mut self, other: Outcome) {
        self.figures.extend(other.figures);
        self.failures.extend(other.failures);
    }
}

/// `/proc/loadavg`'s three load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Print an outcome, with the load average at the start (`load_before`) and now.
pub fn report_outcome(out: &Outcome, json: bool, load_before: &str) {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let load_after = loadavg();
    if json {
        let v: Vec<_> = out
            .figures
            .iter()
            .map(|f| serde_json::json!({"name": f.name, "median": f.median, "min": f.min, "max": f.max, "unit": f.unit}))
            .collect();
        let doc = serde_json::json!({
            "profile": profile,
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "figures": v,
            "failures": out.failures,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap());
        return;
    }
    println!("# cairn-bench ({profile} build), loadavg before: {load_before}, after: {load_after}");
    println!(
        "{:<66} {:>10} {:>10} {:>10}  unit",
        "figure", "median", "min", "max"
    );
    for f in &out.figures {
        println!(
            "{:<66} {:>10.2} {:>10.2} {:>10.2}  {}",
            f.name, f.median, f.min, f.max, f.unit
        );
    }
    for e in &out.failures {
        println!("FAILED {e}");
    }
}

/// The `cairn-vmm` binary next to this one (build with `cargo build --release --workspace`).
pub fn vmm_bin() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let p = me.parent().unwrap().join("cairn-vmm");
    assert!(
        p.exists(),
        "{} not found: build the workspace first",
        p.display()
    );
    p
}

/// Milliseconds in `d`.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Short label of a directory for figure names.
pub fn dir_label(dir: &Path) -> String {
    dir.display().to_string()
}

/// Whether `dir` is on tmpfs (its pages cannot be dropped from the page cache).
pub fn is_tmpfs(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let mut best: Option<(usize, bool)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(mnt), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if dir.starts_with(mnt) && best.is_none_or(|(len, _)| mnt.len() >= len) {
            best = Some((mnt.len(), fstype == "tmpfs"));
        }
    }
    best.is_some_and(|(_, t)| t)
}

/// Bytes allocated on disk for `path` (`st_blocks * 512`).
pub fn allocated_bytes(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// fsync each of `paths`; returns the time it took.
pub fn fsync_all(paths: &[&Path]) -> Result<Duration, String> {
    let start = Instant::now();
    for p in paths {
        let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        f.sync_all()
            .map_err(|e| format!("fsync {}: {e}", p.display()))?;
    }
    Ok(start.elapsed())
}

/// Drop the host's clean page cache (needs root; affects the whole machine briefly).
pub fn drop_caches() -> Result<(), String> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop_caches: {e}"))
}

/// A scratch directory under `dir`, removed on drop.
pub fn scratch_dir(dir: &Path, what: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(&format!("cairn-bench-{what}-"))
        .tempdir_in(dir)
        .map_err(|e| format!("scratch dir in {}: {e}", dir.display()))
}

/// Remove `paths`, ignoring ones that do not exist.
pub fn remove_files(paths: &[&Path]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// Wait until `sock` accepts connections (polling every 100 µs).
pub fn wait_for_socket(sock: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while UnixStream::connect(sock).is_err() {
        if Instant::now() >= deadline {
            return Err(format!("API socket {} never accepted", sock.display()));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

/// What a child printed, with the arrival time of every '.'.
#[derive(Default)]
struct Output {
    state: Mutex<OutputState>,
    cv: Condvar,
}

#[derive(Default)]
struct OutputState {
    data: Vec<u8>,
    dots: Vec<Instant>,
    closed: bool,
}

/// A `cairn-vmm` child with an API socket; stdout (the guest's serial) is watched in the
/// background. Killed on drop.
pub struct Vmm {
    child: Child,
    out: Arc<Output>,
    err: Arc<Mutex<Vec<u8>>>,
    /// When the process was spawned (just before `spawn`).
    pub started: Instant,
    /// The API socket.
    pub sock: PathBuf,
    api: Client,
    _tmp: tempfile::TempDir,
}

impl Vmm {
    /// Spawn `cairn-vmm --api-sock S` plus `extra` args.
    pub fn spawn(extra: &[&std::ffi::OsStr]) -> Result<Self, String> {
        Self::spawn_bin(&vmm_bin(), extra)
    }

    /// Spawn `bin --api-sock S` plus `extra` args: cairn-vmm, or Firecracker for a paired run.
    pub fn spawn_bin(bin: &Path, extra: &[&std::ffi::OsStr]) -> Result<Self, String> {
        let tmp = tempfile::Builder::new()
            .prefix("cairn-bench-sock-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let sock = tmp.path().join("api.sock");
        let mut cmd = Command::new(bin);
        cmd.arg("--api-sock").arg(&sock).args(extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let out = Arc::new(Output::default());
        let err = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let o = out.clone();
        std::thread::spawn(move || watch_stdout(stdout, o));
        let e = err.clone();
        std::thread::spawn(move || {
            let mut r = stderr;
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Ok(Self {
            child,
            out,
            err,
            started,
            api: Client::new(&sock).with_timeout(Duration::from_secs(300)),
            sock,
            _tmp: tmp,
        })
    }

    /// Boot from a config file (the API stays up).
    pub fn boot(config: &Path) -> Result<Self, String> {
        let vmm = Self::spawn(&["--config-file".as_ref(), config.as_os_str()])?;
        vmm.wait_socket()?;
        Ok(vmm)
    }

    /// Wait for the API socket.
    pub fn wait_socket(&self) -> Result<(), String> {
        wait_for_socket(&self.sock, Duration::from_secs(10))
            .map_err(|e| format!("{e}{}", self.diag()))
    }

    fn diag(&self) -> String {
        let st = self.out.state.lock().unwrap();
        let data = String::from_utf8_lossy(&st.data);
        let tail: String = data
            .chars()
            .rev()
            .take(200)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!(
            "\n  serial tail: {tail:?}\n  stderr: {}",
            String::from_utf8_lossy(&self.err.lock().unwrap()).trim()
        )
    }

    /// Wait until stdout contains `marker`.
    pub fn wait_marker(&self, marker: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.out.state.lock().unwrap();
        loop {
            if st
                .data
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
            {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline || st.closed {
                drop(st);
                return Err(format!(
                    "no {marker:?} on the serial after {timeout:?}{}",
                    self.diag()
                ));
            }
            st = self.out.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// The child's resident set size in MiB (`VmRSS`).
    pub fn rss_mib(&self) -> Result<f64, String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .map_err(|e| format!("/proc/{}/status: {e}", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .ok_or_else(|| "no VmRSS".into())
    }

    /// Wait until the child's RSS reaches `mib`.
    pub fn wait_rss(&self, mib: f64, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.rss_mib()? >= mib {
                return Ok(());
            }
            if Instant::now() >= deadline || self.out.state.lock().unwrap().closed {
                return Err(format!("RSS never reached {mib} MiB{}", self.diag()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// '.' printed so far.
    pub fn dots(&self) -> usize {
        self.out.state.lock().unwrap().dots.len()
    }

    /// Wait until `n` dots have been printed; returns when the n-th one was read.
    pub fn wait_dots(&self, n: usize, timeout: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.out.state.lock().unwrap();
        loop {
            if st.dots.len() >= n {
                return Ok(st.dots[n - 1]);
            }
            let now = Instant::now();
            if now >= deadline || st.closed {
                let have = st.dots.len();
                drop(st);
                return Err(format!(
                    "only {have} of {n} '.' after {timeout:?}{}",
                    self.diag()
                ));
            }
            st = self.out.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// One typed API call on this VMM; returns its result and round trip, or the error with
    /// the VMM's output for context.
    pub fn call<T>(
        &self,
        f: impl FnOnce(&Client) -> Result<T, ClientError>,
    ) -> Result<(T, Duration), String> {
        let start = Instant::now();
        let value = f(&self.api).map_err(|e| format!("{e}{}", self.diag()))?;
        Ok((value, start.elapsed()))
    }

    /// PATCH /vm to `state`; returns the round trip.
    pub fn set_state(&self, state: VmState) -> Result<Duration, String> {
        self.call(|c| c.set_state(state)).map(|r| r.1)
    }
}

fn watch_stdout(mut r: impl Read, out: Arc<Output>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let now = Instant::now();
        let mut st = out.state.lock().unwrap();
        if n == 0 {
            st.closed = true;
            out.cv.notify_all();
            return;
        }
        let dots = buf[..n].iter().filter(|&&b| b == b'.').count();
        st.dots.extend(std::iter::repeat_n(now, dots));
        // Keep the head (markers) and a bounded tail: a 1 MiB window prints thousands of dots.
        if st.data.len() < 1 << 20 {
            st.data.extend_from_slice(&buf[..n]);
        }
        out.cv.notify_all();
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write a config file for `kernel` with `mem_mib` of RAM into `dir`.
pub fn vm_config(
    dir: &Path,
    kernel: &str,
    mem_mib: usize,
    track_dirty: bool,
    checkpoint_dir: Option<&Path>,
) -> Result<PathBuf, String> {
    let cfg = VmConfig {
        boot_source: Some(BootSourceConfig {
            kernel_image_path: kernel.into(),
            ..BootSourceConfig::default()
        }),
        machine_config: MachineConfig {
            vcpu_count: 1,
            mem_size_mib: mem_mib,
            track_dirty_pages: track_dirty,
            ..MachineConfig::default()
        },
        cairn: CairnConfig {
            checkpoint_dir: checkpoint_dir.map(Path::to_path_buf),
            ..Default::default()
        },
        logger: vmm_debug_log(),
        ..VmConfig::default()
    };
    let p = dir.join(format!("vm-{mem_mib}-{}.json", std::process::id()));
    let text = serde_json::to_vec(&cfg).map_err(|e| e.to_string())?;
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}

/// Add a read-write drive `drive0` of `mib` MiB (a new sparse file in `dir`) to the VM config
/// at `config` (written by [`vm_config`]).
pub fn add_drive(config: &Path, dir: &Path, mib: u64) -> Result<(), String> {
    let text = std::fs::read(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut cfg: VmConfig = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    let image = dir.join("drive0.raw");
    let file = std::fs::File::create(&image).map_err(|e| format!("{}: {e}", image.display()))?;
    file.set_len(mib << 20)
        .map_err(|e| format!("{}: {e}", image.display()))?;
    cfg.drives.push(cairn_vmm_api::config::DriveConfig::new(
        "drive0", image, false,
    ));
    let text = serde_json::to_vec(&cfg).map_err(|e| e.to_string())?;
    std::fs::write(config, text).map_err(|e| format!("{}: {e}", config.display()))
}

/// `CAIRN_BENCH_VMM_LOG=FILE`: the VMMs the bench boots append their debug log to FILE (for
/// example each checkpoint's pause, step by step). Off by default: logging costs time.
fn vmm_debug_log() -> Option<cairn_vmm_api::config::LoggerConfig> {
    let path = std::env::var_os("CAIRN_BENCH_VMM_LOG")?;
    Some(cairn_vmm_api::config::LoggerConfig {
        log_path: Some(path.into()),
        level: Some(cairn_vmm_api::config::LogLevel::Debug),
        module: Some("cairn_vmm::checkpoint".into()),
        ..Default::default()
    })
}

/// A Linux guest's config: `kernel`, `initrd`, `args`, 1 vCPU and 256 MiB.
pub fn linux_config(kernel: &str, initrd: &str, args: &str) -> VmConfig {
    VmConfig {
        boot_source: Some(BootSourceConfig {
            kernel_image_path: kernel.into(),
            initrd_path: Some(initrd.into()),
            boot_args: Some(args.into()),
        }),
        machine_config: MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 256,
            ..MachineConfig::default()
        },
        ..VmConfig::default()
    }
}

/// Writes `config` as the JSON file `path`.
pub fn write_vm_config(path: &Path, config: &VmConfig) -> Result<(), String> {
    let text = serde_json::to_vec(config).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Time the guest needs to touch `mem_mib` of RAM under emulation, generously.
pub fn touch_timeout(mem_mib: usize) -> Duration {
    Duration::from_secs(30 + (mem_mib as u64 / 256) * 3)
}

/// The source tree (for `guest/build`): `CAIRN_SOURCE_DIR`, else where this crate was built from.
pub fn source_dir() -> PathBuf {
    std::env::var("CAIRN_SOURCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// `(kernel, initrd, boot_args)` printed by `guest/build --quiet` with `args`.
pub fn guest_build(args: &[&str]) -> Result<(String, String, String), String> {
    let out = std::process::Command::new(source_dir().join("guest/build"))
        .arg("--quiet")
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("guest/build: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
            .ok_or_else(|| format!("guest/build printed no {k}="))
    };
    Ok((get("kernel")?, get("initrd")?, get("boot_args")?))
}

/// QEMU microvm booting `kernel` + `initrd` with `args`, 1 vCPU, 256 MiB, serial on stdio: the
/// side-by-side reference. `-cpu host,-arch-capabilities` because QEMU 7.2 aborts with plain
/// `-cpu host` on the project's host (`CAIRN_QEMU_CPU` overrides); `-device i8042` so `reboot=k`
/// ends it.
pub fn qemu_microvm(
    qemu: &std::path::Path,
    kernel: &str,
    initrd: &str,
    args: &str,
) -> std::process::Command {
    let cpu = std::env::var("CAIRN_QEMU_CPU").unwrap_or_else(|_| "host,-arch-capabilities".into());
    let mut cmd = std::process::Command::new(qemu);
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,acpi=off",
        "-enable-kvm",
        "-cpu",
        &cpu,
    ])
    .args([
        "-m",
        "256",
        "-smp",
        "1",
        "-nodefaults",
        "-no-reboot",
        "-serial",
        "stdio",
    ])
    .args(["-display", "none", "-device", "i8042"])
    .args(["-kernel", kernel, "-initrd", initrd, "-append", args]);
    cmd
}

/// `cairn create NAME` as the sandbox benches make theirs: 256 MiB, a 1 GiB disk, no idle
/// sleep, and a boot timeout for this host's slow emulated boots.
pub fn sandbox_create_args(name: &str) -> [&str; 10] {
    [
        "create",
        name,
        "--mem",
        "256",
        "--disk",
        "1",
        "--idle-timeout",
        "0",
        "--boot-timeout",
        "400",
    ]
}

/// What [`first_byte_of`] measured: spawn → first stdout byte, spawn → exit, and stderr.
pub struct FirstByte {
    /// Milliseconds to the first byte on stdout.
    pub first_ms: f64,
    /// Milliseconds to the exit.
    pub total_ms: f64,
    /// Everything the command wrote to stderr.
    pub stderr: String,
}

/// Spawns `cmd` and times its first stdout byte and its exit; a command that hangs is killed
/// after `limit`. Fails, naming it `what`, unless it printed something and exited 0.
pub fn first_byte_of(mut cmd: Command, what: &str, limit: Duration) -> Result<FirstByte, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    // A guest that stops answering must not hang the bench.
    let (done, waiting) = std::sync::mpsc::channel::<()>();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        if waiting.recv_timeout(limit).is_err() {
            // SAFETY: kill(2) takes no pointers; `pid` is our child, not yet reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
    let mut b = [0u8; 1];
    let first_ms = match out.read(&mut b) {
        Ok(1) => ms(start.elapsed()),
        _ => f64::NAN,
    };
    let _ = out.read_to_end(&mut Vec::new());
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let _ = done.send(());
    let _ = watchdog.join();
    let total_ms = ms(start.elapsed());
    if !status.success() || first_ms.is_nan() {
        return Err(format!("{what}: {status}: {}", stderr.trim()));
    }
    Ok(FirstByte {
        first_ms,
        total_ms,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_takes_median_min_max() {
        let f = figure("x".into(), vec![3.0, 1.0, 2.0, 9.0, 5.0], "ms");
        assert_eq!((f.median, f.min, f.max), (3.0, 1.0, 9.0));
    }

    #[test]
    fn options_parse_dirs_and_mem() {
        let args: Vec<String> = [
            "--runs",
            "3",
            "--dir",
            "/dev/shm,/var/tmp",
            "--no-cold",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = Options::parse(&args);
        assert_eq!(o.runs, 3);
        assert_eq!(
            o.dirs,
            vec![PathBuf::from("/dev/shm"), PathBuf::from("/var/tmp")]
        );
        assert!(o.no_cold && o.json && !o.mem_given);
        assert_eq!(o.mem_or(&[4096]), vec![4096]);
        let o = Options::parse(&["--mem".to_string(), "512".to_string()]);
        assert_eq!(o.mem_or(&[4096]), vec![512]);
        assert_eq!(o.dirs, vec![PathBuf::from("/dev/shm")]);
    }

    #[test]
    fn allocated_bytes_sees_holes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sparse");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        assert_eq!(allocated_bytes(&p).unwrap(), 0);
        std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 8192], 1 << 20).unwrap();
        f.sync_all().unwrap();
        let a = allocated_bytes(&p).unwrap();
        assert!((8192..=1 << 20).contains(&a), "{a}");
    }

    #[test]
    fn tmpfs_detection() {
        if Path::new("/dev/shm").exists() {
            assert!(is_tmpfs(Path::new("/dev/shm")));
        }
        assert!(!is_tmpfs(Path::new("/proc")));
    }
}
