//! `cairn-agent`: the guest agent. Listens on vsock port 52 (or `--port N`), or on a Unix socket
//! with `--listen-unix PATH` (for running the same server on the host in tests).

use cairn_agent::proto::AGENT_PORT;
use cairn_agent::server::{bring_up_loopback, serve_unix, serve_vsock, VsockListener};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;

const USAGE: &str =
    "usage: cairn-agent [--port N | --listen-unix PATH | --connect-host PORT] [--version]";

enum Listen {
    Vsock(u32),
    Unix(String),
    /// Not a server: connect to the host's vsock `PORT`, send stdin, print the reply
    /// (a guest-to-host probe for tests and debugging).
    ConnectHost(u32),
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Listen>, String> {
    let mut listen = Listen::Vsock(AGENT_PORT);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let v = args.next().ok_or("--port needs a value")?;
                listen = Listen::Vsock(v.parse().map_err(|_| format!("bad port {v:?}"))?);
            }
            "--connect-host" => {
                let v = args.next().ok_or("--connect-host needs a port")?;
                listen = Listen::ConnectHost(v.parse().map_err(|_| format!("bad port {v:?}"))?);
            }
            "--listen-unix" => {
                listen = Listen::Unix(args.next().ok_or("--listen-unix needs a path")?)
            }
            "--version" => {
                println!(
                    "cairn-agent {} (protocol v{})",
                    env!("CARGO_PKG_VERSION"),
                    cairn_agent::proto::PROTOCOL_VERSION
                );
                return Ok(None);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Some(listen))
}

fn main() -> ExitCode {
    let listen = match parse(std::env::args().skip(1)) {
        Ok(Some(l)) => l,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match listen {
        Listen::Vsock(port) => {
            // In a guest: servers there (reached by `cairn proxy`) need 127.0.0.1.
            if let Err(e) = bring_up_loopback() {
                eprintln!("cairn-agent: bring up lo: {e}");
            }
            VsockListener::bind(port)
                .map_err(|e| format!("listen on vsock port {port}: {e}"))
                .and_then(|l| {
                    eprintln!("cairn-agent: listening on vsock port {port}");
                    serve_vsock(l).map_err(|e| format!("accept on vsock port {port}: {e}"))
                })
        }
        Listen::ConnectHost(port) => connect_host(port),
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            UnixListener::bind(&path)
                .map_err(|e| format!("listen on {path}: {e}"))
                .and_then(|l| {
                    eprintln!("cairn-agent: listening on {path}");
                    serve_unix(l).map_err(|e| format!("accept on {path}: {e}"))
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--connect-host PORT`: stdin to the host's vsock port, then its reply to stdout.
fn connect_host(port: u32) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut stream = cairn_agent::server::connect_host(port)
        .map_err(|e| format!("connect to host vsock port {port}: {e}"))?;
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("stdin: {e}"))?;
    stream.write_all(&input).map_err(|e| format!("send: {e}"))?;
    // SAFETY: shutdown(2) on a socket we own; no pointers.
    unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&stream), libc::SHUT_WR) };
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("receive: {e}"))?;
    std::io::stdout()
        .write_all(&reply)
        .map_err(|e| format!("stdout: {e}"))
}
