//! vCPUs: one thread each, running `KVM_RUN` and handing port and MMIO exits to the buses.
//!
//! Control is by message: the VMM thread sends a [`VcpuRequest`] and kicks the thread with a
//! real-time signal whose handler sets `immediate_exit` in the thread's `kvm_run`, so a vCPU in
//! the guest returns to its loop within microseconds. A paused vCPU blocks on its request
//! channel and answers state requests there; nothing is saved while any vCPU runs.

use std::cell::Cell;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_run, CpuId, Msrs, KVM_EXIT_INTERNAL_ERROR, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use cairn_devices::bus::Bus;
use cairn_devices::GuestMemoryMmap;

use crate::arch::x86_64::cpuid::{vcpu_cpuid, CpuTemplate, Topology};
use crate::arch::x86_64::custom_template::{
    apply_cpuid_modifiers, apply_msr_modifiers, msrs_to_read,
};
use crate::arch::x86_64::msr::boot_msr_entries;
use crate::arch::x86_64::regs::{boot_fpu, boot_regs, boot_sregs, set_lint, EntryMode};
use crate::config::CustomCpuTemplate;
use crate::error::VmmError;
use crate::vstate::vcpu_threads::{VcpuJob, VcpuThreads};
use crate::vstate::vm::Vm;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked for a reset (i8042 reset, triple fault, or a reset system event).
    GuestReset,
    /// The guest powered off (system event).
    GuestShutdown,
    /// The guest kernel panicked and told KVM (crash system event).
    GuestCrash,
    /// KVM's instruction emulator could not run an instruction.
    EmulationFailure {
        /// vCPU index.
        vcpu: u8,
        /// Guest RIP of the instruction.
        rip: u64,
        /// The instruction's bytes, as many as are known.
        bytes: Vec<u8>,
    },
    /// KVM failed in some other way.
    KvmError(String),
    /// The VMM was asked to stop (signal, API or library call).
    Stopped,
    /// A restored guest's memory failed its checkpoint's checksums: it was stopped rather than
    /// left running on wrong memory.
    CorruptMemory(String),
}

impl ExitReason {
    /// The process exit code Firecracker would use: 0 when the guest ended itself.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::GuestReset | Self::GuestShutdown | Self::Stopped => 0,
            _ => 1,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::GuestReset => write!(f, "guest reset (reboot)"),
            Self::GuestShutdown => write!(f, "guest powered off"),
            Self::GuestCrash => write!(f, "guest crashed"),
            Self::CorruptMemory(why) => write!(f, "restored memory is corrupt: {why}"),
            Self::EmulationFailure { vcpu, rip, bytes } => {
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                write!(
                    f,
                    "KVM emulation failure on vCPU {vcpu} at RIP {rip:#x}, instruction bytes [{}]",
                    hex.join(" ")
                )
            }
            Self::KvmError(e) => write!(f, "KVM error: {e}"),
            Self::Stopped => write!(f, "stopped"),
        }
    }
}

/// Where vCPUs report that the VM must stop. The first reason wins; the event loop watches
/// `evt`.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    /// A new, unsignalled exit.
    pub fn new() -> Result<Self, VmmError> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::io("exit eventfd"))?,
        })
    }

    /// Record `reason` (unless one is already recorded) and wake the event loop.
    pub fn signal(&self, reason: ExitReason) {
        let mut guard = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(reason);
        }
        drop(guard);
        // If the write fails the counter is saturated, which still wakes the loop.
        let _ = self.evt.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The eventfd the event loop watches.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// What the VMM asks of a vCPU thread.
pub enum VcpuRequest {
    /// Leave the guest and park.
    Pause,
    /// Continue running the guest.
    Resume,
    /// End the thread.
    Exit,
    /// Run `f` on the parked vCPU (state save, inspection) and send back its result.
    WithVcpu(Box<dyn FnOnce(&mut Vcpu) + Send>),
}

