//! The guest's side of MMDS: one HTTP request in, one response out, with Firecracker's rules.
//!
//! - `GET path`: the value at `path` as IMDS text, or as JSON with `Accept: application/json`
//!   (unless EC2 IMDS compatibility is on). V2 needs a valid `X-metadata-token` (or
//!   `X-aws-ec2-metadata-token`); V1 takes one but does not need it.
//! - `PUT /latest/api/token` with `X-metadata-token-ttl-seconds` (or
//!   `X-aws-ec2-metadata-token-ttl-seconds`), 1 to 21600: a session token. Refused with
//!   `X-Forwarded-For` (a request relayed from outside the guest).
//! - Anything else: 405 with `Allow: GET, PUT`.
//!
//! Error bodies are plain text, with Firecracker's messages.

use std::sync::Mutex;

use super::data_store::{Mmds, MmdsError, MmdsVersion, OutputFormat};
use super::token::PATH_TO_TOKEN;

const TOKEN_HEADERS: [&str; 2] = ["x-metadata-token", "x-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "x-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token-ttl-seconds",
];
const MAX_HEADERS: usize = 32;

/// One HTTP response, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `HTTP/1.0` or `HTTP/1.1`, as the request.
    pub version: &'static str,
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    fn new(version: &'static str, status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            version,
            status,
            content_type: "text/plain",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The response as bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} {}\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n",
            self.version,
            self.status,
            reason(self.status)
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
            self.content_type,
            self.body.len()
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        501 => "Not Implemented",
        _ => "",
    }
}

/// Where an HTTP request ends in `buf`: just past its blank line (`\r\n\r\n` or `\n\n`).
pub fn request_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1..i + 3) == Some(b"\r\n") {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// The path of a request target: `http://host/a/b` and `/a/b` both give `/a/b`.
fn abs_path(target: &str) -> &str {
    match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => rest.find('/').map_or("", |i| &rest[i..]),
        None => target,
    }
}

