//! The admin API under `/sim/`: health, reset, stats, global faults, the
//! notification drop switch, per-order creation, inspection, payment
//! (which sends the payment notification), notification and faults, and
//! refunds: inspection, the outcome and delay of processing refunds, a
//! forced status (which sends the refund notification) and refunds recorded
//! directly; the trade bill's faults and text.
//!
//! It exists so that tests and the demo can drive the in-memory orders and
//! inject faults over HTTP. It is the server side of the typed client in the
//! `admin` module.

use std::time::{Duration, Instant};

use rand::Rng;
use serde::Deserialize;
use serde_json::json;

use crate::api::{percent_decode, transaction_json};
use crate::http::Request as Incoming;
use crate::model::{BillFaults, Faults, Order, SimRefund};
use crate::notify::{self, Task};
use crate::refund::{self, FINAL_STATUSES};
use crate::server::{Reply, Shared, State};
use crate::tradebill;

/// Body of `PUT /sim/notifications`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotificationSwitch {
    drop: bool,
}

/// Body of `PUT /sim/refunds/outcome`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundOutcome {
    /// Final status of refunds without their own outcome.
    outcome: Option<String>,
    /// How long refunds created from now on stay `PROCESSING`.
    delay_ms: Option<u64>,
}

/// Body of `PUT /sim/refunds/{out_refund_no}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundChange {
    /// Force this status now.
    status: Option<String>,
    /// The final status this refund takes when its delay is over.
    outcome: Option<String>,
}

pub(crate) fn admin(shared: &Shared, req: &Incoming) -> Reply {
    let path = req.url.split_once('?').map_or(req.url.as_str(), |(p, _)| p);
    let segments: Vec<&str> = path.trim_start_matches("/sim/").split('/').collect();
    let method = req.method.as_str();
    match (method, segments.as_slice()) {
        ("GET", ["health"]) => Reply::json(200, &json!({ "status": "ok" })),
        ("POST", ["reset"]) => {
            *shared.state() = State::default();
            shared.notifier.clear();
            Reply::empty(204)
        }
        ("PUT", ["notifications"]) => match parse::<NotificationSwitch>(&req.body) {
            Ok(s) => {
                shared.state().drop_notifications = s.drop;
                Reply::empty(204)
            }
            Err(r) => r,
        },
        ("GET", ["stats"]) => Reply::json(200, &json!(shared.state().stats)),
        ("PUT", ["faults"]) => match parse::<Faults>(&req.body) {
            Ok(f) => {
                shared.state().global_faults = Some(f);
                Reply::empty(204)
            }
            Err(r) => r,
        },
        ("DELETE", ["faults"]) => {
            shared.state().global_faults = None;
            Reply::empty(204)
        }
        (_, ["orders", no, rest @ ..]) => {
            let no = percent_decode(no);
            let (reply, job) = admin_order(shared, method, &no, rest, &req.body);
            // Queued after the state lock is released.
            if let Some(job) = job {
                shared.notifier.enqueue(job, Instant::now());
            }
            reply
        }
        ("PUT", ["bill", "faults"]) => match parse::<BillFaults>(&req.body) {
            Ok(f) => {
                shared.state().bill_faults = f;
                Reply::empty(204)
            }
            Err(r) => r,
        },
        ("GET", ["bill", date]) => bill_text(shared, &percent_decode(date)),
        (_, ["refunds", rest @ ..]) => {
            let mut state = shared.state();
            // Every due refund is settled first, as any read does.
            let mut tasks = refund::settle_all_due(shared, &mut state);
            let reply = admin_refunds(shared, &mut state, method, rest, &req.body, &mut tasks);
            drop(state);
            for task in tasks {
                shared.notifier.enqueue(task, Instant::now());
            }
            reply
        }
        _ => Reply::error(404, "NOT_FOUND", "no such admin endpoint"),
    }
}

