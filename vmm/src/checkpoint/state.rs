//! The machine state file: every Persist state of a paused VM (vCPUs, VM, legacy devices,
//! virtio transports and devices), in cairn's versioned, checksummed container.

use std::path::Path;

use cairn_devices::rate_limiter::RateLimiterState;
use cairn_devices::virtio::balloon::{BalloonFullState, BalloonState, FreePageState};
use cairn_devices::virtio::block::BlockState;
use cairn_devices::virtio::mmio::MmioTransportState;
use cairn_devices::virtio::net::persist::NetState;
use cairn_devices::virtio::rng::persist::RngState;
use cairn_devices::virtio::vsock::persist::VsockState;
use cairn_snapshot::durable::WrittenFile;
use cairn_snapshot::file::FileKind;
use cairn_snapshot::Persist;
use serde::{Deserialize, Serialize};

use crate::device_manager::{LegacyState, VirtioAttachment, VirtioHandle};
use crate::error::VmmError;
use crate::machine::{Machine, RunState};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmState;

/// Version of the machine state layout. Bump on any incompatible change, and keep the old
/// layout readable in [`super::state_versions`].
pub const MACHINE_STATE_VERSION: u32 = 4;
/// Largest state file cairn reads (vCPU XSAVE areas dominate: 4 KiB each).
pub const MAX_STATE_BYTES: u64 = 64 << 20;

/// A virtio device's own state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    /// virtio-blk.
    Block(BlockState),
    /// virtio-net.
    Net(NetState),
    /// virtio-vsock.
    Vsock(VsockState),
    /// virtio-rng.
    Rng(RngState),
    /// virtio-blk with a rate limiter (appended, so checkpoints without one keep the
    /// `Block` layout and old checkpoints still load).
    BlockLimited(BlockState, RateLimiterState),
    /// virtio-net with rate limiters (rx, tx), appended for the same reason.
    NetLimited(NetState, RateLimiterState, RateLimiterState),
    /// virtio-rng with a rate limiter, appended for the same reason.
    RngLimited(RngState, RateLimiterState),
    /// virtio-balloon, appended: a machine without a balloon saves exactly what it saved
    /// before, so the layout (and [`MACHINE_STATE_VERSION`]) did not change.
    Balloon(BalloonState),
    /// virtio-balloon with free page hinting or reporting, appended for the same reason: a
    /// balloon without them still saves `Balloon`.
    BalloonFreePage(BalloonState, FreePageState),
}

impl VirtioDeviceState {
    /// A balloon's state, in the variant that keeps a balloon without free page hinting or
    /// reporting saving what it saved before they existed.
    pub fn balloon(state: BalloonFullState) -> Self {
        match state.free_page {
            None => Self::Balloon(state.base),
            Some(free_page) => Self::BalloonFreePage(state.base, free_page),
        }
    }
}

/// One virtio device: where it sits, its transport and its model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VirtioSlotState {
    /// Device id (`block:rootfs`, ...).
    pub id: String,
    /// MMIO base.
    pub base: u64,
    /// IRQ.
    pub irq: u32,
    /// Transport registers and queues.
    pub transport: MmioTransportState,
    /// The device model.
    pub device: VirtioDeviceState,
}

/// What the restoring host must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRequirements {
    /// CPU vendor string of the host that took the snapshot.
    pub cpu_vendor: String,
    /// CPU template the guest saw.
    pub cpu_template: String,
}

/// Everything needed to rebuild a paused VM, except guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct MachineState {
    /// [`MACHINE_STATE_VERSION`].
    pub version: u32,
    /// Host and CPU model requirements.
    pub host: HostRequirements,
    /// Guest RAM regions `(guest address, length)`, in memory-file order.
    pub regions: Vec<(u64, u64)>,
    /// Whether the VM tracked dirty pages.
    pub track_dirty_pages: bool,
    /// VM-wide KVM state.
    pub vm: VmState,
    /// Each vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    /// COM1 and the i8042.
    pub legacy: LegacyState,
    /// Virtio devices in attach order.
    pub virtio: Vec<VirtioSlotState>,
    /// The VM generation ID device (version 2 on).
    pub vmgenid: Option<cairn_devices::acpi::vmgenid::VmGenIdState>,
    /// MMDS's settings, when it is enabled on some interface (version 3 on).
    pub mmds: Option<cairn_devices::mmds::MmdsState>,
    /// What the API set for drives and interfaces that their devices' states do not hold:
    /// `is_root_device`, `partuuid`, `cache_type`, `mtu` (version 4 on).
    pub device_settings: crate::device_settings::DeviceSettings,
}

fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// vCPU states asked for and not yet answered ([`request_vcpu_states`]).
pub type PendingVcpuStates = Vec<std::sync::mpsc::Receiver<Result<VcpuState, VmmError>>>;

/// Ask every vCPU for its state, without waiting. Right after [`Machine::request_pause`], each
/// vCPU thread saves its state as it parks, with no second round trip to it.
pub fn request_vcpu_states(machine: &Machine) -> Result<PendingVcpuStates, VmmError> {
    machine
        .vcpus()
        .iter()
        .map(|handle| handle.request_with_vcpu(|vcpu| vcpu.save()))
        .collect()
}

