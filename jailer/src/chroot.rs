//! The jail's directory, `<base>/<exec-file-name>/<id>/root`, and moving into it with `pivot_root`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::bind::{self, BindMount};
use crate::exec_file::ExecFile;
use crate::rollback::Rollback;
use crate::sys;
use crate::Error;

/// The paths of one jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailPaths {
    /// `<base>/<exec-file-name>/<id>`.
    pub id_dir: PathBuf,
    /// `<id_dir>/root`: the VMM's `/`.
    pub root: PathBuf,
    /// The copied binary, seen from the host.
    pub exec_on_host: PathBuf,
    /// The copied binary, seen from inside the jail: `/<exec-file-name>`.
    pub exec_in_jail: PathBuf,
}

impl JailPaths {
    /// Computes the paths; `base` is absolute and free of `..` (checked by the parser).
    pub fn new(base: &Path, exec_name: &str, id: &str) -> Self {
        let id_dir = base.join(exec_name).join(id);
        let root = id_dir.join("root");
        JailPaths {
            exec_on_host: root.join(exec_name),
            exec_in_jail: Path::new("/").join(exec_name),
            id_dir,
            root,
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| Error::Chown {
        path: path.to_owned(),
        source,
    })
}

fn set_owner(path: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    let c = sys::cstring(path).map_err(|source| Error::Chown {
        path: path.to_owned(),
        source,
    })?;
    sys::chown(&c, uid, gid).map_err(|source| Error::Chown {
        path: path.to_owned(),
        source,
    })
}

/// Creates `dir`, recording it for removal. `Ok(false)` if it already existed as a directory.
fn make_dir(dir: &Path, rollback: &mut Rollback, tree: bool) -> Result<bool, Error> {
    match fs::create_dir(dir) {
        Ok(()) => {
            let recorded = if tree {
                rollback.remove_tree(dir)
            } else {
                rollback.remove_dir(dir, true)
            };
            recorded.map_err(|source| Error::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
            set_mode(dir, 0o755)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(source) => Err(Error::CreateDir {
            path: dir.to_owned(),
            source,
        }),
    }
}

fn refuse_symlink(path: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(Error::ChrootBase {
            path: path.to_owned(),
            reason: "is a symbolic link".into(),
        }),
        _ => Ok(()),
    }
}

fn check_mount_flags(dir: &Path) -> Result<(), Error> {
    let c = sys::cstring(dir).map_err(|source| Error::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    // SAFETY: an all-zero statvfs is a valid value for the kernel to overwrite.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid path and `st` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Ok(());
    }
    let reason = if st.f_flag & libc::ST_NOEXEC != 0 {
        "is on a noexec mount, so the VMM could not be executed"
    } else if st.f_flag & libc::ST_NODEV != 0 {
        "is on a nodev mount, so /dev/kvm in the jail could not be opened"
    } else {
        return Ok(());
    };
    Err(Error::ChrootBase {
        path: dir.to_owned(),
        reason: reason.into(),
    })
}

/// Creates the jail directories (or uses them as they are, when they exist) and copies the VMM
/// in. Refuses symlinks on the way and a jail whose VMM is still running.
///
/// `<id>` and everything under it belong to the jail and are removed on undo; the base and
/// `<exec-file-name>` directories are removed only if this call created them and they are empty again.
pub fn create(
    paths: &JailPaths,
    exec: &ExecFile,
    uid: u32,
    gid: u32,
    rollback: &mut Rollback,
) -> Result<(), Error> {
    let ancestors: Vec<&Path> = paths.id_dir.ancestors().skip(1).collect();
    for dir in ancestors.into_iter().rev() {
        if dir.as_os_str().is_empty() || dir == Path::new("/") {
            continue;
        }
        if dir.exists() && !dir.is_dir() {
            return Err(Error::ChrootBase {
                path: dir.to_owned(),
                reason: "is not a directory".into(),
            });
        }
        make_dir(dir, rollback, false)?;
    }
    if let Some(parent) = paths.id_dir.parent() {
        check_mount_flags(parent)?;
    }
    // As Firecracker's jailer: a jail directory that already exists is used as it is, so an
    // orchestrator can populate `<id>/root` beforehand (hard-linked kernel and rootfs). Only
    // what this call creates is removed on undo. Symlinks are refused, so the jail cannot be
    // pointed elsewhere.
    refuse_symlink(&paths.id_dir)?;
    let created_id_dir = make_dir(&paths.id_dir, rollback, true)?;
    refuse_symlink(&paths.root)?;
    let created_root = make_dir(&paths.root, rollback, !created_id_dir)?;
    if !created_root && !paths.root.is_dir() {
        return Err(Error::ChrootBase {
            path: paths.root.clone(),
            reason: "is not a directory".into(),
        });
    }
    // The VMM owns its root, so it can create its API socket and snapshot files there.
    set_mode(&paths.root, 0o755)?;
    set_owner(&paths.root, uid, gid)?;

    // The binary stays root's: the VMM cannot change it. A copy left by an earlier jail is
    // replaced; one a live jail still runs cannot be (ETXTBSY), which is what keeps two jails
    // from sharing an id.
    refuse_symlink(&paths.exec_on_host)?;
    fs::copy(&exec.path, &paths.exec_on_host).map_err(|source| {
        if source.raw_os_error() == Some(libc::ETXTBSY) {
            Error::JailExists(paths.id_dir.clone())
        } else {
            Error::CopyExecFile {
                path: paths.exec_on_host.clone(),
                source,
            }
        }
    })?;
    set_owner(&paths.exec_on_host, 0, 0)?;
    set_mode(&paths.exec_on_host, 0o755)?;
    Ok(())
}

fn mount_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Mount { what, source }
}

/// Makes the jail root the process's `/`, in a mount namespace that must already be private to it:
/// mounts become slaves of the host's (nothing propagates back), the root is bind-mounted on itself (a
/// `pivot_root` target must be a mount point), the `--bind` mounts are made under it, then
/// `pivot_root(".", ".")` and a lazy unmount of the old root leave nothing else of the host's tree
/// reachable.
pub fn pivot_into(root: &Path, binds: &[BindMount]) -> Result<(), Error> {
    let root_c = sys::cstring(root).map_err(mount_err("name the jail root"))?;
    let slash = c"/";
    let dot = c".";
    // SAFETY: all pointers are valid NUL-terminated strings or NULL where mount(2) allows it.
    sys::check(unsafe {
        libc::mount(
            std::ptr::null(),
            slash.as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        )
    })
    .map_err(mount_err(
        "make mount propagation private (MS_SLAVE|MS_REC on /)",
    ))?;
    // SAFETY: as above.
    sys::check(unsafe {
        libc::mount(
            root_c.as_ptr(),
            root_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })
    .map_err(mount_err("bind-mount the jail root on itself"))?;
    bind::mount_all(root, binds)?;
    // SAFETY: `root_c` is a valid path.
    sys::check(unsafe { libc::chdir(root_c.as_ptr()) })
        .map_err(mount_err("chdir into the jail root"))?;
    // SAFETY: valid paths; pivot_root has no libc wrapper.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    if r != 0 {
        return Err(Error::Mount {
            what: "pivot_root into the jail",
            source: std::io::Error::last_os_error(),
        });
    }
    // The old root is now stacked on top of the new one at "/"; detach it.
    // SAFETY: valid path.
    sys::check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
        .map_err(mount_err("unmount the old root"))?;
    // SAFETY: valid path.
    sys::check(unsafe { libc::chdir(slash.as_ptr()) }).map_err(mount_err("chdir to the new /"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn computes_paths() {
        let p = JailPaths::new(Path::new("/srv/jailer"), "cairn-vmm", "vm-1");
        assert_eq!(p.id_dir, Path::new("/srv/jailer/cairn-vmm/vm-1"));
        assert_eq!(p.root, Path::new("/srv/jailer/cairn-vmm/vm-1/root"));
        assert_eq!(
            p.exec_on_host,
            Path::new("/srv/jailer/cairn-vmm/vm-1/root/cairn-vmm")
        );
        assert_eq!(p.exec_in_jail, Path::new("/cairn-vmm"));
    }

    #[test]
    fn creates_refuses_and_rolls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let exe = tmp.path().join("vmm");
        fs::write(&exe, b"binary").unwrap();
        let exec = ExecFile {
            path: exe,
            name: "vmm".into(),
        };
        let base = tmp.path().join("base/deeper");
        let paths = JailPaths::new(&base, "vmm", "a");
        // SAFETY: trivial libc getters.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        if uid != 0 {
            eprintln!("SKIP creates_refuses_and_rolls_back: not root");
            return;
        }
        {
            let mut rb = Rollback::new();
            create(&paths, &exec, uid, gid, &mut rb).unwrap();
            assert_eq!(fs::read(&paths.exec_on_host).unwrap(), b"binary");
            let mode = fs::metadata(&paths.exec_on_host)
                .unwrap()
                .permissions()
                .mode()
                & 0o7777;
            assert_eq!(mode, 0o755);
            // A jail directory that exists (an orchestrator populated it, or an earlier jail
            // left it) is used as it is, and undoing the second call leaves it all there.
            let kernel = paths.root.join("vmlinux");
            fs::write(&kernel, b"kernel").unwrap();
            let mut rb2 = Rollback::new();
            create(&paths, &exec, uid, gid, &mut rb2).unwrap();
            drop(rb2);
            assert!(paths.exec_on_host.exists());
            assert_eq!(fs::read(&kernel).unwrap(), b"kernel");
            // A symlinked root is refused.
            let other = JailPaths::new(&base, "vmm", "b");
            fs::create_dir_all(&other.id_dir).unwrap();
            std::os::unix::fs::symlink(tmp.path(), &other.root).unwrap();
            let mut rb3 = Rollback::new();
            assert!(matches!(
                create(&other, &exec, uid, gid, &mut rb3),
                Err(Error::ChrootBase { .. })
            ));
            fs::remove_file(&other.root).unwrap();
            fs::remove_dir(&other.id_dir).unwrap();
            // rb drops here: everything it created goes.
        }
        assert!(!tmp.path().join("base").exists());
        assert!(tmp.path().join("vmm").exists());
    }
}
