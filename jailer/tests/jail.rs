//! End-to-end tests of `cairn-jailer` with a static busybox as the "VMM". Root only: each prints
//! `SKIP <name>: not root` (or `SKIP <name>: no static busybox`) and passes otherwise.
//!
//! The jail has no /proc, so busybox applets that are not built into the shell are run as
//! `/busybox APPLET`, and everything about the jailed process is checked from outside, through
//! `/proc/<pid>`.

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use support::*;

const UID: u32 = 1234;
const GID: u32 = 2345;

macro_rules! setup {
    ($name:literal) => {{
        if !require_root($name) {
            return;
        }
        match static_busybox($name) {
            Some(b) => b,
            None => return,
        }
    }};
}

fn assert_unprivileged(pid: i32, uid: u32, gid: u32) {
    let st = proc_status(pid);
    let ids = |v: u32| format!("{v}\t{v}\t{v}\t{v}");
    assert_eq!(st["Uid"], ids(uid), "{st:?}");
    assert_eq!(st["Gid"], ids(gid), "{st:?}");
    assert_eq!(st["Groups"], "", "supplementary groups: {st:?}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(st[cap], "0000000000000000", "{cap}: {st:?}");
    }
    assert_eq!(st["NoNewPrivs"], "1");
}

fn assert_own_namespaces(pid: i32) {
    let p = pid.to_string();
    for ns in ["mnt", "ipc", "uts"] {
        assert_ne!(
            namespace(&p, ns),
            namespace("self", ns),
            "{ns} namespace not new"
        );
    }
}

#[test]
fn jails_in_place_with_cgroup_and_limits() {
    let busybox = setup!("jails_in_place_with_cgroup_and_limits");
    let mut jail = TestJail::new("inplace", &busybox);
    let pids = pids_hierarchy();
    let mut extra: Vec<String> = Vec::new();
    if let Some((version, _)) = &pids {
        extra.extend([
            "--cgroup-version".into(),
            version.to_string(),
            "--cgroup".into(),
            "pids.max=64".into(),
        ]);
    } else {
        println!("note: no usable pids controller; cgroup checks skipped");
    }
    extra.extend(["--resource-limit".into(), "fsize=1048576".into()]);
    let script = "echo pid=$$; ls /; ls /dev; echo ready; exec /busybox sleep 30";
    extra.extend(["--".into(), "sh".into(), "-c".into(), script.into()]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (jailer_pid, lines) = jail.spawn_until(UID, GID, &extra, "ready");
    let pid = jailer_pid as i32;

    // No fork: the VMM has the jailer's pid, and sees only its own files.
    assert_eq!(lines[0], format!("pid={pid}"));
    assert_eq!(lines[1..3], ["busybox", "dev"], "{lines:?}");
    assert_eq!(lines[3..7], ["kvm", "net", "null", "urandom"], "{lines:?}");
    assert_unprivileged(pid, UID, GID);
    assert_own_namespaces(pid);
    assert_eq!(namespace(&pid.to_string(), "pid"), namespace("self", "pid"));
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_eq!(root, Path::new("/"), "root as the process sees it");

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        line("Max open files").ends_with("2048 2048 files"),
        "{limits}"
    );
    assert!(
        line("Max file size").ends_with("1048576 1048576 bytes"),
        "{limits}"
    );

    if let Some((version, mount)) = &pids {
        let dir = jail.cgroup_dir(mount);
        assert_eq!(
            std::fs::read_to_string(dir.join("pids.max"))
                .unwrap()
                .trim(),
            "64"
        );
        let attach = if *version == "1" {
            "tasks"
        } else {
            "cgroup.procs"
        };
        let members = std::fs::read_to_string(dir.join(attach)).unwrap();
        assert!(members.lines().any(|l| l == pid.to_string()), "{members}");
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let expected = format!("/{}/{}", jail.parent_cgroup, jail.id);
        assert!(own.lines().any(|l| l.ends_with(&expected)), "{own}");
    }

    // Host view of the jail: binary root-owned 0755, devices owned by the jail user.
    let root = jail.root();
    let bin = std::fs::metadata(root.join("busybox")).unwrap();
    assert_eq!((bin.uid(), bin.mode() & 0o7777), (0, 0o755));
    let kvm = std::fs::metadata(root.join("dev/kvm")).unwrap();
    assert!(kvm.file_type().is_char_device());
    assert_eq!(
        (kvm.uid(), kvm.gid(), kvm.mode() & 0o777, kvm.rdev()),
        (UID, GID, 0o600, libc::makedev(10, 232))
    );
}

