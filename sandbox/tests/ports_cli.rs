//! `cairn proxy` and `cairn router` without KVM: their errors, and the router's answers for
//! hosts it cannot route.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};

fn cairn(home: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.env("CAIRN_HOME", home).stdin(Stdio::null());
    c
}

#[test]
fn proxy_to_an_unknown_sandbox_or_a_taken_address_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = cairn(dir.path())
        .args(["proxy", "nope", "8080", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no sandbox named \"nope\"") && err.contains("hint"),
        "{err}"
    );

    let out = cairn(dir.path())
        .args(["proxy", "nope", "0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a port"));

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = cairn(dir.path())
        .args(["router", "--listen", &addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

fn get(port: u16, host: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut a = String::new();
    s.read_to_string(&mut a).unwrap();
    a
}

#[test]
fn router_answers_404_for_unknown_sandboxes_and_400_for_other_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = cairn(dir.path())
        .args(["router", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"));
    let a = get(port, &format!("ghost.localhost:{port}"));
    let b = get(port, "example.com");
    let c = get(port, "0.dev.localhost");
    let _ = (child.kill(), child.wait());
    assert!(a.starts_with("HTTP/1.1 404"), "{a}");
    assert!(
        a.contains("cairn router: no sandbox named \"ghost\""),
        "{a}"
    );
    assert!(b.starts_with("HTTP/1.1 400"), "{b}");
    assert!(b.contains("NAME.localhost"), "{b}");
    assert!(
        c.starts_with("HTTP/1.1 400") && c.contains("not a port number"),
        "{c}"
    );
}
