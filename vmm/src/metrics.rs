//! Firecracker-format metrics: `--metrics-path` and `PUT /metrics` name a file (or FIFO), and
//! each flush appends one JSON line with Firecracker's top-level groups and key names.
//!
//! Like Firecracker, a counter shows how much it grew since the previous flush (the
//! `latencies_us` values are the last measurement, in µs). A flush happens at `InstanceStart`,
//! on `FlushMetrics`, and every [`FLUSH_PERIOD`] (see [`flush_period`]) while the VMM runs (the event loop wakes for
//! it). The device groups (`block`, `net`, `mmds`, `balloon`) are all devices together, read from the devices'
//! own counters at each flush. Only what cairn counts is written: groups for devices cairn does not have (
//! `pmem`, `memory_hotplug`, `i8042`...) and counters it has no source for are left
//! out; `seccomp.num_faults` is written and stays 0, as in every line a running Firecracker
//! writes (a violation ends the process; Firecracker then writes one last line, cairn does
//! not). docs/vmm.md lists the keys.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

/// Firecracker's period between two metrics lines.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(60);

/// The period in use: [`FLUSH_PERIOD`], or `CAIRN_METRICS_PERIOD_MS` milliseconds where the
/// environment sets it (for tests, which cannot wait a minute).
pub fn flush_period() -> Duration {
    static PERIOD: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *PERIOD.get_or_init(|| {
        std::env::var("CAIRN_METRICS_PERIOD_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(FLUSH_PERIOD)
    })
}

/// A count that is written as its growth since the previous flush.
#[derive(Debug, Default)]
pub struct Counter {
    total: AtomicU64,
    flushed: AtomicU64,
    /// The last value [`Counter::observe`] saw.
    seen: AtomicU64,
}

impl Counter {
    /// A zero counter (usable in statics).
    pub const fn new() -> Self {
        Counter {
            total: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        }
    }

    /// Add one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Follow a count kept elsewhere (a device's own counter, read at flush time): add its
    /// growth since the last call, or all of it when it went back (a device restored from a
    /// checkpoint starts again at 0). Returns what was added.
    pub fn observe(&self, now: u64) -> u64 {
        let before = self.seen.swap(now, Ordering::Relaxed);
        let grew = if now >= before { now - before } else { now };
        self.add(grew);
        grew
    }

    /// The growth since the previous call.
    fn take(&self) -> u64 {
        let now = self.total.load(Ordering::Relaxed);
        let before = self.flushed.swap(now, Ordering::Relaxed);
        now.saturating_sub(before)
    }
}

impl Serialize for Counter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.take())
    }
}

/// A value written as it is (Firecracker's store metrics).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// A zero gauge.
    pub const fn new() -> Self {
        Gauge(AtomicU64::new(0))
    }

    /// Set it.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Set it to `d` in microseconds.
    pub fn set_duration(&self, d: Duration) {
        self.set(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
}

impl Serialize for Gauge {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0.load(Ordering::Relaxed))
    }
}

/// `api_server`.
#[derive(Debug, Default, Serialize)]
pub struct ApiServerMetrics {
    /// Not measured by cairn; Firecracker's lines also show 0 unless the jailer passes times.
    pub process_startup_time_us: Gauge,
    /// As above.
    pub process_startup_time_cpu_us: Gauge,
}

/// `get_api_requests`.
#[derive(Debug, Default, Serialize)]
pub struct GetApiMetrics {
    /// `GET /`.
    pub instance_info_count: Counter,
    /// `GET /machine-config`.
    pub machine_cfg_count: Counter,
    /// `GET /version`.
    pub vmm_version_count: Counter,
}

