//! Sandboxes: where their files live ([`Home`], [`Paths`]), the error type, and the
//! submodules that do the work, re-exported here:
//! - `process`: the VMM process (spawn, kill, liveness as `cairn ls` derives it);
//! - `boot`: the VMM config, creating a sandbox, waiting for the agent, the console log;
//! - `lifecycle`: wake, stop, start, rm, and the locks around them;
//! - `checkpoint`: named checkpoints through the VMM's API;
//! - `jail`: running the VMM under `cairn-jailer` (sandboxes created by root);
//! - `standby`: a stopped sandbox's next VMM, started ahead for its wake.

mod boot;
mod checkpoint;
pub mod jail;
mod lifecycle;
mod process;
pub mod standby;

pub(crate) use boot::{boot_error, cold_boot, console_len};
pub use boot::{console_tail, create, vm_config, wait_agent};
pub(crate) use checkpoint::create_checkpoint_at;
pub use checkpoint::{checkpoint_create, checkpoint_list, checkpoint_remove, checkpoint_restore};
pub use lifecycle::{
    agent_answers, enter, lock, remove, settle, start, start_with, stop, touch, Started,
};
pub(crate) use lifecycle::{
    ensure_running_locked, greet_restored, spawn_settler, start_locked, start_locked_as,
    stop_locked, Settle,
};
pub(crate) use process::{check_socket_path, reap, spawn_vmm, wait_api};
pub use process::{kill_vmm, liveness, ls_json, vmm_alive, vmms_in, Liveness};

use crate::image::{self, ImageError};
use crate::registry::{Record, Registry, RegistryError, State};
use crate::vmm_api::ApiError;
use cairn_agent::client::ClientError;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a sandbox operation failed. Messages are one line and end with a hint where one helps.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The registry failed, or the sandbox is missing or its name taken.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The guest image or a binary is missing.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The VMM's API refused or broke off.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The guest agent could not be reached.
    #[error("agent")]
    Agent(#[from] ClientError),
    /// A file or directory operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The name is not usable.
    #[error("invalid sandbox name {0:?} (hint: 1-40 characters from a-z A-Z 0-9 . _ -, starting with a letter or digit)")]
    InvalidName(String),
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm: {0} (hint: load kvm_intel or kvm_amd, and add yourself to the kvm group: `sudo usermod -aG kvm $USER`, then log in again)")]
    NoKvm(io::Error),
    /// The VM did not come up.
    #[error("{reason} (console log {log}; last lines: {tail})")]
    Boot {
        /// What went wrong.
        reason: String,
        /// The console log.
        log: PathBuf,
        /// Its last lines, joined with ` | `.
        tail: String,
    },
    /// The sandbox has nothing to start from.
    #[error(
        "sandbox {0:?} has no checkpoint and no VM config to boot from (hint: `cairn rm {0}` and create it again)"
    )]
    NoHead(String),
    /// A socket path is too long for `sockaddr_un`.
    #[error(
        "socket path {0} is longer than 107 bytes (hint: set CAIRN_HOME to a shorter directory)"
    )]
    PathTooLong(PathBuf),
    /// A jailed sandbox's VMM can only be started by root.
    #[error("sandbox {0:?} runs its VMM jailed, which needs root (hint: run cairn as root)")]
    JailNeedsRoot(String),
    /// The sandbox network (see [`crate::net`]).
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// A path cannot be passed to `cairn-jailer --bind`.
    #[error("{0} cannot be bound into a jail: it is not UTF-8 or contains ':' (hint: CAIRN_NO_JAIL=1, or move it)")]
    JailPath(PathBuf),
    /// A checkpoint name breaks the sandbox-name rules.
    #[error("invalid checkpoint name {0:?} (hint: 1-40 characters from a-z A-Z 0-9 . _ -, starting with a letter or digit)")]
    InvalidCheckpointName(String),
    /// The content-addressed store or its bucket (docs/storage.md).
    #[error(transparent)]
    Store(#[from] Box<cairn_store::StoreError>),
    /// The sandbox is larger than the host (memory or CPUs).
    #[error("{0} (hint: a smaller --mem or --cpus)")]
    DoesNotFit(String),
}

impl From<cairn_store::StoreError> for SandboxError {
    fn from(e: cairn_store::StoreError) -> Self {
        SandboxError::Store(Box::new(e))
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// `CAIRN_HOME`: the registry and one directory per sandbox.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `$CAIRN_HOME`, else `$XDG_DATA_HOME/cairn`, else `~/.local/share/cairn`; created if missing.
    pub fn from_env() -> Result<Home, SandboxError> {
        let root = if let Some(h) = std::env::var_os("CAIRN_HOME") {
            PathBuf::from(h)
        } else if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
            PathBuf::from(x).join("cairn")
        } else {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".local/share/cairn")
        };
        Home::at(root)
    }

    /// A home at `root`, created if missing.
    pub fn at(root: impl Into<PathBuf>) -> Result<Home, SandboxError> {
        let root = root.into();
        fs::create_dir_all(root.join("sandboxes"))
            .map_err(io_err(format!("create {}", root.display())))?;
        Ok(Home { root })
    }

    /// The home directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Shared root disk images, grown per disk size (see [`crate::rootdisk`]).
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// The registry.
    pub fn registry(&self) -> Result<Registry, SandboxError> {
        Ok(Registry::open(&self.root)?)
    }

    /// Where the sandbox `name` keeps its files.
    pub fn paths(&self, name: &str) -> Paths {
        Paths::new(self.root.join("sandboxes").join(name))
    }
}

