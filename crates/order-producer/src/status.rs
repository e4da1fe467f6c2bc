//! `order-producer status`: what an operator wants to see at a glance, as
//! text or (`--json`) for machines. The counts are the same
//! [`Snapshot`] the metrics gauges are set from; the lists (what needs a
//! human, stock balances) are added here.

use std::io::Write;

use broker::{AmqpUrl, Topology};
use chrono::{DateTime, SecondsFormat, Utc};
use domain::PgConnection;
use serde::Serialize;
use service::snapshot::Snapshot;

/// Orders (and refunds) needing a human listed one by one (the count is
/// always given).
const NEEDS_HUMAN_SHOWN: i64 = 20;

/// Everything `status` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// The oldest orders that need a human, at most 20.
    pub orders_needing_human: Vec<OrderNeedingHuman>,
    /// The oldest refunds parked for a human, at most 20.
    pub refunds_needing_human: Vec<RefundNeedingHuman>,
    pub stock: Vec<Stock>,
    /// False when a queue is missing, the broker could not be read, or
    /// stock is not conserved (the exit code is 1 then).
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct OrderNeedingHuman {
    pub order_no: String,
    pub status: &'static str,
    pub anomaly: &'static str,
    pub since: DateTime<Utc>,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct RefundNeedingHuman {
    pub out_refund_no: String,
    pub order_no: String,
    pub amount_fen: i64,
    pub status: &'static str,
    pub transaction_id: String,
    pub reason: String,
}

/// One SKU: available + held by pending and paid orders = loaded.
#[derive(Debug, Serialize)]
pub struct Stock {
    pub sku: String,
    pub available: i64,
    pub held: i64,
    pub loaded: i64,
    pub conserved: bool,
}

impl Report {
    /// Reads it all (the broker part through a connection of its own; its
    /// failure is reported, not fatal).
    pub fn gather(
        db: &mut PgConnection,
        amqp_url: &AmqpUrl,
        topology: &Topology,
    ) -> anyhow::Result<Self> {
        let snapshot = match broker::connect(amqp_url) {
            Ok(mut conn) => {
                let s = Snapshot::gather(db, Some((&mut conn, amqp_url)), topology);
                let _ = conn.close();
                s?
            }
            Err(e) => {
                let mut s = Snapshot::gather(db, None, topology)?;
                s.broker_error = Some(e.to_string());
                s
            }
        };
        let orders_needing_human = domain::needs_human(db, NEEDS_HUMAN_SHOWN)?
            .into_iter()
            .map(|n| OrderNeedingHuman {
                order_no: n.order_no.to_string(),
                status: n.status.as_str(),
                anomaly: n.anomaly.as_str(),
                since: n.since,
                detail: n.detail,
            })
            .collect();
        let refunds_needing_human = domain::refunds_needing_human(db, NEEDS_HUMAN_SHOWN)?
            .into_iter()
            .map(|r| RefundNeedingHuman {
                out_refund_no: r.out_refund_no,
                order_no: r.order_no.to_string(),
                amount_fen: r.amount.get(),
                status: r.status.as_str(),
                transaction_id: r.transaction_id,
                reason: r.needs_human.unwrap_or_default(),
            })
            .collect();
        let stock: Vec<Stock> = domain::stock_balances(db)?
            .into_iter()
            .map(|b| Stock {
                conserved: b.is_conserved(),
                sku: b.code,
                available: b.stock,
                held: b.held,
                loaded: b.loaded,
            })
            .collect();
        let ok = snapshot.broker_error.is_none()
            && snapshot.queues.iter().all(|q| q.exists)
            && stock.iter().all(|s| s.conserved);
        Ok(Self {
            snapshot,
            orders_needing_human,
            refunds_needing_human,
            stock,
            ok,
        })
    }

    /// One JSON object (the [`Report`]'s fields) and a newline.
    pub fn write_json(&self, out: &mut impl Write) -> anyhow::Result<()> {
        serde_json::to_writer_pretty(&mut *out, self)?;
        writeln!(out)?;
        Ok(())
    }

    /// The report for a person to read.
    pub fn write_text(&self, out: &mut impl Write, amqp_url: &AmqpUrl) -> anyhow::Result<()> {
        let s = &self.snapshot;
        writeln!(out, "queues on {amqp_url}:")?;
        if let Some(e) = &s.broker_error {
            writeln!(out, "  unavailable: {e}")?;
        }
        for q in &s.queues {
            if q.exists {
                writeln!(
                    out,
                    "  {:<34} {:>8} ready  {:>3} consumer(s)",
                    q.name, q.messages, q.consumers
                )?;
            } else {
                writeln!(
                    out,
                    "  {:<34} MISSING (run `order-producer declare`)",
                    q.name
                )?;
            }
        }
        self.write_counts(out)?;
        self.write_refunds_and_needs_human(out)?;
        writeln!(
            out,
            "stock (available + held by pending/paid orders = loaded):"
        )?;
        for b in &self.stock {
            writeln!(
                out,
                "  {:<20} {:>8} + {:>8} = {:>8}  {}",
                b.sku,
                b.available,
                b.held,
                b.loaded,
                if b.conserved { "ok" } else { "NOT CONSERVED" }
            )?;
        }
        Ok(())
    }

    /// Orders by status, the outbox, what is overdue.
    fn write_counts(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let s = &self.snapshot;
        let counts: Vec<String> = domain::OrderStatus::ALL
            .iter()
            .map(|st| format!("{st} {}", s.orders_with(*st)))
            .collect();
        writeln!(out, "orders: {}", counts.join(", "))?;
        write!(out, "outbox backlog: {} unpublished", s.outbox.backlog)?;
        if let Some(oldest) = s.outbox.oldest {
            write!(
                out,
                ", the oldest written {} ({:.0} s ago)",
                oldest.to_rfc3339_opts(SecondsFormat::Secs, true),
                s.outbox.oldest_age_seconds
            )?;
        }
        writeln!(out)?;
        write!(
            out,
            "overdue (pending past the deadline, anomalies aside): {}",
            s.overdue.orders
        )?;
        if let Some(oldest) = s.overdue.oldest_deadline {
            write!(
                out,
                ", the oldest due {} ({:.0} s ago)",
                oldest.to_rfc3339_opts(SecondsFormat::Secs, true),
                s.overdue.oldest_seconds
            )?;
        }
        writeln!(out)?;
        Ok(())
    }

    /// Payments after close, refunds, and what needs a human, listed.
    fn write_refunds_and_needs_human(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let s = &self.snapshot;
        writeln!(
            out,
            "paid after close (each refunded automatically): {}",
            s.payments_after_close
        )?;
        let refunds = non_zero(&s.refunds);
        writeln!(
            out,
            "refunds: {}",
            if refunds.is_empty() {
                "none".to_owned()
            } else {
                refunds
            }
        )?;
        writeln!(out, "refunds that need a human: {}", s.needs_human.refunds)?;
        for r in &self.refunds_needing_human {
            writeln!(
                out,
                "  {}  order {}  {} fen  {}  transaction {}: {}",
                r.out_refund_no, r.order_no, r.amount_fen, r.status, r.transaction_id, r.reason
            )?;
        }
        more(out, s.needs_human.refunds)?;
        writeln!(
            out,
            "needs a human (WeChat Pay's answer does not match the order): {}",
            s.needs_human.orders
        )?;
        for n in &self.orders_needing_human {
            writeln!(
                out,
                "  {}  {}  {}  since {}: {}",
                n.order_no,
                n.status,
                n.anomaly,
                n.since.to_rfc3339_opts(SecondsFormat::Secs, true),
                n.detail
            )?;
        }
        more(out, s.needs_human.orders)?;
        let rec = &s.reconciliation;
        match rec.last_day {
            Some(day) => writeln!(out, "reconciled with WeChat Pay's trade bill up to: {day}")?,
            None => writeln!(
                out,
                "reconciled with WeChat Pay's trade bill up to: never (run `order-timeout-worker reconcile`)"
            )?,
        }
        if let Some(f) = &rec.last_failure {
            writeln!(
                out,
                "  the last run ({}, {}) failed: {}",
                f.date,
                f.at.to_rfc3339_opts(SecondsFormat::Secs, true),
                f.error
            )?;
        }
        let open = non_zero(&rec.open_discrepancies);
        writeln!(
            out,
            "open discrepancies with the bill: {}{}",
            rec.open(),
            if open.is_empty() {
                String::new()
            } else {
                format!(" ({open})")
            }
        )?;
        if s.needs_human.orders + s.needs_human.refunds + rec.open() > 0 {
            writeln!(
                out,
                "  (decide with `order-producer cases`: both sides and the commands that apply)"
            )?;
        }
        Ok(())
    }
}

/// `name n, name n` for the counts above zero; empty when none is.
fn non_zero(counts: &std::collections::BTreeMap<&'static str, i64>) -> String {
    counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn more(out: &mut impl Write, total: i64) -> std::io::Result<()> {
    if total > NEEDS_HUMAN_SHOWN {
        writeln!(out, "  ... and {} more", total - NEEDS_HUMAN_SHOWN)?;
    }
    Ok(())
}

/// Prints the text report; returns false when part of it could not be read
/// or something is wrong (a queue missing, stock not conserved).
pub fn print(
    out: &mut impl Write,
    db: &mut PgConnection,
    amqp_url: &AmqpUrl,
    topology: &Topology,
) -> anyhow::Result<bool> {
    let report = Report::gather(db, amqp_url, topology)?;
    report.write_text(out, amqp_url)?;
    Ok(report.ok)
}
