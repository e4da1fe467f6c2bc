//! Every branch of the state machine, end to end through the broker.

use std::time::Duration;

use domain::OrderStatus;

use crate::Stack;

const LIMIT: Duration = Duration::from_secs(15);

/// Runs one order through a worker with the simulator in `state` (None: no
/// payment order at WeChat Pay) and returns the final local status.
fn settle_with(stack: &Stack, state: Option<&str>) -> (domain::OrderNo, OrderStatus) {
    let no = stack.order();
    if let Some(state) = state {
        stack.sim_put(&no, state);
    }
    let worker = stack.start(stack.settings());
    stack.relay();
    let status = stack.wait_settled(&no, LIMIT);
    // Acked: nothing left in the consumer queue. (A recheck copy may bounce
    // through it later, so look while the worker still runs.)
    stack.wait_depth("queue.ordertimeout", 0, LIMIT);
    worker.stop();
    (no, status)
}

#[test]
fn never_created_at_wechat_is_closed_and_stock_given_back() {
    let stack = Stack::new();
    let (no, status) = settle_with(&stack, None);
    assert_eq!(status, OrderStatus::Closed);
    assert_eq!(stack.stock("TEA"), 1000);
    let order = domain::find_order(&mut stack.db.conn(), &no)
        .unwrap()
        .unwrap();
    assert!(order.close_reason.unwrap().contains("ORDER_NOT_EXIST"));
    assert!(
        order.closed_at.unwrap() >= order.deadline,
        "closed before its deadline"
    );
    stack.assert_conserved();
}

#[test]
fn notpay_is_closed_at_wechat_read_back_and_then_closed_here() {
    let stack = Stack::new();
    let (no, status) = settle_with(&stack, Some("NOTPAY"));
    assert_eq!(status, OrderStatus::Closed);
    assert_eq!(stack.sim_state(&no).as_deref(), Some("CLOSED"));
    let sim_order = stack.sim.admin().order(no.as_str()).unwrap().unwrap();
    assert_eq!(sim_order.closes, 1);
    assert_eq!(sim_order.queries, 2, "query, close, query again");
    let order = domain::find_order(&mut stack.db.conn(), &no)
        .unwrap()
        .unwrap();
    assert!(order.close_reason.unwrap().contains("read back CLOSED"));
    assert_eq!(stack.stock("TEA"), 1000);
    stack.assert_conserved();
}

#[test]
fn payerror_is_closed_like_notpay() {
    let stack = Stack::new();
    let (no, status) = settle_with(&stack, Some("PAYERROR"));
    assert_eq!(status, OrderStatus::Closed);
    assert_eq!(stack.sim_state(&no).as_deref(), Some("CLOSED"));
    stack.assert_conserved();
}

#[test]
fn paid_at_wechat_is_compensated_and_stock_stays_sold() {
    let stack = Stack::new();
    let no = stack.order();
    stack.sim_put(&no, "NOTPAY");
    let paid = stack.sim.admin().pay(no.as_str()).unwrap();
    let worker = stack.start(stack.settings());
    stack.relay();
    assert_eq!(stack.wait_settled(&no, LIMIT), OrderStatus::Paid);
    worker.stop();
    let payments = domain::payments_of(&mut stack.db.conn(), &no).unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(
        Some(payments[0].transaction_id.to_string()),
        paid.transaction_id
    );
    assert!(!payments[0].paid_after_close);
    assert_eq!(stack.stock("TEA"), 998, "sold stock stays sold");
    assert_eq!(
        stack
            .sim
            .admin()
            .order(no.as_str())
            .unwrap()
            .unwrap()
            .closes,
        0,
        "never closed"
    );
    stack.assert_conserved();
}

#[test]
fn refund_is_compensated_as_paid() {
    let stack = Stack::new();
    let no = stack.order();
    let _ = stack
        .sim
        .admin()
        .put_order(
            no.as_str(),
            &wechatpay_sim::Order {
                trade_state: "REFUND".into(),
                transaction_id: Some("4200000000000000000000000001".into()),
                success_time: Some("2026-11-26T16:00:00+08:00".into()),
                amount_total: crate::support::ORDER_TOTAL_FEN,
                ..Default::default()
            },
        )
        .unwrap();
    let worker = stack.start(stack.settings());
    stack.relay();
    assert_eq!(stack.wait_settled(&no, LIMIT), OrderStatus::Paid);
    worker.stop();
    assert_eq!(stack.stock("TEA"), 998);
    stack.assert_conserved();
}

