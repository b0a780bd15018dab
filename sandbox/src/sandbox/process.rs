//! The VMM process: spawning it detached, ending it, and the live state `cairn ls` derives
//! from the process table and the sockets rather than from the registry alone.

use super::{boot_error, image, io_err, jail, Paths, SandboxError};
use crate::lock::{FileLock, Mode};
use crate::registry::{Record, State};
use crate::vmm_api;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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
    /// No VMM and no checkpoint: `cairn start` cold-boots it from its disk.
    Cold,
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
            Liveness::Cold => "cold",
        }
    }
}

/// Is `pid` a live (not zombie) `cairn-vmm`, or the `cairn-jailer` that is about to become
/// one (it execs the VMM in the same process, see [`jail`])?
pub fn vmm_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| live_user_process(&stat))
        && fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| runs_our_binary(&c))
}

/// Whether a `/proc/PID/stat` line is that of a process neither dead, a zombie, nor a kernel
/// thread. The state follows the parenthesised command name; the flags are the seventh field
/// after it.
fn live_user_process(stat: &str) -> bool {
    let mut fields = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace())
        .into_iter()
        .flatten();
    let state = fields.next().and_then(|s| s.chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    let flags: u64 = fields.nth(5).and_then(|f| f.parse().ok()).unwrap_or(0);
    flags & PF_KTHREAD == 0
}

/// The kernel-thread bit of `/proc/PID/stat`'s flags.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether a process's `/proc/PID/cmdline` is that of `cairn-vmm` or `cairn-jailer`. An empty
/// one counts: it is a process in the middle of `execve` (the kernel has given it its new memory
/// but not yet its arguments), which is what a VMM just spawned looks like for a moment, to the
/// CLI that spawned it (its exec has already succeeded) and again when the jailer execs the VMM.
/// Taking it for dead failed about one wake in 60 with "cairn-vmm exited during start-up".
fn runs_our_binary(cmdline: &[u8]) -> bool {
    match cmdline.split(|&b| b == 0).next() {
        None | Some([]) => true,
        Some(argv0) => argv0.ends_with(b"cairn-vmm") || argv0.ends_with(b"cairn-jailer"),
    }
}

/// Every live `cairn-vmm` whose working directory is `dir` (each sandbox's VMM runs in its
/// directory; a jailed one in its jail root, which is checked too), recorded or not: a CLI
/// that crashed between spawning a VMM and recording it leaves one behind, and it must not
/// share the disk with a second.
pub fn vmms_in(dir: &Path) -> Vec<u32> {
    let paths = Paths::new(dir.to_path_buf());
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    // The kernel reports the resolved path: compare with the resolved `dir`.
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            vmm_alive(pid)
                && (fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
                    || jail::works_in_jail(&paths, pid))
        })
        .collect()
}

/// The live state of a recorded sandbox.
pub fn liveness(r: &Record) -> Liveness {
    let alive = r.pid.is_some_and(vmm_alive);
    match r.state {
        State::Stopped => Liveness::Stopped,
        State::Cold => Liveness::Cold,
        State::Creating if alive => Liveness::Creating,
        State::Running if alive && vmm_api::answers(&r.api_sock) => Liveness::Running,
        _ if lock_held(&r.dir.join("lock")) => Liveness::Busy,
        _ => Liveness::Dead,
    }
}

pub(crate) fn lock_held(path: &Path) -> bool {
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
        "standby_pid": super::standby::pid(&Paths::new(r.dir.clone())),
        "jailed": jail::load(&Paths::new(r.dir.clone())).is_ok_and(|s| s.is_some()),
        "net": crate::net::load(&Paths::new(r.dir.clone()))
            .ok()
            .flatten()
            .map(|n| serde_json::json!({"address": n.guest, "mac": n.mac, "netns": n.netns_name()})),
    })
}

pub(crate) fn check_socket_path(p: &Path) -> Result<(), SandboxError> {
    if p.as_os_str().len() > 107 {
        return Err(SandboxError::PathTooLong(p.to_path_buf()));
    }
    Ok(())
}

/// Starts `cairn-vmm ARGS` in a session of its own, output appended to the console log; for a
/// jailed sandbox through `cairn-jailer` (ARGS then name in-jail paths, see [`jail::vmm_view`]).
pub(crate) fn spawn_vmm(paths: &Paths, args: &[&std::ffi::OsStr]) -> Result<u32, SandboxError> {
    let jail_spec = jail::load(paths)?;
    // The sandbox's network namespace (re-made first if a reboot or crash took it away).
    crate::net::ensure(paths, jail_spec.as_ref().map(|s| (s.uid, s.gid)))?;
    let net = crate::net::load(paths)?;
    let rootless = net.as_ref().filter(|n| n.rootless);
    let netns = net.as_ref().filter(|n| !n.rootless).map(|n| n.netns_path());
    let mut cmd = match (jail_spec, rootless) {
        (Some(spec), _) => jail::command(paths, &spec, netns.as_deref(), args)?,
        (None, Some(net)) => {
            crate::net::rootless::command(paths, net, &image::vmm_binary()?, args)?
        }
        (None, None) => {
            let mut cmd = Command::new(image::vmm_binary()?);
            cmd.args(args);
            if let Some(ns) = &netns {
                crate::net::link::enter_netns_on_exec(&mut cmd, ns)?;
            }
            cmd
        }
    };
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
    let input = console_input(paths)?;
    cmd.stdin(input)
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
    let mut child = cmd
        .spawn()
        .map_err(io_err(format!("start {:?}", cmd.get_program())))?;
    if rootless.is_some() {
        // The child is pasta, which runs the VMM in the namespace it connects.
        return Ok(crate::net::rootless::vmm_pid(paths, child)?);
    }
    let pid = child.id();
    // The VMM outlives a CLI (init reaps it then), but a long-running caller (`cairn serve`)
    // must reap it whoever ends it, or each VMM another process stopped stays a zombie here.
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

/// The VMM's stdin: the sandbox's console FIFO (made if missing), opened read-write so that
/// the VMM never sees end-of-file while no `cairn console` is attached. Writers attach to the
/// same pipe by opening the FIFO, across VMM restarts.
fn console_input(paths: &Paths) -> Result<File, SandboxError> {
    let path = &paths.console_in;
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_fifo() => {}
        Ok(_) => {
            fs::remove_file(path).map_err(io_err(format!("remove {}", path.display())))?;
            make_fifo(path)?;
        }
        Err(_) => make_fifo(path)?,
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))
}

