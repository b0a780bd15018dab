//! Length-prefixed framing: `u32` little-endian payload length, then the postcard payload.

use super::MAX_FRAME;
use serde::{de::DeserializeOwned, Serialize};
use std::io::{self, Read, Write};

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// I/O error on the stream
    #[error("agent connection I/O")]
    Io(#[from] io::Error),
    /// The stream ended inside a frame.
    #[error("agent connection closed in the middle of a frame")]
    Truncated,
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    /// The payload is not a valid message.
    #[error("malformed frame payload")]
    Decode(#[source] postcard::Error),
    /// The payload decoded but left bytes over.
    #[error("frame payload has {0} trailing bytes")]
    TrailingBytes(usize),
    /// A message could not be encoded.
    #[error("cannot encode frame")]
    Encode(#[source] postcard::Error),
}

/// Decodes one payload, requiring that it is used up entirely.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes(payload).map_err(FrameError::Decode)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Encodes one message as a complete frame (prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = postcard::to_extend(msg, vec![0u8; 4]).map_err(FrameError::Encode)?;
    let len = buf.len() - 4;
    if len > MAX_FRAME as usize {
        return Err(FrameError::TooLarge(len as u64));
    }
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf)
}

/// Reads frames from a stream, reusing one buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads the next frame's payload. `Ok(None)` means the stream ended cleanly between frames.
    pub fn read_payload(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let mut prefix = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.inner.read(&mut prefix[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(FrameError::Truncated),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_le_bytes(prefix);
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(u64::from(len)));
        }
        self.buf.resize(len as usize, 0);
        self.inner
            .read_exact(&mut self.buf)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => FrameError::Truncated,
                _ => FrameError::Io(e),
            })?;
        Ok(Some(&self.buf))
    }

    /// Reads and decodes the next frame. `Ok(None)` means the stream ended cleanly.
    pub fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.read_payload()? {
            Some(payload) => decode(payload).map(Some),
            None => Ok(None),
        }
    }
}

/// Writes frames to a stream, one `write_all` per frame.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
}

impl<W: Write> FrameWriter<W> {
    /// Wraps a stream.
    pub fn new(inner: W) -> Self {
        FrameWriter { inner }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Encodes and writes one message.
    pub fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        let frame = encode(msg)?;
        self.inner.write_all(&frame)?;
        Ok(())
    }
}
