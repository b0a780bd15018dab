//! The main flow: check, build the jail, then enter it and exec the VMM, undoing everything on failure.
//!
//! Without `--new-pid-ns` or `--daemonize` the jailer execs the VMM in its own process, so the caller's
//! child pid is the VMM's (Firecracker's convention). With either flag it forks: the child enters the jail,
//! and a close-on-exec pipe tells the parent whether the exec happened or why it did not.

use std::convert::Infallible;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::args::{JailerArgs, ResourceLimit};
use crate::bind::{self, BindMount};
use crate::cgroup::{self, Cgroups};
use crate::chroot::{self, JailPaths};
use crate::env::{self, ExecArgs};
use crate::exec_file;
use crate::namespaces::{self, NetNs};
use crate::rollback::Rollback;
use crate::{dev, privileges, rlimits, sys, Error};

/// Everything the last steps need, prepared while the host's file system is still visible.
#[derive(Debug)]
struct Entry {
    uid: u32,
    gid: u32,
    paths: JailPaths,
    cgroups: Cgroups,
    netns: Option<NetNs>,
    limits: Vec<ResourceLimit>,
    dev_null: Option<File>,
    binds: Vec<BindMount>,
    exec: ExecArgs,
}

impl Entry {
    /// Joins the cgroups and namespaces, pivots into the jail, drops privileges and execs the VMM.
    /// Returns only on failure, with root regained so that `rollback` can undo.
    fn enter(&self, rollback: &mut Rollback) -> Result<Infallible, Error> {
        let result = self.enter_steps(rollback);
        let _ = privileges::regain_root();
        if !self.binds.is_empty() {
            // The undo reaches the jail through descriptors of the host's mount namespace, where these
            // binds never existed; detaching them here as well keeps it that way whatever step failed
            // (before `pivot_root` they are under the jail root, after it at their jail paths).
            bind::unmount_all(&self.paths.root, &self.binds);
            bind::unmount_all(Path::new("/"), &self.binds);
        }
        result
    }

    fn enter_steps(&self, rollback: &mut Rollback) -> Result<Infallible, Error> {
        self.cgroups.attach(rollback)?;
        rlimits::apply(&self.limits)?;
        if let Some(netns) = &self.netns {
            netns.join()?;
        }
        namespaces::unshare_mount_ipc_uts()?;
        chroot::pivot_into(&self.paths.root, &self.binds)?;
        if let Some(null) = &self.dev_null {
            detach_stdio(null)?;
        }
        privileges::set_no_new_privs()?;
        privileges::drop_ambient_and_bounding()?;
        privileges::clear_inheritable()?;
        privileges::set_ids(self.uid, self.gid)?;
        Err(Error::Exec {
            path: self.paths.exec_in_jail.clone(),
            source: self.exec.exec(),
        })
    }
}

/// `--daemonize`: a new session, and stdio on the jail's `/dev/null`.
fn detach_stdio(null: &File) -> Result<(), Error> {
    // SAFETY: setsid has no arguments; it fails only for a process group leader (never a forked child).
    sys::check(unsafe { libc::setsid() }).map_err(|source| Error::Daemonize {
        what: "setsid",
        source,
    })?;
    for fd in 0..=2 {
        // SAFETY: `null` is open; dup2 replaces fd 0-2 atomically and clears CLOEXEC on the copy.
        sys::check(unsafe { libc::dup2(null.as_raw_fd(), fd) }).map_err(|source| {
            Error::Daemonize {
                what: "redirect stdio to /dev/null",
                source,
            }
        })?;
    }
    Ok(())
}

fn read_proc(path: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::ReadProc {
        path: PathBuf::from(path),
        source,
    })
}

