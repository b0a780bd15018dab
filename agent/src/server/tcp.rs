//! Connect: opens a TCP connection inside the guest and splices it to the client's frames.
//!
//! Two threads per connection: this one copies the client's `Data` to the socket (and turns
//! `DataEnd` into a write shutdown), a pump copies the socket to `Data` frames and ends with
//! `DataEnd` at EOF. A failure on the guest socket is reported once as `Error`. The agent
//! closes the vsock connection when the client does, which the client does once both
//! directions have ended.

use super::{msg_name, Conn, ServerError};
use crate::proto::{AgentMsg, ClientMsg, ConnectRequest, FrameError, FrameReader, FrameWriter};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

/// Bytes read from the guest socket per frame.
const TCP_CHUNK: usize = 32 << 10;

struct Out<S> {
    writer: Mutex<FrameWriter<S>>,
    /// Set once an `Error` went out: nothing follows it.
    failed: AtomicBool,
}

impl<S: Conn> Out<S> {
    fn send(&self, msg: &AgentMsg) -> Result<(), FrameError> {
        if self.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write(msg)
    }

    fn fail(&self, e: &ServerError) {
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.failed.swap(true, Ordering::SeqCst) {
            // The client may be gone already.
            let _ = w.write(&AgentMsg::Error {
                message: crate::error_text(e),
            });
        }
    }
}

/// Serves a `Connect` request to its end.
pub(super) fn run<S: Conn>(
    req: ConnectRequest,
    mut reader: FrameReader<S>,
    mut writer: FrameWriter<S>,
) -> Result<(), ServerError> {
    let addr = format!("{}:{}", req.host, req.port);
    let tcp = match TcpStream::connect((req.host.as_str(), req.port)) {
        Ok(s) => s,
        Err(source) => {
            let e = ServerError::Connect { addr, source };
            let _ = writer.write(&AgentMsg::Error {
                message: crate::error_text(&e),
            });
            return Err(e);
        }
    };
    // Small requests and answers should not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    writer.write(&AgentMsg::Connected)?;
    let out = Arc::new(Out {
        writer: Mutex::new(writer),
        failed: AtomicBool::new(false),
    });
    let tcp_in = tcp.try_clone().map_err(|source| ServerError::Connect {
        addr: addr.clone(),
        source,
    })?;
    let out2 = Arc::clone(&out);
    let addr2 = addr.clone();
    let pump = thread::Builder::new()
        .name("agent-tcp".into())
        .spawn(move || pump(tcp_in, &out2, &addr2))
        .map_err(|source| ServerError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let result = copy_in(&mut reader, &tcp, &out, &addr);
    // Whatever ended this direction ends the other: the pump's read returns.
    let _ = tcp.shutdown(Shutdown::Both);
    let _ = pump.join();
    result
}

/// Client frames to the guest socket until the client closes the connection.
fn copy_in<S: Conn>(
    reader: &mut FrameReader<S>,
    mut tcp: &TcpStream,
    out: &Out<S>,
    addr: &str,
) -> Result<(), ServerError> {
    loop {
        match reader.read::<ClientMsg>()? {
            Some(ClientMsg::Data(d)) => {
                if let Err(source) = tcp.write_all(&d) {
                    let e = ServerError::TcpIo {
                        addr: addr.to_string(),
                        source,
                    };
                    out.fail(&e);
                    return Err(e);
                }
            }
            Some(ClientMsg::DataEnd) => {
                let _ = tcp.shutdown(Shutdown::Write);
            }
            Some(other) => {
                let e = ServerError::Unexpected(msg_name(&other));
                out.fail(&e);
                return Err(e);
            }
            None => return Ok(()),
        }
    }
}

/// The guest socket to `Data` frames, then `DataEnd` (or `Error`).
fn pump<S: Conn>(mut tcp: TcpStream, out: &Out<S>, addr: &str) {
    let mut buf = vec![0u8; TCP_CHUNK];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => {
                let _ = out.send(&AgentMsg::DataEnd);
                return;
            }
            Ok(n) => {
                if out.send(&AgentMsg::Data(buf[..n].to_vec())).is_err() {
                    // The client is gone; copy_in sees it too.
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                out.fail(&ServerError::TcpIo {
                    addr: addr.to_string(),
                    source,
                });
                return;
            }
        }
    }
}