/// `put_api_requests`: each accepted request counts in `*_count`, each refused one in
/// `*_fails` (Firecracker counts a refused request in both; cairn does too).
#[derive(Debug, Default, Serialize)]
pub struct PutApiMetrics {
    pub actions_count: Counter,
    pub actions_fails: Counter,
    pub boot_source_count: Counter,
    pub boot_source_fails: Counter,
    pub drive_count: Counter,
    pub drive_fails: Counter,
    pub logger_count: Counter,
    pub logger_fails: Counter,
    pub machine_cfg_count: Counter,
    pub machine_cfg_fails: Counter,
    pub cpu_cfg_count: Counter,
    pub cpu_cfg_fails: Counter,
    pub metrics_count: Counter,
    pub metrics_fails: Counter,
    pub network_count: Counter,
    pub network_fails: Counter,
    pub vsock_count: Counter,
    pub vsock_fails: Counter,
    pub serial_count: Counter,
    pub serial_fails: Counter,
}

/// `patch_api_requests`.
#[derive(Debug, Default, Serialize)]
pub struct PatchApiMetrics {
    pub drive_count: Counter,
    pub drive_fails: Counter,
    pub machine_cfg_count: Counter,
    pub machine_cfg_fails: Counter,
    pub network_count: Counter,
    pub network_fails: Counter,
}

/// `latencies_us`: the last of each operation, in µs. cairn's API and VMM are one thread, so
/// each `vmm_*` value is the same measurement as its API twin.
#[derive(Debug, Default, Serialize)]
pub struct LatencyMetrics {
    pub full_create_snapshot: Gauge,
    pub diff_create_snapshot: Gauge,
    pub load_snapshot: Gauge,
    pub pause_vm: Gauge,
    pub resume_vm: Gauge,
    pub vmm_full_create_snapshot: Gauge,
    pub vmm_diff_create_snapshot: Gauge,
    pub vmm_load_snapshot: Gauge,
    pub vmm_pause_vm: Gauge,
    pub vmm_resume_vm: Gauge,
}

/// `logger`.
#[derive(Debug, Default, Serialize)]
pub struct LoggerMetrics {
    /// Metrics lines that could not be written.
    pub missed_metrics_count: Counter,
    /// Flushes that failed.
    pub metrics_fails: Counter,
    /// Log lines that could not be written.
    pub missed_log_count: Counter,
}

/// `vcpu`: exits handled by the vCPU threads.
#[derive(Debug, Default, Serialize)]
pub struct VcpuMetrics {
    pub exit_io_in: Counter,
    pub exit_io_out: Counter,
    pub exit_mmio_read: Counter,
    pub exit_mmio_write: Counter,
    /// vCPU runs that ended in an error.
    pub failures: Counter,
}

/// `uart`: the guest's accesses to COM1's data register (port 0x3f8).
#[derive(Debug, Default, Serialize)]
pub struct UartMetrics {
    pub read_count: Counter,
    pub write_count: Counter,
    /// Output bytes the serial `rate_limiter` dropped.
    pub rate_limiter_dropped_bytes: Counter,
}

/// `block`: all drives together, from the devices' own counters.
#[derive(Debug, Default, Serialize)]
pub struct BlockMetrics {
    pub read_count: Counter,
    pub read_bytes: Counter,
    pub write_count: Counter,
    pub write_bytes: Counter,
    pub flush_count: Counter,
    pub invalid_reqs_count: Counter,
    pub execute_fails: Counter,
    /// Requests the drive's rate limiter held back.
    pub rate_limiter_throttled_events: Counter,
}

/// `net`: all interfaces together, from the devices' own counters.
#[derive(Debug, Default, Serialize)]
pub struct NetMetrics {
    /// Frames delivered to the guest.
    pub rx_packets_count: Counter,
    /// Frames from the tap dropped (too short, or no guest buffer).
    pub rx_fails: Counter,
    /// Frames written to the tap.
    pub tx_packets_count: Counter,
    /// Guest frames dropped (malformed, too long, or refused by the tap).
    pub tx_fails: Counter,
    /// Times the rx rate limiter held frames back.
    pub rx_rate_limiter_throttled: Counter,
    /// Times the tx rate limiter held frames back.
    pub tx_rate_limiter_throttled: Counter,
}

