//! The front door's contract as types: every request the shop sends and
//! every answer it gets, as serde structs. The handlers parse and answer
//! through them, and the OpenAPI document (`openapi.rs`) is derived from
//! them, so the contract is written once.
//!
//! Requests refuse unknown fields; a refusal names the field by its JSON
//! path (`items[1].quantity`, via `serde_path_to_error`). Domain values
//! (`SkuCode`, `Quantity`) are parsed by their own `TryFrom`, so their rules
//! live in `domain` only.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use domain::{OrderStatus, Quantity, SkuCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiError;

/// Most lines one order may have.
pub const MAX_ITEMS: usize = 100;
/// Shortest payment window accepted.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);

/// `POST /v1/orders`: what the buyer takes and how long they have to pay.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
pub struct CreateOrderRequest {
    /// The lines (1 to 100); lines naming the same SKU are merged.
    #[schema(value_type = Vec<OrderLineRequest>, min_items = 1, max_items = 100)]
    pub items: Vec<Object<OrderLineRequest>>,
    /// How long the buyer has to pay (`30s`, `15m`, `2h`; 1 s to 366 days).
    /// Default: the server's `PAYMENT_WINDOW`, else its longest delay queue.
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "15m")]
    pub payment_window: Option<PaymentWindow>,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "an object {\"sku\",\"quantity\"}")]
pub struct OrderLineRequest {
    /// The SKU code: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    #[schema(value_type = String, min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$", example = "TEA")]
    pub sku: SkuCode,
    /// Units of it: 1 to 1,000,000.
    #[schema(value_type = u32, minimum = 1, maximum = 1_000_000, example = 2)]
    pub quantity: Quantity,
}

/// A payment window within [`MIN_WINDOW`] and [`domain::MAX_PAYMENT_WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PaymentWindow(pub Duration);

impl TryFrom<String> for PaymentWindow {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let d = service::parse_duration(&s).map_err(|e| e.to_string())?;
        if (MIN_WINDOW..=domain::MAX_PAYMENT_WINDOW).contains(&d) {
            Ok(Self(d))
        } else {
            Err("out of range (1s to 366 days)".into())
        }
    }
}

impl CreateOrderRequest {
    /// Parses a request body; the error names the field by its JSON path
    /// (`body` when the body itself is not a JSON object).
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let Object(request): Object<Self> =
            serde_path_to_error::deserialize(&mut de).map_err(|e| refusal(&e))?;
        de.end()
            .map_err(|e| ApiError::field("body", format!("not valid JSON: {e}")))?;
        if request.items.is_empty() {
            return Err(ApiError::field("items", "an order needs at least one item"));
        }
        if request.items.len() > MAX_ITEMS {
            return Err(ApiError::field(
                "items",
                format!("at most {MAX_ITEMS} lines per order"),
            ));
        }
        Ok(request)
    }
}

/// A request object that must be a JSON object: serde's derive also
/// accepts an array of the field values (`["TEA",1]`), a form the contract
/// does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Only<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Only(std::marker::PhantomData))
            .map(Object)
    }
}

/// A serde refusal as a 400 naming the field. serde reports a missing field
/// at its parent's path with the name in backquotes: the name is joined to
/// the path so that `{"items":[{"quantity":1}]}` names `items[0].sku`.
fn refusal(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.inner();
    if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        return ApiError::field("body", format!("not valid JSON: {inner}"));
    }
    let full = inner.to_string();
    // serde_json appends the position; the path says more to a person.
    let message = full
        .rfind(" at line ")
        .map_or(full.as_str(), |at| &full[..at]);
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    let join = |name: String| {
        if path == "." {
            name
        } else if path == name || path.ends_with(&format!(".{name}")) {
            // An unknown field's path already ends with its name.
            path.clone()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(name) = named("missing field `") {
        return ApiError::field(join(name), "required");
    }
    if let Some(name) = named("unknown field `") {
        return ApiError::field(join(name), "unknown field");
    }
    let field = if path == "." { "body".to_owned() } else { path };
    ApiError::field(field, message)
}

/// An order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatusName {
    PendingPayment,
    Paid,
    Closed,
}

impl From<OrderStatus> for OrderStatusName {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::PendingPayment => Self::PendingPayment,
            OrderStatus::Paid => Self::Paid,
            OrderStatus::Closed => Self::Closed,
        }
    }
}

