//! Domestic refunds: `POST /v3/refund/domestic/refunds` and the query by
//! `out_refund_no`, how a `PROCESSING` refund becomes final, and the JSON
//! the API answers and the refund notification carries.
//!
//! It exists because a refund moves money back to the buyer: the client's
//! retries must be safe (the same `out_refund_no` never refunds twice) and
//! its handling of `ABNORMAL` and `CLOSED` must be testable. A refund
//! becomes final `SimConfig::refund_delay` after its creation: lazily when
//! anything reads it (like `time_expire`), and otherwise when the sender
//! threads' delay queue reaches that moment, so that its notification goes
//! out without anyone asking.

use std::time::Instant;

use rand::Rng;
use serde_json::json;

use crate::api::json_content_type;
use crate::http::Request as Incoming;
use crate::model::SimRefund;
use crate::notify::{self, rfc3339_beijing, Task};
use crate::server::{unix_now, Reply, Shared, State};

/// The statuses a refund can end in.
pub(crate) const FINAL_STATUSES: [&str; 3] = ["SUCCESS", "ABNORMAL", "CLOSED"];
/// `user_received_account` of every refund: back to the payer's balance.
const RECEIVED_ACCOUNT: &str = "支付用户零钱";

/// A refund with what only the simulator needs to know about it.
#[derive(Debug)]
pub(crate) struct RefundRecord {
    pub(crate) refund: SimRefund,
    /// For listing refunds in the order they were made.
    pub(crate) created: Instant,
    /// When a `PROCESSING` refund becomes final; `None` once final, or
    /// while the admin API holds it in `PROCESSING`.
    pub(crate) settles_at: Option<Instant>,
}

/// How a refund request names the order.
#[derive(Debug, PartialEq, Eq)]
enum OrderRef {
    TransactionId(String),
    OutTradeNo(String),
}

/// A checked refund request.
#[derive(Debug, PartialEq, Eq)]
struct RefundRequest {
    order: OrderRef,
    out_refund_no: String,
    reason: Option<String>,
    notify_url: Option<String>,
    /// Fen.
    refund: i64,
    /// Fen.
    total: i64,
}

fn param_error(message: &str) -> Reply {
    Reply::error(400, "PARAM_ERROR", message)
}

/// The body of a refund request, checked field by field like WeChat Pay
/// does.
fn parse_request(body: &[u8]) -> Result<RefundRequest, Reply> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| param_error(&format!("body is not JSON: {e}")))?;
    // Absent and null are the same; anything else must be a non-empty string.
    let optional = |field: &str| -> Result<Option<String>, Reply> {
        match v.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(s) => s
                .as_str()
                .filter(|s| !s.is_empty())
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| param_error(&format!("{field} is not a non-empty string"))),
        }
    };
    // transaction_id wins when both are given, as at WeChat Pay.
    let order = match (optional("transaction_id")?, optional("out_trade_no")?) {
        (Some(id), _) => OrderRef::TransactionId(id),
        (None, Some(no)) => OrderRef::OutTradeNo(no),
        (None, None) => {
            return Err(param_error(
                "one of transaction_id and out_trade_no is required",
            ))
        }
    };
    let out_refund_no = optional("out_refund_no")?.unwrap_or_default();
    let valid_no = (1..=64).contains(&out_refund_no.len())
        && out_refund_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b));
    if !valid_no {
        return Err(param_error(
            "out_refund_no must be 1 to 64 of 0-9 a-z A-Z _ - | * @",
        ));
    }
    let reason = optional("reason")?;
    if reason.as_ref().is_some_and(|r| r.chars().count() > 80) {
        return Err(param_error("reason is longer than 80 characters"));
    }
    let notify_url = optional("notify_url")?;
    if let Some(url) = &notify_url {
        // The real API demands https; the simulator lets local receivers
        // use http.
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        if !scheme_ok || url.contains('?') {
            return Err(param_error(
                "notify_url must be an http(s) URL without a query string",
            ));
        }
    }
    let amount = v
        .get("amount")
        .filter(|a| a.is_object())
        .ok_or_else(|| param_error("amount is missing or not an object"))?;
    let fen = |field: &str| {
        amount
            .get(field)
            .and_then(serde_json::Value::as_i64)
            .filter(|f| *f > 0)
            .ok_or_else(|| param_error(&format!("amount.{field} must be a positive integer (fen)")))
    };
    let (refund, total) = (fen("refund")?, fen("total")?);
    match amount.get("currency") {
        None | Some(serde_json::Value::Null) => {}
        Some(c) if c.as_str() == Some("CNY") => {}
        Some(_) => return Err(param_error("amount.currency must be CNY")),
    }
    if refund > total {
        return Err(param_error("amount.refund exceeds amount.total"));
    }
    Ok(RefundRequest {
        order,
        out_refund_no,
        reason,
        notify_url,
        refund,
        total,
    })
}

