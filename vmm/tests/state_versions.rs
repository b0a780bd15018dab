//! Machine state versions: a version-1 state (written before the VM generation ID device) still
//! restores, without the device, and runs on; a checkpoint of that VM loads again; an unknown
//! version is refused with an error naming it, and nothing is half-restored.

mod common;

use cairn_snapshot::file::FileKind;
use cairn_tests::capture::Capture;
use cairn_tests::{guests, kvm_available};
use cairn_vmm::builder::BuildSpec;
use cairn_vmm::checkpoint::restore::RestoreOptions;
use cairn_vmm::checkpoint::snapshot::SnapshotKind;
use cairn_vmm::checkpoint::state::{read_state, MACHINE_STATE_VERSION};
use cairn_vmm::checkpoint::state_versions::{MachineStateV1, MachineStateV2, MachineStateV3};
use cairn_vmm::runtime::Runtime;
use common::{console, page_hashes, vmgenid, wait_dots};

fn opts(mem: &std::path::Path) -> RestoreOptions {
    RestoreOptions {
        fill_anonymous: false,
        memory_layers: vec![mem.to_path_buf()],
        track_dirty_pages: false,
        resume: false,
        network_overrides: vec![],
        vsock_uds_path: None,
    }
}

#[test]
fn version_1_states_restore_without_a_vmgenid_and_unknown_versions_are_refused() {
    if !kvm_available("version_1_states_restore_without_a_vmgenid_and_unknown_versions_are_refused")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 32;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    wait_dots(&mut rt, &out, 2);
    rt.machine_mut().unwrap().pause().unwrap();
    let (state, mem) = (dir.path().join("v2.state"), dir.path().join("v2.mem"));
    rt.snapshot(SnapshotKind::Full, &state, &mem).unwrap();
    let hashes = page_hashes(&rt);
    let booted_id = vmgenid(&rt);
    rt.shutdown();
    drop(rt);

    // The same machine in the version-1 layout, as a cairn before the VM generation ID wrote it.
    let current = read_state(&state).unwrap();
    assert_eq!(current.version, MACHINE_STATE_VERSION);
    assert!(current.vmgenid.is_some());
    let v1 = MachineStateV1::from_current(current);
    let v1_path = dir.path().join("v1.state");
    cairn_snapshot::file::save(&v1_path, FileKind::State, &v1).unwrap();
    let back = read_state(&v1_path).unwrap();
    assert_eq!((back.version, back.vmgenid.is_none()), (1, true));

    // And in the version-2 layout (before MMDS): it reads back with its VM generation ID and no
    // MMDS settings.
    let v2 = MachineStateV2::from_current(read_state(&state).unwrap());
    let v2_path = dir.path().join("v2-layout.state");
    cairn_snapshot::file::save(&v2_path, FileKind::State, &v2).unwrap();
    let back = read_state(&v2_path).unwrap();
    assert_eq!(back.version, 2);
    assert!(back.vmgenid.is_some() && back.mmds.is_none());

    // And in the version-3 layout (before device settings): it reads back with none, and
    // restores and runs.
    let v3 = MachineStateV3::from_current(read_state(&state).unwrap());
    let v3_path = dir.path().join("v3-layout.state");
    cairn_snapshot::file::save(&v3_path, FileKind::State, &v3).unwrap();
    let back = read_state(&v3_path).unwrap();
    assert_eq!(back.version, 3);
    assert!(back.vmgenid.is_some());
    assert_eq!(back.device_settings, Default::default());
    let out3 = Capture::default();
    let mut rt3 = Runtime::new().unwrap();
    rt3.restore(&v3_path, &opts(&mem), console(&out3)).unwrap();
    rt3.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt3, &out3, out3.dots() + 1);
    rt3.shutdown();
    drop(rt3);

    // It restores with no VM generation ID device: memory is exactly the snapshot's (nothing
    // rewrote the id's page), and the guest runs on.
    let out1 = Capture::default();
    let mut rt1 = Runtime::new().unwrap();
    rt1.restore(&v1_path, &opts(&mem), console(&out1)).unwrap();
    assert_eq!(vmgenid(&rt1), booted_id, "no device writes an id");
    assert!(
        page_hashes(&rt1) == hashes,
        "memory differs after a version-1 restore"
    );
    rt1.machine_mut().unwrap().resume().unwrap();
    let seen = out1.dots();
    wait_dots(&mut rt1, &out1, seen + 1);

    // A snapshot of that VM is the current version (without a device) and loads again.
    rt1.machine_mut().unwrap().pause().unwrap();
    let (again, again_mem) = (dir.path().join("again.state"), dir.path().join("again.mem"));
    rt1.snapshot(SnapshotKind::Full, &again, &again_mem)
        .unwrap();
    rt1.shutdown();
    drop(rt1);
    let again_state = read_state(&again).unwrap();
    assert_eq!(again_state.version, MACHINE_STATE_VERSION);
    assert!(again_state.vmgenid.is_none());
    let out2 = Capture::default();
    let mut rt2 = Runtime::new().unwrap();
    rt2.restore(&again, &opts(&again_mem), console(&out2))
        .unwrap();
    rt2.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt2, &out2, out2.dots() + 1);
    rt2.shutdown();
    drop(rt2);

    // An unknown version (valid container, valid checksum) is refused, naming the version.
    let mut future = MachineStateV1::from_current(read_state(&state).unwrap());
    future.version = 7;
    let future_path = dir.path().join("v7.state");
    cairn_snapshot::file::save(&future_path, FileKind::State, &future).unwrap();
    let mut rt3 = Runtime::new().unwrap();
    let err = rt3
        .restore(&future_path, &opts(&mem), console(&Capture::default()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("incompatible")
            && err.contains("version 7")
            && err.contains("versions 1 to 4"),
        "{err}"
    );
    assert!(rt3.machine().is_none(), "half-restored VM");

    // A version-1 payload cut short is corrupt, not a panic.
    let mut payload = postcard::to_stdvec(&v1).unwrap();
    payload.truncate(payload.len() / 2);
    let cut = dir.path().join("cut.state");
    std::fs::write(
        &cut,
        cairn_snapshot::file::encode(FileKind::State, &payload),
    )
    .unwrap();
    let err = read_state(&cut).unwrap_err().to_string();
    assert!(err.contains("corrupt machine state"), "{err}");
}
