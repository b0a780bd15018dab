//! `cairn-vmm` as production runs it: a static binary under `cairn-jailer` (new pid namespace,
//! unprivileged uid/gid, a pids cgroup), with its seccomp filters on. Everything is checked from
//! outside through `/proc/<pid>`: every thread filtered (`Seccomp: 2`), the pid namespace, ids,
//! capabilities, the root, the cgroup, and the guest's serial output. Two ways in: the API (the
//! guest is copied in after the start, as docs/jailer.md says), and `--no-api --config-file`
//! (the jail starts frozen in a v1 freezer cgroup while the guest and config are copied in).
//!
//! Root only (prints `SKIP <name>: not root` otherwise) and needs `/dev/kvm`. The static VMM and
//! the jailer are built on first use with
//! `RUSTFLAGS='-C target-feature=+crt-static' cargo build -p cairn-vmm -p cairn-jailer --target x86_64-unknown-linux-gnu`
//! into `target/jailed-vmm` (cached: later runs only check it is up to date). Set
//! `CAIRN_STATIC_VMM` (and `CAIRN_JAILER`) to use binaries built elsewhere.

#[path = "../../jailer/tests/support/mod.rs"]
mod jail_support;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cairn_tests::process::http::{request, wait_for_socket};
use cairn_tests::{guests, kvm_available, on_tmpfs};
use jail_support::{cgroup_mount, pids_hierarchy, proc_status, require_root, TestJail};

const UID: u32 = 1234;
const GID: u32 = 1234;
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The static `cairn-vmm` and the `cairn-jailer` to run it with, built (or found up to date) in
/// `<workspace>/target/jailed-vmm`.
fn static_binaries() -> (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let (vmm, jailer) = build_static_binaries();
            // Read by the jail support's `jailer_bin()`.
            std::env::set_var("CAIRN_JAILER", &jailer);
            (vmm, jailer)
        })
        .clone()
}

fn build_static_binaries() -> (PathBuf, PathBuf) {
    if let Some(vmm) = std::env::var_os("CAIRN_STATIC_VMM") {
        let jailer =
            std::env::var_os("CAIRN_JAILER").expect("CAIRN_STATIC_VMM needs CAIRN_JAILER too");
        return (vmm.into(), jailer.into());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target_dir = workspace.join("target/jailed-vmm");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--offline",
            "-p",
            "cairn-vmm",
            "-p",
            "cairn-jailer",
            "--target",
            TARGET,
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdout(Stdio::null())
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the static cairn-vmm failed");
    eprintln!("static cairn-vmm ready in {:?}", started.elapsed());
    let bin = target_dir.join(TARGET).join("debug");
    (bin.join("cairn-vmm"), bin.join("cairn-jailer"))
}

/// Collects a child's stdout in the background.
fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    out
}

