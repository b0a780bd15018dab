//! The `cairn` CLI as a user times it, on the Linux guest: the first `cairn create` (a boot,
//! keeping the golden checkpoint), later creates from that checkpoint and their first exec, a warm `cairn exec` round trip, wake from idle (a stopped sandbox's `cairn exec`)
//! to the command's first output byte, and `cairn fork` (with and without starting the fork)
//! with the disk each fork adds. Runs `cairn` from beside this binary, in a private
//! `CAIRN_HOME` under `/tmp`.

use std::time::Instant;

use cairn_tests::sandbox::CairnHome;

use crate::util::{figure, first_byte_of, ms, sandbox_create_args, Options, Outcome};

/// The longest one timed `cairn` command may take.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Time from spawning `cairn ARGS` to its first stdout byte, and to its exit. Fails unless it
/// exits 0.
fn first_byte(h: &CairnHome, args: &[&str]) -> Result<(f64, f64), String> {
    let t = first_byte_of(h.command(args), &format!("cairn {args:?}"), LIMIT)?;
    Ok((t.first_ms, t.total_ms))
}

/// [`first_byte`], tried again (up to 4 times) when the guest process or agent died at start,
/// this host's known flake (docs/guest.md); the failed tries are not samples. When the agent
/// itself is gone, the sandbox is first rolled back to its `base` checkpoint.
fn first_byte_retried(
    h: &CairnHome,
    args: &[&str],
    before: &dyn Fn(),
) -> Result<(f64, f64), String> {
    let mut last = String::new();
    for _ in 0..4 {
        before();
        match first_byte(h, args) {
            Ok(t) => return Ok(t),
            Err(e) => {
                eprintln!("retrying after: {e}");
                if e.contains("closed the connection") || e.contains("agent crashed") {
                    let _ = h
                        .command(&["checkpoint", "restore", args[1], "base"])
                        .output();
                }
                last = e;
            }
        }
    }
    Err(last)
}

/// Creates from the golden checkpoint the first create kept, each then its first exec (to the
/// first output byte), and the sandbox removed again. `create` returns once the VMM runs the
/// restored guest; the guest's clock, network and identity follow (`cairn __settle`), and the
/// first exec waits for them: so the sum of the two is reported too.
fn golden_creates(h: &CairnHome, runs: usize, out: &mut Outcome) {
    let (mut create, mut exec, mut both) = (vec![], vec![], vec![]);
    for i in 0..runs {
        let name = format!("g{i}");
        let shape = ["--mem", "256", "--disk", "1", "--idle-timeout", "0"];
        let mut args = vec!["create", name.as_str()];
        args.extend_from_slice(&shape);
        let t = Instant::now();
        let created = match h.command(&args).output() {
            Ok(o) if o.status.success() => ms(t.elapsed()),
            other => {
                out.failures.push(format!("golden create: {other:?}"));
                continue;
            }
        };
        create.push(created);
        match first_byte(h, &["exec", &name, "--", "echo", "x"]) {
            Ok((f, _)) => {
                exec.push(f);
                both.push(created + f);
            }
            Err(e) => out.failures.push(format!("first exec after create: {e}")),
        }
        let _ = h.command(&["rm", &name]).output();
    }
    for (what, samples) in [
        (
            "sandbox: cairn create from the golden checkpoint -> returns (VMM restored, guest running)",
            create,
        ),
        (
            "sandbox: first `cairn exec NEW -- echo x` after a golden create -> first byte (waits for the guest's identity)",
            exec,
        ),
        (
            "sandbox: golden create + first exec -> first byte",
            both,
        ),
    ] {
        if !samples.is_empty() {
            out.figures.push(figure(what.into(), samples, "ms"));
        }
    }
}

