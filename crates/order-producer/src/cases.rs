//! `order-producer cases`: everything that waits for a human, and one
//! command per decision.
//!
//! Listing reads the store (orders with an anomaly, refunds parked for a
//! human) and the parking queue. Each decision goes through `domain` in one
//! transaction with the invariants of the automatic paths and a `decision`
//! event naming the operator and the reason; what it rests on comes from
//! WeChat Pay, asked at that moment, never from the operator's word alone:
//!
//! * `accept` / `refund` an order whose payment did not match: WeChat Pay
//!   must report the order paid (`SUCCESS`) with every field a payment
//!   needs; the payment is then recorded as reported and the order paid, or
//!   recorded as one to give back with its full refund queued and the order
//!   closed, stock back;
//! * `recheck` an order: the worker's own code path (`service::settle`);
//! * `retry-refund` a refund WeChat Pay refused: asked again at once with
//!   its fixed `out_refund_no` (`service::refund`);
//! * `refund-done` a refund settled in the merchant platform: recorded
//!   succeeded only when WeChat Pay, asked, reports it `SUCCESS` for its
//!   amount;
//! * `replay` / `drop` the parked messages of one order.
//!
//! A decision that does not apply (unknown, already decided, the wrong
//! kind of case) is refused with `StoreError::Refused` (exit 2) and changes
//! nothing; run twice, the second run is refused as already decided.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use domain::{Decision, OrderNo, PgConnection, StoreError};
use payment_client::{QueryOutcome, TradeState};
use serde::Serialize;
use service::refund::{RefundStep, Refunder, REFUND_LEASE};
use service::settle::{Settler, Trigger};
use service::{BrokerArgs, DatabaseArgs, PaymentArgs, UsageError};

use crate::require_schema;

/// `order-producer cases [--json]` and its decisions.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CasesArgs {
    #[command(subcommand)]
    pub action: Option<CaseCommand>,
    /// One JSON object instead of text (the list only).
    #[arg(long)]
    pub json: bool,
    /// Show at most this many cases of each kind (the counts are complete).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub limit: i64,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// One decision on one case.
#[derive(Debug, Subcommand)]
pub enum CaseCommand {
    /// An order whose payment did not match: the payment is genuine and
    /// right. Asks WeChat Pay; when it reports the order paid (SUCCESS, with
    /// a transaction id, an amount in CNY and a success time), records that
    /// payment as reported and marks the order paid, in one transaction.
    Accept(OrderDecision),
    /// An order whose payment did not match: give the payment back. Asks
    /// WeChat Pay; when it reports the order paid, records the payment as
    /// one to refund, queues its full refund (the worker's refund loop asks
    /// WeChat Pay, with a fixed `out_refund_no`) and, when the order is
    /// still pending, closes it and gives its stock back, in one transaction.
    Refund(OrderDecision),
    /// An order that needs a human: ask WeChat Pay again and settle it as
    /// the worker would (paid, closed, or still a case). Exit 0 when it is
    /// settled, 1 when it is not.
    Recheck(OrderDecision),
    /// A refund WeChat Pay refused (`NOT_ENOUGH`, ...): ask again now, with
    /// the same `out_refund_no`, after fixing the cause (topping up the
    /// balance). Exit 0 when WeChat Pay took it, 1 when not (the refund
    /// then waits for the worker or a human again, as the answer says).
    RetryRefund(RefundDecision),
    /// A refund that needs a human and was settled through the merchant
    /// platform (the abnormal-refund flow): record it succeeded. Asks
    /// WeChat Pay; refused unless it reports this refund SUCCESS for its
    /// amount.
    RefundDone(RefundCheck),
    /// Send the parked message(s) of one order back to the worker, with a
    /// fresh attempt count (fix the cause first); a recheck stays a recheck.
    Replay(ParkedDecision),
    /// Take the parked message(s) of one order out for good. A pending
    /// order is still settled by the worker's sweep once it is overdue.
    Drop(ParkedDecision),
    /// A discrepancy between WeChat Pay's trade bill and the store
    /// (`order-timeout-worker reconcile`), looked into and settled outside
    /// this system (or found to be right): mark it resolved. Changes no
    /// money here; the decision is kept on the discrepancy and, when it
    /// names an order here, in that order's events.
    Resolve(DiscrepancyDecision),
}

