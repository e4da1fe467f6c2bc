//! `order-producer cases` (issue 22): every decision on every kind of case,
//! in the right state and the wrong one, twice in a row, and by two
//! operators at once, against the real database and the simulator. After
//! every test: stock conserved, one refund per payment, and the events name
//! the operator and the reason.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use clap::Parser;
use domain::{Anomaly, OrderNo, OrderStatus, RefundStatus};
use order_producer::testing::FrontDoor;
use order_producer::Cli;
use service::refund::Refunder;
use service::settle::{Settlement, Settler, Trigger};

const TX: &str = "4200000000000000000000002201";

#[derive(Debug, Parser)]
struct Payment {
    #[command(flatten)]
    payment: service::PaymentArgs,
}

fn client(door: &FrontDoor) -> Arc<payment_client::Client> {
    let mut argv = vec!["x".to_owned()];
    argv.extend(door.wechatpay_args());
    let p = Payment::try_parse_from(argv).unwrap();
    Arc::new(payment_client::Client::new(p.payment.config().unwrap()).unwrap())
}

fn settler(door: &FrontDoor) -> Settler {
    Settler::new(door.db.pool(2), client(door)).with_close_batch(1)
}

/// WeChat Pay's view of an order paid with `fen` fen.
fn paid_at_sim(door: &FrontDoor, no: &OrderNo, fen: i64, tx: &str) {
    let _ = door
        .sim
        .admin()
        .put_order(
            no.as_str(),
            &wechatpay_sim::Order {
                trade_state: "SUCCESS".into(),
                amount_total: fen,
                transaction_id: Some(tx.into()),
                success_time: Some("2026-12-06T18:30:00+08:00".into()),
                ..Default::default()
            },
        )
        .unwrap();
}

