//! Golden checkpoints: the image store's booted machines. The owner of `$CAIRN_HOME/golden/`.
//!
//! The first `cairn create` from an image and VM shape boots it, checkpoints it right after its
//! agent answers (checkpoint [`GOLDEN_CKPT`]: memory, disk layers, devices) and keeps a copy of
//! that checkpoint here, shared and content-keyed. Every later `create` with the same key forks
//! it as `cairn fork` does (hard links, copy-on-write memory) and restores it instead of booting.
//!
//! The key is the SHA-256 of everything the booted machine depends on: the content of the
//! kernel, initrd (initramfs sandboxes), root image (with the agent and init in it), CPU template
//! and `cairn-vmm` binary; the boot arguments; vCPUs, memory, disk size; jailed or not; and the
//! checkpoint format and cairn versions. A new image, kernel or VMM is a new key, so nothing
//! stale is ever restored; old entries are only disk space (`cairn image rm`, or remove the
//! directory).
//!
//! ```text
//! golden/<key>.lock      flock: exclusive while an entry is made, shared while one is forked
//! golden/<key>/          a stopped sandbox's files: vm.json, disk.img (link to the shared root
//!                        image), cpu-config.json, jail.json, checkpoints/ (holds GOLDEN_CKPT)
//! golden/<key>/golden.json  what it was made from; written last, so it marks the entry whole
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_snapshot::checkpoint::{CheckpointStore, META_FORMAT_VERSION};
use serde::{Deserialize, Serialize};

use crate::content_key;
use crate::image::GuestImage;
use crate::lock::{FileLock, Mode};
use crate::registry::{Record, Registry, RegistryError, State};
use crate::rootdisk;
use crate::sandbox::{self, io_err, CreateOptions, Home, Paths, SandboxError, Settle};

/// The checkpoint every golden entry holds, and the head of every sandbox created from one.
pub const GOLDEN_CKPT: &str = "golden";

/// What `golden.json` records about an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldenMeta {
    /// The full key (hex SHA-256).
    pub key: String,
    /// The kernel it booted (path at the time; the key holds its content hash).
    pub kernel: PathBuf,
    /// The root image, if any.
    pub rootfs: Option<PathBuf>,
    /// vCPUs.
    pub cpus: u8,
    /// Memory, MiB.
    pub mem_mib: u32,
    /// Disk, GiB.
    pub disk_gib: u64,
    /// Whether its VMM ran jailed.
    pub jailed: bool,
    /// When it was made (Unix ms).
    pub created_unix_ms: u64,
}

/// `$CAIRN_HOME/golden`.
pub fn golden_root(home: &Home) -> PathBuf {
    home.root().join("golden")
}

fn entry_paths(home: &Home, key: &str) -> Paths {
    Paths::at(golden_root(home).join(&key[..content_key::SHORT.min(key.len())]))
}

fn lock_path(home: &Home, key: &str) -> PathBuf {
    golden_root(home).join(format!(
        "{}.lock",
        &key[..content_key::SHORT.min(key.len())]
    ))
}

fn meta_path(p: &Paths) -> PathBuf {
    p.dir.join("golden.json")
}

/// The key of the machine `img` booted with `opts` (see the module docs).
pub fn key(
    home: &Home,
    img: &GuestImage,
    opts: &CreateOptions,
    jailed: bool,
) -> Result<String, SandboxError> {
    key_with(home, img, opts, jailed, &sandbox::jail::vmm_binary(jailed)?)
}

fn key_with(
    home: &Home,
    img: &GuestImage,
    opts: &CreateOptions,
    jailed: bool,
    vmm: &Path,
) -> Result<String, SandboxError> {
    let memo = rootdisk::keys_dir(&home.images());
    let hash = |p: &Path| {
        content_key::content_hash(p, &memo).map_err(io_err(format!("hash {}", p.display())))
    };
    let opt_hash = |p: Option<&Path>| p.map(hash).transpose().map(Option::unwrap_or_default);
    let initrd = img.rootfs.is_none().then_some(img.initrd.as_path());
    let parts: Vec<String> = vec![
        "cairn-golden-v2".into(),
        env!("CARGO_PKG_VERSION").into(),
        META_FORMAT_VERSION.to_string(),
        hash(&img.kernel)?,
        opt_hash(initrd)?,
        img.boot_args.clone(),
        opt_hash(img.rootfs.as_deref())?,
        opt_hash(img.cpu_config.as_deref())?,
        hash(vmm)?,
        opts.cpus.to_string(),
        opts.mem_mib.to_string(),
        opts.disk_gib.to_string(),
        jailed.to_string(),
        // A VM with a network interface and one without are different machines.
        with_network(opts).to_string(),
    ];
    Ok(content_key::hash_parts(parts.iter().map(|s| s.as_bytes())))
}

