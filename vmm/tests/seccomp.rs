//! Seccomp in `cairn-vmm`: a syscall outside a thread's filter kills the process with SIGSYS,
//! allowed ones keep working, and the binary runs every thread filtered by default.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_tests::process::http::{request, wait_for_socket};
use cairn_tests::process::{write_config, Guest};
use cairn_tests::{guests, kvm_available};
use cairn_vmm::seccomp::{self, ThreadKind};

/// Set in the re-executed child: `<kind>:<action>`.
const CHILD_ENV: &str = "CAIRN_SECCOMP_TEST_CHILD";
/// Exit code of a child that survived what should have killed it.
const SURVIVED: i32 = 42;

fn kind_named(name: &str) -> ThreadKind {
    match name {
        "vmm" => ThreadKind::Vmm,
        "api" => ThreadKind::Api,
        "vcpu" => ThreadKind::Vcpu,
        other => panic!("unknown kind {other}"),
    }
}

/// The child: install the filter on this thread, say so, then do `action`. Never returns.
fn child(spec: &str) -> ! {
    let (kind, action) = spec.split_once(':').unwrap();
    seccomp::install(kind_named(kind)).unwrap();
    eprintln!("filter {kind} installed");
    // SAFETY: raw syscalls with valid (or null) arguments; the point is whether the filter lets
    // them through. _exit ends the process without running anything else.
    unsafe {
        match action {
            "execve" => {
                let path = c"/bin/true";
                let argv = [path.as_ptr(), std::ptr::null()];
                let envp: [*const libc::c_char; 1] = [std::ptr::null()];
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            }
            "socket_inet" => {
                libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            }
            "ioctl_other" => {
                // FS_IOC_GETFLAGS on stdin: not a KVM (or tty/tun, for vmm) ioctl.
                let mut flags = 0u32;
                libc::ioctl(0, 0x8008_6601, &mut flags);
            }
            "allowed" => {
                // What every thread kind does all the time: allocate, lock, look at the clock,
                // write to stderr.
                let v: Vec<u8> = vec![7; 1 << 22];
                let m = std::sync::Mutex::new(v.len());
                let _ = *m.lock().unwrap();
                let _ = Instant::now();
                let line = format!("{kind}: still alive\n");
                let written = libc::write(2, line.as_ptr().cast(), line.len());
                libc::_exit(if written == line.len() as isize { 0 } else { 3 });
            }
            "rate_limiter" => {
                // A throttled device: create the refill timer, arm it, wait for it.
                use cairn_devices::rate_limiter::{BucketConfig, LimiterConfig, RateLimiter};
                let cfg = LimiterConfig {
                    bandwidth: Some(BucketConfig {
                        size: 10,
                        one_time_burst: 0,
                        refill_time_ms: 10,
                    }),
                    ops: None,
                };
                let mut l = RateLimiter::new(&cfg).unwrap();
                let throttled = l.consume_request(10) && !l.consume_request(10) && l.is_blocked();
                l.on_timer();
                libc::_exit(if throttled && !l.is_blocked() { 0 } else { 3 });
            }
            other => panic!("unknown action {other}"),
        }
        libc::_exit(SURVIVED);
    }
}

/// Re-run this test binary as a child doing `kind:action`; return its status and stderr.
fn run_child(spec: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Entry point of the re-executed child; a no-op in a normal test run.
#[test]
fn child_entry() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
    }
}

#[test]
fn forbidden_syscalls_kill_the_process_with_sigsys() {
    let cases = [
        "vcpu:execve",
        "vcpu:socket_inet",
        "vcpu:ioctl_other",
        "api:execve",
        "api:socket_inet",
        "vmm:execve",
        "vmm:socket_inet",
        "vmm:ioctl_other",
    ];
    for spec in cases {
        let (status, stderr) = run_child(spec);
        assert!(
            stderr.contains("installed"),
            "{spec}: the filter was not installed: {stderr}"
        );
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{spec}: {status:?}\n{stderr}"
        );
    }
}

#[test]
fn allowed_syscalls_keep_working_under_every_filter() {
    for kind in ["vmm", "api", "vcpu"] {
        let (status, stderr) = run_child(&format!("{kind}:allowed"));
        assert_eq!(status.code(), Some(0), "{kind}: {status:?}\n{stderr}");
    }
}

#[test]
fn rate_limiter_timer_works_under_the_vmm_filter() {
    let (status, stderr) = run_child("vmm:rate_limiter");
    assert_eq!(status.code(), Some(0), "{status:?}\n{stderr}");
}

#[test]
fn the_library_leaves_filtering_off() {
    assert!(!seccomp::enabled());
    // A no-op while disabled: this test thread stays unfiltered.
    seccomp::install_for_thread(ThreadKind::Vcpu).unwrap();
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert!(status.contains("Seccomp:\t0"), "{status}");
}

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn-vmm"))
}

