//! The REST API: Firecracker's HTTP/1.1-over-Unix-socket interface, plus cairn's checkpoints.
//!
//! Three layers, each testable alone:
//! - [`http`]: framing. Finds request boundaries with `httparse` (headers capped at
//!   [`http::MAX_HEADER_SIZE`], bodies at [`http::MAX_BODY_SIZE`]) and writes responses.
//! - [`routes`]: turns method, path and body into an [`ApiRequest`], or into the 400 response
//!   Firecracker would give. Bodies are parsed with [`crate::config::parse_json`] and validated,
//!   so every error names the field.
//! - [`server`]: [`ApiServer`], one thread with an epoll loop over the listening socket and its
//!   connections (keep-alive and pipelining included). Each request goes to the VMM thread over
//!   a channel, with an EventFd written to wake the VMM's event loop, and the server waits for
//!   the [`ApiResponse`].
//!
//! # The contract with the VMM thread
//! ```no_run
//! use std::sync::mpsc;
//! use cairn_vmm::api::{ApiRequest, ApiResponse, ApiServer};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! // As early as possible in main: after bind() returns, clients can connect.
//! let server = ApiServer::bind("/tmp/fc.sock")?;
//! let (tx, rx) = mpsc::channel();
//! let wake = EventFd::new(EFD_NONBLOCK)?;
//! server.spawn(tx, wake.try_clone()?)?;
//! // In the event loop, when `wake` is readable:
//! let _ = wake.read();
//! while let Ok((request, reply)) = rx.try_recv() {
//!     let response = match request {
//!         ApiRequest::GetMachineConfig => ApiResponse::json(&cairn_vmm::config::MachineConfig::default()),
//!         _ => ApiResponse::bad_request("not implemented"),
//!     };
//!     let _ = reply.send(response);
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//! Payloads of [`ApiRequest`] are already validated on their own (`Validate::validate`);
//! rules that need VMM state are the handler's: a PATCHed machine config must be validated after
//! [`MachineConfig::apply`](crate::config::MachineConfig::apply), a drive must not become a
//! second root device, and so on.

pub mod http;
pub mod loaded_config;
pub mod routes;
pub mod server;
pub mod snapshot_load;
#[cfg(test)]
mod tests;

use serde::Serialize;

use crate::config::{
    BootSourceConfig, CheckpointCreate, CheckpointRestore, CreateSnapshotParams, DriveConfig,
    EntropyConfig, InstanceActionInfo, LoadSnapshotParams, LoggerConfig, MachineConfig,
    MachineConfigUpdate, MetricsConfig, NetConfig, VmStateUpdate, VsockConfig,
};

pub use cairn_vmm_api::reply::{InstanceInfo, InstanceState};
pub use server::ApiServer;

/// One API call, decoded and validated, for the VMM thread to carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    /// `GET /`: answer with [`InstanceInfo`].
    GetInstanceInfo,
    /// `GET /version`: answer with `{"firecracker_version": ...}`.
    GetVersion,
    /// `GET /machine-config`: answer with the current [`MachineConfig`].
    GetMachineConfig,
    /// `GET /vm/config`: answer with the whole [`crate::config::VmConfig`].
    GetVmConfig,
    /// `PUT /machine-config` (before boot).
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config` (before boot): validate the merged result.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /boot-source` (before boot).
    PutBootSource(BootSourceConfig),
    /// `PUT /drives/{drive_id}`: add or replace the drive with that id (before boot).
    PutDrive(DriveConfig),
    /// `PUT /network-interfaces/{iface_id}`: add or replace (before boot).
    PutNetworkInterface(NetConfig),
    /// `PATCH /drives/{drive_id}` (after boot): new backing file and/or rate limiter.
    PatchDrive(crate::config::DriveUpdate),
    /// `PATCH /network-interfaces/{iface_id}` (after boot): rate limiter updates.
    PatchNetworkInterface(crate::config::NetworkInterfaceUpdate),
    /// `PUT /vsock` (before boot).
    PutVsock(VsockConfig),
    /// `PUT /entropy` (before boot).
    PutEntropy(EntropyConfig),
    /// `PUT /balloon` (before boot).
    PutBalloon(crate::config::BalloonConfig),
    /// `GET /balloon`: the balloon's configuration.
    GetBalloon,
    /// `PATCH /balloon` (after boot): a new target.
    PatchBalloon(crate::config::BalloonUpdate),
    /// `GET /balloon/statistics` (after boot).
    GetBalloonStats,
    /// `PATCH /balloon/statistics` (after boot): a new polling interval.
    PatchBalloonStats(crate::config::BalloonStatsUpdate),
    /// `PATCH /balloon/hinting/start` (after boot): start a free page hinting run.
    StartBalloonHinting(crate::config::BalloonHintingStart),
    /// `GET /balloon/hinting/status` (after boot).
    GetBalloonHintingStatus,
    /// `PATCH /balloon/hinting/stop` (after boot): end the hinting run.
    StopBalloonHinting,
    /// `PUT /cpu-config` (before boot): a custom CPU template.
    PutCpuConfig(crate::config::CustomCpuTemplate),
    /// `PUT /serial` (before boot): console output to a file.
    PutSerial(crate::config::SerialConfig),
    /// `PUT /mmds/config` (before boot).
    PutMmdsConfig(crate::config::MmdsConfig),
    /// `PUT /mmds`: replace the MMDS data store (any JSON value).
    PutMmds(serde_json::Value),
    /// `PATCH /mmds`: merge into the data store (RFC 7396).
    PatchMmds(serde_json::Value),
    /// `GET /mmds`: the data store.
    GetMmds,
    /// `PUT /logger`.
    PutLogger(LoggerConfig),
    /// `PUT /metrics`.
    PutMetrics(MetricsConfig),
    /// `PUT /actions`: InstanceStart, SendCtrlAltDel, FlushMetrics.
    Action(InstanceActionInfo),
    /// `PATCH /vm`: pause or resume.
    PatchVm(VmStateUpdate),
    /// `PUT /snapshot/create` (VM paused).
    CreateSnapshot(CreateSnapshotParams),
    /// `PUT /snapshot/load` (before boot).
    LoadSnapshot(LoadSnapshotParams),
    /// cairn: `PUT /checkpoints`, checkpoint the running VM. Answer with JSON naming it.
    CreateCheckpoint(CheckpointCreate),
    /// cairn: `GET /checkpoints`. Answer with a JSON list.
    ListCheckpoints,
    /// cairn: `PUT /checkpoints/restore`.
    RestoreCheckpoint(CheckpointRestore),
    /// cairn: `DELETE /checkpoints/{name}`; the name is already checked with
    /// [`crate::config::validate_checkpoint_name`].
    DeleteCheckpoint(String),
}