#[test]
fn closed_or_revoked_at_wechat_is_closed_here_without_a_close_call() {
    for state in ["CLOSED", "REVOKED"] {
        let stack = Stack::new();
        let (no, status) = settle_with(&stack, Some(state));
        assert_eq!(status, OrderStatus::Closed, "{state}");
        assert_eq!(
            stack
                .sim
                .admin()
                .order(no.as_str())
                .unwrap()
                .unwrap()
                .closes,
            0,
            "{state}"
        );
        assert_eq!(stack.stock("TEA"), 1000, "{state}");
        stack.assert_conserved();
    }
}

#[test]
fn a_buyer_still_paying_is_retried_until_the_payment_lands() {
    let stack = Stack::new();
    let no = stack.order();
    stack.sim_put(&no, "USERPAYING");
    let worker = stack.start(stack.settings());
    stack.relay();
    // The worker must look at least twice without touching the order.
    let started = std::time::Instant::now();
    while stack
        .sim
        .admin()
        .order(no.as_str())
        .unwrap()
        .unwrap()
        .queries
        < 2
    {
        assert!(started.elapsed() < LIMIT, "no retry while USERPAYING");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(stack.status(&no), OrderStatus::PendingPayment);
    let _ = stack.sim.admin().pay(no.as_str()).unwrap();
    assert_eq!(stack.wait_settled(&no, LIMIT), OrderStatus::Paid);
    worker.stop();
    assert_eq!(stack.stock("TEA"), 998);
    stack.assert_conserved();
}

#[test]
fn a_message_that_comes_early_is_delayed_until_the_deadline() {
    let stack = Stack::new();
    // A 3 s window, but the delay queue's TTL is 300 ms: the message comes
    // early and must wait out the rest.
    let no = stack.order_with_window(Duration::from_secs(3));
    let worker = stack.start(stack.settings());
    stack.relay();
    // It was seen before its deadline and sent to wait, without a settlement.
    worker.wait_outcomes(service::Outcome::NotYetDue, 1, LIMIT);
    assert_eq!(stack.wait_settled(&no, LIMIT), OrderStatus::Closed);
    worker.stop();
    let order = domain::find_order(&mut stack.db.conn(), &no)
        .unwrap()
        .unwrap();
    assert!(
        order.closed_at.unwrap() >= order.deadline,
        "closed before its deadline"
    );
    stack.assert_conserved();
}

#[test]
fn a_late_payment_after_close_is_recorded_for_refund_by_settle() {
    let stack = Stack::new();
    let (no, status) = settle_with(&stack, None);
    assert_eq!(status, OrderStatus::Closed);
    // WeChat Pay now shows it paid (a prepay order created and paid late).
    let _ = stack
        .sim
        .admin()
        .put_order(
            no.as_str(),
            &wechatpay_sim::Order {
                trade_state: "SUCCESS".into(),
                transaction_id: Some("4200000000000000000000000077".into()),
                success_time: Some("2026-11-26T16:00:00+08:00".into()),
                amount_total: crate::support::ORDER_TOTAL_FEN,
                ..Default::default()
            },
        )
        .unwrap();
    let settler = stack.settler();
    let s = settler.settle(
        &no,
        order_timeout_worker::Trigger::Operator,
        chrono::Utc::now(),
    );
    assert_eq!(
        s,
        order_timeout_worker::Settlement::PaidAfterClose {
            newly_recorded: true
        }
    );
    let payments = domain::payments_of(&mut stack.db.conn(), &no).unwrap();
    assert_eq!(payments.len(), 1);
    assert!(payments[0].paid_after_close);
    assert_eq!(payments[0].amount.get(), crate::support::ORDER_TOTAL_FEN);
    assert_eq!(stack.status(&no), OrderStatus::Closed);
    assert_eq!(stack.stock("TEA"), 1000, "stock stays given back");
    // Again: nothing more recorded.
    let again = settler.settle(
        &no,
        order_timeout_worker::Trigger::Operator,
        chrono::Utc::now(),
    );
    assert_eq!(
        again,
        order_timeout_worker::Settlement::PaidAfterClose {
            newly_recorded: false
        }
    );
    assert_eq!(
        domain::payments_of(&mut stack.db.conn(), &no)
            .unwrap()
            .len(),
        1
    );
    stack.assert_conserved();
}
