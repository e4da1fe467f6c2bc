//! The worker beside the front door (`order-producer serve`): payment
//! notifications and the worker's settlement race for the same orders, and
//! the worker still settles what a lost notification left pending.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use chrono::Utc;
use domain::{OrderNo, OrderStatus};
use order_producer::testing::{paid_transaction, unix_now, FrontDoor, UNIT_FEN};
use order_timeout_worker::{Settlement, Settler, Trigger};

pub(crate) fn settler(door: &FrontDoor) -> Settler {
    let config = payment_client::Config::new(
        wechatpay_sim::DEFAULT_MCHID,
        wechatpay_sim::DEFAULT_MERCHANT_SERIAL_NO,
        &door.files.merchant_key_file,
    )
    .with_public_key(
        wechatpay_sim::DEFAULT_PUBLIC_KEY_ID,
        &door.files.wechatpay_public_key_file,
    )
    .with_base_url(door.sim.base_url())
    .with_timeouts(Duration::from_millis(500), Duration::from_secs(2));
    Settler::new(
        door.db.pool(8),
        Arc::new(payment_client::Client::new(config).unwrap()),
    )
}

/// Orders of 2 TEA through the API, prepaid, with a 6 s window.
fn prepaid_orders(door: &FrontDoor, n: usize) -> Vec<OrderNo> {
    (0..n)
        .map(|_| {
            let a = door.call(
                "POST",
                "/v1/orders",
                Some(r#"{"items":[{"sku":"TEA","quantity":2}],"payment_window":"6s"}"#),
            );
            assert_eq!(a.status, 201, "{}", a.body);
            let no = OrderNo::parse(a.json()["order_no"].as_str().unwrap()).unwrap();
            let _ = door.prepay(&no);
            no
        })
        .collect()
}

fn wait_past_deadlines(door: &FrontDoor, orders: &[OrderNo]) {
    let last = orders
        .iter()
        .map(|no| {
            domain::find_order(&mut door.db.conn(), no)
                .unwrap()
                .unwrap()
                .deadline
        })
        .max()
        .unwrap();
    let left = (last - Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(left + Duration::from_millis(50));
}

/// How the notification and the close of one order meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Race {
    /// The notification is recorded before the settlement starts.
    NotificationFirst,
    /// The settlement (a close) is done before the notification arrives.
    CloseFirst,
    /// Both start at once (a barrier); either may win.
    Together,
}

#[test]
fn a_notification_racing_the_close_has_one_winner_and_stock_is_conserved() {
    let door = Arc::new(FrontDoor::start());
    let orders = prepaid_orders(&door, 12);
    wait_past_deadlines(&door, &orders);
    let settler = Arc::new(settler(&door));
    // Each interleaving forced on a third of the orders (so both outcomes
    // are checked every run), the last third left to the race itself.
    let race_of = |i: usize| match i % 3 {
        0 => Race::NotificationFirst,
        1 => Race::CloseFirst,
        _ => Race::Together,
    };
    let mut handles = Vec::new();
    for (i, no) in orders.iter().enumerate() {
        let race = race_of(i);
        let tx = paid_transaction(
            no.as_str(),
            2 * UNIT_FEN,
            &format!("42000000002026112600000{i:05}"),
        );
        // Signed before the race so both sides start at once.
        let notification = door.notification(&tx, unix_now());
        let (d, s, no) = (Arc::clone(&door), Arc::clone(&settler), no.clone());
        let deliver = move || {
            let a = d.deliver(&notification);
            assert_eq!(a.status, 204, "{}", a.body);
        };
        let settle = move || s.settle(&no, Trigger::Message, Utc::now());
        match race {
            Race::NotificationFirst => {
                deliver();
                handles.push(std::thread::spawn(move || (race, settle())));
            }
            Race::CloseFirst => {
                let settled = settle();
                deliver();
                handles.push(std::thread::spawn(move || (race, settled)));
            }
            Race::Together => {
                let barrier = Arc::new(Barrier::new(2));
                let b = Arc::clone(&barrier);
                let notifier = std::thread::spawn(move || {
                    b.wait();
                    deliver();
                });
                handles.push(std::thread::spawn(move || {
                    barrier.wait();
                    let settled = settle();
                    notifier.join().unwrap();
                    (race, settled)
                }));
            }
        }
    }
    let settlements: Vec<(Race, Settlement)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut conn = door.db.conn();
    let (mut paid, mut closed) = (0, 0);
    for (no, (race, settlement)) in orders.iter().zip(&settlements) {
        let order = domain::find_order(&mut conn, no).unwrap().unwrap();
        let payments = domain::payments_of(&mut conn, no).unwrap();
        assert_eq!(payments.len(), 1, "{no}: exactly one payment recorded");
        match order.status {
            OrderStatus::Paid => {
                assert!(!payments[0].paid_after_close, "{no}");
                assert_ne!(*race, Race::CloseFirst, "{no}: {settlement:?}");
                paid += 1;
            }
            OrderStatus::Closed => {
                assert!(
                    payments[0].paid_after_close,
                    "{no}: the close won, the payment is kept for a refund"
                );
                assert_ne!(*race, Race::NotificationFirst, "{no}: {settlement:?}");
                closed += 1;
            }
            OrderStatus::PendingPayment => panic!("{no} left pending: {settlement:?}"),
        }
        match race {
            Race::NotificationFirst => assert_eq!(
                *settlement,
                Settlement::AlreadySettled(OrderStatus::Paid),
                "{no}"
            ),
            Race::CloseFirst => assert!(
                matches!(settlement, Settlement::Closed { .. }),
                "{no}: {settlement:?}"
            ),
            Race::Together => {}
        }
    }
    // Both interleavings happened (the forced ones at least).
    assert!(paid >= 4 && closed >= 4, "paid {paid}, closed {closed}");
    eprintln!("race: notification first {paid}, close first {closed}");
    domain::testing::assert_stock_conserved(&mut conn);
    let tea = domain::get_sku(&mut conn, &domain::SkuCode::parse("TEA").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        tea.stock,
        1000 - 2 * paid,
        "stock back exactly once per closed order"
    );
}

#[test]
fn a_lost_notification_is_compensated_by_the_worker() {
    let door = FrontDoor::start();
    door.sim.admin().set_drop_notifications(true).unwrap();
    let orders = prepaid_orders(&door, 1);
    let no = &orders[0];
    door.sim.admin().pay(no.as_str()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        domain::find_order(&mut door.db.conn(), no)
            .unwrap()
            .unwrap()
            .status,
        OrderStatus::PendingPayment,
        "no notification arrived"
    );
    wait_past_deadlines(&door, &orders);
    let s = settler(&door).settle(no, Trigger::Message, Utc::now());
    assert_eq!(s, Settlement::Compensated { refunded: false });
    let order = domain::find_order(&mut door.db.conn(), no)
        .unwrap()
        .unwrap();
    assert_eq!(order.status, OrderStatus::Paid);
}

#[test]
fn an_order_paid_by_notification_is_left_alone_by_the_worker() {
    let door = FrontDoor::start();
    let orders = prepaid_orders(&door, 1);
    let no = &orders[0];
    door.sim.admin().pay(no.as_str()).unwrap();
    domain::testing::wait_for(Duration::from_secs(5), || {
        (domain::find_order(&mut door.db.conn(), no)
            .unwrap()
            .unwrap()
            .status
            == OrderStatus::Paid)
            .then_some(())
    })
    .expect("paid by the notification");
    wait_past_deadlines(&door, &orders);
    let s = settler(&door).settle(no, Trigger::Message, Utc::now());
    assert_eq!(s, Settlement::AlreadySettled(OrderStatus::Paid));
    assert_eq!(
        door.sim.admin().order(no.as_str()).unwrap().unwrap().closes,
        0
    );
    assert_eq!(
        domain::payments_of(&mut door.db.conn(), no).unwrap().len(),
        1
    );
}