/// An order of 2 TEA whose payment at WeChat Pay does not match: 1 fen
/// paid. Recorded as the worker records it (an `amount_mismatch` anomaly).
/// The order's payment window is 1 s, and it has passed: a case as the
/// worker leaves it.
fn mismatched(door: &FrontDoor, tx: &str) -> OrderNo {
    let a = door.call(
        "POST",
        "/v1/orders",
        Some(r#"{"items":[{"sku":"TEA","quantity":2}],"payment_window":"1s"}"#),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let no = OrderNo::parse(a.json()["order_no"].as_str().unwrap()).unwrap();
    paid_at_sim(door, &no, 1, tx);
    let order = domain::find_order(&mut door.db.conn(), &no)
        .unwrap()
        .unwrap();
    while Utc::now() <= order.deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = settler(door).settle(&no, Trigger::Sweep, Utc::now());
    assert!(
        matches!(
            s,
            Settlement::NeedsHuman {
                anomaly: Anomaly::AmountMismatch,
                ..
            }
        ),
        "{s:?}"
    );
    no
}

/// Runs `order-producer cases ARGS...` (with the test's database, broker
/// and, for decisions that ask WeChat Pay, the simulator's settings): the
/// exit code as the binary would give it, and what it printed.
fn cases(door: &FrontDoor, words: &[&str]) -> (u8, String) {
    let mut argv: Vec<String> = ["order-producer", "cases"]
        .iter()
        .chain(words)
        .map(|s| (*s).to_owned())
        .collect();
    argv.extend([
        "--database-url".into(),
        door.db.url().expose_secret().to_owned(),
    ]);
    match words.first().copied() {
        Some("accept" | "refund" | "recheck" | "retry-refund" | "refund-done") => {
            argv.extend(door.wechatpay_args());
        }
        Some("resolve") => {}
        _ => argv.extend([
            "--amqp-url".into(),
            door.vhost.url().expose_secret().to_owned(),
        ]),
    }
    let cli = Cli::try_parse_from(argv).unwrap();
    let order_producer::Command::Cases(cases) = &cli.command else {
        unreachable!()
    };
    let mut out = Vec::new();
    let code = match order_producer::cases::run(cases, &mut out) {
        Ok(c) if c == ExitCode::SUCCESS => 0,
        Ok(_) => 1,
        Err(e) => {
            out.extend(format!("error: {e:#}").into_bytes());
            service::exit_code(&e)
        }
    };
    (code, String::from_utf8(out).unwrap())
}

fn decide(door: &FrontDoor, verb: &str, id: &str, by: &str) -> (u8, String) {
    cases(
        door,
        &[verb, id, "--by", by, "--reason", "checked with the buyer"],
    )
}

/// What must hold after every test.
fn invariants(door: &FrontDoor) {
    let mut conn = door.db.conn();
    domain::testing::assert_stock_conserved(&mut conn);
    let refunds = door.sim.admin().refunds().unwrap();
    let mut txs: Vec<_> = refunds.iter().map(|r| r.transaction_id.clone()).collect();
    txs.sort();
    txs.dedup();
    assert_eq!(
        txs.len(),
        refunds.len(),
        "one refund per payment: {refunds:?}"
    );
}

fn tea_stock(door: &FrontDoor) -> u32 {
    domain::get_sku(&mut door.db.conn(), &domain::SkuCode::parse("TEA").unwrap())
        .unwrap()
        .unwrap()
        .stock
}

/// The order's state, for "nothing changed" assertions: status, anomaly,
/// payments, refunds and event count.
fn snapshot(door: &FrontDoor, no: &OrderNo) -> String {
    let mut conn = door.db.conn();
    let o = domain::find_order(&mut conn, no).unwrap().unwrap();
    format!(
        "{:?} {:?} {:?} {:?} {} stock {}",
        o.status,
        o.anomaly,
        domain::payments_of(&mut conn, no).unwrap(),
        domain::refunds_of(&mut conn, no).unwrap(),
        domain::order_events(&mut conn, no).unwrap().len(),
        tea_stock(door)
    )
}

fn decisions(door: &FrontDoor, no: &OrderNo) -> Vec<domain::OrderEvent> {
    domain::order_events(&mut door.db.conn(), no)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "decision")
        .collect()
}

#[test]
fn accept_records_the_payment_as_reported_and_a_second_run_is_refused() {
    let door = FrontDoor::start();
    let no = mismatched(&door, TX);
    let stock = tea_stock(&door);
    let (code, out) = decide(&door, "accept", no.as_str(), "alice");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("accepted"), "{out}");
    let mut conn = door.db.conn();
    let order = domain::find_order(&mut conn, &no).unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Paid);
    assert_eq!(order.anomaly, None);
    let payments = domain::payments_of(&mut conn, &no).unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(
        payments[0].amount.get(),
        1,
        "the amount WeChat Pay reported"
    );
    assert_eq!(payments[0].transaction_id.as_str(), TX);
    assert!(!payments[0].paid_after_close);
    assert_eq!(tea_stock(&door), stock, "sold stock stays sold");
    let d = decisions(&door, &no);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].actor.as_deref(), Some("alice"));
    assert!(d[0].detail.starts_with("accept:"), "{}", d[0].detail);
    assert!(
        d[0].detail.contains("checked with the buyer"),
        "{}",
        d[0].detail
    );

    let before = snapshot(&door, &no);
    let (code, out) = decide(&door, "accept", no.as_str(), "bob");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("already paid"), "{out}");
    let (code, out) = decide(&door, "refund", no.as_str(), "bob");
    assert_eq!(code, 2, "{out}");
    assert_eq!(
        snapshot(&door, &no),
        before,
        "a refused decision changed nothing"
    );
    invariants(&door);
}

