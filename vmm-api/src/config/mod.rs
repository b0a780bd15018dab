//! Firecracker-compatible configuration types.
//!
//! Every type here is plain data: serde structs with `deny_unknown_fields`, `Default` where
//! Firecracker has defaults, and a separate [`Validate::validate`] that checks the rules serde
//! cannot express. The JSON names and meanings are Firecracker's, so a Firecracker
//! `--config-file` document or API call works unchanged. Sections Firecracker has but cairn does not
//! implement (`pmem`, `memory-hotplug`, vhost-user drives) are
//! accepted when absent, `null` or empty (as `GET /vm/config` writes them); anything else in them
//! is rejected by `validate()` with a message that says so.
//!
//! Errors always name the field, as a path like `machine-config.vcpu_count` or
//! `drives[1].drive_id`, both for JSON that does not fit ([`parse_vm_config`], [`parse_json`])
//! and for values that break a rule (`validate()`).
//!
//! ```
//! use cairn_vmm_api::config::{parse_vm_config, Validate};
//! let cfg = parse_vm_config(r#"{
//!     "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"},
//!     "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}
//! }"#).unwrap();
//! assert_eq!(cfg.machine_config.vcpu_count, 2);
//! let err = parse_vm_config(r#"{"machine-config": {"vcpu_count": "x", "mem_size_mib": 1}}"#)
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("machine-config.vcpu_count: invalid type"));
//! ```

mod actions;
mod balloon;
mod cpu_config;
#[cfg(test)]
mod device_tests;
mod devices;
mod logging;
mod machine;
mod mmds;
#[cfg(test)]
mod no_null_tests;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

pub use actions::{
    validate_checkpoint_name, ActionType, CheckpointCreate, CheckpointRestore,
    CreateSnapshotParams, InstanceActionInfo, LoadSnapshotParams, MemBackendConfig, MemBackendType,
    NetworkOverride, SnapshotType, VmState, VmStateUpdate, VsockOverride,
};
pub use balloon::{
    BalloonConfig, BalloonHintingStart, BalloonHintingStatus, BalloonStatsReply,
    BalloonStatsUpdate, BalloonUpdate,
};
pub use cpu_config::{
    BitFilter, CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier, CustomCpuTemplate,
    KvmCapabilityModifier, MsrModifier,
};
pub use devices::{
    parse_mac, CacheType, DriveConfig, DriveUpdate, EntropyConfig, IoEngine, NetConfig,
    NetworkInterfaceUpdate, RateLimiterConfig, SerialConfig, TokenBucketConfig, VsockConfig,
};
pub use logging::{LogLevel, LoggerConfig, MetricsConfig};
pub use machine::{
    BootSourceConfig, CpuTemplate, HugePages, MachineConfig, MachineConfigUpdate,
    IMPLEMENTED_CPU_TEMPLATES, MAX_VCPUS,
};
pub use mmds::{
    is_valid_mmds_ipv4, MmdsConfig, MmdsVersion, DEFAULT_MMDS_IPV4, UNKNOWN_MMDS_INTERFACE,
};

