//! `Connect` through the agent on a Unix socket: a local TCP server stands in for the guest's.

use cairn_agent::client::{Client, ClientError};
use cairn_agent::proto::ConnectRequest;
use cairn_agent::server::serve_unix;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;

fn agent() -> (tempfile::TempDir, Client) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    thread::spawn(move || serve_unix(listener));
    let client = Client::connect_unix(&sock).unwrap();
    (dir, client)
}

fn to(port: u16) -> ConnectRequest {
    ConnectRequest {
        host: "127.0.0.1".into(),
        port,
    }
}

#[test]
fn bytes_flow_both_ways_with_half_close() {
    let (_dir, mut client) = agent();
    // The "guest" server: reads everything until EOF, then answers with its length and a copy
    // reversed, and closes. It only answers after our half-close arrived.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let srv = thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let mut answer = format!("{}:", got.len()).into_bytes();
        answer.extend(got.iter().rev());
        s.write_all(&answer).unwrap();
    });
    let tunnel = client.connect_tcp(&to(port)).unwrap();
    // Our side of the splice is one end of a socket pair; the test drives the other.
    let (mine, theirs) = UnixStream::pair().unwrap();
    let splice = thread::spawn(move || tunnel.splice(theirs));
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = mine.try_clone().unwrap();
    let p2 = payload.clone();
    let writer = thread::spawn(move || {
        w.write_all(&p2).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut answer = Vec::new();
    (&mine).read_to_end(&mut answer).unwrap();
    writer.join().unwrap();
    srv.join().unwrap();
    let stats = splice.join().unwrap().unwrap();
    let mut want = format!("{}:", payload.len()).into_bytes();
    want.extend(payload.iter().rev());
    assert_eq!(answer.len(), want.len());
    assert!(answer == want);
    assert_eq!(stats.to_guest, payload.len() as u64);
    assert_eq!(stats.from_guest, want.len() as u64);
}

#[test]
fn a_server_that_speaks_first_and_closes() {
    let (_dir, mut client) = agent();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        s.write_all(b"hello\n").unwrap();
    });
    let tunnel = client.connect_tcp(&to(port)).unwrap();
    let local = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = local.local_addr().unwrap();
    let user = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        // Our EOF ends the other direction.
        drop(s);
        got
    });
    let (conn, _) = local.accept().unwrap();
    let stats = tunnel.splice(conn).unwrap();
    assert_eq!(user.join().unwrap(), "hello\n");
    assert_eq!(stats.from_guest, 6);
    // The client is still usable for further requests.
    client.ping().unwrap();
}

#[test]
fn a_refused_connection_is_a_clear_error() {
    let (_dir, mut client) = agent();
    // A port nothing listens on: bind one, note it, close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match client.connect_tcp(&to(port)) {
        Err(ClientError::Agent(msg)) => {
            assert!(
                msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("refused"),
                "{msg}"
            )
        }
        other => panic!("{other:?}"),
    }
    client.ping().unwrap();
}

#[test]
fn a_bad_host_name_is_a_clear_error() {
    let (_dir, mut client) = agent();
    let err = client
        .connect_tcp(&ConnectRequest {
            host: "no such host!".into(),
            port: 80,
        })
        .unwrap_err();
    assert!(matches!(err, ClientError::Agent(_)), "{err:?}");
}