/// `POST /v3/refund/domestic/refunds`: creates the refund, or answers the
/// same refund (in its current state) for the same `out_refund_no`,
/// transaction and amount, creating nothing.
pub(crate) fn create(shared: &Shared, req: &Incoming, mchid: &str) -> Reply {
    if let Err(reply) = json_content_type(req) {
        return reply;
    }
    let request = match parse_request(&req.body) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let mut state = shared.state();
    let (reply, task) = create_locked(shared, &mut state, &request, mchid);
    drop(state);
    if let Some((task, due)) = task {
        shared.notifier.enqueue(task, due);
    }
    reply
}

/// The answer, and the task to queue once the state is unlocked: the
/// moment a new refund becomes final, or the notification of a repeated
/// one that became final just now.
fn create_locked(
    shared: &Shared,
    state: &mut State,
    r: &RefundRequest,
    mchid: &str,
) -> (Reply, Option<(Task, Instant)>) {
    if state.refunds.contains_key(&r.out_refund_no) {
        return repeat(shared, state, r);
    }
    let out_trade_no = match &r.order {
        OrderRef::TransactionId(id) => state
            .orders
            .iter()
            .find(|(_, o)| o.transaction_id.as_deref() == Some(id.as_str()))
            .map(|(no, _)| no.clone()),
        OrderRef::OutTradeNo(no) => Some(no.clone()).filter(|no| state.orders.contains_key(no)),
    };
    let Some(order) = out_trade_no
        .as_ref()
        .and_then(|no| state.orders.get_mut(no))
    else {
        return (
            Reply::error(404, "RESOURCE_NOT_EXISTS", "order does not exist"),
            None,
        );
    };
    let out_trade_no = out_trade_no.unwrap_or_default();
    order.apply_time_expire();
    if !matches!(order.trade_state.as_str(), "SUCCESS" | "REFUND") {
        let message = format!("order is not paid (trade_state {})", order.trade_state);
        return (Reply::error(400, "INVALID_REQUEST", &message), None);
    }
    if r.total != order.amount_total {
        let message = format!(
            "amount.total {} differs from the order's total {}",
            r.total, order.amount_total
        );
        return (param_error(&message), None);
    }
    // Earlier refunds of the order, unless closed (their money stays).
    let refunded: i64 = state
        .refunds
        .values()
        .map(|x| &x.refund)
        .filter(|x| x.out_trade_no == out_trade_no && x.status != "CLOSED")
        .map(|x| x.refund)
        .sum();
    if refunded + r.refund > order.amount_total {
        let message = format!(
            "amount.refund exceeds what remains refundable ({} fen)",
            order.amount_total - refunded
        );
        return (param_error(&message), None);
    }
    let mut rng = rand::rng();
    // Every paid order has a transaction id at WeChat Pay; an order the
    // admin API made paid without one gets it now.
    let transaction_id = order
        .transaction_id
        .get_or_insert_with(|| format!("42000{:023}", rng.random_range(0..10u128.pow(23))))
        .clone();
    "REFUND".clone_into(&mut order.trade_state);
    let refund = SimRefund {
        out_refund_no: r.out_refund_no.clone(),
        refund_id: format!("50{:028}", rng.random_range(0..10u128.pow(28))),
        transaction_id,
        out_trade_no,
        mchid: mchid.to_owned(),
        reason: r.reason.clone(),
        notify_url: r.notify_url.clone(),
        status: "PROCESSING".to_owned(),
        refund: r.refund,
        total: r.total,
        payer_total: order.payer_total.unwrap_or(order.amount_total),
        currency: order.currency.clone(),
        create_time: rfc3339_beijing(unix_now()),
        success_time: None,
        outcome: None,
        requests: 1,
        queries: 0,
        notify_attempts: 0,
        notify_delivered: false,
    };
    let now = Instant::now();
    let settles_at = now + state.refund_delay.unwrap_or(shared.config.refund_delay);
    let reply = Reply::json(200, &refund_json(&refund));
    state.stats.refunds_created += 1;
    log::info!(
        "refund {} of {} fen for {} created",
        refund.out_refund_no,
        refund.refund,
        refund.out_trade_no
    );
    let task = Task::SettleRefund {
        out_refund_no: refund.out_refund_no.clone(),
        epoch: shared.notifier.epoch(),
    };
    state.refunds.insert(
        refund.out_refund_no.clone(),
        RefundRecord {
            refund,
            created: now,
            settles_at: Some(settles_at),
        },
    );
    (reply, Some((task, settles_at)))
}

