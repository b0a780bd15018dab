//! A running VM: its vCPU threads, memory and devices, and the operations on it (pause, resume,
//! stop).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_devices::bus::Bus;
use cairn_devices::GuestMemoryMmap;
use kvm_ioctls::Kvm;

use crate::builder::BuildSpec;
use crate::device_manager::{LegacyDevices, VirtioAttachment};
use crate::error::VmmError;
use crate::vstate::vcpu::{ExitSignal, VcpuEvent, VcpuHandle, VcpuRequest};
use crate::vstate::vm::Vm;

/// How long a vCPU may take to answer a pause or resume before cairn gives up on it.
pub const VCPU_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// vCPUs are in the guest.
    Running,
    /// Every vCPU is parked.
    Paused,
}

/// A built, started VM.
#[derive(Debug)]
pub struct Machine {
    pub(crate) kvm: Kvm,
    pub(crate) vm: Vm,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) vcpus: Vec<VcpuHandle>,
    pub(crate) legacy: LegacyDevices,
    pub(crate) virtio: Vec<VirtioAttachment>,
    pub(crate) pio: Arc<Bus>,
    pub(crate) mmio: Arc<Bus>,
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) state: RunState,
    pub(crate) spec: BuildSpec,
    /// The host CPU's vendor as KVM reports it, saved with every snapshot. Asked once, where
    /// KVM gives the supported CPUID anyway: KVM_GET_SUPPORTED_CPUID takes ~0.4 ms, half of a
    /// checkpoint's pause when it was asked inside it.
    pub(crate) cpu_vendor: String,
    /// Pages present in the memory files this machine was restored from (empty after a boot).
    pub(crate) restored_pages: cairn_snapshot::memory::PageIndex,
    /// Dirty pages collected but not yet consumed, per consumer.
    pub(crate) dirty: DirtyLedger,
    /// The VM generation ID device (absent in VMs restored from state that had none).
    pub(crate) vmgenid: Option<cairn_devices::acpi::VmGenId>,
    /// MMDS's settings, when it is enabled on some interface (kept in snapshots).
    pub(crate) mmds: Option<cairn_devices::mmds::MmdsState>,
    /// The userfaultfd of the last checkpoint copied in the background, guest memory still
    /// registered on it and nothing protected (checkpoint/background.rs): the next checkpoint
    /// arms it again instead of registering afresh, and nobody pays for unregistering.
    pub(crate) write_tracker: Option<crate::checkpoint::background::WriteTracker>,
    /// Guest RAM's tmpfs file while the guest writes it through a shared mapping
    /// (`guest_memory_dir`); taken by the first Full snapshot that hands it over
    /// (checkpoint/handover.rs), after which the RAM is a private mapping of the snapshot file.
    pub(crate) ram_file: Option<crate::vstate::shared_memory::RamFile>,
    /// Restored memory still being filled from its layer files (checkpoint/filled_memory.rs).
    /// Last, so that it outlives the vCPUs, whose faults it answers.
    pub(crate) filled: Option<crate::checkpoint::filled_memory::FilledMemory>,
}

/// Who consumes dirty pages: Firecracker-style snapshots and named checkpoints each keep their
/// own baseline, so mixing them never loses a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirtyConsumer {
    /// `PUT /snapshot/create`.
    Snapshot,
    /// `PUT /checkpoints`.
    Checkpoint,
}

/// Pages dirtied since each consumer's last snapshot.
#[derive(Debug, Default)]
pub struct DirtyLedger {
    since_snapshot: cairn_snapshot::memory::PageIndex,
    since_checkpoint: cairn_snapshot::memory::PageIndex,
}

impl Machine {
    /// Running or paused.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Presses Ctrl+Alt+Del on the i8042 keyboard (Firecracker's `SendCtrlAltDel`). The VM
    /// goes on running; what happens next is the guest's choice.
    pub fn send_ctrl_alt_del(&self) -> Result<(), VmmError> {
        self.legacy
            .i8042
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trigger_ctrl_alt_del()
            .map_err(|e| VmmError::Device {
                device: "i8042".into(),
                reason: e.to_string(),
            })
    }

    /// The spec the machine was built from (for a restored machine, what the snapshot says).
    pub fn spec(&self) -> &BuildSpec {
        &self.spec
    }

