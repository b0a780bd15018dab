//! Machine state versions this cairn reads. The state file is postcard, which is not
//! self-describing: a layout is a sequence of fields, so each older layout is kept here, frozen,
//! and converted to the current [`MachineState`] on load. The version is the payload's first
//! field in every layout, so it is read first and picks the layout.
//!
//! - 1: the state before the VM generation ID device. It loads with no device (`vmgenid: None`):
//!   the guest was booted without one, so there is nothing in its ACPI tables to notify.
//! - 2: with the VM generation ID device (`vmgenid`). It loads with no MMDS settings: the
//!   cairn that wrote it had no MMDS.
//! - 3: with MMDS's settings (`mmds`). It loads with no device settings: drives read back
//!   as not the root device, without `partuuid` or `cache_type`, interfaces without an MTU
//!   (what that cairn reported after a load), and a restored interface advertises no MTU.
//! - 4: [`MachineState`], with the drives' and interfaces' API settings their device states do
//!   not hold (`device_settings`, last field).

use serde::{Deserialize, Serialize};

use super::state::{HostRequirements, MachineState, VirtioSlotState, MACHINE_STATE_VERSION};
use crate::device_manager::LegacyState;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmState;

/// The oldest machine state version this cairn reads.
pub const OLDEST_MACHINE_STATE_VERSION: u32 = 1;

/// Version 1 of the machine state, frozen: [`MachineState`] without `vmgenid`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MachineStateV1 {
    /// Always 1.
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
}

impl From<MachineStateV1> for MachineState {
    fn from(v1: MachineStateV1) -> Self {
        MachineState {
            version: v1.version,
            host: v1.host,
            regions: v1.regions,
            track_dirty_pages: v1.track_dirty_pages,
            vm: v1.vm,
            vcpus: v1.vcpus,
            legacy: v1.legacy,
            virtio: v1.virtio,
            vmgenid: None,
            mmds: None,
            device_settings: Default::default(),
        }
    }
}

/// Version 2 of the machine state, frozen: [`MachineState`] without `mmds`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MachineStateV2 {
    /// Always 2.
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
    /// The VM generation ID device.
    pub vmgenid: Option<cairn_devices::acpi::vmgenid::VmGenIdState>,
}

impl From<MachineStateV2> for MachineState {
    fn from(v2: MachineStateV2) -> Self {
        MachineState {
            version: v2.version,
            host: v2.host,
            regions: v2.regions,
            track_dirty_pages: v2.track_dirty_pages,
            vm: v2.vm,
            vcpus: v2.vcpus,
            legacy: v2.legacy,
            virtio: v2.virtio,
            vmgenid: v2.vmgenid,
            mmds: None,
            device_settings: Default::default(),
        }
    }
}

/// Version 3 of the machine state, frozen: [`MachineState`] without `device_settings`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MachineStateV3 {
    /// Always 3.
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
    /// The VM generation ID device.
    pub vmgenid: Option<cairn_devices::acpi::vmgenid::VmGenIdState>,
    /// MMDS's settings.
    pub mmds: Option<cairn_devices::mmds::MmdsState>,
}

impl From<MachineStateV3> for MachineState {
    fn from(v3: MachineStateV3) -> Self {
        MachineState {
            version: v3.version,
            host: v3.host,
            regions: v3.regions,
            track_dirty_pages: v3.track_dirty_pages,
            vm: v3.vm,
            vcpus: v3.vcpus,
            legacy: v3.legacy,
            virtio: v3.virtio,
            vmgenid: v3.vmgenid,
            mmds: v3.mmds,
            device_settings: Default::default(),
        }
    }
}

impl MachineStateV3 {
    /// `state` in the version-3 layout (its device settings are dropped): what a cairn before
    /// version 4 wrote. For tests of loading old checkpoints.
    pub fn from_current(state: MachineState) -> Self {
        MachineStateV3 {
            version: 3,
            host: state.host,
            regions: state.regions,
            track_dirty_pages: state.track_dirty_pages,
            vm: state.vm,
            vcpus: state.vcpus,
            legacy: state.legacy,
            virtio: state.virtio,
            vmgenid: state.vmgenid,
            mmds: state.mmds,
        }
    }
}

