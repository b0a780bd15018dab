//! `--bind HOST:JAIL[:ro]`: host files and directories made visible inside the jail.
//!
//! The jailer makes the bind mounts itself, in the jail's new mount namespace, after the jail root has
//! been bind-mounted on itself and before `pivot_root`. They exist only in that namespace: the host never
//! sees them, they vanish with the VMM, and bind mounts made by anyone else after the jailer started (on a
//! host whose `/` is a private mount) would never reach the jail, which is why the jailer does it.
//!
//! Every bind gets `nosuid` and `nodev` (and keeps `noexec` if its source mount had it); `:ro` makes it
//! read-only. The mount points are created (root-owned) when the jail directory is built, so they are
//! removed with it on a failed start.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::sys;
use crate::Error;

/// One `--bind HOST:JAIL[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The absolute host path (a directory or a regular file).
    pub host: PathBuf,
    /// The absolute path inside the jail.
    pub jail: PathBuf,
    /// `:ro`: mounted read-only.
    pub read_only: bool,
}

fn absolute_plain(what: &str, path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err(format!("{what} path must be absolute"));
    }
    if path.contains('\0') {
        return Err(format!("{what} path contains a NUL byte"));
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(format!(
            "{what} path must not contain '.' or '..' components"
        ));
    }
    Ok(PathBuf::from(path))
}

/// Parses one `--bind` value (pure: looks at the string only). Paths cannot contain `:`.
pub fn parse(value: &str) -> Result<BindMount, String> {
    let parts: Vec<&str> = value.split(':').collect();
    let read_only = match parts.as_slice() {
        [_, _] => false,
        [_, _, "ro"] => true,
        [_, _, "rw"] => false,
        [_, _, other] => return Err(format!("unknown option '{other}' (only ro or rw)")),
        _ => return Err("expected HOST:JAIL or HOST:JAIL:ro (paths cannot contain ':')".into()),
    };
    let host = absolute_plain("host", parts[0])?;
    let jail = absolute_plain("jail", parts[1])?;
    let first = jail.components().nth(1);
    match first {
        None => return Err("jail path must not be / (the jail root itself)".into()),
        Some(Component::Normal(c)) if c == "dev" => {
            return Err("jail path must not be /dev or inside it (the jail's private /dev)".into())
        }
        _ => {}
    }
    Ok(BindMount {
        host,
        jail,
        read_only,
    })
}

/// Checks a set of binds against each other: no jail path may equal or contain another's.
pub fn check_overlaps(binds: &[BindMount]) -> Result<(), String> {
    for (i, a) in binds.iter().enumerate() {
        for b in &binds[i + 1..] {
            if a.jail.starts_with(&b.jail) || b.jail.starts_with(&a.jail) {
                return Err(format!(
                    "jail paths {} and {} overlap",
                    a.jail.display(),
                    b.jail.display()
                ));
            }
        }
    }
    Ok(())
}

fn bind_err(bind: &BindMount, reason: impl Into<String>) -> Error {
    Error::Bind {
        host: bind.host.clone(),
        jail: bind.jail.clone(),
        reason: reason.into(),
    }
}

/// Checks that creates nothing: each host path exists and is a directory or a regular file, and no jail
/// path hides the VMM binary (`/<exec_name>`).
pub fn check(binds: &[BindMount], exec_name: &str) -> Result<(), Error> {
    for bind in binds {
        let meta = fs::metadata(&bind.host).map_err(|e| bind_err(bind, e.to_string()))?;
        if !(meta.is_dir() || meta.is_file()) {
            return Err(bind_err(
                bind,
                "host path is not a directory or regular file",
            ));
        }
        if bind.jail.starts_with(Path::new("/").join(exec_name)) {
            return Err(bind_err(bind, "jail path would hide the VMM binary"));
        }
    }
    Ok(())
}

/// The mount point of `bind` under the jail root seen from the host.
pub fn target(root: &Path, bind: &BindMount) -> PathBuf {
    root.join(bind.jail.strip_prefix("/").unwrap_or(&bind.jail))
}

/// Creates the mount points under `root` (the jail root, just created, so nothing in it can be a link):
/// root-owned directories (mode 0755) on the way, and an empty directory or file as the target.
pub fn create_mount_points(root: &Path, binds: &[BindMount]) -> Result<(), Error> {
    for bind in binds {
        let target = target(root, bind);
        let make = |path: &Path, r: std::io::Result<()>| {
            r.map_err(|e| bind_err(bind, format!("create {}: {e}", path.display())))
        };
        if let Some(parent) = target.parent() {
            make(parent, fs::create_dir_all(parent))?;
            let mut dir = parent;
            while dir != root {
                make(
                    dir,
                    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)),
                )?;
                dir = match dir.parent() {
                    Some(d) => d,
                    None => break,
                };
            }
        }
        if fs::metadata(&bind.host).is_ok_and(|m| m.is_dir()) {
            make(&target, fs::create_dir(&target))?;
            make(
                &target,
                fs::set_permissions(&target, fs::Permissions::from_mode(0o755)),
            )?;
        } else {
            make(&target, fs::write(&target, b""))?;
            make(
                &target,
                fs::set_permissions(&target, fs::Permissions::from_mode(0o444)),
            )?;
        }
    }
    Ok(())
}

