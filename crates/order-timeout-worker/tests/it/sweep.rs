//! The sweep always makes progress: orders it cannot settle neither block
//! newer ones nor get asked about again before their next step.

use std::time::Duration;

use domain::OrderStatus;
use wechatpay_sim::Faults;

use crate::Stack;

#[test]
fn a_pass_reaches_every_overdue_order_and_asks_each_unsettleable_one_once_per_step() {
    let stack = Stack::new();
    // Oldest first: two orders WeChat Pay keeps failing on, one whose answer
    // needs a human, then two it can settle. Pages of two.
    let failing: Vec<_> = (0..2).map(|_| stack.order()).collect();
    let odd = stack.order();
    let fine: Vec<_> = (0..2).map(|_| stack.order()).collect();
    for no in &failing {
        stack.sim_put(no, "NOTPAY");
        stack
            .sim
            .admin()
            .set_order_faults(
                no.as_str(),
                &Faults {
                    status: Some(500),
                    ..Faults::default()
                },
            )
            .unwrap();
    }
    let _ = stack
        .sim
        .admin()
        .put_order(
            odd.as_str(),
            &wechatpay_sim::Order {
                trade_state: "SUCCESS".into(),
                amount_total: 1,
                transaction_id: Some("4200000000000000000000000601".into()),
                success_time: Some("2026-11-26T18:30:00+08:00".into()),
                ..Default::default()
            },
        )
        .unwrap();
    std::thread::sleep(crate::WINDOW);
    let mut settings = stack.settings();
    settings.sweep_grace = Duration::from_millis(1);
    settings.sweep_batch = 2;
    // The sweep's back-off follows the retry ladder: 1 s, 2 s, 4 s here.
    let ladder = [1, 2, 4].map(Duration::from_secs);
    let sweeper = order_timeout_worker::Sweeper::new(
        std::sync::Arc::new(stack.settler()),
        broker::RetryLadder::new(&ladder).unwrap(),
        &settings,
    );

    let first = sweeper.sweep_once().unwrap().unwrap();
    assert_eq!(first.looked_at, 5, "{first:?}");
    assert_eq!(first.settled, 2, "{first:?}");
    assert_eq!(first.deferred, 2, "{first:?}");
    for no in &fine {
        assert_eq!(stack.status(no), OrderStatus::Closed);
    }
    for no in failing.iter().chain([&odd]) {
        assert_eq!(stack.status(no), OrderStatus::PendingPayment);
    }
    assert_eq!(
        domain::find_order(&mut stack.db.conn(), &odd)
            .unwrap()
            .unwrap()
            .anomaly,
        Some(domain::Anomaly::AmountMismatch)
    );
    let faults = stack.sim.admin().stats().unwrap().faults_injected;
    assert_eq!(faults, 2, "each failing order asked once");

    // At once again: the failing ones wait for their next step (1 s), the
    // anomaly for a human.
    let second = sweeper.sweep_once().unwrap().unwrap();
    assert_eq!(second.looked_at, 0, "{second:?}");
    assert_eq!(stack.sim.admin().stats().unwrap().faults_injected, faults);

    // After the step they are asked again, and deferred one step further.
    std::thread::sleep(Duration::from_millis(1100));
    let third = sweeper.sweep_once().unwrap().unwrap();
    assert_eq!((third.looked_at, third.deferred), (2, 2), "{third:?}");
    for no in &failing {
        let order = domain::find_order(&mut stack.db.conn(), no)
            .unwrap()
            .unwrap();
        assert_eq!(order.check_failures, 2);
        let wait = order.next_check_at.unwrap() - chrono::Utc::now();
        assert!(
            wait > chrono::Duration::milliseconds(1500),
            "the second step is the ladder's 2 s: {wait:?}"
        );
    }
    // WeChat Pay recovers: the next due pass settles them.
    for no in &failing {
        stack.sim.admin().clear_order_faults(no.as_str()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(2100));
    let fourth = sweeper.sweep_once().unwrap().unwrap();
    assert_eq!(fourth.settled, 2, "{fourth:?}");
    for no in &failing {
        assert_eq!(stack.status(no), OrderStatus::Closed);
    }
    stack.assert_conserved();
}
