//! Per-jail cgroups: find the hierarchies in `/proc/self/mountinfo`, create
//! `<mount>/<parent-cgroup>/<id>`, write the `--cgroup` values, and later move the process in.
//!
//! Nothing here assumes where cgroups are mounted. With no `--cgroup` value no cgroup is created (as in
//! Firecracker); the VMM then stays in the jailer's cgroups.

pub mod v1;
pub mod v2;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::args::{CgroupSetting, CgroupVersion};
use crate::rollback::Rollback;
use crate::Error;

/// One line of `/proc/self/mountinfo`, the fields the jailer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Path of the mounted directory within its file system (`/` unless bind-mounted or namespaced).
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// File-system type, e.g. `cgroup` or `cgroup2`.
    pub fs_type: String,
    /// Per-superblock options; for cgroup v1 these name the controllers (`rw,cpu,cpuacct`).
    pub super_options: Vec<String>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the text of `/proc/<pid>/mountinfo`. Malformed lines are an error naming the line.
pub fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, Error> {
    let mut mounts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || Error::Mountinfo(format!("line {}: {line:?}", n + 1));
        let fields: Vec<&str> = line.split(' ').collect();
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let sep = fields.iter().position(|f| *f == "-").ok_or_else(bad)?;
        if sep < 6 || fields.len() < sep + 4 {
            return Err(bad());
        }
        mounts.push(Mount {
            root: unescape(fields[3]),
            mount_point: PathBuf::from(unescape(fields[4])),
            fs_type: fields[sep + 1].to_string(),
            super_options: fields[sep + 3].split(',').map(str::to_string).collect(),
        });
    }
    Ok(mounts)
}

/// The v1 hierarchy holding `controller`: a `cgroup` mount whose super options name it.
pub fn find_v1_mount<'a>(mounts: &'a [Mount], controller: &str) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup" && m.super_options.iter().any(|o| o == controller))
        // Prefer a mount of the whole hierarchy over a bind mount of a sub-cgroup.
        .min_by_key(|m| m.root != "/")
}

/// The cgroup2 mount, preferring one of the whole hierarchy.
pub fn find_v2_mount(mounts: &[Mount]) -> Option<&Mount> {
    mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup2")
        .min_by_key(|m| m.root != "/")
}

/// The jail's cgroup relative to a hierarchy's root: `<parent>/<id>`, the parent defaulting to the exec
/// file's name (Firecracker's convention).
pub fn relative_path(parent: Option<&str>, exec_name: &str, id: &str) -> PathBuf {
    Path::new(parent.unwrap_or(exec_name)).join(id)
}

/// One line of `/proc/self/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    /// Hierarchy id (0 for cgroup2).
    pub hierarchy: u32,
    /// Controllers bound to the hierarchy (empty for cgroup2).
    pub controllers: Vec<String>,
    /// The process's cgroup, relative to the hierarchy root.
    pub path: String,
}

/// Parses `/proc/<pid>/cgroup`; lines that do not parse are skipped.
pub fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?.to_string();
            let controllers = if controllers.is_empty() {
                Vec::new()
            } else {
                controllers.split(',').map(str::to_string).collect()
            };
            Some(ProcCgroup {
                hierarchy,
                controllers,
                path,
            })
        })
        .collect()
}

/// Where a process's current cgroup lives on disk: the mount point plus the path from
/// `/proc/self/cgroup`, less the mount's own root.
pub fn current_cgroup_dir(mount: &Mount, proc_path: &str) -> PathBuf {
    let rel = proc_path
        .strip_prefix(mount.root.trim_end_matches('/'))
        .unwrap_or(proc_path);
    mount.mount_point.join(rel.trim_start_matches('/'))
}

/// One cgroup directory the process is moved into at attach time.
#[derive(Debug)]
pub struct Leaf {
    /// The jail's cgroup directory.
    pub dir: PathBuf,
    /// The file the pid is written to: `tasks` (v1) or `cgroup.procs` (v2).
    pub attach_file: &'static str,
    /// The process's cgroup before attaching, to move back to on undo.
    pub origin: Option<PathBuf>,
}

/// The jail's cgroups, created and configured; [`Cgroups::attach`] moves the calling process in.
#[derive(Debug, Default)]
pub struct Cgroups {
    /// One leaf per hierarchy used.
    pub leaves: Vec<Leaf>,
}

impl Cgroups {
    /// Moves the calling process into every leaf, recording on `rollback` how to move it back.
    pub fn attach(&self, rollback: &mut Rollback) -> Result<(), Error> {
        let pid = std::process::id().to_string();
        for leaf in &self.leaves {
            if let Some(origin) = &leaf.origin {
                // Writing "0" moves the writer itself, whatever its pid namespace.
                let _ = rollback.write_on_undo(&origin.join(leaf.attach_file), "0");
            }
            let path = leaf.dir.join(leaf.attach_file);
            write_file(&path, &pid).map_err(|source| Error::CgroupAttach { path, source })?;
        }
        Ok(())
    }
}

/// Writes a value to a cgroup file that must already exist (cgroup file systems never create files).
pub fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// Reads a cgroup file, trimmed.
pub fn read_file(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::CgroupRead {
            path: path.to_owned(),
            source,
        })
}