#[test]
fn refund_closes_the_order_gives_stock_back_and_the_refund_loop_refunds_once() {
    let door = FrontDoor::start();
    let no = mismatched(&door, TX);
    let stock = tea_stock(&door);
    let (code, out) = decide(&door, "refund", no.as_str(), "alice");
    assert_eq!(code, 0, "{out}");
    let mut conn = door.db.conn();
    let order = domain::find_order(&mut conn, &no).unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Closed);
    assert_eq!(order.anomaly, None);
    assert_eq!(tea_stock(&door), stock + 2, "the order's 2 units are back");
    let payments = domain::payments_of(&mut conn, &no).unwrap();
    assert_eq!(payments.len(), 1);
    assert!(payments[0].paid_after_close, "a payment to give back");
    let refunds = domain::refunds_of(&mut conn, &no).unwrap();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount.get(), 1, "the full amount paid");
    assert!(out.contains(&refunds[0].out_refund_no), "{out}");

    // The worker's refund loop gives it back, once.
    let r = Refunder::new(
        Arc::new(settler(&door)),
        broker::RetryLadder::new(&[Duration::from_millis(50)]).unwrap(),
    );
    for _ in 0..50 {
        let _ = r.refund_due().unwrap();
        if domain::refunds_of(&mut conn, &no).unwrap()[0]
            .status
            .is_final()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        domain::refunds_of(&mut conn, &no).unwrap()[0].status,
        RefundStatus::Succeeded
    );
    let at_sim = door.sim.admin().refunds().unwrap();
    assert_eq!(at_sim.len(), 1);
    assert_eq!(at_sim[0].refund, 1);

    let before = snapshot(&door, &no);
    let (code, out) = decide(&door, "refund", no.as_str(), "alice");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("already closed"), "{out}");
    assert_eq!(snapshot(&door, &no), before);
    assert_eq!(decisions(&door, &no).len(), 1);
    invariants(&door);
}

