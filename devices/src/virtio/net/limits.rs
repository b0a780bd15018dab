//! virtio-net's rate limiters: `rx` throttles frames from the tap to the guest (a throttled
//! frame stays read but undelivered, and the tap is not read further), `tx` throttles the
//! guest's frames (a throttled chain goes back on the tx ring). Each counts one op per frame and
//! the frame's length in bytes, vnet header included. A limiter's timerfd, watched by the
//! device's event handler once a limit is set, resumes the throttled direction.

use std::os::fd::RawFd;

use event_manager::{EventOps, EventSet, Events};

use super::device::Net;
use super::tap::NetBackend;
use crate::rate_limiter::{LimiterConfig, RateLimiter};

/// The two limiters and their timers' registrations.
#[derive(Debug, Default)]
pub struct NetLimits {
    /// Guest-bound frames.
    pub(crate) rx: RateLimiter,
    /// Frames the guest sends.
    pub(crate) tx: RateLimiter,
    rx_registered: Option<RawFd>,
    tx_registered: Option<RawFd>,
}

/// Which limiter's timer fired.
pub(crate) enum LimiterTimer {
    Rx,
    Tx,
}

impl<B: NetBackend> Net<B> {
    /// Set or change the limiters (Firecracker's `rx_rate_limiter`/`tx_rate_limiter`; a bucket
    /// left `None` is kept). Signals the event handler so that new timers get watched.
    pub fn update_rate_limiters(
        &mut self,
        rx: &LimiterConfig,
        tx: &LimiterConfig,
    ) -> std::io::Result<()> {
        self.limits.rx.update(rx)?;
        self.limits.tx.update(tx)?;
        self.resync_limiters()
    }

    /// Replace both limiters (restored ones).
    pub fn set_rate_limiters(&mut self, rx: RateLimiter, tx: RateLimiter) -> std::io::Result<()> {
        self.limits.rx = rx;
        self.limits.tx = tx;
        self.resync_limiters()
    }

    /// The rx and tx limiters.
    pub fn rate_limiters(&self) -> (&RateLimiter, &RateLimiter) {
        (&self.limits.rx, &self.limits.tx)
    }

    fn resync_limiters(&mut self) -> std::io::Result<()> {
        let l = &self.limits;
        if l.rx.timer_fd() != l.rx_registered || l.tx.timer_fd() != l.tx_registered {
            self.activate_evt.write(1)?;
        }
        Ok(())
    }

    /// Watch the limiters' current timerfds.
    pub(crate) fn sync_limiter_timers(&mut self, ops: &mut EventOps) {
        let l = &mut self.limits;
        sync_timer(ops, l.rx.timer_fd(), &mut l.rx_registered);
        sync_timer(ops, l.tx.timer_fd(), &mut l.tx_registered);
    }

    /// Which limiter owns `fd`, if any.
    pub(crate) fn limiter_timer(&self, fd: RawFd) -> Option<LimiterTimer> {
        if Some(fd) == self.limits.rx_registered {
            Some(LimiterTimer::Rx)
        } else if Some(fd) == self.limits.tx_registered {
            Some(LimiterTimer::Tx)
        } else {
            None
        }
    }

    /// A limiter's timer fired: unblock it and resume its direction.
    pub(crate) fn on_limiter_timer(&mut self, which: LimiterTimer) {
        match which {
            LimiterTimer::Rx => {
                self.limits.rx.on_timer();
                self.process_rx();
            }
            LimiterTimer::Tx => {
                self.limits.tx.on_timer();
                self.process_tx();
            }
        }
    }
}

fn sync_timer(ops: &mut EventOps, fd: Option<RawFd>, registered: &mut Option<RawFd>) {
    if fd == *registered {
        return;
    }
    if let Some(old) = registered.take() {
        // The old timer may already be closed; epoll has then dropped it by itself.
        let _ = ops.remove(Events::new_raw(old, EventSet::IN));
    }
    if let Some(new) = fd {
        match ops.add(Events::new_raw(new, EventSet::IN)) {
            Ok(()) => *registered = Some(new),
            Err(e) => tracing::error!("net: cannot watch a rate limiter timer: {e:?}"),
        }
    }
}

#[cfg(test)]
mod tests;
