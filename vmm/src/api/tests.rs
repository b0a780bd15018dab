//! The server over a real Unix socket, with a fake VMM thread answering.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::http::{MAX_BODY_SIZE, MAX_HEADER_SIZE};
use super::server::MAX_CONNECTIONS;
use super::*;
use crate::config::MachineConfig;

type Requests = Receiver<(ApiRequest, Sender<ApiResponse>)>;

/// A VMM stand-in: keeps a machine config, answers a few requests, refuses the rest.
fn fake_vmm(rx: Requests) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut machine = MachineConfig::default();
        while let Ok((request, reply)) = rx.recv() {
            let response = match request {
                ApiRequest::GetInstanceInfo => ApiResponse::json(&InstanceInfo {
                    id: "anonymous-instance".into(),
                    state: InstanceState::NotStarted,
                    vmm_version: "0.1.0".into(),
                    app_name: "cairn".into(),
                }),
                ApiRequest::GetMachineConfig => ApiResponse::json(&machine),
                ApiRequest::PutMachineConfig(m) => {
                    machine = m;
                    ApiResponse::Empty
                }
                ApiRequest::ListCheckpoints => {
                    // A handler that forgets to answer: the server must reply 500 and go on.
                    drop(reply);
                    continue;
                }
                other => ApiResponse::bad_request(format!("{} is not supported", other.name())),
            };
            let _ = reply.send(response);
        }
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    wake: EventFd,
    server: JoinHandle<()>,
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let server = ApiServer::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let server = server.spawn(tx, wake.try_clone().unwrap()).unwrap();
    fake_vmm(rx);
    Fixture {
        _dir: dir,
        path,
        wake,
        server,
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn fault(&self) -> String {
        self.json()["fault_message"].as_str().unwrap().to_string()
    }
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> Reply {
        self.send(&raw_request(method, path, body, ""));
        self.reply()
    }

    /// Reads one response.
    fn reply(&mut self) -> Reply {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = response.parse(&self.buf).unwrap() {
                let status = response.code.unwrap();
                let headers: Vec<(String, String)> = response
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let body_len: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                if self.buf.len() >= len + body_len {
                    let body = String::from_utf8(self.buf[len..len + body_len].to_vec()).unwrap();
                    self.buf.drain(..len + body_len);
                    return Reply {
                        status,
                        headers,
                        body,
                    };
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(
                n > 0,
                "connection closed before a full response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Asserts that the server closed the connection (EOF or reset, nothing more to read).
    fn assert_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 64];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("connection still open: {other:?}"),
        }
    }
}

fn raw_request(method: &str, path: &str, body: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The server still answers a fresh connection.
fn assert_serving(path: &Path) {
    let reply = Client::connect(path).request("GET", "/", "");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["app_name"], "cairn");
}

#[test]
fn serves_the_api_over_keep_alive() {
    let fx = start();
    let mut c = Client::connect(&fx.path);

    let info = c.request("GET", "/", "");
    assert_eq!(info.status, 200);
    assert_eq!(info.header("Content-Type"), Some("application/json"));
    assert_eq!(info.header("Connection"), Some("keep-alive"));
    assert_eq!(info.json()["state"], "Not started");
    assert_eq!(info.json()["id"], "anonymous-instance");

    let put = c.request(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": true}"#,
    );
    assert_eq!(put.status, 204);
    assert_eq!(put.header("Content-Length"), None);
    assert_eq!(put.body, "");

    let got = c.request("GET", "/machine-config", "");
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json(),
        serde_json::json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": true,
                           "track_dirty_pages": false, "huge_pages": "None"})
    );

    let bad = c.request(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": "x", "mem_size_mib": 256}"#,
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.fault()
            .starts_with(r#"vcpu_count: invalid type: string "x", expected u8"#),
        "{}",
        bad.body
    );

    let unknown = c.request(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 256, "foo": 1}"#,
    );
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.fault().starts_with("foo: unknown field `foo`"),
        "{}",
        unknown.body
    );

    let invalid = c.request(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 3, "mem_size_mib": 256, "smt": true}"#,
    );
    assert_eq!(invalid.status, 400);
    assert!(
        invalid
            .fault()
            .starts_with("vcpu_count: must be 1 or an even number"),
        "{}",
        invalid.body
    );

    let nope = c.request("GET", "/nope", "");
    assert_eq!(nope.status, 400);
    assert_eq!(
        nope.fault(),
        "Invalid request method and/or path: GET /nope."
    );

    let refused = c.request("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(refused.status, 400);
    assert_eq!(refused.fault(), "Action is not supported");

    // The handler dropped the request without answering.
    let dropped = c.request("GET", "/checkpoints", "");
    assert_eq!(dropped.status, 500);

    // Still the same connection, still the stored config.
    assert_eq!(
        c.request("GET", "/machine-config", "").json()["vcpu_count"],
        2
    );
    // One wake-up per request that reached the VMM (the refused ones did not).
    assert_eq!(fx.wake.read().unwrap(), 6);
}