#[test]
fn decisions_that_do_not_apply_are_refused_and_change_nothing() {
    let door = FrontDoor::start();
    // A pending order without an anomaly: the worker's, not a human's.
    let pending = door.order_tea(1);
    let before = snapshot(&door, &pending);
    for verb in ["accept", "refund", "recheck"] {
        let (code, out) = decide(&door, verb, pending.as_str(), "alice");
        assert_eq!(code, 2, "{verb}: {out}");
        assert!(out.contains("does not wait for a human"), "{verb}: {out}");
    }
    assert_eq!(snapshot(&door, &pending), before);
    // An unknown order.
    let (code, out) = decide(&door, "accept", "NOSUCHORDER1", "alice");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no order NOSUCHORDER1"), "{out}");
    // An unknown refund.
    for verb in ["retry-refund", "refund-done"] {
        let (code, out) = decide(&door, verb, "NOSUCHORDER1-R1", "alice");
        assert_eq!(code, 2, "{verb}: {out}");
        assert!(out.contains("no refund"), "{verb}: {out}");
    }
    // An anomaly, but WeChat Pay now says the order is not paid: accept and
    // refund have no payment to record.
    let no = mismatched(&door, TX);
    let _ = door.sim.admin().set_state(no.as_str(), "NOTPAY").unwrap();
    let before = snapshot(&door, &no);
    for verb in ["accept", "refund"] {
        let (code, out) = decide(&door, verb, no.as_str(), "alice");
        assert_eq!(code, 2, "{verb}: {out}");
        assert!(out.contains("NOTPAY"), "{verb}: {out}");
    }
    assert_eq!(snapshot(&door, &no), before);
    // Without a reason: bad usage, before anything is read.
    let argv = [
        "order-producer",
        "cases",
        "accept",
        no.as_str(),
        "--by",
        "x",
    ];
    assert!(Cli::try_parse_from(argv).is_err());
    let (code, out) = cases(
        &door,
        &["accept", no.as_str(), "--by", "x", "--reason", "  "],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--reason"), "{out}");
    let (code, out) = cases(
        &door,
        &["accept", no.as_str(), "--by", "x", "--reason", "two\nlines"],
    );
    assert_eq!(code, 2, "{out}");
    assert_eq!(snapshot(&door, &no), before);
    invariants(&door);
}

#[test]
fn two_operators_deciding_one_order_at_once_one_wins_the_other_is_told() {
    let door = Arc::new(FrontDoor::start());
    for round in 0..3 {
        let no = mismatched(&door, &format!("42000000000000000000000023{round:02}"));
        let stock = tea_stock(&door);
        let (a, b) = std::thread::scope(|s| {
            let d1 = Arc::clone(&door);
            let d2 = Arc::clone(&door);
            let n1 = no.clone();
            let n2 = no.clone();
            let a = s.spawn(move || decide(&d1, "accept", n1.as_str(), "alice"));
            let b = s.spawn(move || decide(&d2, "refund", n2.as_str(), "bob"));
            (a.join().unwrap(), b.join().unwrap())
        });
        let codes = [a.0, b.0];
        assert!(
            codes == [0, 2] || codes == [2, 0],
            "one wins, one is refused: {a:?} {b:?}"
        );
        let loser = if a.0 == 2 { &a.1 } else { &b.1 };
        assert!(loser.contains("already"), "{loser}");
        let order = domain::find_order(&mut door.db.conn(), &no)
            .unwrap()
            .unwrap();
        let d = decisions(&door, &no);
        assert_eq!(d.len(), 1, "one decision recorded");
        if a.0 == 0 {
            assert_eq!(order.status, OrderStatus::Paid);
            assert_eq!(tea_stock(&door), stock);
            assert_eq!(d[0].actor.as_deref(), Some("alice"));
        } else {
            assert_eq!(order.status, OrderStatus::Closed);
            assert_eq!(tea_stock(&door), stock + 2);
            assert_eq!(d[0].actor.as_deref(), Some("bob"));
        }
        assert_eq!(
            domain::payments_of(&mut door.db.conn(), &no).unwrap().len(),
            1
        );
    }
    invariants(&door);
}

#[test]
fn recheck_settles_as_the_worker_would_and_records_the_decision() {
    let door = FrontDoor::start();
    // WeChat Pay corrected its answer: the right amount. Settled as paid.
    let paid = mismatched(&door, TX);
    let total = domain::find_order(&mut door.db.conn(), &paid)
        .unwrap()
        .unwrap()
        .total
        .get();
    paid_at_sim(&door, &paid, total, TX);
    let (code, out) = decide(&door, "recheck", paid.as_str(), "carol");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("compensated") || out.contains("paid"), "{out}");
    let order = domain::find_order(&mut door.db.conn(), &paid)
        .unwrap()
        .unwrap();
    assert_eq!(order.status, OrderStatus::Paid);
    let d = decisions(&door, &paid);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].actor.as_deref(), Some("carol"));
    assert!(d[0].detail.starts_with("recheck:"), "{}", d[0].detail);
    // Run twice: refused, the case is closed.
    let (code, out) = decide(&door, "recheck", paid.as_str(), "carol");
    assert_eq!(code, 2, "{out}");

    // Still mismatched: stays a case (exit 1), the decision is recorded.
    let still = mismatched(&door, "4200000000000000000000002202");
    let (code, out) = decide(&door, "recheck", still.as_str(), "carol");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NEEDS A HUMAN"), "{out}");
    let order = domain::find_order(&mut door.db.conn(), &still)
        .unwrap()
        .unwrap();
    assert_eq!(order.anomaly, Some(Anomaly::AmountMismatch));
    assert_eq!(decisions(&door, &still).len(), 1);

    // WeChat Pay closed it meanwhile: closed here, stock back.
    let _ = door
        .sim
        .admin()
        .set_state(still.as_str(), "CLOSED")
        .unwrap();
    let stock = tea_stock(&door);
    let (code, out) = decide(&door, "recheck", still.as_str(), "carol");
    assert_eq!(code, 0, "{out}");
    assert_eq!(tea_stock(&door), stock + 2);
    invariants(&door);
}

/// A payment after close whose refund WeChat Pay refuses (403): parked for
/// a human. Returns the order and the refund's `out_refund_no`.
fn refused_refund(door: &FrontDoor) -> (OrderNo, String) {
    let no = mismatched(door, TX);
    let (code, out) = decide(door, "refund", no.as_str(), "alice");
    assert_eq!(code, 0, "{out}");
    door.sim
        .admin()
        .set_global_faults(&wechatpay_sim::Faults {
            status: Some(403),
            ..Default::default()
        })
        .unwrap();
    let _ = Refunder::new(Arc::new(settler(door)), broker::RetryLadder::default())
        .refund_due()
        .unwrap();
    door.sim.admin().clear_global_faults().unwrap();
    let r = domain::refunds_of(&mut door.db.conn(), &no)
        .unwrap()
        .remove(0);
    assert!(r.needs_human.is_some(), "{r:?}");
    (no, r.out_refund_no)
}

