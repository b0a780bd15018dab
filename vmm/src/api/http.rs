//! HTTP/1.1 framing for the API socket: request heads are parsed with `httparse`, bodies are
//! delimited by `Content-Length`, and responses are written in full.
//!
//! Limits: the request line plus headers may take [`MAX_HEADER_SIZE`] bytes and
//! [`MAX_HEADERS`] headers (else 400), the body [`MAX_BODY_SIZE`] bytes by default (else 400, as Firecracker).
//! `Transfer-Encoding` (chunked bodies) is refused with 400. After any framing error the
//! connection is closed, since the next request's start cannot be found.

use super::ApiResponse;

/// Most bytes in the request line and headers, terminating blank line included.
pub const MAX_HEADER_SIZE: usize = 8 * 1024;
/// Default limit on a request body (Firecracker's `--http-api-max-payload-size` defaults to
/// 51,200); see [`super::ApiServer::with_max_body_size`].
pub const MAX_BODY_SIZE: usize = 64 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 32;

/// The interim response sent to a client that asked `Expect: 100-continue` (curl does for
/// bodies over 1 KiB and would otherwise wait a second).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the framing layer needs to know about a request whose head has fully arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Method token, e.g. `PUT`.
    pub method: String,
    /// Request target, e.g. `/drives/rootfs`.
    pub path: String,
    /// Whether the connection stays open after the response (HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// Body length from `Content-Length` (0 when absent).
    pub content_length: usize,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
    /// Bytes taken by the request line and headers; the body starts here.
    pub header_len: usize,
}

/// The result of looking at the bytes received so far for the next request.
#[derive(Debug, Clone, PartialEq)]
pub enum Framing {
    /// The head is not complete yet: read more.
    Partial,
    /// The head is complete.
    Head(RequestHead),
    /// The request is unacceptable: send this response and close the connection.
    Reject(ApiResponse),
}

