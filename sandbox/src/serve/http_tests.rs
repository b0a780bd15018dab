//! The router without a guest: authentication, bad input and the OpenAPI document.

use super::*;
use axum::http::Method;
use tower::ServiceExt;

const TOKEN: &str = "t0k3n";

fn app(listener: Listener) -> (tempfile::TempDir, Home, Router) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path()).unwrap();
    let r = router(AppState::new(home.clone(), TOKEN.into()), listener);
    (dir, home, r)
}

async fn call(
    r: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = r
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, v)
}

fn is_json_error(v: &serde_json::Value) -> bool {
    v["error"].is_string() && v["code"].is_string()
}

#[tokio::test]
async fn tcp_needs_the_token_and_nothing_runs_without_it() {
    let (_d, home, r) = app(Listener::Tcp);
    let create = r#"{"name":"x"}"#;
    for token in [None, Some("wrong"), Some("")] {
        let (st, v) = call(&r, Method::POST, "/v1/sandboxes", token, create).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(v["code"], "unauthorized");
        let (st, _) = call(&r, Method::GET, "/v1/sandboxes", token, "").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
    }
    assert!(home.registry().unwrap().list().unwrap().is_empty());
    assert!(!home.paths("x").dir.exists(), "nothing was created");
    let (st, v) = call(&r, Method::GET, "/v1/sandboxes", Some(TOKEN), "").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v, serde_json::json!([]));
    // The document itself is public.
    let (st, _) = call(&r, Method::GET, "/v1/openapi.json", None, "").await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn the_unix_socket_lets_in_no_token_but_not_a_wrong_one() {
    let (_d, _h, r) = app(Listener::Unix);
    assert_eq!(
        call(&r, Method::GET, "/v1/health", None, "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&r, Method::GET, "/v1/health", Some(TOKEN), "").await.0,
        StatusCode::OK
    );
    let (st, v) = call(&r, Method::GET, "/v1/health", Some("nope"), "").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(is_json_error(&v));
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx() {
    let (_d, _h, r) = app(Listener::Unix);
    let cases: Vec<(Method, String, Body, StatusCode)> = vec![
        // Unknown fields.
        (
            Method::POST,
            "/v1/sandboxes".into(),
            r#"{"name":"a","colour":"red"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/v1/sandboxes/a/exec".into(),
            r#"{"command":"true","sudo":true}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/v1/sandboxes/a/fork".into(),
            r#"{"checkpoint":"c","new_name":"b","x":1}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/v1/sandboxes/a/start".into(),
            r#"{"warm":true}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        // Not JSON.
        (
            Method::POST,
            "/v1/sandboxes".into(),
            "{".into(),
            StatusCode::BAD_REQUEST,
        ),
        // Oversized bodies.
        (
            Method::POST,
            "/v1/sandboxes/a/exec".into(),
            vec![b' '; MAX_JSON + 1].into(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::PUT,
            "/v1/sandboxes/a/files?path=/tmp/x".into(),
            vec![0u8; MAX_BODY + 1].into(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        // `..` and relative paths.
        (
            Method::GET,
            "/v1/sandboxes/a/files?path=/etc/../root/x".into(),
            Body::empty(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/v1/sandboxes/a/files?path=/tmp/../../x".into(),
            "x".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/sandboxes/a/files/list?path=tmp".into(),
            Body::empty(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::DELETE,
            "/v1/sandboxes/a/files?path=/a/..".into(),
            Body::empty(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/sandboxes/a/tree?path=/..".into(),
            Body::empty(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/sandboxes/a/files?path=/x&bogus=1".into(),
            Body::empty(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/v1/sandboxes/a/files".into(),
            Body::empty(),
            StatusCode::BAD_REQUEST,
        ),
        // Bad exec shapes.
        (
            Method::POST,
            "/v1/sandboxes/a/exec".into(),
            r#"{}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/sandboxes/a/exec".into(),
            r#"{"command":"x","argv":["y"]}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/sandboxes/a/exec".into(),
            r#"{"argv":[]}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/sandboxes/a/exec".into(),
            r#"{"command":"x","stdin_b64":"!!"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        // Bad names.
        (
            Method::POST,
            "/v1/sandboxes".into(),
            r#"{"name":"../x"}"#.into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/sandboxes/a/checkpoints/..%2Fx/restore".into(),
            Body::empty(),
            StatusCode::BAD_REQUEST,
        ),
        // Missing things.
        (
            Method::POST,
            "/v1/sandboxes".into(),
            r#"{"name":"ok","image":"ubuntu","cold":true,"boot_timeout":60}"#.into(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/sandboxes/nope".into(),
            Body::empty(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/v1/sandboxes/nope/exec".into(),
            r#"{"command":"true"}"#.into(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/v1/sandboxes/nope/checkpoints".into(),
            Body::empty(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/nothing".into(),
            Body::empty(),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, uri, body, want) in cases {
        let (st, v) = call(&r, method.clone(), &uri, None, body).await;
        assert_eq!(st, want, "{method} {uri}: {v}");
        assert!(is_json_error(&v), "{method} {uri}: {v}");
    }
}

/// Every operation the document lists is routed, and every method a documented path answers
/// is documented.
#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let (_d, _h, r) = app(Listener::Unix);
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 14);
    for (path, ops) in paths {
        let uri = path
            .replace("{name}", "nope")
            .replace("{ckpt}", "c")
            .replace("{id}", "1");
        let uri = if uri.contains("/files") || uri.ends_with("/tree") {
            format!("{uri}?path=/x")
        } else {
            uri
        };
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            let documented = ops.get(method.as_str().to_lowercase()).is_some();
            let (st, v) = call(&r, method.clone(), &uri, None, Body::empty()).await;
            let routed = st != StatusCode::METHOD_NOT_ALLOWED
                && !(st == StatusCode::NOT_FOUND
                    && v["error"].as_str().unwrap_or("").contains("no such route"));
            assert_eq!(documented, routed, "{method} {path}: {st} {v}");
        }
    }
}

#[test]
fn the_served_document_is_the_one_in_docs() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    assert_eq!(std::fs::read_to_string(docs).unwrap(), OPENAPI);
}