/// Whether a sandbox made with `opts` has a network interface (as `create` decides).
fn with_network(opts: &CreateOptions) -> bool {
    !opts.no_network && crate::net::is_root()
}

/// The key for a new sandbox, or `None` with `--cold` or when it cannot be computed (said in
/// a note: the create then boots).
pub fn key_for(home: &Home, img: &GuestImage, opts: &CreateOptions) -> Option<String> {
    if opts.cold {
        return None;
    }
    key(home, img, opts, sandbox::jail::wanted(opts.no_jail))
        .inspect_err(|e| {
            eprintln!(
                "cairn: note: no golden checkpoint: {} (booting)",
                cairn_agent::error_text(e)
            )
        })
        .ok()
}

/// The whole entry for `key`, if one exists.
pub fn lookup(home: &Home, key: &str) -> Option<GoldenMeta> {
    let text = fs::read_to_string(meta_path(&entry_paths(home, key))).ok()?;
    let meta: GoldenMeta = serde_json::from_str(&text).ok()?;
    (meta.key == key).then_some(meta)
}

/// Every whole entry.
pub fn list(home: &Home) -> Vec<(PathBuf, GoldenMeta)> {
    let mut v: Vec<_> = fs::read_dir(golden_root(home))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let text = fs::read_to_string(e.path().join("golden.json")).ok()?;
            Some((e.path(), serde_json::from_str(&text).ok()?))
        })
        .collect();
    v.sort_by_key(|(_, m): &(PathBuf, GoldenMeta)| m.created_unix_ms);
    v
}

/// After the first boot of `name` (running, agent answering): checkpoints it as
/// [`GOLDEN_CKPT`] and keeps that checkpoint as the entry for `key`. A failure here is a note,
/// not a failed create.
pub fn keep_from(home: &Home, reg: &mut Registry, name: &str, key: &str, img: &GuestImage) {
    let t = Instant::now();
    let paths = home.paths(name);
    let result = (|| {
        // Kept clean and warm: the guest has just set its identity (so the files each create
        // rewrites, `/etc/hostname`, `/etc/hosts`, `/etc/machine-id`, are in its page cache);
        // a sync now writes that and the boot's dirty data out once, so no guest restored
        // from this checkpoint reads those blocks from its disk or flushes the boot's writes
        // while its first requests wait.
        settle(&paths);
        sandbox::create_checkpoint_at(&paths.api, Some(GOLDEN_CKPT))?;
        reg.set_head(name, Some(GOLDEN_CKPT))?;
        let r = reg.get(name)?;
        let meta = GoldenMeta {
            key: key.to_string(),
            kernel: img.kernel.clone(),
            rootfs: img.rootfs.clone(),
            cpus: r.cpus,
            mem_mib: r.mem_mib,
            disk_gib: r.disk_gib,
            jailed: sandbox::jail::load(&paths)?.is_some(),
            created_unix_ms: cairn_snapshot::checkpoint::now_unix_ms(),
        };
        save(home, &meta, &paths)
    })();
    match result {
        Ok(()) => eprintln!(
            "{name}: kept as the golden checkpoint of this image and shape in {:.1} s \
             (later creates restore it)",
            t.elapsed().as_secs_f64()
        ),
        Err(e) => eprintln!(
            "cairn: note: {name}: could not keep a golden checkpoint: {} (later creates boot)",
            cairn_agent::error_text(&e)
        ),
    }
}

/// Flushes the guest's file systems (best effort: a guest that does not answer is checkpointed
/// as it is).
fn settle(paths: &Paths) {
    let synced = cairn_agent::client::Client::connect_uds_timeout(
        &paths.vsock,
        cairn_agent::proto::AGENT_PORT,
        std::time::Duration::from_secs(10),
    )
    .and_then(|mut c| c.sync());
    if let Err(e) = synced {
        eprintln!(
            "cairn: note: the guest's file systems were not synced before the golden checkpoint: {}",
            cairn_agent::error_text(&e)
        );
    }
}

