//! The controller: the VMM thread's side of the API. It holds the configuration until
//! InstanceStart, then the running machine, and answers each [`ApiRequest`].

use cairn_devices::legacy::serial_limit::RateLimitedOut;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use cairn_vmm_api::reply::{CheckpointDisk, CheckpointInfo};
use vmm_sys_util::eventfd::EventFd;

use crate::api::{ApiRequest, ApiResponse, ApiServer, InstanceInfo, InstanceState};
use crate::builder::{BuildSpec, ConsoleIo};
use crate::checkpoint::restore::RestoreOptions;
use crate::checkpoint::snapshot::SnapshotKind;
use crate::cli::StdoutConsole;
use crate::config::{ActionType, MemBackendType, SnapshotType, VmConfig, VmState};
use crate::error::VmmError;
use crate::event_loop::WakeFlag;
use crate::machine::RunState;
use crate::runtime::Runtime;
use crate::vstate::vcpu::ExitReason;

type ApiMessage = (ApiRequest, Sender<ApiResponse>);

/// Owns the runtime and the configuration; serves API requests between events.
pub struct Controller {
    id: String,
    runtime: Runtime,
    config: VmConfig,
    console_input: Option<RawFd>,
    api: Option<(Receiver<ApiMessage>, Arc<AtomicBool>)>,
    api_in_flight: Option<Arc<std::sync::atomic::AtomicUsize>>,
    vsock_socket: crate::preboot::VsockPlaceholder,
    /// `PUT /serial`: the guest console's output file and rate limiter (Firecracker keeps it
    /// out of the VM config too).
    serial: crate::config::SerialConfig,
    /// Set when a request failed in a way that leaves the process unusable (a failed
    /// `/snapshot/load`, as in Firecracker): [`Controller::run`] ends after answering it.
    fatal: Option<String>,
    /// MMDS: the data store and its stacks.
    mmds: crate::mmds::MmdsService,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("id", &self.id)
            .field("config", &self.config)
            .finish()
    }
}

/// Firecracker's refusal of a request that needs a running VM.
const NOT_SUPPORTED_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

fn refused(e: impl std::fmt::Display) -> ApiResponse {
    ApiResponse::bad_request(e.to_string())
}

impl Controller {
    /// A controller with an empty configuration; console input is read from `console_input`.
    pub fn new(id: String, console_input: RawFd) -> Result<Self, VmmError> {
        Ok(Self {
            runtime: Runtime::new()?,
            config: VmConfig::default(),
            console_input: Some(console_input),
            api: None,
            api_in_flight: None,
            vsock_socket: Default::default(),
            serial: Default::default(),
            fatal: None,
            mmds: crate::mmds::MmdsService::new(cairn_devices::mmds::DEFAULT_MMDS_SIZE_LIMIT, &id),
            id,
        })
    }

