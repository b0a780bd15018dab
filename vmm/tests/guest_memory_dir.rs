//! Guest RAM in a tmpfs directory (cairn's opt-in `guest_memory_dir`) and the Full snapshot that
//! hands that file over instead of copying it (checkpoint/handover.rs): the snapshot file holds
//! exactly the memory at the pause, the guest's later writes never reach it, it restores
//! byte-identical in a fresh VMM, and every other case copies as before.

use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
mod common;

use cairn_snapshot::memory::PageIndex;
use cairn_tests::capture::Capture;
use cairn_tests::{guests, kvm_available};
use cairn_vmm::builder::BuildSpec;
use cairn_vmm::checkpoint::restore::RestoreOptions;
use cairn_vmm::checkpoint::snapshot::SnapshotKind;
use cairn_vmm::checkpoint::verify;
use cairn_vmm::config::HugePages;
use cairn_vmm::runtime::Runtime;
use common::{console, page_hashes, wait_dots, Tmpfs};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

/// Whether this test can run: KVM, and root (it mounts tmpfs).
fn can_run(name: &str) -> bool {
    if !kvm_available(name) {
        return false;
    }
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CAIRN_REQUIRE_KVM").as_deref() != Ok("1"),
            "{name}: needs root (mounts a tmpfs)"
        );
        eprintln!("SKIP {name}: needs root (mounts a tmpfs)");
        return false;
    }
    true
}

/// The ticker guest, 32 MiB, dirty pages tracked, RAM in `ram_dir`, two dots in.
fn ticking(ram_dir: &Path) -> (Runtime, Capture) {
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 32;
    spec.track_dirty_pages = true;
    spec.guest_memory_dir = Some(ram_dir.to_path_buf());
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    wait_dots(&mut rt, &out, 2);
    (rt, out)
}

/// All of guest memory, in memory-file order.
fn memory_bytes(rt: &Runtime) -> Vec<u8> {
    let mem = rt.machine().unwrap().memory();
    let mut out = vec![];
    for region in mem.iter() {
        let mut buf = vec![0u8; region.len() as usize];
        mem.read_slice(&mut buf, region.start_addr()).unwrap();
        out.extend_from_slice(&buf);
    }
    out
}

fn restore(state: &Path, layers: Vec<PathBuf>) -> (Runtime, Capture) {
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    let opts = RestoreOptions {
        fill_anonymous: false,
        memory_layers: layers,
        track_dirty_pages: true,
        resume: false,
        network_overrides: vec![],
        vsock_uds_path: None,
    };
    rt.restore(state, &opts, console(&out)).unwrap();
    (rt, out)
}

