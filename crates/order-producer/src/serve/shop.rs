//! The shop's API under `/v1/`, behind the bearer token: create an order
//! (idempotent with `Idempotency-Key`), read it, and create its WeChat Pay
//! Native prepay whose `time_expire` is the order's deadline.
//!
//! Input is parsed by hand from JSON values rather than by serde derive, so
//! that every refusal names the field (`items[1].quantity`) and nothing is
//! written on any refusal.

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
use domain::{IdempotencyKey, OrderLine, OrderNo, OrderStatus, Quantity, SkuCode};
use payment_client::NativePrepay;
use serde_json::{json, Map, Value};

use super::{blocking, ApiError, AppState};

/// Most lines one order may have.
pub const MAX_ITEMS: usize = 100;
/// Shortest payment window accepted.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
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

/// A valid create-order request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CreateRequest {
    pub lines: Vec<OrderLine>,
    pub window: Option<Duration>,
}

/// Parses `{"items":[{"sku","quantity"}],"payment_window"?}`; the error
/// names the field.
pub(crate) fn parse_create(body: &[u8]) -> Result<CreateRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::field("body", format!("not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::field("body", "expected a JSON object"));
    };
    let items = obj
        .remove("items")
        .ok_or_else(|| ApiError::field("items", "required"))?;
    let window = match obj.remove("payment_window") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let d =
                service::parse_duration(&s).map_err(|e| ApiError::field("payment_window", e))?;
            if !(MIN_WINDOW..=domain::MAX_PAYMENT_WINDOW).contains(&d) {
                return Err(ApiError::field(
                    "payment_window",
                    "out of range (1s to 366 days)",
                ));
            }
            Some(d)
        }
        Some(_) => {
            return Err(ApiError::field(
                "payment_window",
                "expected a duration string such as \"15m\"",
            ))
        }
    };
    if let Some(unknown) = obj.keys().next() {
        return Err(ApiError::field(unknown.clone(), "unknown field"));
    }
    let Value::Array(items) = items else {
        return Err(ApiError::field("items", "expected an array"));
    };
    if items.is_empty() {
        return Err(ApiError::field("items", "an order needs at least one item"));
    }
    if items.len() > MAX_ITEMS {
        return Err(ApiError::field(
            "items",
            format!("at most {MAX_ITEMS} lines per order"),
        ));
    }
    let lines = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| parse_line(i, item))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CreateRequest { lines, window })
}

fn parse_line(i: usize, item: Value) -> Result<OrderLine, ApiError> {
    let at = |f: &str| format!("items[{i}].{f}");
    let Value::Object(mut obj) = item else {
        return Err(ApiError::field(format!("items[{i}]"), "expected an object"));
    };
    let sku = match obj.remove("sku") {
        Some(Value::String(s)) => {
            SkuCode::parse(&s).map_err(|e| ApiError::field(at("sku"), e.to_string()))?
        }
        Some(_) => return Err(ApiError::field(at("sku"), "expected a string")),
        None => return Err(ApiError::field(at("sku"), "required")),
    };
    let quantity = match obj.remove("quantity") {
        Some(Value::Number(n)) => {
            let n = n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| ApiError::field(at("quantity"), "expected a positive integer"))?;
            Quantity::new(n).map_err(|e| ApiError::field(at("quantity"), e.to_string()))?
        }
        Some(_) => return Err(ApiError::field(at("quantity"), "expected an integer")),
        None => return Err(ApiError::field(at("quantity"), "required")),
    };
    if let Some(unknown) = obj.keys().next() {
        return Err(ApiError::field(at(unknown), "unknown field"));
    }
    Ok(OrderLine { sku, quantity })
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

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `POST /v1/orders`
async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = parse_create(&body)?;
    let key = idempotency_key(&headers)?;
    let window = request.window.unwrap_or(state.default_window);
    // A window shorter than every delay queue would settle late: refused.
    state
        .topology
        .check_window(window)
        .map_err(|e| ApiError::field("payment_window", e))?;
    let pool = state.pool.clone();
    let created = blocking(move || {
        let mut conn = domain::checkout(&pool).map_err(|e| ApiError::from_store(&e))?;
        domain::create_order_idempotent(
            &mut conn,
            &request.lines,
            window,
            key.as_deref().map(IdempotencyKey),
        )
        .map_err(|e| ApiError::from_store(&e))
    })
    .await?;
    if !created.replayed {
        log::info!(
            "created order {} ({}), payment deadline {}",
            created.order.order_no,
            created.order.total,
            time(created.order.deadline)
        );
    }
    let body = json!({
        "order_no": created.order.order_no.as_str(),
        "status": created.status.as_str(),
        "total_fen": created.order.total.get(),
        "created_at": time(created.order.created_at),
        "deadline": time(created.order.deadline),
    });
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

