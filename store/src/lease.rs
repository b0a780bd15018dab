//! Leases: a sandbox runs on one host at a time.
//!
//! `<prefix>/sandboxes/<name>/lease.json` names the holder (a `CAIRN_HOME`'s host id) and when
//! the lease expires. Taking it is a conditional write: `If-None-Match: *` when there is none,
//! `If-Match: <etag>` over the one read (held by us, or expired), so of two hosts racing for it
//! exactly one wins. Releasing writes an expired lease, conditionally too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::{ObjectStore, PutMode, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::remote::Remote;

/// The default lease length: `CAIRN_LEASE_SECS` overrides it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3600);

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The holder's host id.
    pub holder: String,
    /// Unix milliseconds when it lapses (0: released).
    pub expires_at_ms: u64,
}

/// The lease length from `CAIRN_LEASE_SECS`, else [`DEFAULT_LEASE`].
pub fn lease_from_env() -> Duration {
    std::env::var("CAIRN_LEASE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(DEFAULT_LEASE, Duration::from_secs)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Remote {
    fn lease_key(&self, sandbox: &str) -> object_store::path::Path {
        self.key(&format!("sandboxes/{sandbox}/lease.json"))
    }

    /// The sandbox's lease and its version, if it has one.
    pub fn lease(&self, sandbox: &str) -> Result<Option<(Lease, UpdateVersion)>> {
        self.rt.block_on(self.read_lease(sandbox))
    }

    async fn read_lease(&self, sandbox: &str) -> Result<Option<(Lease, UpdateVersion)>> {
        let key = self.lease_key(sandbox);
        let Some((bytes, v)) = self.get_versioned(&key).await? else {
            return Ok(None);
        };
        let lease = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            what: key.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Some((lease, v)))
    }

    /// Take (or renew) the lease of `sandbox` for `host` for `ttl`. Refused with
    /// [`StoreError::Leased`] while another host holds an unexpired one.
    pub fn acquire_lease(&self, sandbox: &str, host: &str, ttl: Duration) -> Result<Lease> {
        self.rt.block_on(async {
            for _ in 0..5 {
                let current = self.read_lease(sandbox).await?;
                let now = now_ms();
                let mode = match current {
                    None => PutMode::Create,
                    Some((l, v)) if l.holder == host || l.expires_at_ms <= now => {
                        PutMode::Update(v)
                    }
                    Some((l, _)) => {
                        return Err(StoreError::Leased {
                            sandbox: sandbox.to_string(),
                            holder: l.holder,
                            secs_left: (l.expires_at_ms - now).div_ceil(1000),
                        })
                    }
                };
                let lease = Lease {
                    holder: host.to_string(),
                    expires_at_ms: now + ttl.as_millis() as u64,
                };
                if self.write_lease(sandbox, &lease, mode).await? {
                    return Ok(lease);
                }
            }
            Err(StoreError::Conflict(sandbox.to_string()))
        })
    }

    /// Release `host`'s lease of `sandbox` (nothing when another host holds it). Returns whether
    /// a lease was released.
    pub fn release_lease(&self, sandbox: &str, host: &str) -> Result<bool> {
        self.rt.block_on(async {
            match self.read_lease(sandbox).await? {
                Some((l, v)) if l.holder == host && l.expires_at_ms > 0 => {
                    let lapsed = Lease {
                        holder: host.to_string(),
                        expires_at_ms: 0,
                    };
                    self.write_lease(sandbox, &lapsed, PutMode::Update(v)).await
                }
                _ => Ok(false),
            }
        })
    }

    /// A conditional write of the lease: whether it won.
    async fn write_lease(&self, sandbox: &str, lease: &Lease, mode: PutMode) -> Result<bool> {
        let key = self.lease_key(sandbox);
        let body = serde_json::to_vec(lease).unwrap_or_default();
        match self
            .s3
            .put_opts(&key, PutPayload::from(body), mode.into())
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(StoreError::bucket(format!("write {key}"))(e)),
        }
    }
}
