//! Waking, stopping, starting and removing a sandbox, each under its lifecycle lock.

use super::{
    cold_boot, console_len, create_checkpoint_at, io_err, jail, kill_vmm, liveness, spawn_vmm,
    standby, vmm_alive, vmms_in, wait_agent, wait_api, Home, Liveness, Paths, SandboxError,
};
use crate::lock::{FileLock, Mode};
use crate::registry::{Record, Registry, State};
use crate::vmm_api;
use cairn_agent::client::Client;
use cairn_agent::proto::AGENT_PORT;
use std::fs;
use std::io;
use std::time::{Duration, Instant};

/// Takes the sandbox's lifecycle lock.
pub fn lock(paths: &Paths) -> Result<FileLock, SandboxError> {
    FileLock::acquire(&paths.lock, Mode::Exclusive)
        .map_err(io_err(format!("lock {}", paths.lock.display())))
}

/// Makes sure a VMM runs (starting it from its head checkpoint if it was stopped), with the
/// lifecycle lock held by the caller. Returns the fresh row, and the agent client the wake
/// connected with (none when the VMM was running already, or was cold-booted).
pub(crate) fn ensure_running_locked(
    home: &Home,
    reg: &mut Registry,
    name: &str,
) -> Result<(Record, Option<Client>), SandboxError> {
    let r = reg.get(name)?;
    match liveness(&r) {
        // Started by a create or fork that left the guest's identity to `cairn __settle`,
        // which has not got to it yet (or died): do it here, before anything runs in it.
        Liveness::Running => {
            let agent = settle_locked(home, reg, &r)?;
            Ok((r, agent))
        }
        _ => {
            let agent = start_locked(home, reg, &r, None)?;
            Ok((reg.get(name)?, agent))
        }
    }
}

/// When [`start_locked_as`] hands the guest's side of a start over to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// The start waits for the agent and sends it the clock, network and identity.
    Now,
    /// The start returns once the VMM has restored the checkpoint and runs. The guest takes its
    /// clock, network and pending identity in [`settle_locked`]: `cairn __settle` (spawned by
    /// [`spawn_settler`]) or the first exec, cp, console or checkpoint, whichever takes the
    /// lifecycle lock first. Nothing runs in the guest before that.
    Later,
}

/// Finishes a [`Settle::Later`] start, with the lifecycle lock held: waits for the agent, then
/// sends it the clock, the network and the pending identity ([`crate::identity::after_restore`])
/// and returns its connection. Does nothing when no identity is pending or no VMM runs. If that
/// fails, the VMM is ended and the sandbox is left stopped at its head checkpoint with the
/// identity still pending, so its next start sends it.
pub(crate) fn settle_locked(
    home: &Home,
    reg: &mut Registry,
    r: &Record,
) -> Result<Option<Client>, SandboxError> {
    let paths = home.paths(&r.name);
    let Some(pid) = r.pid else {
        return Ok(None);
    };
    if crate::identity::pending(&paths).is_none() || liveness(r) != Liveness::Running {
        return Ok(None);
    }
    let mut times = crate::phase_times::PhaseTimes::start();
    let from = console_len(&paths);
    let settled = greet_restored(&paths, pid, &r.name, "starting", from, &mut times);
    times.report(&format!("{}: settle", r.name));
    settled.map(Some).inspect_err(|_| {
        kill_vmm(pid);
        let _ = reg.set_state(&r.name, State::Stopped, None);
    })
}

/// After a restore of sandbox `name`'s VMM `pid`: waits for the guest's agent (its console
/// read from `console_from` for a crash), then sends it the clock, network and identity
/// ([`crate::identity::after_restore`]) on the connection that found it, and returns that
/// connection. `doing` names the wait ("waking", "restoring"); `times` marks both steps.
pub(crate) fn greet_restored(
    paths: &Paths,
    pid: u32,
    name: &str,
    doing: &str,
    console_from: u64,
    times: &mut crate::phase_times::PhaseTimes,
) -> Result<Client, SandboxError> {
    let (_, mut agent) = wait_agent(
        paths,
        pid,
        Duration::from_secs(60),
        &format!("{doing} {name}"),
        console_from,
    )?;
    times.mark("agent");
    // Every restore of one checkpoint starts with the same RNG state: reseed it.
    crate::identity::after_restore(paths, &mut agent, name)?;
    times.mark("clock+net+identity");
    Ok(agent)
}

/// `cairn __settle NAME`: [`settle_locked`] under the lifecycle lock (nothing to do when an
/// exec got there first).
pub fn settle(home: &Home, name: &str) -> Result<(), SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let r = reg.get(name)?;
    settle_locked(home, &mut reg, &r).map(drop)
}

