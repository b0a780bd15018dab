//! `cairn-vmm` as users run it: as a child process, with Firecracker's flags, config file and
//! REST API, against tiny guests.

use std::process::Command;
use std::time::Duration;

use cairn_tests::process::http::{request, wait_for_socket};
use cairn_tests::process::{write_config, Guest};
use cairn_tests::{guests, kvm_available};

fn vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn-vmm"))
}

fn tiny_config(kernel: &str) -> serde_json::Value {
    serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 64, "smt": false, "track_dirty_pages": false},
        "logger": {"log_path": "/dev/null", "level": "Info"},
    })
}

#[test]
fn no_api_config_file_boots_and_exits_zero_on_reset() {
    if !kvm_available("no_api_config_file_boots_and_exits_zero_on_reset") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &tiny_config(guests::HELLO64));
    let mut cmd = vmm();
    cmd.args(["--no-api", "--config-file"]).arg(&cfg);
    let mut g = Guest::spawn(cmd);
    g.wait_for("cairn-tiny: mmio ok", Duration::from_secs(20))
        .unwrap();
    let status = g
        .wait_exit(Duration::from_secs(10))
        .expect("VMM did not exit");
    assert_eq!(status.code(), Some(0), "stderr: {}", g.stderr());
    assert!(
        !g.stderr().contains("cairn-tiny"),
        "guest output leaked to stderr"
    );
}

#[test]
fn emulation_failure_exits_non_zero_with_one_line_reason() {
    if !kvm_available("emulation_failure_exits_non_zero_with_one_line_reason") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &tiny_config(guests::MMIOFETCH64));
    let mut cmd = vmm();
    cmd.args(["--no-api", "--level", "Off", "--config-file"])
        .arg(&cfg);
    let mut g = Guest::spawn(cmd);
    let status = g
        .wait_exit(Duration::from_secs(20))
        .expect("VMM hung on an emulation failure");
    assert_eq!(status.code(), Some(1));
    let err = g.stderr();
    assert!(
        err.contains("emulation failure") && err.contains("RIP 0xd0ff0000"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn bad_config_files_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            serde_json::json!({"boot-source": {"kernel_image_path": "/k", "bogus": 1}}),
            "bogus",
        ),
        (
            serde_json::json!({"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": "two", "mem_size_mib": 64}}),
            "vcpu_count",
        ),
        (
            serde_json::json!({"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 64}}),
            "vcpu_count",
        ),
        (
            serde_json::json!({"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}),
            "boot-source",
        ),
    ];
    for (cfg, field) in cases {
        let p = write_config(dir.path(), &cfg);
        let out = vmm()
            .args(["--no-api", "--config-file"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cfg}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{cfg}: {err}");
        assert!(out.stdout.is_empty());
    }
    let out = vmm().arg("--no-api").output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let out = vmm()
        .args(["--no-api", "--config-file", "/nonexistent/vm.json"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vm.json"));
}

#[test]
fn api_configures_starts_pauses_and_resumes() {
    if !kvm_available("api_configures_starts_pauses_and_resumes") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut cmd = vmm();
    cmd.arg("--api-sock").arg(&sock);
    let mut g = Guest::spawn(cmd);
    wait_for_socket(&sock, Duration::from_secs(5));

    let (status, body) = request(&sock, "GET", "/", None);
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["state"], "Not started");

    // Bad input: 400 naming the field, and the server keeps serving.
    let (status, body) = request(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 64, "foo": 1}"#),
    );
    assert_eq!(status, 400);
    assert!(body.contains("foo"), "{body}");
    let (status, body) = request(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": "x", "mem_size_mib": 64}"#),
    );
    assert_eq!(status, 400);
    assert!(body.contains("vcpu_count"), "{body}");
    // An absurd memory size is refused at PUT time (it used to abort the VMM at boot).
    let (status, body) = request(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 1000000000000}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("mem_size_mib"), "{body}");
    let (status, body) = request(
        &sock,
        "PATCH",
        "/machine-config",
        Some(r#"{"mem_size_mib": 1000000000000}"#),
    );
    assert_eq!(status, 400, "{body}");
    let (status, _) = request(&sock, "GET", "/no/such/path", None);
    assert_eq!(status, 400);
    let (status, _) = request(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(status, 400, "pausing a VM that is not running");

    let (status, body) = request(
        &sock,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "mem_size_mib": 64}"#),
    );
    assert_eq!(status, 204, "{body}");
    let (status, body) = request(&sock, "GET", "/machine-config", None);
    assert_eq!(status, 200);
    let mc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (mc["vcpu_count"].as_u64(), mc["mem_size_mib"].as_u64()),
        (Some(2), Some(64))
    );
    let boot =
        serde_json::json!({"kernel_image_path": guests::HALT64, "boot_args": "console=ttyS0"});
    let (status, body) = request(&sock, "PUT", "/boot-source", Some(&boot.to_string()));
    assert_eq!(status, 204, "{body}");
    let (status, body) = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 204, "{body}");
    g.wait_for("cairn-tiny: halted", Duration::from_secs(20))
        .unwrap();
    let (_, body) = request(&sock, "GET", "/", None);
    assert!(body.contains("\"Running\""), "{body}");

    let (status, _) = request(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(status, 204);
    let (_, body) = request(&sock, "GET", "/", None);
    assert!(body.contains("\"Paused\""), "{body}");
    let (status, _) = request(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#));
    assert_eq!(status, 204);
    let (status, _) = request(&sock, "PUT", "/boot-source", Some(&boot.to_string()));
    assert_eq!(status, 400, "boot-source after start");

    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());
}

const PV_IPI_OFF: &str = r#"{"cpuid_modifiers": [{"leaf": "0x40000001", "subleaf": "0x0", "flags": 0,
    "modifiers": [{"register": "eax", "bitmap": "0b0xxxxxxxxxxx"}]},
    {"leaf": "0x400000f0", "subleaf": "0x0", "flags": 0,
    "modifiers": [{"register": "ebx", "bitmap": "0b1001"}]}]}"#;

