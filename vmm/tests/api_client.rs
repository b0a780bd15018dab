//! cairn-vmm-api's typed `Client` against a real `cairn-vmm` child process and a tiny guest:
//! configure, boot, pause, checkpoint, list, delete, restore, snapshot and load, and the
//! VMM's refusals as typed errors.

use std::process::Command;
use std::time::Duration;

use cairn_tests::process::{api, Guest};
use cairn_tests::process::{full_snapshot_and_exit, load_resumed};
use cairn_tests::{guests, kvm_available};
use cairn_vmm_api::config::{BootSourceConfig, CheckpointCreate, CheckpointRestore, MachineConfig};
use cairn_vmm_api::{ClientError, InstanceState};

fn vmm(sock: &std::path::Path, checkpoints: &std::path::Path) -> Guest {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock")
        .arg(sock)
        .arg("--checkpoint-dir")
        .arg(checkpoints);
    Guest::spawn(cmd)
}

#[test]
fn typed_client_drives_a_real_vmm() {
    if !kvm_available("typed_client_drives_a_real_vmm") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut g = vmm(&sock, &dir.path().join("ckpts"));
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();

    let info = c.describe().unwrap();
    assert_eq!(info.state, InstanceState::NotStarted);
    assert_eq!(info.app_name, "cairn");

    // The VMM's rules come back as a typed refusal naming the field.
    let bad = MachineConfig {
        vcpu_count: 0,
        ..MachineConfig::default()
    };
    let err = c.put_machine_config(&bad).unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { status: 400, message, .. } if message.contains("vcpu_count")),
        "{err}"
    );
    let mc = MachineConfig {
        vcpu_count: 1,
        mem_size_mib: 32,
        track_dirty_pages: true,
        ..MachineConfig::default()
    };
    c.put_machine_config(&mc).unwrap();
    assert_eq!(c.machine_config().unwrap(), mc);
    c.put_boot_source(&BootSourceConfig {
        kernel_image_path: guests::TICKER64.into(),
        initrd_path: None,
        boot_args: Some("console=ttyS0".into()),
    })
    .unwrap();
    assert_eq!(c.vm_config().unwrap().machine_config, mc);
    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    assert_eq!(c.describe().unwrap().state, InstanceState::Running);

    c.pause().unwrap();
    assert_eq!(c.describe().unwrap().state, InstanceState::Paused);
    c.resume().unwrap();

    let named = |n: &str| CheckpointCreate {
        name: Some(n.into()),
    };
    let c1 = c.create_checkpoint(&named("c1")).unwrap();
    assert_eq!((c1.name.as_str(), c1.parent.as_deref()), ("c1", None));
    assert!(c1.dirty_memory_mib > 0.0, "{c1:?}");
    let c2 = c.create_checkpoint(&named("c2")).unwrap();
    assert_eq!(c2.parent.as_deref(), Some("c1"));
    let names = |c: &cairn_vmm_api::Client| -> Vec<String> {
        c.list_checkpoints()
            .unwrap()
            .into_iter()
            .map(|x| x.name)
            .collect()
    };
    c.create_checkpoint(&named("c3")).unwrap();
    assert_eq!(names(&c), ["c1", "c2", "c3"]);
    let err = c.create_checkpoint(&named("c1")).unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    c.delete_checkpoint("c2").unwrap();
    assert_eq!(names(&c), ["c1", "c3"]);

    let restore = |name: &str| CheckpointRestore {
        name: name.into(),
        vsock_uds_path: None,
        paused: None,
    };
    c.restore_checkpoint(&restore("c1")).unwrap();
    assert_eq!(c.describe().unwrap().state, InstanceState::Running);
    let err = c.restore_checkpoint(&restore("nope")).unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { message, .. } if message.contains("nope")),
        "{err}"
    );

    // Firecracker's snapshots: save paused, load into a fresh VMM, which runs on.
    let snap = full_snapshot_and_exit(&c, &mut g, dir.path());

    let sock2 = dir.path().join("api2.sock");
    let mut g2 = vmm(&sock2, &dir.path().join("ckpts2"));
    let c2 = api(&sock2);
    c2.wait_ready(Duration::from_secs(10)).unwrap();
    c2.snapshot_load(&load_resumed(&snap)).unwrap();
    assert_eq!(c2.describe().unwrap().state, InstanceState::Running);
    g2.wait_for(".", Duration::from_secs(30)).unwrap();
    g2.signal(libc::SIGTERM);
    assert!(g2.wait_exit(Duration::from_secs(10)).is_some());
}
