//! `cairn doctor`: finds what crashes (of the CLI, of a VMM, of the host) left behind and
//! repairs what it can, one [`Finding`] per problem saying what was done.
//!
//! Per registry row, with the sandbox's lock taken without waiting (a sandbox another cairn
//! command holds is reported and left alone):
//! - no directory: the row is removed (and a VMM still recorded for it is ended);
//! - the VMM is gone, or alive but its API does not answer (it is ended): the row becomes
//!   `stopped` at the newest checkpoint the store vouches for (its `HEAD`, else the row's head,
//!   else the newest complete one), or `cold` when there is none (`cairn start` boots it from
//!   its own disk), or is removed when the create died before writing its config;
//! - `creating` with a live VMM but no creator: `running` if its agent answers, else as above;
//! - unrecorded `cairn-vmm` processes working in the sandbox's directory are ended;
//! - with no VMM: incomplete checkpoint directories (the store's cleanup) and socket files
//!   are removed.
//!
//! Then every directory under `sandboxes/` without a row (an interrupted create or rm) is
//! removed, and so are temporary root images whose maker is gone and shared root images no
//! sandbox uses; then half-made golden entries and unfinished image builds (`doctor_images.rs`).

use crate::lock::{FileLock, Mode};
use crate::registry::{Record, Registry, State};
use crate::rootdisk;
use crate::sandbox::{self, Home, Paths, SandboxError};
use crate::vmm_api;
use cairn_agent::client::Client;
use cairn_agent::proto::AGENT_PORT;
use cairn_snapshot::checkpoint::CheckpointStore;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// One problem found, and what was (or, in a dry run, would be) done about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The sandbox concerned, if any.
    pub sandbox: Option<String>,
    /// What is wrong.
    pub found: String,
    /// What was done.
    pub did: String,
}

struct Doctor<'a> {
    home: &'a Home,
    dry_run: bool,
    findings: Vec<Finding>,
}

impl Doctor<'_> {
    fn note(&mut self, sandbox: Option<&str>, found: impl Into<String>, did: impl Into<String>) {
        let did = did.into();
        self.findings.push(Finding {
            sandbox: sandbox.map(str::to_string),
            found: found.into(),
            did: if self.dry_run {
                format!("would have: {did}")
            } else {
                did
            },
        });
    }

    fn act(&self, f: impl FnOnce()) {
        if !self.dry_run {
            f();
        }
    }
}

/// Checks every sandbox and the home directory, repairing what it can (nothing when
/// `dry_run`); returns the findings, empty when all is well.
pub fn run(home: &Home, dry_run: bool) -> Result<Vec<Finding>, SandboxError> {
    let mut d = Doctor {
        home,
        dry_run,
        findings: Vec::new(),
    };
    let mut reg = home.registry()?;
    for r in reg.list()? {
        check_row(&mut d, &mut reg, &r)?;
    }
    let names: Vec<String> = reg.list()?.into_iter().map(|r| r.name).collect();
    orphan_dirs(&mut d, &names);
    orphan_jails(&mut d, &names);
    net_leftovers(&mut d, &names);
    temp_images(&mut d);
    images::golden_leftovers(&mut d);
    images::image_build_leftovers(&mut d);
    Ok(d.findings)
}

