//! `machine-config.huge_pages: "2M"` through the real binary: the guest's memory is on 2 MiB
//! hugetlbfs pages (the process's smaps say so and the host's free pool shrinks by the guest's
//! size once the ticker guest has touched all of it), `GET /vm/config` reports it, a snapshot is
//! refused with the reason, and a host pool too small for the guest is a one-line error at
//! start, never a guest on small pages. Huge pages with a checkpoint directory are refused at
//! configuration (checkpoints restore onto small pages).
//!
//! The tests that need a pool set `/proc/sys/vm/nr_hugepages` (root only) and put the old value
//! back, even when they fail; they take turns, since they share the host's pool.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use cairn_tests::process::{api, configure_ticker, vm_config_json, Guest};
use cairn_tests::{guests, kvm_available};
use cairn_vmm_api::config::{CreateSnapshotParams, HugePages, MachineConfigUpdate, SnapshotType};

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
const POOL: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
/// The ticker guest's memory, and how many 2 MiB pages that is.
const GUEST_MIB: usize = 32;
const GUEST_PAGES: u64 = (GUEST_MIB / 2) as u64;

static POOL_LOCK: Mutex<()> = Mutex::new(());

fn pool(name: &str) -> u64 {
    std::fs::read_to_string(format!("{POOL}/{name}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The host's 2 MiB pool resized for a test; the old size is restored on drop.
struct PoolSize {
    old: u64,
}

impl PoolSize {
    /// Resize the pool so that `free` pages are free (pages in use stay in use). `None`
    /// (skipped loudly, or a failure under `CAIRN_REQUIRE_KVM=1`) when this user cannot.
    fn with_free(name: &str, free: u64) -> Option<Self> {
        let old: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let in_use = old - pool("free_hugepages");
        let guard = PoolSize { old };
        if std::fs::write(NR_HUGEPAGES, (in_use + free).to_string()).is_err() {
            if std::env::var("CAIRN_REQUIRE_KVM").as_deref() == Ok("1") {
                panic!("{name}: cannot write {NR_HUGEPAGES} (tests run as root)");
            }
            eprintln!("SKIP {name}: cannot write {NR_HUGEPAGES} (needs root)");
            return None;
        }
        // The kernel may find fewer free 2 MiB blocks than asked for (fragmented memory).
        let got = pool("free_hugepages");
        assert!(
            got >= free,
            "{name}: asked the host for {free} free huge pages, it made {got}"
        );
        Some(guard)
    }
}

impl Drop for PoolSize {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.old.to_string());
    }
}

/// For each mapping of `pid` whose size is `size_kib`: its `KernelPageSize` and
/// `Private_Hugetlb`, in KiB.
fn mappings_of_size(pid: u32, size_kib: u64) -> Vec<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let field = |block: &str, name: &str| -> Option<u64> {
        block
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    // A mapping is its header line plus the `Key: value` lines up to the next header.
    let mut blocks: Vec<String> = vec![];
    for line in smaps.lines() {
        let header = line
            .split_once(' ')
            .is_some_and(|(range, _)| range.contains('-') && !range.ends_with(':'));
        if header || blocks.is_empty() {
            blocks.push(String::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push_str(line);
            b.push('\n');
        }
    }
    blocks
        .iter()
        .filter(|b| field(b, "Size:") == Some(size_kib))
        .map(|b| {
            (
                field(b, "KernelPageSize:").unwrap_or(0),
                field(b, "Private_Hugetlb:").unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn guest_memory_is_on_2m_huge_pages() {
    let name = "guest_memory_is_on_2m_huge_pages";
    if !kvm_available(name) {
        return;
    }
    let _turn = POOL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_pool) = PoolSize::with_free(name, GUEST_PAGES + 8) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock").arg(&sock);
    let mut vm = Guest::spawn(cmd);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();
    configure_ticker(&c);
    c.patch_machine_config(&MachineConfigUpdate {
        huge_pages: Some(HugePages::Hugetlbfs2M),
        ..MachineConfigUpdate::default()
    })
    .unwrap();
    assert_eq!(
        vm_config_json(&c)["machine-config"]["huge_pages"],
        serde_json::json!("2M")
    );

    let free_before = pool("free_hugepages");
    c.instance_start().unwrap();
    // The ticker touches all of its RAM before its first dot.
    vm.wait_for(".", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", vm.stderr()));
    let guest_kib = (GUEST_MIB as u64) << 10;
    let mappings = mappings_of_size(vm.pid(), guest_kib);
    // The guest's mapping: on 2 MiB pages, every one of them faulted in by the guest.
    assert!(
        mappings.contains(&(2048, guest_kib)),
        "no {GUEST_MIB} MiB mapping on 2 MiB pages in the VMM's smaps: {mappings:?}"
    );
    let used = free_before - pool("free_hugepages");
    assert!(
        used >= GUEST_PAGES,
        "the free pool shrank by {used} pages, the guest has {GUEST_PAGES}"
    );
    assert_eq!(
        vm_config_json(&c)["machine-config"]["huge_pages"],
        serde_json::json!("2M")
    );

    // No snapshot: it could be restored only onto small pages (docs/vmm.md).
    c.pause().unwrap();
    let err = c
        .snapshot_create(&CreateSnapshotParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: dir.path().join("vm.snap"),
            mem_file_path: dir.path().join("vm.mem"),
            version: None,
        })
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    assert!(err.to_string().contains("huge pages"), "{err}");
    assert!(!dir.path().join("vm.mem").exists());
    c.resume().unwrap();

    vm.signal(libc::SIGTERM);
    assert!(vm.wait_exit(Duration::from_secs(10)).is_some());
    // The pages went back to the pool with the process.
    cairn_tests::process::wait_until(
        "the huge pages to be freed",
        Duration::from_secs(10),
        || pool("free_hugepages") >= free_before,
    );
}

#[test]
fn a_pool_too_small_for_the_guest_is_a_clear_error_at_start() {
    let name = "a_pool_too_small_for_the_guest_is_a_clear_error_at_start";
    if !kvm_available(name) {
        return;
    }
    let _turn = POOL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let Some(_pool) = PoolSize::with_free(name, 2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"))
        .args(["--no-api", "--config-file"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("cairn-vmm:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(
        line.contains("huge_pages \"2M\"")
            && line.contains(&format!("needs {GUEST_PAGES} huge pages"))
            && line.contains("nr_hugepages"),
        "{line}"
    );
    eprintln!("{line}");
    // Nothing ran: no guest output.
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": guests::TICKER64, "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": GUEST_MIB, "huge_pages": "2M"},
    });
    cairn_tests::process::write_config(dir, &cfg)
}

#[test]
fn huge_pages_with_a_checkpoint_dir_are_refused_naming_the_field() {
    // Refused while the configuration is checked, before any memory is mapped: no pool needed.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"))
        .args(["--no-api", "--config-file"])
        .arg(&cfg)
        .arg("--checkpoint-dir")
        .arg(dir.path().join("checkpoints"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("machine-config.huge_pages") && err.contains("checkpoint"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
