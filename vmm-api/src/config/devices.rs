//! `drives`, `network-interfaces`, `vsock` and `entropy`.
//!
//! Rate limiters (`rate_limiter` on drives, `rx_rate_limiter`/`tx_rate_limiter` on network
//! interfaces, `rate_limiter` on the entropy device) are Firecracker's [`RateLimiterConfig`] and
//! are enforced by the devices; so is the serial port's single byte bucket.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{validate_id, validate_path, ConfigError, Validate};

/// Firecracker's block device cache mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flush requests from the guest are acknowledged without syncing the backing file.
    #[default]
    Unsafe,
    /// Flush requests from the guest sync the backing file (`fdatasync`).
    Writeback,
}

/// Firecracker's block device I/O engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Synchronous reads and writes on the event-loop thread.
    #[default]
    Sync,
    /// Reads, writes and flushes through io_uring.
    Async,
}

/// Firecracker's `drives[]` item / `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Unique id: 1 to 64 letters, digits or `_`.
    pub drive_id: String,
    /// The backing file or block device on the host.
    pub path_on_host: PathBuf,
    /// Whether the kernel mounts this drive as `/` (`root=` on the command line).
    pub is_root_device: bool,
    /// Read-only drive; absent means `false`. See [`DriveConfig::read_only`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Root partition UUID, used for `root=PARTUUID=` when this is the root device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Cache mode; absent means `Unsafe`. See [`DriveConfig::cache_type`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// I/O engine; absent means `Sync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Limits on the drive's I/O (bytes and requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// Firecracker's vhost-user socket: not implemented, must be absent or `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

impl DriveConfig {
    /// A drive with Firecracker's defaults for everything but its id, file and role: read-write,
    /// no partition UUID, `Unsafe` cache, `Sync` engine, no rate limiter.
    pub fn new(
        drive_id: impl Into<String>,
        path_on_host: impl Into<PathBuf>,
        is_root_device: bool,
    ) -> Self {
        Self {
            drive_id: drive_id.into(),
            path_on_host: path_on_host.into(),
            is_root_device,
            is_read_only: None,
            partuuid: None,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
            socket: None,
        }
    }

    /// Whether the drive is read-only (default `false`).
    pub fn read_only(&self) -> bool {
        self.is_read_only.unwrap_or(false)
    }

    /// The cache mode (default `Unsafe`).
    pub fn cache_type(&self) -> CacheType {
        self.cache_type.unwrap_or_default()
    }
}

impl Validate for DriveConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_id("drive_id", &self.drive_id)?;
        if self.socket.is_some() {
            return Err(ConfigError::invalid(
                "socket",
                "vhost-user drives are not supported by cairn",
            ));
        }
        validate_path("path_on_host", &self.path_on_host)?;
        if let Some(uuid) = &self.partuuid {
            if uuid.is_empty() || uuid.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::invalid(
                    "partuuid",
                    "must be non-empty and contain no whitespace",
                ));
            }
        }
        Ok(())
    }
}

/// Parses a MAC address written as `aa:bb:cc:dd:ee:ff` (hex digits, either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(mac)
}

/// Longest Linux interface name (IFNAMSIZ less the terminating NUL).
const MAX_IFNAME_LEN: usize = 15;

/// Firecracker's `network-interfaces[]` item / `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Unique id: 1 to 64 letters, digits or `_`.
    pub iface_id: String,
    /// The host tap device to attach.
    pub host_dev_name: String,
    /// The guest's MAC address, `aa:bb:cc:dd:ee:ff`; chosen by the guest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Limits on what the guest receives (bytes and frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on what the guest sends (bytes and frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// MTU advertised to the guest (`VIRTIO_NET_F_MTU`), 68 to 65535; absent: not advertised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

impl NetConfig {
    /// The guest MAC as bytes, if one is set and well formed.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.guest_mac.as_deref().and_then(parse_mac)
    }
}

