//! Fuzz the VMM's REST request parsing: the HTTP framing (`parse_head`) and the router
//! (`route`: method, path and JSON body into an `ApiRequest`). Neither may panic, and every
//! refusal must render as a response.
#![no_main]

use cairn_vmm::api::http::{parse_head, response_bytes, Framing};
use cairn_vmm::api::routes::route;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_head(data, 64 << 10) {
        Framing::Head(h) => {
            let start = h.header_len.min(data.len());
            let end = h.header_len.saturating_add(h.content_length).min(data.len());
            if let Err(resp) = route(&h.method, &h.path, &data[start..end]) {
                let _ = response_bytes(&resp, h.keep_alive);
            }
        }
        Framing::Reject(resp) => {
            let _ = response_bytes(&resp, false);
        }
        Framing::Partial => {}
    }
    // The router alone, so the fuzzer need not forge a well-formed head to reach bodies:
    // "<method> <path>\n<body>".
    if let Some(nl) = data.iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&data[..nl]);
        let (method, path) = line.split_once(' ').unwrap_or(("PUT", &line));
        if let Err(resp) = route(method, path, &data[nl + 1..]) {
            let _ = response_bytes(&resp, true);
        }
    }
});
