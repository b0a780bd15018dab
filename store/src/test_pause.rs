//! A test knob, for the crash-safety tests only (tests/tests/store_crash.rs): with
//! `CAIRN_TEST_PUSH_PAUSE` set, a push stops at a point, prints `CAIRN_TEST_PUSH_PAUSED <point>`
//! on stdout and sleeps until it is killed. Points: `chunks:N` (after N chunk uploads) and
//! `manifest` (every chunk uploaded, the manifest not yet written). Unset (always, outside
//! those tests), each check is one environment lookup per chunk and nothing else.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const VAR: &str = "CAIRN_TEST_PUSH_PAUSE";

static UPLOADED: AtomicUsize = AtomicUsize::new(0);

fn pause(point: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "CAIRN_TEST_PUSH_PAUSED {point}");
    let _ = out.flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Pause here if the knob names `point`.
pub(crate) fn at(point: &str) {
    if std::env::var(VAR).as_deref() == Ok(point) {
        pause(point);
    }
}

/// One chunk uploaded: pause if the knob is `chunks:N` and this was the N-th.
pub(crate) fn chunk_uploaded() {
    let n = UPLOADED.fetch_add(1, Ordering::SeqCst) + 1;
    let Ok(v) = std::env::var(VAR) else {
        return;
    };
    if v.strip_prefix("chunks:").and_then(|k| k.parse().ok()) == Some(n) {
        pause(&v);
    }
}
