//! An in-memory console for library-level tests: guest serial output collected into a buffer.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// A `Write` sink that keeps everything written to it; clones share the buffer.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// How many `.` the ticker guests have printed (one per pass over their window).
    pub fn dots(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|b| **b == b'.')
            .count()
    }
}

/// FNV-1a of `bytes`: a cheap fingerprint for comparing guest pages.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}