/// The same `out_refund_no` again: the refund as it is now when the
/// transaction and amount are the same, else a refusal.
fn repeat(
    shared: &Shared,
    state: &mut State,
    r: &RefundRequest,
) -> (Reply, Option<(Task, Instant)>) {
    let Some(old) = state.refunds.get(&r.out_refund_no).map(|x| &x.refund) else {
        return (not_found(), None);
    };
    let same_order = match &r.order {
        OrderRef::TransactionId(id) => *id == old.transaction_id,
        OrderRef::OutTradeNo(no) => *no == old.out_trade_no,
    };
    if !same_order || r.refund != old.refund || r.total != old.total {
        let message = "out_refund_no was already used for another transaction or amount";
        return (Reply::error(400, "INVALID_REQUEST", message), None);
    }
    let task = settle_if_due(shared, state, &r.out_refund_no);
    let Some(record) = state.refunds.get_mut(&r.out_refund_no) else {
        return (not_found(), None);
    };
    record.refund.requests += 1;
    let reply = Reply::json(200, &refund_json(&record.refund));
    (reply, task.map(|t| (t, Instant::now())))
}

/// `POST /sim/refunds`: records `r` directly, as a refund made by hand in
/// the merchant platform (no notification; a `PROCESSING` one stays so
/// until forced). Empty fields are filled in: `create_time` now,
/// `refund_id`, `status` `SUCCESS`, `mchid`, and from the order held under
/// `out_trade_no` or `transaction_id` the other one, `total`, `payer_total`
/// and `currency` (that order moves from `SUCCESS` to `REFUND`).
pub(crate) fn insert(
    shared: &Shared,
    state: &mut State,
    mut r: SimRefund,
) -> Result<SimRefund, Reply> {
    check_by_hand(&mut r)?;
    if state.refunds.contains_key(&r.out_refund_no) {
        return Err(Reply::error(
            409,
            "CONFLICT",
            &format!("refund {} exists already", r.out_refund_no),
        ));
    }
    fill_in(shared, state, &mut r);
    log::info!(
        "refund {} of {} fen for {} recorded by hand",
        r.out_refund_no,
        r.refund,
        r.out_trade_no
    );
    state.refunds.insert(
        r.out_refund_no.clone(),
        RefundRecord {
            refund: r.clone(),
            created: Instant::now(),
            settles_at: None,
        },
    );
    Ok(r)
}