impl std::fmt::Debug for VcpuRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pause => write!(f, "Pause"),
            Self::Resume => write!(f, "Resume"),
            Self::Exit => write!(f, "Exit"),
            Self::WithVcpu(_) => write!(f, "WithVcpu"),
        }
    }
}

/// What a vCPU thread reports back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuEvent {
    /// Parked, out of the guest.
    Paused,
    /// Running the guest again (from this instant: the thread took the request).
    Resumed(Instant),
}

thread_local! {
    static THIS_KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = THIS_KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own `kvm_run` mapping, set by the vCPU loop
            // and cleared before the VcpuFd is dropped; a single byte store is signal-safe.
            unsafe { (*run).immediate_exit = 1 };
        }
    });
}

/// The signal used to kick vCPUs out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Install the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), VmmError> {
    register_signal_handler(kick_signal(), kick_handler).map_err(|e| {
        VmmError::io("install vCPU kick handler")(std::io::Error::from_raw_os_error(e.errno()))
    })
}

/// A vCPU before its thread starts.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    mem: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    saved_msrs: Vec<u32>,
}

/// Everything a vCPU needs to be set up for boot.
#[derive(Debug, Clone, Copy)]
pub struct BootVcpuConfig<'a> {
    /// KVM's supported CPUID.
    pub supported_cpuid: &'a CpuId,
    /// Number of vCPUs.
    pub cpu_count: u8,
    /// Hyperthreading.
    pub smt: bool,
    /// CPU template.
    pub template: CpuTemplate,
    /// Custom CPU template, applied after `template`.
    pub custom: Option<&'a CustomCpuTemplate>,
    /// Entry mode and point.
    pub entry: EntryMode,
}

