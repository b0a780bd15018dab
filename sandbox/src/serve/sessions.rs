//! The session routes (`/v1/sandboxes/{name}/sessions…`): start a detached process, list,
//! attach (NDJSON: the kept output, then live output; or a WebSocket, with input: see
//! [`super::ws`]) and kill. The work is in
//! [`crate::sessions`], the same calls `cairn exec -d` and `cairn sessions` make.

use super::error::blocking_as;
use super::error::{ApiError, JsonBody, Q};
use super::http::{command_argv, AppState, TtyBody, HEARTBEAT};
use super::ops::{ExecOutput, OpsError};
use super::stream::ExecLine;
use crate::sandbox::SandboxError;
use crate::sessions;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use cairn_agent::client::{ClientError, ExecEvent};
use cairn_agent::proto::{ExecRequest, PtySize};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// The session routes, merged into the `/v1` router (under its authentication).
pub(super) fn routes() -> Router<AppState> {
    let base = "/v1/sandboxes/{name}/sessions";
    Router::new()
        .route(base, get(list).post(start))
        .route(&format!("{base}/{{id}}"), delete(kill))
        .route(&format!("{base}/{{id}}/attach"), get(attach))
        // WebSocket exec; merged with http.rs's `POST …/exec`.
        .route("/v1/sandboxes/{name}/exec", get(super::ws::exec))
}

/// A sessions failure as an API error: an unknown session is a 404.
fn api_err(e: SandboxError) -> ApiError {
    match e {
        SandboxError::Agent(ClientError::Agent(m)) if m.starts_with("no session") => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", m)
        }
        e => OpsError::from(e).into(),
    }
}

async fn run<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking_as(f, api_err).await
}

/// `POST …/sessions`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartBody {
    /// A shell command line, run with `sh -c`.
    #[serde(default)]
    command: Option<String>,
    /// Or a program and its arguments.
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
    /// Keep stdin open (attached clients of the CLI may type into it).
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    tty: Option<TtyBody>,
}

impl StartBody {
    /// The body that starts `req` (what `cairn exec -d` sends the daemon).
    pub(super) fn of(req: &ExecRequest) -> StartBody {
        StartBody {
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

async fn start(
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<StartBody>,
) -> Result<Response, ApiError> {
    let argv = command_argv(b.command, b.argv)?;
    let req = ExecRequest {
        argv,
        env: b.env.into_iter().collect(),
        cwd: b.cwd,
        stdin: b.stdin,
        pty: b.tty.map(|t| PtySize {
            rows: t.rows,
            cols: t.cols,
        }),
    };
    let home = s.home().clone();
    let started = run(move || sessions::start(&home, &name, &req)).await?;
    Ok((StatusCode::CREATED, axum::Json(started)).into_response())
}

async fn list(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let home = s.home().clone();
    let v = run(move || sessions::list(&home, &name)).await?;
    Ok(axum::Json(v).into_response())
}

async fn kill(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, u32)>,
) -> Result<StatusCode, ApiError> {
    let home = s.home().clone();
    run(move || sessions::kill(&home, &name, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachQuery {
    /// Follow live output after the kept output (default true).
    #[serde(default)]
    follow: Option<bool>,
}

/// The first and (without `follow`) last lines of an attach stream; the others are
/// [`ExecLine`]s.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum AttachLine {
    /// Attached: `replay` bytes of kept output follow; `dropped` older ones are gone.
    Attached { dropped: u64, replay: u64 },
    /// The kept output has been sent and the stream ends; the session goes on.
    Detached,
}

fn line<T: Serialize>(v: &T) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    b
}

async fn attach(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, u32)>,
    Q(q): Q<AttachQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let follow = q.follow.unwrap_or(true);
    let upgrade = if req.headers().contains_key(header::UPGRADE) {
        Some(super::ws::upgrade(req, &s).await?)
    } else {
        None
    };
    let home = s.home().clone();
    let (mut a, active) = run(move || sessions::attach(&home, &name, id)).await?;
    if let Some(ws) = upgrade {
        return Ok(ws.on_upgrade(move |socket| super::ws::run_attach(socket, a, active)));
    }
    let detacher = a
        .detacher()
        .map_err(|e| ApiError::from(OpsError::from(e)))?;
    let head = line(&AttachLine::Attached {
        dropped: a.dropped(),
        replay: a.replay_bytes(),
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let out = tx.clone();
    tokio::task::spawn_blocking(move || {
        // Held while attached: an attached client keeps the sandbox awake.
        let _active = active;
        let mut left = a.replay_bytes();
        loop {
            if !follow && left == 0 {
                let _ = out.blocking_send(line(&AttachLine::Detached));
                break;
            }
            let (ev, end) = match a.next_event() {
                Ok(ExecEvent::Stdout(d)) => {
                    left = left.saturating_sub(d.len() as u64);
                    (ExecOutput::Stdout(d), false)
                }
                Ok(ExecEvent::Stderr(d)) => {
                    left = left.saturating_sub(d.len() as u64);
                    (ExecOutput::Stderr(d), false)
                }
                Ok(ExecEvent::Exited(st)) => (ExecOutput::Exit(st, None), true),
                Err(e) => {
                    if !out.is_closed() {
                        let _ = out.blocking_send(ExecLine::error(&e.into()).to_ndjson());
                    }
                    break;
                }
            };
            if out.blocking_send(ExecLine::of(ev).to_ndjson()).is_err() || end {
                break;
            }
        }
        a.detach();
        let _ = done_tx.send(());
    });
    // Heartbeats (blank lines) while quiet: writing is how a client that left is noticed; it
    // is then detached, and the session goes on.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut done_rx => return,
                _ = tick.tick() => {
                    if tx.send(b"\n".to_vec()).await.is_err() {
                        let _ = tokio::task::spawn_blocking(move || detacher.detach()).await;
                        return;
                    }
                }
            }
        }
    });
    let body = tokio_stream::once(head).chain(ReceiverStream::new(rx));
    let body = Body::from_stream(body.map(Ok::<_, std::convert::Infallible>));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
