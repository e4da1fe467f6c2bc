//! The WeChat Pay APIv3 endpoints the simulator serves, Native prepay,
//! query and close by `out_trade_no`, domestic refunds and trade bills:
//! routing, the injected faults that apply to a call, and the answers built
//! from the in-memory orders (refunds themselves live in `refund`, trade
//! bills in `tradebill`).
//!
//! It exists to keep what the real API would answer apart from how requests
//! are checked (`auth`), how answers are signed (`signing`) and how tests
//! drive the orders (`admin_api`).

use std::thread;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use serde_json::json;

use crate::auth::check_request;
use crate::bill::PAYER_OPENID;
use crate::http::Request as Incoming;
use crate::model::{Endpoint, Faults, Order};
use crate::server::{Reply, Shared, State};
use crate::signing::sign;
use crate::{refund, tradebill};

const API_PREFIX: &str = "/v3/pay/transactions/out-trade-no/";
const NATIVE_PREPAY: &str = "/v3/pay/transactions/native";
const REFUNDS: &str = "/v3/refund/domestic/refunds";
const TRADE_BILL: &str = "/v3/bill/tradebill";
const BILL_DOWNLOAD: &str = "/v3/billdownload/file";
/// `appid` of answers about orders whose prepay named none.
pub(crate) const FALLBACK_APPID: &str = "wxd678efh567hg6787";

/// A recognised API call.
struct Call {
    endpoint: Endpoint,
    /// For a prepay, the body's (empty when it names none): what per-order
    /// faults and replays are keyed by. For a refund call, the refunded
    /// order's, as far as the body names it (see `resolve`): what per-order
    /// faults are keyed by.
    out_trade_no: String,
    /// Refund calls: the `out_refund_no` (empty when the body names none),
    /// what their replays are keyed by.
    out_refund_no: Option<String>,
    /// A refund request's `transaction_id`.
    transaction_id: Option<String>,
    /// The `mchid` query parameter (query only).
    query_mchid: Option<String>,
}

impl Call {
    /// What the last signed answer of this call is kept under, for replays.
    fn answer_key(&self) -> &str {
        self.out_refund_no.as_deref().unwrap_or(&self.out_trade_no)
    }
}

fn route(method: &str, url: &str, body: &[u8]) -> Option<Call> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let body_field = |field: &str| {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get(field)?.as_str().map(str::to_owned))
    };
    let about_no_order = |endpoint| Call {
        endpoint,
        out_trade_no: String::new(),
        out_refund_no: None,
        transaction_id: None,
        query_mchid: None,
    };
    match (method, path) {
        ("GET", TRADE_BILL) => return Some(about_no_order(Endpoint::TradeBill)),
        ("GET", BILL_DOWNLOAD) => return Some(about_no_order(Endpoint::BillDownload)),
        _ => {}
    }
    if (method, path) == ("POST", NATIVE_PREPAY) {
        return Some(Call {
            endpoint: Endpoint::Prepay,
            out_trade_no: body_field("out_trade_no").unwrap_or_default(),
            out_refund_no: None,
            transaction_id: None,
            query_mchid: None,
        });
    }
    if (method, path) == ("POST", REFUNDS) {
        return Some(Call {
            endpoint: Endpoint::Refund,
            out_trade_no: body_field("out_trade_no").unwrap_or_default(),
            out_refund_no: Some(body_field("out_refund_no").unwrap_or_default()),
            transaction_id: body_field("transaction_id"),
            query_mchid: None,
        });
    }
    if let Some(no) = path
        .strip_prefix(REFUNDS)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        if method != "GET" || no.is_empty() || no.contains('/') {
            return None;
        }
        return Some(Call {
            endpoint: Endpoint::RefundQuery,
            out_trade_no: String::new(),
            out_refund_no: Some(percent_decode(no)),
            transaction_id: None,
            query_mchid: None,
        });
    }
    let rest = path.strip_prefix(API_PREFIX)?;
    let (no, endpoint) = match (method, rest.strip_suffix("/close")) {
        ("POST", Some(no)) => (no, Endpoint::Close),
        ("GET", None) => (rest, Endpoint::Query),
        _ => return None,
    };
    if no.is_empty() || no.contains('/') {
        return None;
    }
    let query_mchid = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("mchid="))
        .map(percent_decode);
    Some(Call {
        endpoint,
        out_trade_no: percent_decode(no),
        out_refund_no: None,
        transaction_id: None,
        query_mchid,
    })
}

