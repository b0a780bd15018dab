//! `PUT /snapshot/create` on a disk file system writes the memory file past the page cache
//! (checkpoint/direct_io.rs): the file's pages are not cached afterwards, and Full and Diff
//! snapshots restore exactly as through the cache; `CAIRN_SNAPSHOT_DIRECT_IO=0` writes through
//! the cache as before. One test in this binary: it sets the variable.

use std::os::fd::AsRawFd;
use std::path::Path;

mod common;

use cairn_tests::capture::Capture;
use cairn_tests::{guests, kvm_available, on_tmpfs};
use cairn_vmm::builder::BuildSpec;
use cairn_vmm::checkpoint::restore::RestoreOptions;
use cairn_vmm::checkpoint::snapshot::SnapshotKind;
use cairn_vmm::runtime::Runtime;
use common::{console, page_hashes, wait_dots};

/// Pages of `path` with data (not holes), how many of them are in the page cache, and whether
/// the VM generation ID's page (which every restore writes) is.
fn cached_pages(path: &Path) -> (usize, usize, bool) {
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a fresh read-only shared mapping of a file we opened; only mincore looks at it.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    let mut resident = vec![0u8; len.div_ceil(4096)];
    // SAFETY: `resident` has one byte per page of the mapping made above.
    let rc = unsafe { libc::mincore(map, len, resident.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: unmapping the mapping made above, which nothing else uses.
    unsafe { libc::munmap(map, len) };
    let data = data_pages(&file, len);
    let cached = data
        .iter()
        .filter(|&&p| resident[p as usize] & 1 != 0)
        .count();
    let vmgenid_page = (cairn_vmm::arch::x86_64::layout::VMGENID_ADDR / 4096) as usize;
    (data.len(), cached, resident[vmgenid_page] & 1 != 0)
}

/// The pages of `file` (`len` bytes) that hold data, by `SEEK_DATA` / `SEEK_HOLE`.
fn data_pages(file: &std::fs::File, len: usize) -> Vec<u64> {
    let mut pages = Vec::new();
    let mut at: i64 = 0;
    while (at as usize) < len {
        // SAFETY: lseek on a descriptor we own; it only moves the file offset.
        let data = unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        pages.extend((data as u64 / 4096)..(hole as u64).div_ceil(4096));
        at = hole;
    }
    pages
}

/// Snapshot the ticker (Full, then Diff) into `dir`, restore both chains and compare every
/// page. Returns [`cached_pages`] of the Full file right after it was written.
fn snapshot_and_restore(dir: &Path) -> (usize, usize, bool) {
    let mut spec = BuildSpec::linux(guests::TICKER64);
    spec.mem_size_mib = 32;
    spec.track_dirty_pages = true;
    let out = Capture::default();
    let mut rt = Runtime::new().unwrap();
    rt.boot(&spec, console(&out)).unwrap();
    wait_dots(&mut rt, &out, 2);

    rt.machine_mut().unwrap().pause().unwrap();
    let (full_state, full_mem) = (dir.join("full.state"), dir.join("full.mem"));
    rt.snapshot(SnapshotKind::Full, &full_state, &full_mem)
        .unwrap();
    let full_hashes = page_hashes(&rt);
    let cached = cached_pages(&full_mem);

    rt.machine_mut().unwrap().resume().unwrap();
    let seen = out.dots();
    wait_dots(&mut rt, &out, seen + 2);
    rt.machine_mut().unwrap().pause().unwrap();
    let (diff_state, diff_mem) = (dir.join("diff.state"), dir.join("diff.mem"));
    rt.snapshot(SnapshotKind::Diff, &diff_state, &diff_mem)
        .unwrap();
    let diff_hashes = page_hashes(&rt);
    rt.shutdown();
    drop(rt);

    for (state, layers, hashes) in [
        (&full_state, vec![full_mem.clone()], &full_hashes),
        (&diff_state, vec![full_mem.clone(), diff_mem], &diff_hashes),
    ] {
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
        assert!(
            page_hashes(&rt) == *hashes,
            "memory differs after restoring {}",
            state.display()
        );
        rt.machine_mut().unwrap().resume().unwrap();
        wait_dots(&mut rt, &out, 1);
        rt.shutdown();
    }
    cached
}

#[test]
fn snapshots_on_disk_skip_the_page_cache_and_restore_exactly() {
    if !kvm_available("snapshots_on_disk_skip_the_page_cache_and_restore_exactly") {
        return;
    }
    // A directory on a disk file system (not tmpfs, where there is no disk to write to).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    if on_tmpfs(dir.path()) {
        eprintln!(
            "SKIP snapshots_on_disk_skip_the_page_cache_and_restore_exactly: {} is on tmpfs",
            dir.path().display()
        );
        return;
    }

    let (pages, cached, vmgenid_cached) = snapshot_and_restore(dir.path());
    assert!(pages > 64, "the Full file holds {pages} pages of data");
    assert!(
        cached * 10 < pages,
        "O_DIRECT: {cached} of the Full file's {pages} pages were left in the page cache"
    );
    assert!(
        vmgenid_cached,
        "the VM generation ID's page, which every restore writes, is not cached"
    );

    std::env::set_var("CAIRN_SNAPSHOT_DIRECT_IO", "0");
    let cached_dir = dir.path().join("cached");
    std::fs::create_dir(&cached_dir).unwrap();
    let (pages, cached, _) = snapshot_and_restore(&cached_dir);
    assert!(
        cached * 10 > pages * 9,
        "CAIRN_SNAPSHOT_DIRECT_IO=0: only {cached} of {pages} pages cached after the write"
    );
}
