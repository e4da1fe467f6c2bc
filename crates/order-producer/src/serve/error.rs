//! The one error type of the shop API: a status, a stable machine-readable
//! code, a message for a person, and the offending field when there is one.
//! Rendered as `{"code","message","field"?}`; it never carries a secret.
//!
//! [`json_errors`] makes the answers of the layers and of axum itself (413
//! from the body limit, 408 from the timeout, 405 for a wrong method, a
//! body that cannot be read) the same JSON, so every error of the API has a
//! `code`.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::StoreError;
use serde::Serialize;

/// Every error of the API answers this body (notifications excepted:
/// `{"code":"FAIL","message"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    #[schema(ignore)]
    pub status: StatusCode,
    /// Stable and machine-readable: `INVALID_FIELD`, `INVALID_REQUEST`,
    /// `UNAUTHORIZED`, `NOT_FOUND`, `METHOD_NOT_ALLOWED`, `REQUEST_TIMEOUT`,
    /// `BODY_TOO_LARGE`, `UNKNOWN_SKU`, `INSUFFICIENT_STOCK`,
    /// `SKU_NOT_FOR_SALE`, `IDEMPOTENCY_KEY_REUSED`, `ORDER_NOT_FOUND`,
    /// `ORDER_NOT_PENDING`, `DEADLINE_PASSED`, `ORDER_PAID`,
    /// `ORDER_CLOSED_AT_WECHATPAY`, `WECHATPAY_REFUSED`,
    /// `WECHATPAY_UNAVAILABLE`, `UNAVAILABLE`, `INTERNAL`.
    #[schema(value_type = String, example = "INVALID_FIELD")]
    pub code: &'static str,
    /// For a person: what is wrong and what to do.
    pub message: String,
    /// The refused field by its JSON path (`items[1].quantity`), a header
    /// (`Idempotency-Key`) or `body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    #[must_use]
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 400 naming the field that is malformed or out of range.
    #[must_use]
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_FIELD",
            message: format!("{field}: {}", message.into()),
            field: Some(field),
        }
    }

    #[must_use]
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }

    /// A store failure: the buyer's mistakes get their 4xx, the rest 503
    /// (transient: try again) or 500, with the detail in the log only.
    #[must_use]
    pub fn from_store(e: &StoreError) -> Self {
        match e {
            StoreError::UnknownSku(sku) => Self {
                status: StatusCode::NOT_FOUND,
                code: "UNKNOWN_SKU",
                message: format!("unknown SKU {sku}"),
                field: Some("items".into()),
            },
            StoreError::InsufficientStock {
                sku,
                requested,
                available,
            } => Self {
                status: StatusCode::CONFLICT,
                code: "INSUFFICIENT_STOCK",
                message: format!(
                    "insufficient stock for SKU {sku}: {requested} requested, {available} available"
                ),
                field: Some("items".into()),
            },
            StoreError::NotForSale(sku) => Self {
                status: StatusCode::CONFLICT,
                code: "SKU_NOT_FOR_SALE",
                message: format!("SKU {sku} is not for sale: it has no price"),
                field: Some("items".into()),
            },
            StoreError::EmptyOrder => Self::field("items", "an order needs at least one item"),
            StoreError::QuantityTooLarge(sku) => {
                Self::field("items", format!("quantity for SKU {sku} is too large"))
            }
            StoreError::TotalTooLarge => Self::field("items", "the order total is too large"),
            StoreError::InvalidWindow(_) => {
                Self::field("payment_window", "out of range (at most 366 days)")
            }
            StoreError::IdempotencyKeyReused(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was already used with another request",
            ),
            e if e.is_transient() => {
                log::warn!("database unavailable: {e}");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "the database is unavailable; try again",
                )
            }
            e => {
                log::error!("database error: {e}");
                Self::internal("the request failed; see the server log")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

/// Replaces the body of any 4xx/5xx answer that is not JSON (the limit
/// layers', axum's method router's and extractors' plain-text ones) with an
/// [`ApiError`] body; status and other headers (`Allow` on a 405) stay.
/// `max_body_bytes` is the body limit the 413 names.
pub(crate) async fn json_errors(
    State(max_body_bytes): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "BODY_TOO_LARGE",
            format!("the request body is larger than {max_body_bytes} bytes (API_MAX_BODY_BYTES)"),
        ),
        StatusCode::REQUEST_TIMEOUT => ApiError::new(
            status,
            "REQUEST_TIMEOUT",
            "the request was not received in time (API_REQUEST_TIMEOUT); send it again",
        ),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "METHOD_NOT_ALLOWED",
            "this route does not take this method (see the Allow header)",
        ),
        StatusCode::NOT_FOUND => ApiError::new(status, "NOT_FOUND", "no such route"),
        s if s.is_server_error() => {
            ApiError::new(s, "INTERNAL", "the request failed; see the server log")
        }
        s => ApiError::new(s, "INVALID_REQUEST", "the request could not be read"),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut answer = error.into_response();
    for (name, value) in &parts.headers {
        answer.headers_mut().entry(name).or_insert(value.clone());
    }
    answer
}