/// `GET /sim/bill/{date}`: the plain `ALL` text the API would serve for
/// that day now (any day, outside the 3 months too), 404
/// `NO_STATEMENT_EXIST` when no row falls on it.
fn bill_text(shared: &Shared, date: &str) -> Reply {
    let Some(date) = tradebill::parse_date(date) else {
        return Reply::error(400, "PARAM_ERROR", "the date must be YYYY-MM-DD");
    };
    let mut tasks = Vec::new();
    let text = tradebill::bill_text(shared, &mut shared.state(), date, &mut tasks);
    for task in tasks {
        shared.notifier.enqueue(task, Instant::now());
    }
    match text {
        Some(text) => Reply {
            status: 200,
            body: text.into_bytes(),
            headers: vec![(
                "Content-Type".to_owned(),
                "text/plain; charset=utf-8".to_owned(),
            )],
        },
        None => Reply::error(404, "NO_STATEMENT_EXIST", &format!("no trade on {date}")),
    }
}

fn not_found() -> Reply {
    Reply::error(404, "ORDER_NOT_EXIST", "no such order in the simulator")
}

fn no_such_refund() -> Reply {
    Reply::error(
        404,
        "RESOURCE_NOT_EXISTS",
        "no such refund in the simulator",
    )
}

fn check_final(outcome: Option<&str>) -> Result<(), Reply> {
    match outcome {
        Some(o) if !FINAL_STATUSES.contains(&o) => Err(Reply::error(
            400,
            "PARAM_ERROR",
            &format!("a refund ends SUCCESS, ABNORMAL or CLOSED, not {o}"),
        )),
        _ => Ok(()),
    }
}

/// `/sim/refunds/...`; notifications to send once the state is unlocked
/// go to `tasks`. `outcome` is taken before an `out_refund_no`: a refund
/// numbered `outcome` cannot be changed here.
fn admin_refunds(
    shared: &Shared,
    state: &mut State,
    method: &str,
    rest: &[&str],
    body: &[u8],
    tasks: &mut Vec<Task>,
) -> Reply {
    match (method, rest) {
        ("GET", []) => {
            let mut records: Vec<_> = state.refunds.values().collect();
            records.sort_by(|a, b| {
                (a.created, &a.refund.out_refund_no).cmp(&(b.created, &b.refund.out_refund_no))
            });
            let refunds: Vec<&SimRefund> = records.iter().map(|r| &r.refund).collect();
            Reply::json(200, &json!(refunds))
        }
        ("POST", []) => match parse::<SimRefund>(body) {
            Ok(r) => match refund::insert(shared, state, r) {
                Ok(r) => Reply::json(200, &json!(r)),
                Err(reply) => reply,
            },
            Err(r) => r,
        },
        ("PUT", ["outcome"]) => {
            let change = match parse::<RefundOutcome>(body) {
                Ok(c) => c,
                Err(r) => return r,
            };
            if let Err(r) = check_final(change.outcome.as_deref()) {
                return r;
            }
            if change.outcome.is_some() {
                state.refund_outcome = change.outcome;
            }
            if let Some(ms) = change.delay_ms {
                state.refund_delay = Some(Duration::from_millis(ms));
            }
            Reply::empty(204)
        }
        ("GET", [no]) => match state.refunds.get(&percent_decode(no)) {
            Some(r) => Reply::json(200, &json!(r.refund)),
            None => no_such_refund(),
        },
        ("PUT", [no]) => {
            let no = percent_decode(no);
            let change = match parse::<RefundChange>(body) {
                Ok(c) => c,
                Err(r) => return r,
            };
            if let Err(r) = check_final(change.outcome.as_deref()) {
                return r;
            }
            let status = change.status.as_deref();
            if status.is_some_and(|s| s != "PROCESSING" && !FINAL_STATUSES.contains(&s)) {
                return Reply::error(
                    400,
                    "PARAM_ERROR",
                    "status must be PROCESSING, SUCCESS, ABNORMAL or CLOSED",
                );
            }
            let Some(record) = state.refunds.get_mut(&no) else {
                return no_such_refund();
            };
            if change.outcome.is_some() {
                record.refund.outcome = change.outcome;
            }
            if let Some(status) = status {
                if let Some(task) = refund::force_status(shared, state, &no, status) {
                    tasks.push(task);
                }
            }
            match state.refunds.get(&no) {
                Some(r) => Reply::json(200, &json!(r.refund)),
                None => no_such_refund(),
            }
        }
        _ => Reply::error(404, "NOT_FOUND", "no such admin endpoint"),
    }
}

