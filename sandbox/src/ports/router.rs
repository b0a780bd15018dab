//! The HTTP router: `http://NAME.localhost:PORT/` goes to port 8080 (by default) in sandbox
//! NAME, `http://GUESTPORT.NAME.localhost:PORT/` to GUESTPORT, chosen by the Host header.
//!
//! Each request opens its own guest connection through [`super::open`] (which wakes a sleeping
//! sandbox and keeps it awake until the response has been sent), speaks HTTP/1.1 to the guest
//! server over it with hyper's client, and streams the answer back. [`Router`] is a library
//! type: [`Router::handle`] takes any `http::Request` whose body is a `hyper::body::Body`, so a
//! server built on hyper or axum can mount it; [`Router::serve`] is the standalone server
//! behind `cairn router`.
//!
//! Errors are plain-text answers: 400 for a Host the router cannot read, 404 for an unknown
//! sandbox, 503 when the sandbox cannot be woken, 502 when nothing answers at the guest port.

use super::{open, PortsError, Target};
use crate::sandbox::Home;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Body;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The guest port a bare `NAME.localhost` goes to.
pub const DEFAULT_GUEST_PORT: u16 = 8080;

/// Any error a body may carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every answer the router gives.
pub type RouterBody = BoxBody<Bytes, BoxError>;

/// Why a Host header names no sandbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The request has no Host (nor an absolute URI).
    #[error("the request has no Host header")]
    Missing,
    /// The host is not under `.localhost`.
    #[error("host {0:?} is not NAME.localhost or GUESTPORT.NAME.localhost")]
    NotLocalhost(String),
    /// The port label is not a TCP port.
    #[error("guest port {0:?} in the host name is not a port number (1-65535)")]
    BadPort(String),
}

