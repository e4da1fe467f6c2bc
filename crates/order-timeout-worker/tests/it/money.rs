//! The money edges (issue 9): a paid answer that does not match the order,
//! an answer about another order, a replayed answer, a payment order
//! created after a close. Each scenario asserts what the database, the
//! broker and the simulator hold afterwards.

use std::time::Duration;

use domain::{Anomaly, OrderNo, OrderStatus};
use order_timeout_worker::{Settlement, Trigger};
use wechatpay_sim::{Endpoint, Faults};

use crate::support::{reason_of, ORDER_TOTAL_FEN};
use crate::Stack;

const LIMIT: Duration = Duration::from_secs(15);

/// A simulator order paid at WeChat Pay, with every field right.
fn paid(tx: &str) -> wechatpay_sim::Order {
    wechatpay_sim::Order {
        trade_state: "SUCCESS".into(),
        amount_total: ORDER_TOTAL_FEN,
        transaction_id: Some(tx.into()),
        success_time: Some("2026-11-26T18:30:00+08:00".into()),
        ..Default::default()
    }
}

fn put(stack: &Stack, no: &OrderNo, order: &wechatpay_sim::Order) {
    let _ = stack.sim.admin().put_order(no.as_str(), order).unwrap();
}

fn event_kinds(stack: &Stack, no: &OrderNo) -> Vec<String> {
    domain::order_events(&mut stack.db.conn(), no)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

/// Queries the simulator answered about these orders, in all.
fn queries_of(stack: &Stack, nos: &[OrderNo]) -> u64 {
    nos.iter()
        .map(|no| {
            stack
                .sim
                .admin()
                .order(no.as_str())
                .unwrap()
                .unwrap()
                .queries
        })
        .sum()
}

fn anomaly_detail(stack: &Stack, no: &OrderNo) -> String {
    domain::order_events(&mut stack.db.conn(), no)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "anomaly")
        .map(|e| e.detail)
        .next_back()
        .unwrap_or_else(|| panic!("no anomaly event for {no}"))
}

/// Paid answers wrong in one way each: what the simulator says, the
/// anomaly it must give, words its detail must contain.
fn mismatched_answers() -> Vec<(wechatpay_sim::Order, Anomaly, &'static [&'static str])> {
    vec![
        (
            wechatpay_sim::Order {
                amount_total: ORDER_TOTAL_FEN - 1,
                ..paid("4200000000000000000000000101")
            },
            Anomaly::AmountMismatch,
            &["99 fen", "100 fen"],
        ),
        (
            wechatpay_sim::Order {
                currency: "USD".into(),
                ..paid("4200000000000000000000000102")
            },
            Anomaly::AmountMismatch,
            &["USD", "CNY"],
        ),
        (
            wechatpay_sim::Order {
                omit_amount: true,
                ..paid("4200000000000000000000000103")
            },
            Anomaly::MissingAmount,
            &["without an amount", "100 fen"],
        ),
        (
            wechatpay_sim::Order {
                success_time: Some("26/11/2026 18:30".into()),
                ..paid("4200000000000000000000000104")
            },
            Anomaly::BadSuccessTime,
            &["26/11/2026 18:30"],
        ),
        (
            wechatpay_sim::Order {
                success_time: None,
                ..paid("4200000000000000000000000105")
            },
            Anomaly::BadSuccessTime,
            &["without a success_time"],
        ),
        (
            wechatpay_sim::Order {
                transaction_id: None,
                ..paid("unused")
            },
            Anomaly::MissingTransactionId,
            &["without a transaction_id"],
        ),
    ]
}