fn check_row(d: &mut Doctor, reg: &mut Registry, r: &Record) -> Result<(), SandboxError> {
    let name = r.name.as_str();
    let paths = d.home.paths(name);
    let vmms = sandbox::vmms_in(&paths.dir);
    if !paths.dir.is_dir() {
        let recorded: Vec<u32> = r
            .pid
            .filter(|&p| sandbox::vmm_alive(p))
            .into_iter()
            .collect();
        d.note(
            Some(name),
            format!("its directory {} is missing", paths.dir.display()),
            "removed the registry row",
        );
        d.act(|| recorded.iter().for_each(|&p| sandbox::kill_vmm(p)));
        if !d.dry_run {
            reg.remove(name)?;
        }
        return Ok(());
    }
    let Ok(Some(_lock)) = FileLock::try_acquire_patiently(&paths.lock, Mode::Exclusive) else {
        d.note(
            Some(name),
            "another cairn command holds its lock",
            "left it alone (run doctor again when it is done)",
        );
        return Ok(());
    };
    // The recorded VMM, if it is one of those working in this directory.
    let recorded = r.pid.filter(|p| vmms.contains(p));
    let keep = match (r.state, recorded) {
        (State::Running, Some(pid)) if vmm_api::answers(&r.api_sock) => Some(pid),
        (State::Running, Some(pid)) => {
            d.note(
                Some(name),
                format!("its VMM (pid {pid}) does not answer its API"),
                "ended it",
            );
            d.act(|| sandbox::kill_vmm(pid));
            None
        }
        (State::Creating, Some(pid)) if agent_answers(&paths) => {
            d.note(
                Some(name),
                "its create was interrupted after the VM booted",
                "marked it running",
            );
            if !d.dry_run {
                reg.set_state(name, State::Running, Some(pid))?;
                if r.idle_timeout > 0 {
                    crate::idle::spawn_watcher(d.home, name, &paths)?;
                }
            }
            Some(pid)
        }
        (State::Creating, Some(pid)) => {
            d.note(
                Some(name),
                format!("its create was interrupted and its VM (pid {pid}) has no agent"),
                "ended the VMM",
            );
            d.act(|| sandbox::kill_vmm(pid));
            None
        }
        _ => None,
    };
    // A stopped sandbox's standby VMM (docs/sandbox.md, "Standby VMMs") is kept; one of a
    // sandbox in any other state, or whose process is not the one recorded, is dropped.
    let kept_standby =
        sandbox::standby::pid(&paths).filter(|_| keep.is_none() && r.state == State::Stopped);
    let standby = match sandbox::standby::load(&paths) {
        Some(_) if kept_standby.is_some() => kept_standby,
        Some(rec) => {
            d.note(
                Some(name),
                format!("a stale standby VMM record (pid {})", rec.pid),
                "ended its VMM and removed the record",
            );
            d.act(|| sandbox::standby::discard(&paths));
            None
        }
        None => None,
    };
    for &pid in vmms
        .iter()
        .filter(|&&p| Some(p) != keep && Some(p) != standby)
    {
        d.note(
            Some(name),
            format!("an unrecorded cairn-vmm (pid {pid}) runs in its directory"),
            "ended it",
        );
        d.act(|| sandbox::kill_vmm(pid));
    }
    if keep.is_some() {
        follow_store_head(d, reg, r, &paths)?;
        return Ok(());
    }
    if settle(d, reg, r, &paths)? {
        return Ok(());
    }
    checkpoint_leftovers(d, &paths);
    for sock in socket_files(&paths)
        .into_iter()
        .filter(|s| standby.is_none() || *s != paths.api)
    {
        d.note(
            Some(name),
            format!("stale socket file {}", sock.display()),
            "removed it",
        );
        d.act(|| {
            let _ = fs::remove_file(&sock);
        });
    }
    Ok(())
}

/// Records what a sandbox without a VMM can resume from. Returns true if the sandbox was
/// removed.
fn settle(
    d: &mut Doctor,
    reg: &mut Registry,
    r: &Record,
    paths: &Paths,
) -> Result<bool, SandboxError> {
    let name = r.name.as_str();
    let head = resume_point(paths, r.head_checkpoint.as_deref());
    let was = match r.state {
        State::Running | State::Creating => "its VMM is gone",
        State::Stopped | State::Cold => "",
    };
    match head {
        Some(h) => {
            let moved = r.head_checkpoint.as_deref() != Some(h.as_str());
            if !was.is_empty() || moved || r.state != State::Stopped || r.pid.is_some() {
                let found = match (was.is_empty(), moved) {
                    (false, _) => was.to_string(),
                    (true, true) => format!(
                        "its recorded checkpoint {:?} is not the store's latest",
                        r.head_checkpoint.as_deref().unwrap_or("(none)")
                    ),
                    (true, false) => "its row names a VMM that is gone".to_string(),
                };
                d.note(
                    Some(name),
                    found,
                    format!(
                        "marked it stopped at checkpoint {h} (`cairn start {name}` resumes it)"
                    ),
                );
                if !d.dry_run {
                    reg.set_head(name, Some(&h))?;
                    reg.set_state(name, State::Stopped, None)?;
                }
            }
        }
        None if paths.config.is_file() => {
            if r.state != State::Cold || r.pid.is_some() || r.head_checkpoint.is_some() {
                let found = if was.is_empty() {
                    "it has no checkpoint to resume from".to_string()
                } else {
                    format!("{was} and it has no checkpoint yet")
                };
                d.note(
                    Some(name),
                    found,
                    format!("marked it cold (`cairn start {name}` boots it from its disk)"),
                );
                if !d.dry_run {
                    reg.set_head(name, None)?;
                    reg.set_state(name, State::Cold, None)?;
                }
            }
        }
        None => {
            d.note(
                Some(name),
                "its create died before writing its VM config: nothing to keep",
                format!("removed it (create it again with `cairn create {name}`)"),
            );
            if !d.dry_run {
                reg.remove(name)?;
                let _ = fs::remove_dir_all(&paths.dir);
            }
            return Ok(true);
        }
    }
    Ok(false)
}

