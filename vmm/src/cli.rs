//! The `cairn-vmm` command line: Firecracker's flags, logging set-up, the console's terminal mode,
//! and the top-level loop. `main.rs` only parses and exits.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use clap::Parser;

use crate::controller::Controller;
use crate::error::VmmError;

/// `cairn-vmm` options. Names and meanings follow Firecracker's; flags Firecracker has that
/// cairn does not use yet are accepted and ignored, so existing scripts keep working.
#[derive(Debug, Parser)]
#[command(
    name = "cairn-vmm",
    version,
    about = "cairn's VMM: checkpointable microVMs, Firecracker-compatible"
)]
pub struct CliArgs {
    /// Serve the REST API on this Unix socket.
    #[arg(long, default_value = "/run/firecracker.socket")]
    pub api_sock: PathBuf,
    /// Boot at once from this JSON config (Firecracker's format).
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Do not serve the API (requires --config-file).
    #[arg(long)]
    pub no_api: bool,
    /// Instance id (reported by GET /).
    #[arg(long, default_value = "anonymous-instance")]
    pub id: String,
    /// Write cairn's logs here instead of stderr.
    #[arg(long)]
    pub log_path: Option<PathBuf>,
    /// Log level: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long, default_value = "Warning")]
    pub level: String,
    /// Include the level in log lines.
    #[arg(long)]
    pub show_level: bool,
    /// Include the source file and line in log lines.
    #[arg(long)]
    pub show_log_origin: bool,
    /// Write Firecracker-format metrics (JSON lines) to this file or FIFO.
    #[arg(long)]
    pub metrics_path: Option<PathBuf>,
    /// Print boot timing (accepted for compatibility).
    #[arg(long)]
    pub boot_timer: bool,
    /// Disable seccomp filtering (debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Custom seccomp filters, one per thread kind (`vmm`, `api`, `vcpu`), used instead of the
    /// built-in ones: Firecracker's compiled file (`seccompiler-bin` output) or the seccompiler
    /// JSON it is compiled from.
    #[arg(long)]
    pub seccomp_filter: Option<PathBuf>,
    /// Process start time from the jailer, in microseconds (accepted for compatibility).
    #[arg(long)]
    pub start_time_us: Option<u64>,
    /// Process start CPU time from the jailer (accepted for compatibility).
    #[arg(long)]
    pub start_time_cpu_us: Option<u64>,
    /// Parent CPU time from the jailer (accepted for compatibility).
    #[arg(long)]
    pub parent_cpu_time_us: Option<u64>,
    /// cairn: where named checkpoints live (same as the config key `"cairn": {"checkpoint_dir"}`),
    /// so a fresh VMM can restore one through the API without a config file.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// cairn: serve the first restore's guest memory on first touch from the page server on
    /// this Unix socket (a lazily pulled sandbox; checkpoint/served_memory.rs).
    #[arg(long)]
    pub page_server: Option<PathBuf>,
    /// Firecracker's PCI transport for virtio devices: refused, since cairn's devices are
    /// virtio-mmio only (kept as a flag so the refusal names it instead of "unknown argument").
    #[arg(long)]
    pub enable_pci: bool,
    /// cairn: fill the disk files of the first restore (base images, disk layers) on first
    /// read from the block server on this Unix socket (a lazily pulled sandbox;
    /// checkpoint/served_disk.rs).
    #[arg(long)]
    pub block_server: Option<PathBuf>,
    /// Maximum API request body size in bytes.
    #[arg(long, default_value_t = 51200)]
    pub http_api_max_payload_size: usize,
    /// Largest MMDS data store in bytes (serialized); by default the API's largest body
    /// (`--http-api-max-payload-size`), as in Firecracker.
    #[arg(long)]
    pub mmds_size_limit: Option<usize>,
    /// Fill the MMDS data store from this JSON file at start-up.
    #[arg(long)]
    pub metadata: Option<PathBuf>,
}

/// Firecracker's process exit codes (`FcExitCode`), which scripts and orchestrators test.
pub mod exit_code {
    use crate::error::VmmError;

    /// Any other error.
    pub const GENERIC: u8 = 1;
    /// A bad `--level` (Firecracker's `BadConfiguration`).
    pub const BAD_CONFIGURATION: u8 = 152;
    /// A command line that does not parse, or flags that do not go together.
    pub const ARG_PARSING: u8 = 153;

    /// The exit code for an error [`super::run`] returned.
    pub fn for_error(error: &VmmError) -> u8 {
        match error {
            VmmError::Args(_) => ARG_PARSING,
            VmmError::BadLogLevel(_) => BAD_CONFIGURATION,
            _ => GENERIC,
        }
    }
}

fn init_logging(args: &CliArgs) -> Result<(), VmmError> {
    let level: crate::config::LogLevel =
        serde_json::from_value(serde_json::Value::String(args.level.clone())).map_err(|_| {
            VmmError::BadLogLevel(format!(
                "--level: unknown level {:?} (Off, Error, Warning, Info, Debug, Trace)",
                args.level
            ))
        })?;
    let config = crate::config::LoggerConfig {
        log_path: args.log_path.clone(),
        level: Some(level),
        show_level: Some(args.show_level),
        show_log_origin: Some(args.show_log_origin),
        module: None,
    };
    crate::logger::init(&args.id, &config)
        .map_err(|e| VmmError::Config(format!("--log-path: {e}")))?;
    if let Some(path) = &args.metrics_path {
        crate::metrics::MetricsSink::global()
            .init(path)
            .map_err(|e| VmmError::Config(format!("--metrics-path: {e}")))?;
    }
    Ok(())
}

