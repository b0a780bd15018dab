//! Helpers shared by the tiny-guest tests (snapshots and checkpoints, in-process and through
//! the `cairn-vmm` binary).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_tests::capture::{fnv1a, Capture};
use cairn_vmm::builder::ConsoleIo;
use cairn_vmm::runtime::Runtime;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// A console writing into `c`, with no input.
pub fn console(c: &Capture) -> ConsoleIo {
    ConsoleIo {
        output: Box::new(c.clone()),
        input: None,
    }
}

/// Whether `test` can run: KVM and a userfaultfd for write tracking. Prints `SKIP` when not;
/// with `CAIRN_REQUIRE_KVM=1` a missing one fails the test instead.
#[allow(dead_code)] // for the write-tracking tests only
pub fn kvm_and_userfaultfd(test: &str) -> bool {
    if !cairn_tests::kvm_available(test) {
        return false;
    }
    if let Err(e) = cairn_vmm::checkpoint::background::WriteTracker::open() {
        assert!(
            std::env::var("CAIRN_REQUIRE_KVM").as_deref() != Ok("1"),
            "no userfaultfd: {e}"
        );
        eprintln!("SKIP {test}: no userfaultfd ({e})");
        return false;
    }
    true
}

/// Serve events until the ticker guest has printed more than `more_than` dots.
pub fn wait_dots(rt: &mut Runtime, out: &Capture, more_than: usize) {
    let start = Instant::now();
    while out.dots() <= more_than {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "guest made no progress"
        );
        rt.run_until_exit(Some(Duration::from_millis(10))).unwrap();
    }
}

/// A hash of every 4 KiB page of guest memory.
pub fn page_hashes(rt: &Runtime) -> Vec<u64> {
    let mem = rt.machine().unwrap().memory();
    let mut hashes = vec![];
    let mut buf = vec![0u8; 4096];
    for region in mem.iter() {
        for off in (0..region.len()).step_by(4096) {
            let at = region.start_addr().0 + off;
            mem.read_slice(&mut buf, GuestAddress(at)).unwrap();
            // The VM generation id is rewritten on every restore, by design: leave it out.
            let id = cairn_vmm::arch::x86_64::layout::VMGENID_ADDR;
            if (at..at + 4096).contains(&id) {
                let o = (id - at) as usize;
                buf[o..o + 16].fill(0);
            }
            hashes.push(fnv1a(&buf));
        }
    }
    hashes
}

/// The 16-byte VM generation id in guest memory.
#[allow(dead_code)] // for the snapshot tests only
pub fn vmgenid(rt: &Runtime) -> [u8; 16] {
    let mut id = [0u8; 16];
    rt.machine()
        .unwrap()
        .memory()
        .read_slice(
            &mut id,
            GuestAddress(cairn_vmm::arch::x86_64::layout::VMGENID_ADDR),
        )
        .unwrap();
    id
}

/// A private tmpfs, unmounted on drop.
#[allow(dead_code)] // for the tmpfs tests only
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    #[allow(dead_code)] // for the tmpfs tests only
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A `cairn-vmm --config-file` for `kernel` with 64 MiB, one vCPU, a store at `<dir>/store` and
/// a read-write 1 MiB drive `drive0` (a sparse file the tiny guests never write: each checkpoint
/// still freezes its delta). Returns the config's path and the store's.
#[allow(dead_code)] // for the process-level checkpoint tests only
pub fn config_with_drive(dir: &Path, kernel: &str) -> (PathBuf, PathBuf) {
    let store = dir.join("store");
    let drive = dir.join("drive0.raw");
    std::fs::File::create(&drive)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let cfg = cairn_tests::process::write_config(
        dir,
        &serde_json::json!({
            "boot-source": {"kernel_image_path": kernel},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
            "drives": [{"drive_id": "drive0", "path_on_host": drive,
                        "is_root_device": false, "is_read_only": false}],
            "cairn": {"checkpoint_dir": store},
        }),
    );
    (cfg, store)
}