/// Fills in the order a refund call is about, so that the order's faults
/// apply: the one with the request's `transaction_id`, or the queried
/// refund's.
fn resolve(state: &State, mut call: Call) -> Call {
    let found = match call.endpoint {
        Endpoint::Refund => call.transaction_id.as_deref().and_then(|id| {
            state
                .orders
                .iter()
                .find(|(_, o)| o.transaction_id.as_deref() == Some(id))
                .map(|(no, _)| no.clone())
        }),
        Endpoint::RefundQuery => call
            .out_refund_no
            .as_deref()
            .and_then(|no| state.refunds.get(no))
            .map(|r| r.refund.out_trade_no.clone()),
        Endpoint::Query
        | Endpoint::Close
        | Endpoint::Prepay
        | Endpoint::TradeBill
        | Endpoint::BillDownload => None,
    };
    if let Some(no) = found {
        call.out_trade_no = no;
    }
    call
}

/// `%XX` sequences decoded (the `percent-encoding` crate; invalid UTF-8
/// replaced).
pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

pub(crate) fn api(shared: &Shared, req: &Incoming) -> Reply {
    shared.state().stats.api_requests += 1;
    // Requests refused for their headers or signature neither consume nor
    // suffer the injected faults: a test's "fail twice" stays two failures
    // of well-formed requests.
    let mchid = match check_request(shared, req) {
        Ok(mchid) => mchid,
        Err(reply) => return sign(shared, reply, &Faults::default()),
    };
    let call = route(&req.method, &req.url, &req.body).map(|call| {
        let mut state = shared.state();
        // Counted before faults: a refund retried after a fault is two
        // requests.
        match call.endpoint {
            Endpoint::Refund => state.stats.refund_requests += 1,
            Endpoint::RefundQuery => state.stats.refund_queries += 1,
            Endpoint::TradeBill => state.stats.trade_bills += 1,
            Endpoint::BillDownload => state.stats.bill_downloads += 1,
            Endpoint::Query | Endpoint::Close | Endpoint::Prepay => {}
        }
        resolve(&state, call)
    });
    let faults = take_faults(shared, call.as_ref());
    if faults.latency_ms > 0 {
        thread::sleep(Duration::from_millis(faults.latency_ms));
    }
    if let Some(of) = &faults.replay_answer_of {
        let earlier = shared.state().last_answers.get(of).cloned();
        return earlier.unwrap_or_else(|| {
            sign(
                shared,
                Reply::error(500, "SIM_FAULT", "nothing to replay for that out_trade_no"),
                &Faults::default(),
            )
        });
    }
    let answer = api_answer(shared, req, call.as_ref(), &faults, &mchid);
    // The bill file is the one answer WeChat Pay does not sign; its JSON
    // errors are signed like any other.
    let is_file = call
        .as_ref()
        .is_some_and(|c| c.endpoint == Endpoint::BillDownload)
        && answer.status == 200;
    let reply = if is_file {
        answer
    } else {
        sign(shared, answer, &faults)
    };
    if let Some(call) = call.as_ref().filter(|c| !c.answer_key().is_empty()) {
        shared
            .state()
            .last_answers
            .insert(call.answer_key().to_owned(), reply.clone());
    }
    reply
}

/// The faults that apply to this call (the order's own win over the global
/// ones), counting down `times`.
fn take_faults(shared: &Shared, call: Option<&Call>) -> Faults {
    let Some(call) = call else {
        return Faults::default();
    };
    let mut state = shared.state();
    let applies = |f: &Faults| f.only.is_none_or(|only| only == call.endpoint);
    let take = |slot: &mut Option<Faults>| -> Option<Faults> {
        let f = slot.as_mut().filter(|f| applies(f))?;
        let taken = f.clone();
        if let Some(n) = f.times.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *slot = None;
            }
        }
        Some(taken)
    };
    let order_faults = state
        .orders
        .get_mut(&call.out_trade_no)
        .and_then(|o| take(&mut o.faults));
    order_faults
        .or_else(|| take(&mut state.global_faults))
        .unwrap_or_default()
}