/// Collect the state of a paused machine.
pub fn capture(machine: &Machine) -> Result<MachineState, VmmError> {
    if machine.state() != RunState::Paused {
        return Err(VmmError::InvalidState(
            "the VM must be paused to be snapshotted".into(),
        ));
    }
    let pending = request_vcpu_states(machine)?;
    capture_requested(machine, pending)
}

/// [`capture`], with the vCPU states already asked for (`pending`).
pub fn capture_requested(
    machine: &Machine,
    pending: PendingVcpuStates,
) -> Result<MachineState, VmmError> {
    if machine.state() != RunState::Paused {
        return Err(VmmError::InvalidState(
            "the VM must be paused to be snapshotted".into(),
        ));
    }
    let mut vcpus = Vec::with_capacity(pending.len());
    for (handle, answer) in machine.vcpus().iter().zip(&pending) {
        vcpus.push(handle.answer(answer, std::time::Duration::from_secs(2))??);
    }
    let virtio = machine
        .virtio_devices()
        .iter()
        .map(save_virtio)
        .collect::<Result<_, _>>()?;
    Ok(MachineState {
        version: MACHINE_STATE_VERSION,
        host: HostRequirements {
            cpu_vendor: machine.cpu_vendor.clone(),
            cpu_template: machine.spec().cpu_template.name().to_string(),
        },
        regions: machine_regions(machine),
        track_dirty_pages: machine.vm().dirty_tracking(),
        vm: machine.vm().save()?,
        vcpus,
        legacy: machine.legacy().save()?,
        virtio,
        vmgenid: machine
            .vmgenid
            .as_ref()
            .map(|d| d.save())
            .transpose()
            .map_err(|e| VmmError::Device {
                device: "vmgenid".into(),
                reason: e.to_string(),
            })?,
        mmds: machine.mmds.clone(),
        device_settings: machine.spec().device_settings.clone(),
    })
}

/// Save one virtio device and its transport.
fn save_virtio(a: &VirtioAttachment) -> Result<VirtioSlotState, VmmError> {
    let err = |e: &dyn std::fmt::Display| VmmError::Device {
        device: a.id.clone(),
        reason: e.to_string(),
    };
    let device = match &a.device {
        VirtioHandle::Block(d) => crate::rate_limit::save_block(&lock(d)).map_err(|e| err(&e)),
        VirtioHandle::Net(d) => crate::rate_limit::save_net(&lock(d)).map_err(|e| err(&e)),
        VirtioHandle::Vsock(d) => lock(d)
            .save()
            .map(VirtioDeviceState::Vsock)
            .map_err(|e| err(&e)),
        VirtioHandle::Rng(d) => crate::rate_limit::save_rng(&lock(d)).map_err(|e| err(&e)),
        VirtioHandle::Balloon(d) => lock(d)
            .save()
            .map(VirtioDeviceState::balloon)
            .map_err(|e| err(&e)),
    }?;
    Ok(VirtioSlotState {
        id: a.id.clone(),
        base: a.slot.base,
        irq: a.slot.irq,
        transport: lock(&a.transport).save().map_err(|e| err(&e))?,
        device,
    })
}

/// Guest RAM regions of `machine` as `(guest address, length)`.
pub fn machine_regions(machine: &Machine) -> Vec<(u64, u64)> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    machine
        .memory()
        .iter()
        .map(|r| (r.start_addr().0, r.len()))
        .collect()
}

/// Write `state` to `path` (temp file, fsync, rename).
pub fn write_state(path: &Path, state: &MachineState) -> Result<(), VmmError> {
    cairn_snapshot::file::save(path, FileKind::State, state)
        .map_err(|e| VmmError::Snapshot(format!("{}: {e}", path.display())))
}

/// Write `state` to the new file `path` in a checkpoint's directory without syncing it: the
/// checkpoint's commit syncs it ([`cairn_snapshot::durable::WrittenFile`]).
pub fn write_state_unsynced(path: &Path, state: &MachineState) -> Result<WrittenFile, VmmError> {
    cairn_snapshot::file::encode_value(FileKind::State, state)
        .and_then(|bytes| WrittenFile::write_new(path, &bytes))
        .map_err(|e| VmmError::Snapshot(format!("{}: {e}", path.display())))
}

/// Read and check a state file of any version this cairn reads (see
/// [`super::state_versions`]); older versions come back in the current layout.
pub fn read_state(path: &Path) -> Result<MachineState, VmmError> {
    use super::state_versions::{decode, DecodeError};
    let payload = cairn_snapshot::file::read(path, FileKind::State, MAX_STATE_BYTES)
        .map_err(|e| VmmError::Snapshot(format!("{}: {e}", path.display())))?;
    let state = decode(&payload).map_err(|e| match e {
        DecodeError::Unknown(_) => VmmError::Incompatible(format!("{}: {e}", path.display())),
        DecodeError::Corrupt(_) => VmmError::Snapshot(format!("{}: {e}", path.display())),
    })?;
    if state.vcpus.is_empty() || state.vcpus.len() > usize::from(crate::builder::MAX_VCPUS) {
        return Err(VmmError::Snapshot(format!(
            "{}: {} vCPUs",
            path.display(),
            state.vcpus.len()
        )));
    }
    Ok(state)
}
