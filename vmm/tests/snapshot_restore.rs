//! Snapshot and restore with a tiny guest: every page and every register of the restored VM
//! matches the snapshot exactly, Full and Diff layers stack, and the guest keeps running.

use std::time::Duration;

mod common;

use cairn_tests::capture::Capture;
use cairn_tests::{guests, kvm_available};
use cairn_vmm::builder::BuildSpec;
use cairn_vmm::checkpoint::restore::RestoreOptions;
use cairn_vmm::checkpoint::snapshot::SnapshotKind;
use cairn_vmm::checkpoint::state::read_state;
use cairn_vmm::runtime::Runtime;
use common::{console, page_hashes, vmgenid, wait_dots};

fn regs(rt: &Runtime) -> Vec<(u64, u64, u64, u64)> {
    rt.machine()
        .unwrap()
        .vcpus()
        .iter()
        .map(|v| {
            v.with_fd(
                |fd| {
                    let r = fd.get_regs().unwrap();
                    let s = fd.get_sregs().unwrap();
                    (r.rip, r.r15, r.rdi, s.cr3)
                },
                Duration::from_secs(2),
            )
            .unwrap()
        })
        .collect()
}

/// The host CPU's vendor as KVM reports it, which every snapshot records.
fn kvm_vendor() -> String {
    let supported = kvm_ioctls::Kvm::new()
        .unwrap()
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    cairn_vmm::arch::x86_64::cpuid::vendor(&supported)
}

/// The ticker guest booted with `vcpus` vCPUs and 32 MiB, dirty pages tracked, two dots in.
fn ticking(vcpus: u8) -> (Runtime, Capture) {
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 32;
    spec.vcpu_count = vcpus;
    spec.track_dirty_pages = true;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    wait_dots(&mut rt, &out, 2);
    (rt, out)
}

#[test]
fn full_and_diff_snapshots_restore_exactly_and_keep_running() {
    if !kvm_available("full_and_diff_snapshots_restore_exactly_and_keep_running") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut rt, out) = ticking(2);

    // Full snapshot.
    rt.machine_mut().unwrap().pause().unwrap();
    let (full_state, full_mem) = (dir.path().join("full.state"), dir.path().join("full.mem"));
    let report = rt
        .snapshot(SnapshotKind::Full, &full_state, &full_mem)
        .unwrap();
    assert!(report.pages > 0);
    let (hashes_full, regs_full) = (page_hashes(&rt), regs(&rt));
    let booted_id = vmgenid(&rt);
    assert_ne!(booted_id, [0; 16], "boot writes a VM generation id");
    let vendor = kvm_vendor();
    assert!(!vendor.is_empty());
    assert_eq!(read_state(&full_state).unwrap().host.cpu_vendor, vendor);

    // The guest goes on; then a Diff snapshot holds only what it changed.
    rt.machine_mut().unwrap().resume().unwrap();
    let seen = out.dots();
    wait_dots(&mut rt, &out, seen + 2);
    rt.machine_mut().unwrap().pause().unwrap();
    let (diff_state, diff_mem) = (dir.path().join("diff.state"), dir.path().join("diff.mem"));
    let diff = rt
        .snapshot(SnapshotKind::Diff, &diff_state, &diff_mem)
        .unwrap();
    assert!(
        diff.pages > 0 && diff.pages < report.pages,
        "diff {} pages, full {}",
        diff.pages,
        report.pages
    );
    let (hashes_diff, regs_diff) = (page_hashes(&rt), regs(&rt));
    rt.shutdown();
    drop(rt);

    // Restore the Full snapshot: identical memory and registers, then it runs on.
    let out2 = Capture::default();
    let mut rt2 = Runtime::new().unwrap();
    let opts = RestoreOptions {
        fill_anonymous: false,
        memory_layers: vec![full_mem.clone()],
        track_dirty_pages: true,
        resume: false,
        network_overrides: vec![],
        vsock_uds_path: None,
    };
    rt2.restore(&full_state, &opts, console(&out2)).unwrap();
    assert_ne!(
        vmgenid(&rt2),
        booted_id,
        "a restore writes a new VM generation id"
    );
    assert_eq!(regs(&rt2), regs_full);
    assert!(
        page_hashes(&rt2) == hashes_full,
        "memory differs after restoring the Full snapshot"
    );
    // A snapshot of the restored VM records the host's vendor too (asked at the restore).
    let again_state = dir.path().join("again.state");
    rt2.snapshot(
        SnapshotKind::Full,
        &again_state,
        &dir.path().join("again.mem"),
    )
    .unwrap();
    assert_eq!(read_state(&again_state).unwrap().host.cpu_vendor, vendor);
    rt2.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt2, &out2, 1);
    rt2.shutdown();
    drop(rt2);

    // Restore Full + Diff layered (no merge): identical to the state at the Diff.
    let out3 = Capture::default();
    let mut rt3 = Runtime::new().unwrap();
    let opts = RestoreOptions {
        memory_layers: vec![full_mem, diff_mem],
        ..opts
    };
    rt3.restore(&diff_state, &opts, console(&out3)).unwrap();
    assert_eq!(regs(&rt3), regs_diff);
    assert!(
        page_hashes(&rt3) == hashes_diff,
        "memory differs after restoring Full+Diff"
    );
    rt3.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt3, &out3, 1);
    rt3.shutdown();
    drop(rt3);

    // The same chain into anonymous memory filled by the VMM (checkpoint/filled_memory.rs):
    // the same memory, whether a fault or the filler put each page in.
    let out4 = Capture::default();
    let mut rt4 = Runtime::new().unwrap();
    let opts = RestoreOptions {
        fill_anonymous: true,
        ..opts
    };
    rt4.restore(&diff_state, &opts, console(&out4)).unwrap();
    assert_eq!(regs(&rt4), regs_diff);
    assert!(
        page_hashes(&rt4) == hashes_diff,
        "memory differs after restoring Full+Diff into filled memory"
    );
    rt4.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt4, &out4, 1);
}

