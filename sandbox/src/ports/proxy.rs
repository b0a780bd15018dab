//! `cairn proxy NAME GUEST_PORT [--listen ADDR:PORT]`: a local TCP listener whose every
//! connection is carried to a port inside the sandbox, one thread per connection.
//!
//! Nothing happens to the sandbox until the first connection arrives: that connection wakes it
//! if it sleeps. While any connection is open the sandbox does not idle.

use super::{check_exists, open, PortsError, Target};
use crate::sandbox::Home;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;

/// A bound proxy, not yet accepting.
#[derive(Debug)]
pub struct Proxy {
    home: Home,
    target: Target,
    listener: TcpListener,
}

impl Proxy {
    /// Binds `listen` for connections to `target`; fails at once if the sandbox does not exist
    /// or the address is taken.
    pub fn bind(home: &Home, target: Target, listen: SocketAddr) -> Result<Proxy, PortsError> {
        check_exists(home, &target.name)?;
        let listener = TcpListener::bind(listen).map_err(|source| PortsError::Io {
            what: format!("listen on {listen}"),
            source,
        })?;
        Ok(Proxy {
            home: home.clone(),
            target,
            listener,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, PortsError> {
        self.listener.local_addr().map_err(|source| PortsError::Io {
            what: "read the listening address".into(),
            source,
        })
    }

    /// Accepts connections forever; each is served on a thread of its own, and its failure
    /// is reported on stderr as one line (the local connection is closed).
    pub fn run(self) -> Result<(), PortsError> {
        loop {
            let (conn, peer) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if is_transient(&e) => {
                    eprintln!("cairn proxy: accept: {e}");
                    thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
                Err(source) => {
                    return Err(PortsError::Io {
                        what: "accept a connection".into(),
                        source,
                    })
                }
            };
            let home = self.home.clone();
            let target = self.target.clone();
            let spawned = thread::Builder::new()
                .name("proxy-conn".into())
                .spawn(move || {
                    if let Err(e) = serve(&home, &target, conn) {
                        eprintln!("cairn proxy: {peer}: {}", cairn_agent::error_text(&e));
                    }
                });
            if let Err(e) = spawned {
                eprintln!("cairn proxy: cannot start a connection thread: {e}");
            }
        }
    }
}

/// One local connection: open the guest side (waking the sandbox), then splice.
pub fn serve(home: &Home, target: &Target, conn: TcpStream) -> Result<(), PortsError> {
    let _ = conn.set_nodelay(true);
    let guest = open(home, target)?;
    guest.splice(conn).map(drop)
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
        )
    )
}
