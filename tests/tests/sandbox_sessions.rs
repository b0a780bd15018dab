//! Sessions end to end on the Linux guest (`cairn exec -d`, `cairn sessions ls|attach|kill`):
//! a session that prints a counter keeps running across a stop (checkpoint) and a start, and
//! an attach afterwards shows the output produced before and after, from one process; a live
//! attach follows it and detaching leaves it running; kill ends it; a session that exits
//! reports its exit code through attach. A second test lets the sandbox sleep by its idle
//! timeout (its VMM really stops) and wakes it by an exec, first with an idle watcher and then
//! with `cairn serve` owning idle sleep: the session is still there, its counter goes on, and
//! the output made while it was detached is replayed. Needs `cargo build --workspace --bins`
//! and the static agent (`CAIRN_AGENT_BIN`, else built here).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::sandbox::CairnHome;
use cairn_tests::serve::{idle_watchers, Serve};

const COUNTER: &str = "i=0; while :; do echo tick $i; i=$((i+1)); sleep 1; done";

/// The tick numbers in `text`, in order.
fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .collect()
}

/// `cairn sessions attach --no-follow`: the session's kept output.
fn kept(h: &CairnHome, id: &str) -> String {
    h.ok(&["sessions", "attach", "sb", id, "--no-follow"])
}

/// Polls the kept output until it holds a tick above `n`; returns the ticks.
fn wait_tick_above(h: &CairnHome, id: &str, n: Option<u64>) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = ticks(&kept(h, id));
        if t.last().copied() > n {
            return t;
        }
        assert!(Instant::now() < deadline, "no tick above {n:?}: {t:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn session<'a>(list: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    list.as_array().unwrap().iter().find(|s| match &s["id"] {
        serde_json::Value::String(s) => s == id,
        other => id.parse::<u64>().ok() == other.as_u64(),
    })
}

fn sessions(h: &CairnHome) -> serde_json::Value {
    serde_json::from_str(&h.ok(&["sessions", "ls", "sb", "--json"])).unwrap()
}

/// Creates sandbox `sb` (idle timeout `idle_timeout` s) and starts [`COUNTER`] in it as a
/// session, which must be listed as running; returns its id and pid.
fn counting_session(h: &CairnHome, idle_timeout: &str) -> (String, serde_json::Value) {
    h.create(
        "sb",
        &[
            "--mem",
            "256",
            "--disk",
            "1",
            "--idle-timeout",
            idle_timeout,
        ],
    );
    let id = h.ok(&["exec", "-d", "sb", "--", "sh", "-c", COUNTER]);
    let id = id.trim().to_string();
    assert!(id.parse::<u32>().is_ok(), "{id:?}");
    let list = sessions(h);
    let s = session(&list, &id).unwrap();
    assert_eq!(s["state"], "running");
    (id, s["pid"].clone())
}

#[test]
fn sandbox_session_survives_stop_and_start_and_replays_its_output() {
    let name = "sandbox_session_survives_stop_and_start_and_replays_its_output";
    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let h = CairnHome::new();
        let (id, pid) = counting_session(&h, "0");

        // Output while nobody is attached is kept: ticks 0..=2 at least.
        let before = wait_tick_above(&h, &id, Some(1));
        assert_eq!(before[0], 0, "{before:?}");

        // Stop (the VM is checkpointed with the session in it) and start again.
        h.ok(&["stop", "sb"]);
        assert_eq!(h.row("sb")["state"], "stopped");
        h.restore_like(&["start", "sb"], &["start", "sb"]);

        // Attach: the output from before the stop and after the start, from one process
        // (its counter goes on; a new process would start at 0 again).
        let after = wait_tick_above(&h, &id, before.last().map(|n| n + 2));
        assert_eq!(after[0], 0);
        assert!(
            after.windows(2).all(|w| w[1] == w[0] + 1),
            "not one counting process: {after:?}"
        );
        assert_eq!(&after[..before.len()], &before[..]);
        let list = sessions(&h);
        assert_eq!(session(&list, &id).unwrap()["pid"], pid);
        assert_eq!(session(&list, &id).unwrap()["state"], "running");

        // A live attach replays, then follows; killing the client detaches.
        let mut child = h
            .command(&["sessions", "attach", "sb", &id])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let last = *after.last().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "no live tick above {last}");
            let line = lines.next().unwrap().unwrap();
            if ticks(&line).first().is_some_and(|&n| n > last + 1) {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let list = sessions(&h);
        assert_eq!(session(&list, &id).unwrap()["state"], "running");
        assert_eq!(session(&list, &id).unwrap()["attached"], 0);

        // kill ends it and forgets it.
        let out = h.ok(&["sessions", "kill", "sb", &id]);
        assert!(out.contains("killed"), "{out}");
        assert!(session(&sessions(&h), &id).is_none());
        let bad = h.run(&["sessions", "attach", "sb", &id]);
        assert_eq!(bad.status.code(), Some(125));
        assert!(String::from_utf8_lossy(&bad.stderr).contains("no session"));

        // A session that ends: attach prints its output and exits with its code.
        let id2 = h.ok(&["exec", "-d", "sb", "--", "sh", "-c", "echo bye; exit 7"]);
        let out = h.run(&["sessions", "attach", "sb", id2.trim()]);
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "bye\n");
        let list = sessions(&h);
        let s2 = session(&list, id2.trim()).unwrap();
        assert_eq!(
            (&s2["state"], &s2["exit_code"]),
            (&"exited".into(), &7.into())
        );
    });
}

/// Whether the VMM `pid` is gone (or a zombie waiting for init).
fn vmm_gone(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty()
        || stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
}