/// Why a configuration document or API body was refused. The message always starts with the
/// path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The JSON is malformed or does not fit the expected shape (unknown field, wrong type,
    /// missing field, unknown variant).
    #[error("{}", join_path(path, message))]
    Parse {
        /// Path of the field being read, e.g. `machine-config.vcpu_count`; empty for the root.
        path: String,
        /// serde_json's description, including line and column.
        message: String,
    },
    /// A value was read but breaks one of the rules checked by `validate()`.
    #[error("{}", join_path(field, reason))]
    Invalid {
        /// Path of the offending field, e.g. `drives[0].drive_id`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn join_path(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

impl ConfigError {
    /// A rule violation for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The path of the offending field (empty for the document root).
    pub fn field(&self) -> &str {
        match self {
            ConfigError::Parse { path, .. } => path,
            ConfigError::Invalid { field, .. } => field,
        }
    }

    /// Puts `prefix` in front of the field path: `vcpu_count` becomes
    /// `machine-config.vcpu_count`, `[0]` under `drives` becomes `drives[0]`.
    pub fn within(self, prefix: &str) -> Self {
        let join = |inner: String| {
            if inner.is_empty() {
                prefix.to_string()
            } else if inner.starts_with('[') {
                format!("{prefix}{inner}")
            } else {
                format!("{prefix}.{inner}")
            }
        };
        match self {
            ConfigError::Parse { path, message } => ConfigError::Parse {
                path: join(path),
                message,
            },
            ConfigError::Invalid { field, reason } => ConfigError::Invalid {
                field: join(field),
                reason,
            },
        }
    }
}

/// The rules a configuration value must follow beyond what its type says.
pub trait Validate {
    /// Checks the value; the error names the offending field relative to this value.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Reads one JSON object into `T`, naming the field path in any error. The document must be an
/// object (serde would otherwise also fill a struct from an array); trailing characters after it
/// are an error.
pub fn parse_json<T: DeserializeOwned>(json: &[u8]) -> Result<T, ConfigError> {
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => {
            return Err(ConfigError::Parse {
                path: String::new(),
                message: "expected a JSON object".to_string(),
            })
        }
        // Let serde_json report the empty document ("EOF while parsing a value").
        None => {}
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Parse {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    de.end().map_err(|e| ConfigError::Parse {
        path: String::new(),
        message: e.to_string(),
    })?;
    Ok(value)
}

/// Reads a JSON document into `T` and validates it.
pub fn parse_and_validate<T: DeserializeOwned + Validate>(json: &[u8]) -> Result<T, ConfigError> {
    let value: T = parse_json(json)?;
    value.validate()?;
    Ok(value)
}

/// Reads a `--config-file` document. This only parses; call [`Validate::validate`] on the
/// result before building a VM from it.
pub fn parse_vm_config(json: &str) -> Result<VmConfig, ConfigError> {
    parse_json(json.as_bytes())
}

/// Deserializes `null` (or an absent key, with `#[serde(default)]`) as `T::default()`.
fn null_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

/// The whole VM description: Firecracker's `--config-file` document, and what
/// `GET /vm/config` returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel, initrd and command line. Required to start a VM.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSourceConfig>,
    /// vCPUs and memory; absent or `null` means the defaults (1 vCPU, 128 MiB).
    #[serde(
        rename = "machine-config",
        default,
        deserialize_with = "null_as_default"
    )]
    pub machine_config: MachineConfig,
    /// Block devices, in attach order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub drives: Vec<DriveConfig>,
    /// Network devices, in attach order.
    #[serde(
        rename = "network-interfaces",
        default,
        deserialize_with = "null_as_default"
    )]
    pub network_interfaces: Vec<NetConfig>,
    /// The vsock device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// The virtio-rng device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyConfig>,
    /// Logger settings (Firecracker's; accepted and validated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerConfig>,
    /// Metrics settings (Firecracker's; accepted and validated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
    /// The balloon device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
    /// Firecracker's custom CPU template: the path of its JSON file ([`CustomCpuTemplate`]),
    /// read when the VM is built.
    #[serde(
        rename = "cpu-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_config: Option<PathBuf>,
    /// A custom CPU template given as a body of `PUT /cpu-config`; it takes the place of
    /// `cpu_config`'s file.
    #[serde(skip)]
    pub custom_cpu_template: Option<CustomCpuTemplate>,
    /// MMDS: its version, address and the interfaces the guest reaches it on.
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mmds_config: Option<MmdsConfig>,
    /// Firecracker's pmem devices: not implemented, must be absent, `null` or `[]` (as
    /// `GET /vm/config` writes it).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub pmem: Vec<serde_json::Value>,
    /// Firecracker's memory hotplug (virtio-mem): not implemented, must be absent or `null`.
    #[serde(
        rename = "memory-hotplug",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_hotplug: Option<serde_json::Value>,
    /// cairn-only settings.
    #[serde(default, deserialize_with = "null_as_default")]
    pub cairn: CairnConfig,
}

/// Settings only cairn has, under the `"cairn"` key of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CairnConfig {
    /// Where checkpoints are written; each checkpoint is a sub-directory named after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Put guest RAM in an unlinked file in this tmpfs directory, mapped shared, so that a Full
    /// snapshot into the same tmpfs hands the RAM file over instead of copying it (docs/vmm.md,
    /// "Guest RAM in a tmpfs directory"). Off by default; also `CAIRN_GUEST_MEMORY_DIR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_memory_dir: Option<PathBuf>,
}

impl Validate for CairnConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(dir) = &self.checkpoint_dir {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError::invalid("checkpoint_dir", "must not be empty"));
            }
        }
        if let Some(dir) = &self.guest_memory_dir {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError::invalid(
                    "guest_memory_dir",
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}

impl Validate for VmConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.boot_source.is_none() {
            return Err(ConfigError::invalid(
                "boot-source",
                "missing: a kernel_image_path is required to start a VM",
            ));
        }
        self.validate_so_far()
    }
}

