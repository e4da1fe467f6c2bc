//! Refunds of payments after close: the worker (and an operator's
//! `cases retry-refund`) asks WeChat Pay to refund them and follows each to
//! its end.
//!
//! The queue is the `refunds` table: every `--worker-refund-interval` each worker
//! claims the refunds that are due (a lease, so workers never act on one
//! refund at once and no transaction is held across a call), then, per
//! refund: `requested` -> `POST /v3/refund/domestic/refunds` with the
//! refund's fixed `out_refund_no` (a repeat after a crash or a timeout names
//! the same refund, so WeChat Pay answers it instead of refunding again);
//! `processing` -> `GET .../refunds/{out_refund_no}`. What WeChat Pay says
//! moves the refund forward (`domain::record_refund_status`); a transient
//! failure looks again one step further up the retry ladder; a permanent
//! one (and `ABNORMAL`, the buyer's account cannot take the money) parks the
//! refund for a human, with the reason. The front door's refund
//! notifications move a refund forward at once; this loop is what makes it
//! happen without them.

use std::sync::Arc;
use std::time::Duration;

use broker::RetryLadder;
use chrono::Utc;
use domain::{Refund, RefundStatus, RefundUpdate, StoreError};
use payment_client::RefundRequest;

use crate::settle::Settler;
use crate::Metrics;

/// How long a claimed refund is hidden from other workers: longer than a
/// request at its timeouts (and the backup domain), so that two workers
/// never act on one refund at once.
pub const REFUND_LEASE: Duration = Duration::from_mins(2);
/// Refunds claimed per pass.
const REFUND_BATCH: i64 = 100;
/// The reason sent with every refund.
const REASON: &str = "Order closed before the payment arrived";

/// What one refund's turn did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundStep {
    /// WeChat Pay now says this (and the record says so too).
    Now(RefundStatus),
    /// Something transient; asked again after the delay.
    Retry { delay: Duration, why: String },
    /// Parked for a human, with the reason.
    Parked(String),
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefundReport {
    pub claimed: usize,
    pub succeeded: usize,
    pub still_processing: usize,
    pub retried: usize,
    pub parked: usize,
}

/// Makes and follows refunds; cheap to clone and share between threads. It
/// shares the settler's database pool, WeChat Pay client and metrics, and
/// nothing else: a refund is no settlement.
#[derive(Debug, Clone)]
pub struct Refunder {
    settler: Arc<Settler>,
    /// The waits after failures, and between looks at a refund in progress.
    ladder: RetryLadder,
    /// Where WeChat Pay should send refund notifications (the front door's
    /// `/wechatpay/notify/refund`); without it refunds are followed by
    /// querying only.
    notify_url: Option<String>,
}

impl Refunder {
    #[must_use]
    pub fn new(settler: Arc<Settler>, ladder: RetryLadder) -> Self {
        Self {
            settler,
            ladder,
            notify_url: None,
        }
    }

    #[must_use]
    pub fn with_notify_url(mut self, url: Option<String>) -> Self {
        self.notify_url = url;
        self
    }

    fn metrics(&self) -> &Metrics {
        self.settler.metrics()
    }

    fn payments(&self) -> &payment_client::Client {
        self.settler.payments()
    }

    /// One pass over the refunds that are due (see the module docs).
    pub fn refund_due(&self) -> Result<RefundReport, StoreError> {
        let claimed = {
            let mut conn = domain::checkout(self.settler.pool())?;
            domain::claim_due_refunds(&mut conn, Utc::now(), REFUND_LEASE, REFUND_BATCH)?
        };
        let mut report = RefundReport {
            claimed: claimed.len(),
            ..RefundReport::default()
        };
        for refund in &claimed {
            let step = self.refund_step(refund);
            self.metrics().refund_step(
                if refund.status == RefundStatus::Requested {
                    "request"
                } else {
                    "query"
                },
                match &step {
                    RefundStep::Now(s) => s.as_str(),
                    RefundStep::Retry { .. } => "retry",
                    RefundStep::Parked(_) => "parked",
                },
            );
            match step {
                RefundStep::Now(RefundStatus::Succeeded | RefundStatus::Closed) => {
                    report.succeeded += 1;
                }
                RefundStep::Now(RefundStatus::Abnormal) | RefundStep::Parked(_) => {
                    report.parked += 1;
                }
                RefundStep::Now(_) => report.still_processing += 1,
                RefundStep::Retry { .. } => report.retried += 1,
            }
        }
        Ok(report)
    }