/// Reads a Host header value: `NAME.localhost[:P]` -> (NAME, `default_port`),
/// `GUESTPORT.NAME.localhost[:P]` -> (NAME, GUESTPORT). The `.localhost` suffix is matched
/// without regard to case; NAME is returned as written (browsers send it lower-cased).
pub fn parse_host(host: &str, default_port: u16) -> Result<(String, u16), HostError> {
    let h = host.trim();
    if h.is_empty() {
        return Err(HostError::Missing);
    }
    // Drop the listening port (`:8000`); IPv6 literals never end in `.localhost`.
    let h = match h.rsplit_once(':') {
        Some((rest, port)) if port.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => h,
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    const SUFFIX: &str = ".localhost";
    let cut = h.len().checked_sub(SUFFIX.len());
    let label = match cut {
        Some(c) if c > 0 && h.is_char_boundary(c) && h[c..].eq_ignore_ascii_case(SUFFIX) => &h[..c],
        _ => return Err(HostError::NotLocalhost(host.to_string())),
    };
    match label.split_once('.') {
        Some((port, name)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            match port.parse::<u16>() {
                Ok(p) if p != 0 => Ok((name.to_string(), p)),
                _ => Err(HostError::BadPort(port.to_string())),
            }
        }
        _ => Ok((label.to_string(), default_port)),
    }
}

/// Routes HTTP requests to sandboxes by Host header.
#[derive(Debug, Clone)]
pub struct Router {
    home: Home,
    default_port: u16,
}

impl Router {
    /// A router over the sandboxes of `home`, sending `NAME.localhost` to [`DEFAULT_GUEST_PORT`].
    pub fn new(home: Home) -> Router {
        Router {
            home,
            default_port: DEFAULT_GUEST_PORT,
        }
    }

    /// Sends a bare `NAME.localhost` to `port` instead.
    pub fn with_default_port(mut self, port: u16) -> Router {
        self.default_port = port;
        self
    }

    /// Answers one request: forwards it to the sandbox its Host names (waking it), or
    /// answers an error in plain text.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<RouterBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let host = req
            .headers()
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().host().map(str::to_string))
            .unwrap_or_default();
        let (name, port) = match parse_host(&host, self.default_port) {
            Ok(t) => t,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("cairn router: {e} (hint: http://NAME.localhost:PORT/ reaches port {} in sandbox NAME)", self.default_port),
                )
            }
        };
        let target = Target::local(&name, port);
        match self.forward(&target, req).await {
            Ok(resp) => resp,
            Err(e) => {
                let status = match &e {
                    Forward::Ports(PortsError::NoSandbox(_)) => StatusCode::NOT_FOUND,
                    Forward::Ports(PortsError::Wake { .. }) => StatusCode::SERVICE_UNAVAILABLE,
                    Forward::Ports(PortsError::Io { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::BAD_GATEWAY,
                };
                text(status, format!("cairn router: {}", error_text(&e)))
            }
        }
    }

    async fn forward<B>(
        &self,
        target: &Target,
        req: Request<B>,
    ) -> Result<Response<RouterBody>, Forward>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let home = self.home.clone();
        let t = target.clone();
        let guest = tokio::task::spawn_blocking(move || open(&home, &t))
            .await
            .map_err(|e| Forward::Task(e.to_string()))??;
        let local_err = |what: &str| {
            let what = what.to_string();
            move |source| Forward::Ports(PortsError::Io { what, source })
        };
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(local_err("socket pair"))?;
        let name = target.name.clone();
        // Once hyper is done with the connection (the whole answer read), no guest byte is
        // wanted any more: the splice is ended even if the guest server keeps its side open,
        // so that the sandbox is released (and may idle) at once.
        let done = Arc::new(AtomicBool::new(false));
        let release = Release {
            abort: guest.abort_handle()?,
            done: Arc::clone(&done),
        };
        let done2 = done;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = guest.splice(theirs) {
                if !done2.load(Ordering::SeqCst) {
                    eprintln!("cairn router: {name}: {}", cairn_agent::error_text(&e));
                }
            }
        });
        ours.set_nonblocking(true)
            .map_err(local_err("socket pair"))?;
        let ours = tokio::net::UnixStream::from_std(ours).map_err(local_err("socket pair"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(ours))
            .await
            .map_err(Forward::Http)?;
        tokio::spawn(async move {
            let _ = conn.await;
            drop(release);
        });
        let resp = sender.send_request(req).await.map_err(Forward::Http)?;
        Ok(resp.map(|b| b.map_err(BoxError::from).boxed()))
    }

    /// Serves HTTP/1.1 on `listener` until accepting fails hard (the `cairn router` command).
    pub async fn serve(self, listener: tokio::net::TcpListener) -> Result<(), PortsError> {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    eprintln!("cairn router: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
                Err(source) => {
                    return Err(PortsError::Io {
                        what: "accept a connection".into(),
                        source,
                    })
                }
            };
            let _ = stream.set_nodelay(true);
            let router = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let router = router.clone();
                    async move { Ok::<_, Infallible>(router.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}

/// Ends a request's guest connection when dropped: after hyper is done with it, or on an
/// early error return.
struct Release {
    abort: cairn_agent::client::TunnelAbort,
    done: Arc<AtomicBool>,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        self.abort.abort();
    }
}

/// Why forwarding one request failed.
#[derive(Debug, thiserror::Error)]
enum Forward {
    #[error(transparent)]
    Ports(#[from] PortsError),
    #[error("the guest server's HTTP answer")]
    Http(#[source] hyper::Error),
    #[error("worker task: {0}")]
    Task(String),
}

fn error_text(e: &Forward) -> String {
    match e {
        Forward::Ports(p) => cairn_agent::error_text(p),
        other => cairn_agent::error_text(other),
    }
}

fn text(status: StatusCode, msg: String) -> Response<RouterBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(msg + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_pick_sandbox_and_port() {
        let ok = |h: &str| parse_host(h, 8080).unwrap();
        assert_eq!(ok("dev.localhost"), ("dev".into(), 8080));
        assert_eq!(ok("dev.localhost:8000"), ("dev".into(), 8080));
        assert_eq!(ok("dev.LOCALHOST."), ("dev".into(), 8080));
        assert_eq!(ok("3000.dev.localhost:8000"), ("dev".into(), 3000));
        assert_eq!(ok("dev-1.localhost"), ("dev-1".into(), 8080));
        assert_eq!(ok("my.app.localhost"), ("my.app".into(), 8080));
        assert_eq!(ok("80.my.app.localhost"), ("my.app".into(), 80));
        // A name of digits alone is a name.
        assert_eq!(ok("3000.localhost"), ("3000".into(), 8080));
        assert_eq!(parse_host("dev.localhost", 9).unwrap().1, 9);
    }

    #[test]
    fn bad_hosts_are_clear_errors() {
        let err = |h: &str| parse_host(h, 8080).unwrap_err();
        assert_eq!(err(""), HostError::Missing);
        assert!(matches!(err("localhost"), HostError::NotLocalhost(_)));
        assert!(matches!(err("localhost:8000"), HostError::NotLocalhost(_)));
        assert!(matches!(err(".localhost"), HostError::NotLocalhost(_)));
        assert!(matches!(err("example.com"), HostError::NotLocalhost(_)));
        assert!(matches!(err("[::1]:8000"), HostError::NotLocalhost(_)));
        assert!(matches!(err("devlocalhost"), HostError::NotLocalhost(_)));
        assert_eq!(err("0.dev.localhost"), HostError::BadPort("0".into()));
        assert_eq!(
            err("70000.dev.localhost"),
            HostError::BadPort("70000".into())
        );
        // Multi-byte characters do not split badly.
        assert!(matches!(err("é.localhosté"), HostError::NotLocalhost(_)));
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn get(host: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .uri("/")
            .header(HOST, host)
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    async fn body_text(resp: Response<RouterBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn unknown_sandbox_is_404_and_bad_host_400() {
        let dir = tempfile::tempdir().unwrap();
        let router = Router::new(Home::at(dir.path()).unwrap());
        runtime().block_on(async {
            let resp = router.handle(get("nope.localhost:8000")).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND);
            let body = body_text(resp).await;
            assert!(body.contains("no sandbox named \"nope\""), "{body}");
            let resp = router.handle(get("example.com")).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
            assert!(body_text(resp).await.contains("NAME.localhost"));
        });
    }
}
