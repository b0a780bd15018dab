//! Firecracker's token-bucket rate limiter for device I/O.
//!
//! A [`RateLimiter`] holds up to two [`TokenBucket`]s: one counting bytes (`bandwidth`) and one
//! counting requests (`ops`). A bucket holds `size` tokens, refills completely in `refill_time`
//! milliseconds (continuously, in proportion to the time elapsed), and may start with an extra
//! `one_time_burst` that is spent first and never refilled. A bucket of size 0 or refill time 0
//! does not limit anything, as in Firecracker.
//!
//! When a consume fails the limiter is *blocked*: it arms a timerfd ([`REFILL_INTERVAL`]) and
//! refuses every consume until the device's event loop sees the timer fire and calls
//! [`RateLimiter::on_timer`]; the device then resumes its throttled queue. A request larger
//! than a whole bucket is let through once the bucket is full, leaving the bucket in debt (it
//! refills from below zero), so that no request is stuck forever.
//!
//! The timerfd is created only once a limit is set, so an unlimited device makes no timer
//! syscalls at all.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use cairn_snapshot::Persist;
use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

/// How long a blocked limiter waits before the device retries its queue (Firecracker: 100 ms).
pub const REFILL_INTERVAL: Duration = Duration::from_millis(100);

/// One bucket's configuration (Firecracker's `TokenBucket` body).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Extra tokens available once, spent before the bucket.
    pub one_time_burst: u64,
    /// Milliseconds to refill the bucket from empty.
    pub refill_time_ms: u64,
}

/// A limiter's configuration (Firecracker's `RateLimiter` body). `None` buckets do not limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimiterConfig {
    /// Bytes.
    pub bandwidth: Option<BucketConfig>,
    /// Requests (block) or frames (net).
    pub ops: Option<BucketConfig>,
}

/// What a token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// Bytes, from the `bandwidth` bucket.
    Bytes,
    /// Operations, from the `ops` bucket.
    Ops,
}

/// One token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    size: u64,
    /// The burst as configured (what the configuration reports).
    initial_burst: u64,
    /// What is left of the burst.
    one_time_burst: u64,
    refill_time_ms: u64,
    budget: u64,
    /// Tokens are credited for time after this instant; a time in the future is debt.
    last_update: Instant,
}

impl TokenBucket {
    /// A full bucket, or `None` when `size` or `refill_time_ms` is 0 (no limit).
    pub fn new(cfg: BucketConfig) -> Option<Self> {
        if cfg.size == 0 || cfg.refill_time_ms == 0 {
            return None;
        }
        Some(Self {
            size: cfg.size,
            initial_burst: cfg.one_time_burst,
            one_time_burst: cfg.one_time_burst,
            refill_time_ms: cfg.refill_time_ms,
            budget: cfg.size,
            last_update: Instant::now(),
        })
    }

    /// Tokens available now (burst included), after crediting the time elapsed.
    pub fn available(&mut self) -> u64 {
        self.refill(Instant::now());
        self.budget.saturating_add(self.one_time_burst)
    }

    /// Credit the tokens earned since `last_update`, keeping the fraction of a token not yet
    /// earned (so that many small refills add up to the same as one large one).
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        if elapsed == 0 {
            return;
        }
        let refill_ns = u128::from(self.refill_time_ms) * 1_000_000;
        let size = u128::from(self.size);
        let earned = elapsed * size / refill_ns;
        let room = u128::from(self.size - self.budget);
        if earned >= room {
            self.budget = self.size;
            self.last_update = now;
            return;
        }
        // earned < room <= size, so it fits in u64, and so does the time it took.
        self.budget += earned as u64;
        let spent_ns = (earned * refill_ns).div_ceil(size);
        self.last_update += Duration::from_nanos(spent_ns as u64);
    }

    /// Take `tokens`; false (and nothing taken) when there are not enough.
    pub fn reduce(&mut self, tokens: u64) -> bool {
        let from_burst = tokens.min(self.one_time_burst);
        if from_burst == tokens {
            self.one_time_burst -= tokens;
            return true;
        }
        let now = Instant::now();
        self.refill(now);
        let need = tokens - from_burst;
        if need > self.size {
            // Larger than the bucket: let it through from a full bucket and go into debt.
            if self.budget < self.size {
                return false;
            }
            self.one_time_burst -= from_burst;
            let debt = u128::from(need - self.size);
            let debt_ns =
                debt * u128::from(self.refill_time_ms) * 1_000_000 / u128::from(self.size);
            self.budget = 0;
            self.last_update =
                now + Duration::from_nanos(u64::try_from(debt_ns).unwrap_or(u64::MAX));
            return true;
        }
        if need > self.budget {
            return false;
        }
        self.one_time_burst -= from_burst;
        self.budget -= need;
        true
    }

    /// Give back `tokens` (a request that took them was not served after all).
    pub fn replenish(&mut self, tokens: u64) {
        self.budget = self.budget.saturating_add(tokens).min(self.size);
    }

    fn config(&self) -> BucketConfig {
        BucketConfig {
            size: self.size,
            one_time_burst: self.initial_burst,
            refill_time_ms: self.refill_time_ms,
        }
    }
}

/// A bandwidth and an ops bucket, and the timer that resumes a throttled device.
#[derive(Debug, Default)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: Option<TimerFd>,
    blocked: bool,
    /// How many times the limiter has throttled (Firecracker's `*_throttled` metrics).
    throttled: u64,
}

impl RateLimiter {
    /// A limiter for `cfg` (no timerfd unless some bucket limits).
    pub fn new(cfg: &LimiterConfig) -> std::io::Result<Self> {
        let mut limiter = Self::default();
        limiter.update(cfg)?;
        Ok(limiter)
    }

