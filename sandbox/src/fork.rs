//! `cairn fork NAME CKPT NEW`: a new, independent sandbox started from a checkpoint of another.
//!
//! Nothing is copied. The new sandbox's checkpoint store holds CKPT and its ancestors as hard
//! links ([`CheckpointStore::fork_chain`]; committed checkpoint files are immutable, and a later
//! delete in either store gives a shared file a private copy before writing), its disk image is
//! a hard link to the same read-only base (recorded as the store's drive base, since CKPT's saved
//! config names the original's path), and it gets its own config, sockets, console log and a
//! fresh active disk delta. Memory layers are mapped `MAP_PRIVATE` on restore, so memory is
//! copy-on-write too: N forks cost little more than what each of them changes.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_snapshot::checkpoint::fork::share_file;
use cairn_snapshot::checkpoint::{CheckpointStore, ForkReport};
use cairn_vmm_api::config::VmConfig;

use crate::lock::{FileLock, Mode};
use crate::registry::{Record, RegistryError, State};
use crate::sandbox::{self, io_err, jail, Home, Paths, SandboxError};

/// What [`fork`] did.
#[derive(Debug, Clone)]
pub struct Forked {
    /// The new sandbox's row (stopped unless it was started).
    pub record: Record,
    /// The checkpoints and files shared with the original.
    pub report: ForkReport,
    /// Making the new sandbox's files (links, config, registry row).
    pub fork_time: Duration,
    /// Starting its VMM from the checkpoint, when asked to.
    pub start_time: Option<Duration>,
}

/// A checkpoint-store error as a sandbox error saying what was being done.
pub(crate) fn snap_err(
    what: impl Into<String>,
) -> impl FnOnce(cairn_snapshot::Error) -> SandboxError {
    let what = what.into();
    move |e| SandboxError::Io {
        what,
        source: io::Error::other(e),
    }
}

/// `cairn fork SRC CKPT NEW`: makes sandbox `new` from checkpoint `ckpt` of sandbox `src` (which
/// may be running or stopped), then starts it when `start` is set. A fork that is not started
/// wakes on its first exec, like any stopped sandbox.
pub fn fork(
    home: &Home,
    src: &str,
    ckpt: &str,
    new: &str,
    start: bool,
) -> Result<Forked, SandboxError> {
    sandbox::validate_name(new)?;
    let t0 = Instant::now();
    let mut reg = home.registry()?;
    let from = reg.get(src)?;
    if reg.get(new).is_ok() {
        return Err(RegistryError::NameTaken(new.to_string()).into());
    }
    let src_paths = home.paths(&from.name);
    // The source's lock keeps its checkpoints where they are (no rm, no restore) meanwhile.
    let src_lock = sandbox::lock(&src_paths)?;
    // A lazily pulled source: its files are made whole first (the fork links them).
    crate::store_lazy::fetch_rest(home, &src_paths, "forked")?;
    let src_store = CheckpointStore::open(&src_paths.checkpoints).map_err(snap_err(format!(
        "open {}",
        src_paths.checkpoints.display()
    )))?;
    if !src_store.exists(ckpt) {
        return Err(SandboxError::Io {
            what: format!("sandbox {src:?} has no checkpoint {ckpt:?}"),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                format!("hint: `cairn checkpoint list {src}` lists them"),
            ),
        });
    }
    let paths = home.paths(new);
    for s in [&paths.api, &paths.vsock] {
        if s.as_os_str().len() > 107 {
            return Err(SandboxError::PathTooLong(s.clone()));
        }
    }
    fs::create_dir(&paths.dir).map_err(|e| SandboxError::Io {
        what: format!(
            "create {} (hint: a directory without a sandbox is left there; remove it)",
            paths.dir.display()
        ),
        source: e,
    })?;
    let record = Record {
        cpus: from.cpus,
        mem_mib: from.mem_mib,
        disk_gib: from.disk_gib,
        head_checkpoint: Some(ckpt.to_string()),
        idle_timeout: from.idle_timeout,
        ..paths.record(new, State::Stopped)
    };
    let made = (|| {
        let _lock = FileLock::acquire(&paths.lock, Mode::Exclusive)
            .map_err(io_err(format!("lock {}", paths.lock.display())))?;
        // The row claims the name (atomically): a racing create or fork of it stops here.
        reg.insert(&record)?;
        let report = make_files(&src_paths, &src_store, ckpt, &paths)?;
        crate::net::fork_for(home, &mut reg, &src_paths, &paths, new)?;
        // Whenever it first starts, now or later, the guest takes its own name.
        crate::identity::set_pending(&paths, new)?;
        Ok(report)
    })();
    drop(src_lock);
    let report = match made {
        Ok(r) => r,
        Err(e) => {
            if reg.get(new).is_ok_and(|r| r.dir == paths.dir) {
                let _ = reg.remove(new);
                crate::net::remove(&paths);
            }
            let _ = fs::remove_dir_all(&paths.dir);
            return Err(e);
        }
    };
    let fork_time = t0.elapsed();
    let start_time = if start {
        let t = Instant::now();
        // Restored and running; its own hostname and machine-id, in the request that sets its
        // clock and network, come in `cairn __settle` before anything runs in it.
        let paths = home.paths(new);
        let started = sandbox::lock(&paths).and_then(|_l| {
            let r = reg.get(new)?;
            sandbox::start_locked_as(home, &mut reg, &r, None, sandbox::Settle::Later)
        });
        if started.is_ok() {
            sandbox::spawn_settler(home, new);
        }
        started.inspect_err(|_| {
            eprintln!(
                "{new}: forked, but its start failed (hint: `cairn start {new}` tries again, `cairn rm {new}` removes it)"
            );
        })?;
        Some(t.elapsed())
    } else {
        None
    };
    Ok(Forked {
        record: reg.get(new)?,
        report,
        fork_time,
        start_time,
    })
}

