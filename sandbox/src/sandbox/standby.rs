//! Standby VMMs: a stopped sandbox's next `cairn-vmm`, started ahead so that a wake only
//! sends it the restore (see `docs/sandbox.md`, "Standby VMMs").
//!
//! When a sandbox stops (idle sleep, `cairn stop`), cairn starts its next VMM at once, as a wake
//! would (the same binary and arguments, under the jailer in the same jail, in the same network
//! namespace, with the same console), and leaves it waiting: API socket up, KVM VM made and its
//! first memory slot's kernel wait paid (`vmm/src/vstate/prewarm.rs`), no guest memory. Its pid
//! and what it was started for are in `standby.json`. The next start (a wake by exec, a
//! `cairn start`, a restore of a stopped sandbox to any checkpoint) takes it over with
//! [`take`] and sends only `PUT /checkpoints/restore`; spawning, the jail's set-up, the API
//! socket's wait and the VM's creation are off the wake's path.
//!
//! A standby holds nothing of the sandbox's state: the checkpoint is named, and read, only
//! when the wake restores it. What can go stale is its surroundings, so [`take`] uses it only
//! when all still hold: the process is the one recorded (pid and start time), works in this
//! sandbox's directory or jail, and its API socket accepts; it was started with
//! the arguments this wake would pass, from the same binaries (size and mtime), with the same
//! jail and network specs and sandbox directory; its network namespace, console log and
//! console FIFO are the ones the sandbox has now. Anything else and it is ended, and the wake
//! spawns a fresh VMM as it did before standbys. A restore the standby refuses is retried once
//! on a fresh VMM.
//!
//! Cost and switches: a standby is one process with a KVM VM and no guest memory (its RSS is
//! in docs/benchmarks.md). `CAIRN_STANDBY=0` (or `off`) starts none; `CAIRN_STANDBY_MAX` (default
//! [`DEFAULT_MAX`]) caps how many one home keeps, the oldest going first. Sandboxes whose memory
//! is still served from the bucket (lazy, docs/storage.md) and rootless ones get none.

use super::{io_err, jail, kill_vmm, spawn_vmm, vmm_alive, wait_api, Paths, SandboxError};
use crate::lock::{FileLock, Mode};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The record of a sandbox's standby, in its directory.
const FILE: &str = "standby.json";

/// How many standbys a home keeps when `CAIRN_STANDBY_MAX` is unset.
pub const DEFAULT_MAX: usize = 16;

/// How long a standby's API may take to come up before it is given up.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// What `standby.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The standby VMM's pid.
    pub pid: u32,
    /// Its start time (`/proc/PID/stat`, clock ticks since boot): a reused pid is not it.
    pub start_ticks: u64,
    /// What it was started for ([`key`]).
    pub key: String,
    /// When it was started (Unix seconds): over the cap, the oldest goes first.
    pub made: u64,
}

/// Whether stops start standbys (`CAIRN_STANDBY` is not `0`, `off` or `false`) and the cap
/// is above zero.
pub fn enabled() -> bool {
    let on = !matches!(
        std::env::var("CAIRN_STANDBY").as_deref(),
        Ok("0") | Ok("off") | Ok("false")
    );
    on && max() > 0
}

/// `CAIRN_STANDBY_MAX`, else [`DEFAULT_MAX`]; an unreadable value counts as the default.
pub fn max() -> usize {
    std::env::var("CAIRN_STANDBY_MAX")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX)
}

fn path(paths: &Paths) -> PathBuf {
    paths.dir.join(FILE)
}

/// The sandbox's standby record, if there is a readable one.
pub fn load(paths: &Paths) -> Option<Record> {
    let text = fs::read_to_string(path(paths)).ok()?;
    serde_json::from_str(&text).ok()
}

fn forget(paths: &Paths) {
    let _ = fs::remove_file(path(paths));
}

/// The arguments a start from checkpoint storage passes the VMM, lazy-store arguments aside.
pub(crate) fn vmm_args(vmm: &Paths) -> Vec<OsString> {
    vec![
        "--api-sock".into(),
        vmm.api.clone().into_os_string(),
        "--checkpoint-dir".into(),
        vmm.checkpoints.clone().into_os_string(),
    ]
}

/// What a VMM spawned now with `args` for the sandbox at `paths` is started from: the
/// arguments, the binaries, the jail and network specs and the sandbox directory. A standby is
/// taken only when its key equals the wake's.
pub(crate) fn key(paths: &Paths, args: &[OsString]) -> Result<String, SandboxError> {
    let spec = jail::load(paths)?;
    let mut parts = vec![format!("args={args:?}")];
    let vmm = jail::vmm_binary(spec.is_some())?;
    parts.push(format!("vmm={}", file_id(&vmm)));
    if spec.is_some() {
        let jailer = jail::jailer_binary()?;
        parts.push(format!("jailer={}", file_id(&jailer)));
    }
    parts.push(format!("jail={spec:?}"));
    parts.push(format!("net={:?}", crate::net::load(paths)?));
    // The directory by identity only: its mtime moves with every file made in it.
    let dir = fs::metadata(&paths.dir).map_err(io_err(format!("stat {}", paths.dir.display())))?;
    parts.push(format!("dir={}:{}", dir.dev(), dir.ino()));
    Ok(parts.join(";"))
}