/// Starts `cairn __settle NAME` in the background, after a [`Settle::Later`] start whose
/// caller has released the lifecycle lock. If it cannot be started, the first exec settles.
pub(crate) fn spawn_settler(home: &Home, name: &str) {
    // For the test that the first exec settles when no settler ran.
    if std::env::var_os("CAIRN_TEST_NO_SETTLER").is_some() {
        return;
    }
    let paths = home.paths(name);
    if let Err(e) = crate::detached::spawn_cairn(
        home,
        "__settle",
        name,
        &paths.settle_log,
        "the guest's settling",
    ) {
        eprintln!("cairn: note: {name}: {e} (its first exec finishes its start)");
    }
}

/// For exec/cp/console: wakes the sandbox if needed and marks an operation in flight (the
/// returned shared lock keeps the idle watcher away until it is dropped). A wake also returns
/// its connected agent client, for the caller's first request.
pub fn enter(home: &Home, name: &str) -> Result<(Record, FileLock, Option<Client>), SandboxError> {
    let mut reg = home.registry()?;
    let r = reg.get(name)?;
    let paths = home.paths(name);
    let _l = lock(&paths)?;
    let (r, agent) = ensure_running_locked(home, &mut reg, &r.name)?;
    let active = FileLock::acquire(&paths.active, Mode::Shared)
        .map_err(io_err(format!("lock {}", paths.active.display())))?;
    // A wake has just recorded the sandbox as used.
    if agent.is_none() {
        reg.touch(name)?;
        // Found running: its watcher may have gone with a daemon that died. Not fatal.
        if r.idle_timeout > 0 {
            let _ = crate::idle::ensure_watched(home, name, &paths);
        }
    }
    Ok((r, active, agent))
}

/// Marks the sandbox used now.
pub fn touch(home: &Home, name: &str) -> Result<(), SandboxError> {
    Ok(home.registry()?.touch(name)?)
}

/// `cairn start`: a fresh VMM restored from `ckpt` (default: the head checkpoint).
pub(crate) fn start_locked(
    home: &Home,
    reg: &mut Registry,
    r: &Record,
    ckpt: Option<&str>,
) -> Result<Option<Client>, SandboxError> {
    start_locked_as(home, reg, r, ckpt, Settle::Now)
}

/// [`start_locked`], the guest's side done now or left to [`settle_locked`] (`settle`). A
/// hostname [`crate::identity::set_pending`] recorded is given to the guest, with a new
/// machine-id, in the agent request that reseeds its RNG (see [`crate::identity`]).
pub(crate) fn start_locked_as(
    home: &Home,
    reg: &mut Registry,
    r: &Record,
    ckpt: Option<&str>,
    settle: Settle,
) -> Result<Option<Client>, SandboxError> {
    let mut times = crate::phase_times::PhaseTimes::start();
    crate::store_sync::take_lease(home, &r.name)?;
    let paths = home.paths(&r.name);
    // Its standby (if any) is spared here: the wake may take it over below.
    end_vmms(&paths, r, true);
    let synced = crate::reconcile::follow_store(reg, r, &paths)?;
    times.mark("prepare");
    let Some(head) = ckpt.or(synced.as_deref()).or(r.head_checkpoint.as_deref()) else {
        return cold_start_locked(home, reg, r).map(|()| None);
    };
    let head = head.to_string();
    let start = Instant::now();
    let from = console_len(&paths);
    let vmm = jail::vmm_view(&paths, jail::load(&paths)?.is_some());
    let served = crate::store_lazy::page_server_args(home, &r.name, &paths, &vmm.dir, &head)?;
    let mut args = standby::vmm_args(&vmm);
    args.extend(served);
    let mut standby_pid = take_standby(&paths, &args);
    times.mark("standby");
    let (pid, took_standby) = loop {
        let (pid, took_standby) = match standby_pid.take() {
            Some(pid) => (pid, true),
            None => {
                let argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
                let pid = spawn_vmm(&paths, &argv)?;
                times.mark("spawn");
                (pid, false)
            }
        };
        let restored = (|| {
            if !took_standby {
                wait_api(&paths, pid, Duration::from_secs(30))?;
                times.mark("api");
            }
            vmm_api::client(&paths.api, Duration::from_secs(120)).restore_checkpoint(
                &cairn_vmm_api::config::CheckpointRestore {
                    name: head.to_string(),
                    vsock_uds_path: Some(vmm.vsock.clone()),
                    paused: None,
                },
            )?;
            times.mark("restore");
            Ok::<(), SandboxError>(())
        })();
        match restored {
            Ok(()) => break (pid, took_standby),
            // A standby that refused the restore gets no second chance: a fresh VMM does.
            Err(e) if took_standby => {
                kill_vmm(pid);
                console_note(
                    &paths,
                    &format!("its standby VMM failed the restore ({e}); starting a fresh one"),
                );
            }
            Err(e) => {
                kill_vmm(pid);
                return Err(crate::store_lazy::explain(&paths, e));
            }
        }
    };
    let agent = match settle {
        Settle::Later => None,
        Settle::Now => match greet_restored(&paths, pid, &r.name, "waking", from, &mut times) {
            Ok(agent) => Some(agent),
            Err(e) => {
                kill_vmm(pid);
                return Err(crate::store_lazy::explain(&paths, e));
            }
        },
    };
    reg.set_running_from(&r.name, pid, &head)?;
    times.mark("registry");
    let settled = if agent.is_some() {
        ""
    } else {
        ", the guest settling"
    };
    let on = if took_standby {
        format!(" on its standby VMM (pid {pid})")
    } else {
        String::new()
    };
    console_note(
        &paths,
        &format!(
            "started from checkpoint {head}{on} in {:.2} s{settled}",
            start.elapsed().as_secs_f64()
        ),
    );
    if r.idle_timeout > 0 {
        crate::idle::spawn_watcher(home, &r.name, &paths)?;
    }
    times.mark("log+idle");
    times.report(&format!("{}: start from {head}", r.name));
    Ok(agent)
}