/// The files of one sandbox.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The directory.
    pub dir: PathBuf,
    /// The sparse raw disk (the base image of the layered store).
    pub disk: PathBuf,
    /// The VMM's JSON config.
    pub config: PathBuf,
    /// Guest serial output and VMM messages.
    pub console: PathBuf,
    /// REST API socket.
    pub api: PathBuf,
    /// vsock Unix socket.
    pub vsock: PathBuf,
    /// Named checkpoints and the disk's layers.
    pub checkpoints: PathBuf,
    /// Exclusive lifecycle lock.
    pub lock: PathBuf,
    /// Shared by each exec/cp in flight.
    pub active: PathBuf,
    /// The idle watcher's log.
    pub idle_log: PathBuf,
    /// FIFO feeding the guest's serial console: each VMM's stdin (`cairn console` writes it).
    pub console_in: PathBuf,
    /// The custom CPU template the VMM boots with (a copy of the image's `cpu_config`), if any.
    pub cpu_config: PathBuf,
    /// The hostname the guest must still take at its next restore ([`crate::identity::pending`]).
    pub identity_pending: PathBuf,
    /// The log of `cairn __settle` (the guest's identity, clock and network after a create or
    /// fork returned).
    pub settle_log: PathBuf,
}

impl Paths {
    /// The files of a sandbox-shaped directory `dir` (a sandbox's, or a golden entry's).
    pub fn at(dir: PathBuf) -> Paths {
        Paths::new(dir)
    }

    fn new(dir: PathBuf) -> Paths {
        Paths {
            disk: dir.join("disk.img"),
            config: dir.join("vm.json"),
            console: dir.join("console.log"),
            api: dir.join("api.sock"),
            vsock: dir.join("vsock.sock"),
            checkpoints: dir.join("checkpoints"),
            lock: dir.join("lock"),
            active: dir.join("active"),
            idle_log: dir.join("idle.log"),
            console_in: dir.join("console.in"),
            cpu_config: dir.join("cpu-config.json"),
            identity_pending: dir.join("identity-pending"),
            settle_log: dir.join("settle.log"),
            dir,
        }
    }

    /// The registry row of sandbox `name` living here, in `state`: no VMM, no checkpoint,
    /// created and active now, shaped as [`CreateOptions::default`].
    pub fn record(&self, name: &str, state: State) -> Record {
        let now = crate::registry::now();
        let opts = CreateOptions::default();
        Record {
            name: name.to_string(),
            state,
            dir: self.dir.clone(),
            pid: None,
            api_sock: self.api.clone(),
            vsock_sock: self.vsock.clone(),
            cpus: opts.cpus,
            mem_mib: opts.mem_mib,
            disk_gib: opts.disk_gib,
            created: now,
            last_activity: now,
            head_checkpoint: None,
            idle_timeout: opts.idle_timeout,
        }
    }
}

/// `cairn create` options.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// Sparse disk size, GiB.
    pub disk_gib: u64,
    /// Seconds of quiet before the VMM is checkpointed and stopped; 0 = never.
    pub idle_timeout: u64,
    /// How long to wait for the agent to answer.
    pub boot_timeout: Duration,
    /// Run the VMM unjailed even as root (`--no-jail`).
    pub no_jail: bool,
    /// No network (`--no-network`); see [`crate::net`].
    pub no_network: bool,
    /// Boot from scratch, neither using nor keeping a golden checkpoint (`--cold`).
    pub cold: bool,
    /// A named image (`--image`, see [`crate::image_store`]) instead of the default root disk.
    pub image: Option<String>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            cpus: 1,
            mem_mib: 512,
            disk_gib: 100,
            idle_timeout: 30,
            boot_timeout: Duration::from_secs(300),
            no_jail: false,
            no_network: false,
            cold: false,
            image: None,
        }
    }
}

/// Checks a sandbox name: 1-40 characters of `[A-Za-z0-9._-]`, starting alphanumeric.
pub fn validate_name(name: &str) -> Result<(), SandboxError> {
    let ok = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(SandboxError::InvalidName(name.to_string()))
    }
}

pub(crate) fn check_kvm() -> Result<(), SandboxError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(SandboxError::NoKvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "dev-1", "x.y_z", "A9"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-a", ".a", "a/b", "a b", &"x".repeat(41)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
