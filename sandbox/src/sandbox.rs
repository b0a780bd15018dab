//! Sandbox lifecycle: create, wake, stop, start, rm, checkpoints, and the state `cairn ls`
//! derives from the processes and sockets rather than from the registry alone.

use crate::image::{self, ImageError};
use crate::lock::{FileLock, Mode};
use crate::registry::{self, Record, Registry, RegistryError, State};
use crate::vmm_api::{self, ApiError};
use cairn_agent::client::{Client, ClientError};
use cairn_agent::proto::AGENT_PORT;
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why a sandbox operation failed. Messages are one line and end with a hint where one helps.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The registry failed, or the sandbox is missing or its name taken.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The guest image or a binary is missing.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The VMM's API refused or broke off.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The guest agent could not be reached.
    #[error("agent")]
    Agent(#[from] ClientError),
    /// A file or directory operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The name is not usable.
    #[error("invalid sandbox name {0:?} (hint: 1-40 characters from a-z A-Z 0-9 . _ -, starting with a letter or digit)")]
    InvalidName(String),
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm: {0} (hint: load kvm_intel or kvm_amd, and add yourself to the kvm group: `sudo usermod -aG kvm $USER`, then log in again)")]
    NoKvm(io::Error),
    /// The VM did not come up.
    #[error("{reason} (console log {log}; last lines: {tail})")]
    Boot {
        /// What went wrong.
        reason: String,
        /// The console log.
        log: PathBuf,
        /// Its last lines, joined with ` | `.
        tail: String,
    },
    /// The sandbox has nothing to start from.
    #[error(
        "sandbox {0:?} has no checkpoint to start from (hint: `cairn rm {0}` and create it again)"
    )]
    NoHead(String),
    /// A socket path is too long for `sockaddr_un`.
    #[error(
        "socket path {0} is longer than 107 bytes (hint: set CAIRN_HOME to a shorter directory)"
    )]
    PathTooLong(PathBuf),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// `CAIRN_HOME`: the registry and one directory per sandbox.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `$CAIRN_HOME`, else `$XDG_DATA_HOME/cairn`, else `~/.local/share/cairn`; created if missing.
    pub fn from_env() -> Result<Home, SandboxError> {
        let root = if let Some(h) = std::env::var_os("CAIRN_HOME") {
            PathBuf::from(h)
        } else if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
            PathBuf::from(x).join("cairn")
        } else {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".local/share/cairn")
        };
        Home::at(root)
    }

    /// A home at `root`, created if missing.
    pub fn at(root: impl Into<PathBuf>) -> Result<Home, SandboxError> {
        let root = root.into();
        fs::create_dir_all(root.join("sandboxes"))
            .map_err(io_err(format!("create {}", root.display())))?;
        Ok(Home { root })
    }

    /// The home directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The registry.
    pub fn registry(&self) -> Result<Registry, SandboxError> {
        Ok(Registry::open(&self.root)?)
    }

    /// Where the sandbox `name` keeps its files.
    pub fn paths(&self, name: &str) -> Paths {
        Paths::new(self.root.join("sandboxes").join(name))
    }
}

/// The files of one sandbox.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The directory.
    pub dir: PathBuf,
    /// The sparse raw disk (the base image of the layered store).
    pub disk: PathBuf,
    /// The VMM's JSON config.
    pub config: PathBuf,
    /// Guest serial output and VMM messages.
    pub console: PathBuf,
    /// REST API socket.
    pub api: PathBuf,
    /// vsock Unix socket.
    pub vsock: PathBuf,
    /// Named checkpoints and the disk's layers.
    pub checkpoints: PathBuf,
    /// Exclusive lifecycle lock.
    pub lock: PathBuf,
    /// Shared by each exec/cp in flight.
    pub active: PathBuf,
    /// The idle watcher's log.
    pub idle_log: PathBuf,
}