/// A line about sandbox `paths` in its console log, not on stderr: a wake by `exec` must keep
/// the command's streams its own.
fn console_note(paths: &Paths, text: &str) {
    let name = paths.dir.file_name().unwrap_or_default().to_string_lossy();
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .append(true)
        .open(&paths.console)
    {
        let _ = std::io::Write::write_all(&mut log, format!("cairn: {name}: {text}\n").as_bytes());
    }
}

/// The sandbox's standby VMM's pid if it fits a start with `args` ([`standby::take`]); when
/// it does not, it is ended and the console log says why.
fn take_standby(paths: &Paths, args: &[std::ffi::OsString]) -> Option<u32> {
    let key = match standby::key(paths, args) {
        Ok(k) => k,
        Err(e) => {
            standby::discard(paths);
            console_note(paths, &format!("its standby VMM is not used ({e})"));
            return None;
        }
    };
    match standby::take(paths, &key) {
        Ok(pid) => Some(pid),
        Err(None) => None,
        Err(Some(why)) => {
            console_note(paths, &format!("its standby VMM is not used: {why}"));
            None
        }
    }
}

/// Ends the recorded VMM and any other `cairn-vmm` working in the sandbox's directory (one
/// left by a CLI that crashed before recording it): two VMMs must never share a disk. The
/// standby VMM is ended too, unless `keep_standby` (a start may take it over: its record is
/// left for [`standby::take`] to judge).
fn end_vmms(paths: &Paths, r: &Record, keep_standby: bool) {
    let spare = if keep_standby {
        standby::pid(paths)
    } else {
        standby::discard(paths);
        None
    };
    if let Some(pid) = r.pid.filter(|&p| Some(p) != spare) {
        kill_vmm(pid);
    }
    for pid in vmms_in(&paths.dir)
        .into_iter()
        .filter(|&p| Some(p) != spare)
    {
        kill_vmm(pid);
    }
}

/// Boots a fresh VM from the sandbox's own disk (its VMM config; the disk as the checkpoint
/// store holds it: the head's layers plus everything written since, up to the last flush).
/// Processes and memory are lost, files are kept.
pub(crate) fn cold_start_locked(
    home: &Home,
    reg: &mut Registry,
    r: &Record,
) -> Result<(), SandboxError> {
    let paths = home.paths(&r.name);
    crate::store_sync::take_lease(home, &r.name)?;
    // A boot reads the disk files directly: those still in the bucket are fetched first.
    crate::store_lazy::fetch_rest(home, &paths, "cold-booted")?;
    if !paths.config.is_file() {
        return Err(SandboxError::NoHead(r.name.clone()));
    }
    end_vmms(&paths, r, false);
    let start = Instant::now();
    let booted = cold_boot(
        reg,
        &paths,
        &r.name,
        Duration::from_secs(300),
        "cold-booting",
    );
    let (pid, _) = booted.inspect_err(|_| {
        // No VMM left half-booted, and the row says what the sandbox can do next.
        for pid in vmms_in(&paths.dir) {
            kill_vmm(pid);
        }
        let _ = reg.set_state(&r.name, State::Cold, None);
    })?;
    reg.set_state(&r.name, State::Running, Some(pid))?;
    eprintln!(
        "{}: cold-booted from its disk in {:.1} s",
        r.name,
        start.elapsed().as_secs_f64()
    );
    if r.idle_timeout > 0 {
        crate::idle::spawn_watcher(home, &r.name, &paths)?;
    }
    Ok(())
}

/// How `cairn start` got the sandbox running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// Its VMM and agent were fine: nothing done.
    AlreadyRunning,
    /// Restored from its head checkpoint (or cold-booted when it has none).
    Started,
    /// Its VMM ran but the agent did not answer: rebooted from its disk.
    Rebooted,
}

