//! Duplicates, redeliveries, several workers, the sweep and lost connections.

use std::time::Duration;

use domain::OrderStatus;
use order_timeout_worker::{Settlement, Trigger};

use crate::Stack;

const LIMIT: Duration = Duration::from_secs(15);

/// Publishes the order's message again (as `order-producer publish` does).
fn publish_again(stack: &Stack, nos: &[domain::OrderNo]) {
    let mut conn = stack.db.conn();
    let out =
        order_producer::relay::publish_orders(&mut conn, stack.vhost.url(), &stack.topology, nos)
            .unwrap();
    assert_eq!(out.refused, 0, "{:?}", out.lines);
}

#[test]
fn the_same_message_twice_gives_stock_back_once() {
    let stack = Stack::new();
    let nos: Vec<_> = (0..10).map(|_| stack.order()).collect();
    for no in &nos {
        stack.sim_put(no, "NOTPAY");
    }
    stack.relay();
    publish_again(&stack, &nos); // every message twice, before any worker runs
    let worker = stack.start(stack.settings());
    all_closed_once(&stack, &nos, worker);
}

/// Waits until every order is closed and the queue drained, stops the
/// worker, and checks each order was closed once and its stock given back
/// once.
fn all_closed_once(stack: &Stack, nos: &[domain::OrderNo], worker: crate::support::Running) {
    for no in nos {
        assert_eq!(stack.wait_settled(no, LIMIT), OrderStatus::Closed);
    }
    stack.wait_depth("queue.ordertimeout", 0, LIMIT);
    worker.stop();
    assert_eq!(
        stack.stock("TEA"),
        1000,
        "given back exactly once per order"
    );
    for no in nos {
        let closes = domain::order_events(&mut stack.db.conn(), no)
            .unwrap()
            .iter()
            .filter(|e| e.kind == "closed")
            .count();
        assert_eq!(closes, 1);
    }
    stack.assert_conserved();
}

#[test]
fn two_workers_on_duplicated_messages_give_stock_back_once() {
    let stack = Stack::new();
    let nos: Vec<_> = (0..30).map(|_| stack.order()).collect();
    for (i, no) in nos.iter().enumerate() {
        match i % 3 {
            0 => stack.sim_put(no, "NOTPAY"),
            1 => {
                stack.sim_put(no, "NOTPAY");
                let _ = stack.sim.admin().pay(no.as_str()).unwrap();
            }
            _ => {} // never created at WeChat Pay
        }
    }
    stack.relay();
    publish_again(&stack, &nos);
    let a = stack.start(stack.settings());
    let b = stack.start(stack.settings());
    for (i, no) in nos.iter().enumerate() {
        let want = if i % 3 == 1 {
            OrderStatus::Paid
        } else {
            OrderStatus::Closed
        };
        assert_eq!(stack.wait_settled(no, LIMIT), want);
    }
    stack.wait_depth("queue.ordertimeout", 0, LIMIT);
    a.stop();
    b.stop();
    // 10 paid orders keep 2 TEA each; 20 closed ones gave theirs back once.
    assert_eq!(stack.stock("TEA"), 1000 - 10 * 2);
    stack.assert_conserved();
}

#[test]
fn lanes_closing_a_burst_share_statements_and_close_each_order_once() {
    let stack = Stack::new();
    // Never created at WeChat Pay: every lane's answer is ORDER_NOT_EXIST,
    // and every message comes twice.
    let nos: Vec<_> = (0..120).map(|_| stack.order()).collect();
    stack.relay();
    publish_again(&stack, &nos);
    let settler = stack.settler();
    let mut settings = stack.settings();
    settings.concurrency = 16;
    let worker = stack.start_with(settler.clone(), settings);
    all_closed_once(&stack, &nos, worker);
    let (statements, closes) = settler.close_batches();
    assert!(closes >= 120, "{closes} closes");
    assert!(
        statements < closes,
        "16 lanes closing a burst never shared a statement ({statements} for {closes})"
    );
}

