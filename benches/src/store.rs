//! The store (docs/storage.md) as a user times it, through the `cairn` CLI and a real S3 server
//! on 127.0.0.1 (scripts/s3-server, s3s-fs): the Linux guest at 256 MiB with a 1 GiB disk.
//!
//! - dedup of 10 forks of one image: one sandbox booted and stopped, 10 forks of its checkpoint
//!   each started, given a command, stopped (a checkpoint of its own each); `cairn df`'s total
//!   logical / stored bytes, and what pushing all 11 uploads against their logical bytes;
//! - dedup of 10 successive checkpoints of one sandbox, a little guest work (a log line, ~0.8 MB
//!   of new file data written by awk) between them: `cairn df` for that sandbox;
//! - restore on a second host with an empty chunk cache: a fresh `CAIRN_HOME` pulls the pushed
//!   sandbox (bytes fetched against the checkpoint's size) and runs its first exec (the wake);
//!   time from the pull's start to that exec's output, `--runs` times;
//! - push (upload) and pull (download) throughput of the first push and of the pulls;
//! - the second-host restore pulled eagerly (`pull --eager`) and, as `cairn pull` does by
//!   default, lazily: memory fetched on first touch, disk blocks on first read; bytes fetched
//!   (pull + faults + disk reads, the background fetch off) by the first exec.
//!
//! `CAIRN_BENCH_STORE_COUNT=N` makes N forks and N checkpoints instead of 10 (a busy host; the
//! figures' names say how many).

use std::time::Instant;

use cairn_tests::s3::{S3Server, SMALL_COLD_SANDBOX};
use cairn_tests::sandbox::CairnHome;

use crate::util::{figure, Figure, Options, Outcome};

/// Forks of one image and successive checkpoints of one sandbox: 10, or
/// `CAIRN_BENCH_STORE_COUNT` (fewer, for a busy host; the figures' names say how many).
fn count() -> usize {
    std::env::var("CAIRN_BENCH_STORE_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(10)
}
const MIB: f64 = 1048576.0;

fn json(h: &CairnHome, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&h.ok(args)).unwrap()
}

fn u(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}")) as f64
}

fn home(s3: &S3Server) -> CairnHome {
    let mut h = s3.home();
    h.verbose = false;
    h
}

fn one(name: &str, value: f64, unit: &'static str) -> Figure {
    figure(name.to_string(), vec![value], unit)
}

/// `cairn-bench store`.
pub fn store(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    let s3 = S3Server::start();
    let a = home(&s3);
    out.take("store", measure(opts, &s3, &a));
    out
}