impl ApiRequest {
    /// A short name for logs and metrics, e.g. `PutMachineConfig`.
    pub fn name(&self) -> &'static str {
        match self {
            ApiRequest::GetInstanceInfo => "GetInstanceInfo",
            ApiRequest::GetVersion => "GetVersion",
            ApiRequest::GetMachineConfig => "GetMachineConfig",
            ApiRequest::GetVmConfig => "GetVmConfig",
            ApiRequest::PutMachineConfig(_) => "PutMachineConfig",
            ApiRequest::PatchMachineConfig(_) => "PatchMachineConfig",
            ApiRequest::PutBootSource(_) => "PutBootSource",
            ApiRequest::PutDrive(_) => "PutDrive",
            ApiRequest::PutNetworkInterface(_) => "PutNetworkInterface",
            ApiRequest::PatchDrive(_) => "PatchDrive",
            ApiRequest::PatchNetworkInterface(_) => "PatchNetworkInterface",
            ApiRequest::PutVsock(_) => "PutVsock",
            ApiRequest::PutEntropy(_) => "PutEntropy",
            ApiRequest::PutBalloon(_) => "PutBalloon",
            ApiRequest::GetBalloon => "GetBalloon",
            ApiRequest::PatchBalloon(_) => "PatchBalloon",
            ApiRequest::GetBalloonStats => "GetBalloonStats",
            ApiRequest::PatchBalloonStats(_) => "PatchBalloonStats",
            ApiRequest::StartBalloonHinting(_) => "StartBalloonHinting",
            ApiRequest::GetBalloonHintingStatus => "GetBalloonHintingStatus",
            ApiRequest::StopBalloonHinting => "StopBalloonHinting",
            ApiRequest::PutCpuConfig(_) => "PutCpuConfig",
            ApiRequest::PutSerial(_) => "PutSerial",
            ApiRequest::PutMmdsConfig(_) => "PutMmdsConfig",
            ApiRequest::PutMmds(_) => "PutMmds",
            ApiRequest::PatchMmds(_) => "PatchMmds",
            ApiRequest::GetMmds => "GetMmds",
            ApiRequest::PutLogger(_) => "PutLogger",
            ApiRequest::PutMetrics(_) => "PutMetrics",
            ApiRequest::Action(_) => "Action",
            ApiRequest::PatchVm(_) => "PatchVm",
            ApiRequest::CreateSnapshot(_) => "CreateSnapshot",
            ApiRequest::LoadSnapshot(_) => "LoadSnapshot",
            ApiRequest::CreateCheckpoint(_) => "CreateCheckpoint",
            ApiRequest::ListCheckpoints => "ListCheckpoints",
            ApiRequest::RestoreCheckpoint(_) => "RestoreCheckpoint",
            ApiRequest::DeleteCheckpoint(_) => "DeleteCheckpoint",
        }
    }
}

/// The VMM thread's answer to one [`ApiRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum ApiResponse {
    /// 204 No Content: done.
    Empty,
    /// 200 OK with this JSON body.
    Json(serde_json::Value),
    /// An error status (400 for a refused request, as Firecracker does; 500 for a VMM
    /// failure) with body `{"fault_message": message}`.
    Error {
        /// HTTP status code.
        status: u16,
        /// Human-readable reason.
        message: String,
    },
}

impl ApiResponse {
    /// 200 with `value` serialized; a 500 if it cannot be serialized.
    pub fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => ApiResponse::Json(v),
            Err(e) => ApiResponse::error(500, format!("cannot serialize the response: {e}")),
        }
    }

    /// An error response with `status`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        ApiResponse::Error {
            status,
            message: message.into(),
        }
    }

    /// 400 Bad Request, Firecracker's status for every refused request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiResponse::error(400, message)
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ApiResponse::Empty => 204,
            ApiResponse::Json(_) => 200,
            ApiResponse::Error { status, .. } => *status,
        }
    }

    /// The response body; `None` for 204.
    pub fn body(&self) -> Option<Vec<u8>> {
        match self {
            ApiResponse::Empty => None,
            ApiResponse::Json(v) => Some(v.to_string().into_bytes()),
            ApiResponse::Error { message, .. } => {
                let fault = cairn_vmm_api::Fault {
                    fault_message: message.clone(),
                };
                // A struct of one string always serializes.
                Some(serde_json::to_vec(&fault).unwrap_or_default())
            }
        }
    }
}
