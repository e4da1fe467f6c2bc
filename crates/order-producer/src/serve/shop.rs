//! The shop's API under `/v1/`, behind the bearer token: create an order
//! (idempotent with `Idempotency-Key`), read it, and create its WeChat Pay
//! Native prepay whose `time_expire` is the order's deadline.
//!
//! Requests and answers are the types of `api.rs` (the contract, from which
//! the OpenAPI document is derived); every refusal names the field
//! (`items[1].quantity`) and nothing is written on any refusal.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use domain::{IdempotencyKey, OrderLine, OrderNo, OrderStatus};
use payment_client::NativePrepay;

use super::api::{
    time, CreateOrderRequest, EventView, NativePrepayAnswer, OrderCreated, OrderItemView,
    OrderView, PaymentView, RefundView,
};
use super::{blocking, ApiError, AppState};
/// A prepay needs at least this long before the deadline: WeChat Pay
/// refuses a `time_expire` that has (nearly) passed.
pub const PREPAY_MARGIN: Duration = Duration::from_secs(5);

pub(super) fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/orders", post(create))
        .route("/v1/orders/{order_no}", get(show))
        .route(
            "/v1/orders/{order_no}/wechatpay/native",
            post(native_prepay),
        )
        .route_layer(middleware::from_fn_with_state(state, require_token))
}

/// 401 unless `Authorization: Bearer <the token>`.
async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match presented {
        presented if state.token.authorizes(presented) => next.run(request).await,
        _ => {
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "send Authorization: Bearer <API token>",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .ok()
        .filter(|s| (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::field(
                "Idempotency-Key",
                "expected 1 to 255 printable characters without spaces",
            )
        })?;
    Ok(Some(s.to_owned()))
}

/// Create an order: reserve its stock and start its payment window.
///
/// Idempotent with `Idempotency-Key`: the same key and body again answer
/// the same order (`Idempotent-Replayed: true`), another body 422.
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "shop",
    operation_id = "create_order",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable characters without spaces")),
    request_body(content = super::api::CreateOrderRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "created (or replayed)", body = OrderCreated,
            headers(("Idempotent-Replayed" = String, description = "`true` when an earlier request with this key created it"))),
        (status = 400, description = "`INVALID_FIELD`: malformed or out of range; `field` names it by its JSON path (`items[1].quantity`)", body = ApiError),
        (status = 401, description = "`UNAUTHORIZED`: no or wrong bearer token", body = ApiError),
        (status = 404, description = "`UNKNOWN_SKU` (`field`: `items`)", body = ApiError),
        (status = 408, description = "`REQUEST_TIMEOUT`: the body did not arrive within API_REQUEST_TIMEOUT", body = ApiError),
        (status = 409, description = "`INSUFFICIENT_STOCK` or `SKU_NOT_FOR_SALE` (no price) (`field`: `items`); nothing reserved", body = ApiError),
        (status = 413, description = "`BODY_TOO_LARGE`: above API_MAX_BODY_BYTES", body = ApiError),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: a `Content-Type` other than `application/json` (e.g. a form, curl's default with `-d`)", body = ApiError),
        (status = 422, description = "`IDEMPOTENCY_KEY_REUSED`: the key was used with another body", body = ApiError),
        (status = "default", description = "`INTERNAL` (500), `UNAVAILABLE` (503: the database; try again), `METHOD_NOT_ALLOWED` (405)", body = ApiError),
    )
)]
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    json_content_type(&headers)?;
    let request = CreateOrderRequest::parse(&body)?;
    let key = idempotency_key(&headers)?;
    let window = request.payment_window.map_or(state.default_window, |w| w.0);
    let lines: Vec<OrderLine> = request
        .items
        .into_iter()
        .map(|super::api::Object(i)| OrderLine {
            sku: i.sku,
            quantity: i.quantity,
        })
        .collect();
    // A window shorter than every delay queue would settle late: refused.
    state
        .topology
        .check_window(window)
        .map_err(|e| ApiError::field("payment_window", e.to_string()))?;
    let pool = state.pool.clone();
    let created = blocking(move || {
        let mut conn = domain::checkout(&pool).map_err(|e| ApiError::from_store(&e))?;
        domain::create_order_idempotent(
            &mut conn,
            &lines,
            window,
            key.as_deref().map(IdempotencyKey),
        )
        .map_err(|e| ApiError::from_store(&e))
    })
    .await?;
    if !created.replayed {
        log::info!(
            order_no:% = created.order.order_no;
            "created order {} ({}), payment deadline {}",
            created.order.order_no,
            created.order.total,
            time(created.order.deadline)
        );
    }
    let body = OrderCreated {
        order_no: created.order.order_no.to_string(),
        status: created.status.into(),
        total_fen: created.order.total.get(),
        created_at: time(created.order.created_at),
        deadline: time(created.order.deadline),
    };
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    if created.replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

