//! End to end: `PATCH /drives/{id}` with a new `path_on_host` after boot is seen by a Linux guest,
//! as in Firecracker. The VMM swaps the drive's backing file and raises virtio's
//! configuration-change interrupt; the guest's virtio-blk driver re-reads the capacity
//! (`/sys/block/vdb/size` follows the new file) and reads the new file's bytes once its cache
//! of the old ones is dropped.
//!
//! The guest boots fresh from the initramfs (a drive of a VMM with a checkpoint directory cannot
//! be swapped, so the shared `booted` checkpoint is not used). Guest kernel code is emulated on
//! this project's CI hosts, so the timeouts are generous and the guest runs few processes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_agent::client::{Client, ExitStatus};
use cairn_agent::proto::ExecRequest;
use cairn_tests::linux::{
    agent_answers_unless_crashed, retry_on_guest_flake, AGENT_PORT, ATTEMPTS,
};
use cairn_tests::process::{api, write_vm_config, Guest};
use cairn_tests::{kvm_available, linux_guest_with};
use cairn_vmm_api::config::{DriveConfig, DriveUpdate, VsockConfig};

/// A raw disk of `mib` MiB whose first bytes are `tag` and the rest a pattern.
fn disk(path: &Path, mib: usize, tag: &str) {
    let mut bytes: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8).collect();
    bytes[..tag.len()].copy_from_slice(tag.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

fn drive(id: &str, path: &Path) -> DriveConfig {
    DriveConfig {
        is_read_only: Some(true),
        ..DriveConfig::new(id, path.to_path_buf(), false)
    }
}

/// `script` through `sh -c` in the guest; a process that died of SIGSEGV at its start (this
/// host's FS-base bug, docs/guest.md) is run again. The scripts here only read.
fn sh(vsock: &Path, script: &str) -> String {
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![],
        cwd: None,
        stdin: false,
        pty: None,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for _ in 0..ATTEMPTS {
        out.clear();
        err.clear();
        let mut agent = Client::connect_uds(vsock, AGENT_PORT).expect("connect to the agent");
        let status = agent
            .exec(&req, std::io::empty(), &mut out, &mut err)
            .expect("exec in the guest");
        match status {
            ExitStatus::Signal(11) => continue,
            ExitStatus::Code(0) => return String::from_utf8_lossy(&out).into_owned(),
            other => panic!(
                "`{script}` in the guest: {other:?}\n{}{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            ),
        }
    }
    panic!("`{script}` kept dying of SIGSEGV at its start");
}

/// vdb's size in 512-byte sectors, and its first 16 bytes read with the page cache dropped first.
const PROBE: &str = "read s < /sys/block/vdb/size; echo $s; \
                     echo 3 > /proc/sys/vm/drop_caches; head -c 16 /dev/vdb";

fn probe(vsock: &Path) -> (u64, String) {
    let out = sh(vsock, PROBE);
    let (size, data) = out
        .split_once('\n')
        .unwrap_or_else(|| panic!("unexpected probe output {out:?}"));
    (
        size.trim()
            .parse()
            .unwrap_or_else(|_| panic!("unexpected probe output {out:?}")),
        data.to_string(),
    )
}

#[test]
fn a_drive_swapped_after_boot_is_seen_by_the_guest() {
    let name = "a_drive_swapped_after_boot_is_seen_by_the_guest";
    if !kvm_available(name) {
        return;
    }
    // The initramfs guest only: no root disk needed.
    let guest = linux_guest_with(&["--no-rootfs"]);
    retry_on_guest_flake(name, || {
        let dir = tempfile::tempdir().unwrap();
        let (first, old, new) = (
            dir.path().join("first.img"),
            dir.path().join("old.img"),
            dir.path().join("new.img"),
        );
        disk(&first, 1, "cairn-disk-first");
        disk(&old, 1, "cairn-disk-old-1");
        disk(&new, 2, "cairn-disk-new-2");
        let vsock = dir.path().join("v.sock");
        let mut config = guest.vm_config(256);
        // No root drive: `first` is /dev/vda and `swap` /dev/vdb, in config order.
        config.drives = vec![drive("first", &first), drive("swap", &old)];
        config.vsock = Some(VsockConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: vsock.clone(),
        });
        let cfg = write_vm_config(dir.path(), &config);
        let sock = dir.path().join("api.sock");
        let mut cmd = Command::new(cairn_tests::process::workspace_bin("cairn-vmm"));
        cmd.arg("--api-sock")
            .arg(&sock)
            .arg("--config-file")
            .arg(&cfg);
        let vm = Guest::spawn(cmd);
        vm.wait_for("cairn-guest-ready", Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("{e}\n{}", vm.stdout()));
        assert!(
            agent_answers_unless_crashed(&vsock, Some(&vm), Duration::from_secs(120)),
            "the agent never answered:\n{}",
            vm.stdout()
        );

        assert_eq!(
            probe(&vsock),
            (2048, "cairn-disk-old-1".to_string()),
            "before the swap"
        );

        let swapped = Instant::now();
        api(&sock)
            .patch_drive(&DriveUpdate {
                drive_id: "swap".into(),
                path_on_host: Some(new.clone()),
                rate_limiter: None,
            })
            .unwrap();
        // The driver re-reads the capacity from a workqueue after the interrupt: poll.
        let mut seen = probe(&vsock);
        while seen.0 == 2048 && swapped.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(500));
            seen = probe(&vsock);
        }
        eprintln!("PATCH -> last probe of the guest: {:?}", swapped.elapsed());
        assert_eq!(
            seen,
            (4096, "cairn-disk-new-2".to_string()),
            "after the swap:\n{}",
            vm.stdout()
        );
        // The VMM's view follows: GET /vm/config names the new file.
        let after = api(&sock).vm_config().unwrap();
        let d = after.drives.iter().find(|d| d.drive_id == "swap").unwrap();
        assert_eq!(d.path_on_host, new);
    });
}