#[test]
fn cpu_config_file_and_api_template_reach_the_guest() {
    if !kvm_available("cpu_config_file_and_api_template_reach_the_guest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.json");
    std::fs::write(&template, PV_IPI_OFF).unwrap();
    let mut cfg = tiny_config(guests::CPUID64);
    cfg["cpu-config"] = template.to_str().unwrap().into();
    let path = write_config(dir.path(), &cfg);
    let mut g = Guest::spawn({
        let mut cmd = vmm();
        cmd.args(["--no-api", "--config-file"]).arg(&path);
        cmd
    });
    g.wait_for("leaf-400000f0-ebx=00000009", Duration::from_secs(20))
        .unwrap();
    let status = g.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", g.stderr());

    // The same template as the body of PUT /cpu-config; a bad one is a 400 naming the field.
    let sock = dir.path().join("api.sock");
    let mut cmd = vmm();
    cmd.arg("--api-sock").arg(&sock);
    let mut g = Guest::spawn(cmd);
    wait_for_socket(&sock, Duration::from_secs(5));
    let bad = r#"{"msr_modifiers": [{"addr": "0x10", "bitmap": "0b2"}]}"#;
    let (status, body) = request(&sock, "PUT", "/cpu-config", Some(bad));
    assert_eq!(status, 400);
    assert!(body.contains("msr_modifiers[0].bitmap"), "{body}");
    let (status, body) = request(&sock, "PUT", "/cpu-config", Some(PV_IPI_OFF));
    assert_eq!(status, 204, "{body}");
    let boot = serde_json::json!({"kernel_image_path": guests::CPUID64});
    let (status, _) = request(&sock, "PUT", "/boot-source", Some(&boot.to_string()));
    assert_eq!(status, 204);
    let start = r#"{"action_type": "InstanceStart"}"#;
    let (status, body) = request(&sock, "PUT", "/actions", Some(start));
    assert_eq!(status, 204, "{body}");
    g.wait_for("leaf-400000f0-ebx=00000009", Duration::from_secs(20))
        .unwrap();
    let status = g.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", g.stderr());
}

#[test]
fn bad_cpu_config_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"cpuid_modifiers": [{"leaf": "x1", "subleaf": "0"}]}"#,
    )
    .unwrap();
    for (template, expected) in [
        (bad.to_str().unwrap(), "cpu-config.cpuid_modifiers[0].leaf"),
        ("/nonexistent/template.json", "/nonexistent/template.json"),
    ] {
        let mut cfg = tiny_config(guests::CPUID64);
        cfg["cpu-config"] = template.into();
        let path = write_config(dir.path(), &cfg);
        let out = vmm()
            .args(["--no-api", "--config-file"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}
