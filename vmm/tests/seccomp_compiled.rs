//! `--seccomp-filter` with files compiled by Firecracker's own `seccompiler-bin` (v1.16.1), what
//! a Firecracker client passes: `tests/fixtures/seccomp/*.bpf`, made by `regenerate.sh` there
//! from cairn's own filters. The filters are applied, not only read: a guest boots under the
//! full set, and the set less `ioctl` on the vCPU threads (KVM_RUN is an ioctl) kills the VMM
//! with SIGSYS as soon as a vCPU runs.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cairn_tests::process::{write_config, Guest};
use cairn_tests::{guests, kvm_available};
use cairn_vmm::seccomp::read_filter_file;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/seccomp")
        .join(name)
}

#[test]
fn firecracker_compiled_files_load() {
    let full = read_filter_file(&fixture("cairn.bpf")).unwrap();
    let less = read_filter_file(&fixture("cairn-vcpu-no-ioctl.bpf")).unwrap();
    for kind in ["vmm", "api", "vcpu"] {
        assert!(full[kind].len() > 10, "{kind}: {}", full[kind].len());
        // BPF_RET | BPF_K closes every program.
        assert_eq!(full[kind].last().unwrap().code, 0x06, "{kind}");
    }
    let words = |p: &[seccompiler::sock_filter]| -> Vec<(u16, u8, u8, u32)> {
        p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
    };
    assert_ne!(words(&less["vcpu"]), words(&full["vcpu"]));
    assert_eq!(words(&less["vmm"]), words(&full["vmm"]));
}

/// Starts the tiny guest with `--seccomp-filter fixture` (and the directory of its config).
fn boot_under(name: &str) -> (Guest, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &serde_json::json!({
            "boot-source": {"kernel_image_path": guests::HELLO64, "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 64},
        }),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.args(["--no-api", "--level", "Debug", "--seccomp-filter"])
        .arg(fixture(name))
        .arg("--config-file")
        .arg(&cfg);
    (Guest::spawn(cmd), dir)
}

#[test]
fn a_guest_boots_under_a_firecracker_compiled_filter() {
    if !kvm_available("a_guest_boots_under_a_firecracker_compiled_filter") {
        return;
    }
    let (mut g, _dir) = boot_under("cairn.bpf");
    g.wait_for("cairn-tiny: mmio ok", Duration::from_secs(20))
        .unwrap();
    let status = g
        .wait_exit(Duration::from_secs(10))
        .expect("VMM did not exit");
    let err = g.stderr();
    assert_eq!(status.code(), Some(0), "{status:?} stderr: {err}");
    assert!(err.contains("seccomp filter vmm installed"), "{err}");
    assert_eq!(
        err.matches("seccomp filter vcpu installed").count(),
        2,
        "{err}"
    );
}

#[test]
fn a_firecracker_compiled_filter_is_in_force() {
    if !kvm_available("a_firecracker_compiled_filter_is_in_force") {
        return;
    }
    let (mut g, _dir) = boot_under("cairn-vcpu-no-ioctl.bpf");
    let status = g
        .wait_exit(Duration::from_secs(20))
        .expect("VMM did not exit");
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status:?} stderr: {}",
        g.stderr()
    );
    // The vCPU thread is started ahead and waits with its filter in place, so its first KVM
    // ioctl may kill the process before the VMM thread logs its own install (the boot test
    // above checks that line); the vCPU's filter is what this test is about.
    assert!(
        g.stderr().contains("seccomp filter vcpu installed"),
        "{}",
        g.stderr()
    );
    assert!(!g.stdout().contains("cairn-tiny: mmio ok"));
}
