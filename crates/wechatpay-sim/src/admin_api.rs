//! The admin API under `/sim/`: health, reset, stats, global faults, and
//! per-order creation, inspection, payment and faults.
//!
//! It exists so that tests and the demo can drive the in-memory orders and
//! inject faults over HTTP. It is the server side of the typed client in the
//! `admin` module.

use rand::Rng;
use serde_json::json;

use crate::api::percent_decode;
use crate::http::Request as Incoming;
use crate::model::{Faults, Order};
use crate::server::{Reply, Shared, State};

pub(crate) fn admin(shared: &Shared, req: &Incoming) -> Reply {
    let path = req.url.split_once('?').map_or(req.url.as_str(), |(p, _)| p);
    let segments: Vec<&str> = path.trim_start_matches("/sim/").split('/').collect();
    let method = req.method.as_str();
    match (method, segments.as_slice()) {
        ("GET", ["health"]) => Reply::json(200, &json!({ "status": "ok" })),
        ("POST", ["reset"]) => {
            *shared.state() = State::default();
            Reply::empty(204)
        }
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
            admin_order(shared, method, &percent_decode(no), rest, &req.body)
        }
        _ => Reply::error(404, "NOT_FOUND", "no such admin endpoint"),
    }
}

fn admin_order(shared: &Shared, method: &str, no: &str, rest: &[&str], body: &[u8]) -> Reply {
    let mut state = shared.state();
    match (method, rest) {
        ("GET", []) => match state.orders.get(no) {
            Some(o) => Reply::json(200, &json!(o)),
            None => Reply::error(404, "ORDER_NOT_EXIST", "no such order in the simulator"),
        },
        ("PUT", []) => match parse::<Order>(body) {
            Ok(mut order) => {
                if let Some(old) = state.orders.get(no) {
                    order.queries = old.queries;
                    order.closes = old.closes;
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
        ("POST", ["pay"]) => {
            let Some(order) = state.orders.get_mut(no) else {
                return Reply::error(404, "ORDER_NOT_EXIST", "no such order in the simulator");
            };
            if !matches!(
                order.trade_state.as_str(),
                "NOTPAY" | "USERPAYING" | "PAYERROR"
            ) {
                return Reply::error(
                    409,
                    "CONFLICT",
                    &format!("an order in {} cannot be paid", order.trade_state),
                );
            }
            "SUCCESS".clone_into(&mut order.trade_state);
            order.payer_total = Some(order.amount_total);
            let mut rng = rand::rng();
            order.transaction_id =
                Some(format!("42000{:023}", rng.random_range(0..10u128.pow(23))));
            order.success_time = Some(
                chrono::Utc::now()
                    .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset"))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            );
            Reply::json(200, &json!(order))
        }
        ("PUT", ["faults"]) => {
            let faults = match parse::<Faults>(body) {
                Ok(f) => f,
                Err(r) => return r,
            };
            match state.orders.get_mut(no) {
                Some(order) => {
                    order.faults = Some(faults);
                    Reply::empty(204)
                }
                None => Reply::error(404, "ORDER_NOT_EXIST", "no such order in the simulator"),
            }
        }
        ("DELETE", ["faults"]) => {
            if let Some(order) = state.orders.get_mut(no) {
                order.faults = None;
            }
            Reply::empty(204)
        }
        _ => Reply::error(404, "NOT_FOUND", "no such admin endpoint"),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, "PARAM_ERROR", &format!("bad JSON: {e}")))
}
