//! Bodies of the action-like API calls: `/actions`, `PATCH /vm`, `/snapshot/*`, and cairn's
//! `/checkpoints`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{validate_id, validate_path, ConfigError, Validate};

/// `PUT /actions` action names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Build and boot the configured VM.
    InstanceStart,
    /// Send Ctrl+Alt+Del to the guest (i8042 reset request).
    SendCtrlAltDel,
    /// Write the metrics now.
    FlushMetrics,
}

/// `PUT /actions` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// What to do.
    pub action_type: ActionType,
}

impl Validate for InstanceActionInfo {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Target state of `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Park every vCPU.
    Paused,
    /// Let the vCPUs run again.
    Resumed,
}

/// `PATCH /vm` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateUpdate {
    /// The state to move to.
    pub state: VmState,
}

impl Validate for VmStateUpdate {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Kind of snapshot to create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only pages dirtied since the last snapshot (needs `track_dirty_pages`).
    Diff,
}

/// `PUT /snapshot/create` body. The VM must be paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotParams {
    /// Full (default) or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the VM state file is written.
    pub snapshot_path: PathBuf,
    /// Where the guest memory file is written.
    pub mem_file_path: PathBuf,
    /// Older Firecracker's target snapshot version; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Validate for CreateSnapshotParams {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_path("snapshot_path", &self.snapshot_path)?;
        validate_path("mem_file_path", &self.mem_file_path)?;
        if self.snapshot_path == self.mem_file_path {
            return Err(ConfigError::invalid(
                "mem_file_path",
                "must differ from snapshot_path",
            ));
        }
        Ok(())
    }
}

/// How guest memory is brought back on snapshot load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// `backend_path` is the memory file; it is mapped privately.
    File,
    /// `backend_path` is a Unix socket of a userfaultfd page server.
    Uffd,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackendConfig {
    /// File or Uffd.
    pub backend_type: MemBackendType,
    /// The memory file, or the page server's socket.
    pub backend_path: PathBuf,
}

/// `network_overrides[]` of `PUT /snapshot/load`: attach a restored interface to another tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface, as named in the snapshot.
    pub iface_id: String,
    /// The tap to use instead.
    pub host_dev_name: String,
}

/// `PUT /snapshot/load` body. Exactly one of `mem_backend` and (deprecated) `mem_file_path`
/// must be given; [`LoadSnapshotParams::mem_backend`] resolves them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSnapshotParams {
    /// The VM state file.
    pub snapshot_path: PathBuf,
    /// Where guest memory comes from.
    // Left out when unset: Firecracker refuses `null` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemBackendConfig>,
    /// Deprecated: same as `mem_backend` with `backend_type: File`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Track dirty pages after the load.
    // Left out when unset: Firecracker refuses `null` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the VM once loaded (default: stay paused).
    // Left out when unset: Firecracker refuses `null` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// Taps to use instead of the ones recorded in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// A Unix socket for the snapshot's vsock device instead of the recorded one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// x86_64: advance kvmclock by the wall-clock time since the snapshot was taken
    /// (`KVM_CLOCK_REALTIME`); default `false`, kvmclock resumes where it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
}

/// `vsock_override` of `PUT /snapshot/load`. Unknown fields are ignored here, as Firecracker
/// ignores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    /// The host-side Unix socket the restored vsock device listens on.
    pub uds_path: PathBuf,
}

impl LoadSnapshotParams {
    /// The memory backend, with the deprecated `mem_file_path` turned into a File backend.
    /// `None` only when neither was given (which `validate()` rejects).
    pub fn mem_backend(&self) -> Option<MemBackendConfig> {
        self.mem_backend.clone().or_else(|| {
            self.mem_file_path.clone().map(|path| MemBackendConfig {
                backend_type: MemBackendType::File,
                backend_path: path,
            })
        })
    }

    /// Whether to track dirty pages after the load (`track_dirty_pages`, or the deprecated
    /// `enable_diff_snapshots`; default `false`).
    pub fn track_dirty_pages(&self) -> bool {
        self.track_dirty_pages
            .or(self.enable_diff_snapshots)
            .unwrap_or(false)
    }

    /// Whether to resume once loaded (default `false`).
    pub fn resume_vm(&self) -> bool {
        self.resume_vm.unwrap_or(false)
    }
}

impl Validate for LoadSnapshotParams {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_path("snapshot_path", &self.snapshot_path)?;
        match (&self.mem_backend, &self.mem_file_path) {
            (None, None) => {
                return Err(ConfigError::invalid(
                    "mem_backend",
                    "missing: either mem_backend or mem_file_path is required",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "mem_backend",
                    "give either mem_backend or mem_file_path, not both",
                ))
            }
            (Some(backend), None) => {
                validate_path("mem_backend.backend_path", &backend.backend_path)?
            }
            (None, Some(path)) => validate_path("mem_file_path", path)?,
        }
        if let (Some(a), Some(b)) = (self.track_dirty_pages, self.enable_diff_snapshots) {
            if a != b {
                return Err(ConfigError::invalid(
                    "enable_diff_snapshots",
                    "contradicts track_dirty_pages; give only track_dirty_pages",
                ));
            }
        }
        if let Some(v) = &self.vsock_override {
            validate_path("vsock_override.uds_path", &v.uds_path)?;
        }
        for (i, net) in self.network_overrides.iter().flatten().enumerate() {
            let at = |e: ConfigError| e.within(&format!("network_overrides[{i}]"));
            validate_id("iface_id", &net.iface_id).map_err(at)?;
            if net.host_dev_name.is_empty() {
                return Err(at(ConfigError::invalid(
                    "host_dev_name",
                    "must not be empty",
                )));
            }
        }
        Ok(())
    }
}

/// Longest checkpoint name.
pub const MAX_CHECKPOINT_NAME_LEN: usize = 64;

/// A checkpoint name is used as a directory name: 1 to 64 characters from `A-Z a-z 0-9 _ - .`,
/// not starting with `.`.
pub fn validate_checkpoint_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_CHECKPOINT_NAME_LEN {
        return Err(ConfigError::invalid(
            field,
            format!("must be 1 to {MAX_CHECKPOINT_NAME_LEN} characters long"),
        ));
    }
    if name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(ConfigError::invalid(
            field,
            format!("`{name}` may contain only letters, digits, `_`, `-` and `.`, and must not start with `.`"),
        ));
    }
    Ok(())
}

/// cairn's `PUT /checkpoints` body: checkpoint the running VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointCreate {
    /// Name of the new checkpoint; the VMM picks one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Validate for CheckpointCreate {
    fn validate(&self) -> Result<(), ConfigError> {
        match &self.name {
            Some(name) => validate_checkpoint_name("name", name),
            None => Ok(()),
        }
    }
}

/// cairn's `PUT /checkpoints/restore` body: go back to a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRestore {
    /// The checkpoint to restore.
    pub name: String,
    /// Serve the restored VM's vsock on this Unix socket instead of the saved `uds_path` (so
    /// several VMs restored from one checkpoint do not share a socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_uds_path: Option<PathBuf>,
    /// Start paused instead of running (default: run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

impl Validate for CheckpointRestore {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_checkpoint_name("name", &self.name)
    }
}