/// A running sandbox's row follows its store's head (a `checkpoint create` killed after the VMM
/// committed leaves it behind).
fn follow_store_head(
    d: &mut Doctor,
    reg: &mut Registry,
    r: &Record,
    paths: &Paths,
) -> Result<(), SandboxError> {
    let Some(h) = crate::reconcile::store_head(paths) else {
        return Ok(());
    };
    if r.head_checkpoint.as_deref() == Some(h.as_str()) {
        return Ok(());
    }
    d.note(
        Some(&r.name),
        format!(
            "its recorded checkpoint {:?} is behind its store's head {h}",
            r.head_checkpoint.as_deref().unwrap_or("(none)")
        ),
        format!("recorded {h} as its head"),
    );
    if !d.dry_run {
        reg.set_head(&r.name, Some(&h))?;
    }
    Ok(())
}

/// The checkpoint a sandbox without a VMM resumes from: the store's `HEAD` (what its VMM last
/// restored or took), else the row's head, else the newest complete checkpoint; each only if
/// it is complete.
fn resume_point(paths: &Paths, recorded: Option<&str>) -> Option<String> {
    let store = CheckpointStore::open(&paths.checkpoints).ok()?;
    let ok = |n: &str| store.get(n).is_ok();
    if let Some(h) = store.head() {
        return Some(h);
    }
    if let Some(h) = recorded.filter(|h| ok(h)) {
        return Some(h.to_string());
    }
    store.list().ok()?.pop().map(|m| m.name)
}

fn checkpoint_leftovers(d: &mut Doctor, paths: &Paths) {
    let name = paths
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let Ok(store) = CheckpointStore::open(&paths.checkpoints) else {
        return;
    };
    let incomplete: Vec<String> = fs::read_dir(&paths.checkpoints)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(".deleted-")
                || (!n.starts_with('.') && !paths.checkpoints.join(n).join("meta.json").exists())
        })
        .collect();
    if incomplete.is_empty() {
        return;
    }
    d.note(
        name.as_deref(),
        format!(
            "incomplete checkpoint directories (interrupted): {}",
            incomplete.join(", ")
        ),
        "removed them",
    );
    if !d.dry_run {
        if let Err(e) = store.cleanup_incomplete() {
            d.note(name.as_deref(), format!("cleanup failed: {e}"), "nothing");
        }
    }
}

/// The sandbox's socket files (API, vsock and the vsock listeners `vsock.sock_PORT`).
fn socket_files(paths: &Paths) -> Vec<std::path::PathBuf> {
    let vsock_prefix = paths
        .vsock
        .file_name()
        .map(|n| format!("{}_", n.to_string_lossy()))
        .unwrap_or_default();
    fs::read_dir(&paths.dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            *p == paths.api
                || *p == paths.vsock
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&vsock_prefix))
        })
        .collect()
}

fn agent_answers(paths: &Paths) -> bool {
    Client::connect_uds_timeout(&paths.vsock, AGENT_PORT, Duration::from_secs(2))
        .and_then(|mut c| c.ping())
        .is_ok()
}

fn orphan_dirs(d: &mut Doctor, names: &[String]) {
    let root = d.home.root().join("sandboxes");
    let Ok(rd) = fs::read_dir(&root) else {
        return;
    };
    for e in rd.flatten() {
        let dir_name = e.file_name().to_string_lossy().into_owned();
        if names.contains(&dir_name) || !e.path().is_dir() {
            continue;
        }
        let paths = d.home.paths(&dir_name);
        // A create in progress holds the lock before it writes the row.
        let Ok(Some(_lock)) = FileLock::try_acquire_patiently(&paths.lock, Mode::Exclusive) else {
            d.note(
                Some(&dir_name),
                "a directory without a registry row is locked (a create in progress?)",
                "left it alone",
            );
            continue;
        };
        let vmms = sandbox::vmms_in(&paths.dir);
        d.note(
            Some(&dir_name),
            format!(
                "directory {} has no registry row (an interrupted create or rm){}",
                paths.dir.display(),
                if vmms.is_empty() {
                    String::new()
                } else {
                    format!(", VMM pids {vmms:?}")
                }
            ),
            "removed it",
        );
        d.act(|| {
            vmms.iter().for_each(|&p| sandbox::kill_vmm(p));
            let _ = fs::remove_dir_all(&paths.dir);
        });
    }
}