/// Makes the entry for `meta.key` from checkpoint [`GOLDEN_CKPT`] of the sandbox at `src`.
fn save(home: &Home, meta: &GoldenMeta, src: &Paths) -> Result<(), SandboxError> {
    fs::create_dir_all(golden_root(home))
        .map_err(io_err(format!("create {}", golden_root(home).display())))?;
    let lock = lock_path(home, &meta.key);
    let _l = FileLock::acquire(&lock, Mode::Exclusive)
        .map_err(io_err(format!("lock {}", lock.display())))?;
    if lookup(home, &meta.key).is_some() {
        return Ok(());
    }
    let dst = entry_paths(home, &meta.key);
    // A partial entry (a crash while it was made) is made again.
    let _ = fs::remove_dir_all(&dst.dir);
    let made = (|| {
        fs::create_dir_all(&dst.dir).map_err(io_err(format!("create {}", dst.dir.display())))?;
        let store = CheckpointStore::open(&src.checkpoints).map_err(|e| SandboxError::Io {
            what: format!("open {}", src.checkpoints.display()),
            source: io::Error::other(e),
        })?;
        crate::fork::make_files(src, &store, GOLDEN_CKPT, &dst)?;
        let text = serde_json::to_string_pretty(meta).map_err(|e| SandboxError::Io {
            what: "encode golden.json".into(),
            source: io::Error::other(e),
        })?;
        let tmp = dst.dir.join("golden.json.tmp");
        fs::write(&tmp, text).map_err(io_err(format!("write {}", tmp.display())))?;
        fs::rename(&tmp, meta_path(&dst)).map_err(io_err("commit golden.json"))
    })();
    if made.is_err() {
        let _ = fs::remove_dir_all(&dst.dir);
    }
    made
}

/// Removes the entry `key` (a prefix of at least [`content_key::SHORT`] digits works too).
pub fn remove(home: &Home, key: &str) -> Result<(), SandboxError> {
    let lock = lock_path(home, key);
    let _l = FileLock::acquire(&lock, Mode::Exclusive)
        .map_err(io_err(format!("lock {}", lock.display())))?;
    let dir = entry_paths(home, key).dir;
    fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
    let _ = fs::remove_file(&lock);
    Ok(())
}

