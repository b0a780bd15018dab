//! Sessions end to end on the Linux guest (`cairn exec -d`, `cairn sessions ls|attach|kill`):
//! a session that prints a counter keeps running across a stop (checkpoint) and a start, and
//! an attach afterwards shows the output produced before and after, from one process; a live
//! attach follows it and detaching leaves it running; kill ends it; a session that exits
//! reports its exit code through attach. Needs `cargo build --workspace --bins` and the static
//! agent (`CAIRN_AGENT_BIN`, else built here).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::sandbox::CairnHome;

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

#[test]
fn sandbox_session_survives_stop_and_start_and_replays_its_output() {
    let name = "sandbox_session_survives_stop_and_start_and_replays_its_output";
    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let h = CairnHome::new();
        h.create(
            "sb",
            &["--mem", "256", "--disk", "1", "--idle-timeout", "0"],
        );
        let id = h.ok(&["exec", "-d", "sb", "--", "sh", "-c", COUNTER]);
        let id = id.trim().to_string();
        assert!(id.parse::<u32>().is_ok(), "{id:?}");
        let list = sessions(&h);
        let pid = session(&list, &id).unwrap()["pid"].clone();
        assert_eq!(session(&list, &id).unwrap()["state"], "running");

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
