//! End to end: the Linux guest with two vCPUs boots (with this host's custom CPU template, if
//! `guest/build` names one), sees both CPUs, is checkpointed, and the checkpoint restored in a new
//! `cairn-vmm` keeps running on both: the shell answers and work spreads over the CPUs.

use std::process::Command;
use std::time::Duration;

use cairn_tests::linux::{guest_crashed, ATTEMPTS};
use cairn_tests::process::http::{request, wait_for_socket};
use cairn_tests::process::{workspace_bin, write_vm_config, Guest};
use cairn_tests::{kvm_available, linux_guest};
use cairn_vmm_api::config::{CairnConfig, MachineConfig, VmConfig};

/// Sends `cmd` to the shell on the serial console and waits for `expect`.
fn ask(vm: &mut Guest, cmd: &str, expect: &str) -> bool {
    vm.send(&format!("{cmd}\n"));
    vm.wait_for(expect, Duration::from_secs(90)).is_ok()
}

#[test]
fn two_vcpu_linux_guest_boots_checkpoints_and_restores() {
    if !kvm_available("two_vcpu_linux_guest_boots_checkpoints_and_restores") {
        return;
    }
    let guest = linux_guest();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let api = dir.path().join("api.sock");
    let cfg = write_vm_config(
        dir.path(),
        &VmConfig {
            machine_config: MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 256,
                ..MachineConfig::default()
            },
            cairn: CairnConfig {
                checkpoint_dir: Some(store.clone()),
                ..Default::default()
            },
            ..guest.vm_config(256)
        },
    );
    let mut booted = None;
    for attempt in 1..=ATTEMPTS {
        let _ = std::fs::remove_dir_all(&store);
        let _ = std::fs::remove_file(&api);
        let mut cmd = Command::new(workspace_bin("cairn-vmm"));
        cmd.arg("--api-sock")
            .arg(&api)
            .arg("--config-file")
            .arg(&cfg);
        let mut vm = Guest::spawn(cmd);
        let ready = vm.wait_for("cairn-guest-ready", Duration::from_secs(240));
        std::thread::sleep(Duration::from_millis(500));
        if ready.is_ok()
            && ask(
                &mut vm,
                "echo cpus=$(grep -c ^processor /proc/cpuinfo)",
                "cpus=2",
            )
        {
            eprintln!("2 vCPUs: process start -> cairn-guest-ready {ready:?}");
            booted = Some(vm);
            break;
        }
        eprintln!("attempt {attempt}: no 2-CPU shell:\n{}", vm.stdout());
        assert!(
            !vm.stdout().contains("smp: Bringing up secondary CPUs")
                || vm.stdout().contains("smp: Brought up"),
            "the secondary CPU never came up:\n{}",
            vm.stdout()
        );
    }
    let vm = booted.expect("the 2-vCPU guest never booted cleanly");
    assert!(
        vm.stdout().contains("smp: Brought up 1 node, 2 CPUs"),
        "{}",
        vm.stdout()
    );
    let (status, body) = request(&api, "PUT", "/checkpoints", Some(r#"{"name": "smp"}"#));
    assert_eq!(status, 200, "checkpoint: {body}");
    drop(vm);

    for attempt in 1..=ATTEMPTS {
        let api = dir.path().join(format!("restore-{attempt}.sock"));
        let mut cmd = Command::new(workspace_bin("cairn-vmm"));
        cmd.arg("--api-sock")
            .arg(&api)
            .arg("--checkpoint-dir")
            .arg(&store);
        let mut vm = Guest::spawn(cmd);
        wait_for_socket(&api, Duration::from_secs(10));
        let (status, body) = request(
            &api,
            "PUT",
            "/checkpoints/restore",
            Some(r#"{"name": "smp"}"#),
        );
        assert_eq!(status, 204, "restore: {body}\n{}", vm.stderr());
        // Four jobs at once, so both CPUs run guest code after the restore.
        let work = "for i in 1 2 3 4; do (i=0; while [ $i -lt 300 ]; do i=$((i+1)); done) & done; \
                    wait; echo restored-$((6*7)) cpus=$(grep -c ^processor /proc/cpuinfo)";
        if ask(&mut vm, work, "restored-42 cpus=2") {
            return;
        }
        assert!(
            guest_crashed(&vm.stdout()),
            "the restored 2-vCPU guest stopped answering:\n{}\n{}",
            vm.stdout(),
            vm.stderr()
        );
        eprintln!("restore attempt {attempt}: guest crashed:\n{}", vm.stdout());
    }
    panic!("the restored 2-vCPU guest never answered");
}
