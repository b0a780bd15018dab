//! A restore is all or nothing: a checkpoint whose files are bad, or a head that cannot be
//! recorded, is refused before the running VM is touched, and the VM keeps running.

use std::path::Path;

#[allow(dead_code)]
mod common;

use cairn_tests::capture::Capture;
use cairn_tests::{guests, kvm_available};
use cairn_vmm::builder::BuildSpec;
use cairn_vmm::runtime::Runtime;
use common::{console, wait_dots};

/// After a refused restore the same machine runs on: its console keeps ticking.
fn still_running(rt: &mut Runtime, out: &Capture, what: &str) {
    assert!(rt.machine().is_some(), "{what}: the VM is gone");
    let seen = out.dots();
    wait_dots(rt, out, seen + 1);
}

fn restore_fails(rt: &mut Runtime, name: &str) -> String {
    let spare = Capture::default();
    match rt.restore_checkpoint(name, None, true, None, || console(&spare)) {
        Ok(()) => panic!("restoring the damaged {name} succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_bad_checkpoint_leaves_the_running_vm_alone() {
    if !kvm_available("a_bad_checkpoint_leaves_the_running_vm_alone") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path().join("ckpts");
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 32;
    spec.checkpoint_dir = Some(ckpts.clone());
    spec.track_dirty_pages = true;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    for name in ["good", "truncated", "badindex", "nostate"] {
        let seen = out.dots();
        wait_dots(&mut rt, &out, seen + 1);
        rt.create_checkpoint(Some(name)).unwrap();
    }
    let layer = |n: &str| ckpts.join(n).join("mem.layer");
    // The reproduction: a truncated memory layer.
    std::fs::OpenOptions::new()
        .write(true)
        .open(layer("truncated"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    let e = restore_fails(&mut rt, "truncated");
    still_running(&mut rt, &out, &e);
    // A corrupt layer index.
    let ix = ckpts.join("badindex").join("mem.layer.index");
    let mut bytes = std::fs::read(&ix).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&ix, bytes).unwrap();
    let e = restore_fails(&mut rt, "badindex");
    still_running(&mut rt, &out, &e);
    // A missing state file.
    std::fs::remove_file(ckpts.join("nostate").join("state")).unwrap();
    let e = restore_fails(&mut rt, "nostate");
    still_running(&mut rt, &out, &e);
    // A head that cannot be recorded (`.active/HEAD` is a directory).
    let head = ckpts.join(".active").join("HEAD");
    std::fs::remove_file(&head).unwrap();
    std::fs::create_dir(&head).unwrap();
    let e = restore_fails(&mut rt, "good");
    assert!(e.contains("HEAD"), "{e}");
    still_running(&mut rt, &out, &e);
    std::fs::remove_dir(&head).unwrap();
    // Whole again, the good one restores.
    let fresh = Capture::default();
    rt.restore_checkpoint("good", None, true, None, || console(&fresh))
        .unwrap();
    wait_dots(&mut rt, &fresh, 0);
    assert!(Path::new(&head).is_file());
}

#[test]
fn swapped_files_are_refused_and_corrupt_memory_stops_the_guest() {
    if !kvm_available("swapped_files_are_refused_and_corrupt_memory_stops_the_guest") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path().join("ckpts");
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 32;
    spec.checkpoint_dir = Some(ckpts.clone());
    spec.track_dirty_pages = true;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    for name in ["one", "two"] {
        let seen = out.dots();
        wait_dots(&mut rt, &out, seen + 1);
        rt.create_checkpoint(Some(name)).unwrap();
    }
    // Another checkpoint's state under "one"'s name is refused; the VM runs on.
    let original = std::fs::read(ckpts.join("one/state")).unwrap();
    std::fs::copy(ckpts.join("two/state"), ckpts.join("one/state")).unwrap();
    let e = restore_fails(&mut rt, "one");
    assert!(e.contains("not the file"), "{e}");
    still_running(&mut rt, &out, &e);
    std::fs::write(ckpts.join("one/state"), original).unwrap();

    // 16 flipped bytes in a page "two" holds: the restore is not slowed by a check, but the
    // background check stops the guest instead of letting it run on wrong memory.
    let layer = ckpts.join("two/mem.layer");
    let index = cairn_snapshot::memory::open_layer(&layer).unwrap();
    let at = index.pages.ranges()[0].byte_offset() + 100;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&layer)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 16], at).unwrap();
    drop(f);
    let fresh = Capture::default();
    rt.restore_checkpoint("two", None, true, None, || console(&fresh))
        .unwrap();
    let reason = rt
        .run_until_exit(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    assert!(
        matches!(
            reason,
            cairn_vmm::vstate::vcpu::ExitReason::CorruptMemory(_)
        ),
        "{reason:?}"
    );
}

/// A failure only the rebuild can find (the vsock socket the checkpoint records cannot be bound)
/// happens after the VM was stopped: the VM is brought back from the checkpoint it was running
/// from, and the error says so.
#[test]
fn a_late_failure_brings_the_vm_back_from_its_newest_checkpoint() {
    let name = "a_late_failure_brings_the_vm_back_from_its_newest_checkpoint";
    if !kvm_available(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ckpts = dir.path().join("ckpts");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 32;
    spec.checkpoint_dir = Some(ckpts.clone());
    spec.track_dirty_pages = true;
    spec.devices = vec![cairn_vmm::builder::DeviceSpec::Vsock(
        cairn_devices::virtio::vsock::VsockConfig {
            guest_cid: 3,
            uds_path: a.join("v.sock"),
        },
    )];
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    wait_dots(&mut rt, &out, 1);
    rt.create_checkpoint(Some("p")).unwrap();
    // "n" records its vsock socket in directory b.
    let on_b = Capture::default();
    rt.restore_checkpoint("p", None, true, Some(b.join("v.sock")), || console(&on_b))
        .unwrap();
    wait_dots(&mut rt, &on_b, 1);
    rt.create_checkpoint(Some("n")).unwrap();
    // Back on "p" (socket in a), then b goes away.
    let on_a = Capture::default();
    rt.restore_checkpoint("p", None, true, None, || console(&on_a))
        .unwrap();
    wait_dots(&mut rt, &on_a, 1);
    std::fs::remove_dir_all(&b).unwrap();
    let back = Capture::default();
    let e = match rt.restore_checkpoint("n", None, true, None, || console(&back)) {
        Ok(()) => panic!("restoring n without its vsock directory succeeded"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("brought back from its newest checkpoint p"),
        "{e}"
    );
    assert!(
        a.join("v.sock").exists(),
        "{e}: the VM's vsock socket is gone"
    );
    // The brought-back VM runs: its console (the last one handed out) keeps ticking.
    wait_dots(&mut rt, &back, back.dots() + 1);
}
