//! `cairn proxy` and `cairn router`: argument handling; the work is in `cairn_sandbox::ports`.

use crate::cli::CliError;
use cairn_sandbox::ports::proxy::Proxy;
use cairn_sandbox::ports::router::Router;
use cairn_sandbox::ports::Target;
use cairn_sandbox::sandbox::Home;
use std::net::{Ipv4Addr, SocketAddr};

/// `cairn proxy NAME GUEST_PORT [--listen ADDR:PORT]`: runs until killed.
pub fn proxy(
    home: &Home,
    name: &str,
    guest_port: u16,
    listen: Option<SocketAddr>,
) -> Result<u8, CliError> {
    if guest_port == 0 {
        return Err(CliError::Usage("guest port 0 is not a port".into()));
    }
    let listen = listen.unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, guest_port)));
    let proxy = Proxy::bind(home, Target::local(name, guest_port), listen)?;
    // Tests and scripts read this line to learn the port (with --listen ...:0).
    println!(
        "{name}: forwarding {} -> port {guest_port} in the guest (Ctrl-C stops)",
        proxy.local_addr()?
    );
    proxy.run()?;
    Ok(0)
}

/// `cairn router [--listen ADDR:PORT]`: runs until killed.
pub fn router(home: &Home, listen: SocketAddr, guest_port: u16) -> Result<u8, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| CliError::Usage(format!("cannot listen on {listen}: {e}")))?;
        let addr = listener.local_addr()?;
        println!(
            "cairn router: listening on http://{addr}/ (http://NAME.localhost:{}/ reaches port {guest_port} in sandbox NAME)",
            addr.port()
        );
        Router::new(home.clone())
            .with_default_port(guest_port)
            .serve(listener)
            .await?;
        Ok(0)
    })
}