/// Orders whose paid answer is wrong in one way each go through a running
/// worker: none is paid or closed, each keeps its stock, carries its
/// anomaly with an event naming both sides, and its message is parked once
/// under the anomaly's name.
#[test]
fn a_paid_answer_that_does_not_match_the_order_is_left_to_a_human() {
    let stack = Stack::new();
    let cases = mismatched_answers();
    let nos: Vec<OrderNo> = cases
        .iter()
        .map(|(sim_order, _, _)| {
            let no = stack.order();
            put(&stack, &no, sim_order);
            no
        })
        .collect();
    let worker = stack.start(stack.settings());
    stack.relay();
    stack.wait_depth("queue.ordertimeout.parked", nos.len() as u32, LIMIT);
    stack.wait_depth("queue.ordertimeout", 0, LIMIT);
    worker.stop();

    let parked = stack.drain("queue.ordertimeout.parked");
    assert_eq!(parked.len(), nos.len(), "each parked once");
    for (no, (_, anomaly, words)) in nos.iter().zip(&cases) {
        let order = domain::find_order(&mut stack.db.conn(), no)
            .unwrap()
            .unwrap();
        assert_eq!(order.status, OrderStatus::PendingPayment, "{anomaly}");
        assert_eq!(order.anomaly, Some(*anomaly));
        assert!(domain::payments_of(&mut stack.db.conn(), no)
            .unwrap()
            .is_empty());
        assert_eq!(event_kinds(&stack, no), ["created", "anomaly"]);
        let detail = anomaly_detail(&stack, no);
        for word in *words {
            assert!(
                detail.contains(word),
                "{anomaly}: {detail:?} lacks {word:?}"
            );
        }
        let (_, props) = parked
            .iter()
            .find(|(body, _)| broker::TimeoutMessage::decode(body).unwrap().order_no == *no)
            .expect("its message is parked");
        let (reason, detail) = reason_of(props);
        assert_eq!(reason, anomaly.as_str());
        assert!(!detail.is_empty());
        assert_eq!(
            stack
                .sim
                .admin()
                .order(no.as_str())
                .unwrap()
                .unwrap()
                .closes,
            0,
            "never closed at WeChat Pay"
        );
    }
    assert_eq!(
        stack.stock("TEA"),
        1000 - 2 * nos.len() as u32,
        "stock held"
    );
    assert_eq!(
        domain::needs_human_count(&mut stack.db.conn()).unwrap(),
        nos.len() as i64
    );
    stack.assert_conserved();

    // The sweep leaves them to the human: not one more question to WeChat Pay.
    let before = queries_of(&stack, &nos);
    let mut settings = stack.settings();
    settings.sweep_grace = Duration::from_millis(1);
    let sweeper = order_timeout_worker::Sweeper::new(
        std::sync::Arc::new(stack.settler()),
        order_timeout_worker::dispose::ladder(&stack.topology),
        &settings,
    );
    let report = sweeper.sweep_once().unwrap().unwrap();
    assert_eq!(report.looked_at, 0, "{report:?}");
    assert_eq!(before, queries_of(&stack, &nos));
}

