//! The one recheck after a close on `ORDER_NOT_EXIST`: a buyer on a stale
//! checkout page can create a payment order after we closed the order and
//! gave its stock back.

use std::time::Duration;

use domain::{OrderNo, OrderStatus};
use order_timeout_worker::{Settlement, Trigger};

use crate::support::ORDER_TOTAL_FEN;
use crate::Stack;

const LIMIT: Duration = Duration::from_secs(20);
const RECHECK_AFTER: Duration = Duration::from_millis(1500);

fn events(stack: &Stack, no: &OrderNo) -> Vec<(String, String)> {
    domain::order_events(&mut stack.db.conn(), no)
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.detail))
        .collect()
}

/// Waits until the order has an event of `kind`; returns its detail.
fn wait_event(stack: &Stack, no: &OrderNo, kind: &str) -> String {
    domain::testing::wait_for(LIMIT, || {
        events(stack, no)
            .into_iter()
            .find(|(k, _)| k == kind)
            .map(|(_, detail)| detail)
    })
    .unwrap_or_else(|| panic!("no {kind} event for {no}: {:?}", events(stack, no)))
}

/// Runs one order through a worker until WeChat Pay's "no payment order"
/// closes it; returns the order and the running worker.
fn closed_on_order_not_exist(stack: &Stack) -> (OrderNo, crate::support::Running) {
    let no = stack.order();
    let worker = stack.start(stack.settings());
    stack.relay();
    assert_eq!(stack.wait_settled(&no, LIMIT), OrderStatus::Closed);
    let order = domain::find_order(&mut stack.db.conn(), &no)
        .unwrap()
        .unwrap();
    assert!(
        order.recheck_at.is_some(),
        "the close schedules the recheck"
    );
    assert_eq!(stack.stock("TEA"), 1000);
    (no, worker)
}

#[test]
fn a_payment_order_created_after_the_close_is_closed_at_wechat_pay() {
    let mut stack = Stack::new();
    stack.recheck_after = RECHECK_AFTER;
    let (no, worker) = closed_on_order_not_exist(&stack);
    // The stale checkout page creates a payment order; nobody pays yet.
    stack.sim_put(&no, "NOTPAY");
    let found = wait_event(&stack, &no, "recheck");
    assert!(found.contains("closed the payment order"), "{found}");
    stack.wait_depth("queue.ordertimeout", 0, LIMIT);
    worker.stop();
    let sim = stack.sim.admin().order(no.as_str()).unwrap().unwrap();
    assert_eq!(sim.trade_state, "CLOSED", "it can never be paid now");
    assert_eq!(sim.closes, 1);
    let order = domain::find_order(&mut stack.db.conn(), &no)
        .unwrap()
        .unwrap();
    assert_eq!(order.status, OrderStatus::Closed);
    assert_eq!(order.recheck_at, None, "done");
    assert!(domain::payments_of(&mut stack.db.conn(), &no)
        .unwrap()
        .is_empty());
    assert_eq!(stack.stock("TEA"), 1000);
    stack.assert_conserved();
}

#[test]
fn a_payment_made_after_the_close_is_recorded_for_refund() {
    let mut stack = Stack::new();
    stack.recheck_after = RECHECK_AFTER;
    let (no, worker) = closed_on_order_not_exist(&stack);
    let _ = stack
        .sim
        .admin()
        .put_order(
            no.as_str(),
            &wechatpay_sim::Order {
                trade_state: "NOTPAY".into(),
                amount_total: ORDER_TOTAL_FEN,
                ..Default::default()
            },
        )
        .unwrap();
    let paid = stack.sim.admin().pay(no.as_str()).unwrap();
    let detail = wait_event(&stack, &no, "paid_after_close");
    assert!(detail.contains("refund"), "{detail}");
    stack.wait_depth("queue.ordertimeout", 0, LIMIT);
    worker.stop();
    let payments = domain::payments_of(&mut stack.db.conn(), &no).unwrap();
    assert_eq!(payments.len(), 1);
    assert!(payments[0].paid_after_close);
    assert_eq!(
        Some(payments[0].transaction_id.to_string()),
        paid.transaction_id
    );
    let order = domain::find_order(&mut stack.db.conn(), &no)
        .unwrap()
        .unwrap();
    assert_eq!(order.status, OrderStatus::Closed);
    assert_eq!(order.recheck_at, None);
    assert_eq!(stack.stock("TEA"), 1000, "stock stays given back");
    assert_eq!(
        domain::paid_after_close_count(&mut stack.db.conn()).unwrap(),
        1
    );
    stack.assert_conserved();
}