/// `cairn-bench sandbox [--runs N]`.
pub fn sandbox(opts: &Options) -> Outcome {
    let mut out = Outcome::default();
    let mut h = CairnHome::new();
    h.verbose = false;
    // A boot the host's guest crash hit (docs/guest.md) is not a sample: boot again.
    let mut last = String::new();
    let mut created = None;
    for _ in 0..3 {
        let t = Instant::now();
        let o = h.command(&sandbox_create_args("b")).output();
        match o {
            Ok(o) if o.status.success() => {
                created = Some(t.elapsed().as_secs_f64());
                break;
            }
            Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => last = e.to_string(),
        }
        if !last.contains("segfault") && !last.contains("crashed") {
            break;
        }
        eprintln!("retrying after: {last}");
    }
    let Some(created) = created else {
        out.failures.push(format!("cairn create: {last}"));
        return out;
    };
    out.figures.push(figure(
        "sandbox: first cairn create (256 MiB, 1 GiB disk): boot -> agent answers, keep golden"
            .into(),
        vec![created],
        "s",
    ));
    let runs = opts.runs.max(1);
    golden_creates(&h, runs, &mut out);
    // Something to roll back to if the agent dies (see `first_byte_retried`).
    if !h
        .command(&["checkpoint", "create", "b", "base"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        out.failures.push("checkpoint base failed".into());
        return out;
    }
    let echo = ["exec", "b", "--", "echo", "x"];
    let mut warm = (vec![], vec![]);
    let mut t_true = vec![];
    for _ in 0..runs {
        match first_byte_retried(&h, &echo, &|| ()) {
            Ok((f, total)) => {
                warm.0.push(f);
                warm.1.push(total);
            }
            Err(e) => out.failures.push(format!("warm exec: {e}")),
        }
        let t = Instant::now();
        if h.command(&["exec", "b", "--", "true"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            t_true.push(ms(t.elapsed()));
        }
    }
    if !t_true.is_empty() {
        out.figures.push(figure(
            "sandbox: warm `cairn exec b -- true` round trip".into(),
            t_true,
            "ms",
        ));
    }
    if !warm.0.is_empty() {
        out.figures.push(figure(
            "sandbox: warm `cairn exec b -- echo x`, start -> first byte".into(),
            warm.0.clone(),
            "ms",
        ));
    }
    // Wake: per run, a warm exec, then stop (checkpoint + end the VMM, as idling does) and the
    // same exec again; the overhead is the pair's difference (the host's noise is large).
    let stop = || {
        let _ = h.command(&["stop", "b"]).output();
    };
    let (mut wake, mut beyond) = (vec![], vec![]);
    for _ in 0..runs {
        let warm = match first_byte_retried(&h, &echo, &|| ()) {
            Ok((f, _)) => f,
            Err(e) => {
                out.failures.push(format!("warm exec: {e}"));
                continue;
            }
        };
        match first_byte_retried(&h, &echo, &stop) {
            Ok((f, _)) => {
                wake.push(f);
                beyond.push(f - warm);
            }
            Err(e) => out.failures.push(format!("wake exec: {e}")),
        }
    }
    if !wake.is_empty() {
        out.figures.push(figure(
            "sandbox: wake from stopped, `cairn exec b -- echo x` -> first byte".into(),
            wake,
            "ms",
        ));
        out.figures.push(figure(
            "sandbox: wake overhead (minus a warm exec just before)".into(),
            beyond,
            "ms",
        ));
    }
    // Forks of one checkpoint.
    if let Err(e) = h.command(&["checkpoint", "create", "b", "c1"]).output() {
        out.failures.push(format!("checkpoint: {e}"));
        return out;
    }
    let (mut fork_files, mut fork_start, mut fork_exec, mut fork_du) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..runs.min(4) {
        let name = format!("f{i}");
        let t = Instant::now();
        let o = h
            .command(&["fork", "b", "c1", &name, "--no-start"])
            .output();
        if !o.as_ref().is_ok_and(|o| o.status.success()) {
            out.failures.push(format!("fork --no-start: {o:?}"));
            continue;
        }
        fork_files.push(ms(t.elapsed()));
        // `cairn start` (restore, agent answers) and the first exec, timed apart.
        for _ in 0..4 {
            let t = Instant::now();
            if h.command(&["start", &name])
                .output()
                .is_ok_and(|o| o.status.success())
            {
                fork_start.push(ms(t.elapsed()));
                break;
            }
        }
        match first_byte_retried(&h, &["exec", &name, "--", "echo", "x"], &|| ()) {
            Ok((f, _)) => fork_exec.push(f),
            Err(e) => out.failures.push(format!("first exec in a fork: {e}")),
        }
        let du = h.du(&[&h.dir("b"), &h.dir(&name)]);
        fork_du.push(du[1] as f64 / (1024.0 * 1024.0));
    }
    if !fork_files.is_empty() {
        out.figures.push(figure(
            "sandbox: cairn fork b c1 NEW --no-start (links, config, row)".into(),
            fork_files,
            "ms",
        ));
    }
    if !fork_start.is_empty() {
        out.figures.push(figure(
            "sandbox: cairn start NEW (a fork's restore -> agent answers)".into(),
            fork_start,
            "ms",
        ));
    }
    if !fork_exec.is_empty() {
        out.figures.push(figure(
            "sandbox: a fork's first `cairn exec NEW -- echo x` -> first byte".into(),
            fork_exec,
            "ms",
        ));
    }
    if !fork_du.is_empty() {
        out.figures.push(figure(
            "sandbox: disk a fork adds after one exec (du, shared files counted once)".into(),
            fork_du,
            "MiB",
        ));
    }
    out
}