/// Parses the head of the request at the start of `buf`; a body over `max_body` bytes is
/// refused with 400, as Firecracker refuses it.
pub fn parse_head(buf: &[u8], max_body: usize) -> Framing {
    let too_large = || {
        Framing::Reject(ApiResponse::bad_request(format!(
            "Request header section is larger than {MAX_HEADER_SIZE} bytes"
        )))
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let header_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEADER_SIZE {
                too_large()
            } else {
                Framing::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Framing::Reject(ApiResponse::bad_request(format!(
                "Request has more than {MAX_HEADERS} headers"
            )))
        }
        Err(e) => {
            return Framing::Reject(ApiResponse::bad_request(format!(
                "Invalid HTTP request: {e}"
            )))
        }
    };
    if header_len > MAX_HEADER_SIZE {
        return too_large();
    }
    let method = request.method.unwrap_or_default().to_string();
    let path = request.path.unwrap_or_default().to_string();
    // httparse reports the minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    let http11 = request.version == Some(1);

    let mut content_length: Option<usize> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for header in request.headers.iter() {
        let name = header.name;
        let value = match std::str::from_utf8(header.value) {
            Ok(v) => v.trim(),
            Err(_) => {
                return Framing::Reject(ApiResponse::bad_request(format!(
                    "Header {name} is not valid UTF-8"
                )))
            }
        };
        if name.eq_ignore_ascii_case("content-length") {
            let len = match parse_content_length(value) {
                Some(len) => len,
                None => {
                    return Framing::Reject(ApiResponse::bad_request(format!(
                        "Invalid Content-Length: {value}"
                    )))
                }
            };
            if content_length.is_some_and(|old| old != len) {
                return Framing::Reject(ApiResponse::bad_request(
                    "Conflicting Content-Length headers",
                ));
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Framing::Reject(ApiResponse::bad_request(
                "Transfer-Encoding is not supported; send the body with Content-Length",
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > max_body {
        // Firecracker's status and words (micro_http).
        return Framing::Reject(ApiResponse::bad_request(format!(
            "Request payload with size {content_length} is larger than the limit of {max_body} \
             allowed by server."
        )));
    }
    Framing::Head(RequestHead {
        method,
        path,
        keep_alive: !close && (http11 || keep_alive_token),
        content_length,
        expect_continue,
        header_len,
    })
}

/// Content-Length is one or more decimal digits (RFC 9110); anything else is refused.
fn parse_content_length(value: &str) -> Option<usize> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Too many digits for usize is certainly over the body limit.
    Some(value.parse::<usize>().unwrap_or(usize::MAX))
}

/// The reason phrase for the status codes the API uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The full bytes of the response to send; `keep_alive` selects the `Connection` header.
pub fn response_bytes(response: &ApiResponse, keep_alive: bool) -> Vec<u8> {
    let status = response.status();
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: cairn API\r\nConnection: {connection}\r\n",
        reason_phrase(status)
    );
    match response.body() {
        // 204 carries neither a body nor a Content-Length (RFC 9110 8.6).
        None => {
            out.push_str("\r\n");
            out.into_bytes()
        }
        Some(body) => {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ));
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&body);
            bytes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        match parse_head(raw.as_bytes(), MAX_BODY_SIZE) {
            Framing::Head(h) => h,
            other => panic!("{raw:?} -> {other:?}"),
        }
    }

    fn rejected(raw: &[u8]) -> ApiResponse {
        match parse_head(raw, MAX_BODY_SIZE) {
            Framing::Reject(r) => r,
            other => panic!("{raw:?} -> {other:?}"),
        }
    }

    #[test]
    fn complete_heads() {
        let h =
            head("PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Length: 12\r\n\r\n{}");
        assert_eq!(h.method, "PUT");
        assert_eq!(h.path, "/machine-config");
        assert!(h.keep_alive);
        assert_eq!(h.content_length, 12);
        assert_eq!(h.header_len, 69);
        assert!(!h.expect_continue);
        let h = head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert!(!h.keep_alive);
        assert_eq!(h.content_length, 0);
        let h = head("GET / HTTP/1.0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = head("PUT /x HTTP/1.1\r\nExpect: 100-continue\r\ncontent-length: 2000\r\n\r\n");
        assert!(h.expect_continue);
        assert_eq!(h.content_length, 2000);
        // Bare LF line endings are tolerated by httparse.
        let h = head("GET /vm/config HTTP/1.1\nHost: x\n\n");
        assert_eq!(h.path, "/vm/config");
    }

    #[test]
    fn partial_heads() {
        for raw in [
            "",
            "GET",
            "GET / HTTP/1.1\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n",
        ] {
            assert_eq!(
                parse_head(raw.as_bytes(), MAX_BODY_SIZE),
                Framing::Partial,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn framing_errors() {
        assert_eq!(rejected(b"\x00\x01\x02garbage\r\n\r\n").status(), 400);
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").status(),
            400
        );
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n").status(),
            400
        );
        assert_eq!(
            rejected(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").status(),
            400
        );
        assert_eq!(
            rejected(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").status(),
            400
        );
        let big = rejected(b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");
        assert_eq!(big.status(), 400);
        let big = rejected(
            format!(
                "PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                MAX_BODY_SIZE + 1
            )
            .as_bytes(),
        );
        assert_eq!(big.status(), 400);
        let small = b"PUT / HTTP/1.1\r\nContent-Length: 101\r\n\r\n";
        assert!(matches!(
            parse_head(small, 100),
            Framing::Reject(ApiResponse::Error { status: 400, .. })
        ));
        let ok = format!("PUT / HTTP/1.1\r\nContent-Length: {MAX_BODY_SIZE}\r\n\r\n");
        assert!(matches!(
            parse_head(ok.as_bytes(), MAX_BODY_SIZE),
            Framing::Head(_)
        ));

        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(rejected(many.as_bytes()).status(), 400);

        let long = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(MAX_HEADER_SIZE));
        assert_eq!(rejected(long.as_bytes()).status(), 400);
        let long = format!(
            "GET / HTTP/1.1\r\nX-Long: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_SIZE)
        );
        assert_eq!(rejected(long.as_bytes()).status(), 400);
    }

    #[test]
    fn responses() {
        let bytes = response_bytes(&ApiResponse::Empty, true);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "HTTP/1.1 204 No Content\r\nServer: cairn API\r\nConnection: keep-alive\r\n\r\n"
        );
        let bytes = response_bytes(&ApiResponse::bad_request("no \"way\""), false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        let body = r#"{"fault_message":"no \"way\""}"#;
        assert!(
            text.ends_with(&format!("Content-Length: {}\r\n\r\n{body}", body.len())),
            "{text}"
        );
        let text = String::from_utf8(response_bytes(
            &ApiResponse::Json(serde_json::json!({"a": 1})),
            true,
        ))
        .unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(
            text.ends_with("Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}")
        );
    }
}