/// The pages of two memory images that differ, the VM generation id's page left out (every
/// restore rewrites it, by design).
fn differing_pages(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len());
    let id_page = (cairn_vmm::arch::x86_64::layout::VMGENID_ADDR / 4096) as usize;
    a.chunks(4096)
        .zip(b.chunks(4096))
        .enumerate()
        .filter(|(i, (x, y))| *i != id_page && x != y)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn a_full_snapshot_hands_ram_over_and_the_guest_runs_on_a_private_copy() {
    let name = "a_full_snapshot_hands_ram_over_and_the_guest_runs_on_a_private_copy";
    if !can_run(name) {
        return;
    }
    // Page hashes before and after the RAM is mapped from the snapshot file (handover.rs).
    std::env::set_var("CAIRN_VERIFY_MEMORY", "1");
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("t"), "200m");
    let (ram, snaps) = (tmpfs.0.join("ram"), tmpfs.0.join("snaps"));
    std::fs::create_dir_all(&ram).unwrap();
    std::fs::create_dir_all(&snaps).unwrap();
    let (mut rt, out) = ticking(&ram);
    assert_eq!(
        std::fs::read_dir(&ram).unwrap().count(),
        0,
        "guest RAM is an unlinked file"
    );

    rt.machine_mut().unwrap().pause().unwrap();
    let at_pause = memory_bytes(&rt);
    let hashes_at_pause = page_hashes(&rt);
    let (state, mem) = (snaps.join("full.state"), snaps.join("full.mem"));
    let report = rt.snapshot(SnapshotKind::Full, &state, &mem).unwrap();
    assert!(report.handed_over, "{report:?}");
    assert_eq!(report.memory_bytes, 0, "{report:?}");
    let file_at_snapshot = std::fs::read(&mem).unwrap();
    assert!(
        differing_pages(&file_at_snapshot, &at_pause).is_empty(),
        "the snapshot file is not the memory at the pause"
    );
    assert_eq!(
        memory_bytes(&rt),
        at_pause,
        "the remap changed guest memory"
    );
    let mut names: Vec<String> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["full.mem", "full.mem.index", "full.state"]);

    // The guest runs on: its writes stay in its private copy.
    rt.machine_mut().unwrap().resume().unwrap();
    let seen = out.dots();
    wait_dots(&mut rt, &out, seen + 2);
    rt.machine_mut().unwrap().pause().unwrap();
    let later = memory_bytes(&rt);
    assert!(
        !differing_pages(&later, &at_pause).is_empty(),
        "the guest wrote nothing"
    );
    assert!(
        std::fs::read(&mem).unwrap() == file_at_snapshot,
        "a guest write after the snapshot reached the snapshot file"
    );

    // A Diff holds what it wrote since; a second Full copies (the RAM is no longer shared).
    let (dstate, dmem) = (snaps.join("diff.state"), snaps.join("diff.mem"));
    let diff = rt.snapshot(SnapshotKind::Diff, &dstate, &dmem).unwrap();
    assert!(diff.pages > 0 && diff.pages < report.pages, "{diff:?}");
    let hashes_at_diff = page_hashes(&rt);
    let (state2, mem2) = (snaps.join("full2.state"), snaps.join("full2.mem"));
    let second = rt.snapshot(SnapshotKind::Full, &state2, &mem2).unwrap();
    assert!(!second.handed_over && second.memory_bytes > 0, "{second:?}");
    assert!(std::fs::read(&mem).unwrap() == file_at_snapshot);
    rt.shutdown();
    drop(rt);

    // A fresh VMM restores the handed-over file byte-identical, and the chain with the Diff.
    let (mut rt2, out2) = restore(&state, vec![mem.clone()]);
    assert!(page_hashes(&rt2) == hashes_at_pause, "Full restore differs");
    rt2.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt2, &out2, 1);
    rt2.shutdown();
    drop(rt2);
    let (mut rt3, out3) = restore(&dstate, vec![mem.clone(), dmem]);
    assert!(
        page_hashes(&rt3) == hashes_at_diff,
        "Full+Diff restore differs"
    );
    rt3.machine_mut().unwrap().resume().unwrap();
    wait_dots(&mut rt3, &out3, 1);
    rt3.shutdown();
    drop(rt3);
    let (rt4, _) = restore(&state2, vec![mem2]);
    assert!(page_hashes(&rt4) == hashes_at_diff, "second Full differs");
}

#[test]
fn a_diff_merged_into_the_handed_over_file_leaves_the_running_guest_alone() {
    let name = "a_diff_merged_into_the_handed_over_file_leaves_the_running_guest_alone";
    if !can_run(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("t"), "100m");
    let ram = tmpfs.0.join("ram");
    std::fs::create_dir_all(&ram).unwrap();
    let (mut rt, out) = ticking(&ram);
    rt.machine_mut().unwrap().pause().unwrap();
    let (state, mem) = (tmpfs.0.join("vm.state"), tmpfs.0.join("vm.mem"));
    assert!(
        rt.snapshot(SnapshotKind::Full, &state, &mem)
            .unwrap()
            .handed_over
    );
    rt.machine_mut().unwrap().resume().unwrap();
    let seen = out.dots();
    wait_dots(&mut rt, &out, seen + 2);
    rt.machine_mut().unwrap().pause().unwrap();
    // Firecracker's pattern: Diffs into the Full's memory file. The file is the one this VM maps
    // privately; the merge writes only pages the guest dirtied, of which it has its own copies.
    let at_diff = memory_bytes(&rt);
    let (dstate, dmem) = (tmpfs.0.join("d.state"), mem.clone());
    let diff = rt.snapshot(SnapshotKind::Diff, &dstate, &dmem).unwrap();
    assert!(diff.pages > 0 && diff.memory_bytes > 0, "{diff:?}");
    assert_eq!(
        memory_bytes(&rt),
        at_diff,
        "the merge changed the running guest"
    );
    assert!(
        differing_pages(&std::fs::read(&mem).unwrap(), &at_diff).is_empty(),
        "the merged file is not the memory at the Diff"
    );
    rt.machine_mut().unwrap().resume().unwrap();
    let seen = out.dots();
    wait_dots(&mut rt, &out, seen + 1);
    rt.shutdown();
    drop(rt);
    let (rt2, _) = restore(&dstate, vec![mem]);
    assert!(differing_pages(&memory_bytes(&rt2), &at_diff).is_empty());
}

