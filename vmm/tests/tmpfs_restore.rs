//! Restore from memory files on tmpfs through the real, seccomp-filtered `cairn-vmm`: the
//! restore path's tmpfs checks (`fstat`, `fstatfs`) run under the VMM thread's filter, and a
//! guest with untouched pages (holes in the file) runs on after the load.

use std::time::Duration;

use cairn_tests::process::http::{request, wait_for_socket};
use cairn_tests::process::{write_config, Guest};
use cairn_tests::{guests, kvm_available};

fn vmm() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_cairn-vmm"))
}

#[test]
fn a_filtered_vmm_restores_a_sparse_memory_file_from_tmpfs() {
    let name = "a_filtered_vmm_restores_a_sparse_memory_file_from_tmpfs";
    if !kvm_available(name) {
        return;
    }
    let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
        eprintln!("SKIP {name}: no /dev/shm");
        return;
    };
    let cfg = write_config(
        dir.path(),
        &serde_json::json!({
            "boot-source": {"kernel_image_path": guests::TICKER64, "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
        }),
    );
    let sock = dir.path().join("api.sock");
    let mut cmd = vmm();
    cmd.arg("--api-sock")
        .arg(&sock)
        .arg("--config-file")
        .arg(&cfg);
    let mut g = Guest::spawn(cmd);
    wait_for_socket(&sock, Duration::from_secs(5));
    g.wait_for(".", Duration::from_secs(30)).unwrap();
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
    g.signal(libc::SIGKILL);
    let _ = g.wait_exit(Duration::from_secs(10));

    // The file is sparse (the guest has not touched all its memory yet): there are holes for
    // the restore to check.
    let meta = std::fs::metadata(dir.path().join("mem")).unwrap();
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(allocated < meta.len(), "{allocated} of {}", meta.len());

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
    assert_eq!(status, 204, "{body}: {}", g2.stderr());
    // The restored guest runs on: more dots arrive.
    let before = g2.stdout().matches('.').count();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while g2.stdout().matches('.').count() <= before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the restored guest stopped: {}",
            g2.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    g2.signal(libc::SIGKILL);
    assert!(g2.wait_exit(Duration::from_secs(10)).is_some());
}
