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
