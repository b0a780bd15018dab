//! cairn VMM library.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod arch;
pub mod balloon;
pub mod boot;
pub mod builder;
pub mod checkpoint;
pub mod cli;
pub use cairn_vmm_api::config;
pub mod controller;
pub mod device_manager;
pub mod device_settings;
pub mod device_update;
pub mod error;
pub mod event_loop;
pub mod host_limits;
pub mod logger;
pub mod machine;
pub mod metrics;
pub mod mmds;
pub mod preboot;
pub mod rate_limit;
pub mod runtime;
pub mod seccomp;
pub mod uring_disk;
pub mod vmgenid;
pub mod vstate;

pub use error::VmmError;

/// The Firecracker release whose API and command line cairn-vmm follows; `GET /version`
/// reports it as `firecracker_version`, so clients that check it take the features they expect.
pub const FIRECRACKER_API_VERSION: &str = "1.16.1";