/// A file's path and version ([`crate::content_key::version_tag`]), as one string.
fn file_id(p: &Path) -> String {
    match fs::metadata(p) {
        Ok(m) => format!("{}:{}", p.display(), crate::content_key::version_tag(&m)),
        Err(_) => format!("{}:missing", p.display()),
    }
}

/// `/proc/PID/stat`'s start time (field 22).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Fields after the command name start at field 3 (the state).
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the recorded process is still the standby started for this sandbox: alive, the
/// same start time, working in the sandbox's directory (unjailed) or jail root (jailed).
fn is_ours(paths: &Paths, rec: &Record) -> bool {
    vmm_alive(rec.pid)
        && start_ticks(rec.pid) == Some(rec.start_ticks)
        && (same_file(&format!("/proc/{}/cwd", rec.pid), &paths.dir)
            || jail::works_in_jail(paths, rec.pid))
}

/// Whether the path `proc` (a `/proc/PID/...` link) and `file` are one file (device and inode).
fn same_file(proc: &str, file: &Path) -> bool {
    match (fs::metadata(proc), fs::metadata(file)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// The recorded standby's pid, if that process is still the sandbox's standby (not checked:
/// whether it fits a wake; see [`take`]).
pub fn pid(paths: &Paths) -> Option<u32> {
    load(paths).filter(|r| is_ours(paths, r)).map(|r| r.pid)
}

/// Why the standby `rec` cannot serve a wake whose [`key`] is `key`; `None` when it can.
fn unfit(paths: &Paths, rec: &Record, key: &str) -> Option<String> {
    if !is_ours(paths, rec) {
        return Some("its process is gone".into());
    }
    if rec.key != key {
        return Some("the sandbox changed since it was started".into());
    }
    let pid = rec.pid;
    if !same_file(&format!("/proc/{pid}/fd/1"), &paths.console)
        || !same_file(&format!("/proc/{pid}/fd/0"), &paths.console_in)
    {
        return Some("its console log or input was replaced".into());
    }
    let jailed = jail::load(paths).ok().flatten().is_some();
    if jailed
        && !same_file(
            &format!("/proc/{pid}/root{}", jail::IN_JAIL_DIR),
            &paths.dir,
        )
    {
        return Some("its jail binds another sandbox directory".into());
    }
    if let Ok(Some(net)) = crate::net::load(paths) {
        if !same_file(&format!("/proc/{pid}/ns/net"), &net.netns_path()) {
            return Some("its network namespace was re-made".into());
        }
    }
    // A connect only: the kernel accepts it without waking the VMM. Whether the VMM is still
    // unstarted is checked by the restore itself (a started one refuses it, and the start
    // falls back to a fresh VMM); asking first cost a round trip to an idle process.
    if !crate::vmm_api::answers(&paths.api) {
        return Some("its API socket does not answer".into());
    }
    None
}

/// Takes the sandbox's standby over for a wake whose [`key`] is `key`, with the lifecycle lock
/// held: its pid when it fits (the record is then gone: the caller owns the VMM), else `None`
/// after ending it (when it is this sandbox's) and forgetting it. `why` gets the reason a
/// standby was not taken.
pub(crate) fn take(paths: &Paths, key: &str) -> Result<u32, Option<String>> {
    let Some(rec) = load(paths) else {
        return Err(None);
    };
    forget(paths);
    match unfit(paths, &rec, key) {
        None => Ok(rec.pid),
        Some(why) => {
            if is_ours(paths, &rec) {
                kill_vmm(rec.pid);
            }
            Err(Some(why))
        }
    }
}

/// Ends the sandbox's standby, if it has one, and forgets it (stop, cold start, rm, doctor).
pub fn discard(paths: &Paths) {
    if let Some(rec) = load(paths) {
        if is_ours(paths, &rec) {
            kill_vmm(rec.pid);
        }
    }
    forget(paths);
}

/// Starts the standby of the stopped sandbox at `paths`, with its lifecycle lock held, when
/// standbys are on and it can have one (not lazy, not rootless). Never fails the stop: a
/// standby that cannot be started is said on stderr, and the next wake spawns its VMM.
pub(crate) fn start_for(paths: &Paths, name: &str) {
    discard(paths);
    if !enabled() || crate::store_lazy::is_lazy(paths) {
        return;
    }
    if crate::net::load(paths)
        .ok()
        .flatten()
        .is_some_and(|n| n.rootless)
    {
        return;
    }
    if let Err(e) = spawn_standby(paths) {
        eprintln!("cairn: note: {name}: no standby VMM ({e}); its next wake starts one");
    }
}

fn spawn_standby(paths: &Paths) -> Result<(), SandboxError> {
    make_room(paths);
    let jailed = jail::load(paths)?.is_some();
    let args = vmm_args(&jail::vmm_view(paths, jailed));
    let key = key(paths, &args)?;
    let argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let pid = spawn_vmm(paths, &argv)?;
    let ready = wait_api(paths, pid, API_TIMEOUT).and_then(|()| {
        let rec = Record {
            pid,
            start_ticks: start_ticks(pid).ok_or_else(|| {
                io_err(format!("read /proc/{pid}/stat"))(std::io::Error::from(
                    std::io::ErrorKind::NotFound,
                ))
            })?,
            key,
            made: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let text = serde_json::to_vec(&rec)
            .map_err(|e| io_err("encode standby.json")(std::io::Error::other(e)))?;
        let tmp = paths.dir.join(".standby.json.tmp");
        fs::write(&tmp, text).map_err(io_err(format!("write {}", tmp.display())))?;
        fs::rename(&tmp, path(paths)).map_err(io_err(format!("rename {}", tmp.display())))
    });
    ready.inspect_err(|_| kill_vmm(pid))
}

/// Ends the oldest standbys of the home until one more fits under the cap. A sandbox whose
/// lifecycle lock is held (a wake may be taking its standby) is passed over.
fn make_room(paths: &Paths) {
    let Some(sandboxes) = paths.dir.parent() else {
        return;
    };
    let mut others: Vec<(u64, Paths)> = fs::read_dir(sandboxes)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| Paths::at(e.path()))
        .filter(|p| p.dir != paths.dir)
        .filter_map(|p| Some((load(&p)?.made, p)))
        .collect();
    others.sort_by_key(|(made, _)| *made);
    let cap = max().saturating_sub(1);
    let mut excess = others.len().saturating_sub(cap);
    for (_, p) in others {
        if excess == 0 {
            break;
        }
        if let Ok(Some(_l)) = FileLock::try_acquire(&p.lock, Mode::Exclusive) {
            discard(&p);
            excess -= 1;
        }
    }
}

/// Memory the standby process holds, in KiB (`VmRSS`), for `cairn ls` and the benchmarks.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Home;

    #[test]
    fn a_record_of_a_process_that_is_not_ours_is_forgotten_and_the_process_spared() {
        let home = tempfile::tempdir().unwrap();
        let paths = Home::at(home.path()).unwrap().paths("s");
        fs::create_dir_all(&paths.dir).unwrap();
        assert_eq!(take(&paths, "k"), Err(None));
        // A record naming this test process (alive, but no VMM of this sandbox).
        let me = std::process::id();
        let rec = Record {
            pid: me,
            start_ticks: start_ticks(me).unwrap(),
            key: "k".into(),
            made: 1,
        };
        fs::write(path(&paths), serde_json::to_vec(&rec).unwrap()).unwrap();
        assert_eq!(load(&paths), Some(rec));
        assert_eq!(pid(&paths), None);
        assert_eq!(
            take(&paths, "k"),
            Err(Some("its process is gone".to_string()))
        );
        assert!(!path(&paths).exists());
        // Still running: it was not ended.
        assert!(Path::new(&format!("/proc/{me}")).exists());
        fs::write(path(&paths), "{\"pid\": 1}").unwrap();
        assert_eq!(load(&paths), None);
        discard(&paths);
        assert!(!path(&paths).exists());
    }

    #[test]
    fn start_ticks_read_this_process() {
        let me = std::process::id();
        let t = start_ticks(me).unwrap();
        assert_eq!(start_ticks(me), Some(t));
        assert_eq!(start_ticks(u32::MAX - 1), None);
        assert!(rss_kib(me).unwrap() > 0);
    }

    #[test]
    fn the_key_follows_the_arguments_and_the_directory() {
        let home = tempfile::tempdir().unwrap();
        let paths = Home::at(home.path()).unwrap().paths("s");
        fs::create_dir_all(&paths.dir).unwrap();
        let args = vmm_args(&paths);
        let Ok(k) = key(&paths, &args) else {
            // No cairn-vmm binary found on this machine: nothing to compare.
            return;
        };
        assert_eq!(key(&paths, &args).unwrap(), k);
        // Files made in the directory (the record itself, sockets, logs) do not change it.
        fs::write(paths.dir.join(FILE), "{}").unwrap();
        assert_eq!(key(&paths, &args).unwrap(), k);
        let mut lazy = args.clone();
        lazy.push("--page-server".into());
        assert_ne!(key(&paths, &lazy).unwrap(), k);
        // A network spec or a jail spec written since changes it too.
        jail::save(
            &paths,
            &jail::JailSpec {
                kernel: "/k".into(),
                initrd: None,
                uid: jail::JAIL_ID_BASE,
                gid: jail::JAIL_ID_BASE,
            },
        )
        .unwrap();
        assert!(key(&paths, &args).map_or(true, |j| j != k));
    }

    #[test]
    fn the_switches() {
        // Read only: the environment is shared by the test threads.
        if std::env::var_os("CAIRN_STANDBY").is_none()
            && std::env::var_os("CAIRN_STANDBY_MAX").is_none()
        {
            assert!(enabled());
            assert_eq!(max(), DEFAULT_MAX);
        }
    }
}