impl Validate for NetConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_id("iface_id", &self.iface_id)?;
        if self.host_dev_name.is_empty()
            || self.host_dev_name.len() > MAX_IFNAME_LEN
            || self.host_dev_name.contains(['/', '\0'])
            || self.host_dev_name.chars().any(char::is_whitespace)
        {
            return Err(ConfigError::invalid(
                "host_dev_name",
                format!(
                    "`{}` is not a valid interface name (1 to {MAX_IFNAME_LEN} characters, \
                     no `/` or whitespace)",
                    self.host_dev_name
                ),
            ));
        }
        if let Some(mac) = &self.guest_mac {
            if parse_mac(mac).is_none() {
                return Err(ConfigError::invalid(
                    "guest_mac",
                    format!("`{mac}` is not a MAC address of the form aa:bb:cc:dd:ee:ff"),
                ));
            }
        }
        if let Some(mtu) = self.mtu {
            if mtu < 68 {
                return Err(ConfigError::invalid(
                    "mtu",
                    format!("{mtu} is not between 68 and 65535"),
                ));
            }
        }
        Ok(())
    }
}

/// Firecracker's `vsock` / `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Deprecated in Firecracker; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id: 3 or more (0 to 2 are reserved), and not `u32::MAX`.
    pub guest_cid: u32,
    /// Host Unix socket that guest connections are forwarded to (`<uds_path>_<port>` for
    /// host-initiated connections, Firecracker's scheme).
    pub uds_path: PathBuf,
}

impl Validate for VsockConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.guest_cid < 3 || self.guest_cid == u32::MAX {
            return Err(ConfigError::invalid(
                "guest_cid",
                format!(
                    "must be at least 3 (0 to 2 are reserved) and below {}, got {}",
                    u32::MAX,
                    self.guest_cid
                ),
            ));
        }
        validate_path("uds_path", &self.uds_path)
    }
}

/// Firecracker's `PATCH /drives/{drive_id}` body (`PartialDrive`), after boot: a new backing
/// file, new rate limiter buckets, or both. Absent fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    /// The drive to change.
    pub drive_id: String,
    /// The new backing file; the guest sees its contents (and size) from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Buckets to replace (a bucket left out is kept; one with size or refill time 0 removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl Validate for DriveUpdate {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_id("drive_id", &self.drive_id)?;
        match &self.path_on_host {
            Some(path) => validate_path("path_on_host", path),
            None => Ok(()),
        }
    }
}

/// Firecracker's `PATCH /network-interfaces/{iface_id}` body (`PartialNetworkInterface`), after
/// boot: new rate limiter buckets. Absent fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    /// The interface to change.
    pub iface_id: String,
    /// Buckets to replace on the receive side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Buckets to replace on the transmit side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl Validate for NetworkInterfaceUpdate {
    fn validate(&self) -> Result<(), ConfigError> {
        validate_id("iface_id", &self.iface_id)
    }
}

/// Firecracker's `entropy` / `PUT /entropy` (virtio-rng).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    /// Limits the random bytes handed out (`bandwidth`) and the requests served (`ops`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl Validate for EntropyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Firecracker's `PUT /serial` body: where the guest's serial console output goes instead of
/// stdout (a file or named pipe; console input is then not read).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The file or named pipe, created if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
    /// Limits the bytes of guest output written to `serial_out_path` (or stdout); what the
    /// bucket does not allow is dropped, as in Firecracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucketConfig>,
}

/// Firecracker's `RateLimiter`: a bucket of bytes and a bucket of operations (requests or
/// frames). An absent bucket does not limit; in a PATCH it leaves the bucket as it is, and a
/// bucket with `size` or `refill_time` 0 removes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// Firecracker's token bucket (also the serial port's whole `rate_limiter`). Unknown fields are
/// ignored, as Firecracker ignores them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucketConfig {
    /// Tokens (bytes or operations) the bucket holds when full; 0: no limit.
    pub size: u64,
    /// Initial extra budget, spent first and never refilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Time to refill the bucket from empty, in ms; 0: no limit.
    pub refill_time: u64,
}

impl Validate for SerialConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.serial_out_path {
            validate_path("serial_out_path", path)?;
        }
        Ok(())
    }
}
