//! The `/v1` routes: thin handlers that check input, run an [`ops`] call under
//! `spawn_blocking`, and shape its answer. Every error is a JSON object
//! `{"error": MESSAGE, "code": CODE}` with a 4xx or 5xx status.

use super::auth::same_token;
use super::error::{blocking, ApiError, ErrorBody, JsonBody, OptJson, RawBody, Q};
use super::ops::{self, CreateRequest, ExecSpec, OpsError};
use super::stream::{spawn_exec, ExecLine};
use crate::sandbox::Home;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use cairn_agent::proto::PtySize;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// The OpenAPI document served at `/v1/openapi.json` (also `docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// The largest request body: 64 MiB (file and tar uploads).
pub const MAX_BODY: usize = 64 << 20;

/// The largest JSON request body: 1 MiB (stdin for an exec included).
pub const MAX_JSON: usize = 1 << 20;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    home: Home,
    token: Arc<str>,
}

impl AppState {
    /// State for `home`, accepting `token`.
    pub fn new(home: Home, token: String) -> AppState {
        AppState {
            home,
            token: token.into(),
        }
    }

    /// The home every handler works in.
    pub(super) fn home(&self) -> &Home {
        &self.home
    }
}

/// Which listener a router serves: TCP requires the token, the Unix socket checks it only
/// when one is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The Unix socket (mode 0600).
    Unix,
    /// A TCP address.
    Tcp,
}

async fn auth(
    State((state, listener)): State<(AppState, Listener)>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or("").trim().to_string());
    let ok = match (&given, listener) {
        (Some(t), _) => same_token(t, &state.token),
        (None, Listener::Unix) => true,
        (None, Listener::Tcp) => false,
    };
    if ok {
        return next.run(req).await;
    }
    let mut r = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        match given {
            None => "missing bearer token (hint: send `Authorization: Bearer $(cat $CAIRN_HOME/serve.token)`)",
            Some(_) => "wrong bearer token (hint: the token is in $CAIRN_HOME/serve.token)",
        },
    )
    .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    r
}

/// The `/v1` router for one listener.
pub fn router(state: AppState, listener: Listener) -> Router {
    let sandbox = "/v1/sandboxes/{name}";
    let api = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/sandboxes", get(list).post(create))
        .route(sandbox, get(get_one).delete(delete))
        .route(&format!("{sandbox}/stop"), post(stop))
        .route(&format!("{sandbox}/start"), post(start))
        .route(&format!("{sandbox}/exec"), post(exec))
        .route(
            &format!("{sandbox}/files"),
            get(read_file)
                .put(write_file)
                .delete(delete_file)
                .layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route(&format!("{sandbox}/files/list"), get(list_files))
        .route(&format!("{sandbox}/files/stat"), get(stat_file))
        .route(
            &format!("{sandbox}/tree"),
            get(super::tree::tree_get).put(super::tree::tree_put),
        )
        .route(
            &format!("{sandbox}/checkpoints"),
            get(checkpoints).post(checkpoint_create),
        )
        .route(
            &format!("{sandbox}/checkpoints/{{ckpt}}"),
            axum::routing::delete(checkpoint_delete),
        )
        .route(
            &format!("{sandbox}/checkpoints/{{ckpt}}/restore"),
            post(checkpoint_restore),
        )
        .route(&format!("{sandbox}/fork"), post(fork))
        .merge(super::sessions::routes())
        .merge(super::policy::routes())
        .layer(middleware::from_fn_with_state(
            (state.clone(), listener),
            auth,
        ))
        .layer(DefaultBodyLimit::max(MAX_JSON));
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .merge(api)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route (hint: GET /v1/openapi.json)",
            )
        })
        .layer(middleware::from_fn(super::access_log::log))
        .with_state(state)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[derive(Serialize)]
struct Health {
    version: &'static str,
}

async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        version: env!("CARGO_PKG_VERSION"),
    })
}

async fn list(State(s): State<AppState>) -> Result<Response, ApiError> {
    let v = blocking(move || ops::list(&s.home)).await?;
    Ok(axum::Json(v).into_response())
}