/// Collapse runs of `/` into one, so the path is a JSON pointer.
fn sanitize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Answer one complete request (the bytes up to and including its blank line).
pub fn respond(mmds: &Mutex<Mmds>, request: &[u8]) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(request) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Response::new("HTTP/1.1", 400, "Invalid request.");
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Response::new("HTTP/1.1", 400, "Invalid request: too many headers.");
        }
        Err(httparse::Error::Version) => {
            return Response::new("HTTP/1.1", 501, "Unsupported HTTP version.");
        }
        Err(e) => return Response::new("HTTP/1.1", 400, format!("Invalid request: {e}.")),
    }
    let version = if req.version == Some(0) {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Response::new(version, 400, "Invalid request.");
    };
    let uri = abs_path(target);
    if uri.is_empty() {
        return Response::new(version, 400, "Invalid URI.");
    }
    let header = |names: &[&str]| -> Option<(String, String)> {
        req.headers.iter().find_map(|h| {
            names
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n))
                .then(|| {
                    let value = String::from_utf8_lossy(h.value).trim().to_string();
                    (h.name.to_string(), value)
                })
        })
    };
    let mut mmds = mmds.lock().unwrap_or_else(|p| p.into_inner());
    match method {
        "GET" => {
            let token = header(&TOKEN_HEADERS).map(|(_, v)| v);
            let valid = mmds.check_request_token(token.as_deref());
            if mmds.version() == MmdsVersion::V2 && !valid {
                return match token {
                    None => Response::new(
                        version,
                        401,
                        "No MMDS token provided. Use `X-metadata-token` or \
                         `X-aws-ec2-metadata-token` header to specify the session token.",
                    ),
                    Some(_) => Response::new(version, 401, "MMDS token not valid."),
                };
            }
            let json = header(&["accept"])
                .is_some_and(|(_, v)| v.eq_ignore_ascii_case("application/json"));
            let format = if json {
                OutputFormat::Json
            } else {
                OutputFormat::Imds
            };
            let mut response = match mmds.get_value(&sanitize(uri), format) {
                Ok(body) => Response::new(version, 200, body),
                Err(MmdsError::NotFound) => {
                    return Response::new(version, 404, format!("Resource not found: {uri}."))
                }
                Err(e @ MmdsError::UnsupportedValueType) => {
                    return Response::new(version, 501, e.to_string())
                }
                Err(e) => return Response::new(version, 400, e.to_string()),
            };
            if json {
                response.content_type = "application/json";
            }
            response
        }
        "PUT" => {
            if let Some((name, _)) = header(&["x-forwarded-for"]) {
                return Response::new(
                    version,
                    400,
                    format!("Invalid header. Reason: Unsupported header name. Key: {name}"),
                );
            }
            if sanitize(uri) != PATH_TO_TOKEN {
                return Response::new(version, 404, format!("Resource not found: {uri}."));
            }
            let Some((name, value)) = header(&TTL_HEADERS) else {
                return Response::new(
                    version,
                    400,
                    "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or \
                     `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's \
                     lifetime.",
                );
            };
            let Ok(ttl) = value.parse::<u32>() else {
                return Response::new(
                    version,
                    400,
                    format!("Invalid header. Reason: Invalid value. Key:{name}; Value:{value}"),
                );
            };
            match mmds.generate_token(ttl) {
                Ok(token) => {
                    let mut response = Response::new(version, 200, token);
                    response.headers.push((name, ttl.to_string()));
                    response
                }
                Err(e) => Response::new(version, 400, e.to_string()),
            }
        }
        _ => {
            let mut response = Response::new(version, 405, "Not allowed HTTP method.");
            response.headers.push(("Allow".into(), "GET, PUT".into()));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn store(version: MmdsVersion) -> Mutex<Mmds> {
        let mut m = Mmds::new(51200).unwrap();
        m.put_data(json!({
            "latest": {"meta-data": {"ami-id": "ami-1", "n": 3}},
            "age": 43
        }))
        .unwrap();
        m.set_version(version);
        Mutex::new(m)
    }

    fn ask(m: &Mutex<Mmds>, req: &str) -> Response {
        respond(m, req.as_bytes())
    }

    fn token(m: &Mutex<Mmds>, ttl: &str) -> String {
        let r = ask(
            m,
            &format!(
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: {ttl}\r\n\r\n"
            ),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.headers,
            vec![("X-metadata-token-ttl-seconds".into(), ttl.to_string())]
        );
        String::from_utf8(r.body).unwrap()
    }

    #[test]
    fn v1_get_in_imds_text_and_json() {
        let m = store(MmdsVersion::V1);
        let r = ask(&m, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ami-1"[..]));
        assert_eq!(r.content_type, "text/plain");
        let r = ask(
            &m,
            "GET http://169.254.169.254//latest//meta-data HTTP/1.0\n\n",
        );
        assert_eq!(r.version, "HTTP/1.0");
        assert_eq!(r.body, b"ami-id\nn");
        let r = ask(
            &m,
            "GET /latest HTTP/1.1\r\nAccept: application/json\r\n\r\n",
        );
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.body, br#"{"meta-data":{"ami-id":"ami-1","n":3}}"#);
        let r = ask(&m, "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n");
        assert_eq!(r.body, b"age\nlatest/");
        // V1 takes a token, even a bad one.
        let r = ask(&m, "GET /age HTTP/1.1\r\nX-metadata-token: junk\r\n\r\n");
        assert_eq!(r.status, 501);
        let r = ask(&m, "GET /nope HTTP/1.1\r\n\r\n");
        assert_eq!(r.status, 404);
        // Counted as Firecracker counts them, also in V1.
        assert_eq!(m.lock().unwrap().token_counts(), (5, 1));
        assert_eq!(r.body, b"Resource not found: /nope.");
        // V1 also hands out tokens.
        assert!(!token(&m, "60").is_empty());
    }

    #[test]
    fn v2_needs_a_valid_token() {
        let m = store(MmdsVersion::V2);
        let r = ask(&m, "GET /latest HTTP/1.1\r\n\r\n");
        assert_eq!(r.status, 401);
        assert!(String::from_utf8_lossy(&r.body).starts_with("No MMDS token provided."));
        let r = ask(&m, "GET /latest HTTP/1.1\r\nX-metadata-token: nope\r\n\r\n");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (401, &b"MMDS token not valid."[..])
        );
        let t = token(&m, "21600");
        let r = ask(
            &m,
            &format!(
                "GET /latest/meta-data/ami-id HTTP/1.1\r\nx-aws-ec2-metadata-token: {t}\r\n\r\n"
            ),
        );
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ami-1"[..]));
    }

    #[test]
    fn token_requests_are_checked() {
        let m = store(MmdsVersion::V2);
        for (req, status, body) in [
            ("PUT /latest/api/token HTTP/1.1\r\n\r\n", 400, "Token time to live value not found."),
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n",
                400,
                "Invalid time to live value provided for token: 0.",
            ),
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 21601\r\n\r\n",
                400,
                "Invalid time to live value provided for token: 21601.",
            ),
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: -1\r\n\r\n",
                400,
                "Invalid header. Reason: Invalid value. Key:X-metadata-token-ttl-seconds; Value:-1",
            ),
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n",
                400,
                "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For",
            ),
            ("PUT /latest HTTP/1.1\r\n\r\n", 404, "Resource not found: /latest."),
            ("PATCH /latest HTTP/1.1\r\n\r\n", 405, "Not allowed HTTP method."),
            ("GET http://x HTTP/1.1\r\n\r\n", 400, "Invalid URI."),
            ("garbage\r\n\r\n", 400, "Invalid request"),
            ("GET / HTTP/2.0\r\n\r\n", 501, "Unsupported HTTP version."),
        ] {
            let r = ask(&m, req);
            let text = String::from_utf8_lossy(&r.body);
            assert_eq!(r.status, status, "{req:?}: {text}");
            assert!(text.starts_with(body), "{req:?}: {text}");
        }
        let r = ask(&m, "DELETE / HTTP/1.1\r\n\r\n");
        assert_eq!(r.headers, vec![("Allow".into(), "GET, PUT".into())]);
    }

    #[test]
    fn wire_format_and_request_boundaries() {
        let r = Response::new("HTTP/1.1", 200, "hi");
        assert_eq!(
            String::from_utf8(r.to_bytes()).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\
             Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        );
        assert_eq!(request_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(request_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(request_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(request_end(b""), None);
        assert_eq!(sanitize("//a///b/"), "/a/b/");
        assert_eq!(abs_path("http://h"), "");
        assert_eq!(abs_path("/x"), "/x");
    }
}