    /// Start serving the REST API on `path`.
    pub fn serve_api(&mut self, path: &Path, max_payload: usize) -> Result<(), VmmError> {
        let server = ApiServer::bind(path)
            .map_err(VmmError::io(format!("API socket {}", path.display())))?
            .with_max_body_size(max_payload);
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::io("API eventfd"))?;
        let wake_clone = wake.try_clone().map_err(VmmError::io("API eventfd"))?;
        let (tx, rx) = mpsc::channel();
        self.api_in_flight = Some(server.in_flight());
        server
            .spawn(tx, wake_clone)
            .map_err(VmmError::io("API thread"))?;
        let flag = Arc::new(AtomicBool::new(false));
        self.runtime
            .add_subscriber(Arc::new(Mutex::new(WakeFlag::new(wake, flag.clone()))));
        self.api = Some((rx, flag));
        Ok(())
    }

    /// The MMDS data store's size limit (`--mmds-size-limit`; by default the API's largest
    /// body, as in Firecracker).
    pub fn set_mmds_size_limit(&mut self, limit: usize) {
        self.mmds.set_size_limit(limit);
    }

    /// Fill the MMDS data store from a JSON document (`--metadata`).
    pub fn put_mmds_metadata(&mut self, json: &str) -> Result<(), VmmError> {
        self.mmds.put_metadata(json)
    }

    /// Put MMDS on the interfaces the machine's settings name: the configuration's after a
    /// boot, the snapshot's after a restore.
    fn attach_mmds(
        &mut self,
        settings: Option<cairn_devices::mmds::MmdsState>,
    ) -> Result<(), VmmError> {
        let (Some(state), Some(machine)) = (settings, self.runtime.machine_mut()) else {
            return Ok(());
        };
        self.mmds.attach(machine, &state)
    }

    /// After a restore: MMDS as the snapshot had it.
    fn attach_restored_mmds(&mut self) -> Result<(), VmmError> {
        let settings = self.runtime.machine().and_then(|m| m.mmds().cloned());
        self.attach_mmds(settings)
    }

    /// Replace the whole configuration (from `--config-file`).
    pub fn set_config(&mut self, config: VmConfig) {
        self.config = config;
    }

    /// Use `dir` for named checkpoints unless the configuration names one.
    pub fn set_checkpoint_dir(&mut self, dir: Option<std::path::PathBuf>) {
        if self.config.cairn.checkpoint_dir.is_none() {
            self.config.cairn.checkpoint_dir = dir;
        }
    }

    /// The runtime.
    pub fn runtime_mut(&mut self) -> &mut Runtime {
        &mut self.runtime
    }

    fn started(&self) -> bool {
        self.runtime.machine().is_some()
    }

    /// Build and boot the configured VM.
    pub fn start_instance(&mut self) -> Result<(), VmmError> {
        if self.started() {
            return Err(VmmError::InvalidState("the VM is already running".into()));
        }
        let spec = BuildSpec::from_config(&self.config)?;
        let console = self.console()?;
        self.vsock_socket.release();
        self.runtime.boot(&spec, console)?;
        let settings = self.config.mmds_config.as_ref().map(crate::mmds::state_of);
        self.attach_mmds(settings)?;
        // Firecracker writes a metrics line at boot.
        if let Err(e) = self.flush_metrics() {
            tracing::warn!("{e}");
        }
        Ok(())
    }

    /// Serve events and API requests until the VM stops.
    pub fn run(&mut self) -> Result<ExitReason, VmmError> {
        let sink = crate::metrics::MetricsSink::global();
        loop {
            // Wake for the periodic metrics line once the VM runs (Firecracker's 60 s timer).
            let timeout_ms = match sink.until_next_flush() {
                Some(left) if self.started() => {
                    i32::try_from(left.as_millis().saturating_add(1)).unwrap_or(i32::MAX)
                }
                _ => -1,
            };
            let exit = self.runtime.poll(timeout_ms)?;
            if self.started() && sink.until_next_flush() == Some(std::time::Duration::ZERO) {
                if let Err(e) = self.flush_metrics() {
                    tracing::warn!("{e}");
                }
            }
            self.serve_pending_requests();
            if let Some(why) = self.fatal.take() {
                self.wait_for_answers_sent();
                return Err(VmmError::InvalidState(why));
            }
            if let Some(reason) = exit.or_else(|| {
                self.runtime
                    .machine()
                    .and_then(|m| m.exit_signal().reason())
            }) {
                return Ok(reason);
            }
        }
    }

    /// Waits (up to a second) until the API thread has written every answer, so a client gets
    /// its reply before the process ends.
    fn wait_for_answers_sent(&self) {
        let Some(in_flight) = &self.api_in_flight else {
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while in_flight.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn serve_pending_requests(&mut self) {
        let Some((rx, flag)) = &self.api else { return };
        if !flag.swap(false, Ordering::SeqCst) {
            return;
        }
        let pending: Vec<ApiMessage> = rx.try_iter().collect();
        for (request, reply) in pending {
            let name = request.name();
            let response = self.handle(request);
            crate::metrics::count_api_request(name, response.status() < 300);
            tracing::info!(request = name, status = response.status(), "API");
            let _ = reply.send(response);
        }
    }

    fn state(&self) -> InstanceState {
        match self.runtime.machine().map(|m| m.state()) {
            None => InstanceState::NotStarted,
            Some(RunState::Running) => InstanceState::Running,
            Some(RunState::Paused) => InstanceState::Paused,
        }
    }

    /// A configuration change before InstanceStart: applied to a copy, checked as Firecracker
    /// checks it at PUT time, and kept only when the whole result is valid.
    fn pre_boot(&mut self, apply: impl FnOnce(&mut VmConfig)) -> ApiResponse {
        if self.started() {
            return refused("The requested operation is not supported after starting the microVM.");
        }
        let mut next = self.config.clone();
        apply(&mut next);
        if let Err(why) = crate::preboot::check(&next) {
            return refused(why);
        }
        self.config = next;
        ApiResponse::Empty
    }

    /// Write one metrics line if a metrics file is set, with the devices' counts brought up to
    /// date. No file set is not an error (Firecracker's `FlushMetrics` answers 204 then too).
    fn flush_metrics(&self) -> Result<(), crate::metrics::MetricsError> {
        let sink = crate::metrics::MetricsSink::global();
        if !sink.is_initialized() {
            return Ok(());
        }
        if let Some(m) = self.runtime.machine() {
            crate::metrics::collect_device_counts(m);
        }
        sink.flush()
    }

    /// The console: the `PUT /serial` file if one is set (no input then, as in Firecracker),
    /// else stdout and the console input.
    fn console(&self) -> Result<ConsoleIo, VmmError> {
        open_console(&self.serial, self.console_input)
    }

    /// `PUT /snapshot/load`'s restore, with Firecracker's `clock_realtime` and
    /// `vsock_override` rules (see [`crate::api::snapshot_load`]).
    fn load_snapshot(
        &mut self,
        p: &crate::config::LoadSnapshotParams,
        opts: &RestoreOptions,
        clock_realtime: bool,
    ) -> Result<(), VmmError> {
        use crate::api::snapshot_load;
        let saved_clock = if clock_realtime {
            Some(snapshot_load::saved_realtime_clock(&p.snapshot_path)?)
        } else {
            None
        };
        let console = self.console()?;
        self.runtime.restore(&p.snapshot_path, opts, console)?;
        self.attach_restored_mmds()?;
        let machine = self
            .runtime
            .machine_mut()
            .ok_or_else(|| VmmError::InvalidState("no machine after the restore".into()))?;
        if p.vsock_override.is_some() {
            snapshot_load::check_vsock_override(machine)?;
        }
        if let Some(saved) = &saved_clock {
            snapshot_load::apply_realtime_clock(machine, saved)?;
            if p.resume_vm() {
                machine.resume()?;
            }
        }
        Ok(())
    }

    /// Carry out one API request.
    pub fn handle(&mut self, request: ApiRequest) -> ApiResponse {
        if matches!(
            request,
            ApiRequest::ListCheckpoints | ApiRequest::DeleteCheckpoint(_)
        ) {
            let dir = self.config.cairn.checkpoint_dir.clone();
            if let Err(e) = self.runtime.use_checkpoint_dir(dir.as_deref()) {
                return refused(e);
            }
        }
        match request {
            ApiRequest::GetInstanceInfo => ApiResponse::json(&InstanceInfo {
                id: self.id.clone(),
                state: self.state(),
                vmm_version: env!("CARGO_PKG_VERSION").to_string(),
                app_name: "cairn".to_string(),
            }),
            ApiRequest::GetVersion => ApiResponse::json(&cairn_vmm_api::reply::VersionInfo {
                firecracker_version: crate::FIRECRACKER_API_VERSION.to_string(),
            }),
            ApiRequest::GetMachineConfig => ApiResponse::json(&self.config.machine_config),
            ApiRequest::GetVmConfig => {
                ApiResponse::json(&cairn_vmm_api::reply::FullVmConfig::from(&self.config))
            }
            ApiRequest::PutMachineConfig(mc) => {
                self.pre_boot(|c| c.machine_config = mc.put_over(&c.machine_config))
            }
            ApiRequest::PatchMachineConfig(update) => {
                self.pre_boot(|c| c.machine_config = c.machine_config.apply(&update))
            }
            ApiRequest::PutBootSource(b) => self.pre_boot(|c| c.boot_source = Some(b)),
            ApiRequest::PutDrive(d) => {
                self.pre_boot(
                    |c| match c.drives.iter_mut().find(|x| x.drive_id == d.drive_id) {
                        Some(slot) => *slot = d,
                        None => c.drives.push(d),
                    },
                )
            }
            ApiRequest::PutNetworkInterface(n) => self.pre_boot(|c| {
                match c
                    .network_interfaces
                    .iter_mut()
                    .find(|x| x.iface_id == n.iface_id)
                {
                    Some(slot) => {
                        // As Firecracker, which builds a new device: the replaced interface
                        // no longer serves MMDS.
                        if let Some(m) = &mut c.mmds_config {
                            m.network_interfaces.retain(|id| *id != n.iface_id);
                            if m.network_interfaces.is_empty() {
                                c.mmds_config = None;
                            }
                        }
                        *slot = n
                    }
                    None => c.network_interfaces.push(n),
                }
            }),
            ApiRequest::PatchDrive(u) => {
                let layered = self.runtime.uses_checkpoints();
                match self.runtime.machine() {
                    None => refused(NOT_SUPPORTED_BEFORE_START),
                    Some(m) => {
                        match crate::device_update::patch_drive(m, &mut self.config, u, layered) {
                            Ok(()) => ApiResponse::Empty,
                            Err(e) => refused(e),
                        }
                    }
                }
            }
            ApiRequest::PatchNetworkInterface(u) => match self.runtime.machine() {
                None => refused(NOT_SUPPORTED_BEFORE_START),
                Some(m) => {
                    match crate::device_update::patch_network_interface(m, &mut self.config, u) {
                        Ok(()) => ApiResponse::Empty,
                        Err(e) => refused(e),
                    }
                }
            },
            ApiRequest::PutVsock(v) => {
                if self.started() {
                    return self.pre_boot(|_| ());
                }
                if let Err(why) = self.vsock_socket.bind(&v.uds_path) {
                    return refused(why);
                }
                self.pre_boot(|c| c.vsock = Some(v))
            }
            ApiRequest::PutEntropy(e) => self.pre_boot(|c| c.entropy = Some(e)),
            ApiRequest::PutBalloon(b) => self.pre_boot(|c| c.balloon = Some(b)),
            ApiRequest::GetBalloon => {
                match crate::balloon::config(self.runtime.machine(), &self.config) {
                    Ok(b) => ApiResponse::json(&b),
                    Err(e) => refused(e),
                }
            }
            ApiRequest::PatchBalloon(u) => match self.runtime.machine() {
                None => refused(NOT_SUPPORTED_BEFORE_START),
                Some(m) => match crate::balloon::patch(m, &mut self.config, u) {
                    Ok(()) => ApiResponse::Empty,
                    Err(e) => refused(e),
                },
            },
            ApiRequest::GetBalloonStats => match self.runtime.machine() {
                None => refused(NOT_SUPPORTED_BEFORE_START),
                Some(m) => match crate::balloon::statistics(m) {
                    Ok(s) => ApiResponse::json(&s),
                    Err(e) => refused(e),
                },
            },
            ApiRequest::PatchBalloonStats(u) => match self.runtime.machine() {
                None => refused(NOT_SUPPORTED_BEFORE_START),
                Some(m) => match crate::balloon::patch_stats(m, &mut self.config, u) {
                    Ok(()) => ApiResponse::Empty,
                    Err(e) => refused(e),
                },
            },
            ApiRequest::StartBalloonHinting(start) => match self.runtime.machine() {
                None => refused(NOT_SUPPORTED_BEFORE_START),
                Some(m) => match crate::balloon::start_hinting(m, start) {
                    Ok(()) => ApiResponse::Empty,
                    Err(e) => refused(e),
                },
            },
            ApiRequest::GetBalloonHintingStatus => match self.runtime.machine() {
                None => refused(NOT_SUPPORTED_BEFORE_START),
                Some(m) => match crate::balloon::hinting_status(m) {
                    Ok(s) => ApiResponse::json(&s),
                    Err(e) => refused(e),
                },
            },
            ApiRequest::StopBalloonHinting => match self.runtime.machine() {
                None => refused(NOT_SUPPORTED_BEFORE_START),
                Some(m) => match crate::balloon::stop_hinting(m) {
                    Ok(()) => ApiResponse::Empty,
                    Err(e) => refused(e),
                },
            },
            ApiRequest::PutCpuConfig(t) => self.pre_boot(|c| c.custom_cpu_template = Some(t)),
            ApiRequest::PutSerial(serial) => {
                if self.started() {
                    return self.pre_boot(|_| ());
                }
                self.serial = serial;
                ApiResponse::Empty
            }
            ApiRequest::PutMmdsConfig(cfg) => {
                let state = crate::mmds::state_of(&cfg);
                let response = self.pre_boot(|c| c.mmds_config = Some(cfg));
                if response == ApiResponse::Empty {
                    if let Err(e) = self.mmds.configure(&state) {
                        return refused(e);
                    }
                }
                response
            }
            ApiRequest::PutMmds(data) => {
                let started = self.started();
                self.mmds.put(started, data)
            }
            ApiRequest::PatchMmds(patch) => {
                let started = self.started();
                self.mmds.patch(started, &patch)
            }
            ApiRequest::GetMmds => {
                let started = self.started();
                self.mmds.get(started)
            }
            ApiRequest::PutLogger(l) => match crate::logger::apply(&l) {
                Ok(()) => {
                    self.config.logger = Some(l);
                    ApiResponse::Empty
                }
                Err(e) => refused(e),
            },
            ApiRequest::PutMetrics(m) => {
                match crate::metrics::MetricsSink::global().init(&m.metrics_path) {
                    Ok(()) => {
                        self.config.metrics = Some(m);
                        ApiResponse::Empty
                    }
                    Err(e) => refused(e),
                }
            }
            ApiRequest::Action(action) => match action.action_type {
                ActionType::InstanceStart => match self.start_instance() {
                    Ok(()) => ApiResponse::Empty,
                    Err(e) => refused(e),
                },
                ActionType::SendCtrlAltDel => match self.runtime.machine() {
                    Some(m) => match m.send_ctrl_alt_del() {
                        Ok(()) => ApiResponse::Empty,
                        Err(e) => refused(e),
                    },
                    None => refused(NOT_SUPPORTED_BEFORE_START),
                },
                ActionType::FlushMetrics => match self.runtime.machine() {
                    Some(_) => match self.flush_metrics() {
                        Ok(()) => ApiResponse::Empty,
                        Err(e) => refused(e),
                    },
                    None => refused(NOT_SUPPORTED_BEFORE_START),
                },
            },
            ApiRequest::PatchVm(update) => match self.runtime.machine_mut() {
                None => refused("the VM is not running"),
                Some(m) => {
                    let result = match update.state {
                        VmState::Paused => m.pause(),
                        VmState::Resumed => m.resume(),
                    };
                    match result {
                        Ok(took) => {
                            tracing::info!(?took, state = ?update.state, "PATCH /vm");
                            crate::metrics::record_latency(
                                match update.state {
                                    VmState::Paused => crate::metrics::Latency::Pause,
                                    VmState::Resumed => crate::metrics::Latency::Resume,
                                },
                                took,
                            );
                            ApiResponse::Empty
                        }
                        Err(e) => ApiResponse::error(500, e.to_string()),
                    }
                }
            },
            ApiRequest::CreateSnapshot(p) => {
                let kind = match p.snapshot_type {
                    SnapshotType::Full => SnapshotKind::Full,
                    SnapshotType::Diff => SnapshotKind::Diff,
                };
                let began = std::time::Instant::now();
                match self
                    .runtime
                    .snapshot(kind, &p.snapshot_path, &p.mem_file_path)
                {
                    Ok(report) => {
                        crate::metrics::record_latency(
                            match p.snapshot_type {
                                SnapshotType::Full => crate::metrics::Latency::FullSnapshot,
                                SnapshotType::Diff => crate::metrics::Latency::DiffSnapshot,
                            },
                            began.elapsed(),
                        );
                        tracing::info!(?report, "snapshot created");
                        ApiResponse::Empty
                    }
                    Err(e) => refused(e),
                }
            }
            ApiRequest::LoadSnapshot(p) => {
                if self.started() {
                    return refused("snapshots can only be loaded before a VM is started");
                }
                let Some(backend) = p.mem_backend() else {
                    return refused("mem_backend: missing");
                };
                if backend.backend_type != MemBackendType::File {
                    return refused(
                        "mem_backend.backend_type: only \"File\" is implemented by cairn",
                    );
                }
                let clock_realtime = p.clock_realtime.unwrap_or(false);
                let opts = RestoreOptions {
                    memory_layers: vec![backend.backend_path.clone()],
                    track_dirty_pages: p.track_dirty_pages(),
                    // With clock_realtime the clock is set before any vCPU runs.
                    resume: p.resume_vm() && !clock_realtime,
                    network_overrides: p
                        .network_overrides
                        .iter()
                        .flatten()
                        .map(|o| (o.iface_id.clone(), o.host_dev_name.clone()))
                        .collect(),
                    vsock_uds_path: p.vsock_override.as_ref().map(|v| v.uds_path.clone()),
                    // The runtime decides (it knows whether checkpoints are taken).
                    fill_anonymous: false,
                };
                self.vsock_socket.release();
                let began = std::time::Instant::now();
                match self.load_snapshot(&p, &opts, clock_realtime) {
                    Ok(()) => {
                        crate::metrics::record_latency(
                            crate::metrics::Latency::LoadSnapshot,
                            began.elapsed(),
                        );
                        if let Some(m) = self.runtime.machine() {
                            self.config =
                                crate::api::loaded_config::config_of_loaded(m, &self.config);
                        }
                        ApiResponse::Empty
                    }
                    Err(e) => {
                        // As Firecracker: a failed load leaves the process too dirty to go on;
                        // answer, then end with exit code 1.
                        self.fatal = Some(format!("snapshot load failed: {e}"));
                        refused(e)
                    }
                }
            }
            ApiRequest::CreateCheckpoint(c) => {
                match self.runtime.create_checkpoint(c.name.as_deref()) {
                    Ok(meta) => ApiResponse::json(&checkpoint_info(&meta)),
                    Err(e) => refused(e),
                }
            }
            ApiRequest::ListCheckpoints => match self.runtime.list_checkpoints() {
                Ok(list) => {
                    ApiResponse::json(&list.iter().map(checkpoint_info).collect::<Vec<_>>())
                }
                Err(e) => refused(e),
            },
            ApiRequest::RestoreCheckpoint(c) => {
                let input = self.console_input;
                // Checked here, so the restore's console cannot fail to open.
                if let Err(e) = self.console() {
                    return refused(e);
                }
                let serial = self.serial.clone();
                let console = move || {
                    open_console(&serial, input).unwrap_or_else(|_| ConsoleIo {
                        output: Box::new(StdoutConsole),
                        input,
                    })
                };
                let dir = self.config.cairn.checkpoint_dir.clone();
                let resume = !c.paused.unwrap_or(false);
                let uds = c.vsock_uds_path.clone();
                self.vsock_socket.release();
                match self
                    .runtime
                    .restore_checkpoint(&c.name, dir.as_deref(), resume, uds, console)
                    .and_then(|()| self.attach_restored_mmds())
                {
                    Ok(()) => {
                        if let Some(m) = self.runtime.machine() {
                            self.config =
                                crate::api::loaded_config::config_of_loaded(m, &self.config);
                        }
                        ApiResponse::Empty
                    }
                    Err(e) => refused(e),
                }
            }
            ApiRequest::DeleteCheckpoint(name) => match self.runtime.delete_checkpoint(&name) {
                Ok(()) => ApiResponse::Empty,
                Err(e) => refused(e),
            },
        }
    }
}

/// The console: `serial_out_path` if set (no input then, as in Firecracker), else stdout and
/// `input`; the output under the serial `rate_limiter` if one is set.
fn open_console(
    serial: &crate::config::SerialConfig,
    input: Option<RawFd>,
) -> Result<ConsoleIo, VmmError> {
    let mut io = open_console_output(serial.serial_out_path.as_deref(), input)?;
    if let Some(bucket) = &serial.rate_limiter {
        let cfg = crate::rate_limit::bucket(bucket);
        let on_dropped = Box::new(|n| {
            crate::metrics::metrics()
                .uart
                .rate_limiter_dropped_bytes
                .add(n)
        });
        io.output = match RateLimitedOut::new(io.output, cfg, on_dropped) {
            Ok(limited) => Box::new(limited),
            Err(unlimited) => unlimited,
        };
    }
    Ok(io)
}

fn open_console_output(
    serial_out: Option<&Path>,
    input: Option<RawFd>,
) -> Result<ConsoleIo, VmmError> {
    match serial_out {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(VmmError::io(format!("serial_out_path {}", path.display())))?;
            Ok(ConsoleIo {
                output: Box::new(file),
                input: None,
            })
        }
        None => Ok(ConsoleIo {
            output: Box::new(StdoutConsole),
            input,
        }),
    }
}

/// A checkpoint as `GET /checkpoints` shows it: its place in the chain and its cost.
fn checkpoint_info(meta: &cairn_snapshot::checkpoint::CheckpointMeta) -> CheckpointInfo {
    CheckpointInfo {
        name: meta.name.clone(),
        parent: meta.parent.clone(),
        created_unix_ms: meta.created_unix_ms,
        dirty_memory_mib: meta.memory.dirty_mib,
        // fold, not sum: an empty f64 sum is -0.0.
        disk_delta_mib: meta.disks.iter().fold(0.0, |acc, d| acc + d.delta_mib),
        disks: meta
            .disks
            .iter()
            .map(|d| CheckpointDisk {
                drive_id: d.drive_id.clone(),
                delta_mib: d.delta_mib,
            })
            .collect(),
        pause_ms: meta.pause_ms,
        write_ms: meta.write_ms,
        total_ms: meta.total_ms,
        cpu_template: meta.cpu_template.clone(),
    }
}