#[test]
fn config_file_boot_runs_filtered_and_exits_zero() {
    if !kvm_available("config_file_boot_runs_filtered_and_exits_zero") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &serde_json::json!({
            "boot-source": {"kernel_image_path": guests::HELLO64, "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 64},
        }),
    );
    let mut cmd = vmm();
    cmd.args(["--no-api", "--level", "Debug", "--config-file"])
        .arg(&cfg);
    let mut g = Guest::spawn(cmd);
    g.wait_for("cairn-tiny: mmio ok", Duration::from_secs(20))
        .unwrap();
    let status = g
        .wait_exit(Duration::from_secs(10))
        .expect("VMM did not exit");
    assert_eq!(status.code(), Some(0), "{status:?} stderr: {}", g.stderr());
    let err = g.stderr();
    assert!(err.contains("seccomp filter vmm installed"), "{err}");
    assert_eq!(
        err.matches("seccomp filter vcpu installed").count(),
        2,
        "{err}"
    );
}

/// `(name, Seccomp mode, Seccomp_filters)` of every thread of `pid`.
fn thread_filters(pid: u32) -> Vec<(String, String, String)> {
    let mut out = vec![];
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Seccomp:"), field("Seccomp_filters:")));
    }
    out.sort();
    out
}

#[test]
fn every_thread_is_filtered_in_api_mode() {
    if !kvm_available("every_thread_is_filtered_in_api_mode") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut cmd = vmm();
    cmd.arg("--api-sock").arg(&sock);
    let mut g = Guest::spawn(cmd);
    wait_for_socket(&sock, Duration::from_secs(5));
    let (status, _) = request(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "mem_size_mib": 64}"#),
    );
    assert_eq!(status, 204);
    let boot =
        serde_json::json!({"kernel_image_path": guests::HALT64, "boot_args": "console=ttyS0"});
    assert_eq!(
        request(&sock, "PUT", "/boot-source", Some(&boot.to_string())).0,
        204
    );
    let (status, body) = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 204, "{body}");
    g.wait_for("cairn-tiny: halted", Duration::from_secs(20))
        .unwrap();

    // Pause, snapshot and resume: the main thread's file and KVM work under its filter.
    assert_eq!(
        request(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    let snap = serde_json::json!({
        "snapshot_type": "Full",
        "snapshot_path": dir.path().join("state"),
        "mem_file_path": dir.path().join("mem"),
    });
    let (status, body) = request(&sock, "PUT", "/snapshot/create", Some(&snap.to_string()));
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        request(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0,
        204
    );

    let threads = thread_filters(g.pid());
    // Main, API, two vCPUs, and KVM's own workers (kvm-nx-lpage-recovery), which the kernel
    // forks from a vCPU thread, filters included.
    assert!(threads.len() >= 4, "{threads:?}");
    for (name, mode, filters) in &threads {
        assert_eq!(mode, "2", "{name} is not filtered: {threads:?}");
        // vCPUs started by an API InstanceStart carry the main thread's filter and their own.
        let want = match name.as_str() {
            "cairn-vmm" | "cairn_api" => "1",
            n if n.starts_with("cairn_vcpu") => "2",
            _ => continue,
        };
        if !filters.is_empty() {
            assert_eq!(filters, want, "{name}: {threads:?}");
        }
    }
    for name in ["cairn-vmm", "cairn_api", "cairn_vcpu0", "cairn_vcpu1"] {
        assert!(
            threads.iter().any(|t| t.0 == name),
            "no {name}: {threads:?}"
        );
    }

    // Restore that snapshot in a second, filtered VMM.
    let sock2 = dir.path().join("api2.sock");
    let mut cmd = vmm();
    cmd.arg("--api-sock").arg(&sock2);
    let mut g2 = Guest::spawn(cmd);
    wait_for_socket(&sock2, Duration::from_secs(5));
    let load = serde_json::json!({
        "snapshot_path": dir.path().join("state"),
        "mem_backend": {"backend_type": "File", "backend_path": dir.path().join("mem")},
        "resume_vm": true,
    });
    let (status, body) = request(&sock2, "PUT", "/snapshot/load", Some(&load.to_string()));
    assert_eq!(status, 204, "{body}");
    let (_, body) = request(&sock2, "GET", "/", None);
    assert!(body.contains("\"Running\""), "{body}");
    assert!(thread_filters(g2.pid()).iter().all(|t| t.1 == "2"));

    for vm in [&mut g, &mut g2] {
        vm.signal(libc::SIGTERM);
        let status = vm
            .wait_exit(Duration::from_secs(10))
            .expect("VMM did not stop");
        assert_ne!(
            status.signal(),
            Some(libc::SIGSYS),
            "killed by seccomp: {}",
            vm.stderr()
        );
    }
}

#[test]
fn no_seccomp_leaves_threads_unfiltered() {
    if !kvm_available("no_seccomp_leaves_threads_unfiltered") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &serde_json::json!({
            "boot-source": {"kernel_image_path": guests::HALT64, "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        }),
    );
    let mut cmd = vmm();
    cmd.args(["--no-api", "--no-seccomp", "--config-file"])
        .arg(&cfg);
    let g = Guest::spawn(cmd);
    g.wait_for("cairn-tiny: halted", Duration::from_secs(20))
        .unwrap();
    let threads = thread_filters(g.pid());
    assert!(threads.iter().all(|t| t.1 == "0"), "{threads:?}");
}
