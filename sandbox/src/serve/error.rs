//! JSON errors and the extractors whose rejections become JSON errors: every failure the API
//! answers is `{"error": MESSAGE, "code": CODE}` with a 4xx or 5xx status.

use super::http::{MAX_BODY, MAX_JSON};
use super::ops::OpsError;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Query, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
pub(super) struct ErrorBody<'a> {
    pub(super) error: &'a str,
    pub(super) code: &'a str,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// The error's message.
    pub(super) fn message(&self) -> &str {
        &self.message
    }

    pub(super) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(super) fn rejected(status: StatusCode, text: String) -> ApiError {
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_request",
        };
        ApiError::new(status, code, text)
    }
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> ApiError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.code(), cairn_agent::error_text(&e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
            code: self.code,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// A JSON body whose rejections (syntax, unknown fields, size) are JSON errors.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(e @ JsonRejection::BytesRejection(_)) => Err(ApiError::rejected(
                e.status(),
                format!("request body: {} (limit {MAX_JSON} bytes)", e.body_text()),
            )),
            Err(e) => Err(ApiError::rejected(e.status(), e.body_text())),
        }
    }
}

/// A JSON body that may be empty (then `T::default()`).
pub struct OptJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(b) = RawBody::from_request(req, state).await?;
        if b.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptJson(T::default()));
        }
        serde_json::from_slice(&b)
            .map(OptJson)
            .map_err(|e| ApiError::bad(format!("request body: {e}")))
    }
}

/// A raw body whose rejections are JSON errors.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e: BytesRejection| {
                ApiError::rejected(
                    e.status(),
                    format!("request body: {} (limits: {MAX_JSON} bytes of JSON, {MAX_BODY} of file data)", e.body_text()),
                )
            })
    }
}

/// Query parameters whose rejections are JSON errors.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e: QueryRejection| ApiError::rejected(e.status(), e.body_text()))
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OpsError> + Send + 'static,
) -> Result<T, ApiError> {
    blocking_as(f, ApiError::from).await
}

/// Runs `f` on the blocking pool; its error becomes an API error through `map`.
pub(super) async fn blocking_as<T: Send + 'static, E: Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
    map: impl FnOnce(E) -> ApiError,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(map),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("worker failed: {e}"),
        )),
    }
}
