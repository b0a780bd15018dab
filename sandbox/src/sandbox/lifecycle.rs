//! Waking, stopping, starting and removing a sandbox, each under its lifecycle lock.

use super::{
    console_len, create_checkpoint_at, io_err, kill_vmm, liveness, spawn_vmm, vmm_alive,
    wait_agent, wait_api, Home, Liveness, Paths, SandboxError,
};
use crate::lock::{FileLock, Mode};
use crate::registry::{Record, Registry, State};
use crate::vmm_api;
use std::fs;
use std::io;
use std::time::{Duration, Instant};

/// Takes the sandbox's lifecycle lock.
pub fn lock(paths: &Paths) -> Result<FileLock, SandboxError> {
    FileLock::acquire(&paths.lock, Mode::Exclusive)
        .map_err(io_err(format!("lock {}", paths.lock.display())))
}

/// Makes sure a VMM runs (starting it from its head checkpoint if it was stopped), with the
/// lifecycle lock held by the caller. Returns the fresh row.
pub(crate) fn ensure_running_locked(
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
pub(crate) fn start_locked(
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