/// The answer, and the notification to send once the state is unlocked.
fn admin_order(
    shared: &Shared,
    method: &str,
    no: &str,
    rest: &[&str],
    body: &[u8],
) -> (Reply, Option<Task>) {
    let mut state = shared.state();
    let reply = match (method, rest) {
        ("GET", []) => match state.orders.get_mut(no) {
            Some(o) => {
                o.apply_time_expire();
                Reply::json(200, &json!(o))
            }
            None => not_found(),
        },
        ("PUT", []) => match parse::<Order>(body) {
            Ok(mut order) => {
                if let Some(old) = state.orders.get(no) {
                    order.queries = old.queries;
                    order.closes = old.closes;
                    order.prepays = old.prepays;
                    order.notify_attempts = old.notify_attempts;
                    order.notify_delivered = old.notify_delivered;
                }
                let reply = Reply::json(200, &json!(order));
                state.orders.insert(no.to_owned(), order);
                reply
            }
            Err(r) => r,
        },
        ("DELETE", []) => {
            state.orders.remove(no);
            Reply::empty(204)
        }
        ("POST", ["pay"]) => return pay(shared, &mut state, no),
        ("POST", ["notify"]) => return notify_again(shared, &mut state, no),
        ("PUT", ["faults"]) => {
            let faults = match parse::<Faults>(body) {
                Ok(f) => f,
                Err(r) => return (r, None),
            };
            match state.orders.get_mut(no) {
                Some(order) => {
                    order.faults = Some(faults);
                    Reply::empty(204)
                }
                None => not_found(),
            }
        }
        ("DELETE", ["faults"]) => {
            if let Some(order) = state.orders.get_mut(no) {
                order.faults = None;
            }
            Reply::empty(204)
        }
        _ => Reply::error(404, "NOT_FOUND", "no such admin endpoint"),
    };
    (reply, None)
}

/// "The user pays now", refused after `time_expire` as WeChat Pay does.
fn pay(shared: &Shared, state: &mut State, no: &str) -> (Reply, Option<Task>) {
    let Some(order) = state.orders.get_mut(no) else {
        return (not_found(), None);
    };
    order.apply_time_expire();
    if order.trade_state == "CLOSED" && order.time_expire_passed() {
        let message = format!(
            "time_expire {} has passed: WeChat Pay refuses the payment",
            order.time_expire.as_deref().unwrap_or_default()
        );
        return (Reply::error(409, "ORDER_CLOSED", &message), None);
    }
    if !matches!(
        order.trade_state.as_str(),
        "NOTPAY" | "USERPAYING" | "PAYERROR"
    ) {
        let message = format!("an order in {} cannot be paid", order.trade_state);
        return (Reply::error(409, "CONFLICT", &message), None);
    }
    "SUCCESS".clone_into(&mut order.trade_state);
    order.payer_total = Some(order.amount_total);
    let mut rng = rand::rng();
    order.transaction_id = Some(format!("42000{:023}", rng.random_range(0..10u128.pow(23))));
    order.success_time = Some(crate::notify::rfc3339_beijing(crate::server::unix_now()));
    let reply = Reply::json(200, &json!(order));
    (reply, notification(shared, state, no))
}

/// `POST /sim/orders/{no}/notify`: the payment notification once more (a
/// duplicate, as WeChat Pay sometimes sends).
fn notify_again(shared: &Shared, state: &mut State, no: &str) -> (Reply, Option<Task>) {
    let Some(order) = state.orders.get(no) else {
        return (not_found(), None);
    };
    if order.trade_state != "SUCCESS" || order.notify_url.is_none() {
        let message = "only a SUCCESS order with a notify_url has a notification to send";
        return (Reply::error(409, "CONFLICT", message), None);
    }
    (Reply::empty(202), notification(shared, state, no))
}

/// The payment notification for a paid order with a `notify_url`, unless a
/// drop switch is on (then counted as dropped).
fn notification(shared: &Shared, state: &mut State, no: &str) -> Option<Task> {
    let drop_all = state.drop_notifications;
    let order = state.orders.get(no)?;
    let url = order.notify_url.as_deref()?;
    if drop_all || order.drop_notification {
        state.stats.notifications_dropped += 1;
        log::info!("notification for {no} dropped as asked");
        return None;
    }
    let mchid = shared
        .config
        .mchid
        .as_deref()
        .unwrap_or(crate::DEFAULT_MCHID);
    let transaction = transaction_json(&shared.config, mchid, no, order);
    Some(notify::payment_task(shared, no, url, &transaction))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, "PARAM_ERROR", &format!("bad JSON: {e}")))
}
