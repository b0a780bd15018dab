//! `Restored` end to end on a Unix socket: the real agent's report, its answer to a request it
//! cannot decode, and the client's `Unsupported` for an agent older than the request. Nothing
//! here changes the host: no clock, no hostname, no entropy is sent to a real agent.

use cairn_agent::client::{Client, ClientError};
use cairn_agent::proto::{
    AgentMsg, FrameReader, FrameWriter, Hello, IdentityRequest, NetConfig, RestoredRequest,
    UNKNOWN_REQUEST,
};
use cairn_agent::server::serve_unix;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread;

fn agent() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    thread::spawn(move || serve_unix(listener));
    (dir, sock)
}

#[test]
fn the_agent_reports_each_part() {
    let (_dir, sock) = agent();
    let mut c = Client::connect_unix(&sock).unwrap();
    let report = c.restored(&RestoredRequest::default()).unwrap();
    assert_eq!(
        (report.clock_error, report.net_error, report.identity_error),
        (None, None, None)
    );
    // Refused before anything changes: a bad hostname, a bad MAC.
    let bad = RestoredRequest {
        clock_unix_nanos: None,
        net: Some(NetConfig {
            mac: "nope".into(),
            iface: Some("cairn-none0".into()),
            ..NetConfig::default()
        }),
        identity: IdentityRequest {
            hostname: Some("no spaces".into()),
            ..IdentityRequest::default()
        },
    };
    let report = c.restored(&bad).unwrap();
    assert!(report.identity_error.unwrap().contains("hostname"));
    assert!(report.net_error.unwrap().contains("MAC"));
    assert_eq!(report.clock_error, None);
}

#[test]
fn a_request_the_agent_cannot_decode_is_answered_unknown() {
    let (_dir, sock) = agent();
    let stream = UnixStream::connect(&sock).unwrap();
    let mut raw = stream.try_clone().unwrap();
    let mut r = FrameReader::new(stream.try_clone().unwrap());
    let mut w = FrameWriter::new(stream);
    w.write(&Hello::ours("future-client")).unwrap();
    let _: Hello = r.read().unwrap().unwrap();
    // A frame whose variant index no agent knows (yet).
    raw.write_all(&[1, 0, 0, 0, 200]).unwrap();
    match r.read::<AgentMsg>().unwrap() {
        Some(AgentMsg::Error { message }) => {
            assert!(message.starts_with(UNKNOWN_REQUEST), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// An agent from before `Restored`: it answers `Ping`, and drops a connection whose request it
/// cannot decode, as every agent did before `UNKNOWN_REQUEST`.
fn old_agent() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("old.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let mut raw = stream.unwrap();
            let mut w = FrameWriter::new(raw.try_clone().unwrap());
            w.write(&Hello::ours("cairn-agent")).unwrap();
            // The client's hello, then its request, read raw: the request's variant index
            // decides (`Restored` stands for any request this agent lacks).
            let mut frame = || {
                let mut len = [0u8; 4];
                raw.read_exact(&mut len).ok()?;
                let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
                raw.read_exact(&mut payload).ok()?;
                Some(payload)
            };
            let _hello = frame();
            if frame().is_some_and(|req| req[0] == 9) {
                w.write(&AgentMsg::Pong).unwrap();
            }
        }
    });
    (dir, sock)
}

#[test]
fn an_older_agent_is_unsupported_and_still_serves_the_old_requests() {
    let (_dir, sock) = old_agent();
    let mut c = Client::connect_unix(&sock).unwrap();
    match c.restored(&RestoredRequest::default()) {
        Err(ClientError::Unsupported("Restored")) => {}
        other => panic!("{other:?}"),
    }
    // The next request opens a new connection, as the host's fallback does.
    c.ping().unwrap();
}