impl Paths {
    fn new(dir: PathBuf) -> Paths {
        Paths {
            disk: dir.join("disk.img"),
            config: dir.join("vm.json"),
            console: dir.join("console.log"),
            api: dir.join("api.sock"),
            vsock: dir.join("vsock.sock"),
            checkpoints: dir.join("checkpoints"),
            lock: dir.join("lock"),
            active: dir.join("active"),
            idle_log: dir.join("idle.log"),
            dir,
        }
    }
}

/// `cairn create` options.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// Sparse disk size, GiB.
    pub disk_gib: u64,
    /// Seconds of quiet before the VMM is checkpointed and stopped; 0 = never.
    pub idle_timeout: u64,
    /// How long to wait for the agent to answer.
    pub boot_timeout: Duration,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            cpus: 1,
            mem_mib: 512,
            disk_gib: 100,
            idle_timeout: 30,
            boot_timeout: Duration::from_secs(300),
        }
    }
}

/// Checks a sandbox name: 1-40 characters of `[A-Za-z0-9._-]`, starting alphanumeric.
pub fn validate_name(name: &str) -> Result<(), SandboxError> {
    let ok = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(SandboxError::InvalidName(name.to_string()))
    }
}

fn check_kvm() -> Result<(), SandboxError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(SandboxError::NoKvm)
}

/// What `cairn ls` reports, derived from the process table and the sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The VMM is alive and its API answers.
    Running,
    /// Checkpointed, no VMM.
    Stopped,
    /// Being created and the VMM is alive.
    Creating,
    /// Another cairn command holds the sandbox's lock (stopping, starting, checkpointing).
    Busy,
    /// The registry says a VMM runs, but it is gone or its API does not answer.
    Dead,
}

impl Liveness {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Running => "running",
            Liveness::Stopped => "stopped",
            Liveness::Creating => "creating",
            Liveness::Busy => "busy",
            Liveness::Dead => "dead",
        }
    }
}

/// Is `pid` a live (not zombie) `cairn-vmm`?
pub fn vmm_alive(pid: u32) -> bool {
    let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => return false,
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.trim().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|&b| b == 0)
                .next()
                .is_some_and(|a0| a0.ends_with(b"cairn-vmm"))
        })
        .unwrap_or(false)
}

/// The live state of a recorded sandbox.
pub fn liveness(r: &Record) -> Liveness {
    let alive = r.pid.is_some_and(vmm_alive);
    match r.state {
        State::Stopped => Liveness::Stopped,
        State::Creating if alive => Liveness::Creating,
        State::Running if alive && vmm_api::answers(&r.api_sock) => Liveness::Running,
        _ if lock_held(&r.dir.join("lock")) => Liveness::Busy,
        _ => Liveness::Dead,
    }
}

fn lock_held(path: &Path) -> bool {
    path.exists() && matches!(FileLock::try_acquire(path, Mode::Exclusive), Ok(None))
}

/// A row for `cairn ls`.
pub fn ls_json(r: &Record) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "state": liveness(r).as_str(),
        "recorded_state": r.state.as_str(),
        "pid": r.pid,
        "cpus": r.cpus,
        "mem_mib": r.mem_mib,
        "disk_gib": r.disk_gib,
        "created": r.created,
        "last_activity": r.last_activity,
        "head_checkpoint": r.head_checkpoint,
        "idle_timeout": r.idle_timeout,
        "dir": r.dir,
        "api_sock": r.api_sock,
        "vsock_sock": r.vsock_sock,
    })
}

fn check_socket_path(p: &Path) -> Result<(), SandboxError> {
    if p.as_os_str().len() > 107 {
        return Err(SandboxError::PathTooLong(p.to_path_buf()));
    }
    Ok(())
}