fn order_no(raw: &str) -> Result<OrderNo, ApiError> {
    OrderNo::parse(raw).map_err(|e| ApiError::field("order_no", e.to_string()))
}

fn not_found(no: &OrderNo) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "ORDER_NOT_FOUND",
        format!("no order {no}"),
    )
}

/// Read an order: status, lines, payments, refunds and audit trail.
#[utoipa::path(
    get,
    path = "/v1/orders/{order_no}",
    tag = "shop",
    operation_id = "show_order",
    security(("bearer" = [])),
    params(("order_no" = String, Path, description = "the order number (6 to 32 of `0-9 a-z A-Z _ - | *`)")),
    responses(
        (status = 200, description = "the order", body = OrderView),
        (status = 400, description = "`INVALID_FIELD` (`field`: `order_no`)", body = ApiError),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiError),
        (status = 404, description = "`ORDER_NOT_FOUND`", body = ApiError),
        (status = "default", description = "`INTERNAL` (500), `UNAVAILABLE` (503), `METHOD_NOT_ALLOWED` (405)", body = ApiError),
    )
)]
pub(super) async fn show(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let no = order_no(&raw)?;
    let pool = state.pool.clone();
    blocking(move || {
        let store = |e: domain::StoreError| ApiError::from_store(&e);
        let mut conn = domain::checkout(&pool).map_err(store)?;
        let order = domain::find_order(&mut conn, &no)
            .map_err(store)?
            .ok_or_else(|| not_found(&no))?;
        let items = domain::order_items(&mut conn, &no).map_err(store)?;
        let payments = domain::payments_of(&mut conn, &no).map_err(store)?;
        let events = domain::order_events(&mut conn, &no).map_err(store)?;
        let refunds: Vec<RefundView> = domain::refunds_of(&mut conn, &no)
            .map_err(store)?
            .iter()
            .map(|r| RefundView {
                out_refund_no: r.out_refund_no.clone(),
                amount_fen: r.amount.get(),
                status: r.status.as_str().to_owned(),
                refund_id: r.refund_id.clone(),
                needs_human: r.needs_human.clone(),
                created_at: time(r.created_at),
                finished_at: r.finished_at.map(time),
            })
            .collect();
        let payments: Vec<PaymentView> = payments
            .iter()
            .map(|p| PaymentView {
                transaction_id: p.transaction_id.as_str().to_owned(),
                amount_fen: p.amount.get(),
                success_time: time(p.success_time),
                paid_after_close: p.paid_after_close,
            })
            .collect();
        let body = OrderView {
            order_no: order.order_no.to_string(),
            status: order.status.into(),
            total_fen: order.total.get(),
            created_at: time(order.created_at),
            deadline: time(order.deadline),
            paid_at: order.paid_at.map(time),
            closed_at: order.closed_at.map(time),
            close_reason: order.close_reason,
            anomaly: order.anomaly.map(|a| a.as_str().to_owned()),
            items: items
                .iter()
                .map(|i| OrderItemView {
                    sku: i.sku.to_string(),
                    quantity: i.quantity.get(),
                    unit_price_fen: i.unit_price.get(),
                })
                .collect(),
            payment: payments.first().cloned(),
            payments,
            refund: refunds.first().cloned(),
            refunds,
            events: events
                .iter()
                .map(|e| EventView {
                    kind: e.kind.clone(),
                    detail: e.detail.clone(),
                    by: e.actor.clone(),
                    at: time(e.created_at),
                })
                .collect(),
        };
        Ok(Json(body))
    })
    .await
}

/// The deadline as WeChat Pay's `time_expire`: RFC 3339 in +08:00, whole
/// seconds, rounded down so it never outlives the order.
pub(crate) fn time_expire(deadline: DateTime<Utc>) -> String {
    let beijing = FixedOffset::east_opt(8 * 3600).expect("valid offset");
    deadline
        .with_timezone(&beijing)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

fn not_pending(no: &OrderNo, status: OrderStatus) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "ORDER_NOT_PENDING",
        format!(
            "order {no} is {}: it cannot be paid any more",
            status.as_str()
        ),
    )
}