#[test]
fn another_file_system_or_a_hostile_target_copies_or_refuses_as_before() {
    let name = "another_file_system_or_a_hostile_target_copies_or_refuses_as_before";
    if !can_run(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("t"), "100m");
    let ram = tmpfs.0.join("ram");
    std::fs::create_dir_all(&ram).unwrap();
    let (mut rt, _out) = ticking(&ram);
    rt.machine_mut().unwrap().pause().unwrap();

    // Hostile memory targets on the same tmpfs: refused before anything is written.
    let victim = tmpfs.0.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let link = tmpfs.0.join("link.mem");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let subdir = tmpfs.0.join("subdir.mem");
    std::fs::create_dir(&subdir).unwrap();
    for target in [&link, &subdir] {
        let state = tmpfs.0.join("h.state");
        let e = rt
            .snapshot(SnapshotKind::Full, &state, target)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(!state.exists());
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let mut names: Vec<String> = std::fs::read_dir(&tmpfs.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["link.mem", "ram", "subdir.mem", "victim"]);

    // Another file system: the memory is copied, and the RAM stays shared.
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let at_pause = page_hashes(&rt);
    let (state, mem) = (disk.path().join("s"), disk.path().join("m"));
    let copied = rt.snapshot(SnapshotKind::Full, &state, &mem).unwrap();
    assert!(!copied.handed_over && copied.memory_bytes > 0, "{copied:?}");
    // The next Full into the tmpfs still hands over.
    let (state2, mem2) = (tmpfs.0.join("s2"), tmpfs.0.join("m2"));
    let handed = rt.snapshot(SnapshotKind::Full, &state2, &mem2).unwrap();
    assert!(handed.handed_over, "{handed:?}");
    rt.shutdown();
    drop(rt);
    for (s, m) in [(state, mem), (state2, mem2)] {
        let (rt, _) = restore(&s, vec![m]);
        assert!(page_hashes(&rt) == at_pause, "{}", s.display());
    }
}

#[test]
fn guest_memory_dir_refuses_what_it_cannot_back() {
    let name = "guest_memory_dir_refuses_what_it_cannot_back";
    if !can_run(name) {
        return;
    }
    let boot = |spec: &BuildSpec| {
        let mut rt = Runtime::new().unwrap();
        match rt.boot(spec, console(&Capture::default())) {
            Ok(()) => panic!("booted with {:?}", spec.guest_memory_dir),
            Err(e) => e.to_string(),
        }
    };
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 32;
    // Not tmpfs.
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    spec.guest_memory_dir = Some(disk.path().to_path_buf());
    let e = boot(&spec);
    assert!(e.contains("not on tmpfs"), "{e}");
    // Huge pages.
    let dir = tempfile::tempdir().unwrap();
    let small = Tmpfs::mount(&dir.path().join("t"), "16m");
    spec.guest_memory_dir = Some(small.0.clone());
    spec.huge_pages = HugePages::Hugetlbfs2M;
    let e = boot(&spec);
    assert!(e.contains("guest_memory_dir"), "{e}");
    // A tmpfs without room for the guest.
    spec.huge_pages = HugePages::None;
    let e = boot(&spec);
    assert!(
        e.contains("16 MiB free") && e.contains("needs 32 MiB"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&small.0).unwrap().count(), 0);
}

#[test]
fn named_checkpoints_work_on_shared_guest_ram() {
    let name = "named_checkpoints_work_on_shared_guest_ram";
    if !can_run(name) {
        return;
    }
    // Page hashes at each checkpoint's pause (checkpoint/verify.rs), compared with its layer
    // and with the restored memory.
    std::env::set_var("CAIRN_VERIFY_MEMORY", "1");
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("t"), "200m");
    let (ram, store) = (tmpfs.0.join("ram"), tmpfs.0.join("ckpts"));
    std::fs::create_dir_all(&ram).unwrap();
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 32;
    spec.track_dirty_pages = true;
    spec.checkpoint_dir = Some(store.clone());
    spec.guest_memory_dir = Some(ram);
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    for ck in ["a", "b", "c"] {
        if ck == "c" {
            // A Full snapshot into the same tmpfs hands the RAM over between two background
            // checkpoints: the mappings the last one kept registered are replaced, and the
            // next checkpoint must still be exact.
            rt.machine_mut().unwrap().pause().unwrap();
            let report = rt
                .snapshot(
                    SnapshotKind::Full,
                    &tmpfs.0.join("full.state"),
                    &tmpfs.0.join("full.mem"),
                )
                .unwrap();
            assert!(report.handed_over, "the Full snapshot copied");
            rt.machine_mut().unwrap().resume().unwrap();
        }
        let seen = out.dots();
        wait_dots(&mut rt, &out, seen + 1);
        let meta = rt.create_checkpoint(Some(ck)).unwrap();
        eprintln!(
            "{ck}: pause {:.2} ms, copy {:.2} ms, total {:.2} ms",
            meta.pause_ms, meta.write_ms, meta.total_ms
        );
        let hashes = verify::load(&store.join(ck)).expect("hashes taken at the pause");
        let layer = store.join(ck).join("mem.layer");
        let index = cairn_snapshot::memory::open_layer(&layer).unwrap();
        let differ = verify::layer_mismatches(&layer, &index.pages, &hashes).unwrap();
        assert!(differ.is_empty(), "{ck}: {} pages differ", differ.len());
    }
    for ck in ["a", "b", "c"] {
        let out = Capture::default();
        rt.restore_checkpoint(ck, None, false, None, || console(&out))
            .unwrap();
        let restored = verify::page_hashes(rt.machine().unwrap().memory());
        let saved = verify::load(&store.join(ck)).unwrap();
        let vmgenid_page = cairn_vmm::arch::x86_64::layout::VMGENID_ADDR / 4096;
        let expected = PageIndex::from_ranges([(vmgenid_page, 1)]);
        let differ = verify::unexpected_changes(&saved, &restored, &expected);
        assert!(differ.is_empty(), "{ck}: {} pages differ", differ.len());
        rt.machine_mut().unwrap().resume().unwrap();
        wait_dots(&mut rt, &out, 0);
    }
}

