//! Lease renewal: while a sandbox's VMM runs on this host, a detached `cairn __lease-renew NAME`
//! keeps this host's lease of it in the bucket fresh (docs/storage.md, "Leases").
//!
//! [`crate::store_sync::take_lease`] starts it each time it takes the lease (a start, a wake, a
//! cold boot). It renews every third of the lease length (`CAIRN_LEASE_SECS`) and follows the
//! VMM the start records:
//! - the VMM stops (or the start fails, or the sandbox is removed): it releases the lease, under
//!   the sandbox's lifecycle lock so a start in flight is never robbed of it;
//! - another start replaces the VMM: it ends; the new start's renewer follows the new VMM;
//! - another host holds the lease (it lapsed while this host was cut off or paused and was
//!   taken), or it could not be renewed before it lapsed: it stops the sandbox (a checkpoint
//!   keeps this host's work, locally) and ends; further wakes are refused by the lease itself.

use std::time::{Duration, Instant};

use cairn_store::{LocalStore, Remote, StoreError, StoreUrl};

use crate::lock::{FileLock, Mode};
use crate::registry::{self, State};
use crate::sandbox::{self, io_err, Home, Paths, SandboxError};

/// How long a renewer waits for the start that spawned it to record a running VMM.
const START_GRACE: Duration = Duration::from_secs(600);

/// The renewer's pid file in the sandbox's directory (its log is `lease.log` beside it).
pub fn pid_file(paths: &Paths) -> std::path::PathBuf {
    paths.dir.join("lease-renew.pid")
}

/// Starts the renewer of `name`'s lease in a session of its own, logging to `lease.log`.
pub fn spawn(home: &Home, name: &str) -> Result<(), SandboxError> {
    let log = home.paths(name).dir.join("lease.log");
    crate::detached::spawn_cairn(home, "__lease-renew", name, &log, "the lease renewer")
}

/// What the renewer saw of the sandbox on one look.
enum Seen {
    /// A start is in flight, or the followed VMM runs.
    Going,
    /// The followed VMM was replaced by another start's: that start's renewer takes over.
    Replaced,
    /// No VMM runs (stopped, start failed, removed).
    Gone,
}

fn look(home: &Home, name: &str, followed: &mut Option<u32>, since: Instant) -> Seen {
    let r = match home.registry().and_then(|reg| Ok(reg.get(name)?)) {
        Ok(r) => r,
        Err(SandboxError::Registry(registry::RegistryError::NotFound(_))) => return Seen::Gone,
        // A busy registry: look again on the next tick.
        Err(_) => return Seen::Going,
    };
    let live = r.state == State::Running && r.pid.is_some_and(sandbox::vmm_alive);
    match *followed {
        None if live => {
            *followed = r.pid;
            Seen::Going
        }
        None if since.elapsed() < START_GRACE && lifecycle_busy(home, name) => Seen::Going,
        None => Seen::Gone,
        Some(p) if live && r.pid != Some(p) => Seen::Replaced,
        Some(_) if live => Seen::Going,
        Some(_) => Seen::Gone,
    }
}

/// Whether someone (the start that spawned this renewer) holds the lifecycle lock.
fn lifecycle_busy(home: &Home, name: &str) -> bool {
    let paths = home.paths(name);
    !matches!(
        FileLock::try_acquire(&paths.lock, Mode::Exclusive),
        Ok(Some(_))
    )
}