fn api_answer(
    shared: &Shared,
    req: &Incoming,
    call: Option<&Call>,
    faults: &Faults,
    mchid: &str,
) -> Reply {
    let Some(call) = call else {
        return Reply::error(404, "NOT_FOUND", "no such API in the simulator");
    };
    if let Some(status) = faults.status {
        shared.state().stats.faults_injected += 1;
        let (code, message) = match status {
            429 => ("FREQUENCY_LIMITED", "too many requests, slow down"),
            500 => ("SYSTEM_ERROR", "system error, try again later"),
            502..=504 => (
                "SERVICE_UNAVAILABLE",
                "service unavailable, try again later",
            ),
            400 => ("PARAM_ERROR", "parameter error (injected)"),
            401 => ("SIGN_ERROR", "signature error (injected)"),
            403 => ("NO_AUTH", "merchant has no permission (injected)"),
            _ => ("SIM_FAULT", "injected fault"),
        };
        let mut reply = Reply::error(status, code, message);
        if let (429, Some(secs)) = (status, faults.retry_after_secs) {
            reply
                .headers
                .push(("Retry-After".to_owned(), secs.to_string()));
        }
        return reply;
    }
    match call.endpoint {
        Endpoint::Query => query(shared, call, mchid, faults),
        Endpoint::Close => close(shared, req, call, mchid, faults),
        Endpoint::Prepay => prepay(shared, req, mchid),
        Endpoint::Refund => refund::create(shared, req, mchid),
        Endpoint::RefundQuery => {
            refund::query(shared, call.out_refund_no.as_deref().unwrap_or_default())
        }
        Endpoint::TradeBill => tradebill::tradebill(shared, req),
        Endpoint::BillDownload => tradebill::download(shared, req),
    }
}

fn query(shared: &Shared, call: &Call, mchid: &str, faults: &Faults) -> Reply {
    if call.query_mchid.as_deref() != Some(mchid) {
        return Reply::error(
            400,
            "PARAM_ERROR",
            "query parameter mchid is missing or differs from the signer",
        );
    }
    let mut state = shared.state();
    state.stats.queries += 1;
    let auto = shared.config.auto_create;
    let Some(order) = lookup(&mut state, &call.out_trade_no, auto) else {
        return Reply::error(404, "ORDER_NOT_EXIST", "order does not exist");
    };
    order.queries += 1;
    let mut answer = transaction_json(
        &shared.config,
        faults.answer_mchid.as_deref().unwrap_or(mchid),
        faults
            .answer_out_trade_no
            .as_deref()
            .unwrap_or(&call.out_trade_no),
        order,
    );
    if let Some(fields) = answer.as_object_mut() {
        if faults.omit_out_trade_no {
            fields.remove("out_trade_no");
        }
        if faults.omit_mchid {
            fields.remove("mchid");
        }
    }
    Reply::json(200, &answer)
}

/// The order (created when `auto_create`), closed first if its
/// `time_expire` passed.
fn lookup<'s>(state: &'s mut State, no: &str, auto_create: bool) -> Option<&'s mut Order> {
    let order = if auto_create {
        Some(state.orders.entry(no.to_owned()).or_default())
    } else {
        state.orders.get_mut(no)
    }?;
    order.apply_time_expire();
    Some(order)
}

/// The transaction as the query answers it, and as payment notifications
/// carry it (encrypted).
pub(crate) fn transaction_json(
    config: &crate::SimConfig,
    mchid: &str,
    out_trade_no: &str,
    order: &Order,
) -> serde_json::Value {
    let paid = matches!(order.trade_state.as_str(), "SUCCESS" | "REFUND");
    let desc = match order.trade_state.as_str() {
        "SUCCESS" => "支付成功",
        "REFUND" => "转入退款",
        "NOTPAY" => "订单未支付",
        "CLOSED" => "已关闭",
        "REVOKED" => "已撤销",
        "USERPAYING" => "用户支付中",
        "PAYERROR" => "支付失败",
        _ => "",
    };
    let mut amount = json!({
        "total": order.amount_total,
        "currency": order.currency,
        "payer_currency": order.currency,
    });
    let appid = order
        .appid
        .as_deref()
        .or(config.appid.as_deref())
        .unwrap_or(FALLBACK_APPID);
    // Orders that went through the Native prepay are Native payments.
    let trade_type = if order.code_url.is_some() {
        "NATIVE"
    } else {
        "JSAPI"
    };
    let mut v = json!({
        "appid": appid,
        "mchid": mchid,
        "out_trade_no": out_trade_no,
        "trade_type": trade_type,
        "trade_state": order.trade_state,
        "trade_state_desc": desc,
        "attach": order.attach.as_deref().unwrap_or_default(),
        "promotion_detail": [],
    });
    if let Some(id) = &order.transaction_id {
        v["transaction_id"] = json!(id);
    }
    if let Some(t) = &order.success_time {
        v["success_time"] = json!(t);
    }
    if paid {
        v["bank_type"] = json!("OTHERS");
        v["payer"] = json!({ "openid": PAYER_OPENID });
        amount["payer_total"] = json!(order.payer_total.unwrap_or(order.amount_total));
    }
    if !order.omit_amount {
        v["amount"] = amount;
    }
    v
}

