//! cairn-vmm's REST API as types, for anything that drives a VMM without linking it.
//!
//! - [`config`]: the request bodies (Firecracker's configuration types and cairn's
//!   checkpoints), with their `validate()` rules; the VMM parses its API bodies and
//!   `--config-file` with these very types.
//! - [`reply`]: the reply bodies ([`reply::InstanceInfo`], [`reply::CheckpointInfo`]...).
//!   A reply missing a field is an error, not a default.
//! - [`client`]: [`Client`], a blocking client over the VMM's Unix socket with a deadline per
//!   call, a bounded reply and typed errors ([`ClientError`]).
//!
//! ```no_run
//! use cairn_vmm_api::config::{BootSourceConfig, CheckpointCreate, MachineConfig};
//! use cairn_vmm_api::Client;
//!
//! let vmm = Client::new("/run/vm1/api.sock");
//! vmm.put_machine_config(&MachineConfig { vcpu_count: 2, mem_size_mib: 512, ..Default::default() })?;
//! vmm.put_boot_source(&BootSourceConfig {
//!     kernel_image_path: "/images/vmlinux".into(),
//!     ..Default::default()
//! })?;
//! vmm.instance_start()?;
//! let c = vmm.create_checkpoint(&CheckpointCreate { name: Some("c1".into()) })?;
//! println!("{} paused the guest for {} ms", c.name, c.pause_ms);
//! # Ok::<(), cairn_vmm_api::ClientError>(())
//! ```

pub mod client;
pub mod config;
mod full_config;
pub mod reply;

pub use client::{Client, ClientError, RawReply};
pub use reply::{CheckpointDisk, CheckpointInfo, Fault, InstanceInfo, InstanceState, VersionInfo};

/// The name of the file (in the VMM's checkpoint directory layout) that names the checkpoint
/// the active disk deltas sit on. The VMM owns the layout; embedders only read it.
pub const CHECKPOINT_HEAD_FILE: &str = "HEAD";
