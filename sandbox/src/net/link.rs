//! The links of a sandbox network, made with `ip` (iproute2): the namespace, a veth pair with
//! the host end as the guest's gateway, and in the namespace a bridge joining the veth's other
//! end and the VMM's tap.

use super::{nft::one_line, NetError, NetSpec, TAP};
use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `ip [-n NS] -batch -` with `commands`.
fn ip_batch(netns: Option<&str>, commands: &str) -> Result<(), NetError> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Tool("ip".into(), e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(commands.as_bytes())
            .map_err(|e| NetError::Tool("ip".into(), e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Tool("ip".into(), e.to_string()))?;
    if !out.status.success() {
        return Err(NetError::Tool(
            "ip".into(),
            one_line(&String::from_utf8_lossy(&out.stderr)),
        ));
    }
    Ok(())
}

fn ip_quiet(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `path` is a network namespace (an nsfs bind mount, as `ip netns add` makes); a
/// plain file is what is left when the mount was made in a mount namespace that is gone.
pub fn is_netns(path: &std::path::Path) -> bool {
    const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a live statfs, both valid for the call.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    ok && st.f_type as libc::c_long == NSFS_MAGIC
}

/// Whether the current network namespace has a link named `name` (if_nametoindex(3): no
/// process spawned, and right under `nsenter --net`, where `/sys` shows another namespace).
pub fn exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated string valid for the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// Makes the namespace, the veth pair, the bridge and the tap (owned by `tap_owner`), and turns
/// on IPv4 forwarding on the host.
pub fn create(spec: &NetSpec, tap_owner: Option<(u32, u32)>) -> Result<(), NetError> {
    let ns = spec.netns();
    let (veth, peer) = (spec.veth(), spec.peer());
    if is_netns(&spec.netns_path()) {
        return Err(NetError::Tool(
            "ip netns add".into(),
            format!("namespace {ns} exists already (hint: `cairn doctor` removes leftovers)"),
        ));
    }
    ip_batch(
        None,
        &format!(
            "netns add {ns}\n\
             link add {veth} type veth peer name {peer} netns {ns}\n\
             addr add {gw}/{len} dev {veth}\n\
             link set {veth} up\n",
            gw = spec.gateway,
            len = spec.prefix,
        ),
    )?;
    let owner = match tap_owner {
        Some((uid, gid)) => format!(" user {uid} group {gid}"),
        None => String::new(),
    };
    ip_batch(
        Some(&ns),
        &format!(
            "link set lo up\n\
             link add br0 type bridge\n\
             tuntap add {TAP} mode tap vnet_hdr{owner}\n\
             link set {TAP} master br0\n\
             link set {peer} master br0\n\
             link set {TAP} up\n\
             link set {peer} up\n\
             link set br0 up\n"
        ),
    )?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(super::io_err(
        "turn on IPv4 forwarding (net.ipv4.ip_forward)",
    ))
}

/// Removes the veth (both ends) and the namespace (with the bridge and tap in it). Missing
/// pieces are fine.
pub fn remove(spec: &NetSpec) {
    ip_quiet(&["link", "del", "dev", &spec.veth()]);
    ip_quiet(&["netns", "del", &spec.netns()]);
}

/// Removes host link `name` (doctor).
pub fn remove_link(name: &str) {
    ip_quiet(&["link", "del", "dev", name]);
}

/// Removes namespace `name` (doctor).
pub fn remove_netns(name: &str) {
    ip_quiet(&["netns", "del", name]);
}

/// Host links whose names start with `prefix`.
pub fn links(prefix: &str) -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Named namespaces whose names start with `prefix`.
pub fn namespaces(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/var/run/netns") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Makes `cmd` join the network namespace at `ns` before it execs (an unjailed VMM; a jailed
/// one gets `cairn-jailer --netns`).
pub fn enter_netns_on_exec(cmd: &mut Command, ns: &std::path::Path) -> Result<(), NetError> {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::open(ns).map_err(super::io_err(format!("open {}", ns.display())))?;
    let fd: OwnedFd = file.into();
    // SAFETY: setns(2) is async-signal-safe; `fd` is moved into the closure and stays open
    // until the child execs (it is close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
