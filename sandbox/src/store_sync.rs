//! The sandbox side of `cairn-store`: which files make up a sandbox, and `cairn df`, `push`,
//! `pull`, `gc` and the lease taken at start (docs/storage.md).
//!
//! A pushed sandbox is its head checkpoint's chain (state, memory and disk layers with their
//! indexes, `meta.json`), its base disk image and its small config files. A pull writes them
//! into a staging directory under `$CAIRN_HOME/store/pull/`, then makes the sandbox from it as
//! `cairn fork` makes a fork ([`crate::fork::make_files`]: hard links, rebased config, the drive
//! base recorded, a network of its own when it had one), so a pulled sandbox restores exactly
//! as a fork does.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use cairn_snapshot::checkpoint::{CheckpointStore, META_FILE, STATE_FILE};
use cairn_store::gc::GcReport;
use cairn_store::lazy::LazyFiles;
use cairn_store::manifest::FileEntry;
use cairn_store::{
    DfReport, LocalFile, LocalStore, Manifest, PullReport, PushReport, Remote, SandboxFiles,
    SandboxSpec, StoreError, StoreUrl,
};

use crate::fork::snap_err;
use crate::lock::{FileLock, Mode};
use crate::registry::{Record, RegistryError, State};
use crate::sandbox::{self, io_err, Home, Liveness, Paths, SandboxError};

/// The name the base disk image travels under (and is pulled to, in the sandbox's directory).
pub const DISK_IMAGE: &str = "disk.img";

/// Small files of a sandbox's directory that travel with it (when present).
const CONFIG_FILES: [&str; 4] = ["vm.json", "cpu-config.json", "jail.json", "net.json"];

/// The configured bucket, or [`StoreError::NotConfigured`].
pub fn remote() -> Result<Remote, SandboxError> {
    let url = StoreUrl::from_env()?.ok_or(StoreError::NotConfigured)?;
    Ok(Remote::open(&url)?)
}

/// The files of checkpoint `name`'s chain in `store`, relative to the sandbox's directory.
fn chain_files(store: &CheckpointStore, head: &str) -> Result<Vec<LocalFile>, SandboxError> {
    let mut out = Vec::new();
    let chain = store
        .chain_to(head)
        .map_err(snap_err(format!("read checkpoint {head:?}")))?;
    for meta in chain {
        let dir = store
            .dir_of(&meta.name)
            .map_err(snap_err(format!("checkpoint {:?}", meta.name)))?;
        let mut names = vec![STATE_FILE.to_string(), META_FILE.to_string()];
        for layer in
            std::iter::once(&meta.memory.layer_file).chain(meta.disks.iter().map(|d| &d.layer_file))
        {
            names.push(layer.clone());
            names.push(format!("{layer}.index"));
        }
        for n in names {
            out.push(LocalFile {
                path: dir.join(&n),
                rel: format!("checkpoints/{}/{n}", meta.name),
                checkpoint: Some(meta.name.clone()),
            });
        }
    }
    Ok(out)
}

/// The sandbox's files as pushed: config files, base disk image, the head's chain.
fn push_files(paths: &Paths, head: &str) -> Result<Vec<LocalFile>, SandboxError> {
    let mut out: Vec<LocalFile> = CONFIG_FILES
        .iter()
        .map(|n| (paths.dir.join(n), n))
        .chain(std::iter::once((paths.disk.clone(), &DISK_IMAGE)))
        .filter(|(p, _)| p.is_file())
        .map(|(path, n)| LocalFile {
            path,
            rel: n.to_string(),
            checkpoint: None,
        })
        .collect();
    let store = CheckpointStore::open(&paths.checkpoints)
        .map_err(snap_err(format!("open {}", paths.checkpoints.display())))?;
    out.extend(chain_files(&store, head)?);
    Ok(out)
}

