//! Interactive exec and attach over WebSocket (`GET …/exec` and `GET …/sessions/{id}/attach`
//! with `Upgrade: websocket`): stdin in, output out, resizes and signals, the exit code last.
//! The frame format is in `docs/api.md`.
//!
//! Server → client: text frames, one JSON object each, the NDJSON exec stream's lines
//! ([`ExecLine`]; attach starts with `attached`), then a close frame. Client → server: binary
//! frames are stdin bytes; text frames are [`ClientFrame`]s. A client that goes away kills
//! its exec; an attached client that goes away detaches, and the session goes on.

use super::error::{blocking, ApiError};
use super::http::{command_argv, AppState, TtyBody};
use super::ops::{self, ExecOutput, ExecSpec, OpsError};
use super::sessions::AttachLine;
use super::stream::{spawn_exec_controlled, ExecLine};
use crate::sandbox::Home;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::response::Response;
use base64::Engine;
use cairn_agent::client::{AttachedSession, ExecControl, ExecEvent};
use cairn_agent::proto::{ExecRequest, PtySize};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a new exec socket waits for its `start` frame.
const START_WAIT: Duration = Duration::from_secs(30);

/// How long the server waits for the client's close frame after its own.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The first frame of an exec socket (text, JSON): what to run.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartFrame {
    /// A shell command line, run with `sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    /// Or a program and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    argv: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
    /// Keep stdin open for the client's frames (default true); false: /dev/null.
    #[serde(default = "yes")]
    stdin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tty: Option<TtyBody>,
}

impl StartFrame {
    /// The frame that runs `req` (what `cairn exec -i/-t` sends the daemon).
    pub(super) fn of(req: &ExecRequest) -> StartFrame {
        StartFrame {
            command: None,
            argv: Some(req.argv.clone()),
            env: req.env.iter().cloned().collect(),
            cwd: req.cwd.clone(),
            stdin: req.stdin,
            tty: req.pty.map(|p| TtyBody {
                rows: p.rows,
                cols: p.cols,
            }),
        }
    }
}

fn yes() -> bool {
    true
}

impl StartFrame {
    fn spec(self) -> Result<ExecSpec, ApiError> {
        Ok(ExecSpec {
            argv: command_argv(self.command, self.argv)?,
            env: self.env.into_iter().collect(),
            cwd: self.cwd,
            stdin: None,
            stdin_open: self.stdin,
            tty: self.tty.map(|t| PtySize {
                rows: t.rows,
                cols: t.cols,
            }),
        })
    }
}

/// A control frame from the client (text, JSON, tagged by `type`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Bytes for stdin, base64 (binary frames carry them raw).
    Stdin {
        /// The bytes, base64 (standard alphabet, padded).
        data: String,
    },
    /// Close stdin (EOF; with a tty: ^D).
    StdinClose,
    /// The terminal's new size (tty only).
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Send a signal to the process.
    Signal {
        /// Signal number, e.g. 2 for SIGINT.
        signal: i32,
    },
    /// Attach only: leave the session running and end this socket.
    Detach,
}

/// What the client asked, one frame at a time.
enum Step {
    Input(Input),
    Detach,
    /// The client closed the socket or the connection broke.
    Gone,
    /// Ping, pong: nothing to do.
    Nothing,
    Bad(String),
}

/// Input for the process, applied in order on a blocking thread.
enum Input {
    Data(Vec<u8>),
    Close,
    Resize(PtySize),
    Signal(i32),
}

fn step(msg: Option<Result<Message, axum::Error>>) -> Step {
    let text = match msg {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Step::Gone,
        Some(Ok(Message::Binary(b))) => return Step::Input(Input::Data(b.to_vec())),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Step::Nothing,
        Some(Ok(Message::Text(t))) => t,
    };
    match serde_json::from_str::<ClientFrame>(text.as_str()) {
        Ok(ClientFrame::Stdin { data }) => {
            match base64::engine::general_purpose::STANDARD.decode(data.as_bytes()) {
                Ok(d) => Step::Input(Input::Data(d)),
                Err(e) => Step::Bad(format!("stdin frame: data is not base64: {e}")),
            }
        }
        Ok(ClientFrame::StdinClose) => Step::Input(Input::Close),
        Ok(ClientFrame::Resize { rows, cols }) => Step::Input(Input::Resize(PtySize { rows, cols })),
        Ok(ClientFrame::Signal { signal }) => Step::Input(Input::Signal(signal)),
        Ok(ClientFrame::Detach) => Step::Detach,
        Err(e) => Step::Bad(format!(
            "bad frame: {e} (hint: binary frames are stdin; text frames are JSON with \"type\": stdin, stdin_close, resize, signal or detach)"
        )),
    }
}