/// `cairn create NAME` when the entry for `key` exists: a fork of its checkpoint, restored,
/// then given its own identity (hostname `name`, machine-id, reseeded RNG).
pub fn create_from(
    home: &Home,
    key: &str,
    name: &str,
    opts: &CreateOptions,
) -> Result<Record, SandboxError> {
    let src = entry_paths(home, key);
    let mut reg = home.registry()?;
    if reg.get(name).is_ok() {
        return Err(RegistryError::NameTaken(name.to_string()).into());
    }
    let paths = home.paths(name);
    let golden_lock = lock_path(home, key);
    let src_lock = FileLock::acquire(&golden_lock, Mode::Shared)
        .map_err(io_err(format!("lock {}", golden_lock.display())))?;
    let store = CheckpointStore::open(&src.checkpoints).map_err(|e| SandboxError::Io {
        what: format!("open {}", src.checkpoints.display()),
        source: io::Error::other(e),
    })?;
    fs::create_dir(&paths.dir).map_err(|e| SandboxError::Io {
        what: format!(
            "create {} (hint: a directory without a sandbox is left there; remove it)",
            paths.dir.display()
        ),
        source: e,
    })?;
    let _lock = FileLock::acquire(&paths.lock, Mode::Exclusive)
        .map_err(io_err(format!("lock {}", paths.lock.display())))?;
    let record = Record {
        cpus: opts.cpus,
        mem_mib: opts.mem_mib,
        disk_gib: opts.disk_gib,
        idle_timeout: opts.idle_timeout,
        head_checkpoint: Some(GOLDEN_CKPT.to_string()),
        ..paths.record(name, State::Stopped)
    };
    let made = (|| {
        let t = Instant::now();
        let mut times = crate::phase_times::PhaseTimes::start();
        reg.insert(&record)?;
        times.mark("registry");
        crate::fork::make_files(&src, &store, GOLDEN_CKPT, &paths)?;
        times.mark("files");
        drop(src_lock);
        // The golden VM has a network interface (the key says so): this sandbox gets its own
        // namespace, address and MAC, which the agent sets in the guest after the restore.
        if with_network(opts) {
            crate::net::attach_new(home, &mut reg, &paths, name)?;
        }
        crate::identity::set_pending(&paths, name)?;
        times.mark("network");
        times.report(&format!("{name}: before the start"));
        let files = t.elapsed();
        let r = reg.get(name)?;
        // Restored and running; its clock, network and name (with a reseeded RNG, in one agent
        // request) come in `cairn __settle`, before anything runs in it.
        sandbox::start_locked_as(home, &mut reg, &r, None, Settle::Later)?;
        if std::env::var_os("CAIRN_TIMES").is_some() {
            eprintln!(
                "{name}: from the golden checkpoint: files {:.0} ms, restore {:.0} ms",
                files.as_secs_f64() * 1e3,
                (t.elapsed() - files).as_secs_f64() * 1e3
            );
        }
        Ok(reg.get(name)?)
    })();
    if made.is_err() {
        if let Ok(r) = reg.get(name) {
            if r.dir == paths.dir {
                if let Some(pid) = r.pid {
                    sandbox::kill_vmm(pid);
                }
                let _ = reg.remove(name);
            }
        }
        crate::net::remove(&paths);
        let _ = fs::remove_dir_all(sandbox::jail::jail_dir(&paths));
        let _ = fs::remove_dir_all(&paths.dir);
    }
    drop(_lock);
    if made.is_ok() {
        sandbox::spawn_settler(home, name);
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path) -> GuestImage {
        let w = |n: &str, b: &[u8]| {
            let p = dir.join(n);
            fs::write(&p, b).unwrap();
            p
        };
        GuestImage {
            kernel: w("vmlinux", b"kernel"),
            initrd: w("initrd", b"initrd"),
            boot_args: "console=ttyS0".into(),
            rootfs: Some(w("rootfs.ext4", b"root")),
            cpu_config: None,
            note: None,
        }
    }

    #[test]
    fn the_key_changes_with_every_input_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("home")).unwrap();
        let vmm = tmp.path().join("cairn-vmm");
        fs::write(&vmm, b"vmm").unwrap();
        let img = image(tmp.path());
        let opts = CreateOptions::default();
        let k = key_with(&home, &img, &opts, false, &vmm).unwrap();
        assert_eq!(
            k,
            key_with(&home, &img, &opts, false, &vmm).unwrap(),
            "stable"
        );
        let mut differ = Vec::new();
        differ.push(key_with(&home, &img, &opts, true, &vmm).unwrap());
        for o in [
            CreateOptions {
                cpus: 2,
                ..CreateOptions::default()
            },
            CreateOptions {
                mem_mib: 1024,
                ..CreateOptions::default()
            },
            CreateOptions {
                disk_gib: 10,
                ..CreateOptions::default()
            },
        ] {
            differ.push(key_with(&home, &img, &o, false, &vmm).unwrap());
        }
        // With and without a network interface (only root's sandboxes have one).
        if crate::net::is_root() {
            let no_net = CreateOptions {
                no_network: true,
                ..CreateOptions::default()
            };
            differ.push(key_with(&home, &img, &no_net, false, &vmm).unwrap());
        }
        let args = GuestImage {
            boot_args: "quiet".into(),
            ..img.clone()
        };
        differ.push(key_with(&home, &args, &opts, false, &vmm).unwrap());
        // New content under the same names: kernel, root image, VMM.
        for f in ["vmlinux", "rootfs.ext4", "cairn-vmm"] {
            std::thread::sleep(std::time::Duration::from_millis(20));
            fs::write(tmp.path().join(f), b"changed").unwrap();
            differ.push(key_with(&home, &img, &opts, false, &vmm).unwrap());
        }
        let mut all = differ.clone();
        all.push(k.clone());
        all.sort();
        all.dedup();
        assert_eq!(all.len(), differ.len() + 1, "{differ:?}");
        // Idle timeout and boot timeout do not shape the machine.
        let loose = CreateOptions {
            idle_timeout: 0,
            ..CreateOptions::default()
        };
        let last = differ.last().unwrap();
        assert_eq!(&key_with(&home, &img, &loose, false, &vmm).unwrap(), last);
        // No entry yet; a malformed one is not whole.
        assert!(lookup(&home, &k).is_none());
        let p = entry_paths(&home, &k);
        fs::create_dir_all(&p.dir).unwrap();
        fs::write(meta_path(&p), "{").unwrap();
        assert!(lookup(&home, &k).is_none());
        remove(&home, &k).unwrap();
        assert!(!p.dir.exists());
    }
}
