//! Firecracker semantics clients depend on, checked on a `cairn-vmm` child process: exit codes
//! of command-line errors (`--enable-pci` among them), a refused PUT keeping the last valid
//! configuration, the API payload limit, and a failed `/snapshot/load` ending the process. None
//! of them boots a VM.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::process::http::{request, wait_for_socket};

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn-vmm"))
}

fn serve(sock: &Path, extra: &[&str]) -> Child {
    let child = vmm()
        .arg("--api-sock")
        .arg(sock)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_socket(sock, Duration::from_secs(10));
    child
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[test]
fn command_line_errors_exit_with_firecrackers_codes() {
    let code = |args: &[&str]| vmm().args(args).output().unwrap().status.code();
    assert_eq!(code(&["--no-such-flag"]), Some(153));
    assert_eq!(
        code(&["--no-api"]),
        Some(153),
        "--no-api needs --config-file"
    );
    assert_eq!(code(&["--help"]), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let sock = sock.to_str().unwrap();
    assert_eq!(code(&["--api-sock", sock, "--level", "Loud"]), Some(152));
    assert_eq!(
        code(&[
            "--api-sock",
            sock,
            "--http-api-max-payload-size",
            "999999999999"
        ]),
        Some(153)
    );
}

#[test]
fn enable_pci_is_refused_with_one_line_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let out = vmm()
        .arg("--api-sock")
        .arg(&sock)
        .arg("--enable-pci")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // Firecracker's exit code for a bad argument (ArgParsing).
    assert_eq!(out.status.code(), Some(153));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("--enable-pci") && lines[0].contains("virtio-mmio"),
        "{err}"
    );
    // Refused before anything starts: no API socket was made.
    assert!(!sock.exists());
}

#[test]
fn a_refused_put_keeps_the_last_valid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    let mut child = serve(&sock, &[]);
    let good = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(request(&sock, "PUT", "/boot-source", Some(&good)).0, 204);
    let (status, body) = request(
        &sock,
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#),
    );
    assert_eq!(status, 400);
    assert!(body.contains("The kernel file cannot be opened"), "{body}");
    let rootfs = dir.path().join("rootfs");
    std::fs::write(&rootfs, vec![0u8; 4096]).unwrap();
    let drive = |id: &str, root: bool| {
        format!(
            r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": {root}}}"#,
            rootfs.display()
        )
    };
    assert_eq!(
        request(&sock, "PUT", "/drives/a", Some(&drive("a", true))).0,
        204
    );
    let (status, body) = request(&sock, "PUT", "/drives/b", Some(&drive("b", true)));
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        request(
            &sock,
            "PATCH",
            "/machine-config",
            Some(r#"{"vcpu_count": 3, "smt": true}"#)
        )
        .0,
        400
    );
    let (_, config) = request(&sock, "GET", "/vm/config", None);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["boot-source"]["kernel_image_path"],
        kernel.display().to_string()
    );
    assert_eq!(config["drives"].as_array().unwrap().len(), 1);
    assert_eq!(config["machine-config"]["vcpu_count"], 1);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_api_payload_limit_follows_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut child = serve(&sock, &["--http-api-max-payload-size", "200"]);
    let big = format!(
        r#"{{"vcpu_count": 1, "mem_size_mib": 128, "x": "{}"}}"#,
        "y".repeat(300)
    );
    let (status, body) = request(&sock, "PUT", "/machine-config", Some(&big));
    assert_eq!(status, 400);
    assert!(body.contains("larger than the limit of 200"), "{body}");
    let _ = child.kill();
    let _ = child.wait();

    // Over Firecracker's default of 51200, under a raised limit: parsed (and refused for the
    // unknown field, not for its size).
    let mut child = serve(&sock, &["--http-api-max-payload-size", "1048576"]);
    let big = format!(
        r#"{{"vcpu_count": 1, "mem_size_mib": 128, "x": "{}"}}"#,
        "y".repeat(60_000)
    );
    let (status, body) = request(&sock, "PUT", "/machine-config", Some(&big));
    assert_eq!(status, 400);
    assert!(
        body.contains("unknown field"),
        "{}",
        &body[..body.len().min(200)]
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_failed_snapshot_load_ends_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let snap = dir.path().join("vm.snap");
    let mem = dir.path().join("vm.mem");
    std::fs::write(&snap, b"not a snapshot").unwrap();
    std::fs::write(&mem, vec![0u8; 4096]).unwrap();
    let mut child = serve(&sock, &[]);
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}}}"#,
        snap.display(),
        mem.display()
    );
    // A body that does not parse is only refused.
    assert_eq!(request(&sock, "PUT", "/snapshot/load", Some("{}")).0, 400);
    assert!(child.try_wait().unwrap().is_none());
    let (status, _) = request(&sock, "PUT", "/snapshot/load", Some(&body));
    assert_eq!(status, 400);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(1));
}

