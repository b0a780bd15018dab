//! Running a sandbox's VMM under `cairn-jailer` (see `docs/sandbox.md`, "Jailed VMMs").
//!
//! A sandbox created by root (unless `CAIRN_NO_JAIL=1` or `cairn create --no-jail`) is jailed for
//! its whole life: `jail.json` in its directory says so and names the host kernel (and initrd).
//! Every VMM of it then runs as `cairn-jailer --bind DIR:/sandbox --bind KERNEL:/kernel:ro ... --
//! ARGS`, so it always sees the same paths — `/sandbox/vm.json`, `/sandbox/disk.img`,
//! `/sandbox/checkpoints`, `/sandbox/api.sock`, `/kernel` — whatever the host layout: its config
//! and checkpoints hold those, and stay valid across restarts. The CLI reaches the sockets through
//! the host path of the same directory. A sandbox without `jail.json` runs unjailed, as before.
//!
//! The jailer execs the VMM in the process the CLI spawned (no `--daemonize`, no
//! `--new-pid-ns`): the recorded pid is the VMM's, and it keeps the console FIFO and log as its
//! stdin/stdout/stderr.

use super::{io_err, Paths, SandboxError};
use crate::image::ImageError;
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the sandbox directory is bound inside the jail.
pub const IN_JAIL_DIR: &str = "/sandbox";
/// Where the kernel is bound (read-only) inside the jail.
pub const IN_JAIL_KERNEL: &str = "/kernel";
/// Where the initrd is bound (read-only) inside the jail.
pub const IN_JAIL_INITRD: &str = "/initrd";
/// First uid/gid of jailed VMMs: each sandbox gets one of `JAIL_ID_BASE ..
/// JAIL_ID_BASE + JAIL_IDS`, starting from the hash of its name and unused by the home's other
/// sandboxes ([`assign`]).
pub const JAIL_ID_BASE: u32 = 900_000;
/// How many uids jailed VMMs may use.
pub const JAIL_IDS: u32 = 65_536;

/// What `jail.json` records: the sandbox runs jailed, with these host files bound in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailSpec {
    /// The kernel on the host, bound at [`IN_JAIL_KERNEL`].
    pub kernel: PathBuf,
    /// The initrd on the host, bound at [`IN_JAIL_INITRD`] (initramfs sandboxes only).
    pub initrd: Option<PathBuf>,
    /// The VMM's uid and gid.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
}

/// Whether a new sandbox is to be jailed: running as root, and not `CAIRN_NO_JAIL=1`.
pub fn wanted(no_jail_flag: bool) -> bool {
    // SAFETY: trivial getter.
    let root = unsafe { libc::geteuid() } == 0;
    root && !no_jail_flag && std::env::var("CAIRN_NO_JAIL").as_deref() != Ok("1")
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The jail id of a sandbox (`[A-Za-z0-9-]`, as the jailer wants; names may hold `.` and `_`).
pub fn jail_id(name: &str) -> String {
    format!("cairn-{:016x}", fnv1a(name))
}

/// The spec of a new jailed sandbox named `name`, whose VMM runs as `id` (uid and gid).
fn new_spec(kernel: &Path, initrd: Option<&Path>, id: u32) -> JailSpec {
    JailSpec {
        kernel: kernel.to_path_buf(),
        initrd: initrd.map(Path::to_path_buf),
        uid: id,
        gid: id,
    }
}

/// The first id from the hash of `name` on (wrapping) that is not in `used`.
fn free_id(name: &str, used: &std::collections::HashSet<u32>) -> Option<u32> {
    free_id_from((fnv1a(name) % u64::from(JAIL_IDS)) as u32, used)
}

fn free_id_from(start: u32, used: &std::collections::HashSet<u32>) -> Option<u32> {
    (0..JAIL_IDS)
        .map(|k| JAIL_ID_BASE + (start + k) % JAIL_IDS)
        .find(|id| !used.contains(id))
}

/// Makes the sandbox at `paths` a jailed one: picks a uid/gid no other sandbox of the home has
/// and writes `jail.json`, holding `<home>/jail/.ids.lock` meanwhile so that two creates or
/// forks at once cannot take the same id.
pub fn assign(
    paths: &Paths,
    kernel: &Path,
    initrd: Option<&Path>,
) -> Result<JailSpec, SandboxError> {
    let base = chroot_base(paths);
    fs::create_dir_all(&base).map_err(io_err(format!("create {}", base.display())))?;
    let lock_path = base.join(".ids.lock");
    let _lock = crate::lock::FileLock::acquire(&lock_path, crate::lock::Mode::Exclusive)
        .map_err(io_err(format!("lock {}", lock_path.display())))?;
    let mut used = std::collections::HashSet::new();
    if let Some(sandboxes) = paths.dir.parent() {
        for e in fs::read_dir(sandboxes).into_iter().flatten().flatten() {
            if e.path() == paths.dir {
                continue;
            }
            if let Ok(Some(spec)) = load(&super::Paths::new(e.path())) {
                used.insert(spec.uid);
            }
        }
    }
    let id = free_id(&sandbox_name(paths), &used).ok_or_else(|| {
        io_err("pick a jail uid")(std::io::Error::other(format!(
            "all {JAIL_IDS} jail uids from {JAIL_ID_BASE} are taken"
        )))
    })?;
    let spec = new_spec(kernel, initrd, id);
    save(paths, &spec)?;
    Ok(spec)
}

fn spec_path(paths: &Paths) -> PathBuf {
    paths.dir.join("jail.json")
}

/// The sandbox's jail spec, `None` when it runs unjailed.
pub fn load(paths: &Paths) -> Result<Option<JailSpec>, SandboxError> {
    let path = spec_path(paths);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        io_err(format!("parse {}", path.display()))(std::io::Error::other(e.to_string()))
    })
}

