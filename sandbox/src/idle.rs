//! Auto-idle: a detached `cairn __idle-watch NAME` per running VMM checkpoints and stops it
//! after `idle_timeout` seconds with no exec/cp in flight and no activity recorded. The next
//! exec, cp or console wakes it from that checkpoint ([`crate::sandbox::enter`]).
//!
//! Activity is `last_activity` in the registry (touched when an exec/cp starts and ends); an
//! exec in flight holds the sandbox's `active` file with a shared `flock`, and the watcher
//! stops the VMM only when it can take that lock exclusively, under the lifecycle lock.
//! A watcher ends when its VMM is gone, stopped, replaced (another pid) or removed.
//!
//! When `cairn serve` runs, the daemon owns idle sleep instead: it holds `idle-daemon.lock` in
//! `CAIRN_HOME` and looks at every running sandbox once a second ([`sweep`], the same
//! [`check_once`]). Then no watcher is started ([`spawn_watcher`] checks [`daemon_watches`]),
//! and a watcher already running ends at its next look. When the daemon stops, it lets go of
//! the lock and starts a watcher for each running sandbox ([`hand_back`]); should it die
//! without that, the next exec, cp or console starts one ([`ensure_watched`]). A stop happens
//! under the sandbox's lifecycle lock and after a fresh look at the registry, so a sandbox
//! watched twice for a moment is still stopped once.

use crate::lock::{FileLock, Mode};
use crate::registry::{self, State};
use crate::sandbox::{self, Home, Paths, SandboxError};
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

/// The lock file the daemon holds (exclusively) while it owns idle sleep for the home.
pub const DAEMON_LOCK: &str = "idle-daemon.lock";

/// The lock file a watcher process holds (exclusively) for as long as it watches.
const WATCHER_LOCK: &str = "idle-watch.lock";

/// Whether a daemon owns idle sleep for `home` now (holds [`DAEMON_LOCK`]). A lock that cannot
/// be looked at counts as "no": a watcher too many is harmless, a sandbox unwatched is not.
pub fn daemon_watches(home: &Home) -> bool {
    matches!(
        FileLock::try_acquire(&home.root().join(DAEMON_LOCK), Mode::Shared),
        Ok(None)
    )
}

/// The daemon's hold on idle sleep for a home: taken at start, given up on drop.
#[derive(Debug)]
pub struct DaemonLease {
    _lock: FileLock,
}