/// The fields of a refund recorded by hand, checked; `status` and
/// `create_time` defaulted.
fn check_by_hand(r: &mut SimRefund) -> Result<(), Reply> {
    let valid_no = (1..=64).contains(&r.out_refund_no.len())
        && r.out_refund_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-|*@".contains(&b));
    if !valid_no {
        return Err(param_error(
            "out_refund_no must be 1 to 64 of 0-9 a-z A-Z _ - | * @",
        ));
    }
    if r.refund <= 0 {
        return Err(param_error("refund must be a positive number of fen"));
    }
    if r.out_trade_no.is_empty() && r.transaction_id.is_empty() {
        return Err(param_error(
            "one of transaction_id and out_trade_no is required",
        ));
    }
    if r.status.is_empty() {
        "SUCCESS".clone_into(&mut r.status);
    }
    if r.status != "PROCESSING" && !FINAL_STATUSES.contains(&r.status.as_str()) {
        return Err(param_error(
            "status must be PROCESSING, SUCCESS, ABNORMAL or CLOSED",
        ));
    }
    if r.outcome
        .as_deref()
        .is_some_and(|o| !FINAL_STATUSES.contains(&o))
    {
        return Err(param_error("outcome must be SUCCESS, ABNORMAL or CLOSED"));
    }
    if r.create_time.is_empty() {
        r.create_time = rfc3339_beijing(unix_now());
    } else if chrono::DateTime::parse_from_rfc3339(&r.create_time).is_err() {
        return Err(param_error("create_time is not an RFC 3339 time"));
    }
    Ok(())
}

/// Fills in the empty fields of a checked refund recorded by hand, from the
/// order it names when the simulator holds it (which moves from `SUCCESS`
/// to `REFUND`), else with fresh numbers and defaults.
fn fill_in(shared: &Shared, state: &mut State, r: &mut SimRefund) {
    let held = if state.orders.contains_key(&r.out_trade_no) {
        Some(r.out_trade_no.clone())
    } else {
        state
            .orders
            .iter()
            .find(|(_, o)| {
                !r.transaction_id.is_empty()
                    && o.transaction_id.as_deref() == Some(r.transaction_id.as_str())
            })
            .map(|(no, _)| no.clone())
    };
    let mut rng = rand::rng();
    let mut new_transaction_id = || format!("42000{:023}", rng.random_range(0..10u128.pow(23)));
    if let Some(order) = held.as_ref().and_then(|no| state.orders.get_mut(no)) {
        if r.transaction_id.is_empty() {
            r.transaction_id.clone_from(
                order
                    .transaction_id
                    .get_or_insert_with(&mut new_transaction_id),
            );
        }
        if order.trade_state == "SUCCESS" {
            "REFUND".clone_into(&mut order.trade_state);
        }
        if r.total == 0 {
            r.total = order.amount_total;
        }
        if r.payer_total == 0 {
            r.payer_total = order.payer_total.unwrap_or(order.amount_total);
        }
        if r.currency.is_empty() {
            r.currency.clone_from(&order.currency);
        }
    }
    if let Some(no) = held.filter(|_| r.out_trade_no.is_empty()) {
        r.out_trade_no = no;
    }
    if r.transaction_id.is_empty() {
        r.transaction_id = new_transaction_id();
    }
    if r.total == 0 {
        r.total = r.refund;
    }
    if r.payer_total == 0 {
        r.payer_total = r.total;
    }
    if r.currency.is_empty() {
        "CNY".clone_into(&mut r.currency);
    }
    if r.refund_id.is_empty() {
        r.refund_id = format!("50{:028}", rand::rng().random_range(0..10u128.pow(28)));
    }
    if r.mchid.is_empty() {
        r.mchid = shared
            .config
            .mchid
            .clone()
            .unwrap_or_else(|| crate::DEFAULT_MCHID.to_owned());
    }
    if r.status == "SUCCESS" {
        r.success_time.get_or_insert_with(|| r.create_time.clone());
    } else {
        r.success_time = None;
    }
    (r.requests, r.queries, r.notify_attempts, r.notify_delivered) = (0, 0, 0, false);
}

fn not_found() -> Reply {
    Reply::error(404, "RESOURCE_NOT_EXISTS", "refund does not exist")
}

