//! `boot-source` and `machine-config`.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{validate_path, ConfigError, Validate};

/// Most vCPUs a VM may have (Firecracker's limit).
pub const MAX_VCPUS: u8 = 32;

/// Firecracker's `boot-source` / `PUT /boot-source`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// The guest kernel (ELF vmlinux, or bzImage).
    pub kernel_image_path: PathBuf,
    /// Optional initrd / initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line; the VMM's default is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

impl Validate for BootSourceConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_path("kernel_image_path", &self.kernel_image_path)?;
        if let Some(initrd) = &self.initrd_path {
            validate_path("initrd_path", initrd)?;
        }
        if let Some(args) = &self.boot_args {
            if args.contains('\0') {
                return Err(ConfigError::invalid(
                    "boot_args",
                    "must not contain NUL bytes",
                ));
            }
        }
        Ok(())
    }
}

/// Firecracker's static CPU template names (`machine-config.cpu_template`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CpuTemplate {
    /// No template: the host's CPUID, lightly normalised.
    #[default]
    None,
    /// Intel: mimics an AWS T2 instance.
    T2,
    /// Intel: T2 made safe for snapshot migration across hosts.
    T2S,
    /// Intel: mimics an AWS C3 instance.
    C3,
    /// Intel: T2 for Cascade Lake and newer.
    T2CL,
    /// AMD: T2-like.
    T2A,
    /// ARM Neoverse V1 (aarch64).
    V1N1,
}

/// The CPU templates cairn implements; `validate()` rejects the others.
pub const IMPLEMENTED_CPU_TEMPLATES: &[CpuTemplate] = &[
    CpuTemplate::None,
    CpuTemplate::T2,
    CpuTemplate::C3,
    CpuTemplate::T2S,
    CpuTemplate::T2CL,
];

impl CpuTemplate {
    /// The name used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            CpuTemplate::None => "None",
            CpuTemplate::T2 => "T2",
            CpuTemplate::T2S => "T2S",
            CpuTemplate::C3 => "C3",
            CpuTemplate::T2CL => "T2CL",
            CpuTemplate::T2A => "T2A",
            CpuTemplate::V1N1 => "V1N1",
        }
    }

    /// Whether cairn implements this template.
    pub fn is_implemented(self) -> bool {
        IMPLEMENTED_CPU_TEMPLATES.contains(&self)
    }

    fn validate(self, field: &str) -> Result<(), ConfigError> {
        if self.is_implemented() {
            return Ok(());
        }
        let supported: Vec<&str> = IMPLEMENTED_CPU_TEMPLATES.iter().map(|t| t.name()).collect();
        Err(ConfigError::invalid(
            field,
            format!(
                "CPU template {} is not implemented by cairn (supported: {})",
                self.name(),
                supported.join(", ")
            ),
        ))
    }
}

impl fmt::Display for CpuTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Firecracker's `machine-config.huge_pages`: the page size backing guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary 4 KiB pages.
    #[default]
    None,
    /// 2 MiB hugetlbfs pages, from the host's pool (`/proc/sys/vm/nr_hugepages`); guest memory
    /// must be a multiple of 2 MiB.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

impl HugePages {
    /// The page size in bytes.
    pub fn page_size(self) -> u64 {
        match self {
            HugePages::None => 4096,
            HugePages::Hugetlbfs2M => 2 << 20,
        }
    }

    /// Whether guest memory is on hugetlbfs pages.
    pub fn is_huge(self) -> bool {
        self != HugePages::None
    }
}

/// Firecracker's `machine-config` / `PUT /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs: 1 to 32; 1 or even when `smt` is on.
    pub vcpu_count: u8,
    /// Guest memory in MiB; more than 0.
    pub mem_size_mib: usize,
    /// Simultaneous multithreading (2 threads per core) as seen by the guest.
    #[serde(default)]
    pub smt: bool,
    /// Static CPU template; `None` and absent mean no template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// Track dirty pages (needed for diff snapshots and checkpoints).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Backing page size of guest memory.
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    /// Firecracker's defaults: 1 vCPU, 128 MiB, no SMT, no template.
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

impl MachineConfig {
    /// The template to apply, with `Some(CpuTemplate::None)` folded into `None`.
    pub fn cpu_template(&self) -> Option<CpuTemplate> {
        self.cpu_template.filter(|t| *t != CpuTemplate::None)
    }

    /// This configuration as a `PUT /machine-config` leaves it over `current`: every field as
    /// given (absent ones at their defaults), except that a PUT naming no CPU template keeps
    /// the current one, as Firecracker's does (its PUT becomes an update whose template is
    /// "unchanged" when the body has none).
    pub fn put_over(self, current: &MachineConfig) -> MachineConfig {
        MachineConfig {
            cpu_template: self.cpu_template.or(current.cpu_template),
            ..self
        }
    }

    /// This configuration with the fields set in `update` replaced (`PATCH /machine-config`).
    /// Validate the result.
    pub fn apply(&self, update: &MachineConfigUpdate) -> MachineConfig {
        MachineConfig {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            cpu_template: update.cpu_template.or(self.cpu_template),
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: update.huge_pages.unwrap_or(self.huge_pages),
        }
    }
}

fn validate_vcpu_count(count: u8) -> Result<(), ConfigError> {
    if count == 0 || count > MAX_VCPUS {
        return Err(ConfigError::invalid(
            "vcpu_count",
            format!("must be between 1 and {MAX_VCPUS}, got {count}"),
        ));
    }
    Ok(())
}

fn validate_mem_size(mib: usize) -> Result<(), ConfigError> {
    if mib == 0 {
        return Err(ConfigError::invalid(
            "mem_size_mib",
            "must be greater than 0",
        ));
    }
    Ok(())
}

/// Firecracker's rule: with huge pages, guest memory is a whole number of them.
fn validate_mem_size_for_pages(mib: usize, pages: HugePages) -> Result<(), ConfigError> {
    let page_mib = (pages.page_size() >> 20).max(1) as usize;
    if mib % page_mib != 0 {
        return Err(ConfigError::invalid(
            "mem_size_mib",
            format!("must be a multiple of {page_mib} with huge_pages \"2M\", got {mib}"),
        ));
    }
    Ok(())
}

impl Validate for MachineConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_vcpu_count(self.vcpu_count)?;
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 != 0 {
            return Err(ConfigError::invalid(
                "vcpu_count",
                format!(
                    "must be 1 or an even number when smt is enabled, got {}",
                    self.vcpu_count
                ),
            ));
        }
        validate_mem_size(self.mem_size_mib)?;
        if let Some(template) = self.cpu_template {
            template.validate("cpu_template")?;
        }
        validate_mem_size_for_pages(self.mem_size_mib, self.huge_pages)
    }
}

/// `PATCH /machine-config`: every field optional; see [`MachineConfig::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// New vCPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// New memory size in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<usize>,
    /// New SMT setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// New CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    /// New dirty-page tracking setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// New page size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl Validate for MachineConfigUpdate {
    /// Checks each field on its own; rules that combine fields (SMT and an odd vCPU count, the
    /// memory size and huge pages) need the merged result: validate `current.apply(&update)` too.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(count) = self.vcpu_count {
            validate_vcpu_count(count)?;
        }
        if let Some(mib) = self.mem_size_mib {
            validate_mem_size(mib)?;
        }
        if let Some(template) = self.cpu_template {
            template.validate("cpu_template")?;
        }
        if let (Some(mib), Some(pages)) = (self.mem_size_mib, self.huge_pages) {
            validate_mem_size_for_pages(mib, pages)?;
        }
        Ok(())
    }
}
