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

#[test]
fn a_notification_racing_the_close_has_one_winner_and_stock_is_conserved() {
    let door = Arc::new(FrontDoor::start());
    let orders = prepaid_orders(&door, 12);
    wait_past_deadlines(&door, &orders);
    let settler = Arc::new(settler(&door));
    let mut handles = Vec::new();
    for (i, no) in orders.iter().enumerate() {
        let barrier = Arc::new(Barrier::new(2));
        let tx = paid_transaction(
            no.as_str(),
            2 * UNIT_FEN,
            &format!("42000000002026112600000{i:05}"),
        );
        // Signed before the race so both sides start at once.
        let notification = door.notification(&tx, unix_now());
        let (d, b) = (Arc::clone(&door), Arc::clone(&barrier));
        handles.push(std::thread::spawn(move || {
            b.wait();
            let a = d.deliver(&notification);
            assert_eq!(a.status, 204, "{}", a.body);
            None
        }));
        let (s, b, no) = (Arc::clone(&settler), barrier, no.clone());
        handles.push(std::thread::spawn(move || {
            b.wait();
            Some(s.settle(&no, Trigger::Message, Utc::now()))
        }));
    }
    let settlements: Vec<Settlement> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    let mut conn = door.db.conn();
    let (mut paid, mut closed) = (0, 0);
    for no in &orders {
        let order = domain::find_order(&mut conn, no).unwrap().unwrap();
        let payments = domain::payments_of(&mut conn, no).unwrap();
        assert_eq!(payments.len(), 1, "{no}: exactly one payment recorded");
        match order.status {
            OrderStatus::Paid => {
                assert!(!payments[0].paid_after_close, "{no}");
                paid += 1;
            }
            OrderStatus::Closed => {
                assert!(
                    payments[0].paid_after_close,
                    "{no}: the close won, the payment is kept for a refund"
                );
                closed += 1;
            }
            OrderStatus::PendingPayment => panic!("{no} left pending: {settlements:?}"),
        }
    }
    eprintln!("race: notification first {paid}, close first {closed}");
    for balance in domain::stock_balances(&mut conn).unwrap() {
        assert!(balance.is_conserved(), "{balance:?}");
    }
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