/// Builds the jail described by `args` and runs the VMM in it. Returns the exit code for the jailer:
/// the VMM's when the jailer waits for it, 0 when it detached. Never returns if it execs in place.
pub fn run(args: &JailerArgs) -> Result<i32, Error> {
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotRoot);
    }
    // 1. Checks that create nothing.
    sys::close_fds_above_stdio().map_err(Error::CloseFds)?;
    let exec = exec_file::inspect(&args.exec_file)?;
    bind::check(&args.binds, &exec.name)?;
    let netns = args.netns.as_deref().map(NetNs::open).transpose()?;
    let uffd_minor = if args.userfaultfd {
        Some(dev::userfaultfd_minor()?)
    } else {
        None
    };
    let paths = JailPaths::new(&args.chroot_base, &exec.name, &args.id);
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let exec_args = ExecArgs::new(
        &paths.exec_in_jail,
        &env::vmm_argv(&exec.name, &args.vmm_args),
        &env::vmm_env(vars),
    )
    .map_err(|source| Error::Exec {
        path: paths.exec_in_jail.clone(),
        source,
    })?;
    let (mountinfo, proc_cgroup) = if args.cgroups.is_empty() {
        (String::new(), String::new())
    } else {
        (
            read_proc("/proc/self/mountinfo")?,
            read_proc("/proc/self/cgroup")?,
        )
    };

    // 2. The jail directory, the binary and /dev. From here on, a failure undoes what was made.
    let mut rollback = Rollback::new();
    chroot::create(&paths, &exec, args.uid, args.gid, &mut rollback)?;
    dev::create(&paths.root, &dev::nodes(uffd_minor), args.uid, args.gid)?;
    bind::create_mount_points(&paths.root, &args.binds)?;

    // 3. Cgroups, created and filled in; joined later.
    let rel = cgroup::relative_path(args.parent_cgroup.as_deref(), &exec.name, &args.id);
    let cgroups = cgroup::setup(
        args.cgroup_version,
        &args.cgroups,
        &rel,
        &mountinfo,
        &proc_cgroup,
        &mut rollback,
    )?;

    let dev_null = match args.daemonize {
        true => {
            let path = paths.root.join("dev/null");
            let f = File::options().read(true).write(true).open(&path);
            Some(f.map_err(|source| Error::Daemonize {
                what: "open the jail's /dev/null",
                source,
            })?)
        }
        false => None,
    };
    let entry = Entry {
        uid: args.uid,
        gid: args.gid,
        paths,
        cgroups,
        netns,
        limits: args.effective_limits(),
        dev_null,
        binds: args.binds.clone(),
        exec: exec_args,
    };

    // 4. Namespaces, pivot_root, privileges, exec.
    if args.new_pid_ns || args.daemonize {
        if args.new_pid_ns {
            namespaces::unshare_pid()?;
        }
        return supervise(&entry, &exec.name, args.daemonize, rollback);
    }
    let Err(e) = entry.enter(&mut rollback);
    // `rollback` drops here and undoes everything, through the descriptors it holds.
    Err(e)
}

/// The pid signals are forwarded to while the parent waits.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn forward_signals_to(pid: libc::pid_t) {
    CHILD.store(pid, Ordering::Relaxed);
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: an all-zero sigaction is valid; the handler only calls async-signal-safe functions.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Forks; the child enters the jail. The parent learns through a close-on-exec pipe whether the VMM
/// started (the pipe closes empty) or why not (the child writes the error), undoes the jail on failure,
/// and then waits for the VMM (propagating its exit status) or, with `--daemonize`, returns at once.
fn supervise(
    entry: &Entry,
    exec_name: &str,
    daemonize: bool,
    mut rollback: Rollback,
) -> Result<i32, Error> {
    let (read_end, write_end) = sys::pipe().map_err(|source| Error::Process {
        what: "create a pipe",
        source,
    })?;
    let pid = sys::fork().map_err(|source| Error::Process {
        what: "fork",
        source,
    })?;
    if pid == 0 {
        drop(read_end);
        // The parent owns the undo; this copy must never run it.
        rollback.disarm();
        let mut child_rollback = Rollback::new();
        let Err(e) = entry.enter(&mut child_rollback);
        child_rollback.disarm();
        let _ = File::from(write_end).write_all(e.chain().as_bytes());
        sys::exit_now(1);
    }
    drop(write_end);
    let mut message = String::new();
    let read = File::from(read_end).read_to_string(&mut message);
    if read.is_err() || !message.is_empty() {
        let _ = sys::wait_for(pid);
        drop(rollback);
        return Err(Error::Child(if message.is_empty() {
            "the jailed child failed".into()
        } else {
            message
        }));
    }
    rollback.disarm();
    // Firecracker's convention: the VMM's host pid in `<root>/<exec-file-name>.pid`.
    let pid_file = entry.paths.root.join(format!("{exec_name}.pid"));
    if let Err(e) = std::fs::write(&pid_file, format!("{pid}\n")) {
        eprintln!(
            "cairn-jailer: warning: could not write {}: {e}",
            pid_file.display()
        );
    }
    if daemonize {
        return Ok(0);
    }
    forward_signals_to(pid);
    let status = sys::wait_for(pid).map_err(|source| Error::Process {
        what: "wait for the VMM",
        source,
    })?;
    Ok(sys::exit_code(status))
}
