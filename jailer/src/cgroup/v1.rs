//! cgroup v1: one hierarchy per controller (or per group of co-mounted controllers). The jail gets a
//! cgroup in each hierarchy that one of its `--cgroup` files belongs to, and joins it through `tasks`.

use std::path::Path;

use super::Cgroups;
use super::{
    create_levels, current_cgroup_dir, find_v1_mount, read_file, write_file, Leaf, Mount,
    ProcCgroup,
};
use crate::args::CgroupSetting;
use crate::rollback::Rollback;
use crate::Error;

/// Files of the cpuset controller that start out empty in a new cgroup and must be filled before any
/// task can join it.
const CPUSET_INHERITED: [&str; 2] = ["cpuset.cpus", "cpuset.mems"];

/// Copies `file` from the parent cgroup when it is empty in `dir`.
fn inherit_from_parent(dir: &Path, file: &str) -> Result<(), Error> {
    let path = dir.join(file);
    if !read_file(&path)?.is_empty() {
        return Ok(());
    }
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    let value = read_file(&parent.join(file))?;
    write_file(&path, &value).map_err(|source| Error::CgroupWrite { path, source })
}

/// Groups the settings by the hierarchy (mount) that holds their controller, in command-line order.
pub fn plan<'m>(
    settings: &[CgroupSetting],
    mounts: &'m [Mount],
) -> Result<Vec<(&'m Mount, Vec<CgroupSetting>)>, Error> {
    let mut groups: Vec<(&Mount, Vec<CgroupSetting>)> = Vec::new();
    for s in settings {
        let controller = s.controller();
        let mount =
            find_v1_mount(mounts, controller).ok_or_else(|| Error::CgroupControllerNotMounted {
                controller: controller.to_string(),
                version: 1,
            })?;
        match groups.iter_mut().find(|(m, _)| std::ptr::eq(*m, mount)) {
            Some((_, list)) => list.push(s.clone()),
            None => groups.push((mount, vec![s.clone()])),
        }
    }
    Ok(groups)
}

/// Creates `<mount>/<rel>` in each needed hierarchy and writes the values.
pub fn setup(
    settings: &[CgroupSetting],
    rel: &Path,
    mounts: &[Mount],
    current: &[ProcCgroup],
    rollback: &mut Rollback,
) -> Result<Cgroups, Error> {
    let mut cgroups = Cgroups::default();
    for (mount, list) in plan(settings, mounts)? {
        let is_cpuset = mount.super_options.iter().any(|o| o == "cpuset");
        let leaf = create_levels(
            &mount.mount_point,
            rel,
            rollback,
            |_| Ok(()),
            |dir, _| {
                if is_cpuset {
                    for file in CPUSET_INHERITED {
                        inherit_from_parent(dir, file)?;
                    }
                }
                Ok(())
            },
        )?;
        for s in &list {
            let path = leaf.join(&s.file);
            write_file(&path, &s.value).map_err(|source| Error::CgroupWrite { path, source })?;
        }
        let controller = list.first().map(|s| s.controller()).unwrap_or_default();
        let origin = current
            .iter()
            .find(|c| c.controllers.iter().any(|n| n == controller))
            .map(|c| current_cgroup_dir(mount, &c.path));
        cgroups.leaves.push(Leaf {
            dir: leaf,
            attach_file: "tasks",
            origin,
        });
    }
    Ok(cgroups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::parse_mountinfo;
    use crate::cgroup::tests::{COMOUNTED, HYBRID};

    fn setting(file: &str) -> CgroupSetting {
        CgroupSetting {
            file: file.into(),
            value: "1".into(),
        }
    }

    #[test]
    fn groups_settings_by_hierarchy() {
        let mounts = parse_mountinfo(COMOUNTED).unwrap();
        let settings = [
            setting("cpu.shares"),
            setting("pids.max"),
            setting("cpuacct.usage"),
        ];
        let groups = plan(&settings, &mounts).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(
            groups[0].0.mount_point,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            groups[0]
                .1
                .iter()
                .map(|s| s.file.as_str())
                .collect::<Vec<_>>(),
            ["cpu.shares", "cpuacct.usage"]
        );
        assert_eq!(groups[1].0.mount_point, Path::new("/sys/fs/cgroup/pids"));
    }

    #[test]
    fn unknown_controller_is_an_error() {
        let mounts = parse_mountinfo(HYBRID).unwrap();
        let e = plan(&[setting("hugetlb.limit")], &mounts).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cgroup v1 controller 'hugetlb' is not mounted (see /proc/self/mountinfo)"
        );
    }

    #[test]
    fn cpuset_inherits_from_parent_on_a_fake_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join("cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(root.join("cpuset.mems"), "0\n").unwrap();
        let child = root.join("child");
        std::fs::create_dir(&child).unwrap();
        std::fs::write(child.join("cpuset.cpus"), "").unwrap();
        std::fs::write(child.join("cpuset.mems"), "0\n").unwrap();
        for file in CPUSET_INHERITED {
            inherit_from_parent(&child, file).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(child.join("cpuset.cpus")).unwrap(),
            "0-1"
        );
        assert_eq!(
            std::fs::read_to_string(child.join("cpuset.mems")).unwrap(),
            "0\n"
        );
    }
}