#[derive(Debug, Args)]
pub struct DiscrepancyDecision {
    /// The discrepancy's number (`cases` lists it; `#12` or `12`).
    #[arg(value_parser = parse_discrepancy_id)]
    pub id: i64,
    #[command(flatten)]
    pub who: Who,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

fn parse_discrepancy_id(s: &str) -> Result<i64, String> {
    s.trim_start_matches('#')
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("expected a discrepancy number such as 12 or #12, got {s:?}"))
}

/// Who decides and why.
#[derive(Debug, Args)]
pub struct Who {
    /// Why: written into the order's `decision` event. Required.
    #[arg(long, required = true)]
    pub reason: String,
    /// Who decides (default: the OS user: $USER, $LOGNAME, or the name of
    /// this process's uid).
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
}

impl Who {
    /// The decision, or bad usage (exit 2) naming what is wrong.
    fn decision(&self) -> Result<Decision, UsageError> {
        let by = match &self.by {
            Some(by) => by.clone(),
            None => os_user().ok_or_else(|| {
                UsageError(
                    "no operator name: give --by NAME (neither $USER, $LOGNAME nor /etc/passwd names this process's user)"
                        .into(),
                )
            })?,
        };
        Decision::new(&by, &self.reason).map_err(|e| UsageError(e.to_string()))
    }
}

/// The OS user running this: `$USER`, else `$LOGNAME`, else the name
/// `/etc/passwd` gives this process's uid (a root shell started without a
/// login may have neither variable).
fn os_user() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let named = |v: &str| std::env::var(v).ok().filter(|s| !s.trim().is_empty());
    named("USER").or_else(|| named("LOGNAME")).or_else(|| {
        let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
        std::fs::read_to_string("/etc/passwd")
            .ok()?
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == uid)
            .map(|f| f[0].to_owned())
            .filter(|n| !n.is_empty())
    })
}

#[derive(Debug, Args)]
pub struct OrderDecision {
    /// The order number.
    #[arg(value_parser = parse_order_no)]
    pub order_no: OrderNo,
    #[command(flatten)]
    pub who: Who,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub payment: PaymentArgs,
}

#[derive(Debug, Args)]
pub struct RefundDecision {
    /// The refund's `out_refund_no` (`cases` lists it).
    pub out_refund_no: String,
    #[command(flatten)]
    pub who: Who,
    /// Where WeChat Pay sends the refund's notification (the front door's
    /// `/wechatpay/notify/refund`, public https), as the worker sends it.
    #[arg(long, env = "WECHATPAY_REFUND_NOTIFY_URL")]
    pub wechatpay_refund_notify_url: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub payment: PaymentArgs,
}

#[derive(Debug, Args)]
pub struct RefundCheck {
    /// The refund's `out_refund_no` (`cases` lists it).
    pub out_refund_no: String,
    #[command(flatten)]
    pub who: Who,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub payment: PaymentArgs,
}

