//! The VM generation ID device end to end, on the project's Linux guest restored from the shared
//! `booted` checkpoint: the guest kernel finds the device through the VMM's ACPI tables and binds
//! its `vmgenid` driver, the notify interrupt reaches the guest after a restore and its kernel
//! reseeds the RNG on the new id, and two forks of one checkpoint hold different ids in guest
//! memory (read back from a Full snapshot's memory file, whose offsets are guest physical
//! addresses below 3.25 GiB).

use std::os::unix::fs::FileExt;

use cairn_agent::client::ExitStatus;
use cairn_agent::proto::ExecRequest;
use cairn_tests::kvm_available;
use cairn_tests::linux::{booted, restore_booted, retry_on_guest_flake, RestoredVm, ATTEMPTS};
use cairn_tests::process::api;
use cairn_vmm_api::config::{CreateSnapshotParams, SnapshotType};

/// Where cairn-vmm (like Firecracker) puts the 16-byte id.
const VMGENID_ADDR: u64 = 0xd_fff0;

fn sh(vm: &RestoredVm, script: &str) -> String {
    let req = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![],
        cwd: None,
        stdin: false,
        pty: None,
    };
    // A process that dies of SIGSEGV at its start is this host's FS-base emulation bug
    // (docs/guest.md), not the command: run it again (the commands here only read).
    for _ in 0..ATTEMPTS {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = vm
            .agent()
            .exec(&req, std::io::empty(), &mut out, &mut err)
            .expect("exec in the guest");
        if status == ExitStatus::Signal(11) {
            continue;
        }
        let out = String::from_utf8_lossy(&out).into_owned();
        assert_eq!(
            status,
            ExitStatus::Code(0),
            "{script}: {out}{}",
            String::from_utf8_lossy(&err)
        );
        return out;
    }
    panic!("{script}: killed by SIGSEGV {ATTEMPTS} times");
}

/// The id in `vm`'s guest memory, read from a Full snapshot of it.
fn generation_id(vm: &RestoredVm) -> [u8; 16] {
    let client = api(&vm.api);
    client.pause().expect("pause");
    let params = CreateSnapshotParams {
        snapshot_type: SnapshotType::Full,
        snapshot_path: vm.dir.path().join("vmgenid.state"),
        mem_file_path: vm.dir.path().join("vmgenid.mem"),
        version: None,
    };
    client.snapshot_create(&params).expect("snapshot create");
    client.resume().expect("resume");
    let mem = std::fs::File::open(&params.mem_file_path).unwrap();
    let mut id = [0u8; 16];
    mem.read_exact_at(&mut id, VMGENID_ADDR).unwrap();
    id
}

/// Interrupts the guest took on the GED's line (`ACPI:Ged` in /proc/interrupts), all CPUs.
fn ged_interrupts(interrupts: &str) -> Option<u64> {
    let line = interrupts.lines().find(|l| l.contains("ACPI:Ged"))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .map_while(|w| w.parse::<u64>().ok())
            .sum(),
    )
}

#[test]
fn guest_binds_vmgenid_and_every_restore_gets_a_new_id() {
    let name = "guest_binds_vmgenid_and_every_restore_gets_a_new_id";
    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let fixture = booted();
        let a = restore_booted(&fixture);
        let b = restore_booted(&fixture);
        for vm in [&a, &b] {
            let out = sh(
                vm,
                "ls /sys/bus/acpi/drivers/vmgenid/; cat /sys/bus/acpi/devices/VMGENCTR:00/hid; \
                 cat /proc/interrupts; dmesg",
            );
            assert!(
                out.lines().any(|l| l == "VMGENCTR:00"),
                "the vmgenid driver is not bound: {out}"
            );
            assert!(out.lines().any(|l| l == "VMGENCTR"), "{out}");
            let ged = ged_interrupts(&out).unwrap_or_else(|| panic!("no GED interrupt: {out}"));
            assert!(
                ged >= 1,
                "the restore's notify never reached the guest: {out}"
            );
            // The driver reseeds only when the id it reads differs from the one it saw before:
            // the guest kernel itself saw a new generation.
            assert!(
                out.contains("crng reseeded due to virtual machine fork"),
                "the guest kernel did not reseed on the new id: {out}"
            );
        }
        let (id_a, id_b) = (generation_id(&a), generation_id(&b));
        eprintln!("vmgenid: fork a {id_a:02x?}, fork b {id_b:02x?}");
        assert_ne!(id_a, [0; 16]);
        assert_ne!(
            id_a, id_b,
            "two forks of one checkpoint share a generation id"
        );
    });
}

#[test]
fn ged_lines_are_summed_over_cpus() {
    let text = " 23:          2          1   IO-APIC  23-edge      ACPI:Ged\n";
    assert_eq!(ged_interrupts(text), Some(3));
    assert_eq!(ged_interrupts(" 4: 9 IO-APIC 4-edge ttyS0\n"), None);
}