#[test]
fn retry_refund_asks_again_with_the_same_out_refund_no() {
    let door = FrontDoor::start();
    let (no, out_refund_no) = refused_refund(&door);
    // Listed, with the decisions that apply.
    let (code, out) = cases(&door, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("refund {out_refund_no}")), "{out}");
    assert!(
        out.contains(&format!("cases retry-refund {out_refund_no}")),
        "{out}"
    );

    let (code, out) = decide(&door, "retry-refund", &out_refund_no, "dave");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("asked again"), "{out}");
    let r = domain::refunds_of(&mut door.db.conn(), &no)
        .unwrap()
        .remove(0);
    assert_eq!(r.needs_human, None);
    assert!(
        matches!(r.status, RefundStatus::Processing | RefundStatus::Succeeded),
        "{r:?}"
    );
    let at_sim = door.sim.admin().refund(&out_refund_no).unwrap().unwrap();
    assert_eq!(at_sim.refund, 1);
    let d = decisions(&door, &no);
    assert_eq!(d.last().unwrap().actor.as_deref(), Some("dave"));
    assert!(d.last().unwrap().detail.starts_with("retry-refund:"));
    // Twice: refused, no second request.
    let (code, out) = decide(&door, "retry-refund", &out_refund_no, "dave");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("does not wait for a human"), "{out}");
    invariants(&door);
}

#[test]
fn refund_done_needs_wechat_pay_to_say_success() {
    let door = FrontDoor::start();
    door.sim
        .admin()
        .set_refund_outcome("ABNORMAL", Some(Duration::from_millis(10)))
        .unwrap();
    let no = mismatched(&door, TX);
    let (code, out) = decide(&door, "refund", no.as_str(), "alice");
    assert_eq!(code, 0, "{out}");
    let r = Refunder::new(
        Arc::new(settler(&door)),
        broker::RetryLadder::new(&[Duration::from_millis(20)]).unwrap(),
    );
    for _ in 0..50 {
        let _ = r.refund_due().unwrap();
        if domain::refunds_of(&mut door.db.conn(), &no).unwrap()[0]
            .status
            .is_final()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = domain::refunds_of(&mut door.db.conn(), &no)
        .unwrap()
        .remove(0);
    assert_eq!(r.status, RefundStatus::Abnormal);
    // Asking again cannot change an ABNORMAL refund.
    let (code, out) = decide(&door, "retry-refund", &r.out_refund_no, "erin");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("refund-done"), "{out}");
    // WeChat Pay still says ABNORMAL: refused, nothing changed.
    let before = snapshot(&door, &no);
    let (code, out) = decide(&door, "refund-done", &r.out_refund_no, "erin");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("ABNORMAL"), "{out}");
    assert_eq!(snapshot(&door, &no), before);
    // The merchant platform sent it on: WeChat Pay says SUCCESS.
    let _ = door
        .sim
        .admin()
        .set_refund_status(&r.out_refund_no, "SUCCESS")
        .unwrap();
    // (Its notification may reach the front door first and finish it: then
    // the decision has nothing left to do.)
    let (code, out) = decide(&door, "refund-done", &r.out_refund_no, "erin");
    let r = domain::refunds_of(&mut door.db.conn(), &no)
        .unwrap()
        .remove(0);
    assert_eq!(r.status, RefundStatus::Succeeded, "{out}");
    assert_eq!(r.needs_human, None);
    if code == 0 {
        let d = decisions(&door, &no);
        assert_eq!(d.last().unwrap().actor.as_deref(), Some("erin"));
        assert!(d.last().unwrap().detail.starts_with("refund-done:"));
    } else {
        assert_eq!(code, 2, "{out}");
    }
    let (code, out) = decide(&door, "refund-done", &r.out_refund_no, "erin");
    assert_eq!(code, 2, "{out}");
    invariants(&door);
}