/// A thread that applies input to the process in order (stdin writes may block on a full
/// socket; the socket loop must not). Ends when the sender goes or the process has ended.
fn input_pump(control: ExecControl) -> mpsc::UnboundedSender<Input> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    tokio::task::spawn_blocking(move || {
        while let Some(i) = rx.blocking_recv() {
            let r = match i {
                Input::Data(d) => control.stdin(&d),
                Input::Close => control.close_stdin(),
                Input::Resize(s) => control.resize(s),
                Input::Signal(n) => control.signal(n),
            };
            if r.is_err() {
                return;
            }
        }
    });
    tx
}

async fn send<T: Serialize>(ws: &mut WebSocket, frame: &T) -> Result<(), axum::Error> {
    let text = serde_json::to_string(frame).unwrap_or_default();
    ws.send(Message::Text(text.into())).await
}

/// Sends the last frame and a normal close, then waits (briefly) for the client's close: a
/// socket dropped at once can make the client lose the last frame.
async fn finish<T: Serialize>(ws: &mut WebSocket, frame: &T) {
    if send(ws, frame).await.is_err() {
        return;
    }
    let close = Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "".into(),
    }));
    if ws.send(close).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(m)) = ws.recv().await {
            if matches!(m, Message::Close(_)) {
                return;
            }
        }
    })
    .await;
}

fn bad_line(message: impl Into<String>) -> ExecLine {
    ExecLine::Error {
        code: "bad_request".into(),
        message: message.into(),
    }
}

/// The request's WebSocket upgrade; a request that is not one gets a JSON 400.
pub(super) async fn upgrade(req: Request, s: &AppState) -> Result<WebSocketUpgrade, ApiError> {
    let (mut parts, _) = req.into_parts();
    WebSocketUpgrade::from_request_parts(&mut parts, s)
        .await
        .map_err(|e| {
            ApiError::bad(format!(
                "{} (hint: this route is a WebSocket; to run a command with one answer, POST …/exec)",
                e.body_text()
            ))
        })
}

/// `GET /v1/sandboxes/{name}/exec` with `Upgrade: websocket`.
pub(super) async fn exec(
    State(s): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let ws = upgrade(req, &s).await?;
    // A missing sandbox is a 404 before the upgrade.
    let home = s.home().clone();
    let n = name.clone();
    blocking(move || ops::get(&home, &n)).await?;
    let home = s.home().clone();
    Ok(ws.on_upgrade(move |socket| run_exec(socket, home, name)))
}

async fn start_frame(ws: &mut WebSocket) -> Result<ExecSpec, Option<String>> {
    let msg = match tokio::time::timeout(START_WAIT, ws.recv()).await {
        Err(_) => return Err(Some("no start frame within 30 s".into())),
        Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return Err(None),
        Ok(Some(Ok(m))) => m,
    };
    let Message::Text(text) = msg else {
        return Err(Some(
            "the first frame must be a text frame: JSON {\"command\": ...} or {\"argv\": [...]}"
                .into(),
        ));
    };
    let start: StartFrame =
        serde_json::from_str(text.as_str()).map_err(|e| Some(format!("start frame: {e}")))?;
    start.spec().map_err(|e| Some(e.message().to_string()))
}

enum Event<T> {
    Out(Option<T>),
    In(Option<Result<Message, axum::Error>>),
}

async fn run_exec(mut ws: WebSocket, home: Home, name: String) {
    let spec = match start_frame(&mut ws).await {
        Ok(s) => s,
        Err(Some(m)) => return finish(&mut ws, &bad_line(m)).await,
        Err(None) => return,
    };
    let (mut rx, ctl) = spawn_exec_controlled(home, name, spec);
    let mut pump = None;
    let mut ctl = Some(ctl);
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => Event::Out(ev),
            m = ws.recv(), if pump.is_some() => Event::In(m),
        };
        match ev {
            Event::Out(Some(Ok(out))) => {
                if let (ExecOutput::Started { .. }, Some(c)) = (&out, ctl.take()) {
                    // Sent before `Started`: input is read from here on.
                    pump = c.await.ok().map(input_pump);
                }
                let end = matches!(out, ExecOutput::Exit(..));
                let line = ExecLine::of(out);
                if end {
                    // Let the exec thread finish first, so the end is not taken for a client
                    // that left.
                    let _ = tokio::time::timeout(CLOSE_WAIT, rx.recv()).await;
                    return finish(&mut ws, &line).await;
                }
                if send(&mut ws, &line).await.is_err() {
                    return; // dropping `rx` kills the process
                }
            }
            Event::Out(Some(Err(e))) => return finish(&mut ws, &ExecLine::error(&e)).await,
            Event::Out(None) => {
                let e = OpsError::BadRequest("exec ended without a word".into());
                return finish(&mut ws, &ExecLine::error(&e)).await;
            }
            Event::In(m) => match step(m) {
                Step::Input(i) => {
                    if let Some(p) = &pump {
                        let _ = p.send(i);
                    }
                }
                Step::Nothing => {}
                Step::Gone => return,
                Step::Detach => {
                    let m = "detach is for attached sessions (hint: start a session to leave a process running)";
                    return finish(&mut ws, &bad_line(m)).await;
                }
                Step::Bad(m) => return finish(&mut ws, &bad_line(m)).await,
            },
        }
    }
}

