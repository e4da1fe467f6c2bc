//! `order-timeout-worker reconcile [--date YYYY-MM-DD]`: the command line
//! around [`service::reconcile`]: which day, how long to wait for the bill,
//! and the report (text, or `--json`).

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use clap::Args;
use domain::reconcile::beijing_day;
use service::reconcile::{yuan, Patience, ReconcileError, Report};
use service::{parse_duration, DatabaseArgs, PaymentArgs, UsageError};

/// How far back WeChat Pay keeps trade bills (three months).
const OLDEST_BILL_DAYS: i64 = 92;
/// How far back a run without `--date` looks for days missed or failed.
pub const CATCH_UP_DAYS: i64 = 7;

/// `reconcile` and the settings it reads.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The Beijing day (UTC+8) to reconcile, YYYY-MM-DD. At most three
    /// months back; today only against the simulator (WeChat Pay has no
    /// bill of a day that is not over). Default: yesterday in Beijing time
    /// (its bill is ready after 10:00 Beijing time), and before it every
    /// day of the last week that no run finished (missed or failed), once
    /// a first day has been reconciled.
    #[arg(long, value_parser = parse_date)]
    pub date: Option<NaiveDate>,
    /// Print each day's report as one JSON object on its own line instead
    /// of text.
    #[arg(long)]
    pub json: bool,
    /// How long to keep asking, with back-off, while WeChat Pay is still
    /// creating the bill (`STATEMENT_CREATING`) or cannot be reached; then
    /// the run fails (exit 1) and can be run again.
    #[arg(long, env = "RECONCILE_BILL_WAIT", default_value = "1h", value_parser = parse_duration)]
    pub reconcile_bill_wait: Duration,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub payment: PaymentArgs,
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| format!("expected a date as YYYY-MM-DD (a Beijing day): {e}"))
}

/// The day to reconcile: `--date`, checked, or yesterday in Beijing time.
fn bill_date(date: Option<NaiveDate>, now: chrono::DateTime<Utc>) -> Result<NaiveDate, String> {
    let today = beijing_day(now);
    let Some(date) = date else {
        return Ok(today.pred_opt().unwrap_or(today));
    };
    if date > today {
        return Err(format!(
            "--date {date} is in the future (today is {today} in Beijing time): its bill does not exist yet"
        ));
    }
    if (today - date).num_days() > OLDEST_BILL_DAYS {
        return Err(format!(
            "--date {date} is more than three months back: WeChat Pay keeps trade bills for three months"
        ));
    }
    Ok(date)
}

/// The days a run without `--date` reconciles, oldest first: those of the
/// [`CATCH_UP_DAYS`] before `yesterday` that no run finished, once some
/// day has been reconciled (before that, there is nothing to catch up
/// with), then `yesterday` itself.
pub fn days_to_reconcile(
    conn: &mut domain::PgConnection,
    yesterday: NaiveDate,
) -> Result<Vec<NaiveDate>, domain::StoreError> {
    let mut days = Vec::new();
    if let Some(first) = domain::reconcile::first_reconciled_day(conn)? {
        let from = first.max(yesterday - chrono::Duration::days(CATCH_UP_DAYS));
        if let Some(before) = yesterday.pred_opt() {
            if from <= before {
                days = domain::reconcile::days_without_run(conn, from, before)?;
            }
        }
    }
    days.push(yesterday);
    Ok(days)
}

