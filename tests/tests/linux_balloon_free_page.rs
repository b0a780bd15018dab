//! End to end with the Linux guest's virtio-balloon driver: free page reporting and free page
//! hinting give the memory the guest frees back to the host.
//!
//! Each test fills guest memory with a file on the guest's RAM-backed root, which makes the
//! VMM's guest memory mapping resident, deletes it, and then checks that the mapping's resident
//! size (`Rss` in /proc/PID/smaps) drops: by itself with reporting (the guest reports the freed
//! 4 MiB blocks), and only after `PATCH /balloon/hinting/start` with hinting. The guest then
//! copies a 2 MiB file and reads both back (the pages it gets are those given back), and the metrics file's
//! `balloon` group counts what was given back. The statistics queue is on in both VMs, so the
//! reporting and hinting queues sit at index 3, after it.

use std::path::Path;
use std::time::{Duration, Instant};

use cairn_tests::linux::{boot_with_api, retry_on_guest_flake};
use cairn_tests::process::http::request;
use cairn_tests::process::{write_vm_config, Guest};
use cairn_tests::{kvm_available, linux_guest};
use cairn_vmm_api::config::{BalloonConfig, CairnConfig, MachineConfig, MetricsConfig, VmConfig};

const MEM_MIB: usize = 512;
/// What the guest writes, then deletes (the emulated guest writes about 0.6 MiB/s here).
const FILL_MIB: u64 = 48;
/// The resident size must drop by at least this much.
const DROP_MIB: u64 = 32;

/// Run `cmd` in the guest's console shell and return what it printed (the console may deliver
/// it in pieces: wait for the closing marker).
fn shell(vm: &mut Guest, cmd: &str, timeout: Duration) -> String {
    let before = vm.stdout().len();
    // `$((6*7))` keeps the echoed command line from matching the markers.
    vm.send(&format!("echo BEGIN$((6*7)); {cmd}; echo END$((6*7))\n"));
    let deadline = Instant::now() + timeout;
    loop {
        let out = vm.stdout();
        let tail = &out[before.min(out.len())..];
        if let Some(body) = tail.split("BEGIN42").nth(1).and_then(|rest| {
            rest.split("END42")
                .next()
                .filter(|_| rest.contains("END42"))
        }) {
            return body.trim().to_string();
        }
        assert!(Instant::now() < deadline, "no answer to `{cmd}`: {tail}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Resident KiB of the VMM's guest memory mapping (the one anonymous mapping of the guest's
/// size, give or take a few pages).
fn guest_rss_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut rss = 0;
    let mut in_guest = false;
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            let kib = v
                .trim()
                .trim_end_matches(" kB")
                .parse::<usize>()
                .unwrap_or(0);
            in_guest = (MEM_MIB * 1024..(MEM_MIB + 1) * 1024).contains(&kib);
        } else if let Some(v) = line.strip_prefix("Rss:") {
            if in_guest {
                rss += v.trim().trim_end_matches(" kB").parse::<u64>().unwrap();
            }
        }
    }
    rss
}

/// The balloon's negotiated feature bits, from the guest's sysfs (a string of 0/1, bit 0 first).
fn balloon_features(vm: &mut Guest) -> String {
    let out = shell(
        vm,
        "for d in /sys/bus/virtio/devices/*; do read id < $d/device; \
         [ $id = 0x0005 ] && read f < $d/features && echo FEAT=$f; done",
        Duration::from_secs(60),
    );
    out.split("FEAT=")
        .nth(1)
        .map(|f| f.trim().to_string())
        .unwrap_or_else(|| panic!("no balloon in the guest's sysfs: {out}"))
}

