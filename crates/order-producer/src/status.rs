//! `order-producer status`: what an operator wants to see at a glance.

use std::io::Write;

use broker::{AmqpUrl, Topology};
use domain::PgConnection;

/// Orders needing a human listed one per line (the count is always shown).
const NEEDS_HUMAN_SHOWN: i64 = 20;

/// Prints the report; returns false when part of it could not be read
/// (the rest is printed anyway).
pub fn print(
    out: &mut impl Write,
    db: &mut PgConnection,
    amqp_url: &AmqpUrl,
    topology: &Topology,
) -> anyhow::Result<bool> {
    let mut ok = true;
    writeln!(out, "queues on {amqp_url}:")?;
    match broker::connect(amqp_url).and_then(|mut c| {
        let depths = topology.depths(&mut c, amqp_url);
        let _ = c.close();
        depths
    }) {
        Ok(depths) => {
            for d in depths {
                if let Some((ready, consumers)) = d.state {
                    writeln!(
                        out,
                        "  {:<34} {ready:>8} ready  {consumers:>3} consumer(s)",
                        d.name
                    )?;
                } else {
                    ok = false;
                    writeln!(
                        out,
                        "  {:<34} MISSING (run `order-producer declare`)",
                        d.name
                    )?;
                }
            }
        }
        Err(e) => {
            ok = false;
            writeln!(out, "  unavailable: {e}")?;
        }
    }
    let counts = domain::count_by_status(db)?;
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    writeln!(out, "orders: {}", counts.join(", "))?;
    writeln!(
        out,
        "outbox backlog: {} unpublished",
        domain::unpublished_count(db)?
    )?;
    let refunds = domain::paid_after_close_count(db)?;
    writeln!(
        out,
        "paid after close (each refunded automatically): {refunds}"
    )?;
    print_refunds(out, db)?;
    let needs_human = domain::needs_human_count(db)?;
    writeln!(
        out,
        "needs a human (WeChat Pay's answer does not match the order): {needs_human}"
    )?;
    for n in domain::needs_human(db, NEEDS_HUMAN_SHOWN)? {
        writeln!(
            out,
            "  {}  {}  {}  since {}: {}",
            n.order_no,
            n.status,
            n.anomaly,
            n.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            n.detail
        )?;
    }
    if needs_human > NEEDS_HUMAN_SHOWN {
        writeln!(out, "  ... and {} more", needs_human - NEEDS_HUMAN_SHOWN)?;
    }
    writeln!(
        out,
        "stock (available + held by pending/paid orders = loaded):"
    )?;
    for b in domain::stock_balances(db)? {
        writeln!(
            out,
            "  {:<20} {:>8} + {:>8} = {:>8}  {}",
            b.code,
            b.stock,
            b.held,
            b.loaded,
            if b.is_conserved() {
                "ok"
            } else {
                "NOT CONSERVED"
            }
        )?;
        ok &= b.is_conserved();
    }
    Ok(ok)
}

/// Refunds by status, and those parked for a human with why.
fn print_refunds(out: &mut impl Write, db: &mut PgConnection) -> anyhow::Result<()> {
    let by_status: Vec<String> = domain::refund_counts(db)?
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    writeln!(
        out,
        "refunds: {}",
        if by_status.is_empty() {
            "none".to_owned()
        } else {
            by_status.join(", ")
        }
    )?;
    let parked_count = domain::refunds_needing_human_count(db)?;
    let parked = domain::refunds_needing_human(db, NEEDS_HUMAN_SHOWN)?;
    writeln!(out, "refunds that need a human: {parked_count}")?;
    for r in &parked {
        writeln!(
            out,
            "  {}  order {}  {}  {}  transaction {}: {}",
            r.out_refund_no,
            r.order_no,
            r.amount,
            r.status,
            r.transaction_id,
            r.needs_human.as_deref().unwrap_or("")
        )?;
    }
    if parked_count > NEEDS_HUMAN_SHOWN {
        writeln!(out, "  ... and {} more", parked_count - NEEDS_HUMAN_SHOWN)?;
    }
    Ok(())
}