/// Runs `reconcile`: exit 0 when every day is reconciled (discrepancies or
/// not: they wait in `order-producer cases`), 1 when one could not be (the
/// others are still run).
pub fn run(args: &ReconcileArgs, stop: &AtomicBool) -> anyhow::Result<ExitCode> {
    let date = bill_date(args.date, Utc::now()).map_err(UsageError)?;
    let config = args
        .payment
        .config()
        .map_err(|e| UsageError(e.to_string()))?;
    let client = payment_client::Client::new(config)
        .map_err(|e| UsageError(format!("WeChat Pay client not usable: {e}")))?;
    let database = args.database.url();
    let days = {
        let mut conn =
            domain::connect(&database).context("is PostgreSQL running and DATABASE_URL right?")?;
        let pending =
            domain::pending_migrations(&mut conn).context("could not read the schema version")?;
        if !pending.is_empty() {
            return Err(UsageError(format!(
                "the database schema is not migrated ({} pending); run `order-producer migrate` first",
                pending.len()
            ))
            .into());
        }
        if args.date.is_some() {
            vec![date]
        } else {
            days_to_reconcile(&mut conn, date).context("could not read the days reconciled")?
        }
    };
    let wait = args.reconcile_bill_wait;
    let patience = Patience {
        wait,
        first_delay: (wait / 10).clamp(Duration::from_millis(100), Duration::from_secs(30)),
    };
    let several = days.len() > 1;
    let mut failed = Vec::new();
    for day in days {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        match service::reconcile::reconcile_day(&database, &client, day, patience, stop) {
            Ok(report) => {
                let mut out = service::stdout();
                if args.json {
                    serde_json::to_writer(&mut out, &report)?;
                    writeln!(out)?;
                } else {
                    write_report(&mut out, &report)?;
                }
            }
            Err(e) => {
                let e = match e {
                    e @ ReconcileError::Bill { .. } => anyhow::Error::new(e)
                        .context("nothing was recorded from it; run the date again later"),
                    e => e.into(),
                };
                if several {
                    log::error!("reconcile {day}: {e:#}");
                }
                failed.push((day, e));
            }
        }
    }
    match failed.len() {
        0 => Ok(ExitCode::SUCCESS),
        1 => Err(failed.remove(0).1),
        n => Err(anyhow::anyhow!(
            "{n} days could not be reconciled: {}; run each again later (`--date`)",
            failed
                .iter()
                .map(|(d, _)| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The text report: what the bill held, what was matched, acted on,
/// found, deferred, and what to do next.
pub fn write_report(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    match r.outcome {
        "no_statement" => writeln!(
            out,
            "{}: WeChat Pay has no bill for this day (no trades)",
            r.date
        )?,
        _ => writeln!(
            out,
            "{}: bill of {} rows ({} payments, {} refunds; payments {}, refunds {}), SHA1 {}",
            r.date,
            r.bill_rows,
            r.payment_rows,
            r.refund_rows,
            yuan(r.payments_fen),
            yuan(r.refunds_fen),
            r.bill_sha1.as_deref().unwrap_or("-")
        )?,
    }
    writeln!(out, "  matched        {}", r.matched)?;
    writeln!(out, "  acted on       {}", r.acted.len())?;
    for a in r.acted.iter().take(LISTED) {
        writeln!(out, "    {}: {}", a.order_no, a.what)?;
    }
    more(out, r.acted.len())?;
    let new = r.new_discrepancies();
    writeln!(
        out,
        "  discrepancies  {new} new, {} found before",
        r.discrepancies.len() - new
    )?;
    for d in r.discrepancies.iter().take(LISTED) {
        writeln!(
            out,
            "    #{} {} {}{}: ours: {}; bill: {}",
            d.id,
            d.kind,
            d.order_no,
            if d.known { " (found before)" } else { "" },
            d.ours,
            d.bill
        )?;
    }
    more(out, r.discrepancies.len())?;
    if r.deferred > 0 {
        writeln!(
            out,
            "  deferred       {} (near midnight: decided when the neighbouring day is reconciled)",
            r.deferred
        )?;
    }
    if r.open_discrepancies > 0 {
        writeln!(
            out,
            "{} open discrepancies in all; each waits for a human: `order-producer cases`",
            r.open_discrepancies
        )?;
    }
    Ok(())
}

/// Lines listed per section of the text report (`--json` has them all).
const LISTED: usize = 50;

fn more(out: &mut impl Write, n: usize) -> std::io::Result<()> {
    if n > LISTED {
        writeln!(
            out,
            "    ... and {} more (`--json` lists them all)",
            n - LISTED
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> chrono::DateTime<Utc> {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_default_day_is_yesterday_in_beijing() {
        // 2026-12-06 23:30 UTC is 2026-12-07 07:30 in Beijing.
        let now = utc("2026-12-06T23:30:00Z");
        assert_eq!(bill_date(None, now).unwrap().to_string(), "2026-12-06");
        let now = utc("2026-12-06T15:30:00Z");
        assert_eq!(bill_date(None, now).unwrap().to_string(), "2026-12-05");
    }

    #[test]
    fn a_long_report_lists_the_first_fifty_of_each_section() {
        let r = Report {
            date: "2026-12-05".parse().unwrap(),
            outcome: "reconciled",
            run: 1,
            bill_sha1: Some("ab".into()),
            bill_rows: 60,
            payment_rows: 60,
            refund_rows: 0,
            payments_fen: 6000,
            refunds_fen: 0,
            matched: 0,
            acted: (0..60)
                .map(|i| service::reconcile::Acted {
                    order_no: format!("ORDER{i:04}"),
                    what: "recorded".into(),
                })
                .collect(),
            discrepancies: Vec::new(),
            deferred: 0,
            open_discrepancies: 0,
        };
        let mut out = Vec::new();
        write_report(&mut out, &r).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("acted on       60"), "{text}");
        assert!(text.contains("ORDER0049: recorded"), "{text}");
        assert!(!text.contains("ORDER0050"), "{text}");
        assert!(
            text.contains("... and 10 more (`--json` lists them all)"),
            "{text}"
        );
        assert!(
            text.contains("discrepancies  0 new, 0 found before"),
            "{text}"
        );
    }

    #[test]
    fn future_and_too_old_dates_are_refused() {
        let now = utc("2026-12-06T23:30:00Z");
        let day = |s: &str| Some(s.parse().unwrap());
        assert!(
            bill_date(day("2026-12-07"), now).is_ok(),
            "today in Beijing"
        );
        let e = bill_date(day("2026-12-08"), now).unwrap_err();
        assert!(e.contains("future"), "{e}");
        let e = bill_date(day("2026-08-01"), now).unwrap_err();
        assert!(e.contains("three months"), "{e}");
        assert!(parse_date("2026-13-01").is_err());
        assert!(parse_date("yesterday").is_err());
    }
}