/// The VMM config of a new sandbox.
pub fn vm_config(
    paths: &Paths,
    img: &image::GuestImage,
    opts: &CreateOptions,
) -> serde_json::Value {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": img.kernel,
            "initrd_path": img.initrd,
            "boot_args": img.boot_args,
        },
        "machine-config": {"vcpu_count": opts.cpus, "mem_size_mib": opts.mem_mib},
        "drives": [{
            "drive_id": "disk",
            "path_on_host": paths.disk,
            "is_root_device": false,
            "is_read_only": false,
        }],
        "vsock": {"guest_cid": 3, "uds_path": paths.vsock},
        "entropy": {},
        "cairn": {"checkpoint_dir": paths.checkpoints},
    })
}

/// The last `n` lines of the console log, joined with ` | `.
pub fn console_tail(paths: &Paths, n: usize) -> String {
    let mut f = match File::open(&paths.console) {
        Ok(f) => f,
        Err(_) => return String::from("(no console log)"),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn boot_error(paths: &Paths, reason: impl Into<String>) -> SandboxError {
    SandboxError::Boot {
        reason: reason.into(),
        log: paths.console.clone(),
        tail: console_tail(paths, 5),
    }
}

/// Starts `cairn-vmm ARGS` in a session of its own, output appended to the console log.
fn spawn_vmm(paths: &Paths, args: &[&std::ffi::OsStr]) -> Result<u32, SandboxError> {
    let vmm = image::vmm_binary()?;
    for s in [&paths.api, &paths.vsock] {
        check_socket_path(s)?;
        let _ = fs::remove_file(s);
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.console)
        .map_err(io_err(format!("open {}", paths.console.display())))?;
    let log2 = log
        .try_clone()
        .map_err(io_err("duplicate the console log"))?;
    let mut cmd = Command::new(&vmm);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .current_dir(&paths.dir);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io_err(format!("start {}", vmm.display())))?;
    // The child is not waited for here: it outlives this process (and is then reaped by init).
    Ok(child.id())
}

/// Waits until the API socket answers, or the VMM dies, or `timeout` passes.
fn wait_api(paths: &Paths, pid: u32, timeout: Duration) -> Result<(), SandboxError> {
    let deadline = Instant::now() + timeout;
    while !vmm_api::answers(&paths.api) {
        if !vmm_alive(pid) {
            reap(pid);
            return Err(boot_error(paths, "cairn-vmm exited during start-up"));
        }
        if Instant::now() > deadline {
            return Err(boot_error(paths, "cairn-vmm's API socket never answered"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        pb.set_style(style);
    }
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Waits until the guest agent answers a ping; returns how long that took. Only console output
/// after `console_from` is searched for an agent crash (the log is appended across starts).
pub fn wait_agent(
    paths: &Paths,
    pid: u32,
    timeout: Duration,
    what: &str,
    console_from: u64,
) -> Result<Duration, SandboxError> {
    let start = Instant::now();
    let pb = spinner(what.to_string());
    let result = loop {
        let attempt = Client::connect_uds_timeout(&paths.vsock, AGENT_PORT, Duration::from_secs(5))
            .and_then(|mut c| c.ping());
        if attempt.is_ok() {
            break Ok(start.elapsed());
        }
        if !vmm_alive(pid) {
            reap(pid);
            break Err(boot_error(
                paths,
                "cairn-vmm exited before the agent answered",
            ));
        }
        if let Some(line) = agent_crash(paths, console_from) {
            break Err(boot_error(
                paths,
                format!("the guest agent crashed before answering: {line}"),
            ));
        }
        if start.elapsed() > timeout {
            break Err(boot_error(
                paths,
                format!("the guest agent did not answer within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    pb.finish_and_clear();
    result
}

fn console_len(paths: &Paths) -> u64 {
    fs::metadata(&paths.console).map(|m| m.len()).unwrap_or(0)
}

/// The guest kernel's report of the agent dying (`cairn-agent[N]: segfault at ...`) in the
/// console output after `from`, if any: the agent will not answer, so waiting is pointless.
fn agent_crash(paths: &Paths, from: u64) -> Option<String> {
    let mut f = File::open(&paths.console).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .find(|l| {
            l.contains("cairn-agent[")
                && (l.contains("segfault") || l.contains("general protection"))
        })
        .map(|l| l.trim().to_string())
}

fn reap(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: waitpid with WNOHANG on a pid; a null status pointer is allowed. It reaps our own
    // zombie child if it is one and fails harmlessly (ECHILD) otherwise.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
}

/// Ends the VMM `pid`: SIGTERM, then SIGKILL after 3 s.
pub fn kill_vmm(pid: u32) {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return;
    };
    if !vmm_alive(pid) {
        return;
    }
    for (sig, wait) in [(libc::SIGTERM, 3000), (libc::SIGKILL, 5000)] {
        // SAFETY: kill(2) on a pid checked just above to be a cairn-vmm.
        unsafe { libc::kill(p, sig) };
        for _ in 0..wait / 10 {
            reap(pid);
            if !vmm_alive(pid) {
                wait_gone(pid);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A dying VMM's leader turns zombie while its vCPU threads still exit and its memory is
/// freed: wait (up to 3 s) until the process is gone for good.
fn wait_gone(pid: u32) {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..300 {
        reap(pid);
        if !proc_dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Creates, boots and records the sandbox `name`; returns its row.
pub fn create(home: &Home, name: &str, opts: &CreateOptions) -> Result<Record, SandboxError> {
    validate_name(name)?;
    check_kvm()?;
    let mut reg = home.registry()?;
    if reg.get(name).is_ok() {
        return Err(RegistryError::NameTaken(name.to_string()).into());
    }
    let pb = spinner("guest image (guest/build; the first run builds a kernel)".into());
    let img = image::guest_image();
    pb.finish_and_clear();
    let img = img?;
    let paths = home.paths(name);
    check_socket_path(&paths.api)?;
    check_socket_path(&paths.vsock)?;
    fs::create_dir_all(&paths.dir).map_err(io_err(format!("create {}", paths.dir.display())))?;
    let _lock = FileLock::acquire(&paths.lock, Mode::Exclusive)
        .map_err(io_err(format!("lock {}", paths.lock.display())))?;
    let now = registry::now();
    let record = Record {
        name: name.to_string(),
        state: State::Creating,
        dir: paths.dir.clone(),
        pid: None,
        api_sock: paths.api.clone(),
        vsock_sock: paths.vsock.clone(),
        cpus: opts.cpus,
        mem_mib: opts.mem_mib,
        disk_gib: opts.disk_gib,
        created: now,
        last_activity: now,
        head_checkpoint: None,
        idle_timeout: opts.idle_timeout,
    };
    // The row claims the name (atomically): a racing create of the same name stops here.
    reg.insert(&record)?;
    match boot_new(&mut reg, &paths, &img, opts, name) {
        Ok(pid) => {
            reg.set_state(name, State::Running, Some(pid))?;
            if opts.idle_timeout > 0 {
                crate::idle::spawn_watcher(home, name, &paths)?;
            }
            Ok(reg.get(name)?)
        }
        Err(e) => {
            // Leave nothing half-made behind, but keep the console log's story in the error.
            if let Ok(r) = reg.get(name) {
                if let Some(pid) = r.pid {
                    kill_vmm(pid);
                }
            }
            let _ = reg.remove(name);
            let _ = fs::remove_dir_all(&paths.dir);
            Err(e)
        }
    }
}

fn boot_new(
    reg: &mut Registry,
    paths: &Paths,
    img: &image::GuestImage,
    opts: &CreateOptions,
    name: &str,
) -> Result<u32, SandboxError> {
    fs::create_dir_all(&paths.checkpoints).map_err(io_err("create the checkpoint dir"))?;
    let disk =
        File::create(&paths.disk).map_err(io_err(format!("create {}", paths.disk.display())))?;
    disk.set_len(opts.disk_gib << 30)
        .map_err(io_err(format!("size {}", paths.disk.display())))?;
    let cfg = vm_config(paths, img, opts);
    fs::write(&paths.config, cfg.to_string())
        .map_err(io_err(format!("write {}", paths.config.display())))?;
    let from = console_len(paths);
    let pid = spawn_vmm(
        paths,
        &[
            "--api-sock".as_ref(),
            paths.api.as_os_str(),
            "--config-file".as_ref(),
            paths.config.as_os_str(),
        ],
    )?;
    reg.set_state(name, State::Creating, Some(pid))?;
    let took = wait_agent(
        paths,
        pid,
        opts.boot_timeout,
        &format!("booting {name}"),
        from,
    )?;
    eprintln!("{name}: agent answered after {:.1} s", took.as_secs_f64());
    Ok(pid)
}

/// Takes the sandbox's lifecycle lock.
pub fn lock(paths: &Paths) -> Result<FileLock, SandboxError> {
    FileLock::acquire(&paths.lock, Mode::Exclusive)
        .map_err(io_err(format!("lock {}", paths.lock.display())))
}

/// Makes sure a VMM runs (starting it from its head checkpoint if it was stopped), with the
/// lifecycle lock held by the caller. Returns the fresh row.
fn ensure_running_locked(
    home: &Home,
    reg: &mut Registry,
    name: &str,
) -> Result<Record, SandboxError> {
    let r = reg.get(name)?;
    match liveness(&r) {
        Liveness::Running => Ok(r),
        _ => {
            start_locked(home, reg, &r, None)?;
            Ok(reg.get(name)?)
        }
    }
}

/// For exec/cp/console: wakes the sandbox if needed and marks an operation in flight (the
/// returned shared lock keeps the idle watcher away until it is dropped).
pub fn enter(home: &Home, name: &str) -> Result<(Record, FileLock), SandboxError> {
    let mut reg = home.registry()?;
    let r = reg.get(name)?;
    let paths = home.paths(name);
    let _l = lock(&paths)?;
    let r = ensure_running_locked(home, &mut reg, &r.name)?;
    let active = FileLock::acquire(&paths.active, Mode::Shared)
        .map_err(io_err(format!("lock {}", paths.active.display())))?;
    reg.touch(name)?;
    Ok((r, active))
}

/// Marks the sandbox used now.
pub fn touch(home: &Home, name: &str) -> Result<(), SandboxError> {
    Ok(home.registry()?.touch(name)?)
}

/// `cairn start`: a fresh VMM restored from `ckpt` (default: the head checkpoint).
fn start_locked(
    home: &Home,
    reg: &mut Registry,
    r: &Record,
    ckpt: Option<&str>,
) -> Result<(), SandboxError> {
    let paths = home.paths(&r.name);
    if let Some(pid) = r.pid {
        kill_vmm(pid);
    }
    let Some(head) = ckpt.or(r.head_checkpoint.as_deref()) else {
        return Err(SandboxError::NoHead(r.name.clone()));
    };
    let head = head.to_string();
    let start = Instant::now();
    let from = console_len(&paths);
    let pid = spawn_vmm(
        &paths,
        &[
            "--api-sock".as_ref(),
            paths.api.as_os_str(),
            "--checkpoint-dir".as_ref(),
            paths.checkpoints.as_os_str(),
        ],
    )?;
    let result = (|| {
        wait_api(&paths, pid, Duration::from_secs(30))?;
        vmm_api::request(
            &paths.api,
            "PUT",
            "/checkpoints/restore",
            Some(&serde_json::json!({"name": head, "vsock_uds_path": paths.vsock})),
            Duration::from_secs(120),
        )?;
        wait_agent(
            &paths,
            pid,
            Duration::from_secs(60),
            &format!("waking {}", r.name),
            from,
        )
    })();
    if let Err(e) = result {
        kill_vmm(pid);
        return Err(e);
    }
    reg.set_state(&r.name, State::Running, Some(pid))?;
    reg.set_head(&r.name, Some(&head))?;
    eprintln!(
        "{}: started from checkpoint {head} in {:.2} s",
        r.name,
        start.elapsed().as_secs_f64()
    );
    if r.idle_timeout > 0 {
        crate::idle::spawn_watcher(home, &r.name, &paths)?;
    }
    Ok(())
}

/// `cairn start NAME`: no-op when it runs already.
pub fn start(home: &Home, name: &str) -> Result<bool, SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let r = reg.get(name)?;
    if liveness(&r) == Liveness::Running {
        return Ok(false);
    }
    start_locked(home, &mut reg, &r, None)?;
    Ok(true)
}

/// Checkpoints and stops a running VMM, with the lifecycle lock held; returns the checkpoint.
pub(crate) fn stop_locked(reg: &mut Registry, r: &Record) -> Result<Option<String>, SandboxError> {
    let Some(pid) = r.pid.filter(|&p| vmm_alive(p)) else {
        reg.set_state(&r.name, State::Stopped, None)?;
        return Ok(None);
    };
    let meta = create_checkpoint_at(&r.api_sock, None)?;
    let ckpt = meta
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_string);
    if let Some(c) = &ckpt {
        reg.set_head(&r.name, Some(c))?;
    }
    kill_vmm(pid);
    reg.set_state(&r.name, State::Stopped, None)?;
    Ok(ckpt)
}

/// `cairn stop NAME`: checkpoint, then end the VMM. Returns the checkpoint taken (none when
/// the VMM was not running).
pub fn stop(home: &Home, name: &str) -> Result<Option<String>, SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let r = reg.get(name)?;
    if r.state == State::Stopped {
        return Ok(None);
    }
    stop_locked(&mut reg, &r)
}

/// `cairn rm NAME`: ends the VMM and deletes the directory and the row.
pub fn remove(home: &Home, name: &str) -> Result<(), SandboxError> {
    let mut reg = home.registry()?;
    let r = reg.get(name)?;
    let paths = home.paths(&r.name);
    let _l = lock(&paths)?;
    if let Some(pid) = r.pid {
        kill_vmm(pid);
    }
    reg.remove(name)?;
    fs::remove_dir_all(&paths.dir).or_else(|e| match e.kind() {
        io::ErrorKind::NotFound => Ok(()),
        _ => Err(io_err(format!("remove {}", paths.dir.display()))(e)),
    })
}

fn create_checkpoint_at(api: &Path, ckpt: Option<&str>) -> Result<serde_json::Value, SandboxError> {
    let body = ckpt.map(|c| serde_json::json!({ "name": c }));
    let text = vmm_api::request(
        api,
        "PUT",
        "/checkpoints",
        body.as_ref(),
        Duration::from_secs(300),
    )?;
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// `cairn checkpoint create NAME [CKPT]`: returns the VMM's answer (name, parent, costs).
pub fn checkpoint_create(
    home: &Home,
    name: &str,
    ckpt: Option<&str>,
) -> Result<serde_json::Value, SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let r = ensure_running_locked(home, &mut reg, name)?;
    let meta = create_checkpoint_at(&r.api_sock, ckpt)?;
    if let Some(c) = meta.get("name").and_then(|n| n.as_str()) {
        reg.set_head(name, Some(c))?;
    }
    reg.touch(name)?;
    Ok(meta)
}

/// `cairn checkpoint list NAME`: the VMM's list (wakes a stopped sandbox).
pub fn checkpoint_list(home: &Home, name: &str) -> Result<Vec<serde_json::Value>, SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let r = ensure_running_locked(home, &mut reg, name)?;
    let text = vmm_api::request(
        &r.api_sock,
        "GET",
        "/checkpoints",
        None,
        Duration::from_secs(30),
    )?;
    Ok(match serde_json::from_str(&text) {
        Ok(serde_json::Value::Array(v)) => v,
        _ => Vec::new(),
    })
}

/// `cairn checkpoint restore NAME CKPT`: the running VM is replaced by the checkpoint (a
/// stopped sandbox starts from it).
pub fn checkpoint_restore(home: &Home, name: &str, ckpt: &str) -> Result<(), SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let r = reg.get(name)?;
    if liveness(&r) != Liveness::Running {
        return start_locked(home, &mut reg, &r, Some(ckpt));
    }
    let start = Instant::now();
    let from = console_len(&paths);
    vmm_api::request(
        &r.api_sock,
        "PUT",
        "/checkpoints/restore",
        Some(&serde_json::json!({"name": ckpt, "vsock_uds_path": r.vsock_sock})),
        Duration::from_secs(120),
    )?;
    reg.set_head(name, Some(ckpt))?;
    let pid = r.pid.unwrap_or(0);
    wait_agent(
        &paths,
        pid,
        Duration::from_secs(60),
        &format!("restoring {name}"),
        from,
    )?;
    reg.touch(name)?;
    eprintln!(
        "{name}: restored {ckpt} in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cairn checkpoint rm NAME CKPT`.
pub fn checkpoint_remove(home: &Home, name: &str, ckpt: &str) -> Result<(), SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let r = ensure_running_locked(home, &mut reg, name)?;
    vmm_api::request(
        &r.api_sock,
        "DELETE",
        &format!("/checkpoints/{ckpt}"),
        None,
        Duration::from_secs(120),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "dev-1", "x.y_z", "A9"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-a", ".a", "a/b", "a b", &"x".repeat(41)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_has_every_piece() {
        let home = tempfile::tempdir().unwrap();
        let paths = Home::at(home.path()).unwrap().paths("s");
        let img = image::GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
            boot_args: "console=ttyS0".into(),
        };
        let cfg = vm_config(&paths, &img, &CreateOptions::default());
        assert_eq!(cfg["machine-config"]["vcpu_count"], 1);
        assert_eq!(
            cfg["drives"][0]["path_on_host"],
            paths.disk.to_str().unwrap()
        );
        assert_eq!(cfg["vsock"]["uds_path"], paths.vsock.to_str().unwrap());
        assert_eq!(
            cfg["cairn"]["checkpoint_dir"],
            paths.checkpoints.to_str().unwrap()
        );
        assert!(cfg.get("entropy").is_some());
    }

    #[test]
    fn an_agent_crash_on_the_console_is_found_after_the_offset() {
        let home = tempfile::tempdir().unwrap();
        let paths = Home::at(home.path()).unwrap().paths("s");
        fs::create_dir_all(&paths.dir).unwrap();
        let old = "[ 1.0] cairn-agent[26]: segfault at 0 ip 1 sp 2 error 4\n";
        fs::write(&paths.console, old).unwrap();
        let from = console_len(&paths);
        assert_eq!(agent_crash(&paths, from), None);
        let new = format!("{old}cairn-guest-ready\n[ 2.0] cairn-agent[27]: segfault at 0 ip 3\n");
        fs::write(&paths.console, new).unwrap();
        let line = agent_crash(&paths, from).unwrap();
        assert!(line.contains("cairn-agent[27]"), "{line}");
        assert!(console_tail(&paths, 1).contains("[27]"));
    }

    #[test]
    fn dead_pids_are_not_alive() {
        assert!(!vmm_alive(u32::MAX - 1));
        // This test process is alive but is not a cairn-vmm.
        assert!(!vmm_alive(std::process::id()));
    }

    #[test]
    fn a_row_whose_vmm_is_gone_is_dead() {
        let r = Record {
            name: "s".into(),
            state: State::Running,
            dir: "/nonexistent".into(),
            pid: Some(u32::MAX - 1),
            api_sock: "/nonexistent/api.sock".into(),
            vsock_sock: "/nonexistent/v.sock".into(),
            cpus: 1,
            mem_mib: 256,
            disk_gib: 1,
            created: 0,
            last_activity: 0,
            head_checkpoint: None,
            idle_timeout: 0,
        };
        assert_eq!(liveness(&r), Liveness::Dead);
        let stopped = Record {
            state: State::Stopped,
            pid: None,
            ..r
        };
        assert_eq!(liveness(&stopped), Liveness::Stopped);
        assert_eq!(ls_json(&stopped)["state"], "stopped");
    }
}
