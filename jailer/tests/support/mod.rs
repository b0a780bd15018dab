//! Helpers for tests that run `cairn-jailer` for real (root only).
//!
//! Other test crates can reuse them with
//! `#[path = "../../jailer/tests/support/mod.rs"] mod jail_support;` and pass their own binary (for
//! example a static `cairn-vmm`) as `exec_file`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_jailer::cgroup::{find_v1_mount, find_v2_mount, parse_mountinfo};

/// The jailer binary: the one cargo built for this crate's tests, else `$CAIRN_JAILER`.
pub fn jailer_bin() -> PathBuf {
    option_env!("CARGO_BIN_EXE_cairn-jailer")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CAIRN_JAILER").map(PathBuf::from))
        .expect("set CAIRN_JAILER to the path of a built cairn-jailer")
}

/// True when running as root; otherwise prints `SKIP <name>: not root`.
pub fn require_root(name: &str) -> bool {
    // SAFETY: trivial getter.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        println!("SKIP {name}: not root");
    }
    root
}

/// A static busybox to jail, or None (printing SKIP) when there is none.
/// Install one with `apt-get install -y busybox-static`.
pub fn static_busybox(name: &str) -> Option<PathBuf> {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let path = Path::new(p);
        if path.exists() && cairn_jailer::exec_file::inspect(path).is_ok() {
            return Some(path.to_owned());
        }
    }
    println!("SKIP {name}: no static busybox (apt-get install -y busybox-static)");
    None
}

/// True if cgroups can be created under `mount` (not so in, e.g., a container with a read-only cgroupfs).
pub fn writable_cgroup(mount: &Path) -> bool {
    let probe = mount.join(format!("cairn-jailer-probe-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// The mount point of the v1 hierarchy of `controller`, or of the cgroup2 hierarchy (`None`), if
/// mounted and writable.
pub fn cgroup_mount(controller: Option<&str>) -> Option<PathBuf> {
    let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").ok()?).ok()?;
    let m = match controller {
        Some(c) => find_v1_mount(&mounts, c)?,
        None => find_v2_mount(&mounts)?,
    };
    writable_cgroup(&m.mount_point).then(|| m.mount_point.clone())
}

/// Where the pids controller can be used: (`--cgroup-version` value, hierarchy mount point).
pub fn pids_hierarchy() -> Option<(&'static str, PathBuf)> {
    if let Some(m) = cgroup_mount(Some("pids")) {
        return Some(("1", m));
    }
    let m = cgroup_mount(None)?;
    let controllers = std::fs::read_to_string(m.join("cgroup.controllers")).ok()?;
    controllers
        .split_whitespace()
        .any(|c| c == "pids")
        .then_some(("2", m))
}

/// One jail under a private base directory, with a private parent cgroup; cleaned up on drop.
pub struct TestJail {
    /// Private `--chroot-base-dir`.
    pub base: tempfile::TempDir,
    /// `--id`.
    pub id: String,
    /// The VMM binary.
    pub exec_file: PathBuf,
    /// `--parent-cgroup`, unique to this jail.
    pub parent_cgroup: String,
    /// Children to kill on drop.
    pub children: Vec<Child>,
    /// Pids (outside any pid namespace) to kill on drop.
    pub pids: Vec<i32>,
}

impl TestJail {
    /// A new jail description for `exec_file`; `tag` makes the id unique within the test binary.
    pub fn new(tag: &str, exec_file: &Path) -> Self {
        let id = format!("{tag}-{}", std::process::id());
        TestJail {
            base: tempfile::Builder::new()
                .prefix("cairn-jailer-test")
                .tempdir()
                .expect("tempdir"),
            parent_cgroup: format!("cairn-jailer-test-{id}"),
            id,
            exec_file: exec_file.to_owned(),
            children: Vec::new(),
            pids: Vec::new(),
        }
    }

    /// `<base>/<exec-file-name>/<id>`.
    pub fn id_dir(&self) -> PathBuf {
        self.base
            .path()
            .join(self.exec_file.file_name().expect("name"))
            .join(&self.id)
    }

    /// `<id_dir>/root`.
    pub fn root(&self) -> PathBuf {
        self.id_dir().join("root")
    }

    /// The jailer command line: required flags, then `extra` (flags, then `--` and the VMM's args).
    pub fn command(&self, uid: u32, gid: u32, extra: &[&str]) -> Command {
        let mut cmd = Command::new(jailer_bin());
        cmd.arg("--id")
            .arg(&self.id)
            .arg("--exec-file")
            .arg(&self.exec_file)
            .arg("--uid")
            .arg(uid.to_string())
            .arg("--gid")
            .arg(gid.to_string())
            .arg("--chroot-base-dir")
            .arg(self.base.path())
            .arg("--parent-cgroup")
            .arg(&self.parent_cgroup)
            .args(extra);
        cmd
    }

    /// Runs the jailer to completion.
    pub fn run(&self, uid: u32, gid: u32, extra: &[&str]) -> Output {
        self.command(uid, gid, extra)
            .stdin(Stdio::null())
            .output()
            .expect("run jailer")
    }

    /// Starts the jailer with piped stdout and returns the lines printed up to and including `marker`.
    pub fn spawn_until(
        &mut self,
        uid: u32,
        gid: u32,
        extra: &[&str],
        marker: &str,
    ) -> (u32, Vec<String>) {
        let mut child = self
            .command(uid, gid, extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn jailer");
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout");
        self.children.push(child);
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read");
            let done = line == marker;
            lines.push(line);
            if done {
                return (pid, lines);
            }
        }
        panic!("jailed program ended before printing {marker:?}; got {lines:?}");
    }

    /// Waits for `<root>/<exec-file-name>.pid` (written with --new-pid-ns / --daemonize).
    pub fn wait_pid_file(&mut self) -> i32 {
        let name = self
            .exec_file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let path = self.root().join(format!("{name}.pid"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = std::fs::read_to_string(&path) {
                if let Ok(pid) = s.trim().parse() {
                    self.pids.push(pid);
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no pid file at {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The jail's cgroup directory in a hierarchy mounted at `mount`.
    pub fn cgroup_dir(&self, mount: &Path) -> PathBuf {
        mount.join(&self.parent_cgroup).join(&self.id)
    }
}

impl Drop for TestJail {
    fn drop(&mut self) {
        for pid in &self.pids {
            // SAFETY: plain kill.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Wait until the killed processes are gone, so their cgroups can be removed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            for m in parse_mountinfo(&mounts).unwrap_or_default() {
                if m.fs_type == "cgroup" || m.fs_type == "cgroup2" {
                    let _ = std::fs::remove_dir(self.cgroup_dir(&m.mount_point));
                    let _ = std::fs::remove_dir(m.mount_point.join(&self.parent_cgroup));
                }
            }
        }
    }
}

/// `/proc/<pid>/status` as a map.
pub fn proc_status(pid: i32) -> HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The namespace a process is in, e.g. `mnt:[4026531841]`.
pub fn namespace(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A file that passes the jailer's static-ELF check but that the kernel refuses to exec (ENOEXEC),
/// to make the very last step fail.
pub fn unexecutable_elf(dir: &Path) -> PathBuf {
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little-endian
    f[6] = 1; // version
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let mut ph = vec![0u8; 56];
    ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend(ph);
    let path = dir.join("notexec");
    std::fs::write(&path, f).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}
