use std::time::{Duration, Instant};

use cairn_snapshot::Persist;

use super::*;

fn bucket(size: u64, burst: u64, refill_time_ms: u64) -> BucketConfig {
    BucketConfig {
        size,
        one_time_burst: burst,
        refill_time_ms,
    }
}

#[test]
fn zero_size_or_refill_does_not_limit() {
    assert!(TokenBucket::new(bucket(0, 0, 100)).is_none());
    assert!(TokenBucket::new(bucket(100, 0, 0)).is_none());
    let mut l = RateLimiter::new(&LimiterConfig {
        bandwidth: Some(bucket(0, 0, 100)),
        ops: None,
    })
    .unwrap();
    assert!(!l.is_limiting());
    assert!(l.timer_fd().is_none());
    assert!(l.consume(u64::MAX, TokenType::Bytes));
    assert!(l.consume_request(1 << 40));
}

#[test]
fn bucket_spends_burst_then_budget_and_refills_over_time() {
    let mut b = TokenBucket::new(bucket(1000, 500, 100)).unwrap();
    assert_eq!(b.available(), 1500);
    assert!(b.reduce(400)); // from the burst
    assert!(b.reduce(600)); // 100 burst + 500 budget
    assert!(!b.reduce(600)); // 500 left
    assert!(b.reduce(500));
    assert!(!b.reduce(100));
    std::thread::sleep(Duration::from_millis(50));
    // About half refilled (at least 400 even on a slow host; never more than the size).
    let avail = b.available();
    assert!((400..=1000).contains(&avail), "{avail}");
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(
        b.available(),
        1000,
        "full after the refill time, never more"
    );
}

#[test]
fn small_refills_add_up_like_one() {
    let mut b = TokenBucket::new(bucket(3, 0, 1000)).unwrap();
    assert!(b.reduce(3));
    // Each 1/3 s earns one token; fractions are kept between refills.
    let start = b.last_update;
    b.refill(start + Duration::from_millis(200));
    assert_eq!(b.budget, 0);
    b.refill(start + Duration::from_millis(400));
    assert_eq!(b.budget, 1);
    b.refill(start + Duration::from_millis(700));
    assert_eq!(b.budget, 2);
}

#[test]
fn request_larger_than_bucket_passes_from_full_bucket_into_debt() {
    let mut b = TokenBucket::new(bucket(100, 0, 100)).unwrap();
    assert!(b.reduce(300));
    // 200 tokens of debt: two refill times before anything is available.
    assert!(b.last_update > Instant::now() + Duration::from_millis(150));
    assert!(!b.reduce(1));
    assert!(!b.reduce(300), "only from a full bucket");
}

#[test]
fn throttled_limiter_blocks_until_timer_fires() {
    let mut l = RateLimiter::new(&LimiterConfig {
        bandwidth: Some(bucket(1000, 0, 100)),
        ops: Some(bucket(10, 0, 100)),
    })
    .unwrap();
    assert!(l.timer_fd().is_some());
    assert!(l.consume_request(1000));
    assert!(!l.consume_request(1), "bandwidth spent");
    assert!(l.is_blocked());
    assert_eq!(l.throttled_count(), 1);
    // The op taken for the refused request was given back: 9 left.
    assert_eq!(l.ops.as_mut().unwrap().available(), 9);
    assert!(!l.consume(1, TokenType::Ops), "blocked refuses everything");
    // on_timer reads the timerfd, which blocks until the timer fires.
    let start = Instant::now();
    l.on_timer();
    assert!(start.elapsed() >= Duration::from_millis(90));
    assert!(!l.is_blocked());
    assert!(l.consume_request(500), "refilled meanwhile");
}

#[test]
fn update_replaces_given_buckets_and_keeps_others() {
    let mut l = RateLimiter::new(&LimiterConfig {
        bandwidth: Some(bucket(1000, 0, 100)),
        ops: Some(bucket(10, 0, 100)),
    })
    .unwrap();
    l.update(&LimiterConfig {
        bandwidth: Some(bucket(5000, 0, 200)),
        ops: None,
    })
    .unwrap();
    assert_eq!(l.config().bandwidth, Some(bucket(5000, 0, 200)));
    assert_eq!(l.config().ops, Some(bucket(10, 0, 100)));
    l.update(&LimiterConfig {
        bandwidth: Some(bucket(0, 0, 0)),
        ops: None,
    })
    .unwrap();
    assert_eq!(l.config().bandwidth, None, "size 0 removes the bucket");
}

#[test]
fn persist_round_trip_keeps_config_and_budget() {
    let mut l = RateLimiter::new(&LimiterConfig {
        bandwidth: Some(bucket(1_000_000, 7, 60_000)),
        ops: None,
    })
    .unwrap();
    assert!(l.consume(500_007, TokenType::Bytes));
    let state = l.save().unwrap();
    let bw = state.bandwidth.unwrap();
    assert_eq!(
        bw.config,
        bucket(1_000_000, 7, 60_000),
        "the burst as configured"
    );
    assert_eq!(bw.burst_left, 0, "and spent");
    // A minute refills the bucket: a few ms of test time add a few hundred tokens at most.
    assert!((500_000..501_000).contains(&bw.budget), "{}", bw.budget);
    assert_eq!(state.ops, None);
    let mut restored = RateLimiter::restore((), &state).unwrap();
    assert_eq!(
        restored.save().unwrap().bandwidth.unwrap().config,
        bw.config
    );
    assert!(restored.timer_fd().is_some());
    assert!(
        !restored.consume(600_000, TokenType::Bytes),
        "budget kept, burst not given again"
    );
    let unlimited = RateLimiter::restore((), &RateLimiterState::default()).unwrap();
    assert!(unlimited.timer_fd().is_none());
}