/// Puts a terminal on stdin into raw mode (so keys reach the guest as typed) and restores it.
struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    fn enter() -> Self {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return Self { saved: None };
        }
        let mut t = std::mem::MaybeUninit::<libc::termios>::zeroed();
        // SAFETY: `t` is a valid termios buffer for tcgetattr to fill.
        if unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) } != 0 {
            return Self { saved: None };
        }
        // SAFETY: tcgetattr succeeded, so `t` is initialised.
        let saved = unsafe { t.assume_init() };
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        raw.c_iflag &= !(libc::ICRNL | libc::IXON);
        // SAFETY: `raw` is a valid termios derived from the current one.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) };
        Self { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restoring the attributes read at start-up on the same descriptor.
            unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, saved) };
        }
    }
}

/// Serial output straight to fd 1, unbuffered, so every guest byte shows at once.
pub struct StdoutConsole;

impl Write for StdoutConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// Why `--enable-pci` is refused.
pub const ENABLE_PCI_REFUSED: &str = "--enable-pci is not supported: cairn's devices are \
     virtio-mmio (announced on the kernel command line), cairn has no PCI bus; run without it";

/// Run `cairn-vmm` with `args`. Returns the process exit code.
pub fn run(args: CliArgs) -> Result<u8, VmmError> {
    init_logging(&args)?;
    report_panics_in_one_line();
    if args.enable_pci {
        return Err(VmmError::Args(ENABLE_PCI_REFUSED.into()));
    }
    if args.no_api && args.config_file.is_none() {
        return Err(VmmError::Args("--no-api needs --config-file".into()));
    }
    if args.http_api_max_payload_size > crate::api::server::MAX_BODY_SIZE_LIMIT {
        return Err(VmmError::Args(format!(
            "--http-api-max-payload-size: {} is over cairn's limit of {} bytes",
            args.http_api_max_payload_size,
            crate::api::server::MAX_BODY_SIZE_LIMIT
        )));
    }
    if let Some(filter) = &args.seccomp_filter {
        if args.no_seccomp {
            return Err(VmmError::Args(
                "--seccomp-filter and --no-seccomp cannot be used together".into(),
            ));
        }
        crate::seccomp::load_custom(filter).map_err(|e| VmmError::Config(e.to_string()))?;
    }
    crate::seccomp::set_enabled(!args.no_seccomp);
    crate::host_limits::init();
    // Make the VM while the API comes up and waits for a client (a /snapshot/load or an API
    // boot takes it). A config-file boot takes its VM within a millisecond: a thread would only
    // add its start-up, so that boot makes the VM inline. See vstate/prewarm.rs.
    if args.config_file.is_none() {
        crate::vstate::prewarm::start();
    }
    let stdin_fd = std::io::stdin().as_raw_fd();
    set_nonblocking(stdin_fd);
    let _terminal = RawTerminal::enter();
    let mut controller = Controller::new(args.id.clone(), stdin_fd)?;
    controller.set_checkpoint_dir(args.checkpoint_dir.clone());
    controller.set_mmds_size_limit(
        args.mmds_size_limit
            .unwrap_or(args.http_api_max_payload_size),
    );
    if let Some(path) = &args.metadata {
        let json = std::fs::read_to_string(path)
            .map_err(VmmError::io(format!("--metadata {}", path.display())))?;
        controller.put_mmds_metadata(&json)?;
    }
    crate::checkpoint::served_memory::serve_next_restore_from(args.page_server.clone());
    crate::checkpoint::served_disk::serve_next_restore_from(args.block_server.clone());
    if !args.no_api {
        controller.serve_api(&args.api_sock, args.http_api_max_payload_size)?;
    }
    if let Some(path) = &args.config_file {
        let json = std::fs::read_to_string(path)
            .map_err(VmmError::io(format!("--config-file {}", path.display())))?;
        let cfg = crate::config::parse_vm_config(&json)
            .map_err(|e| VmmError::Config(format!("{}: {e}", path.display())))?;
        if let Some(logger) = &cfg.logger {
            crate::logger::apply(logger)
                .map_err(|e| VmmError::Config(format!("{}: logger: {e}", path.display())))?;
        }
        if let Some(metrics) = &cfg.metrics {
            crate::metrics::MetricsSink::global()
                .init(&metrics.metrics_path)
                .map_err(|e| VmmError::Config(format!("{}: metrics: {e}", path.display())))?;
        }
        controller.set_config(cfg);
        controller.set_checkpoint_dir(args.checkpoint_dir.clone());
        controller.start_instance()?;
    }
    // From here on the main thread only runs the event loop: narrow it.
    crate::seccomp::install_for_thread(crate::seccomp::ThreadKind::Vmm)
        .map_err(|e| VmmError::Config(format!("seccomp: {e}")))?;
    let reason = controller.run()?;
    let code = reason.exit_code();
    if code != 0 {
        eprintln!("cairn-vmm: {reason}");
    } else {
        tracing::info!("{reason}");
    }
    Ok(u8::try_from(code).unwrap_or(1))
}

/// A panic is a cairn bug: say where in one line on stderr. The default hook would also print a
/// backtrace when RUST_BACKTRACE is set, and resolving one calls getcwd, which the seccomp
/// filters do not allow, so the process would die of SIGSYS before the message was complete.
fn report_panics_in_one_line() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!("cairn-vmm: internal error (a bug) in thread {name} at {location}: {message}");
        // Counted and written at once, as Firecracker does (a panicking thread may hold the
        // sink, so the line is skipped rather than waited for then).
        crate::metrics::metrics().vmm.panic_count.inc();
        crate::metrics::MetricsSink::global().try_flush();
    }));
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a descriptor we own; failure leaves it blocking, which only matters for
    // console input.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}