/// The sum of a `balloon` metric over the metrics file's lines (each line holds the growth since
/// the one before), after a flush.
fn balloon_metric(api: &Path, metrics: &Path, key: &str) -> u64 {
    let (status, body) = request(
        api,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    assert_eq!(status, 204, "{body}");
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["balloon"][key].as_u64())
        .sum()
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let began = Instant::now();
    while !ok() {
        assert!(
            began.elapsed() < limit,
            "timed out ({limit:?}) waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    began.elapsed()
}

struct Vm {
    guest: Guest,
    api: std::path::PathBuf,
    metrics: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn boot(balloon: BalloonConfig) -> Vm {
    boot_with(balloon, CairnConfig::default())
}

fn boot_with(balloon: BalloonConfig, cairn: CairnConfig) -> Vm {
    let guest = linux_guest();
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api.sock");
    let metrics = dir.path().join("metrics.json");
    let cfg = write_vm_config(
        dir.path(),
        &VmConfig {
            machine_config: MachineConfig {
                vcpu_count: 1,
                mem_size_mib: MEM_MIB,
                ..MachineConfig::default()
            },
            balloon: Some(balloon),
            metrics: Some(MetricsConfig {
                metrics_path: metrics.clone(),
            }),
            cairn,
            ..guest.vm_config(MEM_MIB)
        },
    );
    Vm {
        guest: boot_with_api(&api, &cfg),
        api,
        metrics,
        _dir: dir,
    }
}

/// Fill `FILL_MIB` of guest memory with a file and return the guest mapping's resident KiB
/// afterwards.
fn fill(vm: &mut Vm) -> u64 {
    let pid = vm.guest.pid();
    let before = guest_rss_kib(pid);
    let began = Instant::now();
    shell(
        &mut vm.guest,
        &format!("dd if=/dev/zero of=/root/fill bs=1M count={FILL_MIB} 2>/dev/null"),
        Duration::from_secs(600),
    );
    let filled = guest_rss_kib(pid);
    eprintln!(
        "fill {FILL_MIB} MiB in {:?}: guest RSS {before} -> {filled} KiB",
        began.elapsed()
    );
    assert!(
        filled >= before + (FILL_MIB - 8) * 1024,
        "writing {FILL_MIB} MiB made only {} KiB resident",
        filled.saturating_sub(before)
    );
    filled
}

/// The guest copies a 2 MiB binary (onto pages given back to the host: after a report or a
/// hinting run, its free memory is made of them) and reads the copy back: both read the same.
fn guest_memory_still_works(vm: &mut Vm) {
    let out = shell(
        &mut vm.guest,
        "cp /sbin/cairn-agent /root/data; busybox md5sum /sbin/cairn-agent /root/data; \
         rm /root/data",
        Duration::from_secs(600),
    );
    let sums: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("cairn-agent") || l.contains("/root/data"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|h| h.len() == 32)
        .collect();
    assert_eq!(sums.len(), 2, "no md5sums: {out}");
    assert_eq!(sums[0], sums[1], "the copy reads back other data: {out}");
}

#[test]
fn linux_guest_reports_free_pages() {
    if !kvm_available("linux_guest_reports_free_pages") {
        return;
    }
    retry_on_guest_flake("linux_balloon_free_page_reporting", reporting);
}

fn reporting() {
    let mut vm = boot(BalloonConfig {
        stats_polling_interval_s: 1,
        free_page_reporting: true,
        ..Default::default()
    });
    let features = balloon_features(&mut vm.guest);
    eprintln!("balloon features: {features}");
    assert_eq!(&features[1..2], "1", "STATS_VQ negotiated: {features}");
    assert_eq!(&features[5..6], "1", "REPORTING negotiated: {features}");
    let pid = vm.guest.pid();
    let filled = fill(&mut vm);
    let freed_before = balloon_metric(&vm.api, &vm.metrics, "free_page_report_freed");

    shell(&mut vm.guest, "rm /root/fill", Duration::from_secs(300));
    let took = wait_until(
        "the guest's report to shrink the guest RSS",
        Duration::from_secs(180),
        || guest_rss_kib(pid) + DROP_MIB * 1024 <= filled,
    );
    let after = guest_rss_kib(pid);
    let freed = balloon_metric(&vm.api, &vm.metrics, "free_page_report_freed") - freed_before;
    eprintln!(
        "reporting: guest RSS {filled} -> {after} KiB {took:?} after the rm; {} MiB reported \
         since; report count {}, fails {}",
        freed >> 20,
        balloon_metric(&vm.api, &vm.metrics, "free_page_report_count"),
        balloon_metric(&vm.api, &vm.metrics, "free_page_report_fails"),
    );
    assert!(freed >= DROP_MIB << 20, "only {freed} bytes reported");
    assert_eq!(
        balloon_metric(&vm.api, &vm.metrics, "free_page_report_fails"),
        0
    );
    guest_memory_still_works(&mut vm);
}

/// Bytes in use on the file system holding `path`.
fn used_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: statvfs writes one struct into the buffer we own; `c` is NUL-terminated.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) }, 0);
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