fn mount_err<'a>(
    bind: &'a BindMount,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::BindMount {
        host: bind.host.clone(),
        jail: bind.jail.clone(),
        what,
        source,
    }
}

/// Bind-mounts each host path on its mount point under `root`. Must run in the jail's own mount
/// namespace, after its mounts were made slaves (so nothing propagates to the host).
pub fn mount_all(root: &Path, binds: &[BindMount]) -> Result<(), Error> {
    for bind in binds {
        let target = target(root, bind);
        let src = sys::cstring(&bind.host).map_err(mount_err(bind, "name the host path"))?;
        let dst = sys::cstring(&target).map_err(mount_err(bind, "name the mount point"))?;
        // SAFETY: valid NUL-terminated paths; NULL type and data are allowed for a bind mount.
        sys::check(unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        })
        .map_err(mount_err(bind, "bind-mount"))?;
        // SAFETY: an all-zero statvfs is a valid value for the kernel to overwrite.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `dst` is a valid path and `st` a valid out-pointer.
        sys::check(unsafe { libc::statvfs(dst.as_ptr(), &mut st) })
            .map_err(mount_err(bind, "read the bind mount's flags"))?;
        let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
        if st.f_flag & libc::ST_NOEXEC != 0 {
            flags |= libc::MS_NOEXEC;
        }
        if bind.read_only || st.f_flag & libc::ST_RDONLY != 0 {
            flags |= libc::MS_RDONLY;
        }
        // SAFETY: as above; a remount of the bind just made changes only its per-mount flags.
        sys::check(unsafe {
            libc::mount(
                std::ptr::null(),
                dst.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        })
        .map_err(mount_err(bind, "remount nosuid,nodev(,ro)"))?;
    }
    Ok(())
}

/// Detaches the binds under `root` again (on a failed start, before anything is removed). Errors are
/// ignored: a bind that was never made has nothing to detach.
pub fn unmount_all(root: &Path, binds: &[BindMount]) {
    for bind in binds.iter().rev() {
        if let Ok(dst) = sys::cstring(target(root, bind)) {
            // SAFETY: valid path.
            unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(host: &str, jail: &str, read_only: bool) -> BindMount {
        BindMount {
            host: host.into(),
            jail: jail.into(),
            read_only,
        }
    }

    #[test]
    fn parses_binds() {
        assert_eq!(parse("/srv/a:/a").unwrap(), b("/srv/a", "/a", false));
        assert_eq!(
            parse("/srv/k:/x/kernel:ro").unwrap(),
            b("/srv/k", "/x/kernel", true)
        );
        assert_eq!(parse("/srv/a:/a:rw").unwrap(), b("/srv/a", "/a", false));
    }

    #[test]
    fn refuses_bad_binds() {
        for (value, expect) in [
            ("/a", "expected HOST:JAIL"),
            ("/a:/b:ro:x", "expected HOST:JAIL"),
            ("/a:/b:rx", "unknown option 'rx'"),
            ("a:/b", "host path must be absolute"),
            ("/a:b", "jail path must be absolute"),
            ("/a/../etc:/b", "'.' or '..'"),
            ("/a:/b/./c", "'.' or '..'"),
            ("/a:/", "must not be /"),
            ("/a://", "must not be /"),
            ("/a:/dev", "/dev"),
            ("/a:/dev/kvm", "/dev"),
            ("/a\0:/b", "NUL"),
            (":/b", "host path must be absolute"),
        ] {
            let e = parse(value).unwrap_err();
            assert!(e.contains(expect), "{value:?}: {e}");
        }
        // /device is not /dev.
        assert!(parse("/a:/device").is_ok());
    }

    #[test]
    fn overlapping_jail_paths_are_refused() {
        let ok = [b("/a", "/x", false), b("/b", "/xy", false)];
        assert!(check_overlaps(&ok).is_ok());
        let nested = [b("/a", "/x", false), b("/b", "/x/y", true)];
        assert!(check_overlaps(&nested).unwrap_err().contains("overlap"));
        let same = [b("/a", "/x", false), b("/b", "/x", false)];
        assert!(check_overlaps(&same).is_err());
    }

    #[test]
    fn checks_host_paths_and_the_binary() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_str().unwrap().to_string();
        assert!(check(&[b(&dir, "/d", false)], "vmm").is_ok());
        let missing = format!("{dir}/missing");
        let e = check(&[b(&missing, "/d", false)], "vmm").unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = check(&[b(&dir, "/vmm", false)], "vmm").unwrap_err();
        assert!(e.to_string().contains("VMM binary"), "{e}");
        assert!(check(&[b("/dev/null", "/n", false)], "vmm").is_err());
    }

    #[test]
    fn creates_mount_points() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let file = tmp.path().join("kernel");
        fs::write(&file, b"k").unwrap();
        let binds = [
            b(tmp.path().to_str().unwrap(), "/sandbox", false),
            b(file.to_str().unwrap(), "/boot/kernel", true),
        ];
        create_mount_points(&root, &binds).unwrap();
        assert!(root.join("sandbox").is_dir());
        assert!(root.join("boot").is_dir());
        let k = fs::metadata(root.join("boot/kernel")).unwrap();
        assert!(k.is_file() && k.len() == 0);
        assert_eq!(k.permissions().mode() & 0o777, 0o444);
        assert_eq!(target(&root, &binds[1]), root.join("boot/kernel"));
    }
}