#[test]
fn the_list_shows_every_kind_with_both_sides_and_the_decisions_as_json_too() {
    let door = FrontDoor::start();
    let no = mismatched(&door, TX);
    let (code, out) = cases(&door, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("1 order(s), 0 refund(s)"), "{out}");
    assert!(
        out.contains(&format!("order {no}  amount_mismatch")),
        "{out}"
    );
    assert!(out.contains("1 fen"), "WeChat Pay's side: {out}");
    let total = domain::find_order(&mut door.db.conn(), &no)
        .unwrap()
        .unwrap()
        .total;
    assert!(
        out.contains(&format!("pending_payment, total {total}")),
        "our side: {out}"
    );
    for verb in ["accept", "refund", "recheck"] {
        assert!(out.contains(&format!("cases {verb} {no}")), "{out}");
    }
    let (code, out) = cases(&door, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["orders"], 1);
    assert_eq!(v["cases"][0]["kind"], "order");
    assert_eq!(v["cases"][0]["id"], no.as_str());
    assert_eq!(v["cases"][0]["reason"], "amount_mismatch");
    assert_eq!(v["cases"][0]["actions"].as_array().unwrap().len(), 3);
    invariants(&door);
}

/// An order closed here (no payment order at its deadline) that a stale
/// page then pays 1 fen: an anomaly on a closed order, as the worker's
/// recheck records it.
fn closed_then_paid_1_fen(door: &FrontDoor, tx: &str) -> OrderNo {
    let a = door.call(
        "POST",
        "/v1/orders",
        Some(r#"{"items":[{"sku":"TEA","quantity":2}],"payment_window":"1s"}"#),
    );
    let no = OrderNo::parse(a.json()["order_no"].as_str().unwrap()).unwrap();
    let deadline = domain::find_order(&mut door.db.conn(), &no)
        .unwrap()
        .unwrap()
        .deadline;
    while Utc::now() <= deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = settler(door);
    let closed = s.settle(&no, Trigger::Sweep, Utc::now());
    assert!(matches!(closed, Settlement::Closed { .. }), "{closed:?}");
    paid_at_sim(door, &no, 1, tx);
    let late = s.settle(&no, Trigger::Operator, Utc::now());
    assert!(matches!(late, Settlement::NeedsHuman { .. }), "{late:?}");
    no
}

#[test]
fn a_closed_order_whose_late_payment_wechat_pay_then_closed_ends_with_a_recheck() {
    let door = FrontDoor::start();
    let no = closed_then_paid_1_fen(&door, TX);
    let stock = tea_stock(&door);
    let _ = door.sim.admin().set_state(no.as_str(), "CLOSED").unwrap();
    let (code, out) = decide(&door, "recheck", no.as_str(), "gina");
    assert_eq!(code, 0, "{out}");
    let order = domain::find_order(&mut door.db.conn(), &no)
        .unwrap()
        .unwrap();
    assert_eq!(order.status, OrderStatus::Closed);
    assert_eq!(order.anomaly, None, "the case ended");
    assert_eq!(tea_stock(&door), stock, "nothing given back twice");
    assert!(domain::payments_of(&mut door.db.conn(), &no)
        .unwrap()
        .is_empty());
    let d = decisions(&door, &no);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].actor.as_deref(), Some("gina"));
    let (code, out) = decide(&door, "recheck", no.as_str(), "gina");
    assert_eq!(code, 2, "{out}");
    invariants(&door);
}

#[test]
fn a_mismatched_payment_after_close_can_only_be_given_back() {
    let door = FrontDoor::start();
    let no = closed_then_paid_1_fen(&door, TX);
    let stock = tea_stock(&door);
    let (code, out) = cases(&door, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("cases refund {no}")), "{out}");
    assert!(!out.contains(&format!("cases accept {no}")), "{out}");

    let before = snapshot(&door, &no);
    let (code, out) = decide(&door, "accept", no.as_str(), "alice");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("can only be given back"), "{out}");
    assert_eq!(snapshot(&door, &no), before);

    let (code, out) = decide(&door, "refund", no.as_str(), "alice");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("order stays closed"), "{out}");
    let order = domain::find_order(&mut door.db.conn(), &no)
        .unwrap()
        .unwrap();
    assert_eq!(order.status, OrderStatus::Closed);
    assert_eq!(order.anomaly, None);
    assert_eq!(
        tea_stock(&door),
        stock,
        "stock was given back once, at the close"
    );
    let refunds = domain::refunds_of(&mut door.db.conn(), &no).unwrap();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount.get(), 1);
    let (code, out) = cases(&door, &[]);
    assert!(out.starts_with("0 order(s), 0 refund(s)"), "{code} {out}");
    invariants(&door);
}