/// A lazily pulled sandbox's files that are not all here, by path, with the chunks its pull
/// recorded (`lazy.json`); none for any other sandbox.
fn lazy_chunks(paths: &Paths) -> Result<HashMap<PathBuf, FileEntry>, SandboxError> {
    let Some(lazy) = LazyFiles::load(&paths.dir)? else {
        return Ok(HashMap::new());
    };
    Ok(lazy
        .files
        .into_iter()
        .map(|f| Ok((f.path_under(&paths.dir)?, f)))
        .collect::<Result<_, StoreError>>()?)
}

/// `cairn df`: every sandbox's checkpoints (all of them) and base disk image, as chunks.
pub fn df(home: &Home) -> Result<DfReport, SandboxError> {
    let reg = home.registry()?;
    let mut sandboxes = Vec::new();
    for r in reg.list()? {
        let paths = home.paths(&r.name);
        let mut files = Vec::new();
        if paths.disk.is_file() {
            files.push(paths.disk.clone());
        }
        if let Ok(store) = CheckpointStore::open(&paths.checkpoints) {
            for meta in store.list().unwrap_or_default() {
                let Ok(dir) = store.dir_of(&meta.name) else {
                    continue;
                };
                files.push(dir.join(&meta.memory.layer_file));
                files.extend(meta.disks.iter().map(|d| dir.join(&d.layer_file)));
            }
        }
        sandboxes.push(SandboxFiles {
            name: r.name,
            files,
            known: lazy_chunks(&paths)?
                .into_iter()
                .map(|(p, e)| (p, e.content))
                .collect(),
        });
    }
    Ok(cairn_store::df(
        &LocalStore::in_home(home.root()),
        &sandboxes,
    )?)
}

/// Whether a stop (`cairn stop`, and an idle stop) pushes the sandbox by itself:
/// `CAIRN_STORE_PUSH_ON_STOP=1` with a store configured.
pub fn push_on_stop() -> bool {
    std::env::var("CAIRN_STORE_PUSH_ON_STOP").as_deref() == Ok("1")
        && std::env::var_os("CAIRN_STORE").is_some()
}

/// `cairn push NAME`: a stopped sandbox into the bucket, refused while another host holds its
/// lease. Releases this host's lease of it: a pushed sandbox may be pulled and started elsewhere.
pub fn push(home: &Home, name: &str) -> Result<PushReport, SandboxError> {
    let remote = remote()?;
    let reg = home.registry()?;
    let paths = home.paths(&reg.get(name)?.name);
    let _lock = sandbox::lock(&paths)?;
    let r = reg.get(name)?;
    if matches!(
        sandbox::liveness(&r),
        Liveness::Running | Liveness::Creating
    ) {
        return Err(SandboxError::Io {
            what: format!("sandbox {name:?} is running"),
            source: io::Error::other(format!("hint: `cairn stop {name}` first")),
        });
    }
    let head = r.head_checkpoint.clone().ok_or_else(|| SandboxError::Io {
        what: format!("sandbox {name:?} has no checkpoint to push"),
        source: io::Error::other(format!(
            "hint: `cairn start {name}` then `cairn stop {name}`"
        )),
    })?;
    let local = LocalStore::in_home(home.root());
    let host = local.host_id()?;
    // Refused while another host holds the lease: it runs the sandbox, its push is the next.
    remote.acquire_lease(name, &host, cairn_store::lease::lease_from_env())?;
    let manifest = Manifest {
        format: cairn_store::manifest::MANIFEST_FORMAT,
        sandbox: name.to_string(),
        host: host.clone(),
        pushed_at_ms: cairn_snapshot::checkpoint::now_unix_ms(),
        origin_dir: paths.dir.clone(),
        spec: SandboxSpec {
            cpus: r.cpus,
            mem_mib: r.mem_mib,
            disk_gib: r.disk_gib,
            idle_timeout: r.idle_timeout,
            head_checkpoint: head.clone(),
        },
        files: Vec::new(),
    };
    // A lazily pulled sandbox's files that are not all here are named by the chunks its pull
    // recorded (they are in the bucket already), not read: nothing is downloaded to push it.
    let lazy = lazy_chunks(&paths)?;
    let report = remote.push_with(&local, manifest, &push_files(&paths, &head)?, &lazy)?;
    remote.release_lease(name, &host)?;
    Ok(report)
}