    /// One turn of one claimed refund: ask WeChat Pay, record the answer.
    #[must_use]
    pub fn refund_step(&self, refund: &Refund) -> RefundStep {
        let step_wait =
            |attempts: u32| -> Duration { self.ladder.step((attempts.max(1) - 1) as usize) };
        let request = || {
            self.payments().refund(&RefundRequest {
                transaction_id: refund.transaction_id.clone(),
                out_refund_no: refund.out_refund_no.clone(),
                reason: REASON.to_owned(),
                refund_fen: refund.amount.get(),
                total_fen: refund.amount.get(),
                notify_url: self.notify_url.clone(),
            })
        };
        let answer = match refund.status {
            RefundStatus::Requested => request(),
            _ => match self.payments().query_refund(&refund.out_refund_no) {
                Ok(Some(r)) => Ok(r),
                // WeChat Pay knows no such refund although we asked for it:
                // our request never arrived. Ask again, same out_refund_no.
                Ok(None) => request(),
                Err(e) => Err(e),
            },
        };
        let outcome = match answer {
            Ok(r) => r,
            Err(e) if e.is_transient() => {
                let delay = e
                    .retry_after()
                    .unwrap_or_default()
                    .max(step_wait(refund.attempts));
                let why = e.to_string();
                log::warn!(
                    out_refund_no = refund.out_refund_no.as_str(),
                    order_no:% = refund.order_no,
                    outcome = "retry",
                    attempt = refund.attempts;
                    "refund {} of order {}: {why}; trying again in {delay:?}",
                    refund.out_refund_no,
                    refund.order_no
                );
                let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                if let Err(e) = self
                    .with_conn(|c| domain::retry_refund_later(c, &refund.out_refund_no, at, &why))
                {
                    log::warn!(
                        out_refund_no = refund.out_refund_no.as_str(),
                        order_no:% = refund.order_no;
                        "refund {}: recording the retry failed: {e}",
                        refund.out_refund_no
                    );
                }
                return RefundStep::Retry { delay, why };
            }
            Err(e) => return self.park(refund, format!("WeChat Pay refused the refund: {e}")),
        };
        if let Err(why) = crate::payments::check_refund_amount(refund, outcome.refund_fen) {
            return self.park(refund, why.to_string());
        }
        let status = crate::payments::refund_status(outcome.status);
        // A refund in progress is asked about again up the ladder: the
        // first look soon, then less often (a bank card refund can take
        // days; its notification, when configured, finishes it sooner).
        self.record_step(
            refund,
            status,
            outcome.refund_id.as_deref(),
            step_wait(refund.attempts),
        )
    }

    /// Leaves the refund to a human, with the reason.
    fn park(&self, refund: &Refund, why: String) -> RefundStep {
        log::error!(
            out_refund_no = refund.out_refund_no.as_str(),
            order_no:% = refund.order_no,
            outcome = "parked",
            attempt = refund.attempts;
            "refund {} of order {} NEEDS A HUMAN: {why}",
            refund.out_refund_no,
            refund.order_no
        );
        if let Err(e) = self.with_conn(|c| domain::park_refund(c, &refund.out_refund_no, &why)) {
            log::warn!(
                out_refund_no = refund.out_refund_no.as_str(),
                order_no:% = refund.order_no;
                "refund {}: parking failed: {e}",
                refund.out_refund_no
            );
        }
        RefundStep::Parked(why)
    }

    fn record_step(
        &self,
        refund: &Refund,
        status: RefundStatus,
        refund_id: Option<&str>,
        next: Duration,
    ) -> RefundStep {
        let at = Utc::now() + chrono::Duration::from_std(next).unwrap_or_default();
        let recorded = self.with_conn(|c| {
            let update =
                domain::record_refund_status(c, &refund.out_refund_no, status, refund_id, at)?;
            if matches!(update, RefundUpdate::Unchanged { .. }) {
                // Not final yet: look again at `at` (the claim's lease is longer).
                domain::retry_refund_later(
                    c,
                    &refund.out_refund_no,
                    at,
                    "still processing at WeChat Pay",
                )?;
            }
            Ok(update)
        });
        match recorded {
            Ok(RefundUpdate::Moved { from }) => {
                let line = format!(
                    "refund {} of order {} ({}): {from} -> {status}",
                    refund.out_refund_no, refund.order_no, refund.amount
                );
                let (no, order_no) = (refund.out_refund_no.as_str(), &refund.order_no);
                let (outcome, attempt) = (status.as_str(), refund.attempts);
                if status == RefundStatus::Abnormal {
                    log::error!(
                        out_refund_no = no, order_no:% = order_no, outcome = outcome, attempt = attempt;
                        "{line}: NEEDS A HUMAN (the buyer's account cannot take it back)"
                    );
                } else {
                    log::info!(
                        out_refund_no = no, order_no:% = order_no, outcome = outcome, attempt = attempt;
                        "{line}"
                    );
                }
                RefundStep::Now(status)
            }
            Ok(RefundUpdate::Unchanged { current }) => RefundStep::Now(current),
            Ok(RefundUpdate::NotFound) => RefundStep::Parked("the refund row vanished".into()),
            Err(e) => {
                log::warn!(
                    out_refund_no = refund.out_refund_no.as_str(),
                    order_no:% = refund.order_no,
                    outcome = "retry",
                    attempt = refund.attempts;
                    "refund {}: recording {status} failed (asked again after the lease): {e}",
                    refund.out_refund_no
                );
                RefundStep::Retry {
                    delay: REFUND_LEASE,
                    why: e.to_string(),
                }
            }
        }
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut domain::PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = domain::checkout(self.settler.pool())?;
        f(&mut conn)
    }
}