/// `GET /v3/refund/domestic/refunds/{out_refund_no}`.
pub(crate) fn query(shared: &Shared, out_refund_no: &str) -> Reply {
    let mut state = shared.state();
    let task = settle_if_due(shared, &mut state, out_refund_no);
    let reply = match state.refunds.get_mut(out_refund_no) {
        Some(record) => {
            record.refund.queries += 1;
            Reply::json(200, &refund_json(&record.refund))
        }
        None => not_found(),
    };
    drop(state);
    if let Some(task) = task {
        shared.notifier.enqueue(task, Instant::now());
    }
    reply
}

/// Makes the refund final if it is `PROCESSING` and its moment has come:
/// its own outcome, else the global one, else `SUCCESS`. The notification
/// to queue (after unlocking), if any.
pub(crate) fn settle_if_due(shared: &Shared, state: &mut State, no: &str) -> Option<Task> {
    let record = state.refunds.get(no)?;
    let due = record.refund.status == "PROCESSING"
        && record.settles_at.is_some_and(|t| t <= Instant::now());
    if !due {
        return None;
    }
    let status = record
        .refund
        .outcome
        .clone()
        .or_else(|| state.refund_outcome.clone())
        .unwrap_or_else(|| "SUCCESS".to_owned());
    finish(shared, state, no, &status)
}

/// Every due refund made final; the notifications to queue.
pub(crate) fn settle_all_due(shared: &Shared, state: &mut State) -> Vec<Task> {
    let nos: Vec<String> = state.refunds.keys().cloned().collect();
    nos.iter()
        .filter_map(|no| settle_if_due(shared, state, no))
        .collect()
}

/// `PUT /sim/refunds/{out_refund_no}` `{"status": ...}`: a final status
/// now (its notification follows, even when it had that status already),
/// or `PROCESSING` until told otherwise. The notification to queue (after
/// unlocking), if any.
pub(crate) fn force_status(
    shared: &Shared,
    state: &mut State,
    no: &str,
    status: &str,
) -> Option<Task> {
    let record = state.refunds.get_mut(no)?;
    if status == "PROCESSING" {
        "PROCESSING".clone_into(&mut record.refund.status);
        record.refund.success_time = None;
        record.settles_at = None;
        return None;
    }
    finish(shared, state, no, status)
}

/// Puts the refund in final `status` and builds its notification, unless it
/// has no `notify_url` or the drop switch is on (then counted as dropped).
fn finish(shared: &Shared, state: &mut State, no: &str, status: &str) -> Option<Task> {
    let drop_all = state.drop_notifications;
    let record = state.refunds.get_mut(no)?;
    record.settles_at = None;
    status.clone_into(&mut record.refund.status);
    if status == "SUCCESS" {
        record
            .refund
            .success_time
            .get_or_insert_with(|| rfc3339_beijing(unix_now()));
    } else {
        record.refund.success_time = None;
    }
    log::info!("refund {no} is {status}");
    let url = record.refund.notify_url.clone()?;
    if drop_all {
        state.stats.notifications_dropped += 1;
        log::info!("refund notification for {no} dropped as asked");
        return None;
    }
    let refund = &state.refunds.get(no)?.refund;
    Some(notify::refund_task(shared, refund, &url))
}

/// The refund as the API answers it.
pub(crate) fn refund_json(r: &SimRefund) -> serde_json::Value {
    let mut v = json!({
        "refund_id": r.refund_id,
        "out_refund_no": r.out_refund_no,
        "transaction_id": r.transaction_id,
        "out_trade_no": r.out_trade_no,
        "channel": "ORIGINAL",
        "user_received_account": RECEIVED_ACCOUNT,
        "create_time": r.create_time,
        "status": r.status,
        "funds_account": "AVAILABLE",
        "amount": {
            "total": r.total,
            "refund": r.refund,
            "from": [],
            "payer_total": r.payer_total,
            "payer_refund": r.refund,
            "settlement_refund": r.refund,
            "settlement_total": r.total,
            "discount_refund": 0,
            "currency": r.currency,
            "refund_fee": 0,
        },
        "promotion_detail": [],
    });
    if let (Some(t), "SUCCESS") = (&r.success_time, r.status.as_str()) {
        v["success_time"] = json!(t);
    }
    v
}