/// Create the order's WeChat Pay Native payment (a code to scan) whose
/// `time_expire` is the order's deadline. Asking again gives the same code.
#[utoipa::path(
    post,
    path = "/v1/orders/{order_no}/wechatpay/native",
    tag = "shop",
    operation_id = "native_prepay",
    security(("bearer" = [])),
    params(("order_no" = String, Path, description = "the order number")),
    responses(
        (status = 200, description = "the code to scan", body = NativePrepayAnswer),
        (status = 400, description = "`INVALID_FIELD` (`field`: `order_no`)", body = ApiError),
        (status = 401, description = "`UNAUTHORIZED`", body = ApiError),
        (status = 404, description = "`ORDER_NOT_FOUND`", body = ApiError),
        (status = 409, description = "`ORDER_NOT_PENDING`, `DEADLINE_PASSED` (less than 5 s left), `ORDER_PAID` or `ORDER_CLOSED_AT_WECHATPAY`", body = ApiError),
        (status = 502, description = "`WECHATPAY_REFUSED`: WeChat Pay refused the prepay (a configuration problem)", body = ApiError),
        (status = 503, description = "`WECHATPAY_UNAVAILABLE`: WeChat Pay did not answer usably; or `UNAVAILABLE`: the database is away; try again", body = ApiError),
        (status = "default", description = "`WECHATPAY_UNAVAILABLE` (504: WeChat Pay timed out), `INTERNAL` (500), `METHOD_NOT_ALLOWED` (405)", body = ApiError),
    )
)]
pub(super) async fn native_prepay(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<NativePrepayAnswer>, ApiError> {
    let no = order_no(&raw)?;
    let st = Arc::clone(&state);
    blocking(move || {
        let store = |e: domain::StoreError| ApiError::from_store(&e);
        let order = {
            let mut conn = domain::checkout(&st.pool).map_err(store)?;
            domain::find_order(&mut conn, &no)
                .map_err(store)?
                .ok_or_else(|| not_found(&no))?
        };
        if order.status != OrderStatus::PendingPayment {
            return Err(not_pending(&no, order.status));
        }
        let margin = chrono::Duration::from_std(PREPAY_MARGIN).expect("small duration");
        if order.deadline <= Utc::now() + margin {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "DEADLINE_PASSED",
                format!(
                    "the payment deadline of order {no} ({}) has passed",
                    time(order.deadline)
                ),
            ));
        }
        let expire = time_expire(order.deadline);
        let request = NativePrepay {
            appid: st.appid.clone(),
            description: format!("Order {no}"),
            out_trade_no: no.as_str().to_owned(),
            total_fen: order.total.get(),
            time_expire: expire.clone(),
            notify_url: st.notify_url.clone(),
        };
        let code_url = st
            .payments
            .native_prepay(&request)
            .map_err(|e| prepay_error(&no, &e))?;
        let mut conn = domain::checkout(&st.pool).map_err(store)?;
        domain::record_prepay(
            &mut conn,
            &no,
            &format!("WeChat Pay Native prepay, time_expire {expire}"),
        )
        .map_err(store)?;
        // Closed while WeChat Pay was creating the payment order: its
        // time_expire has passed by then, and the worker's recheck closes it
        // there; the buyer must not get a code to scan.
        let now = domain::find_order(&mut conn, &no)
            .map_err(store)?
            .ok_or_else(|| not_found(&no))?;
        if now.status != OrderStatus::PendingPayment {
            return Err(not_pending(&no, now.status));
        }
        Ok(Json(NativePrepayAnswer {
            code_url,
            time_expire: expire,
        }))
    })
    .await
}

/// What the shop sees when WeChat Pay refused or could not be reached.
fn prepay_error(no: &OrderNo, e: &payment_client::Error) -> ApiError {
    match e.provider_code() {
        Some("ORDERPAID") => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "ORDER_PAID",
                format!("WeChat Pay says order {no} is paid already; its status follows shortly"),
            )
        }
        Some("ORDER_CLOSED") => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "ORDER_CLOSED_AT_WECHATPAY",
                format!("WeChat Pay says the payment order of {no} is closed"),
            )
        }
        _ => {}
    }
    if e.is_transient() {
        log::warn!(order_no:% = no; "order {no}: Native prepay failed, retryable: {e}");
        let status = if matches!(e, payment_client::Error::Timeout { .. }) {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        ApiError::new(
            status,
            "WECHATPAY_UNAVAILABLE",
            "WeChat Pay did not answer usably; try again",
        )
    } else {
        log::error!(order_no:% = no; "order {no}: WeChat Pay refused the Native prepay: {e}");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "WECHATPAY_REFUSED",
            format!(
                "WeChat Pay refused the prepay ({})",
                e.provider_code().unwrap_or("no code")
            ),
        )
    }
}

