//! Metrics and logger through the real `cairn-vmm` binary (seccomp on): `PUT /metrics` and
//! `--metrics-path` write Firecracker-format JSON lines at boot, on `FlushMetrics` and
//! periodically; `PUT /logger` and the config file's `logger` section change where and how
//! cairn logs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_tests::process::{api, configure_ticker, wait_until, Guest};
use cairn_tests::{guests, kvm_available};
use cairn_vmm_api::config::{ActionType, DriveConfig, LogLevel, LoggerConfig, MetricsConfig};

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn metrics_and_logger_through_the_api() {
    if !kvm_available("metrics_and_logger_through_the_api") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let metrics = dir.path().join("metrics.json");
    let log = dir.path().join("vmm.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--api-sock")
        .arg(&sock)
        .env("CAIRN_METRICS_PERIOD_MS", "300");
    let mut g = Guest::spawn(cmd);
    let c = api(&sock);
    c.wait_ready(Duration::from_secs(10)).unwrap();

    // A log file that cannot be opened is refused, and nothing changes.
    let err = c
        .put_logger(&LoggerConfig {
            log_path: Some(dir.path().join("no/such/dir/log")),
            ..LoggerConfig::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("Logger error"), "{err}");
    c.put_logger(&LoggerConfig {
        log_path: Some(log.clone()),
        level: Some(LogLevel::Info),
        show_level: Some(true),
        show_log_origin: Some(true),
        module: None,
    })
    .unwrap();
    // Before boot, FlushMetrics is refused as Firecracker refuses it.
    c.put_metrics(&MetricsConfig {
        metrics_path: metrics.clone(),
    })
    .unwrap();
    let again = c
        .put_metrics(&MetricsConfig {
            metrics_path: metrics.clone(),
        })
        .unwrap_err();
    assert!(again.to_string().contains("Reinitialization"), "{again}");
    assert_eq!(
        c.action(ActionType::FlushMetrics).unwrap_err().status(),
        Some(400)
    );
    assert!(lines(&metrics).is_empty());

    configure_ticker(&c);
    let scratch = dir.path().join("scratch.img");
    std::fs::File::create(&scratch)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    c.put_drive(&DriveConfig {
        is_read_only: Some(true),
        ..DriveConfig::new("scratch", scratch, false)
    })
    .unwrap();
    c.instance_start().unwrap();
    // Firecracker writes a line at boot.
    assert_eq!(lines(&metrics).len(), 1);
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    c.pause().unwrap();
    c.resume().unwrap();
    let _ = c.describe().unwrap();
    c.action(ActionType::FlushMetrics).unwrap();
    let all = lines(&metrics);
    let last = all.last().unwrap();
    for group in [
        "api_server",
        "get_api_requests",
        "put_api_requests",
        "patch_api_requests",
        "latencies_us",
        "logger",
        "vcpu",
        "uart",
        "block",
        "net",
        "seccomp",
        "vmm",
    ] {
        assert!(last[group].is_object(), "{group} missing: {last}");
    }
    // Each drive has its own group too, as in Firecracker.
    assert!(last["block_scratch"]["read_count"].is_u64(), "{last}");
    assert!(last["utc_timestamp_ms"].as_u64().unwrap() > 1_700_000_000_000);
    // The guest printed through COM1, and the counts are deltas since the boot line.
    let total = |key: &str, sub: &str| -> u64 {
        lines(&metrics)
            .iter()
            .map(|l| l[key][sub].as_u64().unwrap())
            .sum()
    };
    assert!(total("uart", "write_count") > 0, "{last}");
    assert!(total("vcpu", "exit_io_out") >= total("uart", "write_count"));
    assert_eq!(total("put_api_requests", "machine_cfg_count"), 1);
    assert_eq!(total("put_api_requests", "metrics_count"), 2);
    assert_eq!(total("put_api_requests", "metrics_fails"), 1);
    assert_eq!(total("put_api_requests", "logger_fails"), 1);
    assert!(
        last["latencies_us"]["pause_vm"].as_u64().unwrap() > 0,
        "{last}"
    );

    // The periodic flush (300 ms here, 60 s by default).
    let n = lines(&metrics).len();
    wait_until("a periodic metrics line", Duration::from_secs(20), || {
        lines(&metrics).len() >= n + 2
    });

    // The log: Firecracker's line format, with level and origin as asked.
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("API"))
        .unwrap_or_else(|| panic!("no API line in {text}"));
    assert!(line.contains("[anonymous-instance:"), "{line}");
    assert!(line.contains(":INFO:"), "{line}");
    assert!(line.contains(".rs:"), "{line}");
    // A level change takes effect at once: nothing is written at Error.
    c.put_logger(&LoggerConfig {
        level: Some(LogLevel::Error),
        show_level: Some(false),
        ..LoggerConfig::default()
    })
    .unwrap();
    let before = std::fs::read_to_string(&log).unwrap().len();
    let _ = c.describe().unwrap();
    c.pause().unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap().len(), before);
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn config_file_logger_and_metrics_sections_take_effect() {
    if !kvm_available("config_file_logger_and_metrics_sections_take_effect") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.json");
    let log = dir.path().join("vmm.log");
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": guests::TICKER64, "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        "logger": {"log_path": log, "level": "Debug", "show_level": true},
        "metrics": {"metrics_path": metrics},
    });
    let file = dir.path().join("vm.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-vmm"));
    cmd.arg("--no-api").arg("--config-file").arg(&file);
    let mut g = Guest::spawn(cmd);
    g.wait_for(".", Duration::from_secs(30)).unwrap();
    wait_until("the boot metrics line", Duration::from_secs(20), || {
        !lines(&metrics).is_empty()
    });
    g.signal(libc::SIGTERM);
    assert!(g.wait_exit(Duration::from_secs(10)).is_some());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(":DEBUG] ") || text.contains(":INFO] "),
        "{text}"
    );
}
