//! The VMM's REST API, through cairn-vmm-api's typed [`Client`]: the sandbox builds no JSON
//! for the VMM and reads none by hand.

use std::path::Path;
use std::time::Duration;

pub use cairn_vmm_api::{Client, ClientError as ApiError};

/// A client of the VMM API on `sock` whose calls may take up to `timeout`.
pub fn client(sock: &Path, timeout: Duration) -> Client {
    Client::new(sock).with_timeout(timeout)
}

/// Does anything accept connections on `sock`?
pub fn answers(sock: &Path) -> bool {
    Client::new(sock).answers()
}

/// Sends one request with a JSON body; returns the body of a 2xx answer, or
/// [`ApiError::Refused`]. Prefer [`Client`]'s typed methods; this is kept for calls it has no
/// method for.
pub fn request(
    sock: &Path,
    method: &str,
    url: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<String, ApiError> {
    let body = body.map(|b| b.to_string());
    let reply = client(sock, timeout).send(method, url, body.as_deref().map(str::as_bytes))?;
    if (200..300).contains(&reply.status) {
        return Ok(reply.text());
    }
    let message = match serde_json::from_slice::<cairn_vmm_api::Fault>(&reply.body) {
        Ok(fault) => fault.fault_message,
        Err(_) => reply.text(),
    };
    Err(ApiError::Refused {
        method: method.to_string(),
        path: url.to_string(),
        status: reply.status,
        message,
    })
}