fn wait_for(out: &Mutex<Vec<u8>>, marker: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !String::from_utf8_lossy(&out.lock().unwrap()).contains(marker) {
        assert!(
            Instant::now() < deadline,
            "no {marker:?} on the console: {}",
            String::from_utf8_lossy(&out.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn jailed_static_vmm_runs_every_thread_filtered() {
    let name = "jailed_static_vmm_runs_every_thread_filtered";
    if !require_root(name) || !kvm_available(name) {
        return;
    }
    let (vmm, _) = static_binaries();

    let mut jail = TestJail::new("seccomp", &vmm);
    let pids = pids_hierarchy();
    let mut args: Vec<String> = vec!["--new-pid-ns".into()];
    if let Some((version, _)) = &pids {
        args.extend([
            "--cgroup-version".into(),
            version.to_string(),
            "--cgroup".into(),
            "pids.max=64".into(),
        ]);
    } else {
        eprintln!("{name}: no writable pids cgroup hierarchy; cgroup checks skipped");
    }
    args.extend(["--", "--api-sock", "/api.sock"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let console = spawn_jailed(&mut jail, &args, &[]);
    let pid = jail.wait_pid_file();
    let sock = boot_through_api(&jail, guests::HALT64, 2);
    wait_for(&console, "cairn-tiny: halted", Duration::from_secs(20));
    // Pause and resume: vCPU kicks (tgkill) and state requests under the filters.
    assert_eq!(
        request(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    assert_eq!(
        request(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0,
        204
    );

    check_jailed(
        &jail,
        pid,
        pids.as_ref().map(|p| p.1.as_path()),
        &["cairn-vmm", "cairn_api", "cairn_vcpu0", "cairn_vcpu1"],
    );
    let stdout = String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    assert!(stdout.contains("cairn-tiny: halted"), "{stdout}");
}

/// `--no-api --config-file` in the jail. The jailer refuses a pre-filled root and the VMM reads its
/// config at once, so the jail starts frozen (`--cgroup freezer.state=FROZEN`, cgroup v1): the
/// guest and its config go in while the jailer's child is frozen, before its `pivot_root` and
/// exec, and then the cgroup is thawed.
#[test]
fn jailed_static_vmm_boots_a_config_file_filtered() {
    let name = "jailed_static_vmm_boots_a_config_file_filtered";
    if !require_root(name) || !kvm_available(name) {
        return;
    }
    let (Some(("1", pids)), Some(freezer)) = (pids_hierarchy(), cgroup_mount(Some("freezer")))
    else {
        println!("SKIP {name}: needs writable cgroup v1 pids and freezer hierarchies");
        return;
    };
    let (vmm, _) = static_binaries();

    let mut jail = TestJail::new("seccompcfg", &vmm);
    let args = [
        "--new-pid-ns",
        "--cgroup-version",
        "1",
        "--cgroup",
        "pids.max=64",
        "--cgroup",
        "freezer.state=FROZEN",
        "--",
        "--no-api",
        "--config-file",
        "/vm.json",
    ];
    let console = spawn_jailed(&mut jail, &args, &[]);

    // Wait for the jailer's child to sit frozen in the jail's cgroup.
    let frozen = jail.cgroup_dir(&freezer);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(frozen.join("cgroup.procs")).map_or(true, |p| p.trim().is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "the jailer's child never joined {}",
            frozen.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let root = jail.root();
    let kernel = root.join("halt64.elf");
    std::fs::copy(guests::HALT64, &kernel).unwrap();
    let config = root.join("vm.json");
    let cfg = r#"{"boot-source": {"kernel_image_path": "/halt64.elf", "boot_args": "console=ttyS0"},
                  "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#;
    std::fs::write(&config, cfg).unwrap();
    for f in [&kernel, &config] {
        std::os::unix::fs::chown(f, Some(UID), Some(GID)).unwrap();
    }
    std::fs::write(frozen.join("freezer.state"), "THAWED").unwrap();

    let pid = jail.wait_pid_file();
    wait_for(&console, "cairn-tiny: halted", Duration::from_secs(20));
    check_jailed(&jail, pid, Some(&pids), &["cairn-vmm", "cairn_vcpu0"]);
}

/// Opt-in guest RAM in a tmpfs (`CAIRN_GUEST_MEMORY_DIR`, which the jailer passes through) under
/// the jailer: the jail has no `/proc` and the VMM no capability, so the Full snapshot's link of
/// the RAM file cannot go through `/proc/self/fd`; since Linux 6.10 `linkat(AT_EMPTY_PATH)` of a
/// file the caller opened needs no capability, and the snapshot hands the RAM over. On older
/// kernels it copies. Either way the file holds the guest as it was at the snapshot, and the
/// guest's later writes never reach it.
#[test]
fn jailed_static_vmm_hands_guest_ram_in_a_tmpfs_over() {
    let name = "jailed_static_vmm_hands_guest_ram_in_a_tmpfs_over";
    if !require_root(name) || !kvm_available(name) {
        return;
    }
    if !on_tmpfs(Path::new("/dev/shm")) {
        println!("SKIP {name}: /dev/shm is not a tmpfs");
        return;
    }
    let (vmm, _) = static_binaries();
    let ram_host = tempfile::tempdir_in("/dev/shm").unwrap();
    std::os::unix::fs::chown(ram_host.path(), Some(UID), Some(GID)).unwrap();

    let mut jail = TestJail::new("ramdir", &vmm);
    let bind = format!("{}:/ram", ram_host.path().display());
    let args = [
        "--new-pid-ns",
        "--bind",
        &bind,
        "--",
        "--api-sock",
        "/api.sock",
    ];
    let console = spawn_jailed(&mut jail, &args, &[("CAIRN_GUEST_MEMORY_DIR", "/ram")]);
    let pid = jail.wait_pid_file();
    let sock = boot_through_api(&jail, guests::TICKER64, 1);
    wait_for(&console, "T\n", Duration::from_secs(30));
    wait_dots(&console, 1);

    let (ram_inode, shared) = ram_mapping(pid, 64 << 20);
    assert!(
        shared,
        "guest RAM starts as a shared mapping of its tmpfs file"
    );
    let (status, reply) = request(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(status, 204, "{reply}");
    let snapshot = r#"{"snapshot_type": "Full", "snapshot_path": "/ram/vm.snap",
                       "mem_file_path": "/ram/vm.mem"}"#;
    let (status, reply) = request(&sock, "PUT", "/snapshot/create", Some(snapshot));
    assert_eq!(status, 204, "{reply}");
    let mem_file = ram_host.path().join("vm.mem");
    let mem_inode = std::fs::metadata(&mem_file).unwrap().ino();
    let (mapped_inode, still_shared) = ram_mapping(pid, 64 << 20);
    if kernel_at_least(6, 10) {
        assert_eq!(
            mem_inode, ram_inode,
            "the snapshot's memory file is guest RAM's own file, linked in the jail"
        );
        assert_eq!(mapped_inode, mem_inode);
        assert!(
            !still_shared,
            "after the handover guest RAM is a private mapping"
        );
    } else {
        assert_ne!(mem_inode, ram_inode, "without the link the snapshot copies");
        assert!(still_shared);
    }
    let at_snapshot = std::fs::read(&mem_file).unwrap();

    let (status, reply) = request(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
    assert_eq!(status, 204, "{reply}");
    wait_dots(&console, 2);
    assert!(
        std::fs::read(&mem_file).unwrap() == at_snapshot,
        "the guest's writes after the snapshot reached its memory file"
    );
    check_jailed(&jail, pid, None, &["cairn-vmm", "cairn_api", "cairn_vcpu0"]);
}

/// Wait until the ticker guest on `console` has printed `more` dots beyond those printed now.
fn wait_dots(console: &Mutex<Vec<u8>>, more: usize) {
    let dots = || {
        console
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'.')
            .count()
    };
    let target = dots() + more;
    let deadline = Instant::now() + Duration::from_secs(30);
    while dots() < target {
        assert!(Instant::now() < deadline, "the guest stopped printing dots");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Start the jailer with `extra` (its flags, `--`, the VMM's) and `env`; the VMM's console
/// (its stdout) is collected into what this returns.
fn spawn_jailed(jail: &mut TestJail, extra: &[&str], env: &[(&str, &str)]) -> Arc<Mutex<Vec<u8>>> {
    let mut child = jail
        .command(UID, GID, extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn jailer");
    let console = collect(child.stdout.take().unwrap());
    jail.children.push(child);
    console
}

/// Boot `guest` (64 MiB, `vcpus`) in a jailed VMM listening on `/api.sock`. The jailer refuses
/// a pre-filled root, so the guest goes in after the start, as docs/jailer.md describes, and the
/// VM is configured through the API socket. Returns the socket's host path.
fn boot_through_api(jail: &TestJail, guest: &str, vcpus: u8) -> PathBuf {
    let root = jail.root();
    let file = Path::new(guest).file_name().unwrap().to_str().unwrap();
    let kernel = root.join(file);
    std::fs::copy(guest, &kernel).unwrap();
    std::os::unix::fs::chown(&kernel, Some(UID), Some(GID)).unwrap();
    let sock = root.join("api.sock");
    wait_for_socket(&sock, Duration::from_secs(10));
    let machine = format!(r#"{{"vcpu_count": {vcpus}, "mem_size_mib": 64}}"#);
    let boot = format!(r#"{{"kernel_image_path": "/{file}", "boot_args": "console=ttyS0"}}"#);
    for (path, body) in [
        ("/machine-config", machine.as_str()),
        ("/boot-source", boot.as_str()),
        ("/actions", r#"{"action_type": "InstanceStart"}"#),
    ] {
        let (status, reply) = request(&sock, "PUT", path, Some(body));
        assert_eq!(status, 204, "{path}: {reply}");
    }
    sock
}

/// The inode of the file behind `pid`'s mapping of `size` bytes (guest RAM), and whether that
/// mapping is shared.
fn ram_mapping(pid: i32, size: u64) -> (u64, bool) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (start, end) = f.first()?.split_once('-')?;
            let len = u64::from_str_radix(end, 16).ok()? - u64::from_str_radix(start, 16).ok()?;
            let inode: u64 = f.get(4)?.parse().ok()?;
            let shared = f.get(1)?.ends_with('s');
            (len == size && inode != 0).then_some((inode, shared))
        })
        .unwrap_or_else(|| panic!("no file mapping of {size} bytes in {pid}'s maps:\n{maps}"))
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// What is checked of a jailed VMM from outside: every thread filtered (`threads` named, plus
/// KVM's workers, forked from a vCPU), pid 1 of a new pid namespace, ids, no capabilities, the
/// jail root, and (with a pids hierarchy mounted at `pids`) the cgroup.
fn check_jailed(jail: &TestJail, pid: i32, pids: Option<&Path>, threads: &[&str]) {
    let root = jail.root();
    let mut names = vec![];
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let st = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |k: &str| {
            st.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        assert_eq!(field("Seccomp:"), "2", "{st}");
        names.push(field("Name:"));
    }
    for want in threads {
        assert!(
            names.iter().any(|n| n == want),
            "no thread {want}: {names:?}"
        );
    }

    let st = proc_status(pid);
    assert_eq!(
        st["NSpid"],
        format!("{pid}\t1"),
        "pid 1 of a new pid namespace: {st:?}"
    );
    assert_eq!(st["Uid"], format!("{UID}\t{UID}\t{UID}\t{UID}"));
    assert_eq!(st["Gid"], format!("{GID}\t{GID}\t{GID}\t{GID}"));
    assert_eq!(st["CapEff"], "0000000000000000");
    assert_eq!(st["NoNewPrivs"], "1");
    // Its root is the jail's root directory.
    let seen = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
    let jail_root = std::fs::metadata(&root).unwrap();
    assert_eq!((seen.dev(), seen.ino()), (jail_root.dev(), jail_root.ino()));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/root")).unwrap(),
        Path::new("/")
    );

    if let Some(mount) = pids {
        let dir = jail.cgroup_dir(mount);
        assert_eq!(
            std::fs::read_to_string(dir.join("pids.max"))
                .unwrap()
                .trim(),
            "64"
        );
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "{pid} not in {procs}"
        );
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroup.contains(&format!("{}/{}", jail.parent_cgroup, jail.id)),
            "{cgroup}"
        );
    }
}
