//! The CLI's interactive commands and tree copies through a real `cairn serve`, with a real
//! Linux guest: `exec -i` (stdin piped in, output and exit code back), `exec -t` and `exec -it`
//! on a terminal (`script(1)` gives the CLI one of a set size: the guest's terminal has that
//! size, a resize of it reaches the guest's, and typed keys reach its shell), a client killed
//! mid-exec leaves no process behind, `exec -i --timeout` gives up and the daemon kills it,
//! `sessions attach -i` (typed lines reach the session; on a terminal Ctrl-] detaches and the
//! session goes on), and `cp` of a directory tree both ways. The daemon's request log proves
//! each went through it (one `101` WebSocket upgrade, or one tar request, per command); the
//! same commands with `--no-daemon` still work, and add nothing to the log. A second test:
//! `stop --push` stops through the daemon and pushes here. Needs
//! `cargo build --workspace --bins` and the static agent (`CAIRN_AGENT_BIN`, else built here).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cairn_tests::kvm_available;
use cairn_tests::linux::{agent_binary, retry_on_guest_flake};
use cairn_tests::process::{workspace_bin, Guest};
use cairn_tests::sandbox::CairnHome;
use cairn_tests::serve::Serve;

/// `cairn ARGS` with `input` on stdin; its output.
fn with_input(h: &CairnHome, args: &[&str], input: &str) -> Output {
    let mut child = h
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    eprintln!("$ cairn {} -> {:?}\n{out:?}", args.join(" "), out.status);
    out
}

