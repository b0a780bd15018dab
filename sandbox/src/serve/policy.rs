//! `/v1/sandboxes/{name}/policy` (GET shows the network and egress policy, PUT replaces the
//! policy, live) and `/v1/policy/presets`: the calls `cairn policy` makes
//! ([`crate::net::policy_ops`]).

use super::error::{blocking_as, ApiError, JsonBody};
use super::http::AppState;
use super::ops::OpsError;
use crate::net::policy_ops::{self, PolicyChange};
use crate::net::NetError;
use crate::sandbox::SandboxError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The routes, merged into the `/v1` router (behind its authentication).
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/policy/presets", get(presets))
        .route("/v1/sandboxes/{name}/policy", get(show).put(set))
}

/// Policy errors: bad input is a 400, a sandbox without a network (or one made without root,
/// or a server not running as root) a 409; the rest as every other route maps them.
fn policy_err(e: SandboxError) -> ApiError {
    let status = match &e {
        SandboxError::Net(NetError::BadPattern(_) | NetError::BadPreset(_)) => {
            StatusCode::BAD_REQUEST
        }
        SandboxError::Net(
            NetError::NoNetwork(_) | NetError::RootlessPolicy(_) | NetError::NeedsRoot(_),
        ) => StatusCode::CONFLICT,
        _ => return OpsError::from(e).into(),
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        _ => "conflict",
    };
    ApiError::new(status, code, cairn_agent::error_text(&e))
}

async fn presets() -> Response {
    axum::Json(policy_ops::presets()).into_response()
}

async fn show(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let home = s.home().clone();
    let v = blocking_as(move || policy_ops::show(&home, &name), policy_err).await?;
    Ok(axum::Json(v).into_response())
}

async fn set(
    State(s): State<AppState>,
    Path(name): Path<String>,
    JsonBody(change): JsonBody<PolicyChange>,
) -> Result<Response, ApiError> {
    let home = s.home().clone();
    let v = blocking_as(
        move || {
            policy_ops::set(&home, &name, &change)?;
            policy_ops::show(&home, &name)
        },
        policy_err,
    )
    .await?;
    Ok(axum::Json(v).into_response())
}

#[cfg(test)]
mod tests {
    use crate::sandbox::Home;
    use crate::serve::{router, AppState, Listener};
    use axum::body::Body;
    use axum::http::{header, Method, Request, StatusCode};
    use tower::ServiceExt;

    async fn call(method: Method, uri: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path()).unwrap();
        let r = router(AppState::new(home, "t".into()), Listener::Unix);
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = r.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn the_policy_routes_check_their_input() {
        let (st, v) = call(Method::GET, "/v1/policy/presets", "").await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(v[2]["name"], "dev", "{v}");
        let (st, v) = call(Method::GET, "/v1/sandboxes/nope/policy", "").await;
        assert_eq!(
            (st, v["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found"))
        );
        let (st, v) = call(Method::PUT, "/v1/sandboxes/nope/policy", "{}").await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
        let (st, v) = call(Method::PUT, "/v1/sandboxes/nope/policy", r#"{"oops":1}"#).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(v["error"].is_string());
    }
}