/// `cairn pull NAME`: the bucket's sandbox NAME made here, stopped at its pushed head; `cairn
/// start` (or its first exec) restores it, fetching its memory on first touch and its disk
/// blocks on first read ([`crate::store_lazy`]).
pub fn pull(home: &Home, name: &str) -> Result<PullReport, SandboxError> {
    pull_as(home, name, true)
}

/// [`pull`]; `lazy`: leave the memory layers, disk layers and base disk image for `cairn
/// start` to fetch on first touch and first read ([`crate::store_lazy`]); otherwise fetch
/// everything now (`cairn pull --eager`).
pub fn pull_as(home: &Home, name: &str, lazy: bool) -> Result<PullReport, SandboxError> {
    sandbox::validate_name(name)?;
    let remote = remote()?;
    let mut reg = home.registry()?;
    if reg.get(name).is_ok() {
        return Err(RegistryError::NameTaken(name.to_string()).into());
    }
    let local = LocalStore::in_home(home.root());
    let staging = local.root().join("pull").join(name);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_err(format!("remove {}", staging.display())))?;
    }
    fs::create_dir_all(&staging).map_err(io_err(format!("create {}", staging.display())))?;
    let result = (|| {
        let pick: &dyn Fn(&cairn_store::manifest::FileEntry) -> bool = match lazy {
            true => &crate::store_lazy::is_lazy_entry,
            false => &|_| false,
        };
        let (manifest, report) = remote.pull_with(&local, name, &staging, pick)?;
        adopt(home, &mut reg, &manifest, &Paths::at(staging.clone()))?;
        if lazy {
            let files = manifest.files.iter().filter(|f| pick(f)).cloned().collect();
            let paths = home.paths(name);
            if let Err(e) = crate::store_lazy::record(&paths, name, files) {
                let _ = reg.remove(name);
                crate::net::remove(&paths);
                let _ = fs::remove_dir_all(&paths.dir);
                return Err(e);
            }
        }
        Ok(report)
    })();
    let _ = fs::remove_dir_all(&staging);
    result
}

/// Make sandbox `manifest.sandbox` from the pulled files at `src`, as a fork of its head.
fn adopt(
    home: &Home,
    reg: &mut crate::registry::Registry,
    manifest: &Manifest,
    src: &Paths,
) -> Result<(), SandboxError> {
    let name = &manifest.sandbox;
    let spec = &manifest.spec;
    // The pulled config names the pushing host's directory: make it name the staging one, which
    // make_files then rebases to the sandbox's own, as for a fork.
    let text = fs::read_to_string(&src.config)
        .map_err(io_err(format!("read {}", src.config.display())))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| io_err(format!("parse {}", src.config.display()))(io::Error::other(e)))?;
    let config = crate::fork::rebase_paths(config, &manifest.origin_dir, &src.dir);
    fs::write(&src.config, config.to_string())
        .map_err(io_err(format!("write {}", src.config.display())))?;
    let src_store = CheckpointStore::open(&src.checkpoints)
        .map_err(snap_err(format!("open {}", src.checkpoints.display())))?;

    let paths = home.paths(name);
    for s in [&paths.api, &paths.vsock] {
        sandbox::check_socket_path(s)?;
    }
    fs::create_dir(&paths.dir).map_err(|e| SandboxError::Io {
        what: format!(
            "create {} (hint: a directory without a sandbox is left there; remove it)",
            paths.dir.display()
        ),
        source: e,
    })?;
    let record = Record {
        cpus: spec.cpus,
        mem_mib: spec.mem_mib,
        disk_gib: spec.disk_gib,
        head_checkpoint: Some(spec.head_checkpoint.clone()),
        idle_timeout: spec.idle_timeout,
        ..paths.record(name, State::Stopped)
    };
    let made = (|| {
        let _lock = FileLock::acquire(&paths.lock, Mode::Exclusive)
            .map_err(io_err(format!("lock {}", paths.lock.display())))?;
        reg.insert(&record)?;
        crate::fork::make_files(src, &src_store, &spec.head_checkpoint, &paths)?;
        crate::net::fork_for(home, reg, src, &paths, name)?;
        Ok(())
    })();
    if let Err(e) = made {
        if reg.get(name).is_ok_and(|r| r.dir == paths.dir) {
            let _ = reg.remove(name);
            crate::net::remove(&paths);
        }
        let _ = fs::remove_dir_all(&paths.dir);
        return Err(e);
    }
    Ok(())
}