/// A time as the API writes it: RFC 3339 in UTC, fractions as needed.
#[must_use]
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `201` to `POST /v1/orders`: the order, its stock reserved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderCreated {
    /// The order number (also WeChat Pay's `out_trade_no`).
    #[schema(example = "OT20261126103000123ABCDEFGHIJ")]
    pub order_no: String,
    pub status: OrderStatusName,
    /// The total in fen (1 yuan = 100 fen), at least 1.
    pub total_fen: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the payment window ends; unpaid then, the order is closed and
    /// its stock given back.
    #[schema(format = DateTime)]
    pub deadline: String,
}

/// `200` to `GET /v1/orders/{order_no}`: the order and its history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderView {
    pub order_no: String,
    pub status: OrderStatusName,
    pub total_fen: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub deadline: String,
    #[schema(format = DateTime)]
    pub paid_at: Option<String>,
    #[schema(format = DateTime)]
    pub closed_at: Option<String>,
    /// Why it was closed (e.g. `timeout`), when it was.
    pub close_reason: Option<String>,
    /// What needs a human about it (e.g. `paid_after_close`), if anything.
    pub anomaly: Option<String>,
    pub items: Vec<OrderItemView>,
    /// The first payment, if any (`payments[0]`).
    pub payment: Option<PaymentView>,
    pub payments: Vec<PaymentView>,
    /// The first refund, if any (`refunds[0]`).
    pub refund: Option<RefundView>,
    pub refunds: Vec<RefundView>,
    /// The audit trail, oldest first.
    pub events: Vec<EventView>,
}

/// One line of an order as sold.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderItemView {
    pub sku: String,
    pub quantity: u32,
    pub unit_price_fen: i64,
}

/// A payment recorded for an order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentView {
    /// WeChat Pay's transaction id.
    pub transaction_id: String,
    pub amount_fen: i64,
    #[schema(format = DateTime)]
    pub success_time: String,
    /// Paid after the order was closed here: to be refunded.
    pub paid_after_close: bool,
}

/// A refund of an order.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RefundView {
    pub out_refund_no: String,
    pub amount_fen: i64,
    /// `pending`, `processing`, `success`, `closed` or `abnormal`.
    pub status: String,
    /// WeChat Pay's refund id, once known.
    pub refund_id: Option<String>,
    /// Why a human must decide about it, when one must.
    pub needs_human: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
}

/// One entry of an order's audit trail.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// `created`, `prepay`, `paid`, `closed`, `decision` (an operator's,
    /// through `order-producer cases`), ...
    pub kind: String,
    pub detail: String,
    /// Who decided, on `decision` events; `null` for the system's own.
    pub by: Option<String>,
    #[schema(format = DateTime)]
    pub at: String,
}

/// `200` to `POST /v1/orders/{order_no}/wechatpay/native`: the code the
/// buyer scans.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NativePrepayAnswer {
    /// Render it as a QR code.
    #[schema(example = "weixin://wxpay/bizpayurl?pr=abc123")]
    pub code_url: String,
    /// WeChat Pay's `time_expire`: the order's deadline in Beijing time,
    /// whole seconds rounded down.
    #[schema(example = "2026-11-26T18:30:00+08:00")]
    pub time_expire: String,
}

/// The answer to a notification not recorded: WeChat Pay delivers it again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotifyFailure {
    /// Always `FAIL`.
    #[schema(value_type = String, example = "FAIL")]
    pub code: &'static str,
    pub message: String,
}

/// WeChat Pay's notification envelope (documentation only:
/// `payment_client::notify` parses and verifies it).
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct NotificationEnvelope {
    pub id: String,
    #[schema(format = DateTime)]
    pub create_time: String,
    /// `TRANSACTION.SUCCESS`; for refunds `REFUND.SUCCESS`,
    /// `REFUND.ABNORMAL`, `REFUND.CLOSED`.
    pub event_type: String,
    /// `encrypt-resource`.
    pub resource_type: String,
    pub summary: String,
    pub resource: EncryptedResource,
}

/// The encrypted transaction or refund of a notification.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct EncryptedResource {
    /// `AEAD_AES_256_GCM`.
    pub algorithm: String,
    /// Base64 of the AES-256-GCM output and its 16-byte tag (key: the
    /// merchant's APIv3 key).
    pub ciphertext: String,
    pub associated_data: Option<String>,
    /// `transaction` or `refund`.
    pub original_type: String,
    pub nonce: String,
}

/// `200` to `/healthz` (documentation only: `service::telemetry` answers).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// The state of one dependency in `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum Check {
    Ok,
    Unreachable,
}

/// `/readyz` (documentation only: `service::telemetry` answers): 200 when
/// both are `ok`, else 503.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    pub database: Check,
    pub broker: Check,
}
