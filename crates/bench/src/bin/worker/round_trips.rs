//! PostgreSQL round trips and statements per settlement by outcome, counted
//! on the connections (`domain::pool::RoundTrips`) while the worker's own
//! `Settler` settles orders of each kind once, in this process, against the
//! simulator. Counts, not timings: the same on every machine. The worker
//! test `round_trips` holds them to these numbers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::pool::{RoundTrips, Sent};
use domain::testing::TestDb;
use domain::OrderNo;
use service::settle::{Settler, Trigger};
use wechatpay_sim::{ClientFiles, SimKeys, Simulator};

/// Orders of each kind settled (the first of each only warms the
/// connection's prepared statements and is not counted).
const PER_KIND: usize = 21;

/// Settles `PER_KIND` orders never created at WeChat Pay, `NOTPAY` there
/// and paid there, then a duplicate message and a due recheck of each
/// closed one; prints what each outcome sent, per settlement.
pub fn print(keys: &SimKeys, files: &ClientFiles) {
    let db = TestDb::new();
    let sim = Simulator::start("127.0.0.1:0", keys, wechatpay_sim::SimConfig::default()).unwrap();
    let n = 3 * PER_KIND;
    let nos: Vec<OrderNo> = super::overdue_orders(&mut db.conn(), n)
        .iter()
        .map(|no| OrderNo::parse(no).unwrap())
        .collect();
    let admin = sim.admin();
    let (untouched, rest) = nos.split_at(PER_KIND);
    let (unpaid, paid) = rest.split_at(PER_KIND);
    for no in unpaid.iter().chain(paid) {
        let _ = admin.set_state(no.as_str(), "NOTPAY").unwrap();
    }
    for no in paid {
        let _ = admin.pay(no.as_str()).unwrap();
    }

    let counter = RoundTrips::new();
    // One connection: every statement is prepared once, on the warm-up.
    let pool = domain::build_counted_pool(db.url(), 1, Duration::from_secs(5), Some(&counter))
        .expect("a pool");
    let config = payment_client::Config::new(
        wechatpay_sim::DEFAULT_MCHID,
        wechatpay_sim::DEFAULT_MERCHANT_SERIAL_NO,
        &files.merchant_key_file,
    )
    .with_public_key(
        wechatpay_sim::DEFAULT_PUBLIC_KEY_ID,
        &files.wechatpay_public_key_file,
    )
    .with_base_url(sim.base_url());
    let client = payment_client::Client::new(config).expect("a client");
    let settler = Settler::new(pool, Arc::new(client)).with_recheck_after(Duration::ZERO);
    let later = Utc::now() + chrono::Duration::hours(1);

    let mut by_outcome: BTreeMap<String, (u64, Sent)> = BTreeMap::new();
    let mut settle = |no: &OrderNo, trigger: Trigger, kind: &str, count: bool| {
        let before = counter.snapshot();
        let s = settler.settle(no, trigger, later);
        let sent = counter.snapshot() - before;
        if count {
            let e = by_outcome
                .entry(format!("{kind}: {}", s.outcome()))
                .or_default();
            e.0 += 1;
            e.1 = e.1 + sent;
        }
    };
    for (kind, orders) in [
        ("never created at WeChat Pay", untouched),
        ("NOTPAY at WeChat Pay", unpaid),
        ("paid at WeChat Pay", paid),
    ] {
        for (i, no) in orders.iter().enumerate() {
            settle(no, Trigger::Message, kind, i > 0);
        }
    }
    for (i, no) in untouched.iter().enumerate() {
        settle(no, Trigger::Message, "duplicate message", i > 0);
    }
    for (i, no) in untouched.iter().enumerate() {
        settle(no, Trigger::Recheck, "recheck after ORDER_NOT_EXIST", i > 0);
    }

    println!();
    println!(
        "PostgreSQL round trips and statements per settlement by outcome (counted on the \
         connection, {} of each after one warm-up; the same on every machine):",
        PER_KIND - 1
    );
    println!("| what the message found: outcome | settlements | statements | round trips | transactions (BEGIN/COMMIT) |");
    println!("| --- | --- | --- | --- | --- |");
    for (outcome, (count, sent)) in &by_outcome {
        let per = |v: u64| v as f64 / *count as f64;
        println!(
            "| {outcome} | {count} | {:.1} | {:.1} | {:.1} |",
            per(sent.statements),
            per(sent.round_trips),
            per(sent.transactions)
        );
    }
}
