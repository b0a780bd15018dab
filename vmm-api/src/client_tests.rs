//! The client against a scripted server on a real Unix socket: framing, refusals, deadlines,
//! bounds and typed replies. (Against a real cairn-vmm: vmm/tests/api_client.rs.)

use super::*;
use std::os::unix::net::UnixListener;
use std::thread::JoinHandle;

/// Serves `answers` in turn, one per connection; returns the requests it read.
fn serve(sock: &Path, answers: Vec<Vec<u8>>) -> JoinHandle<Vec<String>> {
    let l = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for answer in answers {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let n = c.read(&mut buf).unwrap();
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = c.write_all(&answer);
        }
        seen
    })
}

fn ok_json(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const CHECKPOINT: &str = r#"{"name":"c1","parent":null,"created_unix_ms":5,"dirty_memory_mib":1.0,"disk_delta_mib":0.0,"disks":[],"pause_ms":2.0,"write_ms":3.0,"total_ms":5.0,"cpu_template":null}"#;

#[test]
fn typed_calls_send_typed_bodies_and_read_typed_replies() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let server = serve(
        &sock,
        vec![
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_vec(),
            ok_json(CHECKPOINT),
            ok_json(&format!("[{CHECKPOINT}]")),
        ],
    );
    let c = Client::new(&sock);
    c.pause().unwrap();
    let made = c
        .create_checkpoint(&CheckpointCreate {
            name: Some("c1".into()),
        })
        .unwrap();
    assert_eq!(made.name, "c1");
    assert_eq!(made.parent, None);
    assert_eq!(c.list_checkpoints().unwrap(), vec![made]);
    let seen = server.join().unwrap();
    assert!(seen[0].starts_with("PATCH /vm HTTP/1.1\r\n"), "{}", seen[0]);
    assert!(
        seen[0].ends_with("\r\n\r\n{\"state\":\"Paused\"}"),
        "{}",
        seen[0]
    );
    assert!(seen[1].ends_with("{\"name\":\"c1\"}"), "{}", seen[1]);
    assert!(seen[2].starts_with("GET /checkpoints HTTP/1.1\r\n"));
}

#[test]
fn refusals_carry_the_fault_message_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let body = r#"{"fault_message":"no checkpoint \"x\""}"#;
    let plain = "not json";
    let server = serve(
        &sock,
        vec![
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            format!(
                "HTTP/1.1 500 Oops\r\nContent-Length: {}\r\n\r\n{plain}",
                plain.len()
            )
            .into_bytes(),
        ],
    );
    let c = Client::new(&sock);
    let restore = CheckpointRestore {
        name: "x".into(),
        vsock_uds_path: None,
        paused: None,
    };
    let err = c.restore_checkpoint(&restore).unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(
        err.to_string(),
        r#"VMM refused PUT /checkpoints/restore (400): no checkpoint "x""#
    );
    let err = c.delete_checkpoint("x").unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused { status: 500, message, .. } if message == "not json"),
        "{err:?}"
    );
    server.join().unwrap();
}

#[test]
fn a_reply_missing_a_field_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let server = serve(
        &sock,
        vec![
            ok_json(r#"[{"name":"c1"}]"#),
            ok_json(r#"{"id":"a","state":"Running","app_name":"cairn"}"#),
            ok_json("[1,"),
        ],
    );
    let c = Client::new(&sock);
    let err = c.list_checkpoints().unwrap_err();
    assert!(
        matches!(&err, ClientError::Decode { reason, .. } if reason.starts_with("[0]: missing field `parent`")),
        "{err}"
    );
    let err = c.describe().unwrap_err().to_string();
    assert!(err.contains("missing field `vmm_version`"), "{err}");
    let err = c.list_checkpoints().unwrap_err();
    assert!(matches!(err, ClientError::Decode { .. }), "{err}");
    server.join().unwrap();
}

#[test]
fn broken_replies_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    // A reply whose body is longer than the bound (it says so, and sends it).
    let mut huge = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        MAX_REPLY_SIZE + 1
    )
    .into_bytes();
    huge.resize(MAX_REPLY_SIZE + 100, b' ');
    let server = serve(
        &sock,
        vec![
            b"garbage\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[]".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-".to_vec(),
            huge,
        ],
    );
    let c = Client::new(&sock);
    for _ in 0..3 {
        let err = c.list_checkpoints().unwrap_err();
        assert!(matches!(err, ClientError::Malformed { .. }), "{err:?}");
    }
    let err = c.list_checkpoints().unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err:?}");
    server.join().unwrap();
    // Nothing listening.
    let err = c.describe().unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(!c.answers());
    assert!(c.wait_ready(Duration::from_millis(20)).is_err());
}

#[test]
fn a_silent_vmm_runs_into_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let c = Client::new(&sock).with_timeout(Duration::from_millis(200));
    // The VMM accepts (the backlog does) but never answers.
    let start = Instant::now();
    let err = c.describe().unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(&err, ClientError::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
    drop(l);
}

#[test]
fn raw_send_returns_any_status() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let server = serve(
        &sock,
        vec![b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}".to_vec()],
    );
    let r = Client::new(&sock)
        .send("GET", "/nowhere", Some(b"{"))
        .unwrap();
    assert_eq!(
        r,
        RawReply {
            status: 404,
            body: b"{}".to_vec()
        }
    );
    assert!(server.join().unwrap()[0].ends_with("Content-Length: 1\r\nConnection: close\r\n\r\n{"));
}

/// Firecracker keeps the connection open after its reply (HTTP/1.1 keep-alive, whatever the
/// request's `Connection: close` says): the reply ends at its `Content-Length`, or at once for a
/// 204, not at a close that never comes.
#[test]
fn a_reply_ends_at_its_length_on_a_connection_left_open() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let mut held = Vec::new();
        for answer in [
            "HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\n\r\n".to_string(),
            "HTTP/1.1 200 \r\nServer: Firecracker API\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{}"
                .to_string(),
        ] {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let _ = c.read(&mut buf).unwrap();
            c.write_all(answer.as_bytes()).unwrap();
            held.push(c); // never closed until the test is done
        }
        let _ = done_rx.recv();
    });
    let c = Client::new(&sock).with_timeout(Duration::from_secs(10));
    let start = Instant::now();
    c.set_state(VmState::Paused).unwrap();
    let r = c.send("GET", "/machine-config", None).unwrap();
    assert_eq!(r.body, b"{}".to_vec());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    done_tx.send(()).unwrap();
    server.join().unwrap();
}