/// With guest RAM in a tmpfs file (cairn's opt-in `guest_memory_dir`), the pages the guest
/// reports free must leave the file (`MADV_REMOVE`), not only the VMM's page tables
/// (`MADV_DONTNEED` would leave them allocated in the tmpfs with their old content).
#[test]
fn linux_guest_reports_free_pages_with_guest_ram_in_tmpfs() {
    if !kvm_available("linux_guest_reports_free_pages_with_guest_ram_in_tmpfs") {
        return;
    }
    // SAFETY: trivial getter.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP linux_guest_reports_free_pages_with_guest_ram_in_tmpfs: needs root");
        return;
    }
    retry_on_guest_flake(
        "linux_balloon_free_page_reporting_tmpfs_ram",
        reporting_tmpfs_ram,
    );
}

fn reporting_tmpfs_ram() {
    let dir = tempfile::tempdir().unwrap();
    let ram = dir.path().join("ram");
    std::fs::create_dir(&ram).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={}m", MEM_MIB + 64),
            "tmpfs",
        ])
        .arg(&ram)
        .status()
        .unwrap()
        .success();
    assert!(mounted, "mount a tmpfs at {}", ram.display());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(ram.clone());
    let mut vm = boot_with(
        BalloonConfig {
            stats_polling_interval_s: 1,
            free_page_reporting: true,
            ..Default::default()
        },
        CairnConfig {
            guest_memory_dir: Some(ram.clone()),
            ..Default::default()
        },
    );
    let features = balloon_features(&mut vm.guest);
    assert_eq!(&features[5..6], "1", "REPORTING negotiated: {features}");
    let before = used_bytes(&ram);
    fill(&mut vm);
    let filled = used_bytes(&ram);
    eprintln!(
        "tmpfs holding guest RAM: {} -> {} MiB used after the fill",
        before >> 20,
        filled >> 20
    );
    assert!(
        filled >= before + ((FILL_MIB - 8) << 20),
        "the fill did not land in the tmpfs"
    );
    shell(&mut vm.guest, "rm /root/fill", Duration::from_secs(300));
    let took = wait_until(
        "the guest's report to free pages of the tmpfs",
        Duration::from_secs(180),
        || used_bytes(&ram) + (DROP_MIB << 20) <= filled,
    );
    eprintln!(
        "reporting: tmpfs used {} -> {} MiB {took:?} after the rm",
        filled >> 20,
        used_bytes(&ram) >> 20
    );
    assert_eq!(
        balloon_metric(&vm.api, &vm.metrics, "free_page_report_fails"),
        0
    );
    guest_memory_still_works(&mut vm);
}

#[test]
fn linux_guest_hints_free_pages() {
    if !kvm_available("linux_guest_hints_free_pages") {
        return;
    }
    retry_on_guest_flake("linux_balloon_free_page_hinting", hinting);
}