#[test]
fn parked_messages_are_replayed_or_dropped_one_order_at_a_time() {
    use crate::parked::{declare, park, valid, Park};
    let door = FrontDoor::start();
    declare(&door.vhost);
    let no = mismatched(&door, TX);
    let other = door.order_tea(1);
    park(
        &door.vhost,
        &[
            valid(no.as_str()),
            valid(other.as_str()),
            Park {
                order_no: Some(no.as_str().to_owned()),
                recheck: true,
            },
        ],
    );
    let (code, out) = cases(&door, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 parked message(s)"), "{out}");
    assert!(
        out.contains("parked by reason: retries_exhausted 3"),
        "{out}"
    );
    assert!(
        out.contains(&format!("parked {other}  retries_exhausted")),
        "{out}"
    );
    assert!(out.contains(&format!("cases replay {other}")), "{out}");
    assert!(out.contains(&format!("cases drop {other}")), "{out}");
    let (_, json) = cases(&door, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["parked"], 3);
    assert_eq!(v["parked_by_reason"]["retries_exhausted"], 3);

    // Both of the order's messages go; the other order's stays.
    let (code, out) = decide(&door, "drop", no.as_str(), "frank");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 parked message(s) dropped"), "{out}");
    let d = decisions(&door, &no);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].actor.as_deref(), Some("frank"));
    assert!(d[0].detail.starts_with("drop:"), "{}", d[0].detail);
    // Twice: nothing is parked for it any more.
    let (code, out) = decide(&door, "drop", no.as_str(), "frank");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("nothing is parked"), "{out}");
    assert_eq!(decisions(&door, &no).len(), 1);
    // An order unknown here with nothing parked: refused.
    let (code, out) = decide(&door, "replay", "NOSUCHORDER1", "frank");
    assert_eq!(code, 2, "{out}");
    // A message parked as unknown_order can still be dropped (logged only:
    // there is no order to write the decision on).
    park(&door.vhost, &[valid("NOSUCHORDER2")]);
    let (code, out) = decide(&door, "drop", "NOSUCHORDER2", "frank");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no such order here"), "{out}");

    let (code, out) = decide(&door, "replay", other.as_str(), "frank");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 parked message(s) sent back"), "{out}");
    let sent = door.vhost.drain(broker::topology::TIMEOUT_QUEUE);
    assert_eq!(sent.len(), 1);
    let m = broker::TimeoutMessage::decode(&sent[0].0).unwrap();
    assert_eq!(m.order_no, other);
    assert!(door.vhost.drain(broker::topology::PARKED_QUEUE).is_empty());
    invariants(&door);
}

