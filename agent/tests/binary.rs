//! The `cairn-agent` binary itself, serving on a Unix socket.

use cairn_agent::client::{Client, ExitStatus};
use cairn_agent::proto::ExecRequest;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn binary_serves_on_listen_unix() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-agent"))
        .arg("--listen-unix")
        .arg(&sock)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut client = loop {
        match Client::connect_unix(&sock) {
            Ok(c) => break c,
            Err(e) if start.elapsed() > Duration::from_secs(10) => {
                panic!("agent never came up: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    client.ping().unwrap();
    let req = ExecRequest {
        argv: vec!["echo".into(), "hi".into()],
        ..Default::default()
    };
    let mut out = Vec::new();
    let status = client
        .exec(&req, std::io::empty(), &mut out, std::io::sink())
        .unwrap();
    assert_eq!(
        (status, out.as_slice()),
        (ExitStatus::Code(0), &b"hi\n"[..])
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn binary_rejects_bad_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn-agent"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}