/// `cairn ARGS` on a terminal of 33 rows and 111 columns (`script -e`, which exits with its
/// exit code), after the shell line `prelude`, with each of `keys` typed after `delay` (then
/// its stdin ends). Its output, raw.
fn on_terminal(
    h: &CairnHome,
    prelude: &str,
    args: &[&str],
    keys: &[&str],
    delay: Duration,
) -> Output {
    let cairn = workspace_bin("cairn");
    let line = format!(
        "stty rows 33 cols 111; {prelude}exec {} {}",
        cairn.display(),
        args.join(" ")
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env("CAIRN_HOME", h.home.path())
        .env(
            "CAIRN_AGENT_BIN",
            std::env::var_os("CAIRN_AGENT_BIN").map_or_else(agent_binary, PathBuf::from),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for k in keys {
        std::thread::sleep(delay);
        stdin.write_all(k.as_bytes()).unwrap();
    }
    std::thread::sleep(delay);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "$ script: cairn {} -> {:?}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` every second for up to `secs`.
fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The files under `root` (relative path, permission bits, contents; directories with no
/// contents), sorted.
fn tree(root: &Path) -> Vec<(String, u32, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                out.push((rel, mode, None));
                stack.push(p);
            } else if meta.is_file() {
                out.push((rel, mode, Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn serve_cli_interactive_exec_attach_and_cp_go_through_the_daemon() {
    let name = "serve_cli_interactive_exec_attach_and_cp_go_through_the_daemon";
    if !kvm_available(name) {
        return;
    }
    retry_on_guest_flake(name, || {
        let h = CairnHome::new();
        let serve = Serve::start(&h, &[]);
        h.create(
            "sb",
            &["--mem", "256", "--disk", "1", "--idle-timeout", "0"],
        );
        let count = |what: &str| serve.log_text().matches(what).count();
        let upgrades = || count("GET /v1/sandboxes/sb/exec 101");

        // exec -i: stdin piped through, stdout and stderr apart, the exit code back.
        let script = "cat; echo to-err >&2; exit 3";
        let out = with_input(
            &h,
            &["exec", "-i", "sb", "--", "sh", "-c", script],
            "hello\nworld\n",
        );
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nworld\n");
        assert!(String::from_utf8_lossy(&out.stderr).contains("to-err"));
        assert_eq!(upgrades(), 1, "{}", serve.log_text());

        // exec -t: a terminal in the guest, of this terminal's size; resizing this terminal
        // (10 s in: the kernel sends cairn SIGWINCH) resizes the guest's.
        let check = "'test -t 0 && test -t 1 && tty && stty size; sleep 20; stty size; exit 4'";
        let out = on_terminal(
            &h,
            "(sleep 10; stty rows 20 cols 60 </dev/tty) & ",
            &["exec", "-t", "sb", "--", "sh", "-c", check],
            &[],
            Duration::ZERO,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(4), "{text}");
        assert!(text.contains("/dev/pts/"), "{text}");
        let sizes: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with(" 111") || l.ends_with(" 60"))
            .collect();
        assert_eq!(sizes, ["33 111", "20 60"], "{text}");
        assert_eq!(upgrades(), 2);

        // exec -it: keys typed on this (raw) terminal reach the guest's shell.
        let keys = "stty size; echo $((6*7)); exit 5\n";
        let out = on_terminal(
            &h,
            "",
            &["exec", "-it", "sb", "--", "sh"],
            &[keys],
            Duration::from_secs(3),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(5), "{text}");
        assert!(text.contains("33 111") && text.contains("42"), "{text}");
        assert_eq!(upgrades(), 3);

        // A client that goes away mid-exec leaves no process behind.
        let mut c = Guest::spawn(h.command(&[
            "exec",
            "-i",
            "sb",
            "--",
            "sh",
            "-c",
            "echo up; exec sleep 4321",
        ]));
        c.wait_for("up", Duration::from_secs(120)).unwrap();
        c.signal(libc::SIGKILL);
        c.wait_exit(Duration::from_secs(10));
        wait_until(60, "the abandoned command to be killed", || {
            !h.sh("sb", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
                .contains("sleep 4321")
        });
        assert!(serve.log_text().contains("client left mid-exec"));
        assert_eq!(upgrades(), 4);

        // exec -i --timeout: given up once it is up that long; the daemon kills it.
        let args = [
            "exec",
            "-i",
            "--timeout",
            "8",
            "sb",
            "--",
            "sh",
            "-c",
            "cat; exec sleep 4322",
        ];
        let out = with_input(&h, &args, "in\n");
        assert_eq!(out.status.code(), Some(124), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "in\n");
        assert!(String::from_utf8_lossy(&out.stderr).contains("ran past --timeout 8 s"));
        assert_eq!(upgrades(), 5);
        wait_until(60, "the timed-out command to be killed", || {
            !h.sh("sb", "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '")
                .contains("sleep 4322")
        });

        // sessions attach -i: typed lines reach the session, its exit code comes back.
        let reader = "while read l; do echo \"got $l\"; [ \"$l\" = bye ] && exit 6; done";
        let id = h.ok(&["exec", "-d", "-i", "sb", "--", "sh", "-c", reader]);
        let id = id.trim();
        let out = with_input(&h, &["sessions", "attach", "-i", "sb", id], "one\nbye\n");
        assert_eq!(out.status.code(), Some(6), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "got one\ngot bye\n");
        let attach = format!("GET /v1/sandboxes/sb/sessions/{id}/attach 101");
        assert_eq!(count(&attach), 1, "{}", serve.log_text());

        // On a terminal, Ctrl-] detaches; the session goes on.
        let echo = "while read l; do echo \"got $l\"; done";
        let id = h.ok(&["exec", "-d", "-i", "sb", "--", "sh", "-c", echo]);
        let id = id.trim();
        let out = on_terminal(
            &h,
            "",
            &["sessions", "attach", "-i", "sb", id],
            &["hi\n", "\x1d"],
            Duration::from_secs(3),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(
            text.contains("got hi") && text.contains("detached; session"),
            "{text}"
        );
        let attach = format!("GET /v1/sandboxes/sb/sessions/{id}/attach 101");
        assert_eq!(count(&attach), 1, "{}", serve.log_text());
        let list: serde_json::Value =
            serde_json::from_str(&h.ok(&["sessions", "ls", "sb", "--json"])).unwrap();
        let s = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"].to_string().trim_matches('"') == id)
            .unwrap();
        assert_eq!(s["state"], "running", "{s}");
        h.ok(&["sessions", "kill", "sb", id]);

        // cp of a directory tree, both ways, through the tar routes.
        let local = h.home.path().join("src");
        let long = "n".repeat(110);
        std::fs::create_dir_all(local.join("a/b").join(&long)).unwrap();
        std::fs::create_dir_all(local.join("empty")).unwrap();
        std::fs::write(local.join("top.txt"), b"top\n").unwrap();
        let bin: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(local.join("a/b").join(&long).join("data.bin"), &bin).unwrap();
        std::fs::write(local.join("a/run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
        std::fs::set_permissions(
            local.join("a/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::set_permissions(local.join("a"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("top.txt", local.join("link")).unwrap();
        let put = h.run(&["cp", local.to_str().unwrap(), "sb:/root/tree"]);
        assert!(put.status.success(), "{put:?}");
        let err = String::from_utf8_lossy(&put.stderr);
        assert!(
            err.contains("put: 3 files, 5 directories, 300023 bytes"),
            "{err}"
        );
        assert!(err.contains("1 skipped"), "{err}");
        assert_eq!(
            count("PUT /v1/sandboxes/sb/tree 204"),
            1,
            "{}",
            serve.log_text()
        );
        assert_eq!(h.sh("sb", "/root/tree/a/run.sh"), "ran\n");
        assert_eq!(h.sh("sb", "stat -c %a /root/tree/a"), "750\n");

        let back = h.home.path().join("back");
        std::fs::create_dir(&back).unwrap();
        let get = h.run(&["cp", "sb:/root/tree", back.to_str().unwrap()]);
        assert!(get.status.success(), "{get:?}");
        let err = String::from_utf8_lossy(&get.stderr);
        assert!(
            err.contains("get: 3 files, 5 directories, 300023 bytes"),
            "{err}"
        );
        assert_eq!(
            count("GET /v1/sandboxes/sb/tree 200"),
            1,
            "{}",
            serve.log_text()
        );
        let mut want = tree(&local);
        want.retain(|(p, ..)| p != "link");
        assert_eq!(tree(&back.join("tree")), want);

        // Without the daemon the same commands run here, and the daemon hears nothing.
        let before = serve.log_text().lines().count();
        let out = with_input(
            &h,
            &["--no-daemon", "exec", "-i", "sb", "--", "cat"],
            "local\n",
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "local\n", "{out:?}");
        let again = h.home.path().join("again");
        h.ok(&[
            "--no-daemon",
            "cp",
            "sb:/root/tree",
            again.to_str().unwrap(),
        ]);
        assert_eq!(tree(&again), want);
        assert_eq!(
            serve.log_text().lines().count(),
            before,
            "{}",
            serve.log_text()
        );

        // The daemon started this VMM; a stop from another process ends it, and the daemon
        // reaps it (no zombie left behind in a long-running daemon).
        h.ok(&["--no-daemon", "stop", "sb"]);
        wait_until(
            30,
            "the daemon reaps the VMM another process stopped",
            || serve.zombie_children().is_empty(),
        );
        serve.stop();
    });
}

/// `stop --push` with a daemon: the stop goes through it (one `POST …/stop`), the push is
/// done here with this environment's store settings, and a push afterwards has nothing left
/// to upload. A real S3 server on 127.0.0.1 (scripts/s3-server).
#[test]
fn serve_cli_stop_push_stops_through_the_daemon_and_pushes_here() {
    let name = "serve_cli_stop_push_stops_through_the_daemon_and_pushes_here";
    if !kvm_available(name) {
        return;
    }
    let s3 = cairn_tests::s3::S3Server::start();
    retry_on_guest_flake(name, || {
        let h = s3.home();
        let serve = Serve::start(&h, &[]);
        h.create("sb", cairn_tests::s3::SMALL_COLD_SANDBOX);
        h.sh("sb", "echo pushed > /root/f; sync");
        let out = h.run(&["stop", "sb", "--push"]);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("sb: stopped at checkpoint"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("sb: pushed, "), "{err}");
        let log = serve.log_text();
        assert_eq!(
            log.matches("POST /v1/sandboxes/sb/stop 200").count(),
            1,
            "{log}"
        );
        let again: serde_json::Value =
            serde_json::from_str(&h.ok(&["push", "sb", "--json"])).unwrap();
        assert_eq!(again["chunks_uploaded"], 0, "{again}");
        serve.stop();
    });
}