/// The new sandbox's files: shared checkpoint chain and disk base, and its own config.
pub(crate) fn make_files(
    src: &Paths,
    src_store: &CheckpointStore,
    ckpt: &str,
    dst: &Paths,
) -> Result<ForkReport, SandboxError> {
    let text = fs::read_to_string(&src.config)
        .map_err(io_err(format!("read {}", src.config.display())))?;
    let parse_err = |e| SandboxError::Io {
        what: format!("parse {}", src.config.display()),
        source: io::Error::other(e),
    };
    let config: serde_json::Value = serde_json::from_str(&text).map_err(parse_err)?;
    let config: VmConfig =
        serde_json::from_value(rebase_paths(config, &src.dir, &dst.dir)).map_err(parse_err)?;
    // A jailed original's config names in-jail paths (`/sandbox/...`), which mean the fork's own
    // directory inside the fork's jail: the fork runs jailed too, as its own uid.
    let jail_spec = jail::load(src)?;
    if let Some(spec) = &jail_spec {
        jail::assign(dst, &spec.kernel, spec.initrd.as_deref())?;
    }
    let store = CheckpointStore::open(&dst.checkpoints)
        .map_err(snap_err(format!("create {}", dst.checkpoints.display())))?;
    let mut report = src_store
        .fork_chain(ckpt, &store)
        .map_err(snap_err(format!("fork checkpoint {ckpt:?}")))?;
    // Where its disk stands until it first runs: a cold boot before any start (a fork made
    // with --no-start, a pulled sandbox) boots CKPT's disk, not the bare base image.
    store
        .set_head(Some(ckpt))
        .map_err(snap_err(format!("record the head {ckpt:?}")))?;
    // Each drive image inside the original's directory: the fork's own link to the same base.
    for d in &config.drives {
        let (id, path) = (&d.drive_id, &d.path_on_host);
        let inside = match jail_spec {
            Some(_) => Path::new(jail::IN_JAIL_DIR),
            None => dst.dir.as_path(),
        };
        let Ok(rel) = path.strip_prefix(inside) else {
            continue;
        };
        let from = src.dir.join(rel);
        let shared = share_file(&from, &dst.dir.join(rel))
            .map_err(snap_err(format!("share the disk {}", from.display())))?;
        match shared {
            cairn_snapshot::checkpoint::fork::Shared::Linked(b) => {
                report.files_linked += 1;
                report.bytes_linked += b;
            }
            cairn_snapshot::checkpoint::fork::Shared::Copied(b) => {
                report.files_copied += 1;
                report.bytes_copied += b;
            }
        }
        store
            .set_drive_base(id, path)
            .map_err(snap_err(format!("record the base of drive {id}")))?;
    }
    if src.cpu_config.exists() {
        fs::copy(&src.cpu_config, &dst.cpu_config)
            .map_err(io_err(format!("copy {}", src.cpu_config.display())))?;
    }
    let what = format!("write {}", dst.config.display());
    let text = serde_json::to_vec(&config).map_err(|e| io_err(what.clone())(e.into()))?;
    fs::write(&dst.config, text).map_err(io_err(what))?;
    Ok(report)
}