fn close(shared: &Shared, req: &Incoming, call: &Call, mchid: &str, faults: &Faults) -> Reply {
    if let Err(reply) = json_content_type(req) {
        return reply;
    }
    let body_mchid = serde_json::from_slice::<serde_json::Value>(&req.body)
        .ok()
        .and_then(|v| v.get("mchid").and_then(|m| m.as_str().map(str::to_owned)));
    if body_mchid.as_deref() != Some(mchid) {
        return Reply::error(
            400,
            "PARAM_ERROR",
            "body mchid is missing or differs from the signer",
        );
    }
    let mut state = shared.state();
    state.stats.closes += 1;
    let auto = shared.config.auto_create;
    let Some(order) = lookup(&mut state, &call.out_trade_no, auto) else {
        return Reply::error(404, "ORDER_NOT_EXIST", "order does not exist");
    };
    order.closes += 1;
    match order.trade_state.as_str() {
        "NOTPAY" | "PAYERROR" => {
            if !faults.close_noop {
                "CLOSED".clone_into(&mut order.trade_state);
            }
            Reply::empty(204)
        }
        "CLOSED" | "REVOKED" => Reply::empty(204),
        "USERPAYING" => Reply::error(202, "USER_PAYING", "user is paying, query again later"),
        "SUCCESS" | "REFUND" => {
            Reply::error(400, "ORDER_PAID", "order is paid and cannot be closed")
        }
        _ => Reply::error(
            500,
            "SYSTEM_ERROR",
            "order in a state the simulator cannot close",
        ),
    }
}

/// A checked Native prepay request.
#[derive(Debug, PartialEq, Eq)]
struct Prepay {
    appid: String,
    description: String,
    out_trade_no: String,
    time_expire: Option<String>,
    notify_url: String,
    total: i64,
    currency: String,
}

fn param_error(message: &str) -> Reply {
    Reply::error(400, "PARAM_ERROR", message)
}

/// The body of a prepay, checked field by field like WeChat Pay does.
fn parse_prepay(config: &crate::SimConfig, body: &[u8], mchid: &str) -> Result<Prepay, Reply> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| param_error(&format!("body is not JSON: {e}")))?;
    let text = |field: &str| -> Result<String, Reply> {
        v.get(field)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| param_error(&format!("{field} is missing or not a string")))
    };
    let appid = text("appid")?;
    if let Some(expected) = &config.appid {
        if &appid != expected {
            return Err(param_error(&format!(
                "appid {appid} does not belong to mchid {mchid}"
            )));
        }
    }
    if text("mchid")? != mchid {
        return Err(param_error("mchid differs from the signer"));
    }
    let description = text("description")?;
    if description.chars().count() > 127 {
        return Err(param_error("description is longer than 127 characters"));
    }
    let out_trade_no = text("out_trade_no")?;
    let valid_no = (6..=32).contains(&out_trade_no.len())
        && out_trade_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*".contains(&b));
    if !valid_no {
        return Err(param_error(
            "out_trade_no must be 6 to 32 of 0-9 a-z A-Z _ - | *",
        ));
    }
    let time_expire = match v.get("time_expire") {
        None | Some(serde_json::Value::Null) => None,
        Some(t) => {
            let t = t
                .as_str()
                .filter(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok())
                .ok_or_else(|| param_error("time_expire is not an RFC 3339 time"))?;
            Some(t.to_owned())
        }
    };
    let notify_url = text("notify_url")?;
    // The real API demands https; the simulator lets local receivers use http.
    let scheme_ok = notify_url.starts_with("https://") || notify_url.starts_with("http://");
    if !scheme_ok || notify_url.contains('?') {
        return Err(param_error(
            "notify_url must be an http(s) URL without a query string",
        ));
    }
    let amount = v
        .get("amount")
        .filter(|a| a.is_object())
        .ok_or_else(|| param_error("amount is missing or not an object"))?;
    let total = amount
        .get("total")
        .and_then(serde_json::Value::as_i64)
        .filter(|t| *t > 0)
        .ok_or_else(|| param_error("amount.total must be a positive integer (fen)"))?;
    let currency = match amount.get("currency") {
        None | Some(serde_json::Value::Null) => "CNY".to_owned(),
        Some(c) if c.as_str() == Some("CNY") => "CNY".to_owned(),
        Some(_) => return Err(param_error("amount.currency must be CNY")),
    };
    Ok(Prepay {
        appid,
        description,
        out_trade_no,
        time_expire,
        notify_url,
        total,
        currency,
    })
}

