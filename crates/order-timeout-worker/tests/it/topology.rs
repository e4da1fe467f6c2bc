//! A topology damaged under a running worker: no query loop, nothing lost.

use std::time::{Duration, Instant};

use domain::OrderStatus;

use crate::Stack;

fn queries(stack: &Stack, no: &domain::OrderNo) -> u64 {
    stack
        .sim
        .admin()
        .order(no.as_str())
        .unwrap()
        .unwrap()
        .queries
}

#[test]
fn a_deleted_retry_queue_stops_consumption_until_the_topology_is_declared_again() {
    let stack = Stack::new();
    let no = stack.order();
    stack.sim_put(&no, "USERPAYING");
    let worker = stack.start(stack.settings());
    stack.wait_consuming(Duration::from_secs(15));
    // Delete the whole retry ladder under the running worker.
    for q in stack.topology.retry_queues() {
        let _ = broker::testing::rabbitmqctl(&["delete_queue", "-p", stack.vhost.name(), &q.name]);
    }
    std::thread::sleep(crate::WINDOW);
    stack.dead_letter(&no);
    // The buyer is paying: the worker wants a retry, the broker returns the
    // copy as unroutable, the original goes back to the queue.
    let started = Instant::now();
    while queries(&stack, &no) == 0 {
        assert!(started.elapsed() < Duration::from_secs(15), "never asked");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let settled_down = queries(&stack, &no);
    assert!(settled_down <= 2, "asked {settled_down} times in a second");
    // While the topology stays damaged, WeChat Pay is not asked again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        queries(&stack, &no),
        settled_down,
        "queried in a loop while the topology was damaged"
    );
    assert_eq!(stack.status(&no), OrderStatus::PendingPayment);
    assert_eq!(stack.depth("queue.ordertimeout"), 1, "the message is kept");

    // Declared again, the worker resumes and settles it.
    let mut conn = broker::connect(stack.vhost.url()).unwrap();
    let _ = stack
        .topology
        .declare(&mut conn, stack.vhost.url())
        .unwrap();
    let _ = conn.close();
    let _ = stack.sim.admin().pay(no.as_str()).unwrap();
    assert_eq!(
        stack.wait_settled(&no, Duration::from_secs(40)),
        OrderStatus::Paid
    );
    worker.stop();
    stack.assert_conserved();
}

#[test]
fn a_deleted_parking_queue_keeps_the_message_instead_of_looping() {
    let stack = Stack::new();
    let no = stack.order();
    // A permanent error: the message must be parked, but the parking queue
    // is gone.
    stack.sim_put(&no, "NOTPAY");
    stack
        .sim
        .admin()
        .set_order_faults(
            no.as_str(),
            &wechatpay_sim::Faults {
                status: Some(403),
                ..Default::default()
            },
        )
        .unwrap();
    let worker = stack.start(stack.settings());
    stack.wait_consuming(Duration::from_secs(15));
    let _ = broker::testing::rabbitmqctl(&[
        "delete_queue",
        "-p",
        stack.vhost.name(),
        "queue.ordertimeout.parked",
    ]);
    std::thread::sleep(crate::WINDOW);
    stack.dead_letter(&no);
    let started = Instant::now();
    while stack.sim.admin().stats().unwrap().faults_injected == 0 {
        assert!(started.elapsed() < Duration::from_secs(15), "never asked");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    let asked = stack.sim.admin().stats().unwrap().faults_injected;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        stack.sim.admin().stats().unwrap().faults_injected,
        asked,
        "asked in a loop"
    );
    assert_eq!(stack.depth("queue.ordertimeout"), 1, "the message is kept");
    let mut conn = broker::connect(stack.vhost.url()).unwrap();
    let _ = stack
        .topology
        .declare(&mut conn, stack.vhost.url())
        .unwrap();
    let _ = conn.close();
    stack.wait_depth("queue.ordertimeout.parked", 1, Duration::from_secs(40));
    worker.stop();
    assert_eq!(stack.status(&no), OrderStatus::PendingPayment);
    stack.assert_conserved();
}