impl DaemonLease {
    /// Takes [`DAEMON_LOCK`]; `Ok(None)` if another daemon holds it. A [`daemon_watches`] look
    /// holds it (shared) for a moment, so a failed try is retried a few times.
    pub fn take(home: &Home) -> Result<Option<DaemonLease>, SandboxError> {
        let path = home.root().join(DAEMON_LOCK);
        for _ in 0..20 {
            let got = FileLock::try_acquire(&path, Mode::Exclusive).map_err(|source| {
                SandboxError::Io {
                    what: format!("lock {}", path.display()),
                    source,
                }
            })?;
            if let Some(l) = got {
                return Ok(Some(DaemonLease { _lock: l }));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(None)
    }
}

/// Starts a watcher for `name` unless a daemon owns idle sleep or a watcher already watches
/// it: for a sandbox found running, whose watcher may have gone with a daemon that died.
pub fn ensure_watched(home: &Home, name: &str, paths: &Paths) -> Result<(), SandboxError> {
    if daemon_watches(home) {
        return Ok(());
    }
    if let Ok(None) = FileLock::try_acquire(&paths.dir.join(WATCHER_LOCK), Mode::Shared) {
        return Ok(());
    }
    spawn_watcher(home, name, paths)
}

/// Starts the watcher for `name` in a session of its own; nothing when a daemon owns idle
/// sleep for `home` (it watches every running sandbox).
pub fn spawn_watcher(home: &Home, name: &str, paths: &Paths) -> Result<(), SandboxError> {
    if daemon_watches(home) {
        return Ok(());
    }
    crate::detached::spawn_cairn(
        home,
        "__idle-watch",
        name,
        &paths.idle_log,
        "the idle watcher",
    )
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

/// What follows an idle stop, by a watcher or the daemon: a log line, and a push to the
/// store when `CAIRN_STORE_PUSH_ON_STOP` asks for one.
fn after_idle_stop(home: &Home, name: &str, ckpt: Option<&str>) {
    eprintln!(
        "{name}: idle, stopped at checkpoint {}",
        ckpt.unwrap_or("-")
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
}

/// The daemon's look at every sandbox: stops each running one that has idled for its
/// timeout (as [`check_once`]). Returns the names it stopped; a failure with one sandbox is
/// logged and the others still looked at.
pub fn sweep(home: &Home) -> Result<Vec<String>, SandboxError> {
    let now = registry::now();
    let due: Vec<_> = home
        .registry()?
        .list()?
        .into_iter()
        .filter(|r| r.state == State::Running && r.idle_timeout > 0)
        .filter(|r| now >= r.last_activity + r.idle_timeout)
        .filter_map(|r| Some((r.name, r.pid?)))
        .collect();
    let mut stopped = Vec::new();
    for (name, pid) in due {
        match check_once(home, &name, pid) {
            Ok(Verdict::Stopped(ckpt)) => {
                after_idle_stop(home, &name, ckpt.as_deref());
                stopped.push(name);
            }
            Ok(Verdict::Wait | Verdict::Done) => {}
            Err(e) => eprintln!("{name}: idle check: {}", cairn_agent::error_text(&e)),
        }
    }
    Ok(stopped)
}

/// The daemon hands idle sleep back (after its [`DaemonLease`] is dropped): a watcher for
/// every running sandbox with an idle timeout.
pub fn hand_back(home: &Home) -> Result<usize, SandboxError> {
    let mut n = 0;
    for r in home.registry()?.list()? {
        if r.state == State::Running && r.idle_timeout > 0 && r.pid.is_some() {
            spawn_watcher(home, &r.name, &home.paths(&r.name))?;
            n += 1;
        }
    }
    Ok(n)
}

/// `cairn __idle-watch NAME`: watches until the VMM is stopped or replaced, or a daemon takes
/// idle sleep over. One watcher per sandbox at a time: a second waits for the first to end.
pub fn watch(home: &Home, name: &str) -> Result<(), SandboxError> {
    let paths = home.paths(name);
    let _watching =
        FileLock::acquire(&paths.dir.join(WATCHER_LOCK), Mode::Exclusive).map_err(|source| {
            SandboxError::Io {
                what: "idle watcher lock".into(),
                source,
            }
        })?;
    let Some(pid) = home.registry()?.get(name)?.pid else {
        return Ok(());
    };
    let dir = paths.dir;
    let mut failures = 0;
    loop {
        // Removed behind our back (or the whole home deleted): nothing left to watch.
        if !dir.is_dir() {
            return Ok(());
        }
        if daemon_watches(home) {
            eprintln!("{name}: cairn serve watches idle now; this watcher ends");
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
        match check_once(home, name, pid) {
            Ok(Verdict::Wait) => failures = 0,
            Ok(Verdict::Done) => return Ok(()),
            Ok(Verdict::Stopped(ckpt)) => {
                after_idle_stop(home, name, ckpt.as_deref());
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
    fn the_daemon_lease_is_seen_and_held_once() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        assert!(!daemon_watches(&home));
        let lease = DaemonLease::take(&home).unwrap().unwrap();
        assert!(daemon_watches(&home));
        assert!(DaemonLease::take(&home).unwrap().is_none());
        // No watcher is started while a daemon watches.
        let paths = home.paths("s");
        std::fs::create_dir_all(&paths.dir).unwrap();
        spawn_watcher(&home, "s", &paths).unwrap();
        assert!(!paths.idle_log.exists());
        drop(lease);
        assert!(!daemon_watches(&home));
        // Nothing running: nothing to hand back, nothing to stop.
        assert_eq!(hand_back(&home).unwrap(), 0);
        assert!(sweep(&home).unwrap().is_empty());
    }

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
