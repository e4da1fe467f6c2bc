//! The two WeChat Pay APIv3 endpoints the simulator serves, query and close
//! by `out_trade_no`: routing, the injected faults that apply to a call, and
//! the answers built from the in-memory orders.
//!
//! It exists to keep what the real API would answer apart from how requests
//! are checked (`auth`), how answers are signed (`signing`) and how tests
//! drive the orders (`admin_api`).

use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::auth::check_request;
use crate::http::Request as Incoming;
use crate::model::{Endpoint, Faults, Order};
use crate::server::{Reply, Shared, State};
use crate::signing::sign;

const API_PREFIX: &str = "/v3/pay/transactions/out-trade-no/";

/// A recognised API call.
struct Call {
    endpoint: Endpoint,
    out_trade_no: String,
    /// The `mchid` query parameter (query only).
    query_mchid: Option<String>,
}

fn route(method: &str, url: &str) -> Option<Call> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
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
        query_mchid,
    })
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            // Both are ASCII hex digits, so this slice is on char boundaries.
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    let call = route(&req.method, &req.url);
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
    let reply = sign(
        shared,
        api_answer(shared, req, call.as_ref(), &faults, &mchid),
        &faults,
    );
    if let Some(call) = &call {
        shared
            .state()
            .last_answers
            .insert(call.out_trade_no.clone(), reply.clone());
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

fn lookup<'s>(state: &'s mut State, no: &str, auto_create: bool) -> Option<&'s mut Order> {
    if auto_create {
        Some(state.orders.entry(no.to_owned()).or_default())
    } else {
        state.orders.get_mut(no)
    }
}

fn transaction_json(mchid: &str, out_trade_no: &str, order: &Order) -> serde_json::Value {
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
    let mut v = json!({
        "appid": "wxd678efh567hg6787",
        "mchid": mchid,
        "out_trade_no": out_trade_no,
        "trade_type": "JSAPI",
        "trade_state": order.trade_state,
        "trade_state_desc": desc,
        "attach": "",
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
        v["payer"] = json!({ "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" });
        amount["payer_total"] = json!(order.payer_total.unwrap_or(order.amount_total));
    }
    if !order.omit_amount {
        v["amount"] = amount;
    }
    v
}

fn close(shared: &Shared, req: &Incoming, call: &Call, mchid: &str, faults: &Faults) -> Reply {
    if !req
        .header("Content-Type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return Reply::error(
            400,
            "INVALID_REQUEST",
            "Content-Type must be application/json",
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_two_endpoints_only() {
        let c = route(
            "GET",
            "/v3/pay/transactions/out-trade-no/ORD123%7Cx?mchid=1900000001",
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
        let c = route("POST", "/v3/pay/transactions/out-trade-no/ORD123/close").unwrap();
        assert_eq!(
            (c.endpoint, c.out_trade_no.as_str()),
            (Endpoint::Close, "ORD123")
        );
        assert!(route("POST", "/v3/pay/transactions/out-trade-no/ORD123").is_none());
        assert!(route("GET", "/v3/pay/transactions/out-trade-no/ORD123/close").is_none());
        assert!(route("GET", "/v3/pay/transactions/id/42000").is_none());
        assert!(route("GET", "/v3/pay/transactions/out-trade-no/a/b").is_none());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%7Cb%2a"), "a|b*");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