/// `mmds`: every interface's MMDS stack together, and the data store's token checks
/// (Firecracker's keys).
#[derive(Debug, Default, Serialize)]
pub struct MmdsMetrics {
    /// Guest frames taken by MMDS.
    pub rx_accepted: Counter,
    /// Of those, frames it could not use (malformed, bad checksum, not ARP or TCP).
    pub rx_accepted_err: Counter,
    /// Always 0: cairn counts unusual segments as errors.
    pub rx_accepted_unusual: Counter,
    /// Frames that were not even Ethernet.
    pub rx_bad_eth: Counter,
    /// Guest GETs with an invalid token.
    pub rx_invalid_token: Counter,
    /// Guest GETs with no token.
    pub rx_no_token: Counter,
    /// Frames MMDS used.
    pub rx_count: Counter,
    /// Bytes MMDS sent to the guest.
    pub tx_bytes: Counter,
    /// Frames MMDS sent.
    pub tx_count: Counter,
    /// Always 0: a frame that does not fit is not an error cairn meets (the buffer is 64 KiB).
    pub tx_errors: Counter,
    /// Frames MMDS sent.
    pub tx_frames: Counter,
    /// TCP connections opened.
    pub connections_created: Counter,
    /// TCP connections closed or reset.
    pub connections_destroyed: Counter,
}

/// `balloon`: the balloon device's own counts (Firecracker's keys; `activate_fails` and
/// `event_fails` have no source in cairn and are left out). The free page counts are of ranges;
/// `*_freed` are bytes.
#[derive(Debug, Default, Serialize)]
pub struct BalloonMetrics {
    /// Inflate buffers served.
    pub inflate_count: Counter,
    /// Deflate buffers served.
    pub deflate_count: Counter,
    /// Statistics buffers read.
    pub stats_updates_count: Counter,
    /// Statistics buffers that could not be read.
    pub stats_update_fails: Counter,
    /// Ranges the guest reported free.
    pub free_page_report_count: Counter,
    /// Bytes of reported ranges given back to the host.
    pub free_page_report_freed: Counter,
    /// Reported ranges that could not be given back.
    pub free_page_report_fails: Counter,
    /// Hinted ranges taken.
    pub free_page_hint_count: Counter,
    /// Bytes of hinted ranges given back to the host.
    pub free_page_hint_freed: Counter,
    /// Hinted ranges that could not be given back.
    pub free_page_hint_fails: Counter,
}

/// `seccomp`.
#[derive(Debug, Default, Serialize)]
pub struct SeccompMetrics {
    /// Always 0: a filter violation kills the process (Firecracker's lines show 0 too until
    /// the last one).
    pub num_faults: Counter,
}

/// `vmm`.
#[derive(Debug, Default, Serialize)]
pub struct VmmMetrics {
    /// Panics (cairn bugs): the panic hook counts one and writes a last line before the
    /// process aborts, as Firecracker's does.
    pub panic_count: Counter,
}

/// Every group cairn writes.
#[derive(Debug, Default, Serialize)]
pub struct Metrics {
    pub api_server: ApiServerMetrics,
    pub get_api_requests: GetApiMetrics,
    pub put_api_requests: PutApiMetrics,
    pub patch_api_requests: PatchApiMetrics,
    pub latencies_us: LatencyMetrics,
    pub logger: LoggerMetrics,
    pub vcpu: VcpuMetrics,
    pub uart: UartMetrics,
    pub block: BlockMetrics,
    pub net: NetMetrics,
    pub mmds: MmdsMetrics,
    pub balloon: BalloonMetrics,
    pub seccomp: SeccompMetrics,
    pub vmm: VmmMetrics,
    /// Per-device groups, keyed `block_{drive_id}` / `net_{iface_id}`.
    #[serde(skip)]
    pub devices: Mutex<BTreeMap<String, DeviceGroup>>,
}

