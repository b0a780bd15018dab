//! cairn-vmm's log, in Firecracker's line format and with Firecracker's settings, changeable at
//! run time: `--log-path`/`--level`/`--show-level`/`--show-log-origin`, the config file's
//! `logger` section and `PUT /logger` all end in [`apply`].
//!
//! A line is `2026-12-06T02:14:39.510007767 [anonymous-instance:fc_api:INFO:vmm/src/cli.rs:42] text`,
//! as Firecracker writes it: the time (UTC), then the instance id and the thread's name, then
//! `:LEVEL` with `show_level` and `:file:line` with `show_log_origin`. `module` keeps only
//! events whose target (a Rust module path such as `cairn_vmm::controller`) starts with it.
//! Lines go to stderr until a `log_path` is given (never to stdout, the guest's console). A
//! line that cannot be written is counted in the metrics' `logger.missed_log_count`.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogLevel, LoggerConfig};

/// Why a logger setting was refused (Firecracker's wording).
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log file cannot be opened.
    #[error("Logger error: Failed to open target file: {0}")]
    Open(#[source] std::io::Error),
}

struct Settings {
    level: LevelFilter,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
    instance_id: String,
    out: Box<dyn Write + Send>,
}

fn settings() -> &'static Mutex<Settings> {
    static SETTINGS: OnceLock<Mutex<Settings>> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        Mutex::new(Settings {
            level: LevelFilter::WARN,
            show_level: false,
            show_origin: false,
            module: None,
            instance_id: "anonymous-instance".into(),
            out: Box::new(std::io::stderr()),
        })
    })
}

fn lock() -> std::sync::MutexGuard<'static, Settings> {
    settings().lock().unwrap_or_else(|p| p.into_inner())
}

/// The `tracing` filter for a Firecracker level.
pub fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Off => LevelFilter::OFF,
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warning => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

/// Install the logger as the process's `tracing` subscriber (once; later calls only set the
/// instance id), then apply `config`.
pub fn init(instance_id: &str, config: &LoggerConfig) -> Result<(), LoggerError> {
    lock().instance_id = instance_id.to_string();
    // try_init also routes the `log` crate's records (some dependencies use it) here.
    let _ = tracing_subscriber::registry().with(FcLayer).try_init();
    apply(config)
}

/// Apply `config`: each field given replaces the current setting; the others stay. A
/// `log_path` that cannot be opened leaves every setting as it was.
pub fn apply(config: &LoggerConfig) -> Result<(), LoggerError> {
    let out: Option<Box<dyn Write + Send>> = match &config.log_path {
        Some(path) => Some(Box::new(open_log(path)?)),
        None => None,
    };
    {
        let mut s = lock();
        if let Some(out) = out {
            s.out = out;
        }
        if let Some(level) = config.level {
            s.level = level_filter(level);
        }
        if let Some(v) = config.show_level {
            s.show_level = v;
        }
        if let Some(v) = config.show_log_origin {
            s.show_origin = v;
        }
        if let Some(m) = &config.module {
            s.module = Some(m.clone());
        }
    }
    // Callsites cache whether they are enabled: ask again under the new level.
    tracing::callsite::rebuild_interest_cache();
    Ok(())
}

/// Firecracker opens the log without blocking (it may be a FIFO) and creates a missing file.
fn open_log(path: &Path) -> Result<std::fs::File, LoggerError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(LoggerError::Open)
}

fn enabled(s: &Settings, meta: &Metadata<'_>) -> bool {
    if *meta.level() > s.level {
        return false;
    }
    match &s.module {
        Some(m) => meta.target().starts_with(m.as_str()),
        None => true,
    }
}

struct FcLayer;

impl<S: Subscriber> Layer<S> for FcLayer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if enabled(&lock(), meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        enabled(&lock(), meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(lock().level)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut s = lock();
        let line = format_line(&s, event.metadata(), &fields.text);
        if s.out.write_all(line.as_bytes()).is_err() {
            crate::metrics::metrics().logger.missed_log_count.inc();
        }
    }
}

/// The event's message, then its other fields as `key=value`.
#[derive(Default)]
struct Fields {
    text: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.text.insert_str(0, value);
        } else {
            let _ = write!(self.text, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.text.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.text, " {}={value:?}", field.name());
        }
    }
}

fn format_line(s: &Settings, meta: &Metadata<'_>, text: &str) -> String {
    let thread = std::thread::current();
    let mut line = format!(
        "{} [{}:{}",
        timestamp(std::time::SystemTime::now()),
        s.instance_id,
        thread.name().unwrap_or("-")
    );
    if s.show_level {
        let _ = write!(line, ":{}", meta.level());
    }
    if s.show_origin {
        let _ = write!(
            line,
            ":{}:{}",
            meta.file().unwrap_or("?"),
            meta.line().unwrap_or(0)
        );
    }
    let _ = writeln!(line, "] {}", text.trim_start());
    line
}

/// `2026-12-06T02:14:39.510007767` (UTC), Firecracker's timestamp.
fn timestamp(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_as_firecracker_s() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_796_523_738, 141_000_007);
        assert_eq!(timestamp(t), "2026-12-06T02:22:18.141000007");
        assert_eq!(
            timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000"
        );
    }

    fn settings(show_level: bool, show_origin: bool) -> Settings {
        Settings {
            level: LevelFilter::INFO,
            show_level,
            show_origin,
            module: Some("cairn_vmm::api".into()),
            instance_id: "vm1".into(),
            out: Box::new(std::io::sink()),
        }
    }

    #[test]
    fn lines_carry_level_and_origin_only_when_asked() {
        struct Probe(std::sync::Mutex<Vec<String>>);
        impl Subscriber for Probe {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
                tracing::span::Id::from_u64(1)
            }
            fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
            fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
            fn event(&self, event: &Event<'_>) {
                let mut fields = Fields::default();
                event.record(&mut fields);
                let mut lines = self.0.lock().unwrap();
                for (lvl, origin) in [(false, false), (true, false), (true, true)] {
                    lines.push(format_line(
                        &settings(lvl, origin),
                        event.metadata(),
                        &fields.text,
                    ));
                }
                let s = settings(false, false);
                lines.push(format!("{}", enabled(&s, event.metadata())));
            }
            fn enter(&self, _: &tracing::span::Id) {}
            fn exit(&self, _: &tracing::span::Id) {}
        }
        let probe = std::sync::Arc::new(Probe(Default::default()));
        tracing::subscriber::with_default(probe.clone(), || {
            tracing::info!(status = 204, "API");
        });
        let lines = probe.0.lock().unwrap();
        let thread = std::thread::current().name().unwrap_or("-").to_string();
        let tail = |l: &str| l.split_once(' ').unwrap().1.to_string();
        assert_eq!(tail(&lines[0]), format!("[vm1:{thread}] API status=204\n"));
        assert_eq!(
            tail(&lines[1]),
            format!("[vm1:{thread}:INFO] API status=204\n")
        );
        assert!(
            tail(&lines[2]).starts_with(&format!("[vm1:{thread}:INFO:vmm/src/logger.rs:")),
            "{}",
            lines[2]
        );
        // `module` keeps only its own targets (this test's target is cairn_vmm::logger).
        assert_eq!(lines[3], "false");
    }
}
