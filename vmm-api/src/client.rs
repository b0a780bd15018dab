//! A blocking client for cairn-vmm's REST API on its Unix socket.
//!
//! One request per connection (`Connection: close`), so a client holds no state and may be
//! shared between threads. Every call has a deadline (the whole exchange, not each read), the
//! reply is read up to [`MAX_REPLY_SIZE`], and every failure is a [`ClientError`]: the VMM's
//! refusal carries its `fault_message`; a reply that does not fit its type is an error too.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{
    ActionType, BalloonConfig, BalloonHintingStart, BalloonHintingStatus, BalloonStatsReply,
    BalloonStatsUpdate, BalloonUpdate, BootSourceConfig, CheckpointCreate, CheckpointRestore,
    CreateSnapshotParams, DriveConfig, DriveUpdate, EntropyConfig, InstanceActionInfo,
    LoadSnapshotParams, LoggerConfig, MachineConfig, MachineConfigUpdate, MetricsConfig, NetConfig,
    NetworkInterfaceUpdate, SerialConfig, VmState, VmStateUpdate, VsockConfig,
};
use crate::reply::{CheckpointInfo, Fault, FullVmConfig, InstanceInfo};

/// Largest reply read (head and body); a longer one is [`ClientError::TooLarge`].
pub const MAX_REPLY_SIZE: usize = 4 << 20;