#[test]
fn corrupt_and_truncated_state_files_are_refused() {
    if !kvm_available("corrupt_and_truncated_state_files_are_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = BuildSpec::linux(guests::HALT64);
    spec.mem_size_mib = 16;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    rt.run_until_exit(Some(Duration::from_millis(300))).unwrap();
    rt.machine_mut().unwrap().pause().unwrap();
    let (state, mem) = (dir.path().join("s"), dir.path().join("m"));
    rt.snapshot(SnapshotKind::Full, &state, &mem).unwrap();
    let good = std::fs::read(&state).unwrap();
    let opts = RestoreOptions {
        fill_anonymous: false,
        memory_layers: vec![mem.clone()],
        track_dirty_pages: false,
        resume: false,
        network_overrides: vec![],
        vsock_uds_path: None,
    };
    let bad = dir.path().join("bad");
    for (i, case) in [
        good[..good.len() / 2].to_vec(),
        {
            let mut b = good.clone();
            b[good.len() / 3] ^= 0x40;
            b
        },
        {
            let mut b = good.clone();
            b[0] ^= 1;
            b
        },
        vec![],
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&bad, &case).unwrap();
        let mut rt = Runtime::new().unwrap();
        let err = rt
            .restore(&bad, &opts, console(&Capture::default()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("snapshot"), "case {i}: {err}");
        assert!(rt.machine().is_none(), "case {i}: half-restored VM");
    }
    // A memory file too small for the VM.
    std::fs::write(&bad, b"short").unwrap();
    let mut rt = Runtime::new().unwrap();
    let opts = RestoreOptions {
        fill_anonymous: false,
        memory_layers: vec![bad.clone()],
        ..opts
    };
    assert!(rt
        .restore(&state, &opts, console(&Capture::default()))
        .is_err());
}

/// Firecracker merges a Diff into the memory file it names when that file is a snapshot of
/// the right size: after a Full and a Diff into the same file, that file alone restores the
/// state at the Diff.
#[test]
fn a_diff_into_the_full_snapshots_file_merges_in_place() {
    if !kvm_available("a_diff_into_the_full_snapshots_file_merges_in_place") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut rt, out) = ticking(1);
    rt.machine_mut().unwrap().pause().unwrap();
    let (state, mem) = (dir.path().join("vm.state"), dir.path().join("vm.mem"));
    let full = rt.snapshot(SnapshotKind::Full, &state, &mem).unwrap();
    let full_bytes = std::fs::read(&mem).unwrap();
    rt.machine_mut().unwrap().resume().unwrap();
    let seen = out.dots();
    wait_dots(&mut rt, &out, seen + 2);
    rt.machine_mut().unwrap().pause().unwrap();
    let diff = rt.snapshot(SnapshotKind::Diff, &state, &mem).unwrap();
    assert!(diff.pages > 0 && diff.pages < full.pages);
    let (hashes_diff, regs_diff) = (page_hashes(&rt), regs(&rt));
    rt.shutdown();
    drop(rt);

    // Pages the Diff did not write kept the Full's bytes (a new Diff-only file would be holes).
    let merged = std::fs::read(&mem).unwrap();
    assert_eq!(merged.len(), full_bytes.len());
    let kept = merged
        .chunks(4096)
        .zip(full_bytes.chunks(4096))
        .filter(|(m, f)| m == f && f.iter().any(|&b| b != 0))
        .count() as u64;
    assert!(
        kept >= full.pages - diff.pages - 1,
        "only {kept} non-zero pages of the Full kept"
    );

    let out2 = Capture::default();
    let mut rt2 = Runtime::new().unwrap();
    let opts = RestoreOptions {
        fill_anonymous: false,
        memory_layers: vec![mem],
        track_dirty_pages: true,
        resume: false,
        network_overrides: vec![],
        vsock_uds_path: None,
    };
    rt2.restore(&state, &opts, console(&out2)).unwrap();
    assert_eq!(regs(&rt2), regs_diff);
    assert!(
        page_hashes(&rt2) == hashes_diff,
        "memory differs after restoring the merged file"
    );
    rt2.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt2, &out2, 1);
}