/// One device's group (`block_rootfs`, `net_eth0`), Firecracker's per-device metrics.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum DeviceGroup {
    /// A drive.
    Block(BlockMetrics),
    /// A network interface.
    Net(NetMetrics),
}

/// One line: the timestamp, the groups, and each device's group.
#[derive(Serialize)]
struct Line<'a> {
    utc_timestamp_ms: u64,
    #[serde(flatten)]
    metrics: &'a Metrics,
    #[serde(flatten)]
    devices: Option<&'a BTreeMap<String, DeviceGroup>>,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// The COM1 data port.
const COM1_DATA: u16 = 0x3f8;

/// Count one port write by the guest.
pub fn on_pio_write(port: u16) {
    let m = metrics();
    m.vcpu.exit_io_out.inc();
    if port == COM1_DATA {
        m.uart.write_count.inc();
    }
}

/// Count one port read by the guest.
pub fn on_pio_read(port: u16) {
    let m = metrics();
    m.vcpu.exit_io_in.inc();
    if port == COM1_DATA {
        m.uart.read_count.inc();
    }
}

/// An operation `latencies_us` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// `PUT /snapshot/create`, Full.
    FullSnapshot,
    /// `PUT /snapshot/create`, Diff.
    DiffSnapshot,
    /// `PUT /snapshot/load`.
    LoadSnapshot,
    /// `PATCH /vm` Paused.
    Pause,
    /// `PATCH /vm` Resumed.
    Resume,
}

/// Record how long `op` took (in both its API and its `vmm_` key).
pub fn record_latency(op: Latency, took: Duration) {
    let l = &metrics().latencies_us;
    let (api, vmm) = match op {
        Latency::FullSnapshot => (&l.full_create_snapshot, &l.vmm_full_create_snapshot),
        Latency::DiffSnapshot => (&l.diff_create_snapshot, &l.vmm_diff_create_snapshot),
        Latency::LoadSnapshot => (&l.load_snapshot, &l.vmm_load_snapshot),
        Latency::Pause => (&l.pause_vm, &l.vmm_pause_vm),
        Latency::Resume => (&l.resume_vm, &l.vmm_resume_vm),
    };
    api.set_duration(took);
    vmm.set_duration(took);
}

/// Count one API request by its [`crate::api::ApiRequest::name`]: `*_count` always (as
/// Firecracker counts each request it parsed), `*_fails` too when it was refused.
pub fn count_api_request(name: &str, ok: bool) {
    let m = metrics();
    let (g, p, pa) = (
        &m.get_api_requests,
        &m.put_api_requests,
        &m.patch_api_requests,
    );
    let (count, fails) = match name {
        "GetInstanceInfo" => (&g.instance_info_count, None),
        "GetMachineConfig" => (&g.machine_cfg_count, None),
        "GetVersion" => (&g.vmm_version_count, None),
        "Action" => (&p.actions_count, Some(&p.actions_fails)),
        "PutBootSource" => (&p.boot_source_count, Some(&p.boot_source_fails)),
        "PutDrive" => (&p.drive_count, Some(&p.drive_fails)),
        "PutLogger" => (&p.logger_count, Some(&p.logger_fails)),
        "PutMachineConfig" => (&p.machine_cfg_count, Some(&p.machine_cfg_fails)),
        "PutCpuConfig" => (&p.cpu_cfg_count, Some(&p.cpu_cfg_fails)),
        "PutMetrics" => (&p.metrics_count, Some(&p.metrics_fails)),
        "PutNetworkInterface" => (&p.network_count, Some(&p.network_fails)),
        "PutVsock" => (&p.vsock_count, Some(&p.vsock_fails)),
        "PutSerial" => (&p.serial_count, Some(&p.serial_fails)),
        "PatchMachineConfig" => (&pa.machine_cfg_count, Some(&pa.machine_cfg_fails)),
        "PatchDrive" => (&pa.drive_count, Some(&pa.drive_fails)),
        "PatchNetworkInterface" => (&pa.network_count, Some(&pa.network_fails)),
        _ => return,
    };
    count.inc();
    if !ok {
        if let Some(f) = fails {
            f.inc();
        }
    }
}