/// Deadline of a call when none is set with [`Client::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing accepts connections on the socket.
    #[error("VMM API {}: cannot connect", socket.display())]
    Connect {
        /// The API socket.
        socket: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The exchange broke off, or ran past its deadline (`source.kind()` is then `TimedOut`
    /// or `WouldBlock`).
    #[error("VMM API {method} {path}")]
    Io {
        /// HTTP method.
        method: String,
        /// Request path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The reply was longer than [`MAX_REPLY_SIZE`].
    #[error("VMM API {method} {path}: reply longer than {MAX_REPLY_SIZE} bytes")]
    TooLarge {
        /// HTTP method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The reply was not HTTP/1.1 as the VMM writes it.
    #[error("VMM API {method} {path}: malformed reply ({reason}): {start:?}")]
    Malformed {
        /// HTTP method.
        method: String,
        /// Request path.
        path: String,
        /// What is wrong.
        reason: String,
        /// The start of the reply.
        start: String,
    },
    /// The VMM refused the request (any status outside 2xx).
    #[error("VMM refused {method} {path} ({status}): {message}")]
    Refused {
        /// HTTP method.
        method: String,
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The reply's `fault_message`, or its body when it has none.
        message: String,
    },
    /// A 2xx reply whose body does not fit the expected type (a missing field, say).
    #[error("VMM API {method} {path}: unexpected reply: {reason}")]
    Decode {
        /// HTTP method.
        method: String,
        /// Request path.
        path: String,
        /// serde's description, naming the field.
        reason: String,
    },
    /// The request body could not be serialized.
    #[error("VMM API {method} {path}: cannot serialize the request: {source}")]
    Encode {
        /// HTTP method.
        method: String,
        /// Request path.
        path: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status of a refusal, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A reply of any status, as [`Client::send`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// HTTP status.
    pub status: u16,
    /// The body (empty for 204).
    pub body: Vec<u8>,
}

impl RawReply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client of one VMM's API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the API on `socket`, with [`DEFAULT_TIMEOUT`] per call.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with `timeout` as every call's deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Does anything accept connections on the socket?
    pub fn answers(&self) -> bool {
        UnixStream::connect(&self.socket).is_ok()
    }

    /// Polls until the socket accepts connections, for at most `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(_) => return Ok(()),
                Err(source) if Instant::now() >= deadline => {
                    return Err(ClientError::Connect {
                        socket: self.socket.clone(),
                        source,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Sends one request with a raw body and returns the reply whatever its status: for
    /// tests of the API itself and for calls this client has no method for.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<RawReply, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let io_err = |source| ClientError::Io {
            method: method.to_string(),
            path: path.to_string(),
            source,
        };
        let mut s = UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        s.set_write_timeout(Some(remaining(deadline)))
            .map_err(io_err)?;
        let body = body.unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        s.write_all(&request).map_err(io_err)?;
        let reply = read_reply(&mut s, deadline).map_err(|e| match e {
            ReadError::Io(source) => io_err(source),
            ReadError::TooLarge => ClientError::TooLarge {
                method: method.to_string(),
                path: path.to_string(),
            },
        })?;
        parse_reply(&reply).map_err(|reason| ClientError::Malformed {
            method: method.to_string(),
            path: path.to_string(),
            reason,
            start: String::from_utf8_lossy(&reply[..reply.len().min(200)]).into_owned(),
        })
    }

    /// Sends `body` as JSON; returns the body of a 2xx reply, or [`ClientError::Refused`].
    fn call<B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<Vec<u8>, ClientError> {
        let json =
            body.map(serde_json::to_vec)
                .transpose()
                .map_err(|source| ClientError::Encode {
                    method: method.to_string(),
                    path: path.to_string(),
                    source,
                })?;
        let reply = self.send(method, path, json.as_deref())?;
        if (200..300).contains(&reply.status) {
            return Ok(reply.body);
        }
        let message = match serde_json::from_slice::<Fault>(&reply.body) {
            Ok(fault) => fault.fault_message,
            Err(_) => reply.text(),
        };
        Err(ClientError::Refused {
            method: method.to_string(),
            path: path.to_string(),
            status: reply.status,
            message,
        })
    }

    /// A call whose success carries no body (204).
    fn call_empty<B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<(), ClientError> {
        self.call(method, path, Some(body)).map(drop)
    }

    /// A call whose success carries a `T`.
    fn call_typed<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = self.call(method, path, body)?;
        decode(&bytes).map_err(|reason| ClientError::Decode {
            method: method.to_string(),
            path: path.to_string(),
            reason,
        })
    }

    /// `GET /`: the instance's id, state and version.
    pub fn describe(&self) -> Result<InstanceInfo, ClientError> {
        self.call_typed::<(), _>("GET", "/", None)
    }

    /// `GET /machine-config`.
    pub fn machine_config(&self) -> Result<MachineConfig, ClientError> {
        self.call_typed::<(), _>("GET", "/machine-config", None)
    }

    /// `GET /vm/config`: the whole configuration, with every key Firecracker's reply has.
    pub fn vm_config(&self) -> Result<FullVmConfig, ClientError> {
        self.call_typed::<(), _>("GET", "/vm/config", None)
    }

    /// `PUT /machine-config` (before boot).
    pub fn put_machine_config(&self, config: &MachineConfig) -> Result<(), ClientError> {
        self.call_empty("PUT", "/machine-config", config)
    }

    /// `PATCH /machine-config` (before boot).
    pub fn patch_machine_config(&self, update: &MachineConfigUpdate) -> Result<(), ClientError> {
        self.call_empty("PATCH", "/machine-config", update)
    }

    /// `PUT /boot-source` (before boot).
    pub fn put_boot_source(&self, boot: &BootSourceConfig) -> Result<(), ClientError> {
        self.call_empty("PUT", "/boot-source", boot)
    }

    /// `PUT /drives/{drive_id}` (before boot).
    pub fn put_drive(&self, drive: &DriveConfig) -> Result<(), ClientError> {
        self.call_empty("PUT", &format!("/drives/{}", drive.drive_id), drive)
    }

    /// `PUT /network-interfaces/{iface_id}` (before boot).
    pub fn put_network_interface(&self, net: &NetConfig) -> Result<(), ClientError> {
        let path = format!("/network-interfaces/{}", net.iface_id);
        self.call_empty("PUT", &path, net)
    }

    /// `PATCH /drives/{drive_id}` (after boot): a new backing file and/or rate limiter.
    pub fn patch_drive(&self, update: &DriveUpdate) -> Result<(), ClientError> {
        self.call_empty("PATCH", &format!("/drives/{}", update.drive_id), update)
    }

    /// `PATCH /network-interfaces/{iface_id}` (after boot): rate limiter updates.
    pub fn patch_network_interface(
        &self,
        update: &NetworkInterfaceUpdate,
    ) -> Result<(), ClientError> {
        let path = format!("/network-interfaces/{}", update.iface_id);
        self.call_empty("PATCH", &path, update)
    }

    /// `PUT /vsock` (before boot).
    pub fn put_vsock(&self, vsock: &VsockConfig) -> Result<(), ClientError> {
        self.call_empty("PUT", "/vsock", vsock)
    }

    /// `PUT /entropy` (before boot).
    pub fn put_entropy(&self, entropy: &EntropyConfig) -> Result<(), ClientError> {
        self.call_empty("PUT", "/entropy", entropy)
    }

    /// `PUT /balloon` (before boot).
    pub fn put_balloon(&self, balloon: &BalloonConfig) -> Result<(), ClientError> {
        self.call_empty("PUT", "/balloon", balloon)
    }

    /// `GET /balloon`: the balloon's configuration, with its current target.
    pub fn balloon(&self) -> Result<BalloonConfig, ClientError> {
        self.call_typed::<(), _>("GET", "/balloon", None)
    }

    /// `PATCH /balloon` (after boot): a new target size.
    pub fn patch_balloon(&self, update: &BalloonUpdate) -> Result<(), ClientError> {
        self.call_empty("PATCH", "/balloon", update)
    }

    /// `GET /balloon/statistics` (after boot, statistics on).
    pub fn balloon_statistics(&self) -> Result<BalloonStatsReply, ClientError> {
        self.call_typed::<(), _>("GET", "/balloon/statistics", None)
    }

    /// `PATCH /balloon/statistics` (after boot): a new polling interval.
    pub fn patch_balloon_statistics(&self, update: &BalloonStatsUpdate) -> Result<(), ClientError> {
        self.call_empty("PATCH", "/balloon/statistics", update)
    }

    /// `PATCH /balloon/hinting/start` (after boot, hinting on): start a free page hinting run.
    pub fn start_balloon_hinting(&self, start: &BalloonHintingStart) -> Result<(), ClientError> {
        self.call_empty("PATCH", "/balloon/hinting/start", start)
    }

    /// `GET /balloon/hinting/status` (after boot, hinting on).
    pub fn balloon_hinting_status(&self) -> Result<BalloonHintingStatus, ClientError> {
        self.call_typed::<(), _>("GET", "/balloon/hinting/status", None)
    }

    /// `PATCH /balloon/hinting/stop` (after boot, hinting on): end the run; the guest takes its
    /// hinted pages back.
    pub fn stop_balloon_hinting(&self) -> Result<(), ClientError> {
        self.call::<()>("PATCH", "/balloon/hinting/stop", None)
            .map(drop)
    }

    /// `PUT /serial` (before boot): the guest console's output file.
    pub fn put_serial(&self, serial: &SerialConfig) -> Result<(), ClientError> {
        self.call_empty("PUT", "/serial", serial)
    }

    /// `PUT /mmds/config` (before boot).
    pub fn put_mmds_config(&self, config: &crate::config::MmdsConfig) -> Result<(), ClientError> {
        self.call_empty("PUT", "/mmds/config", config)
    }

    /// `PUT /mmds`: replace the MMDS data store.
    pub fn put_mmds(&self, data: &serde_json::Value) -> Result<(), ClientError> {
        self.call_empty("PUT", "/mmds", data)
    }

    /// `PATCH /mmds`: merge `patch` into the data store (RFC 7396).
    pub fn patch_mmds(&self, patch: &serde_json::Value) -> Result<(), ClientError> {
        self.call_empty("PATCH", "/mmds", patch)
    }

    /// `GET /mmds`: the whole data store (`{}` while empty).
    pub fn mmds(&self) -> Result<serde_json::Value, ClientError> {
        self.call_typed::<(), _>("GET", "/mmds", None)
    }

    /// `PUT /logger`.
    pub fn put_logger(&self, logger: &LoggerConfig) -> Result<(), ClientError> {
        self.call_empty("PUT", "/logger", logger)
    }

    /// `PUT /metrics`.
    pub fn put_metrics(&self, metrics: &MetricsConfig) -> Result<(), ClientError> {
        self.call_empty("PUT", "/metrics", metrics)
    }

    /// `PUT /actions` with `action`.
    pub fn action(&self, action: ActionType) -> Result<(), ClientError> {
        let body = InstanceActionInfo {
            action_type: action,
        };
        self.call_empty("PUT", "/actions", &body)
    }

    /// `PUT /actions` `InstanceStart`: build and boot the configured VM.
    pub fn instance_start(&self) -> Result<(), ClientError> {
        self.action(ActionType::InstanceStart)
    }

    /// `PATCH /vm` to `state`.
    pub fn set_state(&self, state: VmState) -> Result<(), ClientError> {
        self.call_empty("PATCH", "/vm", &VmStateUpdate { state })
    }

    /// `PATCH /vm` `Paused`.
    pub fn pause(&self) -> Result<(), ClientError> {
        self.set_state(VmState::Paused)
    }

    /// `PATCH /vm` `Resumed`.
    pub fn resume(&self) -> Result<(), ClientError> {
        self.set_state(VmState::Resumed)
    }

    /// `PUT /snapshot/create` (VM paused).
    pub fn snapshot_create(&self, params: &CreateSnapshotParams) -> Result<(), ClientError> {
        self.call_empty("PUT", "/snapshot/create", params)
    }

    /// `PUT /snapshot/load` (before boot).
    pub fn snapshot_load(&self, params: &LoadSnapshotParams) -> Result<(), ClientError> {
        self.call_empty("PUT", "/snapshot/load", params)
    }

    /// cairn: `PUT /checkpoints`, checkpoint the running VM.
    pub fn create_checkpoint(
        &self,
        params: &CheckpointCreate,
    ) -> Result<CheckpointInfo, ClientError> {
        self.call_typed("PUT", "/checkpoints", Some(params))
    }

    /// cairn: `GET /checkpoints`.
    pub fn list_checkpoints(&self) -> Result<Vec<CheckpointInfo>, ClientError> {
        self.call_typed::<(), _>("GET", "/checkpoints", None)
    }

    /// cairn: `PUT /checkpoints/restore`: the running VM (if any) is replaced.
    pub fn restore_checkpoint(&self, params: &CheckpointRestore) -> Result<(), ClientError> {
        self.call_empty("PUT", "/checkpoints/restore", params)
    }

    /// cairn: `DELETE /checkpoints/{name}`.
    pub fn delete_checkpoint(&self, name: &str) -> Result<(), ClientError> {
        self.call::<()>("DELETE", &format!("/checkpoints/{name}"), None)
            .map(drop)
    }
}

fn remaining(deadline: Instant) -> Duration {
    // A zero timeout means "none" to the socket; one microsecond fails at once instead.
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_micros(1))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

enum ReadError {
    Io(io::Error),
    TooLarge,
}

/// Whether `reply` already holds a whole HTTP reply: its head, and then its `Content-Length`
/// bytes of body (or none for a 1xx, 204 or 304). A reply without a length ends at the close.
fn reply_complete(reply: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(reply) else {
        return false;
    };
    if matches!(parsed.code, Some(100..=199 | 204 | 304)) {
        return true;
    }
    parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| reply.len() >= head_len.saturating_add(n))
}

/// Reads until the reply is complete (Firecracker keeps the connection open after it, whatever
/// `Connection: close` says) or the VMM closes the connection, the deadline passes, or more than
/// [`MAX_REPLY_SIZE`] arrived.
fn read_reply(s: &mut UnixStream, deadline: Instant) -> Result<Vec<u8>, ReadError> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if reply_complete(&reply) {
            return Ok(reply);
        }
        if Instant::now() >= deadline {
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete reply before the deadline",
            )));
        }
        s.set_read_timeout(Some(remaining(deadline)))
            .map_err(ReadError::Io)?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(reply),
            Ok(n) => {
                if reply.len() + n > MAX_REPLY_SIZE {
                    return Err(ReadError::TooLarge);
                }
                reply.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// Splits a complete `Connection: close` reply into status and body; the body must be exactly
/// `Content-Length` bytes when that header is present.
fn parse_reply(reply: &[u8]) -> Result<RawReply, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(reply) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the reply ends inside its head".into()),
        Err(e) => return Err(e.to_string()),
    };
    let status = parsed.code.ok_or("no status code")?;
    let body = &reply[head_len..];
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("bad Content-Length")
        })
        .transpose()?;
    let body = match length {
        Some(n) if n == body.len() => body,
        Some(n) if n < body.len() => &body[..n],
        Some(n) => return Err(format!("{} of {n} body bytes", body.len())),
        None => body,
    };
    Ok(RawReply {
        status,
        body: body.to_vec(),
    })
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
