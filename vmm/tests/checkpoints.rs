//! Named checkpoints with a tiny guest: a chain of 10 with random deletes, every remaining
//! checkpoint restores exactly (every page, every register), and restore needs no merge.

use std::collections::BTreeMap;
use std::time::Duration;

mod common;

use cairn_tests::capture::Capture;
use cairn_tests::{guests, kvm_available};
use cairn_vmm::builder::BuildSpec;
use cairn_vmm::runtime::Runtime;
use common::{console, page_hashes, wait_dots};

fn fingerprint(rt: &Runtime) -> (Vec<u64>, Vec<(u64, u64)>) {
    let m = rt.machine().unwrap();
    let hashes = page_hashes(rt);
    let regs = m
        .vcpus()
        .iter()
        .map(|v| {
            v.with_fd(
                |fd| {
                    let r = fd.get_regs().unwrap();
                    (r.rip, r.r15)
                },
                Duration::from_secs(2),
            )
            .unwrap()
        })
        .collect();
    (hashes, regs)
}

#[test]
fn chain_of_ten_with_random_deletes_restores_exactly() {
    if !kvm_available("chain_of_ten_with_random_deletes_restores_exactly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 32;
    spec.checkpoint_dir = Some(dir.path().join("ckpts"));
    spec.track_dirty_pages = true;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();

    let mut expected = BTreeMap::new();
    for i in 0..10 {
        let seen = out.dots();
        wait_dots(&mut rt, &out, seen + 1);
        rt.machine_mut().unwrap().pause().unwrap();
        let fp = fingerprint(&rt);
        let name = format!("c{i}");
        let meta = rt.create_checkpoint(Some(&name)).unwrap();
        assert_eq!(
            meta.parent,
            if i == 0 {
                None
            } else {
                Some(format!("c{}", i - 1))
            }
        );
        assert!(meta.memory.dirty_mib > 0.0);
        if i > 0 {
            assert!(
                meta.memory.dirty_mib < 31.0,
                "a Diff holds only dirty pages: {}",
                meta.memory.dirty_mib
            );
        }
        expected.insert(name, fp);
        rt.machine_mut().unwrap().resume().unwrap();
    }
    assert!(
        rt.create_checkpoint(Some("c3")).is_err(),
        "names are unique"
    );
    assert!(
        rt.delete_checkpoint("c9").is_err(),
        "the running VM's parent cannot be deleted"
    );

    // Deterministic "random" deletes, including the base and middles.
    for victim in ["c0", "c4", "c5", "c7"] {
        rt.delete_checkpoint(victim).unwrap();
        expected.remove(victim);
    }
    let listed: Vec<String> = rt
        .list_checkpoints()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(listed, expected.keys().cloned().collect::<Vec<_>>());

    for (name, fp) in &expected {
        let out = Capture::default();
        rt.restore_checkpoint(name, None, false, None, || console(&out))
            .unwrap();
        assert!(
            fingerprint(&rt) == *fp,
            "checkpoint {name} did not restore exactly"
        );
        rt.machine_mut().unwrap().resume().unwrap();
        wait_dots(&mut rt, &out, 0);
    }
}