/// Guest RAM mappings of `pid` from files in `ram_dir`: (shared, private) counts.
fn ram_mappings(pid: u32, ram_dir: &Path) -> (usize, usize) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let prefix = format!("{}/", ram_dir.display());
    let ram: Vec<&str> = maps.lines().filter(|l| l.contains(&prefix)).collect();
    let shared = ram.iter().filter(|l| l.contains(" rw-s ")).count();
    let private = ram.iter().filter(|l| l.contains(" rw-p ")).count();
    (shared, private)
}

#[test]
fn the_environment_variable_turns_it_on_for_an_unchanged_firecracker_client() {
    use cairn_tests::process::{api, configure_ticker, load_resumed, Guest};
    use cairn_vmm_api::config::{CreateSnapshotParams, SnapshotType};
    use std::time::Duration;

    let name = "the_environment_variable_turns_it_on_for_an_unchanged_firecracker_client";
    if !can_run(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&dir.path().join("t"), "100m");
    let (ram, snaps) = (tmpfs.0.join("ram"), tmpfs.0.join("snaps"));
    std::fs::create_dir_all(&ram).unwrap();
    std::fs::create_dir_all(&snaps).unwrap();
    // The real binary, seccomp on, driven as a Firecracker client would drive `firecracker`.
    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock")
        .arg(&sock)
        .env("CAIRN_GUEST_MEMORY_DIR", &ram);
    let mut g = Guest::spawn(cmd);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    c.instance_start().unwrap();
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    assert_eq!(
        ram_mappings(g.pid(), &ram),
        (1, 0),
        "guest RAM is one shared mapping of a file in {}",
        ram.display()
    );

    c.pause().unwrap();
    let snap = CreateSnapshotParams {
        snapshot_type: SnapshotType::Full,
        snapshot_path: snaps.join("vm.snap"),
        mem_file_path: snaps.join("vm.mem"),
        version: None,
    };
    c.snapshot_create(&snap).unwrap();
    assert_eq!(
        ram_mappings(g.pid(), &ram),
        (0, 1),
        "after the handover guest RAM is a private mapping of the same file"
    );
    let at_snapshot = std::fs::read(&snap.mem_file_path).unwrap();
    c.resume().unwrap();
    let seen = g.stdout().matches('.').count();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while g.stdout().matches('.').count() < seen + 2 {
        assert!(std::time::Instant::now() < deadline, "the guest stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());
    assert!(
        std::fs::read(&snap.mem_file_path).unwrap() == at_snapshot,
        "the guest's writes after the snapshot reached the memory file"
    );

    // A fresh VMM without the setting loads it and the guest runs on.
    let sock2 = dir.path().join("api2.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock").arg(&sock2);
    let mut g2 = Guest::spawn(cmd);
    let c2 = api(&sock2);
    c2.wait_ready(Duration::from_secs(10)).unwrap();
    c2.snapshot_load(&load_resumed(&snap)).unwrap();
    g2.wait_for(".", Duration::from_secs(30)).unwrap();
    g2.signal(libc::SIGTERM);
    assert!(g2.wait_exit(Duration::from_secs(10)).is_some());
}