#[test]
fn pipelining_close_and_expect_continue() {
    let fx = start();
    let mut c = Client::connect(&fx.path);
    let mut two = raw_request("GET", "/", "", "");
    two.extend(raw_request("GET", "/machine-config", "", ""));
    c.send(&two);
    assert_eq!(c.reply().json()["app_name"], "cairn");
    assert_eq!(c.reply().json()["mem_size_mib"], 128);

    // A body that arrives in pieces.
    let body = r#"{"vcpu_count": 4, "mem_size_mib": 64}"#;
    let raw = raw_request("PUT", "/machine-config", body, "");
    let (a, b) = raw.split_at(raw.len() - 10);
    c.send(&a[..20]);
    std::thread::sleep(Duration::from_millis(20));
    c.send(&a[20..]);
    std::thread::sleep(Duration::from_millis(20));
    c.send(b);
    assert_eq!(c.reply().status, 204);

    // Expect: 100-continue gets the interim response before the body is sent.
    let body = format!(
        r#"{{"vcpu_count": 1, "mem_size_mib": 64{}}}"#,
        " ".repeat(2000)
    );
    let raw = raw_request("PUT", "/machine-config", &body, "Expect: 100-continue\r\n");
    let split = raw.len() - body.len();
    c.send(&raw[..split]);
    let interim = c.reply();
    assert_eq!(interim.status, 100);
    c.send(&raw[split..]);
    assert_eq!(c.reply().status, 204);

    // Connection: close is honoured.
    c.send(&raw_request("GET", "/", "", "Connection: close\r\n"));
    let last = c.reply();
    assert_eq!(last.status, 200);
    assert_eq!(last.header("Connection"), Some("close"));
    c.assert_closed();

    // HTTP/1.0 closes by default.
    let mut old = Client::connect(&fx.path);
    old.send(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(old.reply().status, 200);
    old.assert_closed();
}

#[test]
fn survives_bad_clients() {
    let fx = start();

    // A body over the limit is refused from the header alone.
    let mut c = Client::connect(&fx.path);
    c.send(
        format!(
            "PUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            10 * 1024 * 1024
        )
        .as_bytes(),
    );
    let reply = c.reply();
    assert_eq!(reply.status, 400);
    assert!(reply.fault().contains("larger than"), "{}", reply.body);
    c.assert_closed();

    // An actual oversized body, sent while the server answers.
    let mut c = Client::connect(&fx.path);
    let body = "x".repeat(MAX_BODY_SIZE + 1);
    let raw = raw_request("PUT", "/machine-config", &body, "");
    let _ = c.stream.write_all(&raw); // may fail once the server closes
    assert_eq!(c.reply().status, 400);
    assert_serving(&fx.path);

    // A huge Content-Length beyond usize.
    let mut c = Client::connect(&fx.path);
    c.send(b"PUT /vm HTTP/1.1\r\nContent-Length: 184467440737095516160\r\n\r\n");
    assert_eq!(c.reply().status, 400);

    // Garbage bytes.
    let mut c = Client::connect(&fx.path);
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n");
    let reply = c.reply();
    assert_eq!(reply.status, 400);
    assert!(
        reply.fault().starts_with("Invalid HTTP request"),
        "{}",
        reply.body
    );
    c.assert_closed();

    // Headers that never end.
    let mut c = Client::connect(&fx.path);
    let mut endless = b"GET / HTTP/1.1\r\n".to_vec();
    while endless.len() <= MAX_HEADER_SIZE {
        endless.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let _ = c.stream.write_all(&endless);
    assert_eq!(c.reply().status, 400);

    // Chunked bodies are refused.
    let mut c = Client::connect(&fx.path);
    c.send(b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(c.reply().status, 400);

    // Clients that go away mid-request: in the head, in the body, right after a full request.
    for partial in [
        &b"PUT /machine-con"[..],
        b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"vcpu",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut c = Client::connect(&fx.path);
        c.send(partial);
        drop(c);
    }
    // Shut the write side only: the request is still answered.
    let mut c = Client::connect(&fx.path);
    c.send(&raw_request("GET", "/", "", ""));
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.reply().status, 200);

    assert_serving(&fx.path);
    assert!(!fx.server.is_finished());
}

#[test]
fn idle_connections_block_nobody() {
    let fx = start();
    // One client sits on half a request; another is served meanwhile.
    let mut idle = Client::connect(&fx.path);
    idle.send(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 50\r\n\r\n{");
    assert_serving(&fx.path);

    // More idle connections than the server keeps: the oldest are dropped, new ones served.
    let crowd: Vec<Client> = (0..MAX_CONNECTIONS + 5)
        .map(|_| {
            let mut c = Client::connect(&fx.path);
            c.send(b"GET");
            c
        })
        .collect();
    assert_serving(&fx.path);
    idle.assert_closed();
    drop(crowd);
    assert_serving(&fx.path);
}

#[test]
fn body_limit_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let (tx, rx) = mpsc::channel();
    let _server = ApiServer::bind(&path)
        .unwrap()
        .with_max_body_size(40)
        .spawn(tx, EventFd::new(EFD_NONBLOCK).unwrap())
        .unwrap();
    fake_vmm(rx);
    let mut c = Client::connect(&path);
    assert_eq!(
        c.request(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#
        )
        .status,
        204
    );
    let long = r#"{"vcpu_count": 1, "mem_size_mib": 64, "smt": false}"#;
    assert_eq!(c.request("PUT", "/machine-config", long).status, 400);
}

#[test]
fn stops_when_the_vmm_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let (tx, rx) = mpsc::channel();
    let server = ApiServer::bind(&path)
        .unwrap()
        .spawn(tx, EventFd::new(EFD_NONBLOCK).unwrap())
        .unwrap();
    drop(rx);
    let mut c = Client::connect(&path);
    let reply = c.request("GET", "/", "");
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("Connection"), Some("close"));
    server.join().unwrap();
}

#[test]
fn bind_accepts_at_once_and_handles_stale_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");

    // A socket file left by a dead process is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let start = Instant::now();
    let server = ApiServer::bind(&path).unwrap();
    let bind_time = start.elapsed();
    assert_eq!(server.path(), Some(path.as_path()));
    // Connecting works before the server thread even exists (listen backlog).
    let mut early = Client::connect(&path);
    early.send(&raw_request("GET", "/", "", ""));
    assert!(
        bind_time < Duration::from_millis(50),
        "bind took {bind_time:?}"
    );

    // A live socket is left alone.
    let err = ApiServer::bind(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);

    let (tx, rx) = mpsc::channel();
    let _thread = server
        .spawn(tx, EventFd::new(EFD_NONBLOCK).unwrap())
        .unwrap();
    fake_vmm(rx);
    assert_eq!(early.reply().status, 200);

    // A regular file is never removed.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"data").unwrap();
    assert_eq!(
        ApiServer::bind(&file).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
}

/// Mutated requests never make the framing or routing code panic.
#[test]
fn random_bytes_never_panic() {
    let seeds: Vec<Vec<u8>> = vec![
        raw_request(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
            "",
        ),
        raw_request(
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true}"#,
            "",
        ),
        raw_request(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#,
            "Expect: 100-continue\r\n",
        ),
        raw_request("DELETE", "/checkpoints/base", "", "Connection: close\r\n"),
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..(next() % 8) {
            let at = (next() as usize) % bytes.len();
            match next() % 3 {
                0 => bytes[at] = next() as u8,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, next() as u8),
            }
        }
        if let http::Framing::Head(head) = http::parse_head(&bytes, MAX_BODY_SIZE) {
            let end = head
                .header_len
                .saturating_add(head.content_length)
                .min(bytes.len());
            let _ = routes::route(&head.method, &head.path, &bytes[head.header_len..end]);
        }
    }
}