/// `GET /v1/orders/{order_no}`
async fn show(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
        let refunds: Vec<Value> = domain::refunds_of(&mut conn, &no)
            .map_err(store)?
            .iter()
            .map(|r| {
                json!({
                    "out_refund_no": r.out_refund_no,
                    "amount_fen": r.amount.get(),
                    "status": r.status.as_str(),
                    "refund_id": r.refund_id,
                    "needs_human": r.needs_human,
                    "created_at": time(r.created_at),
                    "finished_at": r.finished_at.map(time),
                })
            })
            .collect();
        let payments: Vec<Value> = payments
            .iter()
            .map(|p| {
                json!({
                    "transaction_id": p.transaction_id.as_str(),
                    "amount_fen": p.amount.get(),
                    "success_time": time(p.success_time),
                    "paid_after_close": p.paid_after_close,
                })
            })
            .collect();
        let mut body = Map::new();
        body.insert("order_no".into(), json!(order.order_no.as_str()));
        body.insert("status".into(), json!(order.status.as_str()));
        body.insert("total_fen".into(), json!(order.total.get()));
        body.insert("created_at".into(), json!(time(order.created_at)));
        body.insert("deadline".into(), json!(time(order.deadline)));
        body.insert("paid_at".into(), json!(order.paid_at.map(time)));
        body.insert("closed_at".into(), json!(order.closed_at.map(time)));
        body.insert("close_reason".into(), json!(order.close_reason));
        body.insert(
            "anomaly".into(),
            json!(order.anomaly.map(domain::Anomaly::as_str)),
        );
        body.insert(
            "items".into(),
            Value::Array(
                items
                    .iter()
                    .map(|i| {
                        json!({
                            "sku": i.sku.as_str(),
                            "quantity": i.quantity.get(),
                            "unit_price_fen": i.unit_price.get(),
                        })
                    })
                    .collect(),
            ),
        );
        body.insert(
            "payment".into(),
            payments.first().cloned().unwrap_or(Value::Null),
        );
        body.insert("payments".into(), Value::Array(payments));
        body.insert(
            "refund".into(),
            refunds.first().cloned().unwrap_or(Value::Null),
        );
        body.insert("refunds".into(), Value::Array(refunds));
        body.insert(
            "events".into(),
            Value::Array(
                events
                    .iter()
                    .map(|e| json!({"kind": e.kind, "detail": e.detail, "at": time(e.created_at)}))
                    .collect(),
            ),
        );
        Ok(Json(Value::Object(body)))
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

/// `POST /v1/orders/{order_no}/wechatpay/native`
async fn native_prepay(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
        Ok(Json(json!({ "code_url": code_url, "time_expire": expire })))
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
        log::warn!("order {no}: Native prepay failed, retryable: {e}");
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
        log::error!("order {no}: WeChat Pay refused the Native prepay: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> String {
        parse_create(body.as_bytes())
            .unwrap_err()
            .field
            .unwrap_or_default()
    }

    #[test]
    fn a_good_request_parses_with_and_without_a_window() {
        let r = parse_create(br#"{"items":[{"sku":"TEA","quantity":2}],"payment_window":"15m"}"#)
            .unwrap();
        assert_eq!(r.lines.len(), 1);
        assert_eq!(r.window, Some(Duration::from_mins(15)));
        let r =
            parse_create(br#"{"items":[{"sku":"TEA","quantity":1},{"sku":"MUG","quantity":3}]}"#)
                .unwrap();
        assert_eq!((r.lines.len(), r.window), (2, None));
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
    fn time_expire_is_the_deadline_in_beijing_time_rounded_down() {
        let deadline = DateTime::parse_from_rfc3339("2026-11-26T10:00:00.999999Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(time_expire(deadline), "2026-11-26T18:00:00+08:00");
    }
}
