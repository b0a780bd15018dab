//! Rootless sandbox networks: a user who is not root gets egress through pasta (Debian's
//! `passt` package), a user-mode network stack that turns the guest's packets into ordinary
//! sockets of the user's own.
//!
//! ```text
//!  guest eth0 ── virtio-net ── tap0 ─┐  user + net namespace (made by pasta; the VMM runs here)
//!                                    br0 ── pasta0 ══ pasta (host sockets, as the user)
//! ```
//! Each VMM start (create, wake, fork, restore) runs `pasta ... -- sh -c SCRIPT VMM ARGS`:
//! pasta makes a new user and network namespace with its tap `pasta0` in it and runs SCRIPT
//! there, which makes the VMM's `tap0` and a bridge joining the two, writes its own host pid
//! to `vmm.pid` and execs the VMM. pasta exits when the VMM does, so there is nothing to
//! remove afterwards and nothing for `cairn doctor` to find. pasta answers the guest's ARP for
//! the gateway, forwards DNS sent to the gateway to the host's resolver (`--dns-forward`), and
//! maps TCP and UDP sent to the gateway's address to the host's loopback. There is no egress
//! policy (that needs nftables on the host, so root).
//!
//! What a crash can leave: a pasta whose VMM never started or is gone (an interrupted start),
//! found by [`all_pastas`] and [`runs_nothing`] for `cairn doctor` (`super::leftovers`). The
//! namespace goes with the last process in it; `vmm.pid` and `pasta.log` stay in the sandbox
//! directory and are overwritten at the next start.

use super::{NetError, NetSpec, TAP};
use crate::sandbox::Paths;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// pasta's tap in the namespace, bridged with the VMM's.
pub const UPLINK: &str = "pasta0";

/// Runs in the namespace: `$1` the sandbox directory, then the VMM and its arguments.
const SCRIPT: &str = r#"set -e
cd "$1"; shift
read -r pid _ < /proc/self/stat
ip link set lo up
ip link add br0 type bridge
ip tuntap add tap0 mode tap vnet_hdr
i=0
while ! ip link show pasta0 >/dev/null 2>&1; do
  i=$((i+1)); [ $i -lt 200 ] || { echo "cairn: pasta made no interface" >&2; exit 1; }
  sleep 0.05
done
ip link set tap0 master br0
ip link set pasta0 master br0
ip link set tap0 up
ip link set pasta0 up
ip link set br0 up
echo "$pid" > vmm.pid.tmp
mv vmm.pid.tmp vmm.pid
exec "$@"
"#;

/// `pasta` on `PATH`.
pub fn pasta_binary() -> Result<PathBuf, NetError> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("pasta"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            NetError::Tool(
                "a sandbox network without root".into(),
                "pasta is not installed (hint: apt install passt, or create with --no-network)"
                    .into(),
            )
        })
}

fn pid_file(paths: &Paths) -> PathBuf {
    paths.dir.join("vmm.pid")
}

/// pasta's arguments for `spec` (before `--` and the command).
pub fn pasta_args(spec: &NetSpec, log: &Path) -> Vec<String> {
    let (guest, gw) = (spec.guest.to_string(), spec.gateway.to_string());
    let mut a: Vec<String> = [
        "--ipv4-only",
        "--quiet",
        "--foreground",
        "--no-dhcp",
        "--ns-ifname",
        UPLINK,
    ]
    .map(String::from)
    .to_vec();
    a.extend(["--log-file".into(), log.display().to_string()]);
    a.extend(["--address".into(), guest, "--netmask".into()]);
    a.push(spec.prefix.to_string());
    a.extend(["--gateway".into(), gw.clone(), "--dns-forward".into(), gw]);
    // No ports forwarded in either direction: ports in go through `cairn proxy`.
    for flag in ["-t", "-u", "-T", "-U"] {
        a.extend([flag.into(), "none".into()]);
    }
    a
}

/// The command that starts the VMM `vmm ARGS` of a rootless sandbox in a namespace pasta
/// connects (see the module docs). Its pid is pasta's; [`vmm_pid`] gives the VMM's.
pub fn command(
    paths: &Paths,
    spec: &NetSpec,
    vmm: &Path,
    args: &[&OsStr],
) -> Result<Command, NetError> {
    debug_assert_eq!(TAP, "tap0", "SCRIPT names the tap");
    let mut cmd = Command::new(pasta_binary()?);
    cmd.args(pasta_args(spec, &paths.dir.join("pasta.log")))
        .args(["--", "sh", "-c", SCRIPT, "sh"])
        .arg(&paths.dir)
        .arg(vmm)
        .args(args);
    let _ = std::fs::remove_file(pid_file(paths));
    Ok(cmd)
}