/// Reconciles yesterday (Beijing time) against the simulator's bill.
fn reconcile_yesterday(door: &FrontDoor) -> service::reconcile::Report {
    let day = domain::reconcile::beijing_day(Utc::now())
        .pred_opt()
        .unwrap();
    service::reconcile::reconcile_day(
        door.db.url(),
        &client(door),
        day,
        service::reconcile::Patience {
            wait: Duration::from_secs(5),
            first_delay: Duration::from_millis(100),
        },
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap()
}

/// Yesterday reconciled with two discrepancies: a payment recorded here
/// (an order of ours, paid) that the bill lacks, and a payment in the bill
/// for an order number not ours. The order, our discrepancy's number and
/// the day.
fn a_day_with_two_discrepancies(door: &FrontDoor) -> (OrderNo, String, chrono::NaiveDate) {
    // Recorded here as paid yesterday noon; WeChat Pay's bill has no such
    // payment, and has one for an order number that is not ours.
    let a = door.call(
        "POST",
        "/v1/orders",
        Some(r#"{"items":[{"sku":"TEA","quantity":2}]}"#),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let no = OrderNo::parse(a.json()["order_no"].as_str().unwrap()).unwrap();
    let day = domain::reconcile::beijing_day(Utc::now())
        .pred_opt()
        .unwrap();
    let noon = chrono::DateTime::parse_from_rfc3339(&format!("{day}T12:00:00+08:00")).unwrap();
    let order = domain::find_order(&mut door.db.conn(), &no)
        .unwrap()
        .unwrap();
    let _ = domain::mark_paid(
        &mut door.db.conn(),
        &no,
        &domain::PaymentRecord {
            transaction_id: domain::TransactionId::parse(TX).unwrap(),
            amount: order.total,
            success_time: noon.with_timezone(&Utc),
        },
    )
    .unwrap();
    let _ = door
        .sim
        .admin()
        .put_order(
            "SOMEONE-ELSES-1",
            &wechatpay_sim::Order {
                trade_state: "SUCCESS".into(),
                amount_total: 500,
                transaction_id: Some("4200000000000000000000009999".into()),
                success_time: Some(format!("{day}T09:00:00+08:00")),
                ..Default::default()
            },
        )
        .unwrap();
    let report = reconcile_yesterday(door);
    assert_eq!(report.new_discrepancies(), 2, "{report:#?}");
    let ours = report
        .discrepancies
        .iter()
        .find(|d| d.kind == "payment_not_in_bill")
        .unwrap()
        .id
        .to_string();

    (no, ours, day)
}

#[test]
fn discrepancies_are_listed_with_both_sides_and_resolved_once_by_a_named_operator() {
    let door = FrontDoor::start();
    let (no, ours, day) = a_day_with_two_discrepancies(&door);
    let (code, out) = cases(&door, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("0 order(s), 0 refund(s), 2 discrepancy(ies) with the trade bill"),
        "{out}"
    );
    assert!(
        out.contains(&format!("discrepancy {ours}  payment_not_in_bill")),
        "{out}"
    );
    assert!(
        out.contains(&format!("bill of {day}: not in the bill")),
        "{out}"
    );
    assert!(out.contains(TX), "our side names the transaction: {out}");
    assert!(out.contains("SOMEONE-ELSES-1"), "{out}");
    assert!(out.contains("check:"), "what to look into: {out}");
    assert!(
        out.contains(&format!("cases resolve {ours} --reason")),
        "{out}"
    );
    let (_, json) = cases(&door, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["discrepancies"], 2);
    let listed: Vec<&str> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "discrepancy")
        .map(|c| c["reason"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{json}");
    assert!(listed.contains(&"unknown_order"), "{json}");

    // A decision needs a reason; it changes nothing without one.
    let before = snapshot(&door, &no);
    let (code, out) = cases(&door, &["resolve", &ours, "--by", "ana", "--reason", " "]);
    assert_eq!(code, 2, "{out}");
    assert_eq!(snapshot(&door, &no), before);

    let (code, out) = decide(&door, "resolve", &format!("#{ours}"), "ana");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("resolved; decided by ana"), "{out}");
    let d = decisions(&door, &no);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].actor.as_deref(), Some("ana"));
    assert!(d[0].detail.contains("checked with the buyer"), "{d:?}");
    // The money is untouched: the order stays paid with its one payment.
    assert_eq!(
        domain::find_order(&mut door.db.conn(), &no)
            .unwrap()
            .unwrap()
            .status,
        OrderStatus::Paid
    );
    assert_eq!(
        domain::payments_of(&mut door.db.conn(), &no).unwrap().len(),
        1
    );

    // Once: a second decision, an unknown number, are refused.
    let before = snapshot(&door, &no);
    let (code, out) = decide(&door, "resolve", &ours, "bo");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("already resolved"), "{out}");
    let (code, out) = decide(&door, "resolve", "999999", "bo");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no discrepancy #999999"), "{out}");
    assert_eq!(snapshot(&door, &no), before);
    let (_, json) = cases(&door, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["discrepancies"], 1, "{json}");

    // Reconciling the day again does not bring a resolved one back.
    let again = reconcile_yesterday(&door);
    assert_eq!(again.new_discrepancies(), 0, "{again:#?}");
    let (_, json) = cases(&door, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["discrepancies"], 1, "{json}");
    invariants(&door);
}