/// `cairn __lease-renew NAME`: renews until the VMM stops or is replaced, or the lease is lost.
pub fn run(home: &Home, name: &str) -> Result<(), SandboxError> {
    let Some(url) = StoreUrl::from_env()? else {
        return Ok(());
    };
    let paths = home.paths(name);
    let _ = std::fs::write(pid_file(&paths), std::process::id().to_string());
    let remote = Remote::open(&url)?;
    let host = LocalStore::in_home(home.root()).host_id()?;
    let ttl = cairn_store::lease::lease_from_env();
    let every = (ttl / 3).max(Duration::from_secs(1));
    let since = Instant::now();
    let (mut renewed, mut valid_until) = (Instant::now(), Instant::now() + ttl);
    let mut followed = None;
    let me = std::process::id();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        // A later start's (or create's) renewer took over: one renewer per sandbox, the newest.
        // (Following the registry alone, a renewer slow to make its first look would follow
        // the next start's VMM beside that start's own renewer.)
        let owner = std::fs::read_to_string(pid_file(&paths)).ok();
        if owner.and_then(|s| s.trim().parse::<u32>().ok()) != Some(me) {
            return Ok(());
        }
        match look(home, name, &mut followed, since) {
            Seen::Going => {}
            Seen::Replaced => return Ok(()),
            Seen::Gone => {
                if release(home, name, &remote, &host)? {
                    return Ok(());
                }
                continue;
            }
        }
        if renewed.elapsed() < every {
            continue;
        }
        match remote.acquire_lease(name, &host, ttl) {
            Ok(_) => (renewed, valid_until) = (Instant::now(), Instant::now() + ttl),
            Err(StoreError::Leased { holder, .. }) => {
                eprintln!("{name}: lease lost to host {holder}: stopping the sandbox");
                return stop_lost(home, name, followed);
            }
            Err(e) if Instant::now() >= valid_until => {
                eprintln!("{name}: lease lapsed unrenewed ({e}): stopping the sandbox");
                return stop_lost(home, name, followed);
            }
            // A transient failure: try again on the next tick, while the lease still holds.
            Err(e) => eprintln!("{name}: lease renewal failed, retrying: {e}"),
        }
    }
}

/// Under the lifecycle lock: release the lease unless a start made the sandbox run again
/// meanwhile. Whether the renewer is done (false: the lock was busy, look again).
fn release(home: &Home, name: &str, remote: &Remote, host: &str) -> Result<bool, SandboxError> {
    let paths = home.paths(name);
    // Removed (its row goes first): `rm` hands the lease back itself and may be removing the
    // directory right now, where taking the lock would make its lock file again.
    let removed = matches!(
        home.registry().and_then(|reg| Ok(reg.get(name)?)),
        Err(SandboxError::Registry(registry::RegistryError::NotFound(_)))
    );
    if removed {
        remote.release_lease(name, host)?;
        return Ok(true);
    }
    // A removed sandbox has no directory (and no lock) left: nothing can start it here.
    let _lock = if paths.dir.is_dir() {
        let lock = FileLock::try_acquire(&paths.lock, Mode::Exclusive)
            .map_err(io_err(format!("lock {}", paths.lock.display())))?;
        let Some(lock) = lock else {
            return Ok(false);
        };
        Some(lock)
    } else {
        None
    };
    let running = home
        .registry()
        .and_then(|reg| Ok(reg.get(name)?))
        .is_ok_and(|r| r.state == State::Running && r.pid.is_some_and(sandbox::vmm_alive));
    if !running && remote.release_lease(name, host)? {
        eprintln!("{name}: stopped: lease released");
    }
    Ok(true)
}

/// The lease is another host's: stop the VMM this renewer follows (with a checkpoint).
fn stop_lost(home: &Home, name: &str, followed: Option<u32>) -> Result<(), SandboxError> {
    let paths = home.paths(name);
    let _lock = sandbox::lock(&paths)?;
    let mut reg = home.registry()?;
    let r = reg.get(name)?;
    if r.state == State::Running && r.pid.is_some() && (followed.is_none() || r.pid == followed) {
        let ckpt = sandbox::stop_locked(&mut reg, &r)?;
        // Another host wakes it next: no standby VMM here.
        sandbox::standby::discard(&paths);
        eprintln!(
            "{name}: stopped at checkpoint {} (lease lost)",
            ckpt.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
