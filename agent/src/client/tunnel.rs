//! The host side of `Connect`: a TCP connection inside the guest, carried over the agent's
//! connection as `Data` frames, spliced to a local stream.

use super::{unexpected, ClientError};
use crate::proto::{AgentMsg, ClientMsg, FrameReader, FrameWriter, CHUNK};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::thread;

/// A local byte stream a tunnel can be spliced to: a TCP or a Unix socket.
pub trait LocalStream: Read + Write + Send + Sized + 'static {
    /// A second handle, so one thread reads while another writes.
    fn try_clone(&self) -> io::Result<Self>;
    /// Shuts down one or both halves.
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl LocalStream for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
}

impl LocalStream for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }
}

/// Bytes each way once a splice has ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceStats {
    /// Local stream to the guest.
    pub to_guest: u64,
    /// Guest to the local stream.
    pub from_guest: u64,
}

/// An open TCP connection inside the guest (the agent answered `Connected`).
#[derive(Debug)]
pub struct Tunnel {
    pub(super) reader: FrameReader<UnixStream>,
    pub(super) writer: FrameWriter<UnixStream>,
}

/// Ends a tunnel from another thread (see [`Tunnel::abort_handle`]).
#[derive(Debug)]
pub struct TunnelAbort(UnixStream);

impl TunnelAbort {
    /// Closes the agent connection: a running splice returns (with an error), and the agent
    /// closes the guest connection.
    pub fn abort(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

impl Tunnel {
    /// A handle that ends this tunnel from elsewhere, for a caller that knows it needs no more
    /// bytes (an HTTP client that has read its whole answer).
    pub fn abort_handle(&self) -> Result<TunnelAbort, ClientError> {
        self.reader
            .get_ref()
            .try_clone()
            .map(TunnelAbort)
            .map_err(ClientError::Stdio)
    }

    /// Copies bytes both ways between `local` and the guest connection until both directions
    /// have ended: EOF on one side becomes a write shutdown on the other (half-close). An error
    /// the agent reports (the guest connection reset) ends both directions and is returned.
    pub fn splice<L: LocalStream>(self, mut local: L) -> Result<SpliceStats, ClientError> {
        let Tunnel { mut reader, writer } = self;
        let vsock = reader.get_ref().try_clone().map_err(ClientError::Stdio)?;
        let local_in = local.try_clone().map_err(ClientError::Stdio)?;
        let up = thread::Builder::new()
            .name("tunnel-up".into())
            .spawn(move || copy_up(local_in, writer))
            .map_err(ClientError::Stdio)?;
        let down = copy_down(&mut reader, &mut local);
        if down.is_err() {
            // Unblocks the up thread's read, and tells the agent to drop the guest connection.
            let _ = local.shutdown(Shutdown::Both);
            let _ = vsock.shutdown(Shutdown::Both);
        }
        let up = up
            .join()
            .unwrap_or_else(|_| Err(ClientError::Unexpected("tunnel thread panicked".into())));
        // Both directions are done: closing the agent connection ends the request.
        let _ = vsock.shutdown(Shutdown::Both);
        let from_guest = down?;
        Ok(SpliceStats {
            to_guest: up?,
            from_guest,
        })
    }
}

/// Local stream to `Data` frames; `DataEnd` at EOF.
fn copy_up<L: LocalStream>(
    mut local: L,
    mut writer: FrameWriter<UnixStream>,
) -> Result<u64, ClientError> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match local.read(&mut buf) {
            Ok(0) => {
                writer.write(&ClientMsg::DataEnd)?;
                return Ok(total);
            }
            Ok(n) => {
                writer.write(&ClientMsg::Data(buf[..n].to_vec()))?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // The local peer reset: drop the guest connection too.
                let _ = writer.get_ref().shutdown(Shutdown::Both);
                return Err(ClientError::Stdio(e));
            }
        }
    }
}

/// `Data` frames to the local stream until `DataEnd`.
fn copy_down<L: LocalStream>(
    reader: &mut FrameReader<UnixStream>,
    local: &mut L,
) -> Result<u64, ClientError> {
    let mut total = 0u64;
    loop {
        match reader.read::<AgentMsg>()? {
            Some(AgentMsg::Data(d)) => {
                local.write_all(&d).map_err(ClientError::Stdio)?;
                total += d.len() as u64;
            }
            Some(AgentMsg::DataEnd) => {
                let _ = local.shutdown(Shutdown::Write);
                return Ok(total);
            }
            other => return Err(unexpected(other)),
        }
    }
}