    /// Replace the buckets given in `cfg` with new full ones (Firecracker's PATCH semantics:
    /// a bucket left `None` is kept as it is; one with size or refill time 0 is removed).
    pub fn update(&mut self, cfg: &LimiterConfig) -> std::io::Result<()> {
        if let Some(b) = cfg.bandwidth {
            self.bandwidth = TokenBucket::new(b);
        }
        if let Some(b) = cfg.ops {
            self.ops = TokenBucket::new(b);
        }
        if self.timer.is_none() && self.is_limiting() {
            self.timer = Some(TimerFd::new().map_err(std::io::Error::from)?);
        }
        Ok(())
    }

    /// Whether any bucket limits.
    pub fn is_limiting(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// The current configuration (budgets not included).
    pub fn config(&self) -> LimiterConfig {
        LimiterConfig {
            bandwidth: self.bandwidth.as_ref().map(TokenBucket::config),
            ops: self.ops.as_ref().map(TokenBucket::config),
        }
    }

    /// Take `tokens` of `kind`. False when throttled: the limiter is then blocked until its
    /// timer fires.
    pub fn consume(&mut self, tokens: u64, kind: TokenType) -> bool {
        if self.blocked {
            return false;
        }
        let bucket = match kind {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        };
        let Some(bucket) = bucket else {
            return true;
        };
        if bucket.reduce(tokens) {
            return true;
        }
        self.block();
        false
    }

    /// Give back `tokens` of `kind` taken by a request that was then throttled on the other
    /// bucket.
    pub fn manual_replenish(&mut self, tokens: u64, kind: TokenType) {
        let bucket = match kind {
            TokenType::Bytes => self.bandwidth.as_mut(),
            TokenType::Ops => self.ops.as_mut(),
        };
        if let Some(b) = bucket {
            b.replenish(tokens);
        }
    }

    /// Consume one op and `bytes` bytes, or neither.
    pub fn consume_request(&mut self, bytes: u64) -> bool {
        if !self.consume(1, TokenType::Ops) {
            return false;
        }
        if bytes > 0 && !self.consume(bytes, TokenType::Bytes) {
            self.manual_replenish(1, TokenType::Ops);
            return false;
        }
        true
    }

    /// Give back what [`RateLimiter::consume_request`] took for a request that was then not
    /// served after all.
    pub fn give_back_request(&mut self, bytes: u64) {
        self.manual_replenish(1, TokenType::Ops);
        self.manual_replenish(bytes, TokenType::Bytes);
    }

    /// How many times a request was throttled since the limiter was made.
    pub fn throttled_count(&self) -> u64 {
        self.throttled
    }

    fn block(&mut self) {
        self.throttled += 1;
        self.blocked = true;
        if let Some(timer) = self.timer.as_mut() {
            if let Err(e) = timer.reset(REFILL_INTERVAL, None) {
                tracing::warn!("rate limiter: cannot arm timer: {e}");
                self.blocked = false;
            }
        } else {
            self.blocked = false;
        }
    }

    /// Whether the limiter is waiting for its timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timerfd the device's event loop watches (none while nothing limits).
    pub fn timer_fd(&self) -> Option<RawFd> {
        self.timer.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The timer fired: unblock. The device then retries its queue.
    pub fn on_timer(&mut self) {
        if let Some(timer) = self.timer.as_mut() {
            // The event loop saw the fd readable, so this read does not block.
            if let Err(e) = timer.wait() {
                tracing::debug!("rate limiter: timer read: {e}");
            }
        }
        self.blocked = false;
    }
}

/// One bucket's saved state: its configuration and the tokens left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketState {
    /// Size, burst as configured, and refill time.
    pub config: BucketConfig,
    /// Tokens left in the bucket.
    pub budget: u64,
    /// What is left of the one-time burst.
    pub burst_left: u64,
}

/// A limiter's saved state. A blocked limiter restores unblocked (the device retries its queue
/// when restored).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiterState {
    /// The bandwidth bucket.
    pub bandwidth: Option<BucketState>,
    /// The ops bucket.
    pub ops: Option<BucketState>,
}

fn save_bucket(b: &Option<TokenBucket>) -> Option<BucketState> {
    b.as_ref().map(|b| {
        let mut b = b.clone();
        let budget = {
            b.refill(Instant::now());
            b.budget
        };
        BucketState {
            config: b.config(),
            budget,
            burst_left: b.one_time_burst,
        }
    })
}

fn restore_bucket(s: &Option<BucketState>) -> Option<TokenBucket> {
    let s = s.as_ref()?;
    let mut b = TokenBucket::new(s.config)?;
    b.budget = s.budget.min(b.size);
    b.one_time_burst = s.burst_left.min(s.config.one_time_burst);
    Some(b)
}

impl Persist<'_> for RateLimiter {
    type State = RateLimiterState;
    type ConstructorArgs = ();
    type Error = std::io::Error;

    fn save(&self) -> Result<RateLimiterState, std::io::Error> {
        Ok(RateLimiterState {
            bandwidth: save_bucket(&self.bandwidth),
            ops: save_bucket(&self.ops),
        })
    }

    fn restore(_: (), state: &RateLimiterState) -> Result<Self, std::io::Error> {
        let mut limiter = RateLimiter {
            bandwidth: restore_bucket(&state.bandwidth),
            ops: restore_bucket(&state.ops),
            timer: None,
            blocked: false,
            throttled: 0,
        };
        if limiter.is_limiting() {
            limiter.timer = Some(TimerFd::new().map_err(std::io::Error::from)?);
        }
        Ok(limiter)
    }
}

#[cfg(test)]
mod tests;