/// Whether `order` was prepaid with exactly these parameters.
fn same_prepay(order: &Order, p: &Prepay) -> bool {
    let instant = |t: Option<&str>| t.map(chrono::DateTime::parse_from_rfc3339);
    order.appid.as_deref() == Some(p.appid.as_str())
        && order.description.as_deref() == Some(p.description.as_str())
        && order.notify_url.as_deref() == Some(p.notify_url.as_str())
        && order.amount_total == p.total
        && order.currency == p.currency
        && instant(order.time_expire.as_deref()) == instant(p.time_expire.as_deref())
}

/// `POST /v3/pay/transactions/native`: creates the payment order, or
/// answers the same `code_url` again for the same parameters.
fn prepay(shared: &Shared, req: &Incoming, mchid: &str) -> Reply {
    shared.state().stats.prepays += 1;
    if let Err(reply) = json_content_type(req) {
        return reply;
    }
    let p = match parse_prepay(&shared.config, &req.body, mchid) {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let mut state = shared.state();
    let order = state
        .orders
        .entry(p.out_trade_no.clone())
        .or_insert_with(|| Order {
            trade_state: "NOTPAY".to_owned(),
            ..Order::default()
        });
    order.prepays += 1;
    order.apply_time_expire();
    match order.trade_state.as_str() {
        "SUCCESS" | "REFUND" => {
            return Reply::error(403, "ORDERPAID", "order is already paid");
        }
        "CLOSED" | "REVOKED" => {
            return Reply::error(400, "ORDER_CLOSED", "order is closed");
        }
        _ => {}
    }
    if order.code_url.is_some() {
        if !same_prepay(order, &p) {
            return Reply::error(
                400,
                "INVALID_REQUEST",
                "out_trade_no already used with other parameters",
            );
        }
    } else {
        // New, or created through the admin API and never prepaid.
        let code = Alphanumeric.sample_string(&mut rand::rng(), 16);
        order.code_url = Some(format!("weixin://wxpay/bizpayurl?pr={code}"));
        order.appid = Some(p.appid);
        order.description = Some(p.description);
        order.notify_url = Some(p.notify_url);
        order.time_expire = p.time_expire;
        order.amount_total = p.total;
        order.currency = p.currency;
    }
    Reply::json(200, &json!({ "code_url": order.code_url }))
}

pub(crate) fn json_content_type(req: &Incoming) -> Result<(), Reply> {
    if req
        .header("Content-Type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        Ok(())
    } else {
        Err(Reply::error(
            400,
            "INVALID_REQUEST",
            "Content-Type must be application/json",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_three_endpoints_only() {
        let c = route(
            "GET",
            "/v3/pay/transactions/out-trade-no/ORD123%7Cx?mchid=1900000001",
            b"",
        )
        .unwrap();
        assert_eq!(
            (
                c.endpoint,
                c.out_trade_no.as_str(),
                c.query_mchid.as_deref()
            ),
            (Endpoint::Query, "ORD123|x", Some("1900000001"))
        );
        let c = route(
            "POST",
            "/v3/pay/transactions/out-trade-no/ORD123/close",
            b"",
        )
        .unwrap();
        assert_eq!(
            (c.endpoint, c.out_trade_no.as_str()),
            (Endpoint::Close, "ORD123")
        );
        let c = route(
            "POST",
            "/v3/pay/transactions/native",
            br#"{"out_trade_no":"ORD456"}"#,
        )
        .unwrap();
        assert_eq!(
            (c.endpoint, c.out_trade_no.as_str()),
            (Endpoint::Prepay, "ORD456")
        );
        let c = route("POST", "/v3/pay/transactions/native", b"{").unwrap();
        assert_eq!(
            (c.endpoint, c.out_trade_no.as_str()),
            (Endpoint::Prepay, "")
        );
        assert!(route("GET", "/v3/pay/transactions/native", b"").is_none());
        assert!(route("POST", "/v3/pay/transactions/out-trade-no/ORD123", b"").is_none());
        assert!(route("GET", "/v3/pay/transactions/out-trade-no/ORD123/close", b"").is_none());
        assert!(route("GET", "/v3/pay/transactions/id/42000", b"").is_none());
        assert!(route("GET", "/v3/pay/transactions/out-trade-no/a/b", b"").is_none());
        let c = route("GET", "/v3/bill/tradebill?bill_date=2026-12-06", b"").unwrap();
        assert_eq!((c.endpoint, c.answer_key()), (Endpoint::TradeBill, ""));
        let c = route("GET", "/v3/billdownload/file?token=abc", b"").unwrap();
        assert_eq!((c.endpoint, c.answer_key()), (Endpoint::BillDownload, ""));
        assert!(route("POST", "/v3/bill/tradebill", b"").is_none());
        assert!(route("GET", "/v3/billdownload/file/x", b"").is_none());
    }

    fn valid() -> serde_json::Value {
        json!({
            "appid": "wx0000000000000001",
            "mchid": "1900000001",
            "description": "order 1",
            "out_trade_no": "ORD000001",
            "time_expire": "2026-11-26T18:00:00+08:00",
            "notify_url": "https://example.com/notify",
            "amount": { "total": 100, "currency": "CNY" },
        })
    }

    fn check(v: &serde_json::Value) -> Result<Prepay, String> {
        parse_prepay(
            &crate::SimConfig::default(),
            v.to_string().as_bytes(),
            "1900000001",
        )
        .map_err(|r| String::from_utf8(r.body).unwrap())
    }

    #[test]
    fn prepay_bodies_are_checked_field_by_field() {
        let p = check(&valid()).unwrap();
        assert_eq!((p.total, p.currency.as_str()), (100, "CNY"));
        let mut no_currency = valid();
        no_currency["amount"] = json!({ "total": 1 });
        assert_eq!(check(&no_currency).unwrap().currency, "CNY");
        let mut no_expiry = valid();
        no_expiry.as_object_mut().unwrap().remove("time_expire");
        assert_eq!(check(&no_expiry).unwrap().time_expire, None);
        let cases = [
            ("appid", json!(null), "appid"),
            ("mchid", json!("1900000002"), "mchid"),
            ("description", json!("x".repeat(128)), "description"),
            ("out_trade_no", json!("short"), "out_trade_no"),
            ("out_trade_no", json!("ORD 000001"), "out_trade_no"),
            ("time_expire", json!("tomorrow"), "time_expire"),
            ("notify_url", json!("ftp://x/notify"), "notify_url"),
            ("notify_url", json!("https://x/notify?a=1"), "notify_url"),
            ("amount", json!({ "total": 0 }), "amount.total"),
            ("amount", json!({ "total": 1.5 }), "amount.total"),
            (
                "amount",
                json!({ "total": 1, "currency": "USD" }),
                "amount.currency",
            ),
            ("amount", json!(100), "amount"),
        ];
        for (field, value, named) in cases {
            let mut v = valid();
            v[field] = value;
            let err = check(&v).unwrap_err();
            assert!(
                err.contains("PARAM_ERROR") && err.contains(named),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn routes_the_refund_endpoints() {
        let c = route(
            "POST",
            "/v3/refund/domestic/refunds",
            br#"{"transaction_id":"4200","out_refund_no":"R1"}"#,
        )
        .unwrap();
        assert_eq!(
            (
                c.endpoint,
                c.answer_key(),
                c.transaction_id.as_deref(),
                c.out_trade_no.as_str()
            ),
            (Endpoint::Refund, "R1", Some("4200"), "")
        );
        let c = route("GET", "/v3/refund/domestic/refunds/R%7C1@x", b"").unwrap();
        assert_eq!(
            (c.endpoint, c.answer_key()),
            (Endpoint::RefundQuery, "R|1@x")
        );
        assert!(route("GET", "/v3/refund/domestic/refunds", b"").is_none());
        assert!(route("POST", "/v3/refund/domestic/refunds/R1", b"").is_none());
        assert!(route("GET", "/v3/refund/domestic/refunds/", b"").is_none());
        assert!(route("GET", "/v3/refund/domestic/refunds/a/b", b"").is_none());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%7Cb%2a"), "a|b*");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