/// Waits (up to 20 s) until the VMM that `pasta` (just spawned by [`command`]) starts has
/// exec'd, and returns its pid. pasta itself is reaped by a thread when it exits.
pub fn vmm_pid(paths: &Paths, mut pasta: Child) -> Result<u32, NetError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = |msg: String| NetError::Tool("pasta".into(), msg);
    loop {
        if let Ok(Some(status)) = pasta.try_wait() {
            return Err(failed(format!(
                "exited ({status}) before the VMM started (see {} and {})",
                paths.console.display(),
                paths.dir.join("pasta.log").display()
            )));
        }
        let pid = std::fs::read_to_string(pid_file(paths))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            let exec_done = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|&b| b == 0)
                    .next()
                    .is_some_and(|a| a.ends_with(b"cairn-vmm"))
            });
            if exec_done {
                std::thread::spawn(move || pasta.wait());
                return Ok(pid);
            }
        }
        if Instant::now() > deadline {
            let _ = pasta.kill();
            let _ = pasta.wait();
            return Err(failed("the VMM did not start within 20 s".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The sandbox directory a pasta started by [`command`] serves, from its command line
/// (`pasta ARGS -- sh -c SCRIPT sh DIR VMM ...`); `None` for any other process.
pub fn pasta_dir(cmdline: &[u8]) -> Option<PathBuf> {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let prog = Path::new(OsStr::from_bytes(args.first()?));
    if prog.file_name() != Some(OsStr::new("pasta")) {
        return None;
    }
    let i = args.iter().position(|a| *a == b"--")?;
    match args.get(i + 1..i + 6)? {
        [b"sh", b"-c", script, b"sh", dir] if script.windows(6).any(|w| w == b"pasta0") => {
            Some(PathBuf::from(OsStr::from_bytes(dir)))
        }
        _ => None,
    }
}

/// Every pasta on the host that runs (or ran) a sandbox's VMM: (pid, sandbox directory).
pub fn all_pastas() -> Vec<(u32, PathBuf)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, pasta_dir(&c)?))
        })
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name (state is the first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// How long process `pid` has been running.
pub fn age(pid: u32) -> Option<Duration> {
    // Field 22 of stat (index 19 after the name): start time in clock ticks since boot.
    let ticks: f64 = stat_fields(pid)?.get(19)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64((uptime - ticks / hz).max(0.0)))
}

/// Whether process `pid` has no live child (for a pasta: its VMM, or the script that starts
/// it, is gone, so it serves no VMM).
pub fn runs_nothing(pid: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    let parent = pid.to_string();
    !procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat_fields)
        .any(|f| f.get(1) == Some(&parent) && f.first().map(String::as_str) != Some("Z"))
}

/// Ends pasta `pid` (SIGTERM).
pub fn kill(pid: u32) {
    // SAFETY: kill(2) on a pid we checked is a pasta of ours.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasta_gets_the_guest_address_and_forwards_no_ports() {
        let mut spec = NetSpec::test_spec();
        spec.rootless = true;
        let a = pasta_args(&spec, Path::new("/s/pasta.log")).join(" ");
        assert!(a.contains("--address 10.213.0.2 --netmask 30"), "{a}");
        assert!(
            a.contains("--gateway 10.213.0.1 --dns-forward 10.213.0.1"),
            "{a}"
        );
        assert!(a.contains("-t none -u none -T none -U none"), "{a}");
        assert!(a.contains("--ns-ifname pasta0"), "{a}");
        assert!(SCRIPT.contains(UPLINK) && SCRIPT.contains(TAP));
    }

    #[test]
    fn a_pasta_of_ours_is_told_from_other_processes() {
        let line = |args: &[&str]| args.join("\0").into_bytes();
        let dir = pasta_dir(&line(&[
            "/usr/bin/pasta",
            "--quiet",
            "--",
            "sh",
            "-c",
            SCRIPT,
            "sh",
            "/h/sandboxes/a",
            "/bin/cairn-vmm",
            "--api-sock",
            "x",
        ]));
        assert_eq!(dir, Some(PathBuf::from("/h/sandboxes/a")));
        assert_eq!(
            pasta_dir(&line(&["pasta", "--config-net", "--", "bash"])),
            None
        );
        assert_eq!(
            pasta_dir(&line(&["/bin/sh", "-c", SCRIPT, "sh", "/h/sandboxes/a"])),
            None
        );
        assert_eq!(pasta_dir(b""), None);
    }
}
