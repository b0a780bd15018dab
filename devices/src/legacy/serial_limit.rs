//! Firecracker's serial `rate_limiter`: a token bucket of bytes on the guest's console output.
//! Output beyond the bucket is dropped, not delayed (the UART cannot be held back without
//! stalling the vCPU that writes it), and the dropped bytes are reported to a callback (the VMM
//! counts them in Firecracker's `uart.rate_limiter_dropped_bytes` metric).

use std::io::{self, Write};

use crate::rate_limiter::{BucketConfig, TokenBucket};

/// Told how many bytes were dropped, each time some are.
pub type OnDropped = Box<dyn FnMut(u64) + Send>;

/// A serial output that drops what its bucket does not allow.
pub struct RateLimitedOut<W> {
    inner: W,
    bucket: TokenBucket,
    on_dropped: OnDropped,
}

impl<W: Write> RateLimitedOut<W> {
    /// `inner` limited by `cfg`, or `inner` back when `cfg` limits nothing (size or refill
    /// time 0).
    pub fn new(inner: W, cfg: BucketConfig, on_dropped: OnDropped) -> Result<Self, W> {
        match TokenBucket::new(cfg) {
            Some(bucket) => Ok(Self {
                inner,
                bucket,
                on_dropped,
            }),
            None => Err(inner),
        }
    }
}

impl<W: Write> Write for RateLimitedOut<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if !self.bucket.reduce(len) {
            (self.on_dropped)(len);
            return Ok(buf.len());
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn drops_what_the_bucket_does_not_allow() {
        let sink = Shared::default();
        let cfg = BucketConfig {
            size: 8,
            one_time_burst: 2,
            refill_time_ms: 100_000,
        };
        let dropped = Arc::new(AtomicU64::new(0));
        let count = dropped.clone();
        let on_dropped: OnDropped = Box::new(move |n| {
            count.fetch_add(n, Ordering::Relaxed);
        });
        let mut out = RateLimitedOut::new(sink.clone(), cfg, on_dropped)
            .ok()
            .unwrap();
        for b in b"0123456789abcdef" {
            out.write_all(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(
            &sink.0.lock().unwrap()[..],
            b"0123456789",
            "burst 2 + bucket 8"
        );
        assert_eq!(dropped.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn no_limit_keeps_the_output() {
        let cfg = BucketConfig {
            size: 0,
            one_time_burst: 0,
            refill_time_ms: 100,
        };
        assert!(RateLimitedOut::new(Shared::default(), cfg, Box::new(|_| ())).is_err());
    }
}
