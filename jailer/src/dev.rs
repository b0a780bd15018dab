//! The jail's private `/dev`: only the device nodes a VMM needs, owned by the jail's user.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::sys;
use crate::Error;

/// Major number of misc devices.
const MISC_MAJOR: u32 = 10;

/// A character device node to create under the jail's `/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// Path below `dev/`.
    pub name: &'static str,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
}

/// The nodes of every jail.
pub const BASE_NODES: [Node; 4] = [
    Node {
        name: "kvm",
        major: MISC_MAJOR,
        minor: 232,
        mode: 0o600,
    },
    Node {
        name: "net/tun",
        major: MISC_MAJOR,
        minor: 200,
        mode: 0o600,
    },
    Node {
        name: "urandom",
        major: 1,
        minor: 9,
        mode: 0o666,
    },
    // Needed for --daemonize (stdio) and harmless otherwise.
    Node {
        name: "null",
        major: 1,
        minor: 3,
        mode: 0o666,
    },
];

/// Parses `/sys/class/misc/userfaultfd/dev` (`10:257`).
pub fn parse_sys_dev(text: &str) -> Option<u32> {
    let (major, minor) = text.trim().split_once(':')?;
    if major.parse::<u32>().ok()? != MISC_MAJOR {
        return None;
    }
    minor.parse().ok()
}

/// Finds `userfaultfd` in `/proc/misc` (`257 userfaultfd`).
pub fn parse_proc_misc(text: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        let minor = parts.next()?.parse().ok()?;
        (parts.next()? == "userfaultfd").then_some(minor)
    })
}

/// The minor number of `/dev/userfaultfd` on this host (read before entering the jail).
pub fn userfaultfd_minor() -> Result<u32, Error> {
    fs::read_to_string("/sys/class/misc/userfaultfd/dev")
        .ok()
        .and_then(|t| parse_sys_dev(&t))
        .or_else(|| {
            fs::read_to_string("/proc/misc")
                .ok()
                .and_then(|t| parse_proc_misc(&t))
        })
        .ok_or(Error::UserfaultfdMinor)
}

/// The nodes of this jail: the base set plus userfaultfd when asked for.
pub fn nodes(userfaultfd_minor: Option<u32>) -> Vec<Node> {
    let mut nodes = BASE_NODES.to_vec();
    if let Some(minor) = userfaultfd_minor {
        nodes.push(Node {
            name: "userfaultfd",
            major: MISC_MAJOR,
            minor,
            mode: 0o600,
        });
    }
    nodes
}

/// Creates `root/dev` (root-owned, 0755) and the nodes, each owned by `uid:gid`.
pub fn create(root: &Path, nodes: &[Node], uid: u32, gid: u32) -> Result<(), Error> {
    let dev = root.join("dev");
    for node in nodes {
        let path = dev.join(node.name);
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                fs::create_dir_all(parent).map_err(|source| Error::CreateDir {
                    path: parent.to_owned(),
                    source,
                })?;
                fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).map_err(
                    |source| Error::Chown {
                        path: parent.to_owned(),
                        source,
                    },
                )?;
            }
        }
        // A node left by an earlier jail with this id (the jail directory is reused, as
        // Firecracker's jailer reuses it) is made afresh. `dev/` is root's, so nothing the
        // jailed VMM could have put there is followed: unlink does not follow symlinks.
        if fs::symlink_metadata(&path).is_ok() {
            fs::remove_file(&path).map_err(|source| Error::Mknod {
                path: path.clone(),
                source,
            })?;
        }
        sys::mknod_char(&path, node.major, node.minor, node.mode, uid, gid)
            .map_err(|source| Error::Mknod { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_userfaultfd_minor() {
        assert_eq!(parse_sys_dev("10:257\n"), Some(257));
        assert_eq!(parse_sys_dev("11:257\n"), None);
        assert_eq!(parse_sys_dev("garbage"), None);
        assert_eq!(
            parse_proc_misc("200 tun\n257 userfaultfd\n232 kvm\n"),
            Some(257)
        );
        assert_eq!(parse_proc_misc("200 tun\n"), None);
    }

    #[test]
    fn node_set() {
        let names: Vec<_> = nodes(None).iter().map(|n| n.name).collect();
        assert_eq!(names, ["kvm", "net/tun", "urandom", "null"]);
        let with = nodes(Some(257));
        assert_eq!(
            with.last(),
            Some(&Node {
                name: "userfaultfd",
                major: 10,
                minor: 257,
                mode: 0o600
            })
        );
    }
}
