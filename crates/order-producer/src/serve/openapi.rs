//! The front door's OpenAPI 3.1 document, derived by `utoipa` from the
//! types of `api.rs` and the `#[utoipa::path]` of each handler, so it cannot
//! drift from the code. Served at `GET /openapi.json`, printed by
//! `order-producer openapi`, checked in as `docs/openapi.json` (a test
//! compares the three and checks that every status it lists is produced).
//!
//! Listed per operation: the statuses the tests produce. Rarer failures
//! (500 `INTERNAL`; 503 `UNAVAILABLE` when the database is down; 504
//! `WECHATPAY_UNAVAILABLE` when WeChat Pay times out; 405
//! `METHOD_NOT_ALLOWED`) answer the same error body, under `default`.

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::api;
use super::ApiError;

/// The document's root: every route, schema and the bearer scheme.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "order-timeout front door",
        description = "The shop's API (`/v1/`, bearer token), WeChat Pay's notifications \
                       (signed by WeChat Pay) and the probes of `order-producer serve`. \
                       Every error answers JSON: `{\"code\",\"message\",\"field\"?}` \
                       (notifications: `{\"code\":\"FAIL\",\"message\"}`)."
    ),
    paths(
        super::shop::create,
        super::shop::show,
        super::shop::native_prepay,
        super::notify::transaction,
        super::notify::refund,
        healthz,
        readyz,
        openapi_json,
    ),
    components(schemas(ApiError, api::NotifyFailure)),
    modifiers(&BearerAuth),
    tags(
        (name = "shop", description = "The shop's API, behind `Authorization: Bearer <API token>`"),
        (name = "wechatpay", description = "WeChat Pay's notifications, behind WeChat Pay's signature"),
        (name = "probes", description = "Liveness, readiness and this document: no token"),
    )
)]
pub struct ApiDoc;

/// The `bearer` scheme the shop's routes name.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The API token of API_TOKEN_FILE: `Authorization: Bearer <token>`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document, pretty-printed with a final newline: what `GET
/// /openapi.json` answers and `docs/openapi.json` holds.
#[must_use]
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    responses((status = 200, description = "alive", body = api::Health))
)]
#[allow(dead_code)] // documentation only: `service::telemetry::probes` serves it
fn healthz() {}

/// Readiness: the database answers a query and the broker a connection.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    responses(
        (status = 200, description = "both ok", body = api::Readiness),
        (status = 503, description = "a dependency is unreachable (or the checks timed out: `{\"status\":\"checks timed out\"}`)", body = api::Readiness),
    )
)]
#[allow(dead_code)] // documentation only: `service::telemetry::probes` serves it
fn readyz() {}

/// This document. No token: it holds no secret, only the shape of the API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "probes",
    responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub(super) async fn openapi_json() -> axum::response::Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}
