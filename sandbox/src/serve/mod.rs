//! `cairn serve`: the long-running manager. A versioned REST API (`/v1`) over the same library
//! calls the CLI makes ([`ops`] shapes them), on a Unix socket (`$CAIRN_HOME/serve.sock`, mode
//! 0600) and optionally on TCP. See `docs/api.md`.
//!
//! Authentication: a bearer token made on first start and kept in `$CAIRN_HOME/serve.token`
//! (mode 0600). TCP requires it on every request. On the Unix socket the file mode is the
//! gate (only the owner can connect, and the owner can read the token anyway), so a request
//! without a token is let in; one that carries a wrong token is still refused.

mod access_log;
pub mod agent_gate;
mod auth;
pub mod client;
mod error;
mod http;
mod idle_owner;
pub mod ops;
mod policy;
mod sessions;
mod stream;
mod tree;
mod ws;

pub use auth::{load_or_make_token, TOKEN_FILE};
pub use error::ApiError;
pub use http::{router, AppState, Listener, OPENAPI};

use crate::sandbox::Home;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The Unix socket's file name in `CAIRN_HOME`.
pub const SOCKET_FILE: &str = "serve.sock";

/// Why `cairn serve` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A file or socket operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another `cairn serve` answers on the socket.
    #[error("another cairn serve is listening on {0} (hint: stop it first, or set CAIRN_HOME)")]
    AlreadyRunning(PathBuf),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

/// Where `cairn serve` listens.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The Unix socket (default `$CAIRN_HOME/serve.sock`).
    pub socket: PathBuf,
    /// Also listen on this TCP address (token required there).
    pub listen: Option<SocketAddr>,
    /// Also run the HTTP router (`http://NAME.localhost:PORT/`, no token) on this address.
    pub router: Option<SocketAddr>,
    /// The guest port a bare `NAME.localhost` goes to through the router.
    pub router_guest_port: u16,
}

impl ServeOptions {
    /// The defaults for `home`: its socket, no TCP.
    pub fn for_home(home: &Home) -> ServeOptions {
        ServeOptions {
            socket: home.root().join(SOCKET_FILE),
            listen: None,
            router: None,
            router_guest_port: crate::ports::router::DEFAULT_GUEST_PORT,
        }
    }
}

/// Binds the Unix socket: a stale file is replaced, a live server is an error; mode 0600.
fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_err(format!("remove stale {}", path.display())))?;
    }
    let l = tokio::net::UnixListener::bind(path)
        .map_err(io_err(format!("listen on {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", path.display())))?;
    Ok(l)
}

/// Runs the server until SIGINT or SIGTERM. Blocks; builds its own tokio runtime.
pub fn run(home: Home, opts: ServeOptions) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io_err("start the async runtime"))?;
    rt.block_on(serve(home, opts))
}

async fn serve(home: Home, opts: ServeOptions) -> Result<(), ServeError> {
    let token = load_or_make_token(home.root())?;
    let state = AppState::new(home.clone(), token);
    let unix = bind_unix(&opts.socket)?;
    eprintln!(
        "cairn serve: listening on {} (token in {})",
        opts.socket.display(),
        home.root().join(TOKEN_FILE).display()
    );
    let unix_app = router(state.clone(), Listener::Unix);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { axum::serve(unix, unix_app).await });
    if let Some(addr) = opts.listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io_err(format!("listen on {addr}")))?;
        let addr = tcp.local_addr().unwrap_or(addr);
        eprintln!("cairn serve: listening on http://{addr} (bearer token required)");
        let tcp_app = router(state, Listener::Tcp);
        tasks.spawn(async move { axum::serve(tcp, tcp_app).await });
    }
    if let Some(addr) = opts.router {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(io_err(format!("listen on {addr} (the router)")))?;
        let addr = listener.local_addr().unwrap_or(addr);
        // On stdout, as `cairn router` prints it: scripts read the port from this line.
        println!(
            "cairn serve: router listening on http://{addr}/ (http://NAME.localhost:{}/ reaches port {} in sandbox NAME)",
            addr.port(),
            opts.router_guest_port
        );
        let router = crate::ports::router::Router::new(home.clone())
            .with_default_port(opts.router_guest_port);
        tasks.spawn(async move {
            router
                .serve(listener)
                .await
                .map_err(|e| io::Error::other(cairn_agent::error_text(&e)))
        });
    }
    let idle = idle_owner::IdleOwner::start(&home).await;
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    };
    let result = tokio::select! {
        r = stop => r.map_err(io_err("wait for a signal")),
        Some(r) = tasks.join_next() => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_err("serve")(e)),
            Err(e) => Err(io_err("serve")(io::Error::other(e))),
        },
    };
    let _ = std::fs::remove_file(&opts.socket);
    if let Some(idle) = idle {
        idle.stop().await;
    }
    eprintln!("cairn serve: stopped");
    result
}
