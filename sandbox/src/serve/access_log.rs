//! The daemon's access log: one line on stderr per request (method, path, status, time to the
//! answer's head), so who asked for what can be told afterwards; the CLI's requests included.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// Logs the request once its answer's head is ready.
pub(super) async fn log(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    eprintln!(
        "cairn serve: {method} {path} {} {:.1} ms",
        resp.status().as_u16(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    resp
}