fn status(api: &Path) -> serde_json::Value {
    let (status, body) = request(api, "GET", "/balloon/hinting/status", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The guest's MemFree in KiB.
fn mem_free_kib(vm: &mut Vm) -> u64 {
    let out = shell(
        &mut vm.guest,
        "while read k v u; do [ $k = MemFree: ] && echo FREE=$v=; done < /proc/meminfo",
        Duration::from_secs(60),
    );
    out.split("FREE=")
        .nth(1)
        .and_then(|r| r.split('=').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemFree: {out}"))
}

fn hinting() {
    let mut vm = boot(BalloonConfig {
        stats_polling_interval_s: 1,
        free_page_hinting: true,
        ..Default::default()
    });
    let features = balloon_features(&mut vm.guest);
    eprintln!("balloon features: {features}");
    assert_eq!(
        &features[3..4],
        "1",
        "FREE_PAGE_HINT negotiated: {features}"
    );
    assert_eq!(
        status(&vm.api),
        serde_json::json!({"host_cmd": 0, "guest_cmd": null})
    );
    let pid = vm.guest.pid();
    let filled = fill(&mut vm);
    shell(&mut vm.guest, "rm /root/fill", Duration::from_secs(300));
    // Without reporting, nothing comes back by itself.
    std::thread::sleep(Duration::from_secs(5));
    let idle = guest_rss_kib(pid);
    assert!(
        idle + 16 * 1024 >= filled,
        "RSS dropped without hinting: {filled} -> {idle} KiB"
    );

    // A run acknowledged by the VMM itself: the guest hints, says STOP, gets DONE.
    let (code, body) = request(&vm.api, "PATCH", "/balloon/hinting/start", None);
    assert_eq!(code, 204, "{body}");
    assert_eq!(status(&vm.api)["host_cmd"], 2);
    let took = wait_until(
        "the guest to finish hinting run 2",
        Duration::from_secs(180),
        || status(&vm.api) == serde_json::json!({"host_cmd": 1, "guest_cmd": 0}),
    );
    let after = guest_rss_kib(pid);
    let freed = balloon_metric(&vm.api, &vm.metrics, "free_page_hint_freed");
    eprintln!(
        "hinting run 2 ({took:?}): guest RSS {idle} -> {after} KiB; {} MiB hinted, {} ranges, {} fails",
        freed >> 20,
        balloon_metric(&vm.api, &vm.metrics, "free_page_hint_count"),
        balloon_metric(&vm.api, &vm.metrics, "free_page_hint_fails"),
    );
    assert!(
        after + DROP_MIB * 1024 <= idle,
        "hinting did not shrink the guest RSS: {idle} -> {after} KiB"
    );
    assert!(freed >= DROP_MIB << 20, "only {freed} bytes hinted");
    guest_memory_still_works(&mut vm);

    // A run the host stops: the guest holds the hinted pages (MemFree drops) until then.
    let free_before = mem_free_kib(&mut vm);
    let (code, body) = request(
        &vm.api,
        "PATCH",
        "/balloon/hinting/start",
        Some(r#"{"acknowledge_on_stop": false}"#),
    );
    assert_eq!(code, 204, "{body}");
    wait_until(
        "the guest to finish hinting run 3",
        Duration::from_secs(180),
        || status(&vm.api) == serde_json::json!({"host_cmd": 3, "guest_cmd": 0}),
    );
    let free_held = mem_free_kib(&mut vm);
    let (code, body) = request(&vm.api, "PATCH", "/balloon/hinting/stop", None);
    assert_eq!(code, 204, "{body}");
    assert_eq!(status(&vm.api)["host_cmd"], 1);
    wait_until(
        "the guest to take its hinted pages back",
        Duration::from_secs(120),
        || mem_free_kib(&mut vm) + 32 * 1024 >= free_before,
    );
    eprintln!(
        "hinting run 3: MemFree {free_before} KiB, {free_held} KiB while the run held the \
         hints, back after stop"
    );
    assert!(
        free_held + DROP_MIB * 1024 <= free_before,
        "the guest did not hold its hints: MemFree {free_before} -> {free_held} KiB"
    );
}
