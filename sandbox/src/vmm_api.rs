//! A small HTTP/1.1 client for the VMM's REST API on a Unix socket: one request per
//! connection (`Connection: close`), status line and body read back.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be reached or the exchange broke off.
    #[error("VMM API {path}")]
    Io {
        /// The API socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The answer was not HTTP.
    #[error("VMM API {path}: malformed response {text:?}")]
    Malformed {
        /// The API socket.
        path: PathBuf,
        /// The start of the answer.
        text: String,
    },
    /// The VMM refused the request.
    #[error("VMM refused {method} {url} ({status}): {message}")]
    Refused {
        /// HTTP method.
        method: String,
        /// Request path.
        url: String,
        /// HTTP status.
        status: u16,
        /// `fault_message`, or the body.
        message: String,
    },
}

/// Sends one request; returns the body of a 2xx answer, or [`ApiError::Refused`].
pub fn request(
    sock: &Path,
    method: &str,
    url: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<String, ApiError> {
    let io_err = |source| ApiError::Io {
        path: sock.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(sock).map_err(io_err)?;
    s.set_read_timeout(Some(timeout)).map_err(io_err)?;
    s.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {url} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(io_err)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(io_err)?;
    let (status, body) = parse_response(&resp).ok_or_else(|| ApiError::Malformed {
        path: sock.to_path_buf(),
        text: String::from_utf8_lossy(&resp[..resp.len().min(200)]).into_owned(),
    })?;
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("fault_message")?.as_str().map(str::to_string))
            .unwrap_or(body);
        Err(ApiError::Refused {
            method: method.into(),
            url: url.into(),
            status,
            message,
        })
    }
}

/// Splits a `Connection: close` response into status and body (honouring Content-Length).
fn parse_response(resp: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(resp);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let len = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let body = match len {
        Some(n) if n <= body.len() => body[..n].to_string(),
        _ => body.to_string(),
    };
    Some((status, body))
}

/// Does anything accept connections on `sock`?
pub fn answers(sock: &Path) -> bool {
    UnixStream::connect(sock).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn parses_status_and_body() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]";
        assert_eq!(parse_response(r), Some((200, "[]".into())));
        let r = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_response(r), Some((204, String::new())));
        assert_eq!(parse_response(b"garbage"), None);
    }

    #[test]
    fn round_trip_against_a_fake_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"name\":\"c1\"}",
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 27\r\n\r\n{\"fault_message\":\"no such\"}",
            ] {
                let (mut c, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"PUT /checkpoints HTTP/1.1\r\n"));
                c.write_all(answer.as_bytes()).unwrap();
            }
        });
        let body = serde_json::json!({"name": "c1"});
        let t5 = Duration::from_secs(5);
        let ok = request(&sock, "PUT", "/checkpoints", Some(&body), t5).unwrap();
        assert_eq!(ok, r#"{"name":"c1"}"#);
        let err = request(&sock, "PUT", "/checkpoints", None, t5).unwrap_err();
        assert!(
            matches!(err, ApiError::Refused { status: 400, ref message, .. } if message == "no such")
        );
        t.join().unwrap();
        assert!(!answers(&dir.path().join("nothing.sock")));
    }
}