impl Vcpu {
    /// Create vCPU `index` in `vm`.
    pub fn new(
        vm: &Vm,
        index: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        mem: GuestMemoryMmap,
        exit: Arc<ExitSignal>,
    ) -> Result<Self, VmmError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(VmmError::kvm("KVM_CREATE_VCPU"))?;
        Ok(Self {
            fd,
            index,
            pio,
            mmio,
            mem,
            exit,
            saved_msrs: vm.saved_msrs().to_vec(),
        })
    }

    /// This vCPU's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The vCPU fd.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The vCPU fd, mutably.
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// The MSRs [`cairn_snapshot::Persist::save`] captures (the VM's `saved_msrs`).
    pub fn saved_msrs(&self) -> &[u32] {
        &self.saved_msrs
    }

    /// The current values of `indices` (KVM_GET_MSRS). Errors are made by `error` from a
    /// message: the list KVM refuses, or the first MSR it cannot read.
    pub(crate) fn read_msr_list(
        &self,
        indices: &[u32],
        error: impl Fn(String) -> VmmError,
    ) -> Result<Vec<kvm_bindings::kvm_msr_entry>, VmmError> {
        let read = self.read_msr_prefix(indices, &error)?;
        if let Some(missing) = indices.get(read.len()) {
            return Err(error(format!("cannot read MSR {missing:#x}")));
        }
        Ok(read)
    }

    /// The current values of those of `indices` KVM can read, in order; the others (an MSR KVM
    /// lists but cannot read for this vCPU, e.g. for a CPU feature its CPUID lacks) are skipped.
    pub(crate) fn read_readable_msrs(
        &self,
        indices: &[u32],
        error: impl Fn(String) -> VmmError,
    ) -> Result<Vec<kvm_bindings::kvm_msr_entry>, VmmError> {
        let mut out = Vec::with_capacity(indices.len());
        let mut rest = indices;
        while !rest.is_empty() {
            let read = self.read_msr_prefix(rest, &error)?;
            let n = read.len();
            out.extend(read);
            let Some(skipped) = rest.get(n) else { break };
            tracing::debug!(
                vcpu = self.index,
                "MSR {skipped:#x} is not readable: not saved"
            );
            rest = rest.get(n + 1..).unwrap_or_default();
        }
        Ok(out)
    }

    /// KVM_GET_MSRS on `indices`: the values KVM read, which stop before the first MSR it could
    /// not read.
    fn read_msr_prefix(
        &self,
        indices: &[u32],
        error: &impl Fn(String) -> VmmError,
    ) -> Result<Vec<kvm_bindings::kvm_msr_entry>, VmmError> {
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        let entries: Vec<_> = indices
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|e| error(format!("MSR list: {e:?}")))?;
        let read = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(VmmError::kvm("KVM_GET_MSRS"))?;
        let mut values = msrs.as_slice().to_vec();
        values.truncate(read);
        Ok(values)
    }

    /// `boot` with a CPU template's MSR modifiers applied (MSRs `boot` lacks are read first).
    fn template_msrs(
        &self,
        boot: Vec<kvm_bindings::kvm_msr_entry>,
        template: &CustomCpuTemplate,
    ) -> Result<Vec<kvm_bindings::kvm_msr_entry>, VmmError> {
        let current = self.read_msr_list(&msrs_to_read(&boot, template), |m| {
            VmmError::Config(format!("cpu-config.msr_modifiers: {m}"))
        })?;
        Ok(apply_msr_modifiers(&boot, &current, template))
    }

    /// Set CPUID, MSRs, registers, FPU and LAPIC for boot.
    pub fn configure_boot(&self, cfg: &BootVcpuConfig<'_>) -> Result<(), VmmError> {
        let topo = Topology {
            cpu_index: self.index,
            cpu_count: cfg.cpu_count,
            smt: cfg.smt,
        };
        // The CPUID of T2S and T2CL comes with it; their MSRs are set below.
        let mut cpuid = vcpu_cpuid(cfg.supported_cpuid, topo, cfg.template)?;
        let builtin = crate::arch::x86_64::static_templates::builtin(cfg.template)?;
        let mut boot_msrs = boot_msr_entries();
        if let Some(builtin) = &builtin {
            boot_msrs = self.template_msrs(boot_msrs, builtin)?;
        }
        if let Some(custom) = cfg.custom {
            cpuid = apply_cpuid_modifiers(&cpuid, custom)?;
            boot_msrs = self.template_msrs(boot_msrs, custom)?;
        }
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(VmmError::kvm("KVM_SET_CPUID2"))?;
        let msrs = Msrs::from_entries(&boot_msrs)
            .map_err(|e| VmmError::Config(format!("boot MSR list: {e:?}")))?;
        let written = self
            .fd
            .set_msrs(&msrs)
            .map_err(VmmError::kvm("KVM_SET_MSRS"))?;
        let refused = msrs.as_slice().get(written).map(|e| e.index);
        if let Some(index) = refused {
            if builtin
                .iter()
                .chain(cfg.custom)
                .any(|t| t.msr_modifiers.iter().any(|m| m.addr == index))
            {
                return Err(VmmError::Config(format!(
                    "cpu-config.msr_modifiers: KVM refused the value for MSR {index:#x}"
                )));
            }
        }
        if written != msrs.as_slice().len() {
            tracing::warn!(
                vcpu = self.index,
                written,
                "KVM accepted only some boot MSRs"
            );
        }
        self.fd
            .set_regs(&boot_regs(cfg.entry))
            .map_err(VmmError::kvm("KVM_SET_REGS"))?;
        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(VmmError::kvm("KVM_GET_SREGS"))?;
        boot_sregs(&self.mem, cfg.entry, &mut sregs)
            .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
        self.fd
            .set_sregs(&sregs)
            .map_err(VmmError::kvm("KVM_SET_SREGS"))?;
        self.fd
            .set_fpu(&boot_fpu())
            .map_err(VmmError::kvm("KVM_SET_FPU"))?;
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(VmmError::kvm("KVM_GET_LAPIC"))?;
        set_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(VmmError::kvm("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// Start the vCPU thread. With `paused`, it parks before entering the guest.
    pub fn start(self, paused: bool) -> Result<VcpuHandle, VmmError> {
        let index = self.index;
        VcpuHandle::launch(index, |requests, events| {
            std::thread::Builder::new()
                .name(format!("cairn_vcpu{index}"))
                .spawn(move || self.run(requests, events, paused))
                .map_err(|e| VmmError::Vcpu {
                    index,
                    reason: format!("cannot spawn thread: {e}"),
                })
        })
    }

    /// [`Vcpu::start`] on the thread `threads` started ahead for this vCPU, when it has one.
    pub fn start_on(self, paused: bool, threads: &mut VcpuThreads) -> Result<VcpuHandle, VmmError> {
        let Some((jobs, thread)) = threads.take(self.index) else {
            return self.start(paused);
        };
        let index = self.index;
        VcpuHandle::launch(index, |requests, events| {
            let job: VcpuJob =
                Box::new(move |filtered| self.run_filtered(filtered, requests, events, paused));
            jobs.send(job).map_err(|_| VmmError::Vcpu {
                index,
                reason: "its thread ended before it was handed the vCPU".into(),
            })?;
            Ok(thread)
        })
    }

    fn run(self, requests: Receiver<VcpuRequest>, events: Sender<VcpuEvent>, start_paused: bool) {
        let filtered = crate::seccomp::install_for_thread(crate::seccomp::ThreadKind::Vcpu)
            .map_err(|e| e.to_string());
        self.run_filtered(filtered, requests, events, start_paused)
    }

    /// The vCPU loop, on a thread whose seccomp filter install went as `filtered` says.
    fn run_filtered(
        mut self,
        filtered: Result<(), String>,
        requests: Receiver<VcpuRequest>,
        events: Sender<VcpuEvent>,
        start_paused: bool,
    ) {
        if let Err(e) = filtered {
            self.exit.signal(ExitReason::KvmError(format!(
                "vCPU {}: cannot install seccomp filter: {e}",
                self.index
            )));
            return;
        }
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        THIS_KVM_RUN.with(|p| p.set(run_ptr));
        let mut paused = start_paused;
        if paused {
            let _ = events.send(VcpuEvent::Paused);
        }
        'outer: loop {
            // Serve requests: block while paused, poll while running.
            loop {
                let request = if paused {
                    match requests.recv() {
                        Ok(r) => r,
                        Err(_) => break 'outer,
                    }
                } else {
                    match requests.try_recv() {
                        Ok(r) => r,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => break 'outer,
                    }
                };
                match request {
                    VcpuRequest::Pause => {
                        paused = true;
                        let _ = events.send(VcpuEvent::Paused);
                    }
                    VcpuRequest::Resume => {
                        paused = false;
                        let _ = events.send(VcpuEvent::Resumed(Instant::now()));
                    }
                    VcpuRequest::Exit => break 'outer,
                    VcpuRequest::WithVcpu(f) => f(&mut self),
                }
            }
            if let Some(reason) = self.run_once() {
                tracing::info!(vcpu = self.index, %reason, "vCPU stopped");
                if matches!(reason, ExitReason::KvmError(_)) {
                    crate::metrics::metrics().vcpu.failures.inc();
                }
                self.exit.signal(reason);
                paused = true;
            }
        }
        THIS_KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    }

    /// Enter the guest once and handle the exit. Returns a reason when the VM must stop.
    fn run_once(&mut self) -> Option<ExitReason> {
        let (pio, mmio) = (&self.pio, &self.mmio);
        match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                crate::metrics::on_pio_write(port);
                pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                crate::metrics::on_pio_read(port);
                if !pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                crate::metrics::metrics().vcpu.exit_mmio_read.inc();
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                crate::metrics::metrics().vcpu.exit_mmio_write.inc();
                mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::Shutdown) => Some(ExitReason::GuestReset),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Some(ExitReason::GuestShutdown),
                KVM_SYSTEM_EVENT_RESET => Some(ExitReason::GuestReset),
                KVM_SYSTEM_EVENT_CRASH => Some(ExitReason::GuestCrash),
                other => Some(ExitReason::KvmError(format!(
                    "unknown system event {other}"
                ))),
            },
            Ok(VcpuExit::InternalError) => Some(self.internal_error()),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(ExitReason::KvmError(format!(
                "VM entry failed on host CPU {cpu}: hardware reason {reason:#x}"
            ))),
            Ok(VcpuExit::Intr) => None,
            Ok(other) => Some(ExitReason::KvmError(format!("unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(ExitReason::KvmError(format!("KVM_RUN: {e}"))),
        }
    }

    /// Decode `KVM_EXIT_INTERNAL_ERROR`: RIP and the instruction bytes.
    fn internal_error(&mut self) -> ExitReason {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
            return ExitReason::KvmError("internal error".into());
        }
        // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member
        // of the exit union; it is plain old data.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        if internal.suberror != KVM_INTERNAL_ERROR_EMULATION {
            return ExitReason::KvmError(format!(
                "KVM internal error, suberror {} at RIP {rip:#x}, data {:x?}",
                internal.suberror,
                &internal.data[..(internal.ndata as usize).min(internal.data.len())]
            ));
        }
        let mut bytes = Vec::new();
        let flags = internal.data[0];
        if internal.ndata >= 3
            && flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
        {
            // data[1..3] holds insn_size (1 byte) followed by up to 15 instruction bytes.
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&internal.data[1].to_le_bytes());
            raw[8..].copy_from_slice(&internal.data[2].to_le_bytes());
            let len = usize::from(raw[0]).min(15);
            bytes.extend_from_slice(&raw[1..1 + len]);
        }
        if bytes.is_empty() {
            bytes = self.read_guest_code(rip);
        }
        ExitReason::EmulationFailure {
            vcpu: self.index,
            rip,
            bytes,
        }
    }

    /// Up to 15 bytes at guest virtual address `rip`, translated by KVM.
    fn read_guest_code(&self, rip: u64) -> Vec<u8> {
        let Ok(t) = self.fd.translate_gva(rip) else {
            return vec![];
        };
        if t.valid == 0 {
            return vec![];
        }
        let mut buf = [0u8; 15];
        // Stop at the page end rather than guess at the next page's translation.
        let len = (4096 - (t.physical_address & 0xfff)).min(15) as usize;
        match self
            .mem
            .read_slice(&mut buf[..len], GuestAddress(t.physical_address))
        {
            Ok(()) => buf[..len].to_vec(),
            Err(_) => vec![],
        }
    }
}

