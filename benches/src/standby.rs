//! `cairn-bench standby [--runs N]`: a sandbox's wake with and without its standby VMM
//! (docs/sandbox.md, "Standby VMMs"), in alternating pairs on one sandbox (256 MiB, Linux
//! guest, jailed when run as root). Per run, each way: `cairn stop` (with `CAIRN_STANDBY=0`
//! for the fresh way), a pause for the standby to settle (a wake comes seconds or hours after
//! a sleep, not at once), then `cairn exec b -- echo x` with `CAIRN_TIMES=1`, timed to its first
//! output byte. The start's own phase times (stderr) give the restore part alone: from the
//! decision to start (after the lease and store checks) to `PUT /checkpoints/restore` returning
//! (standby check, spawn, API socket, restore), and the restore request alone. Also the
//! stop's time (it starts the standby) and the standby's RSS.

use std::time::{Duration, Instant};

use cairn_tests::sandbox::CairnHome;

use crate::util::{figure, first_byte_of, ms, sandbox_create_args, Options, Outcome};

/// The longest one timed `cairn exec` may take.
const LIMIT: Duration = Duration::from_secs(60);

/// How long after a stop the wake comes.
const SETTLE: Duration = Duration::from_millis(300);

/// One figure of a wake.
type Measure = dyn Fn(&Wake) -> f64;

/// One wake: first byte (ms), and the start's phases (name, ms) from its `CAIRN_TIMES` line.
struct Wake {
    /// The `cairn stop` before it (checkpoint, end the VMM, start the standby if any), ms.
    stop: f64,
    first_byte: f64,
    phases: Vec<(String, f64)>,
}

impl Wake {
    fn phase(&self, name: &str) -> f64 {
        self.phases
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, ms)| *ms)
            .sum()
    }

    /// From after the start's preparation to the restore's reply.
    fn to_restored(&self) -> f64 {
        ["standby", "spawn", "api", "restore"]
            .iter()
            .map(|p| self.phase(p))
            .sum()
    }
}

/// Parses `NAME: start from CKPT: T ms (a 1.0, b 2.0)`'s phases.
fn phases(stderr: &str) -> Option<Vec<(String, f64)>> {
    let line = stderr.lines().find(|l| l.contains(": start from "))?;
    let inner = line.rsplit_once('(')?.1.trim_end_matches(')');
    inner
        .split(", ")
        .map(|p| {
            let (n, v) = p.rsplit_once(' ')?;
            Some((n.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn wake(h: &CairnHome) -> Result<Wake, String> {
    let mut cmd = h.command(&["exec", "b", "--", "echo", "x"]);
    cmd.env("CAIRN_TIMES", "1");
    let t = first_byte_of(cmd, "wake exec", LIMIT)?;
    let (first, err) = (t.first_ms, t.stderr);
    let phases = phases(&err).ok_or_else(|| format!("no phase times in: {err}"))?;
    if let Some(line) = err.lines().find(|l| l.contains(": start from ")) {
        eprintln!("{line}");
    }
    Ok(Wake {
        stop: 0.0,
        first_byte: first,
        phases,
    })
}

fn stop(h: &CairnHome, standby: bool) -> Result<(), String> {
    let o = h
        .command(&["stop", "b"])
        .env("CAIRN_STANDBY", if standby { "1" } else { "0" })
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("stop: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(())
}

fn rss_kib(pid: u64) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One wake the given way, tried again (up to 3 times) on this host's guest flake.
fn one(h: &CairnHome, standby: bool, rss: &mut Vec<f64>) -> Result<Wake, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let t = Instant::now();
        stop(h, standby)?;
        let stopped = ms(t.elapsed());
        let row = h.row("b");
        let pid = row["standby_pid"].as_u64();
        if standby != pid.is_some() {
            return Err(format!("standby {standby} but the row says {row}"));
        }
        if let Some(r) = pid.and_then(rss_kib) {
            rss.push(r / 1024.0);
        }
        std::thread::sleep(SETTLE);
        match wake(h) {
            Ok(w) => return Ok(Wake { stop: stopped, ..w }),
            Err(e) => {
                eprintln!("retrying after: {e}");
                last = e;
            }
        }
    }
    Err(last)
}

/// `cairn-bench standby [--runs N]`.
pub fn standby(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    let mut h = CairnHome::new();
    h.verbose = false;
    let mut created = false;
    for _ in 0..3 {
        let o = h.command(&sandbox_create_args("b")).output();
        if o.as_ref().is_ok_and(|o| o.status.success()) {
            created = true;
            break;
        }
        eprintln!("retrying create after: {o:?}");
    }
    if !created {
        out.failures.push("cairn create failed".into());
        return out;
    }
    let (mut with, mut without, mut rss) = (vec![], vec![], vec![]);
    for run in 0..opts.runs.max(1) {
        // Alternate which way goes first.
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut pair = [None, None];
        for standby in order {
            match one(&h, standby, &mut rss) {
                Ok(w) => pair[usize::from(standby)] = Some(w),
                Err(e) => out.failures.push(format!("standby {standby}: {e}")),
            }
        }
        if let [Some(fresh), Some(took)] = pair {
            if took.phase("spawn") > 0.0 {
                out.failures
                    .push("a wake with a standby spawned a VMM (standby not taken)".into());
                continue;
            }
            without.push(fresh);
            with.push(took);
        }
    }
    let _ = h.command(&["rm", "b"]).output();
    if with.is_empty() {
        return out;
    }
    let ratio = |f: &Measure| -> Vec<f64> {
        with.iter()
            .zip(&without)
            .map(|(a, b)| f(a) / f(b))
            .collect()
    };
    let series: [(&str, &Measure); 4] = [
        (
            "`cairn stop b` (checkpoint, end the VMM, start the standby)",
            &|w: &Wake| w.stop,
        ),
        (
            "wake, `cairn exec b -- echo x` -> first byte",
            &|w: &Wake| w.first_byte,
        ),
        (
            "wake, start decided -> PUT /checkpoints/restore returns (standby check, spawn, API, restore)",
            &|w: &Wake| w.to_restored(),
        ),
        (
            "wake, PUT /checkpoints/restore request -> returns",
            &|w: &Wake| w.phase("restore"),
        ),
    ];
    for (what, f) in series {
        out.figures.push(figure(
            format!("standby: {what}, with standby"),
            with.iter().map(f).collect(),
            "ms",
        ));
        out.figures.push(figure(
            format!("standby: {what}, fresh VMM"),
            without.iter().map(f).collect(),
            "ms",
        ));
        out.figures.push(figure(
            format!("standby: {what}, ratio with / fresh (median of pairs)"),
            ratio(f),
            "x",
        ));
    }
    if !rss.is_empty() {
        out.figures
            .push(figure("standby: standby VMM RSS".into(), rss, "MiB"));
    }
    out
}