/// A redelivered or duplicated message for an order with an anomaly records
/// nothing twice.
#[test]
fn an_anomaly_is_recorded_once_whatever_the_number_of_looks() {
    let stack = Stack::new();
    let no = stack.order();
    put(
        &stack,
        &no,
        &wechatpay_sim::Order {
            amount_total: 1,
            ..paid("4200000000000000000000000201")
        },
    );
    std::thread::sleep(crate::WINDOW);
    let settler = stack.settler();
    for _ in 0..3 {
        match settler.settle(&no, Trigger::Message, chrono::Utc::now()) {
            Settlement::NeedsHuman { anomaly, detail } => {
                assert_eq!(anomaly, Anomaly::AmountMismatch);
                assert!(detail.contains("1 fen"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(event_kinds(&stack, &no), ["created", "anomaly"]);
    assert_eq!(stack.stock("TEA"), 998);
    stack.assert_conserved();
}

/// Two orders report the same transaction id (WeChat Pay cannot mean
/// both): the first is paid, the second waits for a human, parked at once
/// instead of retrying a unique violation forever.
#[test]
fn a_transaction_id_already_recorded_for_another_order_needs_a_human() {
    let stack = Stack::new();
    let first = stack.order();
    let second = stack.order();
    put(&stack, &first, &paid("4200000000000000000000000301"));
    std::thread::sleep(crate::WINDOW);
    let settler = stack.settler();
    assert_eq!(
        settler.settle(&first, Trigger::Message, chrono::Utc::now()),
        Settlement::Compensated { refunded: false }
    );
    put(&stack, &second, &paid("4200000000000000000000000301"));
    let worker = stack.start(stack.settings());
    stack.relay();
    stack.wait_depth("queue.ordertimeout.parked", 1, LIMIT);
    stack.wait_depth("queue.ordertimeout", 0, LIMIT);
    worker.stop();
    assert_eq!(stack.status(&first), OrderStatus::Paid);
    assert_eq!(stack.status(&second), OrderStatus::PendingPayment);
    let order = domain::find_order(&mut stack.db.conn(), &second)
        .unwrap()
        .unwrap();
    assert_eq!(order.anomaly, Some(Anomaly::DuplicateTransaction));
    assert!(
        anomaly_detail(&stack, &second).contains(first.as_str()),
        "names the order that holds it"
    );
    let parked = stack.drain("queue.ordertimeout.parked");
    assert_eq!(reason_of(&parked[0].1).0, "duplicate_transaction");
    let queries = stack
        .sim
        .admin()
        .order(second.as_str())
        .unwrap()
        .unwrap()
        .queries;
    assert_eq!(queries, 1, "asked once, not retried");
    assert!(domain::payments_of(&mut stack.db.conn(), &second)
        .unwrap()
        .is_empty());
    stack.assert_conserved();
}

/// Answers that do not name the order or the merchant asked about are never
/// acted on, however paid or closed they say the order is.
#[test]
fn an_answer_about_another_order_or_merchant_settles_nothing() {
    let stack = Stack::new();
    let other = stack.order();
    put(&stack, &other, &paid("4200000000000000000000000401"));
    let faults = [
        Faults {
            answer_out_trade_no: Some(other.as_str().to_owned()),
            ..Faults::default()
        },
        Faults {
            omit_out_trade_no: true,
            ..Faults::default()
        },
        Faults {
            answer_mchid: Some("1900009999".into()),
            ..Faults::default()
        },
        Faults {
            omit_mchid: true,
            ..Faults::default()
        },
    ];
    let mut nos = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        // Paid, closed or unpaid: whatever it says, it is not about us.
        for state in ["SUCCESS", "CLOSED", "NOTPAY"] {
            let no = stack.order();
            let order = if state == "SUCCESS" {
                paid(&format!("4200000000000000000000005{i:02}"))
            } else {
                wechatpay_sim::Order::in_state(state)
            };
            put(&stack, &no, &order);
            stack.sim.admin().set_order_faults(no.as_str(), f).unwrap();
            nos.push(no);
        }
    }
    std::thread::sleep(crate::WINDOW);
    let settler = stack.settler();
    for no in &nos {
        match settler.settle(no, Trigger::Message, chrono::Utc::now()) {
            Settlement::GiveUp { reason } => assert!(
                reason.contains("got an answer about") || reason.contains("answer is for merchant"),
                "{reason}"
            ),
            other => panic!("{no}: {other:?}"),
        }
        assert_eq!(stack.status(no), OrderStatus::PendingPayment);
        assert_eq!(
            stack
                .sim
                .admin()
                .order(no.as_str())
                .unwrap()
                .unwrap()
                .closes,
            0
        );
    }
    assert!(domain::payments_of(&mut stack.db.conn(), &other)
        .unwrap()
        .is_empty());
    assert_eq!(stack.stock("TEA"), 1000 - 2 * (nos.len() as u32 + 1));
    stack.assert_conserved();
}

/// A copy of an earlier signed answer is refused, even when it is about the
/// same order and fresh enough to pass the timestamp check: here, the old
/// "no payment order" sent again after the buyer paid a payment order
/// created after our close. Without the guard the recheck would end and the
/// payment go unrecorded.
#[test]
fn a_replayed_answer_is_refused_and_the_late_payment_still_found() {
    let mut stack = Stack::new();
    stack.recheck_after = Duration::from_millis(1);
    let no = stack.order();
    std::thread::sleep(crate::WINDOW);
    let settler = stack.settler();
    let closed = settler.settle(&no, Trigger::Message, chrono::Utc::now());
    assert!(
        matches!(
            closed,
            Settlement::Closed {
                recheck_after: Some(_),
                ..
            }
        ),
        "{closed:?}"
    );
    // A stale checkout page creates a payment order and the buyer pays.
    put(&stack, &no, &paid("4200000000000000000000000501"));
    stack
        .sim
        .admin()
        .set_order_faults(
            no.as_str(),
            &Faults {
                replay_answer_of: Some(no.as_str().to_owned()),
                only: Some(Endpoint::Query),
                times: Some(1),
                ..Faults::default()
            },
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    match settler.settle(&no, Trigger::Recheck, chrono::Utc::now()) {
        Settlement::RetryLater { reason, .. } => assert!(reason.contains("replayed"), "{reason}"),
        other => panic!("acted on a replayed answer: {other:?}"),
    }
    let order = domain::find_order(&mut stack.db.conn(), &no)
        .unwrap()
        .unwrap();
    assert!(order.recheck_at.is_some(), "the recheck is still due");
    assert_eq!(
        settler.settle(&no, Trigger::Recheck, chrono::Utc::now()),
        Settlement::PaidAfterClose {
            newly_recorded: true
        }
    );
    let payments = domain::payments_of(&mut stack.db.conn(), &no).unwrap();
    assert_eq!(payments.len(), 1);
    assert!(payments[0].paid_after_close);
    assert_eq!(stack.stock("TEA"), 1000, "stock stays given back");
    stack.assert_conserved();
}

/// The identity check holds on its own: a fresh client (which never saw
/// the original) receives a replayed answer about another order.
#[test]
fn a_replayed_answer_about_another_order_is_refused_by_its_identity() {
    let stack = Stack::new();
    let other = stack.order();
    let no = stack.order();
    put(&stack, &other, &wechatpay_sim::Order::in_state("CLOSED"));
    put(&stack, &no, &wechatpay_sim::Order::in_state("NOTPAY"));
    std::thread::sleep(crate::WINDOW);
    // Someone asked about `other`: its signed CLOSED answer exists.
    let first = stack.settler();
    assert!(matches!(
        first.settle(&other, Trigger::Message, chrono::Utc::now()),
        Settlement::Closed { .. }
    ));
    stack
        .sim
        .admin()
        .set_order_faults(
            no.as_str(),
            &Faults {
                replay_answer_of: Some(other.as_str().to_owned()),
                ..Faults::default()
            },
        )
        .unwrap();
    let fresh = stack.settler();
    match fresh.settle(&no, Trigger::Message, chrono::Utc::now()) {
        Settlement::GiveUp { reason } => {
            assert!(reason.contains("got an answer about"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stack.status(&no), OrderStatus::PendingPayment);
    stack.assert_conserved();
}