async fn create(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let v = blocking(move || ops::create(&s.home, &req)).await?;
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

async fn get_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let v = blocking(move || ops::get(&s.home, &name)).await?;
    Ok(axum::Json(v).into_response())
}

async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    blocking(move || Ok(crate::sandbox::remove(&s.home, &name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/stop`'s answer.
#[derive(Serialize, Deserialize)]
pub(crate) struct Stopped {
    pub(crate) checkpoint: Option<String>,
}

async fn stop(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let checkpoint = blocking(move || Ok(crate::sandbox::stop(&s.home, &name)?)).await?;
    Ok(axum::Json(Stopped { checkpoint }).into_response())
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartBody {
    #[serde(default)]
    pub(crate) cold: bool,
}

/// `POST …/start`'s answer: `already_running`, `started` or `rebooted`.
#[derive(Serialize, Deserialize)]
pub(crate) struct StartedBody {
    pub(crate) result: std::borrow::Cow<'static, str>,
}

async fn start(
    State(s): State<AppState>,
    Path(name): Path<String>,
    OptJson(body): OptJson<StartBody>,
) -> Result<Response, ApiError> {
    use crate::sandbox::Started;
    let r = blocking(move || Ok(crate::sandbox::start_with(&s.home, &name, body.cold)?)).await?;
    let result = match r {
        Started::AlreadyRunning => "already_running",
        Started::Started => "started",
        Started::Rebooted => "rebooted",
    };
    Ok(axum::Json(StartedBody {
        result: result.into(),
    })
    .into_response())
}

/// `POST …/exec`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExecBody {
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
    /// Text for stdin.
    #[serde(default)]
    stdin: Option<String>,
    /// Bytes for stdin, base64.
    #[serde(default)]
    stdin_b64: Option<String>,
    #[serde(default)]
    tty: Option<TtyBody>,
    /// Stream NDJSON lines instead of one JSON answer at the end.
    #[serde(default)]
    stream: bool,
}

/// A terminal's size in a request (`"tty": {"rows", "cols"}`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TtyBody {
    pub(super) rows: u16,
    pub(super) cols: u16,
}

/// The program to run from a request's `command` (a shell line) or `argv`: exactly one.
pub(super) fn command_argv(
    command: Option<String>,
    argv: Option<Vec<String>>,
) -> Result<Vec<String>, ApiError> {
    match (command, argv) {
        (Some(c), None) => Ok(ops::shell(&c)),
        (None, Some(a)) if !a.is_empty() => Ok(a),
        _ => Err(ApiError::bad(
            "give exactly one of `command` (a shell line) or `argv` (a non-empty list)",
        )),
    }
}

fn exec_spec(b: ExecBody) -> Result<ExecSpec, ApiError> {
    let argv = command_argv(b.command, b.argv)?;
    let stdin = match (b.stdin, b.stdin_b64) {
        (None, None) => None,
        (Some(t), None) => Some(t.into_bytes()),
        (None, Some(b64)) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| ApiError::bad(format!("stdin_b64: {e}")))?,
        ),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad("give at most one of `stdin` and `stdin_b64`"))
        }
    };
    Ok(ExecSpec {
        argv,
        env: b.env.into_iter().collect(),
        cwd: b.cwd,
        stdin,
        stdin_open: false,
        tty: b.tty.map(|t| PtySize {
            rows: t.rows,
            cols: t.cols,
        }),
    })
}

fn ndjson(stream: impl tokio_stream::Stream<Item = Vec<u8>> + Send + 'static) -> Response {
    let body = Body::from_stream(stream.map(Ok::<_, std::convert::Infallible>));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// How often a running exec's answer gets a heartbeat (a blank line in NDJSON, a space
/// before the collected JSON): writing is how a client that went away is noticed, and its
/// process then killed.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// Forwards exec events to a response body, each rendered by `render` (empty: nothing sent),
/// with a `heartbeat` every [`HEARTBEAT`] while nothing else is sent. When the client is gone,
/// the events' receiver is dropped, which kills the process.
fn exec_body(
    mut rx: tokio::sync::mpsc::Receiver<Result<ops::ExecOutput, OpsError>>,
    heartbeat: &'static [u8],
    mut render: impl FnMut(Result<ops::ExecOutput, OpsError>) -> Vec<u8> + Send + 'static,
) -> ReceiverStream<Vec<u8>> {
    let (tx, out) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.tick().await;
        loop {
            let chunk = tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => render(ev),
                    None => return,
                },
                _ = tick.tick() => heartbeat.to_vec(),
                _ = tx.closed() => return,
            };
            if !chunk.is_empty() && tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(out)
}

async fn exec(
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<ExecBody>,
) -> Result<Response, ApiError> {
    let stream = body.stream;
    let spec = exec_spec(body)?;
    let mut rx = spawn_exec(s.home.clone(), name, spec);
    // The first event decides the status: a missing sandbox is a 404, not a 200 stream.
    let first = match rx.recv().await {
        Some(Ok(ev)) => ev,
        Some(Err(e)) => return Err(e.into()),
        None => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "exec ended without a word",
            ))
        }
    };
    if stream {
        let head = ExecLine::of(first).to_ndjson();
        let rest = exec_body(rx, b"\n", |r| match r {
            Ok(ev) => ExecLine::of(ev).to_ndjson(),
            Err(e) => ExecLine::error(&e).to_ndjson(),
        });
        return Ok(ndjson(tokio_stream::once(head).chain(rest)));
    }
    // Collected: the answer is one JSON object (after heartbeat spaces), an ExecResult or,
    // should the agent fail mid-way, an error object.
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let body = exec_body(rx, b" ", move |r| {
        let v = match r {
            Ok(ops::ExecOutput::Stdout(d)) => {
                out.extend_from_slice(&d);
                return Vec::new();
            }
            Ok(ops::ExecOutput::Stderr(d)) => {
                err.extend_from_slice(&d);
                return Vec::new();
            }
            Ok(ops::ExecOutput::Started { .. }) => return Vec::new(),
            Ok(ops::ExecOutput::Exit(status, agent)) => {
                let ExecLine::Exit {
                    exit_code,
                    signal,
                    agent_ms,
                } = ExecLine::of(ops::ExecOutput::Exit(status, agent))
                else {
                    return Vec::new();
                };
                serde_json::to_vec(&ops::ExecResult {
                    stdout: String::from_utf8_lossy(&out).into_owned(),
                    stderr: String::from_utf8_lossy(&err).into_owned(),
                    exit_code,
                    signal,
                    agent_ms,
                })
            }
            Err(e) => serde_json::to_vec(&ErrorBody {
                error: &cairn_agent::error_text(&e),
                code: e.code(),
            }),
        };
        v.unwrap_or_default()
    });
    let body = Body::from_stream(body.map(Ok::<_, std::convert::Infallible>));
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PathQuery {
    pub(super) path: String,
    /// Octal permission bits for a written file (default 644).
    #[serde(default)]
    mode: Option<String>,
}

pub(super) fn checked(q: &PathQuery) -> Result<String, ApiError> {
    ops::check_path(&q.path)?;
    Ok(q.path.clone())
}

async fn read_file(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<PathQuery>,
) -> Result<Response, ApiError> {
    let path = checked(&q)?;
    let data = blocking(move || ops::read_file(&s.home, &name, &path)).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

async fn write_file(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<PathQuery>,
    RawBody(data): RawBody,
) -> Result<StatusCode, ApiError> {
    let path = checked(&q)?;
    let mode = match q.mode.as_deref() {
        None => 0o644,
        Some(m) => u32::from_str_radix(m, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| ApiError::bad(format!("mode {m:?} is not octal permission bits")))?,
    };
    blocking(move || ops::write_file(&s.home, &name, &path, &data, mode)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_file(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<PathQuery>,
) -> Result<StatusCode, ApiError> {
    let path = checked(&q)?;
    blocking(move || ops::remove_path(&s.home, &name, &path)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_files(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<PathQuery>,
) -> Result<Response, ApiError> {
    let path = checked(&q)?;
    let v = blocking(move || ops::list_files(&s.home, &name, &path)).await?;
    Ok(axum::Json(v).into_response())
}

async fn stat_file(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<PathQuery>,
) -> Result<Response, ApiError> {
    let path = checked(&q)?;
    let v = blocking(move || ops::stat(&s.home, &name, &path)).await?;
    Ok(axum::Json(v).into_response())
}

async fn checkpoints(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let v = blocking(move || ops::checkpoint_list(&s.home, &name)).await?;
    Ok(axum::Json(v).into_response())
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointBody {
    #[serde(default)]
    name: Option<String>,
    /// Stream NDJSON progress lines, the last one `done` or `error`.
    #[serde(default)]
    stream: bool,
}

/// One line of a streamed checkpoint.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum CheckpointLine {
    Progress {
        stage: &'static str,
        elapsed_ms: u64,
    },
    Done {
        checkpoint: serde_json::Value,
    },
    Error {
        code: String,
        message: String,
    },
}

impl CheckpointLine {
    fn to_ndjson(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

async fn checkpoint_create(
    State(s): State<AppState>,
    Path(name): Path<String>,
    OptJson(body): OptJson<CheckpointBody>,
) -> Result<Response, ApiError> {
    if let Some(c) = &body.name {
        ops::check_checkpoint_name(c)?;
    }
    // Refuse a missing sandbox before any stream starts.
    {
        let (s, name) = (s.clone(), name.clone());
        blocking(move || ops::get(&s.home, &name)).await?;
    }
    let job = tokio::task::spawn_blocking(move || {
        ops::checkpoint_create(&s.home, &name, body.name.as_deref())
    });
    if !body.stream {
        let meta = job.await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
        return Ok((StatusCode::CREATED, axum::Json(meta)).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    tokio::spawn(async move {
        let t0 = Instant::now();
        let mut job = job;
        let mut tick = tokio::time::interval(ops::PROGRESS_EVERY);
        let line = loop {
            tokio::select! {
                r = &mut job => break match r {
                    Ok(Ok(meta)) => CheckpointLine::Done { checkpoint: meta },
                    Ok(Err(e)) => CheckpointLine::Error { code: e.code().into(), message: cairn_agent::error_text(&e) },
                    Err(e) => CheckpointLine::Error { code: "internal".into(), message: e.to_string() },
                },
                _ = tick.tick() => {
                    let l = CheckpointLine::Progress { stage: "checkpointing", elapsed_ms: t0.elapsed().as_millis() as u64 };
                    // A client that left does not stop the checkpoint: it completes regardless.
                    let _ = tx.send(l.to_ndjson()).await;
                }
            }
        };
        let _ = tx.send(line.to_ndjson()).await;
    });
    Ok(ndjson(ReceiverStream::new(rx)))
}

async fn checkpoint_restore(
    State(s): State<AppState>,
    Path((name, ckpt)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ops::check_checkpoint_name(&ckpt)?;
    blocking(move || Ok(crate::sandbox::checkpoint_restore(&s.home, &name, &ckpt)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn checkpoint_delete(
    State(s): State<AppState>,
    Path((name, ckpt)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ops::check_checkpoint_name(&ckpt)?;
    blocking(move || Ok(crate::sandbox::checkpoint_remove(&s.home, &name, &ckpt)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForkBody {
    pub(crate) checkpoint: String,
    pub(crate) new_name: String,
    /// Start the new sandbox (default true; false: its first exec wakes it).
    #[serde(default = "yes")]
    pub(crate) start: bool,
}

fn yes() -> bool {
    true
}

async fn fork(
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<ForkBody>,
) -> Result<Response, ApiError> {
    let v = blocking(move || ops::fork_with(&s.home, &name, &b.checkpoint, &b.new_name, b.start))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

impl CheckpointBody {
    /// A checkpoint named `name` (default: the library's), answered whole.
    pub(crate) fn named(name: Option<String>) -> CheckpointBody {
        CheckpointBody {
            name,
            stream: false,
        }
    }
}

impl ExecBody {
    /// A streamed exec of `argv` without stdin or tty: what the CLI sends the daemon.
    pub(crate) fn streamed(
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
    ) -> ExecBody {
        ExecBody {
            argv: Some(argv),
            env,
            cwd,
            stream: true,
            ..ExecBody::default()
        }
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