#[test]
fn a_redelivery_after_commit_is_a_no_op() {
    // The worker died after its commit and before its ack: the broker hands
    // the message out again. Simulated by settling first, then delivering.
    let stack = Stack::new();
    let no = stack.order();
    std::thread::sleep(crate::WINDOW);
    let settler = stack.settler();
    assert!(matches!(
        settler.settle(&no, Trigger::Message, chrono::Utc::now()),
        Settlement::Closed { .. }
    ));
    assert_eq!(stack.stock("TEA"), 1000);
    let worker = stack.start(stack.settings());
    stack.relay();
    // The redelivery must really be handled (found settled), not merely be
    // somewhere else than the consumer queue when we look.
    worker.wait_outcomes(service::Outcome::AlreadySettled, 1, LIMIT);
    stack.wait_depth("queue.ordertimeout", 0, LIMIT);
    worker.stop();
    assert_eq!(stack.stock("TEA"), 1000, "nothing given back twice");
    assert_eq!(stack.depth("queue.ordertimeout.parked"), 0);
    assert_eq!(
        settler.settle(&no, Trigger::Message, chrono::Utc::now()),
        Settlement::AlreadySettled(OrderStatus::Closed)
    );
    stack.assert_conserved();
}

#[test]
fn an_order_whose_message_was_never_published_is_settled_by_the_sweep() {
    let stack = Stack::new();
    let no = stack.order(); // never relayed
    let paid = stack.order();
    stack.sim_put(&paid, "NOTPAY");
    let _ = stack.sim.admin().pay(paid.as_str()).unwrap();
    let mut settings = stack.settings();
    settings.sweep_interval = Duration::from_millis(200);
    settings.sweep_grace = Duration::from_millis(100);
    let worker = stack.start(settings);
    assert_eq!(stack.wait_settled(&no, LIMIT), OrderStatus::Closed);
    assert_eq!(stack.wait_settled(&paid, LIMIT), OrderStatus::Paid);
    worker.stop();
    assert_eq!(
        domain::unpublished_count(&mut stack.db.conn()).unwrap(),
        2,
        "no message was involved"
    );
    stack.assert_conserved();
}

#[test]
fn only_one_worker_sweeps_at_a_time() {
    let stack = Stack::new();
    let w1 = order_timeout_worker::Sweeper::new(
        std::sync::Arc::new(stack.settler()),
        order_timeout_worker::dispose::ladder(&stack.topology),
        &stack.settings(),
    );
    // Hold the sweep lock from another session.
    let mut holder = stack.db.conn();
    let held = domain::SweepLock::try_acquire(&mut holder)
        .unwrap()
        .expect("nobody else sweeps");
    assert_eq!(
        w1.sweep_once().unwrap(),
        None,
        "skipped while another sweeps"
    );
    // Dropping the lock unlocks at once (a dropped connection's backend
    // may linger a moment).
    drop(held);
    assert_eq!(w1.sweep_once().unwrap().map(|r| r.looked_at), Some(0));
}

#[test]
fn the_worker_reconnects_after_losing_the_broker() {
    let stack = Stack::new();
    let worker = stack.start(stack.settings());
    let first = stack.order();
    stack.relay();
    assert_eq!(stack.wait_settled(&first, LIMIT), OrderStatus::Closed);
    stack.vhost.close_all_connections();
    let second = stack.order();
    stack.relay();
    assert_eq!(
        stack.wait_settled(&second, Duration::from_secs(30)),
        OrderStatus::Closed
    );
    worker.stop();
    stack.assert_conserved();
}

#[test]
fn a_consumer_cancelled_by_the_broker_is_resumed_once_the_queue_is_back() {
    let stack = Stack::new();
    let worker = stack.start(stack.settings());
    let first = stack.order();
    stack.relay();
    assert_eq!(stack.wait_settled(&first, LIMIT), OrderStatus::Closed);
    // An operator deletes the consumer queue: the broker cancels every
    // consumer on it; the worker must reconnect and wait for the topology.
    let _ = broker::testing::rabbitmqctl(&[
        "delete_queue",
        "-p",
        stack.vhost.name(),
        "queue.ordertimeout",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let mut conn = broker::connect(stack.vhost.url()).unwrap();
    stack
        .topology
        .declare(&mut conn, stack.vhost.url())
        .unwrap();
    let _ = conn.close();
    let second = stack.order();
    stack.relay();
    assert_eq!(
        stack.wait_settled(&second, Duration::from_secs(30)),
        OrderStatus::Closed
    );
    worker.stop();
    stack.assert_conserved();
}
