//! An order is settled at its deadline, not a queue TTL later: the relay
//! routes by the time left when it publishes, and the worker's not-yet-due
//! path waits out the rest without overshooting by a whole retry delay.

use std::time::Duration;

use broker::{QueueType, Topology};
use domain::{OrderNo, OrderStatus};

use crate::Stack;

/// A stack whose topology is `windows` (delay queues) and `retries` (the
/// retry ladder), declared beside the short default one.
fn stack_with(windows: &[Duration], retries: &[Duration]) -> Stack {
    let mut stack = Stack::new();
    stack.topology = Topology::windows(windows, QueueType::Classic)
        .unwrap()
        .with_retry_delays(retries)
        .unwrap();
    let mut conn = broker::connect(stack.vhost.url()).unwrap();
    stack
        .topology
        .declare(&mut conn, stack.vhost.url())
        .unwrap();
    let _ = conn.close();
    stack
}

/// How long after its deadline the order was closed, in milliseconds.
fn closed_late_ms(stack: &Stack, no: &OrderNo) -> i64 {
    assert_eq!(
        stack.wait_settled(no, Duration::from_secs(20)),
        OrderStatus::Closed
    );
    let order = domain::find_order(&mut stack.db.conn(), no)
        .unwrap()
        .unwrap();
    (order.closed_at.unwrap() - order.deadline).num_milliseconds()
}

#[test]
fn a_message_published_late_is_settled_at_the_deadline_not_a_queue_ttl_later() {
    let stack = stack_with(
        &[Duration::from_secs(4)],
        &[Duration::from_millis(500), Duration::from_secs(1)],
    );
    let worker = stack.start(stack.settings());
    let no = stack.order_with_window(Duration::from_secs(4));
    stack.sim_put(&no, "NOTPAY");
    // The relay was down: it publishes with 1.5 s left. Routed by the
    // window, the message would sit in the 4 s queue until 2.5 s after the
    // deadline.
    std::thread::sleep(Duration::from_millis(2500));
    stack.relay();
    let late = closed_late_ms(&stack, &no);
    assert!(
        (0..1000).contains(&late),
        "closed {late} ms after the deadline"
    );
    worker.stop();
    stack.assert_conserved();
}

#[test]
fn a_window_between_two_queues_settles_at_its_deadline_and_its_waits_are_no_retries() {
    // Delay queues of 1 s and 8 s, one retry delay of 2 s: a 3.5 s window
    // rides the 1 s queue, then 2 s in the retry queue, then the last half
    // second in the lane (the next retry would overshoot by 1.5 s).
    let stack = stack_with(
        &[Duration::from_secs(1), Duration::from_secs(8)],
        &[Duration::from_secs(2)],
    );
    let worker = stack.start(stack.settings());
    let no = stack.order_with_window(Duration::from_millis(3500));
    stack.sim_put(&no, "NOTPAY");
    stack.relay();
    let late = closed_late_ms(&stack, &no);
    assert!(
        (0..1000).contains(&late),
        "closed {late} ms after the deadline"
    );
    // The waits for the deadline used no attempt and are no retries, in
    // the summary as in order_timeout_retries_total.
    let summary = worker.summary().expect("a summary");
    assert!(
        summary.contains("0 retries (order_timeout_retries_total), 1 not yet due"),
        "{summary}"
    );
    worker.stop();
    stack.assert_conserved();
}

#[test]
fn an_overdue_order_is_published_straight_to_the_worker() {
    let stack = Stack::new();
    let no = stack.order(); // 300 ms window, 300 ms delay queue
    stack.sim_put(&no, "NOTPAY");
    std::thread::sleep(Duration::from_millis(1500));
    // Past its deadline when the relay publishes: through exchange.ordertimeout
    // into queue.ordertimeout at once, not through a delay queue.
    stack.relay();
    assert_eq!(stack.depth(broker::topology::TIMEOUT_QUEUE), 1);
    assert_eq!(stack.depth(broker::topology::DELAY_QUEUE), 0);
    let worker = stack.start(stack.settings());
    assert_eq!(
        stack.wait_settled(&no, Duration::from_secs(10)),
        OrderStatus::Closed
    );
    worker.stop();
    stack.assert_conserved();
}
