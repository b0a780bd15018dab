//! `GET`/`PUT /v1/sandboxes/{name}/tree?path=P`: whole trees as tar, streamed both ways.
//! `GET` streams the guest's `tar` output as it comes (a directory's contents, or one file);
//! `PUT` feeds the request body to the guest's `tar -x` as it arrives, so neither holds more
//! than a few chunks in memory and neither has a size limit. `cairn cp` of a directory or a
//! large file goes through them when a daemon runs.

use super::error::ApiError;
use super::http::{checked, AppState, PathQuery};
use super::ops::{self, ExecOutput, OpsError};
use super::stream::{spawn_exec, spawn_exec_controlled};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_agent::client::ExecControl;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::error::Q;

/// `GET …/tree?path=P`: the tree at P as tar.
pub(super) async fn tree_get(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<PathQuery>,
) -> Result<Response, ApiError> {
    let spec = ops::tar_out_spec(&checked(&q)?)?;
    let mut rx = spawn_exec(s.home().clone(), name, spec);
    // Collect stderr until the end to report a failure properly; stream stdout as it comes
    // only after tar has started cleanly (the first chunk or the exit).
    let mut head = Vec::new();
    let mut err = Vec::new();
    loop {
        match rx.recv().await {
            Some(Ok(ExecOutput::Stdout(d))) => {
                head = d;
                break;
            }
            Some(Ok(ExecOutput::Stderr(d))) => err.extend_from_slice(&d),
            Some(Ok(ExecOutput::Started { .. })) => {}
            Some(Ok(ExecOutput::Exit(st, _))) => {
                if st.success() {
                    break;
                }
                return Err(failure(&q.path, &err));
            }
            Some(Err(e)) => return Err(e.into()),
            None => break,
        }
    }
    let rest = ReceiverStream::new(rx).filter_map(|r| match r {
        Ok(ExecOutput::Stdout(d)) => Some(d),
        _ => None,
    });
    let body = Body::from_stream(
        tokio_stream::once(head)
            .chain(rest)
            .map(Ok::<_, std::convert::Infallible>),
    );
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], body).into_response())
}

/// A failed guest `tar` on `path`: a missing path is a 404.
fn failure(path: &str, stderr: &[u8]) -> ApiError {
    let msg = String::from_utf8_lossy(stderr);
    let e = ops::guest_failure_text(path, &msg);
    if msg.contains("Cannot open") || msg.contains("can't cd") {
        return OpsError::NotFound(format!("{path}: {}", msg.trim())).into();
    }
    e.into()
}

/// `PUT …/tree?path=P`: unpacks the tar body into P (made if missing), streamed.
pub(super) async fn tree_put(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Q(q): Q<PathQuery>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let path = checked(&q)?;
    let spec = ops::tar_in_spec(&path)?;
    let (mut rx, ctl) = spawn_exec_controlled(s.home().clone(), name, spec);
    let mut ctl = Some(ctl);
    let mut data = body.into_data_stream();
    let mut feed: Option<mpsc::Sender<bytes::Bytes>> = None;
    let mut body_done = false;
    let mut err = Vec::new();
    loop {
        tokio::select! {
            chunk = data.next(), if feed.is_some() => match chunk {
                Some(Ok(b)) => {
                    let gone = match &feed {
                        Some(f) => f.send(b).await.is_err(),
                        None => true,
                    };
                    if gone {
                        // The input pump stopped: tar has ended; its exit says how.
                        feed = None;
                    }
                }
                // Dropping `rx` on return kills tar: nothing half-written is taken for done.
                Some(Err(e)) => return Err(ApiError::bad(format!("request body: {e}"))),
                None => {
                    body_done = true;
                    feed = None; // closes tar's stdin
                }
            },
            ev = rx.recv() => match ev {
                Some(Ok(ExecOutput::Started { .. })) => {
                    if let Some(c) = ctl.take() {
                        feed = c.await.ok().map(stdin_pump);
                    }
                }
                Some(Ok(ExecOutput::Stderr(d))) => err.extend_from_slice(&d),
                Some(Ok(ExecOutput::Stdout(_))) => {}
                Some(Ok(ExecOutput::Exit(st, _))) => {
                    if st.success() {
                        return Ok(StatusCode::NO_CONTENT);
                    }
                    if err.is_empty() && !body_done {
                        err.extend_from_slice(b"tar ended before the archive did");
                    }
                    return Err(failure(&path, &err));
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(OpsError::BadRequest("tar ended without a word".into()).into())
                }
            },
        }
    }
}

/// A thread that writes chunks to the process's stdin in order (writes may block on a full
/// socket) and closes it when the sender goes. Ends early when a write fails.
fn stdin_pump(control: ExecControl) -> mpsc::Sender<bytes::Bytes> {
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(8);
    tokio::task::spawn_blocking(move || {
        while let Some(d) = rx.blocking_recv() {
            if control.stdin(&d).is_err() {
                return;
            }
        }
        let _ = control.close_stdin();
    });
    tx
}