impl MachineStateV2 {
    /// `state` in the version-2 layout (its MMDS settings, if any, are dropped): what a cairn
    /// before version 3 wrote. For tests of loading old checkpoints.
    pub fn from_current(state: MachineState) -> Self {
        MachineStateV2 {
            version: 2,
            host: state.host,
            regions: state.regions,
            track_dirty_pages: state.track_dirty_pages,
            vm: state.vm,
            vcpus: state.vcpus,
            legacy: state.legacy,
            virtio: state.virtio,
            vmgenid: state.vmgenid,
        }
    }
}

impl MachineStateV1 {
    /// `state` in the version-1 layout (its VM generation ID, if any, is dropped): what a cairn
    /// before version 2 wrote. For tests of loading old checkpoints.
    pub fn from_current(state: MachineState) -> Self {
        MachineStateV1 {
            version: 1,
            host: state.host,
            regions: state.regions,
            track_dirty_pages: state.track_dirty_pages,
            vm: state.vm,
            vcpus: state.vcpus,
            legacy: state.legacy,
            virtio: state.virtio,
        }
    }
}

/// Why a payload is not a machine state this cairn reads.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A version this cairn does not know (newer, or not a version at all).
    Unknown(u32),
    /// The version is known but the payload does not match its layout.
    Corrupt(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Unknown(v) => write!(
                f,
                "machine state version {v}; this cairn reads versions \
                 {OLDEST_MACHINE_STATE_VERSION} to {MACHINE_STATE_VERSION}"
            ),
            DecodeError::Corrupt(e) => write!(f, "corrupt machine state: {e}"),
        }
    }
}

/// Decode a state payload of any version this cairn reads into the current layout.
pub fn decode(payload: &[u8]) -> Result<MachineState, DecodeError> {
    let corrupt = |e: &dyn std::fmt::Display| DecodeError::Corrupt(e.to_string());
    let (version, _) = postcard::take_from_bytes::<u32>(payload).map_err(|e| corrupt(&e))?;
    match version {
        1 => cairn_snapshot::file::decode_payload::<MachineStateV1>(payload)
            .map(MachineState::from)
            .map_err(|e| corrupt(&e)),
        2 => cairn_snapshot::file::decode_payload::<MachineStateV2>(payload)
            .map(MachineState::from)
            .map_err(|e| corrupt(&e)),
        3 => cairn_snapshot::file::decode_payload::<MachineStateV3>(payload)
            .map(MachineState::from)
            .map_err(|e| corrupt(&e)),
        MACHINE_STATE_VERSION => {
            cairn_snapshot::file::decode_payload::<MachineState>(payload).map_err(|e| corrupt(&e))
        }
        v => Err(DecodeError::Unknown(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_versions_are_named() {
        for v in [0u32, 5, 99, u32::MAX] {
            let mut payload = postcard::to_stdvec(&v).unwrap();
            payload.extend_from_slice(&[0u8; 64]);
            let err = decode(&payload).unwrap_err();
            assert_eq!(err, DecodeError::Unknown(v));
            let text = err.to_string();
            assert!(text.contains(&format!("version {v}")), "{text}");
            assert!(text.contains("versions 1 to 4"), "{text}");
        }
    }

    #[test]
    fn known_versions_with_garbage_are_corrupt_not_panics() {
        assert!(matches!(decode(&[]), Err(DecodeError::Corrupt(_))));
        for v in [1u32, 2, 3, MACHINE_STATE_VERSION] {
            let mut payload = postcard::to_stdvec(&v).unwrap();
            for tail in [
                &[][..],
                &[0xff; 7][..],
                &[0x01, 0x80, 0x80, 0x80, 0x80, 0x80][..],
            ] {
                let mut p = payload.clone();
                p.extend_from_slice(tail);
                let err = decode(&p).unwrap_err();
                assert!(
                    matches!(err, DecodeError::Corrupt(_)),
                    "{v} {tail:?}: {err}"
                );
                assert!(err.to_string().starts_with("corrupt machine state"));
            }
            payload.clear();
        }
    }
}