/// Creates `<mount>/<rel>` one level at a time, recording each level it created. `on_level` runs for
/// every level below the mount (existing or new) before its child is created, with (dir, created).
pub fn create_levels(
    mount: &Path,
    rel: &Path,
    rollback: &mut Rollback,
    mut before_child: impl FnMut(&Path) -> Result<(), Error>,
    mut after_create: impl FnMut(&Path, bool) -> Result<(), Error>,
) -> Result<PathBuf, Error> {
    let mut dir = mount.to_path_buf();
    for component in rel.components() {
        before_child(&dir)?;
        dir.push(component);
        let created = match fs::create_dir(&dir) {
            Ok(()) => {
                rollback
                    .remove_dir(&dir, true)
                    .map_err(|source| Error::CgroupCreate {
                        path: dir.clone(),
                        source,
                    })?;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => false,
            Err(source) => return Err(Error::CgroupCreate { path: dir, source }),
        };
        after_create(&dir, created)?;
    }
    Ok(dir)
}

/// Creates and configures the jail's cgroups. `mountinfo` and `proc_cgroup` are the texts of
/// `/proc/self/mountinfo` and `/proc/self/cgroup`.
pub fn setup(
    version: CgroupVersion,
    settings: &[CgroupSetting],
    rel: &Path,
    mountinfo: &str,
    proc_cgroup: &str,
    rollback: &mut Rollback,
) -> Result<Cgroups, Error> {
    if settings.is_empty() {
        return Ok(Cgroups::default());
    }
    let mounts = parse_mountinfo(mountinfo)?;
    let current = parse_proc_cgroup(proc_cgroup);
    match version {
        CgroupVersion::V1 => v1::setup(settings, rel, &mounts, &current, rollback),
        CgroupVersion::V2 => v2::setup(settings, rel, &mounts, &current, rollback),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// This project's machines: v1 controllers each on their own mount, cgroup2 at /sys/fs/cgroup/unified.
    pub const HYBRID: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A typical systemd distribution on cgroup v2 only, with co-mounted names and optional fields.
    pub const UNIFIED: &str = "\
22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw
25 22 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
90 22 0:50 / /mnt/with\\040space rw,relatime shared:40 master:2 - tmpfs tmpfs rw
";

    /// Older v1 layout with co-mounted controllers.
    pub const COMOUNTED: &str = "\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 /nested /mnt/pids-bind rw - cgroup cgroup rw,pids
32 25 0:27 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";

    #[test]
    fn parses_hybrid_layout() {
        let m = parse_mountinfo(HYBRID).unwrap();
        assert_eq!(m.len(), 9);
        assert_eq!(
            find_v1_mount(&m, "pids").unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup/pids")
        );
        assert_eq!(
            find_v1_mount(&m, "cpuset").unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup/cpuset")
        );
        assert!(find_v1_mount(&m, "hugetlb").is_none());
        // "systemd" is a named hierarchy, not a controller, and "rw" is no controller either.
        assert!(find_v1_mount(&m, "systemd").is_none());
        assert_eq!(
            find_v2_mount(&m).unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn parses_unified_layout() {
        let m = parse_mountinfo(UNIFIED).unwrap();
        assert!(find_v1_mount(&m, "memory").is_none());
        let v2 = find_v2_mount(&m).unwrap();
        assert_eq!(v2.mount_point, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(
            v2.super_options,
            vec!["rw", "nsdelegate", "memory_recursiveprot"]
        );
        assert_eq!(m[3].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[3].fs_type, "tmpfs");
    }

    #[test]
    fn parses_comounted_layout() {
        let m = parse_mountinfo(COMOUNTED).unwrap();
        let cpu = find_v1_mount(&m, "cpu").unwrap();
        assert_eq!(cpu.mount_point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(std::ptr::eq(cpu, find_v1_mount(&m, "cpuacct").unwrap()));
        // The whole-hierarchy mount wins over the bind mount of a sub-cgroup.
        assert_eq!(
            find_v1_mount(&m, "pids").unwrap().mount_point,
            PathBuf::from("/sys/fs/cgroup/pids")
        );
        assert!(find_v2_mount(&m).is_none());
    }

    #[test]
    fn rejects_malformed_mountinfo() {
        assert!(parse_mountinfo("1 2 3\n").is_err());
        assert!(parse_mountinfo("1 2 0:1 / /x rw - cgroup\n").is_err());
        assert!(parse_mountinfo("1 - 0:1 / /x rw - cgroup cgroup rw\n").is_err());
        assert_eq!(parse_mountinfo("\n").unwrap(), vec![]);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
        assert_eq!(unescape("\\999"), "\\999");
    }

    #[test]
    fn resolves_paths() {
        assert_eq!(
            relative_path(None, "cairn-vmm", "vm1"),
            PathBuf::from("cairn-vmm/vm1")
        );
        assert_eq!(
            relative_path(Some("a/b"), "cairn-vmm", "vm1"),
            PathBuf::from("a/b/vm1")
        );
        let m = parse_mountinfo(COMOUNTED).unwrap();
        assert_eq!(
            current_cgroup_dir(&m[2], "/user.slice/x"),
            PathBuf::from("/sys/fs/cgroup/pids/user.slice/x")
        );
        assert_eq!(
            current_cgroup_dir(&m[2], "/"),
            PathBuf::from("/sys/fs/cgroup/pids")
        );
        assert_eq!(
            current_cgroup_dir(&m[1], "/nested/y"),
            PathBuf::from("/mnt/pids-bind/y")
        );
    }

    #[test]
    fn parses_proc_cgroup() {
        let text = "9:name=systemd:/\n4:memory:/process_api/6ec0\n2:cpu,cpuacct:/a\n0::/user.slice\ngarbage\n";
        let c = parse_proc_cgroup(text);
        assert_eq!(c.len(), 4);
        assert_eq!(
            c[1],
            ProcCgroup {
                hierarchy: 4,
                controllers: vec!["memory".into()],
                path: "/process_api/6ec0".into()
            }
        );
        assert_eq!(c[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(
            c[3],
            ProcCgroup {
                hierarchy: 0,
                controllers: vec![],
                path: "/user.slice".into()
            }
        );
    }
}
