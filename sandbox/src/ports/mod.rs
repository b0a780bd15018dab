//! Ports in: reaching TCP ports inside a sandbox from the host, over vsock through the guest
//! agent's `Connect` operation, so no guest network or routing is needed.
//!
//! - [`proxy`]: `cairn proxy NAME PORT`, a local TCP listener per guest port;
//! - [`router`]: `cairn router`, an HTTP router that picks the sandbox by Host header
//!   (`NAME.localhost`, `PORT.NAME.localhost`).
//!
//! Both open each guest connection with [`open`], which wakes a stopped sandbox and holds its
//! `active` lock (shared) for as long as the connection is open, so the idle watcher leaves a
//! sandbox alone while connections are open. See `docs/network.md`.

pub mod proxy;
pub mod router;

use crate::lock::FileLock;
use crate::registry::RegistryError;
use crate::sandbox::{self, Home, SandboxError};
use cairn_agent::client::{Client, ClientError, LocalStream, SpliceStats, Tunnel, TunnelAbort};
use cairn_agent::proto::{ConnectRequest, AGENT_PORT};

/// Why a guest port could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    /// No sandbox has that name.
    #[error("no sandbox named {0:?} (hint: `cairn ls`)")]
    NoSandbox(String),
    /// The sandbox could not be woken or its agent reached.
    #[error("cannot wake sandbox {name:?}")]
    Wake {
        /// The sandbox.
        name: String,
        /// The error.
        #[source]
        source: SandboxError,
    },
    /// The agent could not open the guest connection (e.g. nothing listens on the port).
    #[error("sandbox {name:?}: nothing reachable at {host}:{port} in the guest: {reason}")]
    Refused {
        /// The sandbox.
        name: String,
        /// Guest address.
        host: String,
        /// Guest port.
        port: u16,
        /// The guest's reason.
        reason: String,
    },
    /// The agent connection failed.
    #[error("sandbox {name:?}: agent")]
    Agent {
        /// The sandbox.
        name: String,
        /// The error.
        #[source]
        source: ClientError,
    },
    /// A local socket failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Where in the guest a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The sandbox.
    pub name: String,
    /// Guest address (as the guest sees it).
    pub host: String,
    /// Guest TCP port.
    pub port: u16,
}

impl Target {
    /// `127.0.0.1:port` in sandbox `name`.
    pub fn local(name: &str, port: u16) -> Target {
        Target {
            name: name.to_string(),
            host: "127.0.0.1".into(),
            port,
        }
    }
}

/// An open guest connection, with the sandbox held awake until it is spliced and done.
#[derive(Debug)]
pub struct GuestConn {
    tunnel: Tunnel,
    hold: Hold,
}

/// Keeps the sandbox from idling (its `active` lock, shared) and marks it used when dropped.
#[derive(Debug)]
struct Hold {
    home: Home,
    name: String,
    _active: FileLock,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = sandbox::touch(&self.home, &self.name);
    }
}

/// Checks that the sandbox exists (cheap: no wake).
pub fn check_exists(home: &Home, name: &str) -> Result<(), PortsError> {
    if sandbox::validate_name(name).is_err() {
        return Err(PortsError::NoSandbox(name.to_string()));
    }
    let reg = home.registry().map_err(|source| PortsError::Wake {
        name: name.to_string(),
        source,
    })?;
    match reg.get(name) {
        Ok(_) => Ok(()),
        Err(RegistryError::NotFound(_)) => Err(PortsError::NoSandbox(name.to_string())),
        Err(e) => Err(PortsError::Wake {
            name: name.to_string(),
            source: e.into(),
        }),
    }
}

/// Opens a TCP connection to `target` inside its sandbox, waking the sandbox if it sleeps.
/// Blocking: it may take as long as a wake.
pub fn open(home: &Home, target: &Target) -> Result<GuestConn, PortsError> {
    check_exists(home, &target.name)?;
    let name = target.name.clone();
    let wake = |source| PortsError::Wake {
        name: name.clone(),
        source,
    };
    let (record, active, woken) = sandbox::enter(home, &target.name).map_err(wake)?;
    let hold = Hold {
        home: home.clone(),
        name: target.name.clone(),
        _active: active,
    };
    let mut client = match woken {
        Some(c) => c,
        None => Client::connect_uds(&record.vsock_sock, AGENT_PORT)
            .map_err(|e| wake(SandboxError::Agent(e)))?,
    };
    let req = ConnectRequest {
        host: target.host.clone(),
        port: target.port,
    };
    match client.connect_tcp(&req) {
        Ok(tunnel) => Ok(GuestConn { tunnel, hold }),
        Err(ClientError::Agent(reason)) => Err(PortsError::Refused {
            name,
            host: req.host,
            port: req.port,
            reason,
        }),
        Err(source) => Err(PortsError::Agent { name, source }),
    }
}

impl GuestConn {
    /// A handle that ends the connection from elsewhere (see [`Tunnel::abort_handle`]).
    pub fn abort_handle(&self) -> Result<TunnelAbort, PortsError> {
        self.tunnel
            .abort_handle()
            .map_err(|source| PortsError::Agent {
                name: self.hold.name.clone(),
                source,
            })
    }

    /// Carries bytes both ways between `local` and the guest connection until both have
    /// ended; the sandbox is released (and marked used) afterwards.
    pub fn splice<L: LocalStream>(self, local: L) -> Result<SpliceStats, PortsError> {
        let GuestConn { tunnel, hold } = self;
        let result = tunnel.splice(local);
        let name = hold.name.clone();
        drop(hold);
        result.map_err(|source| PortsError::Agent { name, source })
    }
}