    /// The KVM VM.
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The port I/O bus.
    pub fn pio_bus(&self) -> &Arc<Bus> {
        &self.pio
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &Arc<Bus> {
        &self.mmio
    }

    /// The legacy devices.
    pub fn legacy(&self) -> &LegacyDevices {
        &self.legacy
    }

    /// The virtio devices, in attach order.
    pub fn virtio_devices(&self) -> &[VirtioAttachment] {
        &self.virtio
    }

    /// MMDS's settings, when it is enabled on some interface.
    pub fn mmds(&self) -> Option<&cairn_devices::mmds::MmdsState> {
        self.mmds.as_ref()
    }

    /// The VM's exit signal.
    pub fn exit_signal(&self) -> &Arc<ExitSignal> {
        &self.exit
    }

    /// Park every vCPU. Returns how long it took.
    pub fn pause(&mut self) -> Result<Duration, VmmError> {
        if self.state == RunState::Paused {
            return Ok(Duration::ZERO);
        }
        let start = Instant::now();
        for vcpu in &self.vcpus {
            vcpu.send(VcpuRequest::Pause)?;
        }
        for vcpu in &self.vcpus {
            vcpu.wait_for(VcpuEvent::Paused, VCPU_RESPONSE_TIMEOUT)?;
        }
        self.state = RunState::Paused;
        Ok(start.elapsed())
    }

    /// Ask every vCPU to park, without waiting ([`Machine::wait_paused_serving`] waits).
    /// Requests sent after this one are served once the vCPU has parked.
    pub fn request_pause(&mut self) -> Result<(), VmmError> {
        if self.state == RunState::Paused {
            return Ok(());
        }
        for vcpu in &self.vcpus {
            // Events from before this request are stale: a vCPU restored paused and resumed
            // since left its start-up `Paused` unread, which would pass for this pause's
            // answer while the vCPU still runs.
            let _ = vcpu.last_resumed();
            vcpu.send(VcpuRequest::Pause)?;
        }
        Ok(())
    }

    /// Wait for every vCPU to park after [`Machine::request_pause`], calling `serve` meanwhile
    /// (a checkpoint's write tracking lets a vCPU blocked on a protected page go on, so that
    /// it can park).
    pub fn wait_paused_serving(
        &mut self,
        mut serve: impl FnMut() -> Result<(), VmmError>,
    ) -> Result<(), VmmError> {
        if self.state == RunState::Paused {
            return Ok(());
        }
        let deadline = Instant::now() + VCPU_RESPONSE_TIMEOUT;
        for vcpu in &self.vcpus {
            loop {
                serve()?;
                if vcpu.poll_for(VcpuEvent::Paused, Duration::from_micros(200))? {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(VmmError::Vcpu {
                        index: vcpu.index(),
                        reason: format!("did not pause within {VCPU_RESPONSE_TIMEOUT:?}"),
                    });
                }
            }
        }
        self.state = RunState::Paused;
        Ok(())
    }

    /// Wait up to `timeout` for every vCPU thread to take the resume just sent; when the last
    /// one did (`None`: one has not yet, see [`Machine::resumed_at`]). Waiting (asleep) lets a
    /// vCPU thread have this thread's CPU at once on a busy host.
    pub fn wait_resumed(&self, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        let mut latest: Option<Instant> = None;
        for vcpu in &self.vcpus {
            let at = vcpu.wait_resumed(deadline.saturating_duration_since(Instant::now()))?;
            latest = Some(latest.map_or(at, |l| l.max(at)));
        }
        latest
    }

    /// When the last vCPU took the latest resume request (`None`: one has not yet).
    pub fn resumed_at(&self) -> Option<Instant> {
        let mut latest = None;
        for vcpu in &self.vcpus {
            let at = vcpu.last_resumed()?;
            latest = Some(latest.map_or(at, |l: Instant| l.max(at)));
        }
        latest
    }

    /// Let every vCPU run again. Returns how long it took to tell them: the threads are not
    /// waited for (a parked thread may be scheduled late on a busy host, and nothing needs it to
    /// have re-entered the guest before the call returns).
    pub fn resume(&mut self) -> Result<Duration, VmmError> {
        if self.state == RunState::Running {
            return Ok(Duration::ZERO);
        }
        let start = Instant::now();
        // Paused means every vCPU acknowledged and parked: no kick needed.
        for vcpu in &self.vcpus {
            vcpu.send_parked(VcpuRequest::Resume)?;
        }
        self.state = RunState::Running;
        Ok(start.elapsed())
    }

    /// Pages dirtied since `consumer`'s last call (KVM's log plus the VMM's own writes); resets
    /// that consumer's baseline only.
    pub fn take_dirty(
        &mut self,
        consumer: DirtyConsumer,
    ) -> Result<cairn_snapshot::memory::PageIndex, VmmError> {
        self.collect_dirty()?;
        let ledger = &mut self.dirty;
        Ok(match consumer {
            DirtyConsumer::Snapshot => std::mem::take(&mut ledger.since_snapshot),
            DirtyConsumer::Checkpoint => std::mem::take(&mut ledger.since_checkpoint),
        })
    }

    /// Fetch the pages dirtied since the last fetch into every consumer's ledger, without
    /// consuming them; returns those new pages.
    pub fn collect_dirty(&mut self) -> Result<cairn_snapshot::memory::PageIndex, VmmError> {
        let new = crate::checkpoint::memory::take_dirty_pages(&self.mem, &self.vm)?;
        let ledger = &mut self.dirty;
        ledger.since_snapshot = ledger.since_snapshot.union(&new);
        ledger.since_checkpoint = ledger.since_checkpoint.union(&new);
        Ok(new)
    }

    /// The pages collected for `consumer` and not consumed yet.
    pub fn dirty_so_far(&self, consumer: DirtyConsumer) -> &cairn_snapshot::memory::PageIndex {
        match consumer {
            DirtyConsumer::Snapshot => &self.dirty.since_snapshot,
            DirtyConsumer::Checkpoint => &self.dirty.since_checkpoint,
        }
    }

    /// Whether restored guest memory is still being filled from its layer files
    /// (checkpoint/filled_memory.rs).
    pub fn memory_fill_running(&self) -> bool {
        self.filled.as_ref().is_some_and(|f| f.running())
    }

    /// The vCPU handles (for state save and restore while paused).
    pub fn vcpus(&self) -> &[VcpuHandle] {
        &self.vcpus
    }

    /// Stop every vCPU thread, and drop the machine. A memory fill still running is ended last,
    /// on a thread of its own ([`crate::checkpoint::filled_memory::FilledMemory::close_aside`]).
    pub fn shutdown(mut self) {
        let filled = self.filled.take();
        self.stop();
        if let Some(filled) = filled {
            filled.close_aside();
        }
    }

    /// Stop every vCPU thread; the rest of the machine is dropped on return.
    fn stop(mut self) {
        if let Some(tracker) = self.write_tracker.take() {
            tracker.close_aside();
        }
        for vcpu in self.vcpus {
            vcpu.join();
        }
    }
}
