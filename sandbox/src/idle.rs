//! Auto-idle: a detached `cairn __idle-watch NAME` per running VMM checkpoints and stops it
//! after `idle_timeout` seconds with no exec/cp in flight and no activity recorded. The next
//! exec, cp or console wakes it from that checkpoint ([`crate::sandbox::enter`]).
//!
//! Activity is `last_activity` in the registry (touched when an exec/cp starts and ends); an
//! exec in flight holds the sandbox's `active` file with a shared `flock`, and the watcher
//! stops the VMM only when it can take that lock exclusively, under the lifecycle lock.
//! A watcher ends when its VMM is gone, stopped, replaced (another pid) or removed.

use crate::lock::{FileLock, Mode};
use crate::registry::{self, State};
use crate::sandbox::{self, Home, Paths, SandboxError};
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What one look at the sandbox decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep watching.
    Wait,
    /// The watched VMM is gone or replaced: stop watching.
    Done,
    /// Stopped after idling; the checkpoint taken.
    Stopped(Option<String>),
}

/// Starts the watcher for `name` in a session of its own.
pub fn spawn_watcher(home: &Home, name: &str, paths: &Paths) -> Result<(), SandboxError> {
    let exe = std::env::current_exe().map_err(|source| SandboxError::Io {
        what: "find the cairn executable".into(),
        source,
    })?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.idle_log)
        .map_err(|source| SandboxError::Io {
            what: format!("open {}", paths.idle_log.display()),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| SandboxError::Io {
        what: "duplicate the idle log".into(),
        source,
    })?;
    let mut cmd = Command::new(exe);
    cmd.arg("__idle-watch")
        .arg(name)
        .env("CAIRN_HOME", home.root())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| SandboxError::Io {
        what: "start the idle watcher".into(),
        source,
    })?;
    Ok(())
}

/// One look: stops the VMM `pid` if it has idled for its timeout and nothing is in flight.
pub fn check_once(home: &Home, name: &str, pid: u32) -> Result<Verdict, SandboxError> {
    let mut reg = home.registry()?;
    let r = match reg.get(name) {
        Ok(r) => r,
        Err(registry::RegistryError::NotFound(_)) => return Ok(Verdict::Done),
        Err(e) => return Err(e.into()),
    };
    if r.state != State::Running || r.pid != Some(pid) || !sandbox::vmm_alive(pid) {
        return Ok(Verdict::Done);
    }
    if r.idle_timeout == 0 || registry::now() < r.last_activity + r.idle_timeout {
        return Ok(Verdict::Wait);
    }
    let paths = home.paths(name);
    let lock_err = |source| SandboxError::Io {
        what: "idle watcher lock".into(),
        source,
    };
    let Some(_l) = FileLock::try_acquire(&paths.lock, Mode::Exclusive).map_err(lock_err)? else {
        return Ok(Verdict::Wait);
    };
    let Some(_a) = FileLock::try_acquire(&paths.active, Mode::Exclusive).map_err(lock_err)? else {
        return Ok(Verdict::Wait);
    };
    // Read again under the locks: an exec may have touched it meanwhile.
    let r = reg.get(name)?;
    if r.state != State::Running
        || r.pid != Some(pid)
        || registry::now() < r.last_activity + r.idle_timeout
    {
        return Ok(Verdict::Wait);
    }
    sandbox::stop_locked(&mut reg, &r).map(Verdict::Stopped)
}

/// Consecutive failed looks after which a watcher gives up.
const MAX_FAILURES: u32 = 60;

/// `cairn __idle-watch NAME`: watches until the VMM is stopped or replaced.
pub fn watch(home: &Home, name: &str) -> Result<(), SandboxError> {
    let Some(pid) = home.registry()?.get(name)?.pid else {
        return Ok(());
    };
    let dir = home.paths(name).dir;
    let mut failures = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        // Removed behind our back (or the whole home deleted): nothing left to watch.
        if !dir.is_dir() {
            return Ok(());
        }
        match check_once(home, name, pid) {
            Ok(Verdict::Wait) => failures = 0,
            Ok(Verdict::Done) => return Ok(()),
            Ok(Verdict::Stopped(ckpt)) => {
                eprintln!(
                    "{name}: idle, stopped at checkpoint {}",
                    ckpt.as_deref().unwrap_or("-")
                );
                if crate::store_sync::push_on_stop() {
                    match crate::store_sync::push(home, name) {
                        Ok(r) => eprintln!(
                            "{name}: pushed, {} of {} chunks uploaded",
                            r.chunks_uploaded, r.chunks
                        ),
                        Err(e) => eprintln!("{name}: push after the idle stop failed: {e}"),
                    }
                }
                return Ok(());
            }
            // A transient failure (a busy registry, a slow API) is retried on the next tick.
            Err(e) => {
                eprintln!("{name}: idle watcher: {}", cairn_agent::error_text(&e));
                failures += 1;
                if failures >= MAX_FAILURES {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Record;

    #[test]
    fn a_watcher_ends_when_its_vmm_is_gone_replaced_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        assert_eq!(check_once(&home, "nope", 1).unwrap(), Verdict::Done);
        let paths = home.paths("s");
        let mut reg = home.registry().unwrap();
        reg.insert(&Record {
            pid: Some(u32::MAX - 1),
            idle_timeout: 1,
            ..paths.record("s", State::Running)
        })
        .unwrap();
        // The recorded pid is not a live cairn-vmm.
        assert_eq!(check_once(&home, "s", u32::MAX - 1).unwrap(), Verdict::Done);
        // Another pid than the one this watcher was started for.
        assert_eq!(check_once(&home, "s", 7).unwrap(), Verdict::Done);
        reg.set_state("s", State::Stopped, None).unwrap();
        assert_eq!(check_once(&home, "s", u32::MAX - 1).unwrap(), Verdict::Done);
    }
}