/// The VMM's handle on a running vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    index: u8,
    requests: Sender<VcpuRequest>,
    events: Receiver<VcpuEvent>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// The handle on vCPU `index`: its two channels are made here, and `start` sets the vCPU
    /// running on a thread with their far ends, returning that thread.
    fn launch(
        index: u8,
        start: impl FnOnce(Receiver<VcpuRequest>, Sender<VcpuEvent>) -> Result<JoinHandle<()>, VmmError>,
    ) -> Result<Self, VmmError> {
        let (requests, request_rx) = mpsc::channel();
        let (event_tx, events) = mpsc::channel();
        let thread = start(request_rx, event_tx)?;
        Ok(Self {
            index,
            requests,
            events,
            thread: Some(thread),
        })
    }

    /// vCPU index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Send a request and kick the thread out of the guest.
    pub fn send(&self, request: VcpuRequest) -> Result<(), VmmError> {
        self.requests.send(request).map_err(|_| VmmError::Vcpu {
            index: self.index,
            reason: "thread has ended".into(),
        })?;
        self.kick();
        Ok(())
    }

    /// Send `request` to a vCPU that is parked (paused and acknowledged): its thread blocks
    /// on its requests, so the channel wakes it and no kick is needed (a kick would only make
    /// its next `KVM_RUN` return at once).
    pub fn send_parked(&self, request: VcpuRequest) -> Result<(), VmmError> {
        self.requests.send(request).map_err(|_| VmmError::Vcpu {
            index: self.index,
            reason: "thread has ended".into(),
        })
    }

    fn kick(&self) {
        if let Some(t) = &self.thread {
            let _ = t.kill(kick_signal());
        }
    }

    /// Whether the thread reports `expected` within `timeout` (false: not yet).
    pub fn poll_for(&self, expected: VcpuEvent, timeout: Duration) -> Result<bool, VmmError> {
        match self.events.recv_timeout(timeout) {
            Ok(e) => Ok(e == expected),
            Err(RecvTimeoutError::Timeout) => Ok(false),
            Err(RecvTimeoutError::Disconnected) => Err(VmmError::Vcpu {
                index: self.index,
                reason: "thread has ended".into(),
            }),
        }
    }

    /// Wait up to `timeout` for the thread to report that it took a resume request; when.
    pub fn wait_resumed(&self, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(VcpuEvent::Resumed(at)) => return Some(at),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// When the thread last took a resume request, among the events not read yet (which this
    /// reads; call it only while no pause is in flight).
    pub fn last_resumed(&self) -> Option<Instant> {
        let mut last = None;
        while let Ok(e) = self.events.try_recv() {
            if let VcpuEvent::Resumed(at) = e {
                last = Some(at);
            }
        }
        last
    }

    /// Wait for `expected` from the thread.
    pub fn wait_for(&self, expected: VcpuEvent, timeout: Duration) -> Result<(), VmmError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if e == expected => return Ok(()),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(VmmError::Vcpu {
                        index: self.index,
                        reason: format!("did not report {expected:?} within {timeout:?}"),
                    })
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(VmmError::Vcpu {
                        index: self.index,
                        reason: "thread has ended".into(),
                    })
                }
            }
        }
    }

    /// Run `f` on the parked vCPU (e.g. [`cairn_snapshot::Persist::save`]) and return its
    /// result. The vCPU must be paused.
    pub fn with_vcpu<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vcpu) -> T + Send + 'static,
        timeout: Duration,
    ) -> Result<T, VmmError> {
        let answer = self.request_with_vcpu(f)?;
        self.answer(&answer, timeout)
    }

    /// Queue `f` to run on the vCPU once it is parked (it may still be parking), without
    /// waiting: [`VcpuHandle::answer`] waits for its result.
    pub fn request_with_vcpu<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vcpu) -> T + Send + 'static,
    ) -> Result<Receiver<T>, VmmError> {
        let (tx, rx) = mpsc::channel();
        self.send(VcpuRequest::WithVcpu(Box::new(move |vcpu| {
            let _ = tx.send(f(vcpu));
        })))?;
        Ok(rx)
    }

    /// The result of a [`VcpuHandle::request_with_vcpu`].
    pub fn answer<T>(&self, answer: &Receiver<T>, timeout: Duration) -> Result<T, VmmError> {
        answer.recv_timeout(timeout).map_err(|_| VmmError::Vcpu {
            index: self.index,
            reason: "did not answer a state request".into(),
        })
    }

    /// [`VcpuHandle::with_vcpu`] with just the vCPU's fd.
    pub fn with_fd<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut VcpuFd) -> T + Send + 'static,
        timeout: Duration,
    ) -> Result<T, VmmError> {
        self.with_vcpu(move |vcpu| f(vcpu.fd_mut()), timeout)
    }

    /// Stop the thread and wait for it.
    pub fn join(mut self) {
        let _ = self.requests.send(VcpuRequest::Exit);
        self.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
