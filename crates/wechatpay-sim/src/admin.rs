//! A typed client for the simulator's admin API (`/sim/...`), for tests and
//! scripts: create and change orders, let the user pay, inject faults, hold
//! back notifications, inspect refunds and decide how they end, record
//! refunds made by hand, spoil and read trade bills.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{BillFaults, Faults, Order, SimRefund, Stats};

/// An admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("simulator admin API unreachable: {0}")]
    Http(#[from] ureq::Error),
    #[error("simulator admin API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("simulator admin API sent unexpected JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Talks to `/sim/...` of one simulator.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base_url: String,
    agent: ureq::Agent,
}

impl AdminClient {
    /// `base_url` as printed by the simulator, e.g. `http://127.0.0.1:8099`.
    #[must_use]
    pub fn new(base_url: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            agent,
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), AdminError> {
        let url = format!("{}/sim/{path}", self.base_url);
        let mut resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call()?,
            ("DELETE", _) => self.agent.delete(&url).call()?,
            ("PUT", body) => self
                .agent
                .put(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_default())?,
            (_, body) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_default())?,
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        if (200..300).contains(&status) {
            Ok((status, text))
        } else {
            Err(AdminError::Status { status, body: text })
        }
    }

    fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<T, AdminError> {
        let (_, text) = self.call(method, path, body)?;
        Ok(serde_json::from_str(&text)?)
    }

    fn to_body(value: &impl Serialize) -> Result<Option<String>, AdminError> {
        Ok(Some(serde_json::to_string(value)?))
    }

    /// Waits until the simulator answers, at most `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), AdminError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.call("GET", "health", None) {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Creates or replaces an order (its request counters are kept).
    pub fn put_order(&self, out_trade_no: &str, order: &Order) -> Result<Order, AdminError> {
        self.json(
            "PUT",
            &format!("orders/{}", encode(out_trade_no)),
            Self::to_body(order)?,
        )
    }

    /// Creates or replaces an order in `trade_state`, default amount.
    pub fn set_state(&self, out_trade_no: &str, trade_state: &str) -> Result<Order, AdminError> {
        self.put_order(out_trade_no, &Order::in_state(trade_state))
    }

    /// The order, or `None` when the simulator does not hold it.
    pub fn order(&self, out_trade_no: &str) -> Result<Option<Order>, AdminError> {
        match self.json("GET", &format!("orders/{}", encode(out_trade_no)), None) {
            Ok(o) => Ok(Some(o)),
            Err(AdminError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn delete_order(&self, out_trade_no: &str) -> Result<(), AdminError> {
        self.call("DELETE", &format!("orders/{}", encode(out_trade_no)), None)
            .map(drop)
    }

    /// "The user pays now": `SUCCESS`, a transaction id and a success time;
    /// when the order has a `notify_url`, its payment notification is sent
    /// in the background. Fails (409) unless the order is `NOTPAY`,
    /// `USERPAYING` or `PAYERROR`; with code `ORDER_CLOSED` when its
    /// `time_expire` passed.
    pub fn pay(&self, out_trade_no: &str) -> Result<Order, AdminError> {
        self.json(
            "POST",
            &format!("orders/{}/pay", encode(out_trade_no)),
            None,
        )
    }

    /// Sends the payment notification of a paid order once more, as a
    /// duplicate (new id, delivered and retried like the first). Fails (409)
    /// unless the order is `SUCCESS` and has a `notify_url`.
    pub fn notify_again(&self, out_trade_no: &str) -> Result<(), AdminError> {
        self.call(
            "POST",
            &format!("orders/{}/notify", encode(out_trade_no)),
            None,
        )
        .map(drop)
    }

    /// While on, no payment notification is sent (each is counted in
    /// `Stats::notifications_dropped`); queued retries still go out.
    pub fn set_drop_notifications(&self, on: bool) -> Result<(), AdminError> {
        self.call(
            "PUT",
            "notifications",
            Some(serde_json::json!({ "drop": on }).to_string()),
        )
        .map(drop)
    }

    /// Faults for API calls about this order (they win over global ones).
    pub fn set_order_faults(&self, out_trade_no: &str, faults: &Faults) -> Result<(), AdminError> {
        self.call(
            "PUT",
            &format!("orders/{}/faults", encode(out_trade_no)),
            Self::to_body(faults)?,
        )
        .map(drop)
    }

    pub fn clear_order_faults(&self, out_trade_no: &str) -> Result<(), AdminError> {
        self.call(
            "DELETE",
            &format!("orders/{}/faults", encode(out_trade_no)),
            None,
        )
        .map(drop)
    }

    /// Faults for every API call not covered by an order's own faults.
    pub fn set_global_faults(&self, faults: &Faults) -> Result<(), AdminError> {
        self.call("PUT", "faults", Self::to_body(faults)?).map(drop)
    }

    pub fn clear_global_faults(&self) -> Result<(), AdminError> {
        self.call("DELETE", "faults", None).map(drop)
    }

    /// Every refund, oldest first (due ones made final first).
    pub fn refunds(&self) -> Result<Vec<SimRefund>, AdminError> {
        self.json("GET", "refunds", None)
    }

    /// The refund, or `None` when the simulator does not hold it.
    pub fn refund(&self, out_refund_no: &str) -> Result<Option<SimRefund>, AdminError> {
        match self.json("GET", &format!("refunds/{}", encode(out_refund_no)), None) {
            Ok(r) => Ok(Some(r)),
            Err(AdminError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// How processing refunds end: `outcome` (`SUCCESS`, `ABNORMAL` or
    /// `CLOSED`) for those without their own, decided when each becomes
    /// final; and, when given, how long refunds created from now on stay
    /// `PROCESSING` (instead of `SimConfig::refund_delay`).
    pub fn set_refund_outcome(
        &self,
        outcome: &str,
        delay: Option<Duration>,
    ) -> Result<(), AdminError> {
        let mut body = serde_json::json!({ "outcome": outcome });
        if let Some(delay) = delay {
            body["delay_ms"] = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).into();
        }
        self.call("PUT", "refunds/outcome", Some(body.to_string()))
            .map(drop)
    }

    /// Forces the refund into `status` now: a final one (`SUCCESS`,
    /// `ABNORMAL`, `CLOSED`) sends its refund notification, even when the
    /// refund had that status already; `PROCESSING` holds it there until
    /// forced again. Fails (404) for an unknown refund, and for the
    /// `out_refund_no` `outcome`.
    pub fn set_refund_status(
        &self,
        out_refund_no: &str,
        status: &str,
    ) -> Result<SimRefund, AdminError> {
        self.json(
            "PUT",
            &format!("refunds/{}", encode(out_refund_no)),
            Some(serde_json::json!({ "status": status }).to_string()),
        )
    }

    /// The final status this processing refund takes when its delay is over,
    /// whatever the global outcome.
    pub fn override_refund_outcome(
        &self,
        out_refund_no: &str,
        outcome: &str,
    ) -> Result<SimRefund, AdminError> {
        self.json(
            "PUT",
            &format!("refunds/{}", encode(out_refund_no)),
            Some(serde_json::json!({ "outcome": outcome }).to_string()),
        )
    }

    /// Records a refund directly, as one made by hand in the merchant
    /// platform would be: no notification, no `Stats::refunds_created`.
    /// `create_time` is now when empty, `refund_id` generated when empty,
    /// `status` `SUCCESS` when empty (a `PROCESSING` one stays so until
    /// [`AdminClient::set_refund_status`]); an order held under its
    /// `out_trade_no` or `transaction_id` fills in the other, `total` and
    /// `currency`, and moves from `SUCCESS` to `REFUND`. Fails (400) for a
    /// bad field, (409) for an `out_refund_no` already used.
    pub fn insert_refund(&self, refund: &SimRefund) -> Result<SimRefund, AdminError> {
        self.json("POST", "refunds", Self::to_body(refund)?)
    }

    /// Faults of the trade bill endpoints; `BillFaults::default()` clears
    /// them, and so does [`AdminClient::reset`].
    pub fn set_bill_faults(&self, faults: &BillFaults) -> Result<(), AdminError> {
        self.call("PUT", "bill/faults", Self::to_body(faults)?)
            .map(drop)
    }

    /// The plain `ALL` text the simulator would serve for `date`
    /// (`YYYY-MM-DD`) now, `summary_disagrees` included; `None` when no row
    /// falls on that day. Any date: the API's 3-month window does not apply.
    pub fn bill_text(&self, date: &str) -> Result<Option<String>, AdminError> {
        match self.call("GET", &format!("bill/{}", encode(date)), None) {
            Ok((_, text)) => Ok(Some(text)),
            Err(AdminError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn stats(&self) -> Result<Stats, AdminError> {
        self.json("GET", "stats", None)
    }

    /// Forgets every order, refund, fault, setting and counter.
    pub fn reset(&self) -> Result<(), AdminError> {
        self.call("POST", "reset", None).map(drop)
    }
}

fn encode(out_trade_no: &str) -> String {
    out_trade_no
        .replace('%', "%25")
        .replace('|', "%7C")
        .replace('/', "%2F")
}