/// Bring the counts the devices keep themselves (virtio-blk's and virtio-net's) into the
/// metrics.
pub fn collect_device_counts(machine: &crate::machine::Machine) {
    let m = metrics();
    let mut per_device = m.devices.lock().unwrap_or_else(|p| p.into_inner());
    let mut mmds = cairn_devices::mmds::stack::MmdsStats::default();
    let mut tokens = None;
    for a in machine.virtio_devices() {
        match &a.device {
            crate::device_manager::VirtioHandle::Net(d) => {
                let d = d.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(stack) = d.mmds() {
                    let s = stack.stats();
                    mmds.rx_frames += s.rx_frames;
                    mmds.rx_dropped += s.rx_dropped;
                    mmds.rx_bad_eth += s.rx_bad_eth;
                    mmds.tx_frames += s.tx_frames;
                    mmds.tx_bytes += s.tx_bytes;
                    mmds.connections_created += s.connections_created;
                    mmds.connections_destroyed += s.connections_destroyed;
                    let store = stack.mmds().lock().unwrap_or_else(|p| p.into_inner());
                    tokens = Some(store.token_counts());
                }
                let group = per_device
                    .entry(format!("net_{}", d.config().iface_id))
                    .or_insert_with(|| DeviceGroup::Net(NetMetrics::default()));
                if let DeviceGroup::Net(g) = group {
                    let s = d.stats();
                    let n = &m.net;
                    n.rx_packets_count
                        .add(g.rx_packets_count.observe(s.rx_frames));
                    n.rx_fails.add(g.rx_fails.observe(s.rx_dropped));
                    n.tx_packets_count
                        .add(g.tx_packets_count.observe(s.tx_frames));
                    n.tx_fails.add(g.tx_fails.observe(s.tx_dropped));
                    let (rx, tx) = d.rate_limiters();
                    n.rx_rate_limiter_throttled
                        .add(g.rx_rate_limiter_throttled.observe(rx.throttled_count()));
                    n.tx_rate_limiter_throttled
                        .add(g.tx_rate_limiter_throttled.observe(tx.throttled_count()));
                }
            }
            crate::device_manager::VirtioHandle::Block(d) => {
                let d = d.lock().unwrap_or_else(|p| p.into_inner());
                let group = per_device
                    .entry(format!("block_{}", d.config().drive_id))
                    .or_insert_with(|| DeviceGroup::Block(BlockMetrics::default()));
                if let DeviceGroup::Block(g) = group {
                    let s = d.stats();
                    let b = &m.block;
                    b.read_count.add(g.read_count.observe(s.read_count));
                    b.read_bytes.add(g.read_bytes.observe(s.read_bytes));
                    b.write_count.add(g.write_count.observe(s.write_count));
                    b.write_bytes.add(g.write_bytes.observe(s.write_bytes));
                    b.flush_count.add(g.flush_count.observe(s.flush_count));
                    b.invalid_reqs_count
                        .add(g.invalid_reqs_count.observe(s.invalid_reqs_count));
                    b.execute_fails
                        .add(g.execute_fails.observe(s.execute_fails));
                    let throttled = d.rate_limiter().throttled_count();
                    b.rate_limiter_throttled_events
                        .add(g.rate_limiter_throttled_events.observe(throttled));
                }
            }
            crate::device_manager::VirtioHandle::Balloon(d) => {
                let c = d.lock().unwrap_or_else(|p| p.into_inner()).counts();
                let b = &m.balloon;
                b.inflate_count.observe(c.inflate_count);
                b.deflate_count.observe(c.deflate_count);
                b.stats_updates_count.observe(c.stats_updates_count);
                b.stats_update_fails.observe(c.stats_update_fails);
                b.free_page_report_count.observe(c.free_page_report_count);
                b.free_page_report_freed.observe(c.free_page_report_freed);
                b.free_page_report_fails.observe(c.free_page_report_fails);
                b.free_page_hint_count.observe(c.free_page_hint_count);
                b.free_page_hint_freed.observe(c.free_page_hint_freed);
                b.free_page_hint_fails.observe(c.free_page_hint_fails);
            }
            _ => {}
        }
    }
    let g = &m.mmds;
    g.rx_accepted.observe(mmds.rx_frames);
    g.rx_accepted_err.observe(mmds.rx_dropped);
    g.rx_bad_eth.observe(mmds.rx_bad_eth);
    g.rx_count.observe(mmds.rx_frames - mmds.rx_dropped);
    g.tx_frames.observe(mmds.tx_frames);
    g.tx_count.observe(mmds.tx_frames);
    g.tx_bytes.observe(mmds.tx_bytes);
    g.connections_created.observe(mmds.connections_created);
    g.connections_destroyed.observe(mmds.connections_destroyed);
    if let Some((no_token, invalid)) = tokens {
        g.rx_no_token.observe(no_token);
        g.rx_invalid_token.observe(invalid);
    }
}