fn make_fifo(path: &Path) -> Result<(), SandboxError> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| SandboxError::Io {
        what: format!("path {} has a NUL byte", path.display()),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: mkfifo reads the NUL-terminated path, which lives across the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(io_err(format!("mkfifo {}", path.display()))(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Waits until the API socket answers, or the VMM dies, or `timeout` passes.
pub(crate) fn wait_api(paths: &Paths, pid: u32, timeout: Duration) -> Result<(), SandboxError> {
    let deadline = Instant::now() + timeout;
    // A VMM's socket answers within tens of ms: poll finely at first (a wake waits on this).
    let mut pause = Duration::from_millis(2);
    while !vmm_api::answers(&paths.api) {
        if !vmm_alive(pid) {
            reap(pid);
            return Err(boot_error(paths, "cairn-vmm exited during start-up"));
        }
        if Instant::now() > deadline {
            return Err(boot_error(paths, "cairn-vmm's API socket never answered"));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    Ok(())
}

pub(crate) fn reap(pid: u32) {
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
pub(crate) fn wait_gone(pid: u32) {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..300 {
        reap(pid);
        if !proc_dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_mid_exec_counts_as_ours_and_others_do_not() {
        assert!(runs_our_binary(b""));
        assert!(runs_our_binary(b"/cairn-vmm\0--api-sock\0/run/api.sock\0"));
        assert!(runs_our_binary(b"/usr/bin/cairn-jailer\0--id\0x\0"));
        assert!(!runs_our_binary(b"target/release/cairn\0exec\0s\0"));
        assert!(!runs_our_binary(b"/bin/sleep\0cairn-vmm\0"));
        // Kernel threads have an empty command line too, but their flags rule them out.
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0";
        assert!(!live_user_process(kthreadd));
        let vmm = "77 (cairn-vmm) S 1 77 77 0 -1 4194560 9 0 0 0 1 2";
        assert!(live_user_process(vmm));
        assert!(!live_user_process(&vmm.replace(") S", ") Z")));
        assert!(!live_user_process("77 (cairn) x) "));
        assert!(!live_user_process(""));
        assert!(!vmm_alive(std::process::id()), "this test is no VMM");
    }

    #[test]
    fn dead_pids_are_not_alive() {
        assert!(!vmm_alive(u32::MAX - 1));
        // This test process is alive but is not a cairn-vmm.
        assert!(!vmm_alive(std::process::id()));
    }

    #[test]
    fn a_jailer_about_to_exec_the_vmm_counts_as_one() {
        // A jailed VMM's process is `cairn-jailer` until the jailer execs the VMM in place:
        // liveness checks and kill_vmm must not take it for gone in that window.
        let tmp = tempfile::tempdir().unwrap();
        let fake = tmp.path().join("cairn-jailer");
        fs::copy("/bin/sleep", &fake).unwrap();
        let mut child = Command::new(&fake).arg("30").spawn().unwrap();
        let pid = child.id();
        // Until the child's exec completes, /proc shows the test binary's name.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !vmm_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(vmm_alive(pid));
        kill_vmm(pid);
        let _ = child.wait();
        assert!(!vmm_alive(pid));
    }

    #[test]
    fn a_row_whose_vmm_is_gone_is_dead() {
        let r = Record {
            pid: Some(u32::MAX - 1),
            ..Paths::new("/nonexistent".into()).record("s", State::Running)
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

    #[test]
    fn the_console_fifo_carries_input_to_whichever_vmm_holds_it() {
        use std::io::{Read, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let home = tempfile::tempdir().unwrap();
        let paths = crate::sandbox::Home::at(home.path()).unwrap().paths("s");
        fs::create_dir_all(&paths.dir).unwrap();
        // A stray regular file in its place is replaced by a FIFO.
        fs::write(&paths.console_in, "x").unwrap();
        let mut vmm_stdin = console_input(&paths).unwrap();
        assert!(fs::metadata(&paths.console_in)
            .unwrap()
            .file_type()
            .is_fifo());
        let mut console = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&paths.console_in)
            .unwrap();
        console.write_all(b"ls\n").unwrap();
        let mut buf = [0u8; 3];
        vmm_stdin.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ls\n");
        // The VMM goes (idle stop) and a new one comes: the attached writer reaches it.
        drop(vmm_stdin);
        let e = console.write_all(b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        let mut next = console_input(&paths).unwrap();
        console.write_all(b"pwd\n").unwrap();
        let mut buf = [0u8; 4];
        next.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pwd\n");
    }
}