#[derive(Debug, Args)]
pub struct ParkedDecision {
    /// The order number.
    #[arg(value_parser = parse_order_no)]
    pub order_no: OrderNo,
    #[command(flatten)]
    pub who: Who,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

fn parse_order_no(s: &str) -> Result<OrderNo, String> {
    OrderNo::parse(s).map_err(|e| e.to_string())
}

/// Runs `cases` (the list) or one decision, writing what it did on `out`.
pub fn run(args: &CasesArgs, out: &mut impl Write) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let settled = match &args.action {
        None => return list(args, out).map(|()| ExitCode::SUCCESS),
        Some(CaseCommand::Accept(d)) => accept(d, out)?,
        Some(CaseCommand::Refund(d)) => refund(d, out)?,
        Some(CaseCommand::Recheck(d)) => recheck(d, out)?,
        Some(CaseCommand::RetryRefund(d)) => retry_refund(d, out)?,
        Some(CaseCommand::RefundDone(d)) => refund_done(d, out)?,
        Some(CaseCommand::Replay(d)) => take_parked(d, crate::parked::Take::Replay, out)?,
        Some(CaseCommand::Drop(d)) => take_parked(d, crate::parked::Take::Drop, out)?,
        Some(CaseCommand::Resolve(d)) => resolve(d, out)?,
    };
    Ok(if settled {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn connect(database: &DatabaseArgs) -> anyhow::Result<PgConnection> {
    let mut conn = domain::connect(&database.url())
        .context("is PostgreSQL running and DATABASE_URL right?")?;
    require_schema(&mut conn)?;
    Ok(conn)
}

fn client(payment: &PaymentArgs) -> anyhow::Result<payment_client::Client> {
    let config = payment.config().map_err(|e| UsageError(e.to_string()))?;
    Ok(payment_client::Client::new(config)
        .map_err(|e| UsageError(format!("WeChat Pay client not usable: {e}")))?)
}

/// What WeChat Pay reports for an order an operator is about to accept or
/// refund: the payment, complete, or a refusal saying why it cannot be
/// recorded (nothing changed). A failure to ask is an error (exit 1).
fn reported_payment(
    payment: &PaymentArgs,
    order_no: &OrderNo,
) -> anyhow::Result<domain::PaymentRecord> {
    let client = client(payment)?;
    let tx = match client
        .query_by_out_trade_no(order_no.as_str())
        .with_context(|| format!("could not ask WeChat Pay about order {order_no}; nothing changed, try again"))?
    {
        QueryOutcome::Found(tx) => tx,
        QueryOutcome::NotFound => {
            return Err(StoreError::Refused(format!(
                "WeChat Pay has no payment order {order_no} (ORDER_NOT_EXIST): there is no payment to record; \
                 `cases recheck {order_no}` settles the order as the worker would"
            ))
            .into())
        }
    };
    match tx.trade_state {
        TradeState::Success => {}
        TradeState::Refund => {
            return Err(StoreError::Refused(format!(
                "WeChat Pay reports order {order_no} REFUND: it was (partly) refunded outside this system, \
                 so how much to record and give back is not known here; nothing changed"
            ))
            .into())
        }
        state => {
            return Err(StoreError::Refused(format!(
                "WeChat Pay reports order {order_no} {state}, not paid: there is no payment to record; \
                 `cases recheck {order_no}` settles it as the worker would"
            ))
            .into())
        }
    }
    service::payments::reported_payment(&tx).map_err(|(anomaly, detail)| {
        StoreError::Refused(format!(
            "WeChat Pay's answer cannot be recorded as a payment ({anomaly}): {detail}; nothing changed"
        ))
        .into()
    })
}

fn accept(d: &OrderDecision, out: &mut impl Write) -> anyhow::Result<bool> {
    let decision = d.who.decision()?;
    let mut conn = connect(&d.database)?;
    let (status, anomaly) = domain::open_anomaly(&mut conn, &d.order_no)?;
    domain::acceptable(&d.order_no, status)?;
    let payment = reported_payment(&d.payment, &d.order_no)?;
    domain::accept_payment(&mut conn, &d.order_no, &payment, &decision)?;
    log::info!(
        order_no:% = d.order_no, outcome = "accepted";
        "order {}: payment {} of {} accepted by {} ({anomaly}); order paid",
        d.order_no,
        payment.transaction_id,
        payment.amount,
        decision.by()
    );
    writeln!(
        out,
        "{}: accepted: payment {} of {} recorded, order paid (was {anomaly}); decided by {}",
        d.order_no,
        payment.transaction_id,
        payment.amount,
        decision.by()
    )?;
    Ok(true)
}

fn refund(d: &OrderDecision, out: &mut impl Write) -> anyhow::Result<bool> {
    let decision = d.who.decision()?;
    let mut conn = connect(&d.database)?;
    let (status, anomaly) = domain::open_anomaly(&mut conn, &d.order_no)?;
    let payment = reported_payment(&d.payment, &d.order_no)?;
    let queued = domain::refund_payment(&mut conn, &d.order_no, &payment, &decision)?;
    log::info!(
        order_no:% = d.order_no, outcome = "refund_queued", out_refund_no = queued.out_refund_no.as_str();
        "order {}: payment {} of {} to be refunded as {} by {}'s decision ({anomaly})",
        d.order_no,
        payment.transaction_id,
        payment.amount,
        queued.out_refund_no,
        decision.by()
    );
    let order = if status == domain::OrderStatus::PendingPayment {
        format!(
            "order closed, {} unit(s) over {} line(s) back in stock",
            queued.units, queued.lines
        )
    } else {
        format!("order stays {status}")
    };
    writeln!(
        out,
        "{}: refund {} of {} queued (the worker asks WeChat Pay within WORKER_REFUND_INTERVAL); \
         {order} (was {anomaly}); decided by {}",
        d.order_no,
        queued.out_refund_no,
        payment.amount,
        decision.by()
    )?;
    Ok(true)
}

fn recheck(d: &OrderDecision, out: &mut impl Write) -> anyhow::Result<bool> {
    use service::settle::Settlement;
    let decision = d.who.decision()?;
    let url = d.database.url();
    let pool = domain::build_pool(&url, 2, Duration::from_secs(10))
        .context("is PostgreSQL running and DATABASE_URL right?")?;
    let mut conn = domain::checkout(&pool).context("no database connection")?;
    require_schema(&mut conn)?;
    let (status, anomaly) = domain::open_anomaly(&mut conn, &d.order_no)?;
    let client = Arc::new(client(&d.payment)?);
    let (label, what, resolved) = if status == domain::OrderStatus::Paid {
        // The worker never asks about a paid order: look at WeChat Pay's
        // answer here. It ends the case only when it is the payment
        // already recorded.
        recheck_paid(&mut conn, &client, &d.order_no)?
    } else {
        let settler = Settler::new(pool.clone(), client).with_close_batch(1);
        let s = settler.settle(&d.order_no, Trigger::Operator, Utc::now());
        let resolved = matches!(
            s,
            Settlement::Closed { .. }
                | Settlement::Compensated { .. }
                | Settlement::PaidAfterClose { .. }
                | Settlement::Rechecked { .. }
                | Settlement::AlreadySettled(_)
        );
        (s.outcome().to_string(), s.to_string(), resolved)
    };
    let what = format!("asked WeChat Pay again (was {anomaly}): {label}: {what}");
    // Settled: the case ends with the decision. A settlement that paid or
    // closed a pending order has cleared the anomaly already; then (and
    // when it is still a case) the decision is only written down.
    let note = |conn: &mut PgConnection| {
        domain::note_decision(conn, &d.order_no, "recheck", &what, &decision)
    };
    match resolved
        .then(|| domain::clear_anomaly(&mut conn, &d.order_no, "recheck", &what, &decision))
    {
        Some(Err(StoreError::Refused(_))) | None => note(&mut conn),
        Some(done) => done,
    }
    .context("the recheck ran, but its decision could not be written")?;
    log::info!(
        order_no:% = d.order_no, outcome = label.as_str();
        "order {}: recheck by {}: {what}",
        d.order_no,
        decision.by()
    );
    writeln!(out, "{}: {what}", d.order_no)?;
    Ok(resolved)
}

/// A paid order's recheck: WeChat Pay's answer, and whether it is the
/// payment recorded here (same transaction id and amount).
fn recheck_paid(
    conn: &mut PgConnection,
    client: &payment_client::Client,
    order_no: &OrderNo,
) -> anyhow::Result<(String, String, bool)> {
    let tx = match client.query_by_out_trade_no(order_no.as_str()) {
        Ok(QueryOutcome::Found(tx)) => tx,
        Ok(QueryOutcome::NotFound) => {
            return Ok((
                "needs_human".into(),
                "WeChat Pay has no payment order for this paid order (ORDER_NOT_EXIST): look in the merchant platform".into(),
                false,
            ))
        }
        Err(e) => {
            return Ok((
                "retry".into(),
                format!("could not ask WeChat Pay: {e}; try again"),
                false,
            ))
        }
    };
    let recorded = domain::payments_of(conn, order_no)?;
    let same = recorded.iter().any(|p| {
        Some(p.transaction_id.as_str()) == tx.transaction_id.as_deref()
            && tx.amount.as_ref().and_then(|a| a.total) == Some(p.amount.get())
    });
    Ok(
        if same && matches!(tx.trade_state, TradeState::Success | TradeState::Refund) {
            (
                "already_settled".into(),
                format!(
                    "WeChat Pay reports {} {}, the payment recorded here: nothing else to do",
                    tx.trade_state,
                    tx.transaction_id.unwrap_or_default()
                ),
                true,
            )
        } else {
            (
            "needs_human".into(),
            format!(
                "WeChat Pay reports {} {:?} for {:?} fen, which is not a payment recorded here; `cases refund` gives it back",
                tx.trade_state,
                tx.transaction_id,
                tx.amount.and_then(|a| a.total)
            ),
            false,
        )
        },
    )
}

fn retry_refund(d: &RefundDecision, out: &mut impl Write) -> anyhow::Result<bool> {
    let decision = d.who.decision()?;
    let url = d.database.url();
    let pool = domain::build_pool(&url, 2, Duration::from_secs(10))
        .context("is PostgreSQL running and DATABASE_URL right?")?;
    let mut conn = domain::checkout(&pool).context("no database connection")?;
    require_schema(&mut conn)?;
    // Settings first: a client that cannot be built changes nothing.
    // A transient failure is asked again by the worker after the default
    // ladder's first wait.
    let refunder = Refunder::new(
        Arc::new(Settler::new(pool.clone(), Arc::new(client(&d.payment)?))),
        broker::RetryLadder::default(),
    )
    .with_notify_url(d.wechatpay_refund_notify_url.clone());
    domain::reopen_refund(&mut conn, &d.out_refund_no, &decision)?;
    let claimed = domain::claim_refund(&mut conn, &d.out_refund_no, Utc::now(), REFUND_LEASE)?;
    let Some(refund) = claimed else {
        writeln!(
            out,
            "refund {}: back with the worker, which is asking WeChat Pay about it now; `cases` shows it if it needs a human again",
            d.out_refund_no
        )?;
        return Ok(true);
    };
    let step = refunder.refund_step(&refund);
    let (line, ok) = match &step {
        // Taken (in progress or done); ABNORMAL or CLOSED is a human's again.
        RefundStep::Now(status) => (
            format!("WeChat Pay now says {status}"),
            matches!(
                status,
                domain::RefundStatus::Processing | domain::RefundStatus::Succeeded
            ),
        ),
        RefundStep::Retry { delay, why } => (
            format!(
                "no answer from WeChat Pay ({why}); the worker asks again in {}s",
                delay.as_secs()
            ),
            false,
        ),
        RefundStep::Parked(why) => (format!("NEEDS A HUMAN again: {why}"), false),
    };
    log::info!(
        order_no:% = refund.order_no, out_refund_no = d.out_refund_no.as_str(), outcome = if ok { "refund_asked" } else { "refund_not_taken" };
        "refund {} of order {}: asked again by {}: {line}",
        d.out_refund_no,
        refund.order_no,
        decision.by()
    );
    writeln!(
        out,
        "refund {} of order {} ({}): asked again: {line}",
        d.out_refund_no, refund.order_no, refund.amount
    )?;
    Ok(ok)
}

fn refund_done(d: &RefundCheck, out: &mut impl Write) -> anyhow::Result<bool> {
    let decision = d.who.decision()?;
    let mut conn = connect(&d.database)?;
    let ours = domain::parked_refund(&mut conn, &d.out_refund_no)?;
    let client = client(&d.payment)?;
    let answer = client
        .query_refund(&d.out_refund_no)
        .with_context(|| {
            format!(
                "could not ask WeChat Pay about refund {}; nothing changed, try again",
                d.out_refund_no
            )
        })?
        .ok_or_else(|| {
            StoreError::Refused(format!(
                "WeChat Pay knows no refund {}: it was never made there; `cases retry-refund {}` asks for it",
                d.out_refund_no, d.out_refund_no
            ))
        })?;
    if answer.status != payment_client::RefundState::Success {
        return Err(StoreError::Refused(format!(
            "WeChat Pay reports refund {} {}, not SUCCESS: finish it in the merchant platform first \
             (Transactions -> Refunds, abnormal refund); nothing changed",
            d.out_refund_no,
            answer.status.as_str()
        ))
        .into());
    }
    service::payments::check_refund_amount(&ours, answer.refund_fen)
        .map_err(|why| StoreError::Refused(format!("{why}; nothing changed")))?;
    domain::confirm_refund(
        &mut conn,
        &d.out_refund_no,
        answer.refund_id.as_deref(),
        &decision,
    )?;
    log::info!(
        order_no:% = ours.order_no, out_refund_no = d.out_refund_no.as_str(), outcome = "succeeded";
        "refund {} of order {} confirmed SUCCESS at WeChat Pay by {}; recorded succeeded",
        d.out_refund_no,
        ours.order_no,
        decision.by()
    );
    writeln!(
        out,
        "refund {} of order {} ({}): WeChat Pay reports SUCCESS{}; recorded succeeded",
        d.out_refund_no,
        ours.order_no,
        ours.amount,
        answer
            .user_received_account
            .map(|a| format!(" (to {a})"))
            .unwrap_or_default()
    )?;
    Ok(true)
}

/// One case that waits for a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Case {
    /// `order` (a payment that did not match), `refund` (a refund WeChat
    /// Pay refused or reports `ABNORMAL`), `parked` (a message the worker
    /// gave up on), `discrepancy` (the trade bill and the store disagree).
    pub kind: &'static str,
    /// What the decision commands take: the order number, the refund's
    /// `out_refund_no`, or the discrepancy's number.
    pub id: String,
    pub order_no: Option<String>,
    /// Since when it waits (for a parked message: when it was parked, as
    /// its header says; absent when unreadable).
    pub since: Option<DateTime<Utc>>,
    /// The anomaly, the refund's status, or the parking reason code.
    pub reason: String,
    /// What this system holds.
    pub ours: String,
    /// What WeChat Pay (or the worker, for a parked message; the trade
    /// bill, for a discrepancy) said.
    pub theirs: String,
    /// What to look into before deciding (discrepancies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// The decisions that apply, as commands.
    pub actions: Vec<String>,
}

/// Everything that waits for a human, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Cases {
    pub cases: Vec<Case>,
    /// How many of each kind wait in all (the list may be cut at `--limit`).
    pub orders: i64,
    pub refunds: i64,
    pub parked: i64,
    /// Open discrepancies with WeChat Pay's trade bills.
    pub discrepancies: i64,
    /// The parked messages read, by the worker's reason code (after an
    /// outage, thousands share one: `order-producer parked --replay` sends
    /// them all back at once).
    pub parked_by_reason: std::collections::BTreeMap<String, usize>,
    /// Why the parking queue could not be read, if it could not (the
    /// other cases are still listed).
    pub parked_error: Option<String>,
}

fn action(verb: &str, id: &str) -> String {
    format!("order-producer cases {verb} {id} --reason \"...\"")
}

/// Reads every case (at most `limit` of each kind), oldest first.
pub fn gather(
    conn: &mut PgConnection,
    amqp_url: &broker::AmqpUrl,
    limit: i64,
) -> anyhow::Result<Cases> {
    let mut cases = Cases {
        orders: domain::needs_human_count(conn)?,
        refunds: domain::refunds_needing_human_count(conn)?,
        ..Cases::default()
    };
    for n in domain::needs_human(conn, limit)? {
        let order = domain::find_order(conn, &n.order_no)?;
        let no = n.order_no.to_string();
        let verbs: &[&str] = match (n.anomaly, n.status) {
            // The transaction is another order's: nothing to record here.
            (domain::Anomaly::DuplicateTransaction, _) => &["recheck"],
            (_, domain::OrderStatus::PendingPayment) => &["accept", "refund", "recheck"],
            // Closed (stock back) or paid already: only given back.
            _ => &["refund", "recheck"],
        };
        let actions = verbs.iter().map(|v| action(v, &no)).collect();
        cases.cases.push(Case {
            kind: "order",
            id: no.clone(),
            order_no: Some(no),
            since: Some(n.since),
            reason: n.anomaly.to_string(),
            ours: match order {
                Some(o) => format!(
                    "{}, total {}, deadline {}; nothing paid or closed, stock held",
                    o.status,
                    o.total,
                    o.deadline
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => n.status.to_string(),
            },
            // The event's detail starts with the anomaly's name: said once.
            theirs: n
                .detail
                .strip_prefix(&format!("{}: ", n.anomaly))
                .map_or_else(|| n.detail.clone(), str::to_owned),
            check: None,
            actions,
        });
    }
    for r in domain::refunds_needing_human(conn, limit)? {
        let actions = if r.status == domain::RefundStatus::Abnormal {
            vec![action("refund-done", &r.out_refund_no)]
        } else {
            vec![
                action("retry-refund", &r.out_refund_no),
                action("refund-done", &r.out_refund_no),
            ]
        };
        cases.cases.push(Case {
            kind: "refund",
            id: r.out_refund_no.clone(),
            order_no: Some(r.order_no.to_string()),
            since: Some(r.created_at),
            reason: r.status.to_string(),
            ours: format!(
                "refund {} of {} for transaction {}, {} attempt(s)",
                r.status, r.amount, r.transaction_id, r.attempts
            ),
            theirs: r.needs_human.unwrap_or_default(),
            check: None,
            actions,
        });
    }
    cases.discrepancies = domain::reconcile::open_discrepancy_counts(conn)?
        .iter()
        .map(|(_, n)| n)
        .sum();
    for d in domain::reconcile::open_discrepancies(conn, limit)? {
        let id = d.id.to_string();
        cases.cases.push(Case {
            kind: "discrepancy",
            id: id.clone(),
            order_no: Some(d.order_no.clone()),
            since: Some(d.found_at),
            reason: d.kind.to_string(),
            ours: d.ours,
            theirs: format!("bill of {}: {}", d.bill_date, d.theirs),
            check: Some(discrepancy_advice(d.kind, &d.order_no, d.known_order)),
            actions: vec![action("resolve", &id)],
        });
    }
    match parked_cases(conn, amqp_url, limit) {
        Ok((waiting, parked)) => {
            cases.parked = i64::from(waiting);
            for c in &parked {
                *cases.parked_by_reason.entry(c.reason.clone()).or_default() += 1;
            }
            cases.cases.extend(parked);
        }
        Err(e) => cases.parked_error = Some(format!("{e:#}")),
    }
    // Oldest first; those without a time last, in the order found.
    cases.cases.sort_by_key(|c| (c.since.is_none(), c.since));
    Ok(cases)
}

fn list(args: &CasesArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let mut conn = connect(&args.database)?;
    let cases = gather(&mut conn, &args.broker.url(), args.limit)?;
    if args.json {
        serde_json::to_writer(&mut *out, &cases)?;
        writeln!(out)?;
    } else {
        write_text(&cases, out)?;
    }
    Ok(())
}

/// The cases for a person to read.
pub fn write_text(cases: &Cases, out: &mut impl Write) -> std::io::Result<()> {
    let parked = match &cases.parked_error {
        Some(e) => format!("parked messages: unknown ({e})"),
        None => format!("{} parked message(s)", cases.parked),
    };
    writeln!(
        out,
        "{} order(s), {} refund(s), {} discrepancy(ies) with the trade bill, {parked} wait for a human",
        cases.orders, cases.refunds, cases.discrepancies
    )?;
    if !cases.parked_by_reason.is_empty() {
        let by: Vec<String> = cases
            .parked_by_reason
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        writeln!(
            out,
            "parked by reason: {} (once the cause is fixed, `order-producer parked --replay` sends every valid one back at once)",
            by.join(", ")
        )?;
    }
    for c in &cases.cases {
        let since = c.since.map_or_else(
            || "-".to_owned(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        writeln!(out)?;
        writeln!(out, "{} {}  {}  since {since}", c.kind, c.id, c.reason)?;
        if c.kind == "refund" || c.kind == "discrepancy" {
            if let Some(no) = &c.order_no {
                writeln!(out, "  {:<11} {no}", "order:")?;
            }
        }
        writeln!(out, "  {:<11} {}", "ours:", c.ours)?;
        let theirs = match c.kind {
            "parked" => "worker:",
            "discrepancy" => "bill:",
            _ => "WeChat Pay:",
        };
        writeln!(out, "  {theirs:<11} {}", c.theirs)?;
        if let Some(check) = &c.check {
            writeln!(out, "  {:<11} {check}", "check:")?;
        }
        for (i, a) in c.actions.iter().enumerate() {
            writeln!(out, "  {:<11} {a}", if i == 0 { "decide:" } else { "or:" })?;
        }
    }
    let shown = cases.cases.len() as i64;
    let all = cases.orders + cases.refunds + cases.discrepancies + cases.parked;
    if shown < all {
        writeln!(out)?;
        writeln!(out, "({shown} of {all} shown; raise --limit for more)")?;
    }
    Ok(())
}

/// The parked messages as cases (the waiting count, at most `limit`),
/// read without taking them away (`parked::list`). Poison (no order
/// number) is listed under its body size: it stays parked, nothing can be
/// decided about it here.
fn parked_cases(
    conn: &mut PgConnection,
    amqp_url: &broker::AmqpUrl,
    limit: i64,
) -> anyhow::Result<(u32, Vec<Case>)> {
    let list = crate::parked::list(amqp_url, u32::try_from(limit).unwrap_or(u32::MAX))?;
    let mut cases = Vec::new();
    for e in list.entries {
        let reason = if e.reason.is_empty() {
            "-".to_owned()
        } else {
            e.reason
        };
        let theirs = format!("{reason}: {}", e.detail.as_deref().unwrap_or("-"));
        let Some(no) = e.order_no else {
            cases.push(Case {
                kind: "parked",
                id: format!("(poison, {} bytes)", e.body_len),
                order_no: None,
                since: e.parked_at,
                reason,
                ours: "not a timeout message: it stays parked".into(),
                theirs,
                check: None,
                actions: Vec::new(),
            });
            continue;
        };
        let recheck = if e.recheck {
            " (recheck after close)"
        } else {
            ""
        };
        let attempts = e.attempt.map_or_else(|| "-".to_owned(), |a| a.to_string());
        let ours = match domain::find_order(conn, &no)? {
            Some(o) => format!("order {}{recheck}, {attempts} attempt(s)", o.status),
            None => format!("no such order here{recheck}"),
        };
        cases.push(Case {
            kind: "parked",
            id: no.to_string(),
            order_no: Some(no.to_string()),
            since: e.parked_at,
            reason,
            ours,
            theirs,
            check: None,
            actions: vec![action("replay", no.as_str()), action("drop", no.as_str())],
        });
    }
    Ok((list.waiting, cases))
}

/// `cases replay` / `cases drop`: the order's parked messages, all of them
/// (a message and its recheck copy), sent back or taken out; then the
/// decision event. Refused when none is parked for it, or no such order.
fn take_parked(
    d: &ParkedDecision,
    action: crate::parked::Take,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    use crate::parked::Take;
    let decision = d.who.decision()?;
    let mut conn = connect(&d.database)?;
    // A message about an order unknown here (parked as `unknown_order`)
    // can be taken too; its decision then has no order to be written on,
    // and is only logged.
    let order = domain::find_order(&mut conn, &d.order_no)?;
    let taken = crate::parked::take(&d.broker.url(), &d.order_no, action)?;
    if taken.count() == 0 {
        return Err(StoreError::Refused(format!(
            "nothing is parked for order {} (already replayed or dropped?): nothing changed",
            d.order_no
        ))
        .into());
    }
    let state = match &order {
        Some(o) if o.status == domain::OrderStatus::PendingPayment && action == Take::Drop => {
            format!("order {}: the sweep settles it once overdue", o.status)
        }
        Some(o) => format!("order {}", o.status),
        None => "no such order here".to_owned(),
    };
    let (verb, what) = match action {
        Take::Replay => (
            "replay",
            format!(
                "{} parked message(s) sent back to the worker ({state})",
                taken.replayed
            ),
        ),
        Take::Drop => (
            "drop",
            format!("{} parked message(s) dropped ({state})", taken.dropped),
        ),
    };
    if order.is_some() {
        // The broker has done it: the record must say so even if this fails.
        domain::note_decision(&mut conn, &d.order_no, verb, &what, &decision).with_context(
            || {
                format!(
                    "{what}, but the decision event could not be written; nothing to redo at the broker"
                )
            },
        )?;
    } else {
        log::warn!(
            order_no:% = d.order_no, outcome = verb;
            "order {} (unknown here): {what}; decided by {}: {}",
            d.order_no,
            decision.by(),
            decision.reason()
        );
    }
    log::info!(
        order_no:% = d.order_no, outcome = verb;
        "order {}: {what}; decided by {}",
        d.order_no,
        decision.by()
    );
    writeln!(
        out,
        "{}: {verb}: {what}; decided by {}",
        d.order_no,
        decision.by()
    )?;
    Ok(true)
}

/// What to look into for a discrepancy of `kind` before resolving it.
fn discrepancy_advice(
    kind: domain::reconcile::DiscrepancyKind,
    order_no: &str,
    known_order: bool,
) -> String {
    use domain::reconcile::DiscrepancyKind as K;
    match kind {
        K::PaymentNotInBill => format!(
            "find the transaction in the merchant platform (Transactions -> search by order {order_no}); \
             if WeChat Pay has no such payment, the record here is wrong: tell engineering before resolving"
        ),
        K::RefundNotInBill => "find the refund in the merchant platform (Refunds); if WeChat Pay has none, \
             `order-timeout-worker settle` and the refund loop show what happened to it"
            .into(),
        K::PaymentDiffers => format!(
            "compare the transaction in the merchant platform with order {order_no}; \
             a payment that is not the order's total is refunded there or accepted by finance"
        ),
        K::RefundDiffers => "compare the refund in the merchant platform with the one recorded here".into(),
        K::UnknownOrder if known_order => "the bill names an order number that was not an order here when the bill was read".into(),
        K::UnknownOrder => format!(
            "order {order_no} is not an order of this system: another system of the merchant, or a payment made outside it"
        ),
        K::UnknownRefund => format!(
            "a refund of order {order_no} that was not asked for here (made by hand in the merchant platform?): \
             confirm with finance who made it"
        ),
        K::UnexpectedRow => "a trade state this system does not reconcile: look at the row in the merchant platform".into(),
    }
}

/// `cases resolve ID`: the discrepancy ends with the decision.
fn resolve(d: &DiscrepancyDecision, out: &mut impl Write) -> anyhow::Result<bool> {
    let decision = d.who.decision()?;
    let mut conn = connect(&d.database)?;
    let r = domain::reconcile::resolve_discrepancy(&mut conn, d.id, &decision)?;
    log::info!(
        order_no = r.order_no.as_str(), outcome = "resolved";
        "discrepancy #{} ({}, bill of {}) resolved by {}",
        r.id,
        r.kind,
        r.bill_date,
        decision.by()
    );
    writeln!(
        out,
        "discrepancy #{} ({}, order {}, bill of {}): resolved; decided by {}",
        r.id,
        r.kind,
        r.order_no,
        r.bill_date,
        decision.by()
    )?;
    Ok(true)
}