/// One metrics line, newline included.
fn line_bytes() -> Vec<u8> {
    // try_lock: the panic hook may run while this thread holds it; the devices are then left out.
    let devices = metrics().devices.try_lock().ok();
    let line = Line {
        utc_timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        metrics: metrics(),
        devices: devices.as_deref(),
    };
    // Counters and gauges always serialize.
    let mut text = serde_json::to_vec(&line).unwrap_or_default();
    text.push(b'\n');
    text
}

/// Why the metrics file could not be set up or written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A second `PUT /metrics` or `--metrics-path`: Firecracker's wording.
    #[error("Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed.")]
    AlreadyInitialized,
    /// The file cannot be opened.
    #[error("Metrics error: Cannot initialize the metrics system due to bad user input: {0}")]
    Open(#[source] std::io::Error),
    /// `FlushMetrics` before `PUT /metrics`.
    #[error("Metrics error: The metrics system was not initialized: {0}")]
    NotInitialized(&'static str),
    /// The line cannot be written.
    #[error("Metrics error: Failed to write metrics: {0}")]
    Write(#[source] std::io::Error),
}

/// Where the lines go, and when the next periodic one is due.
#[derive(Debug, Default)]
pub struct MetricsSink {
    file: Mutex<Option<File>>,
    next_flush: Mutex<Option<Instant>>,
}

impl MetricsSink {
    /// The process's sink.
    pub fn global() -> &'static MetricsSink {
        static SINK: std::sync::OnceLock<MetricsSink> = std::sync::OnceLock::new();
        SINK.get_or_init(MetricsSink::default)
    }

    /// Open `path` (created if missing; a FIFO works, opened without blocking) as the
    /// destination. Only once per process, as in Firecracker.
    pub fn init(&self, path: &Path) -> Result<(), MetricsError> {
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Err(MetricsError::AlreadyInitialized);
        }
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(MetricsError::Open)?;
        *slot = Some(file);
        Ok(())
    }

    /// Whether a destination is set.
    pub fn is_initialized(&self) -> bool {
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Write one line now (and restart the period).
    pub fn flush(&self) -> Result<(), MetricsError> {
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Some(file) = slot.as_mut() else {
            return Err(MetricsError::NotInitialized(
                "no metrics file was configured",
            ));
        };
        *self.next_flush.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + flush_period());
        file.write_all(&line_bytes()).map_err(|e| {
            let m = metrics();
            m.logger.metrics_fails.inc();
            m.logger.missed_metrics_count.inc();
            MetricsError::Write(e)
        })
    }

    /// Write one line now unless another thread is writing one (for the panic hook).
    pub fn try_flush(&self) {
        let Ok(mut slot) = self.file.try_lock() else {
            return;
        };
        if let Some(file) = slot.as_mut() {
            let _ = file.write_all(&line_bytes());
        }
    }

    /// How long the event loop may sleep before the next periodic flush is due (`None`: no
    /// periodic flush, sleep as long as you like). Starts the period on first call.
    pub fn until_next_flush(&self) -> Option<Duration> {
        if !self.is_initialized() {
            return None;
        }
        let mut next = self.next_flush.lock().unwrap_or_else(|p| p.into_inner());
        let at = *next.get_or_insert_with(|| Instant::now() + flush_period());
        Some(at.saturating_duration_since(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_written_as_growth_since_the_last_flush() {
        let c = Counter::new();
        c.add(3);
        assert_eq!(serde_json::to_string(&c).unwrap(), "3");
        assert_eq!(serde_json::to_string(&c).unwrap(), "0");
        c.inc();
        assert_eq!(serde_json::to_string(&c).unwrap(), "1");
        // A count kept elsewhere: its growth, and all of it again after it restarted at 0.
        let d = Counter::new();
        assert_eq!(d.observe(5), 5);
        assert_eq!(d.observe(8), 3);
        assert_eq!(d.observe(2), 2);
        assert_eq!(serde_json::to_string(&d).unwrap(), "10");
        let g = Gauge::new();
        g.set_duration(Duration::from_millis(2));
        assert_eq!(serde_json::to_string(&g).unwrap(), "2000");
        assert_eq!(serde_json::to_string(&g).unwrap(), "2000");
    }

    #[test]
    fn a_line_has_firecracker_s_groups_and_names() {
        let m = Metrics::default();
        m.put_api_requests.actions_count.inc();
        let mut devices = BTreeMap::new();
        let rootfs = BlockMetrics::default();
        rootfs.read_count.observe(5);
        devices.insert("block_rootfs".to_string(), DeviceGroup::Block(rootfs));
        devices.insert(
            "net_eth0".to_string(),
            DeviceGroup::Net(NetMetrics::default()),
        );
        let line = Line {
            utc_timestamp_ms: 1,
            metrics: &m,
            devices: Some(&devices),
        };
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["utc_timestamp_ms"], 1);
        assert_eq!(v["put_api_requests"]["actions_count"], 1);
        assert_eq!(v["block_rootfs"]["read_count"], 5);
        assert_eq!(v["net_eth0"]["tx_packets_count"], 0);
        assert_eq!(v["net_eth0"]["rx_rate_limiter_throttled"], 0);
        assert_eq!(v["block_rootfs"]["rate_limiter_throttled_events"], 0);
        assert_eq!(v["patch_api_requests"]["drive_count"], 0);
        assert_eq!(v["patch_api_requests"]["network_fails"], 0);
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
            "mmds",
            "balloon",
            "seccomp",
            "vmm",
        ] {
            assert!(v[group].is_object(), "{group}");
        }
    }

    #[test]
    fn the_sink_writes_json_lines_and_refuses_a_second_init() {
        let dir = tempfile::tempdir().unwrap();
        let sink = MetricsSink::default();
        assert!(matches!(sink.flush(), Err(MetricsError::NotInitialized(_))));
        assert_eq!(sink.until_next_flush(), None);
        let path = dir.path().join("m.json");
        sink.init(&path).unwrap();
        assert!(matches!(
            sink.init(&path),
            Err(MetricsError::AlreadyInitialized)
        ));
        sink.flush().unwrap();
        sink.flush().unwrap();
        // The panic hook's line; skipped while another thread holds the sink.
        sink.try_flush();
        {
            let _held = sink.file.lock().unwrap();
            sink.try_flush();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2]["vcpu"]["exit_io_out"].is_u64());
        let left = sink.until_next_flush().unwrap();
        assert!(left > Duration::from_secs(50) && left <= FLUSH_PERIOD);
        assert!(matches!(
            MetricsSink::default().init(&dir.path().join("no/such/dir")),
            Err(MetricsError::Open(_))
        ));
    }
}