/// A body sent as something else than JSON is refused rather than read as
/// JSON anyway: a form (`curl -d` without `-H 'Content-Type:
/// application/json'`) is a client's mistake worth naming. No
/// `Content-Type` at all is read as JSON.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            format!(
                "the body must be JSON sent as Content-Type: application/json, not {:?}",
                value.to_str().unwrap_or("(not text)")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::serve::api::MAX_ITEMS;

    fn field_of(body: &str) -> String {
        CreateOrderRequest::parse(body.as_bytes())
            .unwrap_err()
            .field
            .unwrap_or_default()
    }

    #[test]
    fn a_good_request_parses_with_and_without_a_window() {
        let r = CreateOrderRequest::parse(
            br#"{"items":[{"sku":"TEA","quantity":2}],"payment_window":"15m"}"#,
        )
        .unwrap();
        assert_eq!(r.items.len(), 1);
        assert_eq!(r.payment_window.map(|w| w.0), Some(Duration::from_mins(15)));
        let r = CreateOrderRequest::parse(
            br#"{"items":[{"sku":"TEA","quantity":1},{"sku":"MUG","quantity":3}],"payment_window":null}"#,
        )
        .unwrap();
        assert_eq!((r.items.len(), r.payment_window), (2, None));
    }

    #[test]
    fn every_refusal_names_the_field() {
        assert_eq!(field_of("not json"), "body");
        assert_eq!(field_of("[]"), "body");
        assert_eq!(field_of("{}"), "items");
        assert_eq!(field_of(r#"{"items":{}}"#), "items");
        assert_eq!(field_of(r#"{"items":[]}"#), "items");
        assert_eq!(field_of(r#"{"items":[1]}"#), "items[0]");
        assert_eq!(field_of(r#"{"items":[{"quantity":1}]}"#), "items[0].sku");
        assert_eq!(
            field_of(r#"{"items":[{"sku":"TEA","quantity":1},{"sku":"bad sku","quantity":1}]}"#),
            "items[1].sku"
        );
        for q in ["0", "-1", "1.5", "\"2\"", "4294967296", "null"] {
            assert_eq!(
                field_of(&format!(r#"{{"items":[{{"sku":"TEA","quantity":{q}}}]}}"#)),
                "items[0].quantity",
                "{q}"
            );
        }
        assert_eq!(
            field_of(r#"{"items":[{"sku":"TEA","quantity":1,"price":1}]}"#),
            "items[0].price"
        );
        for w in ["\"soon\"", "\"0s\"", "\"400d\"", "15"] {
            assert_eq!(
                field_of(&format!(
                    r#"{{"items":[{{"sku":"TEA","quantity":1}}],"payment_window":{w}}}"#
                )),
                "payment_window",
                "{w}"
            );
        }
        assert_eq!(
            field_of(r#"{"items":[{"sku":"TEA","quantity":1}],"coupon":"X"}"#),
            "coupon"
        );
        let many: Vec<String> = (0..=MAX_ITEMS)
            .map(|_| r#"{"sku":"TEA","quantity":1}"#.to_owned())
            .collect();
        assert_eq!(
            field_of(&format!(r#"{{"items":[{}]}}"#, many.join(","))),
            "items"
        );
    }

    #[test]
    fn refusals_say_what_is_wrong_in_the_domain_words() {
        let message = |body: &str| {
            CreateOrderRequest::parse(body.as_bytes())
                .unwrap_err()
                .message
        };
        let cases = [
            ("{", "body: not valid JSON"),
            (
                r#"{"items":[{"sku":"TEA","quantity":1}]} x"#,
                "body: not valid JSON: trailing characters",
            ),
            ("[]", "body: invalid type: sequence, expected a JSON object"),
            (
                r#"[[{"sku":"TEA","quantity":1}]]"#,
                "body: invalid type: sequence, expected a JSON object",
            ),
            (
                r#"{"items":[["TEA",1]]}"#,
                "items[0]: invalid type: sequence, expected a JSON object",
            ),
            ("{}", "items: required"),
            (r#"{"items":[{"quantity":1}]}"#, "items[0].sku: required"),
            (
                r#"{"items":[{"sku":"TEA","quantity":0}]}"#,
                "items[0].quantity: quantity must be a whole number from 1 to 1000000",
            ),
            (
                r#"{"items":[{"sku":"a b","quantity":1}]}"#,
                "items[0].sku: SKU code must be 1 to 64 characters",
            ),
            (
                r#"{"items":[{"sku":"TEA","quantity":1,"price":1}]}"#,
                "items[0].price: unknown field",
            ),
            (
                r#"{"items":[{"sku":"TEA","quantity":1}],"payment_window":"400d"}"#,
                "payment_window: out of range (1s to 366 days)",
            ),
        ];
        for (body, start) in cases {
            let m = message(body);
            assert!(m.starts_with(start), "{body}: {m}");
            // The position helps with a syntax error only.
            let syntax = start.contains("not valid JSON");
            assert_eq!(m.contains(" at line "), syntax, "{body}: {m}");
        }
    }

    #[test]
    fn time_expire_is_the_deadline_in_beijing_time_rounded_down() {
        let deadline = DateTime::parse_from_rfc3339("2026-11-26T10:00:00.999999Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(time_expire(deadline), "2026-11-26T18:00:00+08:00");
    }
}