#[test]
fn still_nothing_at_wechat_pay_ends_the_recheck_and_a_duplicate_is_a_no_op() {
    let mut stack = Stack::new();
    stack.recheck_after = RECHECK_AFTER;
    let (no, worker) = closed_on_order_not_exist(&stack);
    let found = wait_event(&stack, &no, "recheck");
    assert!(found.contains("still no payment order"), "{found}");
    stack.wait_depth("queue.ordertimeout", 0, LIMIT);
    let queries = stack.sim.admin().stats().unwrap().queries;
    assert_eq!(queries, 2, "the first look and the recheck");
    // The same recheck delivered again (at-least-once dead-lettering).
    let message = broker::TimeoutMessage {
        order_no: no.clone(),
        created_at: chrono::Utc::now(),
        deadline: chrono::Utc::now(),
    };
    let mut conn = broker::connect(stack.vhost.url()).unwrap();
    let mut publisher =
        broker::ConfirmedPublisher::open(&mut conn, stack.vhost.url(), LIMIT).unwrap();
    let props = broker::headers::as_recheck(&message.properties(chrono::Utc::now()));
    assert_eq!(
        publisher
            .publish_one("queue.ordertimeout", &message.body(), props)
            .unwrap(),
        broker::Confirmation::Confirmed
    );
    let _ = conn.close();
    // Handled, and found done: nothing asked, nothing recorded.
    worker.wait_outcomes(service::Outcome::AlreadySettled, 1, LIMIT);
    worker.stop();
    assert_eq!(
        stack.sim.admin().stats().unwrap().queries,
        2,
        "not asked again"
    );
    let rechecks = events(&stack, &no)
        .into_iter()
        .filter(|(k, _)| k == "recheck")
        .count();
    assert_eq!(rechecks, 1);
    stack.assert_conserved();
}

/// The recheck message was lost (the worker closed through the sweep, or
/// the broker dropped it): the sweep does the recheck once it is overdue.
#[test]
fn the_sweep_does_a_recheck_whose_message_was_lost() {
    let mut stack = Stack::new();
    stack.recheck_after = Duration::from_millis(1);
    let no = stack.order(); // never relayed: no message at all
    std::thread::sleep(crate::WINDOW);
    let settler = stack.settler();
    assert!(matches!(
        settler.settle(&no, Trigger::Sweep, chrono::Utc::now()),
        Settlement::Closed {
            recheck_after: Some(_),
            ..
        }
    ));
    stack.sim_put(&no, "NOTPAY");
    let mut settings = stack.settings();
    settings.sweep_grace = Duration::from_millis(1);
    let sweeper = order_timeout_worker::Sweeper::new(
        std::sync::Arc::new(settler),
        order_timeout_worker::dispose::ladder(&stack.topology),
        &settings,
    );
    std::thread::sleep(Duration::from_millis(10));
    let report = sweeper.sweep_once().unwrap().unwrap();
    assert_eq!((report.looked_at, report.settled), (1, 1), "{report:?}");
    assert_eq!(stack.sim_state(&no).as_deref(), Some("CLOSED"));
    assert_eq!(
        domain::find_order(&mut stack.db.conn(), &no)
            .unwrap()
            .unwrap()
            .recheck_at,
        None
    );
    // Done: the next pass has nothing to recheck.
    let again = sweeper.sweep_once().unwrap().unwrap();
    assert_eq!(again.looked_at, 0, "{again:?}");
    stack.assert_conserved();
}
