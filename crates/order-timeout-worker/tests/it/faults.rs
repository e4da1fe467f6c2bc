//! Provider faults: nothing is closed while its payment state is unknown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::OrderStatus;
use wechatpay_sim::{Endpoint, Faults};

use crate::Stack;

/// Invariants 7 and 11 (ARCHITECTURE.md), checked against the simulator: an order closed here is one
/// WeChat Pay shows closed (or never saw); one paid there is paid here.
fn assert_matches_wechat(stack: &Stack, nos: &[domain::OrderNo]) {
    for no in nos {
        let here = stack.status(no);
        let there = stack.sim_state(no);
        let consistent = matches!(
            (here, there.as_deref()),
            (OrderStatus::Closed, None | Some("CLOSED" | "REVOKED"))
                | (OrderStatus::Paid, Some("SUCCESS" | "REFUND"))
                | (OrderStatus::PendingPayment, _)
        );
        assert!(
            consistent,
            "order {no}: here {here:?}, at WeChat Pay {there:?}"
        );
    }
}

#[test]
fn half_the_provider_calls_failing_with_500_still_settles_every_order_correctly() {
    let stack = Stack::new();
    let nos: Vec<_> = (0..20).map(|_| stack.order()).collect();
    for (i, no) in nos.iter().enumerate() {
        match i % 4 {
            0 | 1 => stack.sim_put(no, "NOTPAY"),
            2 => {
                stack.sim_put(no, "NOTPAY");
                let _ = stack.sim.admin().pay(no.as_str()).unwrap();
            }
            _ => {}
        }
    }
    // Flip a global 500 on and off: about half the calls fail.
    let flipping = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&flipping);
    let admin = stack.sim.admin();
    let flipper = std::thread::spawn(move || {
        let mut on = false;
        while flag.load(Ordering::Relaxed) {
            on = !on;
            if on {
                let _ = admin.set_global_faults(&Faults {
                    status: Some(500),
                    ..Default::default()
                });
            } else {
                let _ = admin.clear_global_faults();
            }
            std::thread::sleep(Duration::from_millis(35));
        }
        let _ = admin.clear_global_faults();
    });
    let mut settings = stack.settings();
    // Generous: an attempt fails whenever any of its calls meets the fault.
    settings.max_attempts = 60;
    let worker = stack.start(settings);
    stack.relay();
    let started = Instant::now();
    while nos
        .iter()
        .any(|no| stack.status(no) == OrderStatus::PendingPayment)
    {
        assert_matches_wechat(&stack, &nos);
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "not every order settled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    flipping.store(false, Ordering::Relaxed);
    flipper.join().unwrap();
    worker.stop();
    assert_matches_wechat(&stack, &nos);
    assert!(
        stack.sim.admin().stats().unwrap().faults_injected > 0,
        "the fault never fired"
    );
    assert_eq!(stack.depth("queue.ordertimeout.parked"), 0);
    stack.assert_conserved();
}

#[test]
fn tampered_signatures_never_close_anything_and_end_parked() {
    let stack = Stack::new();
    let nos: Vec<_> = (0..3).map(|_| stack.order()).collect();
    stack.sim_put(&nos[0], "NOTPAY");
    stack.sim_put(&nos[1], "CLOSED");
    // nos[2]: no payment order (a forged 404 would close it).
    stack
        .sim
        .admin()
        .set_global_faults(&Faults {
            tamper_signature: true,
            ..Default::default()
        })
        .unwrap();
    let worker = stack.start(stack.settings()); // max_attempts 4
    stack.relay();
    stack.wait_depth("queue.ordertimeout.parked", 3, Duration::from_secs(20));
    worker.stop();
    for no in &nos {
        assert_eq!(
            stack.status(no),
            OrderStatus::PendingPayment,
            "acted on a forged answer"
        );
    }
    assert_eq!(stack.stock("TEA"), 1000 - 3 * 2);
    let parked = stack.drain("queue.ordertimeout.parked");
    for (_, props) in &parked {
        let (reason, detail) = crate::support::reason_of(props);
        assert_eq!(reason, "retries_exhausted");
        assert!(detail.contains("gave up after 4 attempts"), "{detail}");
        assert!(detail.contains("signature"), "{detail}");
    }
    stack.assert_conserved();
}

#[test]
fn a_payment_between_our_query_and_our_close_is_compensated_not_closed() {
    let stack = Stack::new();
    let no = stack.order();
    stack.sim_put(&no, "NOTPAY");
    // Close answers 204 but changes nothing, and takes a while: long enough
    // for the buyer to pay meanwhile.
    stack
        .sim
        .admin()
        .set_order_faults(
            no.as_str(),
            &Faults {
                close_noop: true,
                latency_ms: 400,
                only: Some(Endpoint::Close),
                ..Default::default()
            },
        )
        .unwrap();
    let worker = stack.start(stack.settings());
    stack.relay();
    let started = Instant::now();
    while stack
        .sim
        .admin()
        .order(no.as_str())
        .unwrap()
        .unwrap()
        .closes
        == 0
    {
        assert!(started.elapsed() < Duration::from_secs(10), "no close call");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = stack.sim.admin().pay(no.as_str()).unwrap();
    assert_eq!(
        stack.wait_settled(&no, Duration::from_secs(15)),
        OrderStatus::Paid
    );
    worker.stop();
    assert_eq!(stack.stock("TEA"), 998, "never given back");
    assert_eq!(
        domain::payments_of(&mut stack.db.conn(), &no)
            .unwrap()
            .len(),
        1
    );
    stack.assert_conserved();
}

#[test]
fn a_close_that_does_not_take_is_never_trusted() {
    let stack = Stack::new();
    let no = stack.order();
    stack.sim_put(&no, "NOTPAY");
    // The first two closes answer 204 but leave the order payable.
    stack
        .sim
        .admin()
        .set_order_faults(
            no.as_str(),
            &Faults {
                close_noop: true,
                only: Some(Endpoint::Close),
                times: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    let worker = stack.start(stack.settings());
    stack.relay();
    assert_eq!(
        stack.wait_settled(&no, Duration::from_secs(15)),
        OrderStatus::Closed
    );
    worker.stop();
    let sim_order = stack.sim.admin().order(no.as_str()).unwrap().unwrap();
    assert_eq!(sim_order.trade_state, "CLOSED");
    assert_eq!(
        sim_order.closes, 3,
        "closed here only after a close that took"
    );
    stack.assert_conserved();
}

#[test]
fn a_permanent_provider_error_parks_the_message_at_once() {
    let stack = Stack::new();
    let no = stack.order();
    stack.sim_put(&no, "NOTPAY");
    stack
        .sim
        .admin()
        .set_order_faults(
            no.as_str(),
            &Faults {
                status: Some(403),
                ..Default::default()
            },
        )
        .unwrap();
    let worker = stack.start(stack.settings());
    stack.relay();
    stack.wait_depth("queue.ordertimeout.parked", 1, Duration::from_secs(15));
    worker.stop();
    assert_eq!(stack.status(&no), OrderStatus::PendingPayment);
    assert_eq!(
        stack.sim.admin().stats().unwrap().faults_injected,
        1,
        "asked once, no retries"
    );
    let parked = stack.drain("queue.ordertimeout.parked");
    let (reason, detail) = crate::support::reason_of(&parked[0].1);
    assert_eq!(reason, "permanent_error");
    assert!(detail.contains("NO_AUTH"), "{detail}");
    stack.assert_conserved();
}
