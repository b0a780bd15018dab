//! Idle sleep with `cairn serve` running, end to end on the Linux guest: the daemon takes idle
//! sleep over from a sandbox's `cairn __idle-watch` process (which ends), stops the sandbox
//! itself once it idles, and an exec through the API wakes it. The CLI's exec, checkpoint,
//! stop, policy, ls, cp, fork and sessions go through the daemon (its access log shows them)
//! and print and exit as they do without it. A clean stop of the daemon hands the sandbox back to a watcher, which
//! stops it again. Needs `cargo build --workspace --bins` and the static agent
//! (`CAIRN_AGENT_BIN`, else built here).

use std::time::{Duration, Instant};

use cairn_tests::kvm_available;
use cairn_tests::linux::retry_on_guest_flake;
use cairn_tests::sandbox::CairnHome;
use cairn_tests::serve::{idle_watchers, Serve};

/// Polls `what` every half second for up to `secs`.
fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn serve_owns_idle_sleep_and_the_cli_goes_through_it() {
    let name = "serve_owns_idle_sleep_and_the_cli_goes_through_it";
    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let h = CairnHome::new();
        // Without a daemon, as before: a watcher process per running sandbox.
        h.create(
            "sb",
            &["--mem", "256", "--disk", "1", "--idle-timeout", "15"],
        );
        assert_eq!(h.row("sb")["state"], "running");
        assert_eq!(
            idle_watchers(&h, "sb").len(),
            1,
            "no watcher without a daemon"
        );

        // The daemon takes over: the watcher ends, and the daemon stops the idle sandbox.
        let serve = Serve::start(&h, &[]);
        wait_until(10, "the watcher to end", || {
            idle_watchers(&h, "sb").is_empty()
        });
        let start = Instant::now();
        wait_until(120, "the daemon's idle stop", || {
            h.row("sb")["state"] == "stopped"
        });
        eprintln!(
            "serve: idle stop {:.1} s after the hand-over",
            start.elapsed().as_secs_f64()
        );
        assert!(idle_watchers(&h, "sb").is_empty());
        assert!(
            serve.log_text().contains("sb: idle, stopped at checkpoint"),
            "{}",
            serve.log_text()
        );

        // An exec through the API wakes it; still no watcher process.
        let start = Instant::now();
        let (code, body) = serve.request(
            "POST",
            "/v1/sandboxes/sb/exec",
            Some(r#"{"command": "echo woke"}"#),
        );
        assert_eq!(code, 200, "{body}");
        let r: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
        assert_eq!(r["exit_code"], 0, "{body}");
        assert_eq!(r["stdout"], "woke\n", "{body}");
        eprintln!(
            "serve: exec on the sleeping sandbox answered in {:.2} s",
            start.elapsed().as_secs_f64()
        );
        assert_eq!(h.row("sb")["state"], "running");
        assert!(idle_watchers(&h, "sb").is_empty());

        // The CLI goes through the daemon, with the same output and exit code as without it.
        let requests = |what: &str| serve.log_text().matches(what).count();
        let exec = "POST /v1/sandboxes/sb/exec ";
        let before = requests(exec);
        let cmd = [
            "exec",
            "sb",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ];
        let via = h.command(&cmd).output().unwrap();
        assert_eq!(requests(exec), before + 1, "{}", serve.log_text());
        let here = h
            .command(&cmd)
            .env("CAIRN_NO_DAEMON", "1")
            .output()
            .unwrap();
        assert_eq!(
            requests(exec),
            before + 1,
            "CAIRN_NO_DAEMON=1 went to the daemon"
        );
        for out in [&via, &here] {
            assert_eq!(out.status.code(), Some(3), "{out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n", "{out:?}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("err\n"),
                "{out:?}"
            );
        }
        let show = ["policy", "show", "sb", "--json"];
        let via = h.ok(&show);
        assert_eq!(requests("GET /v1/sandboxes/sb/policy "), 1);
        let here = h
            .command(&show)
            .env("CAIRN_NO_DAEMON", "1")
            .output()
            .unwrap();
        assert_eq!(via, String::from_utf8_lossy(&here.stdout));
        let made = h.ok(&["checkpoint", "create", "sb", "c1"]);
        assert!(made.starts_with("sb: checkpoint c1 (parent "), "{made}");
        assert_eq!(requests("POST /v1/sandboxes/sb/checkpoints "), 1);
        let list = h.ok(&["checkpoint", "ls", "sb"]);
        let here = h
            .command(&["checkpoint", "ls", "sb"])
            .env("CAIRN_NO_DAEMON", "1")
            .output()
            .unwrap();
        assert_eq!(list, String::from_utf8_lossy(&here.stdout));
        assert!(list.contains("* c1 "), "{list}");
        assert_eq!(requests("GET /v1/sandboxes/sb/checkpoints "), 1);
        let stopped = h.ok(&["stop", "sb"]);
        assert_eq!(requests("POST /v1/sandboxes/sb/stop "), 1);
        assert!(
            stopped.starts_with("sb: stopped at checkpoint ") || stopped == "sb: not running\n",
            "{stopped}"
        );
        assert_eq!(h.row("sb")["state"], "stopped");
        let bad = h.run(&["stop", "nope"]);
        let bad_here = h
            .command(&["stop", "nope"])
            .env("CAIRN_NO_DAEMON", "1")
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(125));
        assert_eq!(bad_here.status.code(), Some(125));
        eprintln!(
            "unknown sandbox: through the daemon {:?}, here {:?}",
            String::from_utf8_lossy(&bad.stderr),
            String::from_utf8_lossy(&bad_here.stderr)
        );

        let started = h.ok(&["start", "sb"]);
        assert_eq!(started, "sb: running\n");
        assert_eq!(requests("POST /v1/sandboxes/sb/start "), 1);

        // ls, cp, fork and sessions go through the daemon too, and print what they print here.
        let here = |args: &[&str]| {
            let out = h
                .command(args)
                .env("CAIRN_NO_DAEMON", "1")
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let cols = |t: &str| -> Vec<Vec<String>> {
            // The IDLE column may tick between two calls.
            t.lines()
                .map(|l| l.split_whitespace().take(7).map(str::to_string).collect())
                .collect()
        };
        // (`h.row` is `cairn ls --json`: it goes through the daemon too.)
        let lists = requests("GET /v1/sandboxes ");
        let ls = h.ok(&["ls"]);
        assert_eq!(requests("GET /v1/sandboxes "), lists + 1);
        assert_eq!(cols(&ls), cols(&here(&["ls"])));
        assert!(ls.contains("sb ") && ls.contains(" running "), "{ls}");
        let lists = requests("GET /v1/sandboxes ");
        let json: serde_json::Value = serde_json::from_str(&h.ok(&["ls", "--json"])).unwrap();
        assert_eq!(requests("GET /v1/sandboxes "), lists + 1);
        let json_here: serde_json::Value = serde_json::from_str(&here(&["ls", "--json"])).unwrap();
        assert_eq!(json[0]["pid"], json_here[0]["pid"]);
        assert_eq!(json[0]["head_checkpoint"], json_here[0]["head_checkpoint"]);

        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("f.txt");
        std::fs::write(&local, "through the daemon\n").unwrap();
        let put = h.run(&["cp", local.to_str().unwrap(), "sb:/root/f.txt"]);
        assert!(put.status.success(), "{put:?}");
        assert!(
            String::from_utf8_lossy(&put.stderr)
                .starts_with("put: 1 files, 0 directories, 19 bytes"),
            "{put:?}"
        );
        assert_eq!(requests("PUT /v1/sandboxes/sb/files "), 1);
        let back = dir.path().join("back.txt");
        h.ok(&["cp", "sb:/root/f.txt", back.to_str().unwrap()]);
        assert_eq!(requests("GET /v1/sandboxes/sb/files/stat "), 1);
        assert_eq!(requests("GET /v1/sandboxes/sb/files "), 1);
        assert_eq!(
            std::fs::read_to_string(&back).unwrap(),
            "through the daemon\n"
        );
        // Into a directory, as cp does.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        h.ok(&["cp", "sb:/root/f.txt", sub.to_str().unwrap()]);
        assert_eq!(
            std::fs::read_to_string(sub.join("f.txt")).unwrap(),
            "through the daemon\n"
        );

        let id = h.ok(&["exec", "-d", "sb", "--", "sh", "-c", "echo kept; sleep 300"]);
        let id = id.trim();
        wait_until(60, "the session's output", || {
            h.ok(&["sessions", "attach", "sb", id, "--no-follow"]) == "kept\n"
        });
        let attach = format!("GET /v1/sandboxes/sb/sessions/{id}/attach ");
        assert!(requests(&attach) >= 1, "{}", serve.log_text());
        let list = h.ok(&["sessions", "ls", "sb"]);
        assert_eq!(requests("GET /v1/sandboxes/sb/sessions "), 1);
        assert_eq!(cols(&list), cols(&here(&["sessions", "ls", "sb"])));
        assert!(list.contains(" running "), "{list}");
        assert_eq!(
            h.ok(&["sessions", "kill", "sb", id]),
            format!("sb: session {id} killed\n")
        );
        assert_eq!(
            requests(&format!("DELETE /v1/sandboxes/sb/sessions/{id} ")),
            1
        );

        let forked = h.ok(&["fork", "sb", "c1", "f1", "--no-start"]);
        assert_eq!(requests("POST /v1/sandboxes/sb/fork "), 1);
        assert!(
            forked.starts_with("f1: forked from sb at c1 in ") && forked.ends_with(", stopped\n"),
            "{forked}"
        );
        assert_eq!(h.row("f1")["state"], "stopped");
        assert_eq!(h.ok(&["rm", "f1"]), "f1: removed\n");

        // A clean stop hands the running sandbox back to a watcher, which stops it in turn.
        let (code, out) = h.exec("sb", &["echo", "again"]);
        assert_eq!((code, out.as_str()), (0, "again\n"));
        assert_eq!(h.row("sb")["state"], "running");
        serve.stop();
        wait_until(10, "a watcher after the daemon stopped", || {
            idle_watchers(&h, "sb").len() == 1
        });
        wait_until(120, "the watcher's idle stop", || {
            h.row("sb")["state"] == "stopped"
        });
        let log = std::fs::read_to_string(h.dir("sb").join("idle.log")).unwrap_or_default();
        assert_eq!(
            log.matches("idle, stopped at checkpoint").count(),
            1,
            "one stop by a watcher: {log}"
        );
    });
}