#[test]
fn send_ctrl_alt_del_keeps_the_vmm_running() {
    if !cairn_tests::kvm_available("send_ctrl_alt_del_keeps_the_vmm_running") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut cmd = vmm();
    cmd.arg("--api-sock").arg(&sock);
    let mut g = cairn_tests::process::Guest::spawn(cmd);
    wait_for_socket(&sock, Duration::from_secs(5));
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
        cairn_tests::guests::TICKER64
    );
    assert_eq!(request(&sock, "PUT", "/boot-source", Some(&boot)).0, 204);
    let mc = r#"{"vcpu_count": 1, "mem_size_mib": 32}"#;
    assert_eq!(request(&sock, "PUT", "/machine-config", Some(mc)).0, 204);
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(request(&sock, "PUT", "/actions", Some(start)).0, 204);
    let cad = r#"{"action_type": "SendCtrlAltDel"}"#;
    assert_eq!(request(&sock, "PUT", "/actions", Some(cad)).0, 204);
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = request(&sock, "GET", "/", None);
    assert_eq!(status, 200);
    assert!(body.contains("Running"), "{body}");
    assert!(
        g.wait_exit(Duration::from_millis(100)).is_none(),
        "the VMM ended"
    );
}

/// cairn's own three filters as one Firecracker-style document, less `drop` from the API's.
fn filter_document(drop: Option<&str>) -> serde_json::Value {
    let mut doc = serde_json::Map::new();
    for kind in ["vmm", "api", "vcpu"] {
        let path = format!("{}/seccomp/{kind}.json", env!("CARGO_MANIFEST_DIR"));
        let mut one: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut filter = one[kind].take();
        if let (Some(name), "api") = (drop, kind) {
            let rules = filter["filter"].as_array_mut().unwrap();
            rules.retain(|r| r["syscall"] != name);
        }
        doc.insert(kind.to_string(), filter);
    }
    serde_json::Value::Object(doc)
}

#[test]
fn a_seccomp_filter_file_is_applied_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let file = dir.path().join("filter.json");
    let sock_arg = sock.to_str().unwrap();
    let file_arg = file.to_str().unwrap();

    std::fs::write(&file, b"junk").unwrap();
    let out = vmm()
        .args(["--api-sock", sock_arg, "--seccomp-filter", file_arg])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--seccomp-filter") && err.contains("nor seccompiler JSON"),
        "{err}"
    );
    let out = vmm()
        .args([
            "--api-sock",
            sock_arg,
            "--seccomp-filter",
            file_arg,
            "--no-seccomp",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(153));

    // A filter lacking a thread kind is refused.
    let mut partial = filter_document(None);
    partial.as_object_mut().unwrap().remove("vcpu");
    std::fs::write(&file, partial.to_string()).unwrap();
    let out = vmm()
        .args(["--api-sock", sock_arg, "--seccomp-filter", file_arg])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no filter for the vcpu thread"));

    // cairn's own filters, given as a file in either of Firecracker's formats, work; without
    // accept4 on the API thread, the first connection kills the process: the file's filter is
    // the one in force.
    for compiled in [false, true] {
        std::fs::write(&file, filter_file(None, compiled)).unwrap();
        let _ = std::fs::remove_file(&sock);
        let mut child = serve(&sock, &["--seccomp-filter", file_arg]);
        assert_eq!(request(&sock, "GET", "/", None).0, 200);
        let _ = child.kill();
        let _ = child.wait();
        std::fs::write(&file, filter_file(Some("accept4"), compiled)).unwrap();
        // The killed VMM before left its socket file: wait for this one's, not that.
        let _ = std::fs::remove_file(&sock);
        assert_killed_on_connect(&sock, &file);
    }
}

/// The filter document as a file: JSON, or compiled as Firecracker's `seccompiler-bin` writes it
/// (bitcode of thread kind to instructions, each a `struct sock_filter` as a `u64`).
fn filter_file(drop: Option<&str>, compiled: bool) -> Vec<u8> {
    let doc = filter_document(drop).to_string();
    if !compiled {
        return doc.into_bytes();
    }
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).unwrap();
    let map: std::collections::HashMap<String, Vec<u64>> =
        seccompiler::compile_from_json(doc.as_bytes(), arch)
            .unwrap()
            .into_iter()
            .map(|(kind, insns)| {
                let words = insns.iter().map(|i| {
                    let mut b = [0u8; 8];
                    b[..2].copy_from_slice(&i.code.to_ne_bytes());
                    b[2] = i.jt;
                    b[3] = i.jf;
                    b[4..].copy_from_slice(&i.k.to_ne_bytes());
                    u64::from_ne_bytes(b)
                });
                (kind, words.collect())
            })
            .collect();
    bitcode::serialize(&map).unwrap()
}

/// Starts `cairn-vmm --seccomp-filter file`, connects, and asserts SIGSYS ended it.
fn assert_killed_on_connect(sock: &std::path::Path, file: &std::path::Path) {
    use std::os::unix::process::ExitStatusExt;
    let (sock_arg, file_arg) = (sock.to_str().unwrap(), file.to_str().unwrap());
    let mut child = vmm()
        .args(["--api-sock", sock_arg, "--seccomp-filter", file_arg])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(sock).is_err()
        && child.try_wait().unwrap().is_none()
    {
        assert!(start.elapsed() < Duration::from_secs(10), "no API socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "not killed");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");
}