/// `config` with every string that is a path inside `from` moved to the same place in `to`
/// (drives, sockets, checkpoint dir); the kernel and other shared files keep their paths.
pub fn rebase_paths(config: serde_json::Value, from: &Path, to: &Path) -> serde_json::Value {
    use serde_json::Value;
    match config {
        Value::String(s) => match Path::new(&s).strip_prefix(from) {
            Ok(rel) if !from.as_os_str().is_empty() => {
                Value::String(to.join(rel).to_string_lossy().into_owned())
            }
            _ => Value::String(s),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(|v| rebase_paths(v, from, to)).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, rebase_paths(v, from, to)))
                .collect(),
        ),
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_the_original_move_and_others_stay() {
        let cfg = serde_json::json!({
            "boot-source": {"kernel_image_path": "/cache/vmlinux", "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 1},
            "drives": [{"drive_id": "disk", "path_on_host": "/h/sandboxes/a/disk.img"}],
            "vsock": {"uds_path": "/h/sandboxes/a/vsock.sock"},
            "cairn": {"checkpoint_dir": "/h/sandboxes/a/checkpoints"},
            "other": "/h/sandboxes/ab/x",
        });
        let out = rebase_paths(
            cfg,
            Path::new("/h/sandboxes/a"),
            Path::new("/h/sandboxes/b"),
        );
        assert_eq!(out["drives"][0]["path_on_host"], "/h/sandboxes/b/disk.img");
        assert_eq!(out["vsock"]["uds_path"], "/h/sandboxes/b/vsock.sock");
        assert_eq!(out["cairn"]["checkpoint_dir"], "/h/sandboxes/b/checkpoints");
        assert_eq!(out["boot-source"]["kernel_image_path"], "/cache/vmlinux");
        assert_eq!(out["other"], "/h/sandboxes/ab/x", "a sibling is not inside");
        assert_eq!(out["machine-config"]["vcpu_count"], 1);
    }

    #[test]
    fn bad_forks_are_refused_and_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path()).unwrap();
        let err = fork(&home, "nope", "c", "new", false).unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        assert!(matches!(
            fork(&home, "nope", "c", "-bad", false),
            Err(SandboxError::InvalidName(_))
        ));
        // A stopped sandbox without that checkpoint.
        let paths = home.paths("src");
        fs::create_dir_all(&paths.checkpoints).unwrap();
        let rec = paths.record("src", State::Stopped);
        home.registry().unwrap().insert(&rec).unwrap();
        let err = fork(&home, "src", "c1", "new", false).unwrap_err();
        let text = cairn_agent::error_text(&err);
        assert!(
            text.contains("no checkpoint \"c1\"") && text.contains("hint"),
            "{text}"
        );
        assert!(matches!(
            fork(&home, "src", "c1", "src", false),
            Err(SandboxError::Registry(RegistryError::NameTaken(_)))
        ));
        assert_eq!(home.registry().unwrap().list().unwrap().len(), 1);
        assert!(!home.paths("new").dir.exists());
    }

    /// A stopped sandbox "src" with one committed checkpoint "c1" (memory, state, one disk
    /// layer) over a sparse disk, as `cairn stop` leaves it; no KVM needed.
    fn stopped_source(home: &Home) -> Paths {
        use cairn_snapshot::checkpoint::{
            disk_layer_file, now_unix_ms, CheckpointMeta, DiskMeta, MemoryMeta, MEM_LAYER_FILE,
            META_FORMAT_VERSION, STATE_FILE,
        };
        use cairn_snapshot::disk::LayeredDisk;
        use cairn_snapshot::memory::{write_layer_from_slice_to, PageIndex};
        let paths = home.paths("src");
        fs::create_dir_all(&paths.checkpoints).unwrap();
        fs::File::create(&paths.disk)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let cfg = serde_json::json!({
            "boot-source": {"kernel_image_path": "/cache/vmlinux"},
            "drives": [{"drive_id": "disk", "path_on_host": paths.disk, "is_root_device": false, "is_read_only": false}],
            "vsock": {"guest_cid": 3, "uds_path": paths.vsock},
            "cairn": {"checkpoint_dir": paths.checkpoints},
        });
        fs::write(&paths.config, cfg.to_string()).unwrap();
        let store = CheckpointStore::open(&paths.checkpoints).unwrap();
        let dir = store.create_dir_for("c1").unwrap();
        fs::write(dir.join(STATE_FILE), b"state").unwrap();
        let mem = vec![7u8; 16 * 4096];
        write_layer_from_slice_to(&dir.join(MEM_LAYER_FILE), &PageIndex::full(16), &mem).unwrap();
        let mut disk = LayeredDisk::open(&paths.disk, &[], paths.dir.join("active")).unwrap();
        disk.write_at(0, b"written before c1").unwrap();
        disk.checkpoint(&dir.join(disk_layer_file("disk"))).unwrap();
        store
            .commit(&CheckpointMeta {
                name: "c1".into(),
                parent: None,
                created_unix_ms: now_unix_ms(),
                format_version: META_FORMAT_VERSION,
                cpu_template: None,
                memory: MemoryMeta {
                    dirty_mib: 0.0625,
                    layer_file: MEM_LAYER_FILE.into(),
                },
                disks: vec![DiskMeta {
                    drive_id: "disk".into(),
                    delta_mib: 0.004,
                    layer_file: disk_layer_file("disk"),
                }],
                pause_ms: 1.0,
                write_ms: 1.0,
                total_ms: 0.0,
                files: Default::default(),
            })
            .unwrap();
        let rec = Record {
            cpus: 1,
            mem_mib: 256,
            disk_gib: 1,
            head_checkpoint: Some("c1".into()),
            idle_timeout: 7,
            ..paths.record("src", State::Stopped)
        };
        home.registry().unwrap().insert(&rec).unwrap();
        paths
    }

    #[test]
    fn a_stopped_fork_shares_the_files_and_stands_alone() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path()).unwrap();
        let src = stopped_source(&home);
        let f = fork(&home, "src", "c1", "new", false).unwrap();
        assert_eq!(f.report.checkpoints, ["c1"]);
        assert_eq!((f.report.files_linked, f.report.files_copied), (6, 0));
        assert!(f.start_time.is_none());
        let r = &f.record;
        assert_eq!(
            (r.state, r.head_checkpoint.as_deref()),
            (State::Stopped, Some("c1"))
        );
        assert_eq!(
            (r.cpus, r.mem_mib, r.disk_gib, r.idle_timeout),
            (1, 256, 1, 7)
        );
        let paths = home.paths("new");
        let cfg: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&paths.config).unwrap()).unwrap();
        assert_eq!(
            cfg["drives"][0]["path_on_host"],
            paths.disk.to_str().unwrap()
        );
        assert_eq!(cfg["vsock"]["uds_path"], paths.vsock.to_str().unwrap());
        assert_eq!(cfg["boot-source"]["kernel_image_path"], "/cache/vmlinux");
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&paths.disk), ino(&src.disk), "the disk base is shared");
        let store = CheckpointStore::open(&paths.checkpoints).unwrap();
        assert_eq!(store.drive_base("disk").unwrap(), Some(paths.disk.clone()));
        assert_eq!(
            store.head().as_deref(),
            Some("c1"),
            "a cold boot boots c1's disk"
        );
        // The original goes; the fork's chain and disk still read back whole.
        crate::sandbox::remove(&home, "src").unwrap();
        assert!(!src.dir.exists());
        let layers = store.disk_layers("c1", "disk").unwrap();
        let disk = cairn_snapshot::disk::LayeredDisk::open(
            &paths.disk,
            &layers,
            paths.dir.join("active-check"),
        )
        .unwrap();
        let mut buf = [0u8; 17];
        disk.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"written before c1");
        let mut mem = vec![0u8; 16 * 4096];
        store
            .memory_chain("c1")
            .unwrap()
            .read_into(&mut mem)
            .unwrap();
        assert!(mem.iter().all(|&b| b == 7));
        crate::sandbox::remove(&home, "new").unwrap();
        assert_eq!(
            fs::read_dir(home.root().join("sandboxes")).unwrap().count(),
            0
        );
    }
}