fn measure(opts: &Options, s3: &S3Server, a: &CairnHome) -> Result<Vec<Figure>, String> {
    let (forks, checkpoints) = (count(), count());
    let mut figs = Vec::new();
    a.create("img", SMALL_COLD_SANDBOX);
    let stop = a.ok(&["stop", "img"]);
    let ckpt = stop.trim().rsplit(' ').next().unwrap().to_string();

    // 10 forks of one image, each run and stopped.
    for i in 0..forks {
        let f = format!("f{i}");
        a.ok(&["fork", "img", &ckpt, &f, "--no-start"]);
        a.sh(&f, &format!("echo fork {i} > /root/id; sync"));
        a.ok(&["stop", &f]);
    }
    let df = json(a, &["df", "--json"]);
    let (logical, stored) = (
        u(&df["total"], "logical_bytes"),
        u(&df["total"], "stored_bytes"),
    );
    figs.push(one(
        &format!("dedup: image + {forks} forks (df logical/stored)"),
        logical / stored,
        "x",
    ));
    figs.push(one(
        &format!("dedup: image + {forks} forks, logical"),
        logical / MIB,
        "MiB",
    ));
    figs.push(one(
        &format!("dedup: image + {forks} forks, stored"),
        stored / MIB,
        "MiB",
    ));
    let first = json(a, &["push", "img", "--json"]);
    let (mut up_logical, mut up_bytes) = (u(&first, "logical_bytes"), u(&first, "bytes_uploaded"));
    figs.push(one(
        "push: first push, upload throughput",
        u(&first, "bytes_uploaded") / MIB / first["seconds"].as_f64().unwrap(),
        "MiB/s",
    ));
    for i in 0..forks {
        let p = json(a, &["push", &format!("f{i}"), "--json"]);
        up_logical += u(&p, "logical_bytes");
        up_bytes += u(&p, "bytes_uploaded");
    }
    figs.push(one(
        &format!("dedup: image + {forks} forks pushed (logical/uploaded)"),
        up_logical / up_bytes,
        "x",
    ));

    // 10 successive checkpoints of one sandbox, a little work between them.
    a.ok(&["fork", "img", &ckpt, "seq", "--no-start"]);
    for i in 0..checkpoints {
        a.sh(
            "seq",
            &format!(
                "echo step {i} >> /root/log; \
                 awk 'BEGIN {{ for (n = 0; n < 100000; n++) print n, {i} }}' > /root/r{i}; sync"
            ),
        );
        a.ok(&["checkpoint", "create", "seq"]);
    }
    a.ok(&["stop", "seq"]);
    let df = json(a, &["df", "--json"]);
    let seq = df["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "seq")
        .unwrap()
        .clone();
    figs.push(one(
        &format!("dedup: {checkpoints} successive checkpoints (df logical/stored)"),
        u(&seq, "logical_bytes") / u(&seq, "stored_bytes"),
        "x",
    ));
    figs.push(one(
        &format!("dedup: {checkpoints} successive checkpoints, logical"),
        u(&seq, "logical_bytes") / MIB,
        "MiB",
    ));
    figs.push(one(
        &format!("dedup: {checkpoints} successive checkpoints, stored"),
        u(&seq, "stored_bytes") / MIB,
        "MiB",
    ));

    // Restore on a second host with an empty cache.
    let pushed = json(a, &["push", "seq", "--json"]);
    let size = u(&pushed, "logical_bytes");
    let (mut first_exec, mut pull_s, mut fetched, mut wake) = (vec![], vec![], vec![], vec![]);
    let mut down = vec![];
    for _ in 0..opts.runs {
        let b = home(s3);
        let t0 = Instant::now();
        let p = json(&b, &["pull", "seq", "--eager", "--json"]);
        let pulled = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let said = b.sh("seq", "tail -n 1 /root/log");
        let woke = t1.elapsed().as_secs_f64();
        if said.trim() != format!("step {}", checkpoints - 1) {
            return Err(format!("the pulled sandbox said {said:?}"));
        }
        first_exec.push(t0.elapsed().as_secs_f64() * 1000.0);
        pull_s.push(pulled * 1000.0);
        wake.push(woke * 1000.0);
        fetched.push(u(&p, "bytes_fetched") / MIB);
        down.push(u(&p, "bytes_fetched") / MIB / p["seconds"].as_f64().unwrap());
        b.ok(&["stop", "seq"]);
    }
    figs.push(figure(
        "second host: pull + first exec".into(),
        first_exec,
        "ms",
    ));
    figs.push(figure("second host: pull".into(), pull_s, "ms"));
    figs.push(figure("second host: first exec (wake)".into(), wake, "ms"));
    figs.push(figure("second host: bytes fetched".into(), fetched, "MiB"));
    figs.push(one(
        "second host: checkpoint chain + disk (non-zero)",
        size / MIB,
        "MiB",
    ));
    figs.push(figure("pull: download throughput".into(), down, "MiB/s"));
    figs.extend(lazy_second_host(opts, s3, checkpoints)?);
    Ok(figs)
}

/// Restore on a second host with an empty cache, pulled lazily: memory fetched on first touch,
/// disk blocks on first read (the background fetch off, so the bytes are what the start and the
/// first exec needed).
fn lazy_second_host(
    opts: &Options,
    s3: &S3Server,
    checkpoints: usize,
) -> Result<Vec<Figure>, String> {
    let (mut first_exec, mut pull_s, mut wake, mut fetched, mut faults) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut disk_fetched = vec![];
    for _ in 0..opts.runs {
        let mut b = home(s3);
        b.env
            .push(("CAIRN_STORE_LAZY_BACKGROUND".into(), "0".into()));
        let t0 = Instant::now();
        let p = json(&b, &["pull", "seq", "--json"]);
        let pulled = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let said = b.sh("seq", "tail -n 1 /root/log");
        let woke = t1.elapsed().as_secs_f64();
        if said.trim() != format!("step {}", checkpoints - 1) {
            return Err(format!("the lazily pulled sandbox said {said:?}"));
        }
        let stats_path = b.home.path().join("sandboxes/seq/page-server.json");
        let stats: serde_json::Value = std::fs::read(&stats_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| format!("no {}", stats_path.display()))?;
        first_exec.push(t0.elapsed().as_secs_f64() * 1000.0);
        pull_s.push(pulled * 1000.0);
        wake.push(woke * 1000.0);
        let on_touch = stats["fetch"]["fault_bytes_fetched"].as_u64().unwrap_or(0) as f64;
        let on_read = stats["fetch"]["disk_bytes_fetched"].as_u64().unwrap_or(0) as f64;
        fetched.push((u(&p, "bytes_fetched") + on_touch + on_read) / MIB);
        disk_fetched.push(on_read / MIB);
        faults.push(stats["faults"].as_u64().unwrap_or(0) as f64);
        b.ok(&["stop", "seq"]);
    }
    Ok(vec![
        figure(
            "second host, lazy: pull + first exec".into(),
            first_exec,
            "ms",
        ),
        figure("second host, lazy: pull".into(), pull_s, "ms"),
        figure(
            "second host, lazy: first exec (served wake)".into(),
            wake,
            "ms",
        ),
        figure(
            "second host, lazy: bytes fetched by the first exec".into(),
            fetched,
            "MiB",
        ),
        figure(
            "second host, lazy: disk bytes fetched for reads".into(),
            disk_fetched,
            "MiB",
        ),
        figure("second host, lazy: faults served".into(), faults, "faults"),
    ])
}