#[test]
fn new_pid_ns_makes_the_vmm_pid_1_and_propagates_exit() {
    let busybox = setup!("new_pid_ns_makes_the_vmm_pid_1_and_propagates_exit");
    let mut jail = TestJail::new("pidns", &busybox);
    let script = "echo pid=$$; echo ready; exec /busybox sleep 30";
    let (jailer_pid, lines) = jail.spawn_until(
        UID,
        GID,
        &["--new-pid-ns", "--", "sh", "-c", script],
        "ready",
    );
    assert_eq!(lines[0], "pid=1");
    let pid = jail.wait_pid_file();
    assert_ne!(pid as u32, jailer_pid);
    let st = proc_status(pid);
    let nspid: Vec<&str> = st["NSpid"].split_whitespace().collect();
    assert_eq!(nspid, [pid.to_string().as_str(), "1"], "{st:?}");
    assert_unprivileged(pid, UID, GID);
    assert_own_namespaces(pid);
    assert_ne!(namespace(&pid.to_string(), "pid"), namespace("self", "pid"));

    // The jailer waits for the VMM and exits with its status.
    let jail2 = TestJail::new("pidns-exit", &busybox);
    let out = jail2.run(UID, GID, &["--new-pid-ns", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
}

#[test]
fn daemonize_detaches_and_returns() {
    let busybox = setup!("daemonize_detaches_and_returns");
    let mut jail = TestJail::new("daemon", &busybox);
    let out = jail.run(
        UID,
        GID,
        &[
            "--daemonize",
            "--",
            "sh",
            "-c",
            "echo not-seen; exec /busybox sleep 30",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "stdout must go to /dev/null: {out:?}"
    );
    let pid = jail.wait_pid_file();
    assert_unprivileged(pid, UID, GID);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let session: i32 = after.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(session, pid, "a new session: {stat}");
    for fd in 0..3 {
        // Opened before pivot_root, so it reads as the host path of the jail's /dev/null.
        let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(target, jail.root().join("dev/null"), "fd {fd}");
        let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(meta.rdev(), libc::makedev(1, 3));
    }
}

#[test]
fn root_uid_still_has_no_capabilities() {
    let busybox = setup!("root_uid_still_has_no_capabilities");
    let mut jail = TestJail::new("uid0", &busybox);
    let (pid, _) = jail.spawn_until(
        0,
        0,
        &["--", "sh", "-c", "echo ready; exec /busybox sleep 30"],
        "ready",
    );
    assert_unprivileged(pid as i32, 0, 0);
}

#[test]
fn joins_netns_and_creates_userfaultfd() {
    let busybox = setup!("joins_netns_and_creates_userfaultfd");
    let mut jail = TestJail::new("netns", &busybox);
    let ns_file = jail.base.path().join("netns");
    std::fs::write(&ns_file, b"").unwrap();
    let made = std::process::Command::new("unshare")
        .arg(format!("--net={}", ns_file.display()))
        .arg("true")
        .status();
    if !matches!(made, Ok(s) if s.success()) {
        println!(
            "SKIP joins_netns_and_creates_userfaultfd: could not create a netns with unshare(1)"
        );
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _unmount = Unmount(&ns_file);
    let uffd = Path::new("/sys/class/misc/userfaultfd/dev").exists()
        || std::fs::read_to_string("/proc/misc")
            .unwrap_or_default()
            .contains("userfaultfd");
    let ns = ns_file.to_str().unwrap();
    let mut extra = vec!["--netns", ns];
    if uffd {
        extra.push("--userfaultfd");
    }
    extra.extend(["--", "sh", "-c", "echo ready; exec /busybox sleep 30"]);
    let (pid, _) = jail.spawn_until(UID, GID, &extra, "ready");
    let ns_of_vmm = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    let ns_wanted = std::fs::metadata(&ns_file).unwrap();
    assert_eq!(
        (ns_of_vmm.dev(), ns_of_vmm.ino()),
        (ns_wanted.dev(), ns_wanted.ino())
    );
    if uffd {
        let node = std::fs::metadata(jail.root().join("dev/userfaultfd")).unwrap();
        assert!(node.file_type().is_char_device());
        assert_eq!((node.uid(), node.mode() & 0o777), (UID, 0o600));
    } else {
        println!("note: no userfaultfd device on this host; --userfaultfd not checked");
    }
}

/// Runs a start that must fail and checks it printed one error line and left nothing behind.
fn assert_fails_cleanly(jail: &TestJail, extra: &[&str], expect_in_error: &str) {
    let out = jail.run(UID, GID, extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {extra:?}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("cairn-jailer: error: "), "{stderr}");
    assert!(
        stderr.contains(expect_in_error),
        "{expect_in_error:?} not in {stderr}"
    );
    let exec_dir = jail.id_dir().parent().unwrap().to_owned();
    assert!(
        !exec_dir.exists(),
        "{} left behind for {extra:?}",
        exec_dir.display()
    );
    if let Some((_, mount)) = pids_hierarchy() {
        let parent = mount.join(&jail.parent_cgroup);
        assert!(
            !parent.exists(),
            "{} left behind for {extra:?}",
            parent.display()
        );
    }
}

#[test]
fn failed_starts_leave_nothing_behind() {
    let busybox = setup!("failed_starts_leave_nothing_behind");
    let jail = TestJail::new("fail", &busybox);
    let cg = match pids_hierarchy() {
        Some((v, _)) => vec!["--cgroup-version", v, "--cgroup", "pids.max=64"],
        None => vec![],
    };
    let with = |extra: &[&'static str]| -> Vec<&str> {
        cg.iter().copied().chain(extra.iter().copied()).collect()
    };

    // A cgroup file that does not exist: the cgroups made before it go again.
    if !cg.is_empty() {
        assert_fails_cleanly(
            &jail,
            &with(&["--cgroup", "pids.bogus=1", "--", "true"]),
            "pids.bogus",
        );
    }
    // A controller that is not mounted.
    assert_fails_cleanly(
        &jail,
        &["--cgroup", "nosuchctl.max=1", "--", "true"],
        "nosuchctl",
    );
    // A limit the kernel refuses, after the process joined its cgroups.
    assert_fails_cleanly(
        &jail,
        &with(&["--resource-limit", "no-file=99999999999", "--", "true"]),
        "no-file",
    );
    // A network namespace path that is not one.
    assert_fails_cleanly(
        &jail,
        &with(&["--netns", "/etc/hostname", "--", "true"]),
        "network namespace",
    );

    // The very last step (execve, after pivot_root and the uid switch) fails: in place and forked.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad_jail = TestJail::new("fail-exec", &unexecutable_elf(bad_dir.path()));
    assert_fails_cleanly(&bad_jail, &with(&["--", "x"]), "could not execute");
    assert_fails_cleanly(
        &bad_jail,
        &with(&["--new-pid-ns", "--", "x"]),
        "could not execute",
    );
    assert_fails_cleanly(
        &bad_jail,
        &with(&["--daemonize", "--", "x"]),
        "could not execute",
    );

    // Inputs refused before anything is made.
    let dynamic = TestJail::new("fail-dyn", Path::new("/bin/sh"));
    if cairn_jailer::exec_file::inspect(Path::new("/bin/sh")).is_err() {
        assert_fails_cleanly(&dynamic, &["--", "true"], "dynamically linked");
    }
    let missing = TestJail::new("fail-missing", Path::new("/nonexistent/vmm"));
    assert_fails_cleanly(&missing, &["--", "true"], "does not exist");
    let out = jail.command(UID, GID, &["--id", "other"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = std::process::Command::new(jailer_bin())
        .args([
            "--id",
            "bad_id",
            "--exec-file",
            "/bin/busybox",
            "--uid",
            "1",
            "--gid",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--id"));
}

#[test]
fn reuses_an_existing_prepopulated_jail() {
    let busybox = setup!("reuses_an_existing_prepopulated_jail");
    let jail = TestJail::new("exists", &busybox);
    // As Firecracker's orchestrators do: make <id>/root and hard-link the kernel into it first.
    std::fs::create_dir_all(jail.root()).unwrap();
    let kernel = jail.root().join("vmlinux");
    let outside = jail.root().parent().unwrap().join("vmlinux.orig");
    std::fs::write(&outside, b"kernel").unwrap();
    std::fs::hard_link(&outside, &kernel).unwrap();
    let out = jail.run(UID, GID, &["--", "test", "-f", "/vmlinux"]);
    assert!(out.status.success(), "{out:?}");
    assert!(jail.root().join("busybox").exists());
    // A second jail with the same id once the first has ended: the directory is reused.
    let out = jail.run(UID, GID, &["--", "test", "-f", "/vmlinux"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&kernel).unwrap(), b"kernel");
}

#[test]
fn refuses_the_id_of_a_live_jail() {
    let busybox = setup!("refuses_the_id_of_a_live_jail");
    let mut jail = TestJail::new("live", &busybox);
    let script = "echo ready; exec /busybox sleep 30";
    let (_pid, _) = jail.spawn_until(UID, GID, &["--", "sh", "-c", script], "ready");
    let out = jail.run(UID, GID, &["--", "true"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is in use"),
        "{out:?}"
    );
    assert!(
        jail.root().join("busybox").exists(),
        "the live jail keeps its files"
    );
}

#[test]
fn cpuset_v1_inherits_cpus_and_mems() {
    let busybox = setup!("cpuset_v1_inherits_cpus_and_mems");
    let Some(mount) = cgroup_mount(Some("cpuset")) else {
        println!("SKIP cpuset_v1_inherits_cpus_and_mems: no writable cgroup v1 cpuset hierarchy");
        return;
    };
    let mut jail = TestJail::new("cpuset", &busybox);
    let extra = [
        "--cgroup",
        "cpuset.memory_migrate=0",
        "--",
        "sh",
        "-c",
        "echo ready; exec /busybox sleep 30",
    ];
    let (pid, _) = jail.spawn_until(UID, GID, &extra, "ready");
    let dir = jail.cgroup_dir(&mount);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let read = |p: &Path| {
            std::fs::read_to_string(p.join(file))
                .unwrap()
                .trim()
                .to_string()
        };
        assert!(!read(&dir).is_empty());
        assert_eq!(read(&dir), read(&mount), "{file}");
    }
    let tasks = std::fs::read_to_string(dir.join("tasks")).unwrap();
    assert!(tasks.lines().any(|l| l == pid.to_string()));
}

#[test]
fn cgroup_v2_core_file_and_membership() {
    let busybox = setup!("cgroup_v2_core_file_and_membership");
    let Some(mount) = cgroup_mount(None) else {
        println!("SKIP cgroup_v2_core_file_and_membership: no writable cgroup2 mount");
        return;
    };
    // A core file needs no controller, so this changes no cgroup.subtree_control of the host.
    let mut jail = TestJail::new("v2", &busybox);
    let extra = [
        "--cgroup-version",
        "2",
        "--cgroup",
        "cgroup.max.depth=5",
        "--new-pid-ns",
        "--",
        "sh",
        "-c",
        "echo ready; exec /busybox sleep 30",
    ];
    jail.spawn_until(UID, GID, &extra, "ready");
    let pid = jail.wait_pid_file();
    let dir = jail.cgroup_dir(&mount);
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.max.depth"))
            .unwrap()
            .trim(),
        "5"
    );
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        own.lines()
            .any(|l| l == format!("0::/{}/{}", jail.parent_cgroup, jail.id)),
        "{own}"
    );
}

/// A host directory writable by the jail user, with one file in it, and a read-only host file.
fn bind_sources(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = tmp.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in.txt"), "from the host\n").unwrap();
    std::os::unix::fs::chown(&data, Some(UID), Some(GID)).unwrap();
    let kernel = tmp.join("kernel");
    std::fs::write(&kernel, "kernel image\n").unwrap();
    std::os::unix::fs::chown(&kernel, Some(UID), Some(GID)).unwrap();
    (data, kernel)
}

#[test]
fn binds_host_paths_into_the_jail() {
    let busybox = setup!("binds_host_paths_into_the_jail");
    let tmp = tempfile::tempdir().unwrap();
    let (data, kernel) = bind_sources(tmp.path());
    let mut jail = TestJail::new("bind", &busybox);
    let rw = format!("{}:/sandbox", data.display());
    let ro = format!("{}:/boot/kernel:ro", kernel.display());
    // The kernel file is owned by the jail user, so only the read-only mount stops the write.
    let script = "/busybox cat /sandbox/in.txt; echo hi > /sandbox/out.txt && echo wrote; \
                  (echo x >> /boot/kernel) 2>/dev/null || echo ro-refused; /busybox cat /boot/kernel; \
                  /busybox ls /; echo ready; exec /busybox sleep 30";
    let extra = ["--bind", &rw, "--bind", &ro, "--", "sh", "-c", script];
    let (pid, lines) = jail.spawn_until(UID, GID, &extra, "ready");
    let pid = pid as i32;
    assert_eq!(
        lines,
        [
            "from the host",
            "wrote",
            "ro-refused",
            "kernel image",
            "boot",
            "busybox",
            "dev",
            "sandbox",
            "ready"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt")).unwrap(),
        "hi\n"
    );
    assert_eq!(std::fs::read_to_string(&kernel).unwrap(), "kernel image\n");
    assert_unprivileged(pid, UID, GID);

    // The jail's mount table has both binds, nosuid and nodev, the kernel read-only.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let options = |point: &str| -> Vec<String> {
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(point))
            .unwrap_or_else(|| panic!("{point} not mounted: {mounts}"));
        let opts = line.split(' ').nth(5).unwrap();
        opts.split(',').map(str::to_string).collect()
    };
    for (point, mode) in [("/sandbox", "rw"), ("/boot/kernel", "ro")] {
        let o = options(point);
        assert!(o.contains(&mode.to_string()), "{point}: {o:?}");
        assert!(o.contains(&"nosuid".to_string()), "{point}: {o:?}");
        assert!(o.contains(&"nodev".to_string()), "{point}: {o:?}");
    }
    // Nothing propagated to the host: its mount table does not know the jail root.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = jail.root();
    assert!(!host.contains(root.to_str().unwrap()), "{host}");
    // From the host, the mount points are empty and root-owned.
    let point = std::fs::metadata(root.join("sandbox")).unwrap();
    assert_eq!((point.uid(), point.mode() & 0o777), (0, 0o755));
    assert_eq!(std::fs::read_dir(root.join("sandbox")).unwrap().count(), 0);
}

#[test]
fn failed_start_with_binds_keeps_the_host_files() {
    let busybox = setup!("failed_start_with_binds_keeps_the_host_files");
    let tmp = tempfile::tempdir().unwrap();
    let (data, kernel) = bind_sources(tmp.path());
    let rw = format!("{}:/sandbox", data.display());
    let ro = format!("{}:/kernel:ro", kernel.display());
    // The exec fails after pivot_root, with the binds mounted: the undo removes the jail tree, in the
    // jailer itself (in place) or in the parent (forked), and must not reach into the bound directory.
    let notexec = unexecutable_elf(tmp.path());
    for (tag, fork) in [("bindfail", false), ("bindfailfork", true)] {
        let jail = TestJail::new(tag, &notexec);
        let mut extra = vec!["--bind", &rw, "--bind", &ro];
        if fork {
            extra.push("--new-pid-ns");
        }
        assert_fails_cleanly(&jail, &extra, "could not execute");
        assert_eq!(
            std::fs::read_to_string(data.join("in.txt")).unwrap(),
            "from the host\n"
        );
        assert_eq!(std::fs::read_to_string(&kernel).unwrap(), "kernel image\n");
    }
    // Refused before anything is created.
    let jail = TestJail::new("bindbad", &busybox);
    let missing = format!("{}/missing:/x", tmp.path().display());
    assert_fails_cleanly(&jail, &["--bind", &missing], "missing");
    let hides = format!("{}:/busybox", data.display());
    assert_fails_cleanly(&jail, &["--bind", &hides], "would hide the VMM binary");
    assert!(data.join("in.txt").exists());
}
