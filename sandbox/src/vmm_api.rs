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