/// Polls `what` every second for up to `secs`.
fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One idle sleep and wake of `sb` with session `id` counting in it: ticks seen before, the
/// sandbox left alone until its idle timeout stops its VMM (`stopped_by` names who: the line
/// `log` then holds once more), an exec wakes it, and the session is the same process, its
/// counter gone on from where it was, with everything it printed while detached replayed.
/// Returns the last tick seen.
fn sleep_and_wake(
    h: &CairnHome,
    id: &str,
    pid: &serde_json::Value,
    seen: Option<u64>,
    log: &dyn Fn() -> String,
) -> u64 {
    let before = wait_tick_above(h, id, seen);
    let idle_stops = || log().matches("sb: idle, stopped at checkpoint").count();
    let stops = idle_stops();
    let vmm = h.row("sb")["pid"].as_u64().unwrap();
    // Nothing touches the sandbox now (`cairn ls` does not): its idle timeout runs out.
    let slept = Instant::now();
    wait_until(180, "the idle stop", || h.row("sb")["state"] == "stopped");
    eprintln!(
        "idle stop {:.1} s after the last look at the session",
        slept.elapsed().as_secs_f64()
    );
    assert!(vmm_gone(vmm), "the idle VMM {vmm} is still there");
    wait_until(10, "the idle stop's log line", || idle_stops() == stops + 1);

    // An exec wakes it; the session is still there, the same process, still running.
    let woke = Instant::now();
    assert_eq!(h.sh("sb", "echo awake"), "awake\n");
    eprintln!("wake + exec: {:.2} s", woke.elapsed().as_secs_f64());
    assert_eq!(h.row("sb")["state"], "running");
    assert_ne!(h.row("sb")["pid"].as_u64(), Some(vmm), "a new VMM");
    let list = sessions(h);
    let s = session(&list, id).expect("the session is gone after the wake");
    assert_eq!((&s["state"], &s["pid"]), (&"running".into(), pid), "{s}");

    // Its counter goes on from where it was: the kept output is one run of ticks from 0,
    // the ticks from before the sleep first (a restarted process would count from 0 again).
    let last = *before.last().unwrap();
    let after = wait_tick_above(h, id, Some(last + 2));
    assert_eq!(after[0], 0, "{after:?}");
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "not one counting process: {after:?}"
    );
    assert_eq!(&after[..before.len()], &before[..]);
    *after.last().unwrap()
}

#[test]
fn sandbox_session_keeps_running_across_idle_sleep_and_wake() {
    let name = "sandbox_session_keeps_running_across_idle_sleep_and_wake";
    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let h = CairnHome::new();
        let (id, pid) = counting_session(&h, "10");

        // Without a daemon: the sandbox's idle watcher stops it.
        assert_eq!(idle_watchers(&h, "sb").len(), 1, "no idle watcher");
        let idle_log = || std::fs::read_to_string(h.dir("sb").join("idle.log")).unwrap_or_default();
        let seen = sleep_and_wake(&h, &id, &pid, None, &idle_log);

        // With `cairn serve` owning idle sleep: the watcher ends, the daemon stops the sandbox,
        // and the CLI's exec, ls and sessions go through the daemon.
        let serve = Serve::start(&h, &[]);
        wait_until(10, "the watcher to end", || {
            idle_watchers(&h, "sb").is_empty()
        });
        let serve_log = || serve.log_text();
        let seen = sleep_and_wake(&h, &id, &pid, Some(seen), &serve_log);
        let log = serve.log_text();
        assert!(log.contains("POST /v1/sandboxes/sb/exec "), "{log}");
        assert!(
            log.contains(&format!("GET /v1/sandboxes/sb/sessions/{id}/attach")),
            "{log}"
        );
        assert!(idle_watchers(&h, "sb").is_empty());
        eprintln!("the session counted to {seen} across two sleeps");
        h.ok(&["sessions", "kill", "sb", &id]);

        // `exec -d` and `exec --timeout` go through the daemon too.
        let requests = |what: &str| serve.log_text().matches(what).count();
        let id2 = h.ok(&["exec", "-d", "sb", "--", "sh", "-c", "echo via; sleep 300"]);
        let id2 = id2.trim();
        assert_eq!(requests("POST /v1/sandboxes/sb/sessions "), 1);
        wait_until(60, "the daemon-started session's output", || {
            kept(&h, id2) == "via\n"
        });
        h.ok(&["sessions", "kill", "sb", id2]);
        let execs = requests("POST /v1/sandboxes/sb/exec ");
        let cmd = [
            "exec",
            "--timeout",
            "3",
            "sb",
            "--",
            "sh",
            "-c",
            "echo on; sleep 37",
        ];
        let t = Instant::now();
        let out = h.run(&cmd);
        eprintln!(
            "exec --timeout 3 through the daemon: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        assert_eq!(out.status.code(), Some(124), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "on\n");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("ran past --timeout 3 s"),
            "{out:?}"
        );
        assert_eq!(requests("POST /v1/sandboxes/sb/exec "), execs + 1);
        // The daemon killed the command when the CLI left.
        wait_until(30, "the timed-out command to be killed", || {
            !h.sh("sb", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
                .contains("sleep 37")
        });
        assert!(serve.log_text().contains("client left mid-exec"));
        // A create naming an unknown image is the daemon's 404, before anything is made.
        let bad = h.run(&["create", "x", "--image", "nope", "--cold"]);
        assert_eq!(bad.status.code(), Some(125), "{bad:?}");
        assert!(String::from_utf8_lossy(&bad.stderr).contains("no image \"nope\""));
        assert_eq!(
            requests("POST /v1/sandboxes 404"),
            1,
            "{}",
            serve.log_text()
        );
    });
}