/// Jail directories (`<home>/jail/cairn-vmm/<id>`) of sandboxes that no longer exist: left by an
/// `rm` or a failed create that was interrupted. A process still working in such a jail (a jailed
/// VMM whose sandbox is gone) is ended first.
fn orphan_jails(d: &mut Doctor, names: &[String]) {
    let base = sandbox::jail::jails_dir(d.home.root());
    let Ok(rd) = fs::read_dir(&base) else {
        return;
    };
    let ids: Vec<String> = names.iter().map(|n| sandbox::jail::jail_id(n)).collect();
    for e in rd.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if ids.contains(&id) || !e.path().is_dir() {
            continue;
        }
        let pids = sandbox::jail::pids_working_in(&e.path().join("root"));
        d.note(
            None,
            format!(
                "jail {} belongs to no sandbox{}",
                e.path().display(),
                if pids.is_empty() {
                    String::new()
                } else {
                    format!(", processes {pids:?} still run in it")
                }
            ),
            "removed it",
        );
        d.act(|| {
            pids.iter().for_each(|&p| sandbox::kill_vmm(p));
            let _ = fs::remove_dir_all(e.path());
        });
    }
}

/// Temporary root images (`*.tmp<pid>`) whose maker is gone, and shared root images no
/// sandbox links to any more (one link: the cache's own).
/// Namespaces, veths, nftables tables and DNS forwarders of this home that no sandbox owns
/// (see [`crate::net::leftovers`]).
fn net_leftovers(d: &mut Doctor, names: &[String]) {
    let mut owned = Vec::new();
    let mut with_net = Vec::new();
    for n in names {
        let paths = d.home.paths(n);
        if let Ok(Some(spec)) = crate::net::load(&paths) {
            let missing = crate::net::missing(&paths, &spec);
            if !missing.is_empty() {
                let owner = sandbox::jail::load(&paths)
                    .ok()
                    .flatten()
                    .map(|s| (s.uid, s.gid));
                let did = match d.dry_run {
                    true => Ok(()),
                    false => crate::net::ensure(&paths, owner),
                };
                let did = match did {
                    Ok(()) => "re-made it".to_string(),
                    Err(e) => format!("could not re-make it: {e}"),
                };
                d.note(
                    Some(n),
                    format!("its network lacks {}", missing.join(", ")),
                    did,
                );
            }
            owned.push(spec.id);
            with_net.push(fs::canonicalize(&paths.dir).unwrap_or(paths.dir));
        }
    }
    for l in crate::net::leftovers::find(d.home.root(), &owned, &with_net) {
        d.note(None, l.found(), "removed it");
        d.act(|| l.remove());
    }
}

fn temp_images(d: &mut Doctor) {
    let images = d.home.images();
    let Ok(rd) = fs::read_dir(&images) else {
        return;
    };
    // A create between making an image and linking it holds this lock.
    let Ok(Some(_lock)) = FileLock::try_acquire(&rootdisk::images_lock(&images), Mode::Exclusive)
    else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let pid = p
            .extension()
            .and_then(|x| x.to_str())
            .and_then(|x| x.strip_prefix("tmp"))
            .and_then(|x| x.parse::<u32>().ok());
        let unused = p.extension().is_some_and(|x| x == "ext4")
            && fs::metadata(&p).is_ok_and(|m| m.nlink() == 1);
        if unused {
            let mib = fs::metadata(&p).map_or(0, |m| (m.blocks() * 512) >> 20);
            d.note(
                None,
                format!(
                    "root image {} is used by no sandbox ({mib} MiB on disk)",
                    p.display()
                ),
                "removed it (the next create of that size makes it again in about a second)",
            );
            d.act(|| {
                let _ = fs::remove_file(&p);
            });
        }
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                d.note(
                    None,
                    format!("unfinished root image {}", p.display()),
                    "removed it",
                );
                d.act(|| {
                    let _ = fs::remove_file(&p);
                });
            }
        }
    }
}

#[path = "doctor_images.rs"]
mod images;

#[cfg(test)]
#[path = "doctor_tests.rs"]
mod tests;
