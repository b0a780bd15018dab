//! cgroup v2: one unified hierarchy. Controllers must be enabled in `cgroup.subtree_control` of every
//! ancestor of the jail's cgroup; the jail joins through `cgroup.procs`.

use std::collections::BTreeSet;
use std::path::Path;

use super::Cgroups;
use super::{
    create_levels, current_cgroup_dir, find_v2_mount, read_file, write_file, Leaf, Mount,
    ProcCgroup,
};
use crate::args::{needed_controllers, CgroupSetting};
use crate::rollback::Rollback;
use crate::Error;

/// Controllers to enable: the files' prefixes, less `cgroup` (core files every cgroup has).
pub fn controllers(settings: &[CgroupSetting]) -> BTreeSet<String> {
    let mut set = needed_controllers(settings);
    set.remove("cgroup");
    set
}

/// Enables `controllers` for the children of `dir`, where not already enabled.
///
/// Enabled controllers are not disabled again on undo: other jails may be using them by then.
fn enable(dir: &Path, controllers: &BTreeSet<String>) -> Result<(), Error> {
    let path = dir.join("cgroup.subtree_control");
    let enabled = read_file(&path)?;
    for c in controllers {
        if !enabled.split_whitespace().any(|e| e == c) {
            write_file(&path, &format!("+{c}")).map_err(|source| Error::CgroupEnable {
                controller: c.clone(),
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Creates `<mount>/<rel>`, enables the needed controllers on the way down, and writes the values.
pub fn setup(
    settings: &[CgroupSetting],
    rel: &Path,
    mounts: &[Mount],
    current: &[ProcCgroup],
    rollback: &mut Rollback,
) -> Result<Cgroups, Error> {
    let mount = find_v2_mount(mounts).ok_or(Error::CgroupV2NotMounted)?;
    let wanted = controllers(settings);
    let available_path = mount.mount_point.join("cgroup.controllers");
    let available = read_file(&available_path)?;
    for c in &wanted {
        if !available.split_whitespace().any(|a| a == c) {
            return Err(Error::CgroupControllerUnavailable {
                controller: c.clone(),
                path: available_path,
            });
        }
    }
    let leaf = create_levels(
        &mount.mount_point,
        rel,
        rollback,
        |dir| enable(dir, &wanted),
        |_, _| Ok(()),
    )?;
    for s in settings {
        let path = leaf.join(&s.file);
        write_file(&path, &s.value).map_err(|source| Error::CgroupWrite { path, source })?;
    }
    let origin = current
        .iter()
        .find(|c| c.hierarchy == 0)
        .map(|c| current_cgroup_dir(mount, &c.path));
    Ok(Cgroups {
        leaves: vec![Leaf {
            dir: leaf,
            attach_file: "cgroup.procs",
            origin,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::parse_mountinfo;
    use crate::cgroup::tests::COMOUNTED;

    #[test]
    fn core_files_need_no_controller() {
        let s = |f: &str| CgroupSetting {
            file: f.into(),
            value: "1".into(),
        };
        let c = controllers(&[
            s("cgroup.max.depth"),
            s("memory.max"),
            s("pids.max"),
            s("memory.high"),
        ]);
        assert_eq!(c.into_iter().collect::<Vec<_>>(), ["memory", "pids"]);
    }

    #[test]
    fn missing_v2_mount_is_an_error() {
        let mounts = parse_mountinfo(COMOUNTED).unwrap();
        let settings = [CgroupSetting {
            file: "pids.max".into(),
            value: "1".into(),
        }];
        let e = setup(
            &settings,
            Path::new("x/y"),
            &mounts,
            &[],
            &mut Rollback::new(),
        )
        .unwrap_err();
        assert!(matches!(e, Error::CgroupV2NotMounted));
    }
}
