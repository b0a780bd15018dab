//! End to end: the Linux guest's virtio-balloon driver inflates the balloon to the target set by
//! `PATCH /balloon`, `actual` reaches it (`GET /balloon/statistics`), the guest's MemTotal drops
//! by as much (no deflate_on_oom: the driver takes the pages off the guest's managed memory),
//! the guest's memory statistics come back every polling interval, and the balloon deflates;
//! the metrics file's `balloon` group counts the buffers served and read.

use std::time::{Duration, Instant};

use cairn_tests::linux::{boot_with_api, retry_on_guest_flake};
use cairn_tests::process::http::request;
use cairn_tests::process::{write_vm_config, Guest};
use cairn_tests::{kvm_available, linux_guest};
use cairn_vmm_api::config::{
    BalloonConfig, BalloonStatsReply, MachineConfig, MetricsConfig, VmConfig,
};

/// The guest's MemTotal in KiB, read through the serial console's shell.
fn mem_total_kib(vm: &mut Guest) -> u64 {
    let before = vm.stdout().len();
    // `MEM$((6*7))` keeps the echoed command from matching the answer.
    vm.send("echo MEM$((6*7))=$(sed -n 's/^MemTotal: *\\([0-9]*\\).*/\\1/p' /proc/meminfo)=\n");
    vm.wait_for("MEM42=", Duration::from_secs(90)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = vm.stdout();
        let tail = &out[before.min(out.len())..];
        if let Some(v) = tail
            .split("MEM42=")
            .nth(1)
            // Only a complete answer: the closing `=` has arrived (the console may deliver
            // the number in pieces).
            .and_then(|rest| rest.find('=').map(|end| &rest[..end]))
            .and_then(|n| n.trim().parse().ok())
        {
            return v;
        }
        assert!(Instant::now() < deadline, "no MemTotal answer: {tail}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn statistics(api: &std::path::Path) -> BalloonStatsReply {
    let (status, body) = request(api, "GET", "/balloon/statistics", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls the statistics until `ok` holds (the emulated guest is slow: up to 4 minutes).
fn wait_stats(api: &std::path::Path, what: &str, ok: impl Fn(&BalloonStatsReply) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let s = statistics(api);
        if ok(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn linux_guest_inflates_reports_and_deflates_the_balloon() {
    if !kvm_available("linux_guest_inflates_reports_and_deflates_the_balloon") {
        return;
    }
    retry_on_guest_flake("linux_balloon", inflate_report_deflate);
}

fn inflate_report_deflate() {
    let guest = linux_guest();
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api.sock");
    let cfg = write_vm_config(
        dir.path(),
        &VmConfig {
            machine_config: MachineConfig {
                vcpu_count: 1,
                mem_size_mib: 256,
                ..MachineConfig::default()
            },
            balloon: Some(BalloonConfig {
                amount_mib: 0,
                deflate_on_oom: false,
                stats_polling_interval_s: 1,
                ..Default::default()
            }),
            metrics: Some(MetricsConfig {
                metrics_path: dir.path().join("metrics.json"),
            }),
            ..guest.vm_config(256)
        },
    );
    let mut vm = boot_with_api(&api, &cfg);
    let total_before = mem_total_kib(&mut vm);

    // Statistics arrive every second once the driver is up.
    wait_stats(&api, "the guest's memory statistics", |s| {
        s.total_memory.is_some() && s.free_memory.is_some() && s.available_memory.is_some()
    });
    let s = statistics(&api);
    let total = s.total_memory.unwrap();
    assert!(
        total > 200 << 20 && total <= 256 << 20,
        "total_memory {total} for a 256 MiB guest"
    );

    let began = Instant::now();
    let (status, body) = request(&api, "PATCH", "/balloon", Some(r#"{"amount_mib": 64}"#));
    assert_eq!(status, 204, "{body}");
    wait_stats(&api, "actual to reach 64 MiB", |s| {
        s.target_mib == 64 && s.actual_mib == 64 && s.actual_pages == 64 * 256
    });
    eprintln!("inflate to 64 MiB: {:?}", began.elapsed());
    let (status, body) = request(&api, "GET", "/balloon", None);
    assert_eq!(status, 200);
    assert!(body.contains(r#""amount_mib":64"#), "{body}");
    let total_inflated = mem_total_kib(&mut vm);
    eprintln!("MemTotal: {total_before} KiB -> {total_inflated} KiB inflated");
    assert!(
        total_before - total_inflated >= 64 * 1024 - 64,
        "MemTotal {total_before} KiB -> {total_inflated} KiB after a 64 MiB inflate"
    );
    // The guest's own statistics see it too.
    wait_stats(&api, "total_memory to drop", |s| {
        s.total_memory.is_some_and(|t| t + (60 << 20) <= total)
    });

    let began = Instant::now();
    let (status, body) = request(&api, "PATCH", "/balloon", Some(r#"{"amount_mib": 0}"#));
    assert_eq!(status, 204, "{body}");
    wait_stats(&api, "actual back to 0", |s| s.actual_pages == 0);
    eprintln!("deflate to 0: {:?}", began.elapsed());
    let total_after = mem_total_kib(&mut vm);
    assert_eq!(total_after, total_before, "MemTotal after deflating");

    // Firecracker's `balloon` metrics group: each line holds the growth since the one before.
    let (status, body) = request(
        &api,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FlushMetrics"}"#),
    );
    assert_eq!(status, 204, "{body}");
    let lines = std::fs::read_to_string(dir.path().join("metrics.json")).unwrap();
    let sum = |key: &str| -> u64 {
        lines
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["balloon"][key].as_u64())
            .sum()
    };
    eprintln!(
        "balloon metrics: inflate {} deflate {} stats {} fails {}",
        sum("inflate_count"),
        sum("deflate_count"),
        sum("stats_updates_count"),
        sum("stats_update_fails")
    );
    assert!(sum("inflate_count") >= 1, "{lines}");
    assert!(sum("deflate_count") >= 1, "{lines}");
    assert!(sum("stats_updates_count") >= 2, "{lines}");
    assert_eq!(sum("stats_update_fails"), 0, "{lines}");
}