impl VmConfig {
    /// The rules of [`Validate::validate`] that hold for a configuration still being built
    /// through the API: everything but the required `boot-source`. The VMM checks each PUT
    /// against it, so a refused PUT leaves the last valid configuration in place.
    pub fn validate_so_far(&self) -> Result<(), ConfigError> {
        if let Some(boot) = &self.boot_source {
            boot.validate().map_err(|e| e.within("boot-source"))?;
        }
        self.machine_config
            .validate()
            .map_err(|e| e.within("machine-config"))?;
        if self.machine_config.huge_pages.is_huge() && self.cairn.checkpoint_dir.is_some() {
            return Err(ConfigError::invalid(
                "machine-config.huge_pages",
                "\"2M\" cannot be combined with a checkpoint directory (cairn.checkpoint_dir, \
                 --checkpoint-dir): named checkpoints restore guest memory by mapping their layer \
                 files, which cannot be huge pages",
            ));
        }
        if self.machine_config.huge_pages.is_huge() && self.cairn.guest_memory_dir.is_some() {
            return Err(ConfigError::invalid(
                "machine-config.huge_pages",
                "\"2M\" cannot be combined with cairn.guest_memory_dir: guest RAM in a tmpfs \
                 file is on 4 KiB pages",
            ));
        }

        let mut drive_ids = HashSet::new();
        let mut root_drive: Option<&str> = None;
        for (i, drive) in self.drives.iter().enumerate() {
            let at = |e: ConfigError| e.within(&format!("drives[{i}]"));
            drive.validate().map_err(at)?;
            if !drive_ids.insert(drive.drive_id.as_str()) {
                return Err(at(ConfigError::invalid(
                    "drive_id",
                    format!("duplicate drive id `{}`", drive.drive_id),
                )));
            }
            if drive.is_root_device {
                if let Some(other) = root_drive {
                    return Err(at(ConfigError::invalid(
                        "is_root_device",
                        format!("only one root device is allowed; `{other}` is already root"),
                    )));
                }
                root_drive = Some(&drive.drive_id);
            }
        }

        let mut iface_ids = HashSet::new();
        let mut host_devs = HashSet::new();
        let mut macs = HashSet::new();
        for (i, net) in self.network_interfaces.iter().enumerate() {
            let at = |e: ConfigError| e.within(&format!("network-interfaces[{i}]"));
            net.validate().map_err(at)?;
            if !iface_ids.insert(net.iface_id.as_str()) {
                return Err(at(ConfigError::invalid(
                    "iface_id",
                    format!("duplicate interface id `{}`", net.iface_id),
                )));
            }
            if !host_devs.insert(net.host_dev_name.as_str()) {
                return Err(at(ConfigError::invalid(
                    "host_dev_name",
                    format!("tap `{}` is used by two interfaces", net.host_dev_name),
                )));
            }
            if let Some(mac) = net.mac() {
                if !macs.insert(mac) {
                    return Err(at(ConfigError::invalid(
                        "guest_mac",
                        "the same MAC address is used by two interfaces",
                    )));
                }
            }
        }

        if let Some(vsock) = &self.vsock {
            vsock.validate().map_err(|e| e.within("vsock"))?;
        }
        if let Some(entropy) = &self.entropy {
            entropy.validate().map_err(|e| e.within("entropy"))?;
        }
        if let Some(balloon) = &self.balloon {
            balloon.validate().map_err(|e| e.within("balloon"))?;
            // Firecracker's rules: the balloon fits in guest memory, and not on huge pages.
            if balloon.amount_mib as usize > self.machine_config.mem_size_mib {
                return Err(ConfigError::invalid(
                    "balloon.amount_mib",
                    format!(
                        "Amount of pages requested is too large: {} MiB is more than \
                         machine-config.mem_size_mib ({} MiB)",
                        balloon.amount_mib, self.machine_config.mem_size_mib
                    ),
                ));
            }
            if self.machine_config.huge_pages.is_huge() {
                return Err(ConfigError::invalid(
                    "balloon",
                    "huge pages support is incompatible with memory ballooning \
                     (machine-config.huge_pages)",
                ));
            }
        }
        if let Some(logger) = &self.logger {
            logger.validate().map_err(|e| e.within("logger"))?;
        }
        if let Some(metrics) = &self.metrics {
            metrics.validate().map_err(|e| e.within("metrics"))?;
        }
        if !self.pmem.is_empty() {
            return Err(ConfigError::invalid(
                "pmem",
                "pmem devices are not supported by cairn; remove them or set it to []",
            ));
        }
        if let Some(mmds) = &self.mmds_config {
            mmds.validate().map_err(|e| e.within("mmds-config"))?;
            if !mmds
                .network_interfaces
                .iter()
                .all(|id| iface_ids.contains(id.as_str()))
            {
                return Err(ConfigError::invalid(
                    "mmds-config.network_interfaces",
                    UNKNOWN_MMDS_INTERFACE,
                ));
            }
        }
        for (name, value) in [("memory-hotplug", &self.memory_hotplug)] {
            if value.is_some() {
                return Err(ConfigError::invalid(
                    name,
                    "not supported by cairn; remove it or set it to null",
                ));
            }
        }
        self.cairn.validate().map_err(|e| e.within("cairn"))?;
        Ok(())
    }
}

/// Longest drive or interface id Firecracker accepts.
pub const MAX_ID_LEN: usize = 64;

/// Firecracker's rule for drive and interface ids: 1 to 64 characters, each alphanumeric or `_`.
pub fn validate_id(field: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() {
        return Err(ConfigError::invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(ConfigError::invalid(
            field,
            format!("`{id}` is longer than {MAX_ID_LEN} characters"),
        ));
    }
    if !id.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
        return Err(ConfigError::invalid(
            field,
            format!("`{id}` may contain only letters, digits and `_`"),
        ));
    }
    Ok(())
}

/// Checks that a path field is not empty.
fn validate_path(field: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(field, "must not be empty"));
    }
    Ok(())
}
