//! `cairn serve` and `cairn mcp`: argument parsing only; the servers are in the library.

use crate::cli::CliError;
use cairn_sandbox::sandbox::Home;
use cairn_sandbox::serve::{self, ServeOptions};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `cairn serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The Unix socket to listen on (default $CAIRN_HOME/serve.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also listen on TCP, e.g. 127.0.0.1:7878 (every request then needs the bearer token).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Also run the HTTP router on ADDR, e.g. 127.0.0.1:8000: http://NAME.localhost:8000/
    /// reaches port 8080 in sandbox NAME, waking it (no token; see docs/network.md).
    #[arg(long, value_name = "ADDR")]
    router: Option<SocketAddr>,
    /// The guest port a bare NAME.localhost goes to through --router.
    #[arg(long, value_name = "PORT", requires = "router",
          default_value_t = cairn_sandbox::ports::router::DEFAULT_GUEST_PORT)]
    router_guest_port: u16,
}

/// Runs the API server until SIGINT/SIGTERM.
pub fn serve(home: &Home, args: ServeArgs) -> Result<u8, CliError> {
    let mut opts = ServeOptions::for_home(home);
    if let Some(s) = args.socket {
        opts.socket = s;
    }
    opts.listen = args.listen;
    opts.router = args.router;
    opts.router_guest_port = args.router_guest_port;
    serve::run(home.clone(), opts).map_err(|e| CliError::Usage(cairn_agent::error_text(&e)))?;
    Ok(0)
}

/// Runs the MCP server on stdin/stdout until stdin closes.
pub fn mcp(home: &Home) -> Result<u8, CliError> {
    cairn_sandbox::mcp::run(home, std::io::stdin().lock(), std::io::stdout().lock())
        .map_err(CliError::Io)?;
    Ok(0)
}
