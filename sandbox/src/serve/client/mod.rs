//! The client the CLI uses when `cairn serve` runs on its home: the same `/v1` routes the SDK
//! uses, over the daemon's Unix socket (hyper), with the server's own request and reply types.
//! With a daemon, sandbox state has one owner: the CLI asks it instead of changing the
//! registry and the VMMs itself. `CAIRN_NO_DAEMON=1` (or `cairn --no-daemon`) works locally.
//! Interactive execs and attaches are WebSockets ([`ws`]); trees move as tar ([`tree`]).

mod tree;
mod ws;

pub use ws::{SocketEnd, Terminal};

use super::http::{CheckpointBody, ExecBody, ForkBody, StartBody, StartedBody, Stopped};
use super::ops::{CreateRequest, FileInfo, ForkInfo, SandboxInfo};
use super::sessions::{AttachLine, StartBody as SessionBody};
use super::stream::ExecLine;
use super::SOCKET_FILE;
use crate::net::policy_ops::{PolicyChange, PolicyView};
use crate::sandbox::Home;
use crate::sandbox::Started;
use crate::sessions::{self, SessionView};
use base64::Engine;
use bytes::Bytes;
use cairn_agent::proto::ExecRequest;
use cairn_vmm_api::CheckpointInfo;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{header, Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The daemon answered with an error (`{"error", "code"}`).
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error's code (`not_found`, `bad_request`, ...).
        code: String,
        /// The error's message.
        message: String,
    },
    /// The daemon could not be reached, or its answer not read.
    #[error("cairn serve ({socket}): {what} (hint: CAIRN_NO_DAEMON=1 works without it)")]
    Transport {
        /// The socket.
        socket: String,
        /// What failed.
        what: String,
    },
    /// Writing the command's output here failed.
    #[error("write the output: {0}")]
    Output(#[source] std::io::Error),
    /// The local side of a tree copy failed (reading the tree, or writing it).
    #[error("cp")]
    Tree(#[source] cairn_agent::tree::TreeError),
}

/// A running daemon on a home's socket.
#[derive(Debug)]
pub struct Daemon {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// The error answer's shape, as `ApiError` writes it.
#[derive(Deserialize)]
struct ErrorReply {
    error: String,
    code: String,
}

impl Daemon {
    /// The daemon serving `home` on `$CAIRN_HOME/serve.sock`, if one answers there and
    /// `CAIRN_NO_DAEMON` is not `1`.
    pub fn find(home: &Home) -> Option<Daemon> {
        if std::env::var("CAIRN_NO_DAEMON").is_ok_and(|v| v == "1") {
            return None;
        }
        let socket = home.root().join(SOCKET_FILE);
        std::os::unix::net::UnixStream::connect(&socket).ok()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        Some(Daemon { socket, rt })
    }

    fn transport(&self, what: impl std::fmt::Display) -> DaemonError {
        DaemonError::Transport {
            socket: self.socket.display().to_string(),
            what: what.to_string(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, DaemonError> {
        self.send_as(method, path, body, "application/json").await
    }

    async fn send_as(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &'static str,
    ) -> Result<Response<Incoming>, DaemonError> {
        let content_type = body.is_some().then_some(content_type);
        let body = Full::new(Bytes::from(body.unwrap_or_default()));
        self.send_body(method, path, body, content_type).await
    }

    /// One request with `body` (of `content_type`, if any); an error answer is the daemon's
    /// error.
    async fn send_body<B>(
        &self,
        method: Method,
        path: &str,
        body: B,
        content_type: Option<&'static str>,
    ) -> Result<Response<Incoming>, DaemonError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.transport(format!("connect: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.transport(e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "cairn");
        if let Some(t) = content_type {
            req = req.header(header::CONTENT_TYPE, t);
        }
        let req = req.body(body).map_err(|e| self.transport(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.transport(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.transport(e))?
            .to_bytes();
        Err(match serde_json::from_slice::<ErrorReply>(&bytes) {
            Ok(e) => DaemonError::Api {
                status,
                code: e.code,
                message: e.error,
            },
            Err(_) => self.transport(format!("HTTP {status}")),
        })
    }

    /// One request with an optional JSON body and a JSON answer (`()` for none).
    fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Q>,
    ) -> Result<A, DaemonError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| self.transport(e))?;
        self.rt.block_on(async {
            let resp = self.send(method, path, body).await?;
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.transport(e))?
                .to_bytes();
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            serde_json::from_slice(bytes).map_err(|e| self.transport(format!("its answer: {e}")))
        })
    }

    /// The whole answer's body of a request that succeeded.
    fn bytes(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &'static str,
    ) -> Result<Bytes, DaemonError> {
        self.rt.block_on(async {
            let resp = self.send_as(method, path, body, content_type).await?;
            Ok(resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.transport(e))?
                .to_bytes())
        })
    }

    /// `GET /v1/sandboxes`: every sandbox (the daemon follows store heads as `cairn ls` does).
    pub fn list(&self) -> Result<Vec<SandboxInfo>, DaemonError> {
        self.call::<(), _>(Method::GET, "/v1/sandboxes", None)
    }

    /// `POST /v1/sandboxes/{name}/fork`: `new_name` from checkpoint `ckpt`, started if `start`.
    pub fn fork(
        &self,
        name: &str,
        ckpt: &str,
        new_name: &str,
        start: bool,
    ) -> Result<ForkInfo, DaemonError> {
        let body = ForkBody {
            checkpoint: ckpt.into(),
            new_name: new_name.into(),
            start,
        };
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{name}/fork"),
            Some(&body),
        )
    }

    /// `GET /v1/sandboxes/{name}/files/stat?path=`.
    pub fn stat(&self, name: &str, path: &str) -> Result<FileInfo, DaemonError> {
        let uri = format!("/v1/sandboxes/{name}/files/stat?path={}", query(path));
        self.call::<(), _>(Method::GET, &uri, None)
    }

    /// `GET /v1/sandboxes/{name}/files?path=`: a guest file whole.
    pub fn read_file(&self, name: &str, path: &str) -> Result<Bytes, DaemonError> {
        let uri = format!("/v1/sandboxes/{name}/files?path={}", query(path));
        self.bytes(Method::GET, &uri, None, "application/json")
    }

    /// `PUT /v1/sandboxes/{name}/files?path=&mode=`: writes a guest file.
    pub fn write_file(
        &self,
        name: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), DaemonError> {
        let uri = format!(
            "/v1/sandboxes/{name}/files?path={}&mode={:o}",
            query(path),
            mode & 0o7777
        );
        self.bytes(Method::PUT, &uri, Some(data), "application/octet-stream")
            .map(|_| ())
    }

    /// `GET /v1/sandboxes/{name}/sessions`.
    pub fn sessions(&self, name: &str) -> Result<Vec<SessionView>, DaemonError> {
        self.call::<(), _>(Method::GET, &format!("/v1/sandboxes/{name}/sessions"), None)
    }

    /// `POST /v1/sandboxes/{name}/sessions`: starts `req` as a detached session.
    pub fn session_start(
        &self,
        name: &str,
        req: &ExecRequest,
    ) -> Result<sessions::Started, DaemonError> {
        let path = format!("/v1/sandboxes/{name}/sessions");
        self.call(Method::POST, &path, Some(&SessionBody::of(req)))
    }

    /// `DELETE /v1/sandboxes/{name}/sessions/{id}`.
    pub fn session_kill(&self, name: &str, id: u32) -> Result<(), DaemonError> {
        let path = format!("/v1/sandboxes/{name}/sessions/{id}");
        self.call::<(), ()>(Method::DELETE, &path, None)
    }

    /// `GET /v1/sandboxes/{name}/sessions/{id}/attach?follow=`: the kept output, then (with
    /// `follow`) the live output, written to `out` and `err` as it comes. `dropped` hears how
    /// many older bytes were gone first. Returns the session's exit code once it ended, `None`
    /// when the stream ended with the session still running (`follow` off).
    pub fn session_attach(
        &self,
        name: &str,
        id: u32,
        follow: bool,
        dropped: &mut dyn FnMut(u64),
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<Option<i32>, DaemonError> {
        let path = format!("/v1/sandboxes/{name}/sessions/{id}/attach?follow={follow}");
        self.rt.block_on(async {
            let body_in = self.send(Method::GET, &path, None).await?.into_body();
            self.each_line(body_in, "attach", |line| {
                match serde_json::from_slice::<AttachLine>(line) {
                    Ok(AttachLine::Attached { dropped: n, .. }) => {
                        dropped(n);
                        Ok(None)
                    }
                    Ok(AttachLine::Detached) => Ok(Some(None)),
                    Err(_) => {
                        let ev: ExecLine = serde_json::from_slice(line)
                            .map_err(|e| self.transport(format!("its answer: {e}")))?;
                        Ok(self.exec_line(ev, out, err)?.map(Some))
                    }
                }
            })
            .await
        })
    }

    /// `POST /v1/sandboxes`: creates and boots a sandbox.
    pub fn create(&self, req: &CreateRequest) -> Result<SandboxInfo, DaemonError> {
        self.call(Method::POST, "/v1/sandboxes", Some(req))
    }

    /// `POST /v1/sandboxes/{name}/stop`: the checkpoint it stopped at (none: not running).
    pub fn stop(&self, name: &str) -> Result<Option<String>, DaemonError> {
        let s: Stopped =
            self.call::<(), _>(Method::POST, &format!("/v1/sandboxes/{name}/stop"), None)?;
        Ok(s.checkpoint)
    }

    /// `POST /v1/sandboxes/{name}/start` (`cold`: boot from the disk).
    pub fn start(&self, name: &str, cold: bool) -> Result<Started, DaemonError> {
        let path = format!("/v1/sandboxes/{name}/start");
        let r: StartedBody = self.call(Method::POST, &path, Some(&StartBody { cold }))?;
        match &*r.result {
            "already_running" => Ok(Started::AlreadyRunning),
            "started" => Ok(Started::Started),
            "rebooted" => Ok(Started::Rebooted),
            other => Err(self.transport(format!("its answer: unknown start result {other:?}"))),
        }
    }

    /// `DELETE /v1/sandboxes/{name}`.
    pub fn remove(&self, name: &str) -> Result<(), DaemonError> {
        self.call::<(), ()>(Method::DELETE, &format!("/v1/sandboxes/{name}"), None)
    }

    /// `POST /v1/sandboxes/{name}/checkpoints`: takes a checkpoint (default name: the
    /// library's).
    pub fn checkpoint_create(
        &self,
        name: &str,
        ckpt: Option<&str>,
    ) -> Result<CheckpointInfo, DaemonError> {
        let body = CheckpointBody::named(ckpt.map(str::to_string));
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{name}/checkpoints"),
            Some(&body),
        )
    }

    /// `GET /v1/sandboxes/{name}/checkpoints`.
    pub fn checkpoint_list(&self, name: &str) -> Result<Vec<CheckpointInfo>, DaemonError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/v1/sandboxes/{name}/checkpoints"),
            None,
        )
    }

    /// `POST /v1/sandboxes/{name}/checkpoints/{ckpt}/restore`.
    pub fn checkpoint_restore(&self, name: &str, ckpt: &str) -> Result<(), DaemonError> {
        let path = format!("/v1/sandboxes/{name}/checkpoints/{ckpt}/restore");
        self.call::<(), ()>(Method::POST, &path, None)
    }

    /// `DELETE /v1/sandboxes/{name}/checkpoints/{ckpt}`.
    pub fn checkpoint_remove(&self, name: &str, ckpt: &str) -> Result<(), DaemonError> {
        let path = format!("/v1/sandboxes/{name}/checkpoints/{ckpt}");
        self.call::<(), ()>(Method::DELETE, &path, None)
    }

    /// `GET /v1/sandboxes/{name}/policy`.
    pub fn policy_show(&self, name: &str) -> Result<PolicyView, DaemonError> {
        self.call::<(), _>(Method::GET, &format!("/v1/sandboxes/{name}/policy"), None)
    }

    /// `PUT /v1/sandboxes/{name}/policy`.
    pub fn policy_set(&self, name: &str, change: &PolicyChange) -> Result<PolicyView, DaemonError> {
        self.call(
            Method::PUT,
            &format!("/v1/sandboxes/{name}/policy"),
            Some(change),
        )
    }

    /// `POST /v1/sandboxes/{name}/exec`, streamed (`req`'s argv, env and cwd: an exec without
    /// stdin or a terminal): the command's output written to `out` and `err` as it comes; returns its exit code (128 + N when killed by signal N). With a
    /// `limit`, a command still running once it is up is abandoned (`None`): the connection
    /// closes, and the daemon kills the process (`SIGKILL`) as for any client that leaves.
    pub fn exec(
        &self,
        name: &str,
        req: ExecRequest,
        limit: Option<Duration>,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<Option<i32>, DaemonError> {
        let env: BTreeMap<String, String> = req.env.into_iter().collect();
        let body = serde_json::to_vec(&ExecBody::streamed(req.argv, env, req.cwd))
            .map_err(|e| self.transport(e))?;
        let path = format!("/v1/sandboxes/{name}/exec");
        self.rt.block_on(async {
            // The answer's head comes once the process has started (after a wake, if one was
            // needed): the limit counts from there, as without a daemon.
            let body_in = self
                .send(Method::POST, &path, Some(body))
                .await?
                .into_body();
            let run = self.each_line(body_in, "exec", |line| {
                let ev: ExecLine = serde_json::from_slice(line)
                    .map_err(|e| self.transport(format!("its answer: {e}")))?;
                self.exec_line(ev, out, err)
            });
            match limit {
                None => run.await.map(Some),
                // On time-out the answer's body, and its connection, are dropped.
                Some(limit) => match tokio::time::timeout(limit, run).await {
                    Ok(code) => code.map(Some),
                    Err(_) => Ok(None),
                },
            }
        })
    }

    /// Reads an NDJSON answer line by line (blank lines skipped) until `on_line` returns a
    /// result; an answer that ends first is an error naming `what`.
    async fn each_line<R>(
        &self,
        mut body_in: Incoming,
        what: &str,
        mut on_line: impl FnMut(&[u8]) -> Result<Option<R>, DaemonError>,
    ) -> Result<R, DaemonError> {
        let mut buf = Vec::new();
        while let Some(frame) = body_in.frame().await {
            let frame = frame.map_err(|e| self.transport(e))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if let Some(result) = on_line(&line)? {
                    return Ok(result);
                }
            }
        }
        Err(self.transport(format!("the {what}'s answer ended without an exit")))
    }

    /// Handles one exec line: output written, the exit code at the end.
    fn exec_line(
        &self,
        ev: ExecLine,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<Option<i32>, DaemonError> {
        let b64 = |d: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(d.as_bytes())
                .map_err(|e| self.transport(format!("its answer: {e}")))
        };
        match ev {
            ExecLine::Started { .. } => {}
            ExecLine::Stdout { data } => {
                out.write_all(&b64(&data)?)
                    .and_then(|()| out.flush())
                    .map_err(DaemonError::Output)?;
            }
            ExecLine::Stderr { data } => {
                err.write_all(&b64(&data)?)
                    .and_then(|()| err.flush())
                    .map_err(DaemonError::Output)?;
            }
            ExecLine::Exit { exit_code, .. } => return Ok(Some(exit_code)),
            ExecLine::Error { code, message } => {
                return Err(DaemonError::Api {
                    status: 500,
                    code,
                    message,
                })
            }
        }
        Ok(None)
    }
}