/// Runs an attached session over `ws` until it ends, the client detaches or goes away.
/// `keep` (the sandbox's activity lock) is held while attached.
pub(super) async fn run_attach<K: Send + 'static>(
    mut ws: WebSocket,
    mut a: AttachedSession,
    keep: K,
) {
    let detacher = match a.detacher() {
        Ok(d) => d,
        Err(e) => {
            let e = OpsError::from(e);
            return finish(&mut ws, &ExecLine::error(&e)).await;
        }
    };
    let head = AttachLine::Attached {
        dropped: a.dropped(),
        replay: a.replay_bytes(),
    };
    let pump = input_pump(a.control());
    let (tx, mut rx) = mpsc::channel::<Result<ExecOutput, OpsError>>(64);
    tokio::task::spawn_blocking(move || {
        let _keep = keep;
        loop {
            let (ev, end) = match a.next_event() {
                Ok(ExecEvent::Stdout(d)) => (Ok(ExecOutput::Stdout(d)), false),
                Ok(ExecEvent::Stderr(d)) => (Ok(ExecOutput::Stderr(d)), false),
                Ok(ExecEvent::Exited(st)) => (Ok(ExecOutput::Exit(st, None)), true),
                Err(e) => (Err(e.into()), true),
            };
            if tx.blocking_send(ev).is_err() || end {
                break;
            }
        }
        a.detach();
    });
    if send(&mut ws, &head).await.is_err() {
        return detacher.detach();
    }
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => Event::Out(ev),
            m = ws.recv() => Event::In(m),
        };
        match ev {
            Event::Out(Some(Ok(out))) => {
                let end = matches!(out, ExecOutput::Exit(..));
                let line = ExecLine::of(out);
                if end {
                    return finish(&mut ws, &line).await;
                }
                if send(&mut ws, &line).await.is_err() {
                    return detacher.detach();
                }
            }
            Event::Out(Some(Err(e))) => return finish(&mut ws, &ExecLine::error(&e)).await,
            Event::Out(None) => return,
            Event::In(m) => match step(m) {
                Step::Input(i) => {
                    let _ = pump.send(i);
                }
                Step::Nothing => {}
                Step::Gone => return detacher.detach(),
                Step::Detach => {
                    detacher.detach();
                    return finish(&mut ws, &AttachLine::Detached).await;
                }
                Step::Bad(m) => {
                    detacher.detach();
                    return finish(&mut ws, &bad_line(m)).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"resize","rows":24,"cols":80}"#).expect("resize");
        assert_eq!(f, ClientFrame::Resize { rows: 24, cols: 80 });
        let f: ClientFrame = serde_json::from_str(r#"{"type":"stdin_close"}"#).expect("close");
        assert_eq!(f, ClientFrame::StdinClose);
        assert!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"stdin","data":"aGk=","x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"nope"}"#).is_err());
        let s: StartFrame = serde_json::from_str(r#"{"command":"cat"}"#).expect("start");
        let spec = s.spec().expect("spec");
        assert_eq!(spec.argv, ops::shell("cat"));
        assert!(spec.stdin_open && spec.stdin.is_none());
        assert!(serde_json::from_str::<StartFrame>(r#"{"command":"x","bogus":1}"#).is_err());
    }

    #[test]
    fn binary_frames_are_stdin() {
        match step(Some(Ok(Message::Binary(vec![1u8, 2].into())))) {
            Step::Input(Input::Data(d)) => assert_eq!(d, vec![1, 2]),
            _ => panic!("not stdin"),
        }
        assert!(matches!(step(None), Step::Gone));
        assert!(matches!(
            step(Some(Ok(Message::Text("{".into())))),
            Step::Bad(_)
        ));
    }
}
