//! Checkpoints on a full tmpfs: reading a restored guest's untouched pages must not need room on
//! the tmpfs (it used to kill the VMM with `SIGBUS`), and a restore that needs room it cannot
//! get is refused with the running VM left alone.

use std::io::Write;
use std::path::Path;

#[allow(dead_code)]
mod common;

use cairn_tests::capture::Capture;
use cairn_tests::{guests, kvm_available};
use cairn_vmm::builder::BuildSpec;
use cairn_vmm::checkpoint::verify;
use cairn_vmm::runtime::Runtime;
use common::{console, wait_dots, Tmpfs};

/// Fill the file system holding `path` until it is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let mut written = 0u64;
    for block in [1 << 20, 4096] {
        let buf = vec![0x77u8; block];
        while f.write_all(&buf).is_ok() {
            written += block as u64;
        }
    }
    written
}

#[test]
fn a_full_tmpfs_neither_kills_nor_half_restores() {
    let name = "a_full_tmpfs_neither_kills_nor_half_restores";
    if !kvm_available(name) {
        return;
    }
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {name}: needs root (mounts a tmpfs)");
        return;
    }
    // Page hashes at checkpoint time, compared on restore by reading every page.
    std::env::set_var("CAIRN_VERIFY_MEMORY", "1");
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("t"), "40m");
    let ckpts = tmpfs.0.join("ckpts");
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 32;
    spec.checkpoint_dir = Some(ckpts.clone());
    spec.track_dirty_pages = true;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    wait_dots(&mut rt, &out, 1);
    rt.create_checkpoint(Some("a")).unwrap();
    let saved = verify::load(&ckpts.join("a")).expect("mem.hashes of checkpoint a");

    // Completely full: the new head cannot be recorded, so the restore is refused up front and
    // the running VM goes on.
    let filler = tmpfs.0.join("filler");
    let filled = fill(&filler);
    let spare = Capture::default();
    let e = match rt.restore_checkpoint("a", None, true, None, || console(&spare)) {
        Ok(()) => panic!("a restore on a full tmpfs succeeded"),
        Err(e) => e.to_string(),
    };
    assert!(rt.machine().is_some(), "{e}: the VM is gone");
    let seen = out.dots();
    wait_dots(&mut rt, &out, seen + 1);

    // Room for the restore's own small files, none for the guest's 32 MiB of untouched pages:
    // reading them (the verification reads every page) must not need tmpfs pages.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(filled - (1 << 20))
        .unwrap();
    let fresh = Capture::default();
    rt.restore_checkpoint("a", None, false, None, || console(&fresh))
        .unwrap();
    let machine = rt.machine_mut().unwrap();
    // The VM generation id's page is rewritten by every restore, by design.
    let vmgenid_page = cairn_vmm::arch::x86_64::layout::VMGENID_ADDR / 4096;
    let expected = cairn_snapshot::memory::PageIndex::from_ranges([(vmgenid_page, 1)]);
    let differ =
        verify::unexpected_changes(&saved, &verify::page_hashes(machine.memory()), &expected);
    assert!(
        differ.is_empty(),
        "restored memory differs from checkpoint a: pages {differ:x?}"
    );
    machine.resume().unwrap();
    wait_dots(&mut rt, &fresh, 1);
    std::env::remove_var("CAIRN_VERIFY_MEMORY");
}