/// `text` as one path segment: everything but unreserved characters percent-encoded.
fn segment(text: &str) -> String {
    query(text).replace('/', "%2F")
}

/// `text` for a query string: everything but unreserved characters and `/` percent-encoded.
fn query(text: &str) -> String {
    let mut q = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            q.push(char::from(b));
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::{router, AppState, Listener};

    /// A real server on a home's socket, in a thread of its own; no guest.
    fn serve(home: &Home) -> std::thread::JoinHandle<()> {
        let socket = home.root().join(SOCKET_FILE);
        let std_listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let app = router(AppState::new(home.clone(), "t".into()), Listener::Unix);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::UnixListener::from_std(std_listener).unwrap();
                let _ = axum::serve(l, app).await;
            });
        })
    }

    #[test]
    fn the_cli_finds_the_daemon_and_reads_its_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        assert!(Daemon::find(&home).is_none(), "no daemon yet");
        let _server = serve(&home);
        let d = Daemon::find(&home).unwrap();
        let not_found = |e: DaemonError| match e {
            DaemonError::Api {
                status,
                code,
                message,
            } => {
                assert_eq!((status, code.as_str()), (404, "not_found"), "{message}");
                assert!(message.contains("nope"), "{message}");
            }
            other => panic!("{other:?}"),
        };
        not_found(d.stop("nope").unwrap_err());
        let bad = CreateRequest {
            name: "a b".into(),
            ..CreateRequest::default()
        };
        assert!(matches!(
            d.create(&bad).unwrap_err(),
            DaemonError::Api { status: 400, .. }
        ));
        not_found(d.start("nope", false).unwrap_err());
        not_found(d.remove("nope").unwrap_err());
        not_found(d.policy_show("nope").unwrap_err());
        not_found(d.checkpoint_list("nope").unwrap_err());
        not_found(d.checkpoint_create("nope", Some("c1")).unwrap_err());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let req = ExecRequest {
            argv: vec!["true".into()],
            ..ExecRequest::default()
        };
        let e = d
            .exec(
                "nope",
                req.clone(),
                Some(Duration::from_secs(5)),
                &mut out,
                &mut err,
            )
            .unwrap_err();
        not_found(e);
        // A bad policy pattern is the server's 400, whole.
        let bad = PolicyChange {
            allow: vec!["bad name!".into()],
            ..PolicyChange::default()
        };
        assert!(matches!(
            d.policy_set("nope", &bad).unwrap_err(),
            DaemonError::Api {
                status: 404 | 400,
                ..
            }
        ));
        not_found(d.fork("nope", "c1", "new", true).unwrap_err());
        not_found(d.sessions("nope").unwrap_err());
        not_found(d.session_start("nope", &req).unwrap_err());
        not_found(d.stat("nope", "/a b&c").unwrap_err());
        assert!(matches!(
            d.stat("nope", "/a/../b").unwrap_err(),
            DaemonError::Api { status: 400, .. }
        ));
        assert!(d.list().unwrap().is_empty());
        assert_eq!(query("/a b&c=ü"), "/a%20b%26c%3D%C3%BC");
        std::env::set_var("CAIRN_NO_DAEMON", "1");
        assert!(Daemon::find(&home).is_none(), "CAIRN_NO_DAEMON=1");
        std::env::remove_var("CAIRN_NO_DAEMON");
    }
}