/// Records that the sandbox runs jailed.
pub fn save(paths: &Paths, spec: &JailSpec) -> Result<(), SandboxError> {
    let path = spec_path(paths);
    let text = serde_json::to_string(spec).map_err(|e| {
        io_err(format!("write {}", path.display()))(std::io::Error::other(e.to_string()))
    })?;
    fs::write(&path, text).map_err(io_err(format!("write {}", path.display())))
}

/// The sandbox's files as its VMM sees them: the host paths unjailed, `/sandbox/...` jailed.
pub fn vmm_view(paths: &Paths, jailed: bool) -> Paths {
    match jailed {
        true => Paths::new(PathBuf::from(IN_JAIL_DIR)),
        false => paths.clone(),
    }
}

/// The chroot base of a home's jails: `<home>/jail` (the sandbox directory is
/// `<home>/sandboxes/<name>`).
fn chroot_base(paths: &Paths) -> PathBuf {
    home_root(paths).join("jail")
}

/// The home a sandbox directory (`<home>/sandboxes/<name>`) belongs to.
fn home_root(paths: &Paths) -> PathBuf {
    paths
        .dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(&paths.dir)
        .to_path_buf()
}

fn sandbox_name(paths: &Paths) -> String {
    paths
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<home>/jail/cairn-vmm`: where the jailer makes the jail of every sandbox of the home at
/// `home` (`--chroot-base-dir <home>/jail`, the jailer adds the exec file's name).
pub fn jails_dir(home: &Path) -> PathBuf {
    home.join("jail").join("cairn-vmm")
}

/// `<home>/jail/cairn-vmm/<id>`: the jailer's directory for this sandbox.
pub fn jail_dir(paths: &Paths) -> PathBuf {
    jails_dir(&home_root(paths)).join(jail_id(&sandbox_name(paths)))
}

/// The processes whose working directory is `root` (a jailed VMM works in its jail's `/`).
pub fn pids_working_in(root: &Path) -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| works_in(root, pid))
        .collect()
}

/// Whether `pid`'s working directory is `dir` (compared by device and inode: the kernel shows a
/// chrooted process's cwd relative to its root).
fn works_in(dir: &Path, pid: u32) -> bool {
    let Ok(want) = fs::metadata(dir) else {
        return false;
    };
    fs::metadata(format!("/proc/{pid}/cwd"))
        .is_ok_and(|cwd| (cwd.dev(), cwd.ino()) == (want.dev(), want.ino()))
}

/// The jail root (the VMM's `/`) of this sandbox, seen from the host.
pub fn jail_root(paths: &Paths) -> PathBuf {
    jail_dir(paths).join("root")
}

/// Whether `pid`'s working directory is this sandbox's jail root (a jailed VMM works in its `/`).
pub fn works_in_jail(paths: &Paths, pid: u32) -> bool {
    works_in(&jail_root(paths), pid)
}

/// The `cairn-vmm` binary a sandbox runs: the static one when jailed.
pub fn vmm_binary(jailed: bool) -> Result<PathBuf, ImageError> {
    if jailed {
        binary("CAIRN_STATIC_VMM", "cairn-vmm", STATIC_BUILD)
    } else {
        crate::image::vmm_binary()
    }
}

/// The `cairn-jailer` binary jailed sandboxes start through.
pub fn jailer_binary() -> Result<PathBuf, ImageError> {
    binary("CAIRN_JAILER", "cairn-jailer", STATIC_BUILD)
}

fn binary(env: &str, name: &str, hint: &str) -> Result<PathBuf, ImageError> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(p.into());
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let rel = format!("x86_64-unknown-linux-gnu/release/{name}");
    exe_dir
        .iter()
        .flat_map(|d| d.ancestors().map(|a| a.join(&rel)).collect::<Vec<_>>())
        .chain(crate::image::lib_dir().map(|d| d.join(name)))
        .find(|p| p.is_file())
        .ok_or_else(|| ImageError::Missing {
            what: format!("{name} for jailed sandboxes"),
            hint: format!("{hint}, set {env}, or run as non-root / with CAIRN_NO_JAIL=1"),
        })
}

const STATIC_BUILD: &str = "RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
                            -p cairn-vmm -p cairn-jailer --target x86_64-unknown-linux-gnu";

/// Gives `path` (and, for `recursive`, everything under it) to `uid:gid`.
fn chown(path: &Path, uid: u32, gid: u32, recursive: bool) -> Result<(), SandboxError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(io_err(format!("chown {}", path.display())))?;
    if recursive && fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        let entries = fs::read_dir(path).map_err(io_err(format!("list {}", path.display())))?;
        for e in entries {
            let e = e.map_err(io_err(format!("list {}", path.display())))?;
            chown(&e.path(), uid, gid, true)?;
        }
    }
    Ok(())
}

/// Lets the jailed VMM create its sockets in the sandbox directory without letting it touch
/// anything else there: the directory stays root's, group `gid` may write, and the sticky bit
/// keeps everyone but root from removing or renaming files they do not own (`jail.json`,
/// `vm.json`, the locks, logs and console FIFO, all made by root here or before). The files
/// cairn opens by name are made first, so the VMM cannot plant a link in their place.
fn protect_dir(paths: &Paths, gid: u32) -> Result<(), SandboxError> {
    for f in [&paths.lock, &paths.active, &paths.idle_log, &paths.console] {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f)
            .map_err(io_err(format!("create {}", f.display())))?;
    }
    chown(&paths.dir, 0, gid, false)?;
    fs::set_permissions(&paths.dir, fs::Permissions::from_mode(0o1775))
        .map_err(io_err(format!("chmod {}", paths.dir.display())))
}

/// The command that starts the sandbox's VMM jailed, with `vmm_args` (in-jail paths). Clears the
/// last VMM's jail directory (the jailer wants it empty; its binds lived only in that VMM's mount
/// namespace, so only empty mount points are removed) and gives the VMM what it must write: its
/// sockets in the sandbox directory (see [`protect_dir`]) and the checkpoint store.
pub fn command(
    paths: &Paths,
    spec: &JailSpec,
    netns: Option<&Path>,
    vmm_args: &[&std::ffi::OsStr],
) -> Result<Command, SandboxError> {
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        return Err(SandboxError::JailNeedsRoot(sandbox_name(paths)));
    }
    let jailer = jailer_binary()?;
    let vmm = binary("CAIRN_STATIC_VMM", "cairn-vmm", STATIC_BUILD)?;
    // The jailer wants an absolute base (CAIRN_HOME may be relative).
    let base = chroot_base(paths);
    fs::create_dir_all(&base).map_err(io_err(format!("create {}", base.display())))?;
    let base = fs::canonicalize(&base).map_err(io_err(format!("resolve {}", base.display())))?;
    let dir = jail_dir(paths);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("remove {}", dir.display()))(e)),
    }
    protect_dir(paths, spec.gid)?;
    chown(&paths.checkpoints, spec.uid, spec.gid, true)?;
    let mut cmd = Command::new(jailer);
    cmd.arg("--id")
        .arg(jail_id(&sandbox_name(paths)))
        .arg("--exec-file")
        .arg(vmm)
        .arg("--uid")
        .arg(spec.uid.to_string())
        .arg("--gid")
        .arg(spec.gid.to_string())
        .arg("--chroot-base-dir")
        .arg(base)
        .arg("--bind")
        .arg(bind_arg(&paths.dir, IN_JAIL_DIR, false)?)
        .arg("--bind")
        .arg(bind_arg(&spec.kernel, IN_JAIL_KERNEL, true)?);
    if let Some(initrd) = &spec.initrd {
        cmd.arg("--bind")
            .arg(bind_arg(initrd, IN_JAIL_INITRD, true)?);
    }
    if let Some(ns) = netns {
        cmd.arg("--netns").arg(ns);
    }
    // Checkpoints that do not stop the guest write-protect its memory with userfaultfd. The
    // jailed VMM has no CAP_SYS_PTRACE for the syscall, so it opens the jail's
    // /dev/userfaultfd instead (Linux 6.1+); without the device it copies paused, as before.
    if Path::new(USERFAULTFD_DEVICE_ID).exists() {
        cmd.arg("--userfaultfd");
    }
    cmd.arg("--").args(vmm_args);
    Ok(cmd)
}

/// Where the host lists the userfaultfd misc device (present on Linux 6.1+).
const USERFAULTFD_DEVICE_ID: &str = "/sys/class/misc/userfaultfd/dev";

fn bind_arg(host: &Path, jail: &str, ro: bool) -> Result<String, SandboxError> {
    let host = fs::canonicalize(host).map_err(io_err(format!("resolve {}", host.display())))?;
    let host = host
        .to_str()
        .filter(|h| !h.contains(':'))
        .ok_or_else(|| SandboxError::JailPath(host.clone()))?
        .to_string();
    Ok(match ro {
        true => format!("{host}:{jail}:ro"),
        false => format!("{host}:{jail}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Home;

    #[test]
    fn ids_and_paths_are_stable_and_jailer_safe() {
        let home = tempfile::tempdir().unwrap();
        let paths = Home::at(home.path()).unwrap().paths("my_box.1");
        let id = jail_id("my_box.1");
        assert_eq!(id, jail_id("my_box.1"));
        assert_ne!(id, jail_id("my_box.2"));
        assert!(id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert_eq!(
            jail_root(&paths),
            home.path().join("jail/cairn-vmm").join(&id).join("root")
        );
        fs::create_dir_all(&paths.dir).unwrap();
        let spec = assign(&paths, Path::new("/k"), None).unwrap();
        assert!(spec.uid >= JAIL_ID_BASE && spec.uid == spec.gid);
        assert_eq!(load(&paths).unwrap(), Some(spec));
        let view = vmm_view(&paths, true);
        assert_eq!(view.api, Path::new("/sandbox/api.sock"));
        assert_eq!(view.checkpoints, Path::new("/sandbox/checkpoints"));
        assert_eq!(vmm_view(&paths, false).api, paths.api);
    }

    #[test]
    fn the_spec_round_trips_and_its_absence_means_unjailed() {
        let home = tempfile::tempdir().unwrap();
        let paths = Home::at(home.path()).unwrap().paths("s");
        fs::create_dir_all(&paths.dir).unwrap();
        assert_eq!(load(&paths).unwrap(), None);
        let spec = new_spec(Path::new("/k"), Some(Path::new("/i")), JAIL_ID_BASE);
        save(&paths, &spec).unwrap();
        assert_eq!(load(&paths).unwrap(), Some(spec));
        fs::write(spec_path(&paths), "{\"kernel\": 1}").unwrap();
        assert!(load(&paths).is_err());
    }

    #[test]
    fn jail_uids_never_collide() {
        let home = tempfile::tempdir().unwrap();
        let home = Home::at(home.path()).unwrap();
        let a = home.paths("a");
        fs::create_dir_all(&a.dir).unwrap();
        let first = assign(&a, Path::new("/k"), None).unwrap().uid;
        // Another sandbox already holds the uid "b" hashes to: "b" takes the next free one.
        let b = home.paths("b");
        let b_hash = free_id("b", &Default::default()).unwrap();
        let squatter = home.paths("squatter");
        fs::create_dir_all(&squatter.dir).unwrap();
        save(&squatter, &new_spec(Path::new("/k"), None, b_hash)).unwrap();
        fs::create_dir_all(&b.dir).unwrap();
        let second = assign(&b, Path::new("/k"), None).unwrap().uid;
        assert_ne!(second, b_hash);
        assert_ne!(second, first);
        assert_eq!(
            second,
            JAIL_ID_BASE + (b_hash - JAIL_ID_BASE + 1) % JAIL_IDS
        );
        // Reassigning a sandbox ignores its own old jail.json.
        assert_eq!(assign(&a, Path::new("/k"), None).unwrap().uid, first);
        let top = JAIL_ID_BASE + JAIL_IDS - 1;
        let used: std::collections::HashSet<u32> = [top].into();
        assert_eq!(free_id_from(JAIL_IDS - 1, &used), Some(JAIL_ID_BASE));
        let all: std::collections::HashSet<u32> = (JAIL_ID_BASE..JAIL_ID_BASE + JAIL_IDS).collect();
        assert_eq!(free_id_from(7, &all), None);
    }

    #[test]
    fn bind_arguments_refuse_colons() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = tmp.path().join("k");
        fs::write(&ok, "").unwrap();
        let arg = bind_arg(&ok, IN_JAIL_KERNEL, true).unwrap();
        assert!(arg.ends_with(":/kernel:ro"), "{arg}");
        let bad = tmp.path().join("a:b");
        fs::write(&bad, "").unwrap();
        assert!(matches!(
            bind_arg(&bad, IN_JAIL_KERNEL, true),
            Err(SandboxError::JailPath(_))
        ));
        assert!(bind_arg(&tmp.path().join("missing"), "/x", false).is_err());
    }
}