/// The refund as its notification carries it (encrypted).
pub(crate) fn notification_json(r: &SimRefund) -> serde_json::Value {
    let mut v = json!({
        "mchid": r.mchid,
        "out_trade_no": r.out_trade_no,
        "transaction_id": r.transaction_id,
        "out_refund_no": r.out_refund_no,
        "refund_id": r.refund_id,
        "refund_status": r.status,
        "user_received_account": RECEIVED_ACCOUNT,
        "amount": {
            "total": r.total,
            "refund": r.refund,
            "payer_total": r.payer_total,
            "payer_refund": r.refund,
        },
    });
    if let (Some(t), "SUCCESS") = (&r.success_time, r.status.as_str()) {
        v["success_time"] = json!(t);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> serde_json::Value {
        json!({
            "transaction_id": "4200000000000000000000000001",
            "out_refund_no": "RF-1|a*b@c_d",
            "reason": "商品已售完",
            "notify_url": "https://example.com/refund",
            "amount": { "refund": 50, "total": 100, "currency": "CNY" },
        })
    }

    fn check(v: &serde_json::Value) -> Result<RefundRequest, String> {
        parse_request(v.to_string().as_bytes()).map_err(|r| String::from_utf8(r.body).unwrap())
    }

    #[test]
    fn refund_requests_are_checked_field_by_field() {
        let r = check(&valid()).unwrap();
        assert_eq!(
            r.order,
            OrderRef::TransactionId("4200000000000000000000000001".to_owned())
        );
        assert_eq!((r.refund, r.total), (50, 100));
        let mut by_no = valid();
        by_no["transaction_id"] = json!(null);
        by_no["out_trade_no"] = json!("ORD1");
        by_no["amount"] = json!({ "refund": 100, "total": 100 });
        by_no.as_object_mut().unwrap().remove("notify_url");
        let r = check(&by_no).unwrap();
        assert_eq!(r.order, OrderRef::OutTradeNo("ORD1".to_owned()));
        assert_eq!(r.notify_url, None);
        let cases = [
            ("transaction_id", json!(null), "out_trade_no"),
            ("transaction_id", json!(42), "transaction_id"),
            ("out_refund_no", json!(null), "out_refund_no"),
            ("out_refund_no", json!("R 1"), "out_refund_no"),
            ("out_refund_no", json!("R".repeat(65)), "out_refund_no"),
            ("reason", json!("x".repeat(81)), "reason"),
            ("notify_url", json!("ftp://x/refund"), "notify_url"),
            ("notify_url", json!("https://x/refund?a=1"), "notify_url"),
            ("amount", json!(100), "amount"),
            (
                "amount",
                json!({ "refund": 0, "total": 100 }),
                "amount.refund",
            ),
            ("amount", json!({ "refund": 1 }), "amount.total"),
            (
                "amount",
                json!({ "refund": 1, "total": 1, "currency": "USD" }),
                "amount.currency",
            ),
            (
                "amount",
                json!({ "refund": 101, "total": 100 }),
                "amount.refund",
            ),
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
    fn success_time_only_while_successful() {
        let mut r = SimRefund {
            status: "ABNORMAL".to_owned(),
            success_time: Some("2026-11-26T18:00:00+08:00".to_owned()),
            ..SimRefund::default()
        };
        assert!(refund_json(&r).get("success_time").is_none());
        assert!(notification_json(&r).get("success_time").is_none());
        "SUCCESS".clone_into(&mut r.status);
        assert_eq!(refund_json(&r)["success_time"], "2026-11-26T18:00:00+08:00");
        assert_eq!(
            notification_json(&r)["success_time"],
            "2026-11-26T18:00:00+08:00"
        );
    }
}
