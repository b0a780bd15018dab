//! Sessions on an agent served on a Unix socket: a process that outlives its client, output
//! replayed on attach and followed live, stdin through an attach, kill, and bad ids.
//! (The session table is the agent process's, so these tests share one; each uses its own ids.)

use cairn_agent::client::{Client, ClientError, ExecEvent, ExitStatus};
use cairn_agent::proto::{ExecRequest, SessionStatus};
use cairn_agent::server::serve_unix;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

fn agent() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    thread::spawn(move || serve_unix(listener));
    (dir, sock)
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

fn status_of(c: &mut Client, id: u32) -> Option<SessionStatus> {
    c.session_list()
        .unwrap()
        .into_iter()
        .find(|s| s.id == id)
        .map(|s| s.status)
}

#[test]
fn a_session_outlives_its_client_and_replays_its_output() {
    let (_d, sock) = agent();
    let (id, pid) = {
        let mut c = Client::connect_unix(&sock).unwrap();
        c.session_start(&sh("echo one; echo two >&2; sleep 1; echo three; exit 7"))
            .unwrap()
    }; // the client is gone; the session is not
    assert!(pid > 0);
    let mut c = Client::connect_unix(&sock).unwrap();
    let info = c.session_list().unwrap();
    let me = info.iter().find(|s| s.id == id).unwrap();
    assert_eq!(me.pid, pid);
    assert_eq!(me.argv[0], "sh");
    // Attach late: everything comes back, then the end.
    thread::sleep(Duration::from_millis(1500));
    let a = c.session_attach(id).unwrap();
    assert_eq!(a.dropped(), 0);
    assert_eq!(a.replay_bytes(), 14);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(a.wait(&mut out, &mut err).unwrap(), ExitStatus::Code(7));
    assert_eq!(out, b"one\nthree\n");
    assert_eq!(err, b"two\n");
    assert_eq!(status_of(&mut c, id), Some(SessionStatus::Exited(7)));
    // An ended session can be attached again (replay, then its end) and then forgotten.
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let again = c.session_attach(id).unwrap().wait(&mut out, &mut err);
    assert_eq!(again.unwrap(), ExitStatus::Code(7));
    assert_eq!(out, b"one\nthree\n");
    c.session_kill(id).unwrap();
    assert_eq!(status_of(&mut c, id), None);
}

#[test]
fn attach_follows_live_output_detach_leaves_it_running_and_kill_ends_it() {
    let (_d, sock) = agent();
    let mut c = Client::connect_unix(&sock).unwrap();
    let (id, _) = c
        .session_start(&sh(
            "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.2; done",
        ))
        .unwrap();
    let mut a = c.session_attach(id).unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("tick 3") {
        match a.next_event().unwrap() {
            ExecEvent::Stdout(d) => seen.extend_from_slice(&d),
            other => panic!("{other:?}"),
        }
    }
    a.detach();
    thread::sleep(Duration::from_millis(500));
    let s = c.session_list().unwrap();
    let me = s.iter().find(|s| s.id == id).unwrap();
    assert_eq!(me.status, SessionStatus::Running);
    assert_eq!(me.attached, 0);
    assert!(me.output_bytes > seen.len() as u64);
    // A second attach starts with what the first saw (the buffer is not consumed).
    let mut a = c.session_attach(id).unwrap();
    match a.next_event().unwrap() {
        ExecEvent::Stdout(d) => assert!(d.starts_with(b"tick 0\n"), "{d:?}"),
        other => panic!("{other:?}"),
    }
    // kill: the attached client sees the end; the session is forgotten.
    Client::connect_unix(&sock)
        .unwrap()
        .session_kill(id)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no end after kill");
        if let ExecEvent::Exited(st) = a.next_event().unwrap() {
            assert_eq!(st, ExitStatus::Signal(libc::SIGKILL));
            break;
        }
    }
    assert_eq!(status_of(&mut c, id), None);
}

#[test]
fn stdin_reaches_a_session_through_an_attach() {
    let (_d, sock) = agent();
    let mut c = Client::connect_unix(&sock).unwrap();
    let req = ExecRequest {
        stdin: true,
        ..sh("read line; echo got $line")
    };
    let (id, _) = c.session_start(&req).unwrap();
    let a = c.session_attach(id).unwrap();
    a.control().stdin(b"hello\n").unwrap();
    let mut out = Vec::new();
    assert_eq!(
        a.wait(&mut out, std::io::sink()).unwrap(),
        ExitStatus::Code(0)
    );
    assert_eq!(out, b"got hello\n");
}

#[test]
fn the_ring_buffer_drops_the_oldest_output() {
    let (_d, sock) = agent();
    let mut c = Client::connect_unix(&sock).unwrap();
    // 400 KiB of output, more than the 256 KiB ring.
    let (id, _) = c
        .session_start(&sh("head -c 409600 /dev/zero | tr '\\0' x"))
        .unwrap();
    while status_of(&mut c, id) == Some(SessionStatus::Running) {
        thread::sleep(Duration::from_millis(50));
    }
    let a = c.session_attach(id).unwrap();
    assert!(a.dropped() > 0);
    assert!(a.replay_bytes() <= 256 << 10);
    assert_eq!(a.dropped() + a.replay_bytes(), 409600);
    let mut out = Vec::new();
    a.wait(&mut out, std::io::sink()).unwrap();
    assert_eq!(
        out.len() as u64,
        409600
            - c.session_list()
                .unwrap()
                .iter()
                .find(|s| s.id == id)
                .unwrap()
                .dropped_bytes
    );
    c.session_kill(id).unwrap();
}

#[test]
fn unknown_sessions_and_bad_commands_are_clean_errors() {
    let (_d, sock) = agent();
    let mut c = Client::connect_unix(&sock).unwrap();
    for r in [
        c.session_attach(u32::MAX - 3).map(drop),
        c.session_kill(u32::MAX - 3),
    ] {
        match r {
            Err(ClientError::Agent(m)) => assert!(m.contains("no session"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    match c.session_start(&ExecRequest {
        argv: vec!["/nonexistent/prog".into()],
        ..Default::default()
    }) {
        Err(ClientError::Agent(m)) => assert!(m.starts_with("cannot run"), "{m}"),
        other => panic!("{other:?}"),
    }
    c.ping().unwrap();
}