/// `cairn start NAME [--cold]`: restores the head checkpoint (cold-boots from the disk when
/// there is none, or when `cold`). A running VMM whose agent does not answer is rebooted from
/// the disk; one whose agent answers is left alone (unless `cold`).
pub fn start_with(home: &Home, name: &str, cold: bool) -> Result<Started, SandboxError> {
    let mut reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _l = lock(&paths)?;
    let r = reg.get(name)?;
    if cold {
        cold_start_locked(home, &mut reg, &r)?;
        return Ok(Started::Rebooted);
    }
    if liveness(&r) == Liveness::Running {
        if agent_answers(&paths) {
            return Ok(Started::AlreadyRunning);
        }
        eprintln!(
            "{name}: its VMM runs but the guest agent does not answer; rebooting from its disk"
        );
        cold_start_locked(home, &mut reg, &r)?;
        return Ok(Started::Rebooted);
    }
    start_locked(home, &mut reg, &r, None)?;
    Ok(Started::Started)
}

/// `cairn start NAME`: [`start_with`] without `cold`; false when it was running already.
pub fn start(home: &Home, name: &str) -> Result<bool, SandboxError> {
    Ok(start_with(home, name, false)? != Started::AlreadyRunning)
}

/// Whether the guest agent answers a ping within a few seconds.
pub fn agent_answers(paths: &Paths) -> bool {
    Client::connect_uds_timeout(&paths.vsock, AGENT_PORT, Duration::from_secs(3))
        .and_then(|mut c| c.ping())
        .is_ok()
}

/// Checkpoints and stops a running VMM, with the lifecycle lock held; returns the checkpoint.
pub(crate) fn stop_locked(reg: &mut Registry, r: &Record) -> Result<Option<String>, SandboxError> {
    let Some(pid) = r.pid.filter(|&p| vmm_alive(p)) else {
        let state = match r.head_checkpoint {
            Some(_) => State::Stopped,
            None => State::Cold,
        };
        reg.set_state(&r.name, state, None)?;
        return Ok(None);
    };
    // The guest is going away, so it is paused first: the checkpoint then copies its dirty
    // pages at once, where a running guest's would be copied beside it (after, for a VM woken
    // from a disk file system, the rest of its memory is filled in: docs/checkpoints.md).
    let api = vmm_api::client(&r.api_sock, Duration::from_secs(30));
    api.pause()?;
    let ckpt = match create_checkpoint_at(&r.api_sock, None) {
        Ok(info) => info.name,
        Err(e) => {
            // Not stopped: the guest runs on as before.
            let _ = api.resume();
            return Err(e);
        }
    };
    reg.set_head(&r.name, Some(&ckpt))?;
    // Pruning merges layers in place: a lazily pulled sandbox's wait until its files are all
    // here (its page server finishes, or a fork or `checkpoint rm` fetches them).
    if !crate::store_lazy::is_lazy(&Paths::at(r.dir.clone())) {
        crate::prune::prune_automatic(&r.api_sock, Some(&ckpt));
    }
    kill_vmm(pid);
    reg.set_state(&r.name, State::Stopped, None)?;
    super::standby::start_for(&Paths::at(r.dir.clone()), &r.name);
    Ok(Some(ckpt))
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
    // A guest still owed its identity settles first, so the checkpoint carries it (a push of
    // the sandbox does not carry `identity-pending`). If that fails, the sandbox is stopped.
    if let Err(e) = settle_locked(home, &mut reg, &r) {
        eprintln!(
            "cairn: note: {name}: its guest did not settle ({e}); stopped at its last checkpoint"
        );
        return Ok(None);
    }
    let r = reg.get(name)?;
    let stopped = stop_locked(&mut reg, &r)?;
    crate::store_sync::release_lease(home, name);
    Ok(stopped)
}

/// `cairn rm NAME`: ends the VMM and deletes the directory (and its jail's) and the row.
pub fn remove(home: &Home, name: &str) -> Result<(), SandboxError> {
    let mut reg = home.registry()?;
    let r = reg.get(name)?;
    let paths = home.paths(&r.name);
    let _l = lock(&paths)?;
    // Every VMM working there, not just the recorded one: a wake cut short (its CLI killed
    // before it recorded the new VMM) leaves one behind.
    end_vmms(&paths, &r, false);
    reg.remove(name)?;
    crate::net::remove(&paths);
    let _ = fs::remove_dir_all(jail::jail_dir(&paths));
    crate::store_sync::release_lease(home, name);
    fs::remove_dir_all(&paths.dir).or_else(|e| match e.kind() {
        io::ErrorKind::NotFound => Ok(()),
        _ => Err(io_err(format!("remove {}", paths.dir.display()))(e)),
    })
}