/// `cairn gc`: delete the bucket's unreferenced chunks older than `grace`.
pub fn gc(grace: Duration, dry_run: bool) -> Result<GcReport, SandboxError> {
    Ok(remote()?.gc(grace, dry_run)?)
}

/// `cairn create NAME` with a store configured: this host's lease of the name, taken before
/// anything is made (refused while another host holds it: a sandbox of that name runs there),
/// then [`create_leased`] with the outcome. Without a store, nothing (`false`).
pub fn lease_for_create(home: &Home, name: &str) -> Result<bool, SandboxError> {
    let Some(url) = StoreUrl::from_env()? else {
        return Ok(false);
    };
    // A sandbox of that name here already: the create fails on the name, and its lease (if
    // it runs) stays as it is.
    if home.registry()?.get(name).is_ok() {
        return Err(RegistryError::NameTaken(name.to_string()).into());
    }
    let host = LocalStore::in_home(home.root()).host_id()?;
    Remote::open(&url)?.acquire_lease(name, &host, cairn_store::lease::lease_from_env())?;
    Ok(true)
}

/// After a create that took the lease ([`lease_for_create`]): made, its renewer follows the
/// new VMM (one that cannot start is a warning: the sandbox is made and runs, and its lease
/// lapses unrenewed); failed, the lease is handed back.
pub fn create_leased(home: &Home, name: &str, made: bool) {
    if !made {
        release_lease(home, name);
    } else if let Err(e) = crate::lease_renew::spawn(home, name) {
        eprintln!("cairn: warning: {name}: {e}; its lease will lapse unrenewed (hint: `cairn stop {name}` and `cairn start {name}` renew it)");
    }
}

/// Before a VMM starts for sandbox `name`: with a store configured, take (or renew) this
/// host's lease of it, refused while another host holds it, and start its renewer
/// ([`crate::lease_renew`]: renews while the VMM runs, releases when it stops). Without a
/// store, nothing.
pub fn take_lease(home: &Home, name: &str) -> Result<(), SandboxError> {
    let Some(url) = StoreUrl::from_env()? else {
        return Ok(());
    };
    let host = LocalStore::in_home(home.root()).host_id()?;
    Remote::open(&url)?.acquire_lease(name, &host, cairn_store::lease::lease_from_env())?;
    crate::lease_renew::spawn(home, name)
}

/// After a stop or `rm` on this host: hand this host's lease of `name` back at once (the
/// renewer would within a second; this makes a push or start elsewhere right after work). Best
/// effort: without a store, or when the bucket cannot be reached, nothing (the lease lapses).
pub fn release_lease(home: &Home, name: &str) {
    let Ok(Some(url)) = StoreUrl::from_env() else {
        return;
    };
    let Ok(host) = LocalStore::in_home(home.root()).host_id() else {
        return;
    };
    if let Ok(remote) = Remote::open(&url) {
        let _ = remote.release_lease(name, &host);
    }
}

/// The staging directory of a pull of `name` (for tests and `doctor`).
pub fn staging_dir(home: &Home, name: &str) -> PathBuf {
    LocalStore::in_home(home.root())
        .root()
        .join("pull")
        .join(name)
}
