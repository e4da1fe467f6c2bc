//! WeChat Pay payment notifications through `serve`: paid within a second,
//! duplicates harmless, and nothing at all changes for a notification that
//! is tampered, stale, a probe, undecryptable or not about our order.

use domain::testing::wait_for;
use domain::{OrderNo, OrderStatus};
use order_producer::testing::{paid_transaction, unix_now, FrontDoor, APPID, UNIT_FEN};
use std::time::Duration;

fn status(door: &FrontDoor, no: &OrderNo) -> OrderStatus {
    domain::find_order(&mut door.db.conn(), no)
        .unwrap()
        .unwrap()
        .status
}

fn payments(door: &FrontDoor, no: &OrderNo) -> Vec<domain::Payment> {
    domain::payments_of(&mut door.db.conn(), no).unwrap()
}

#[test]
fn paying_in_the_simulator_marks_the_order_paid_within_a_second() {
    let door = FrontDoor::start();
    let no = door.order_tea(2);
    let _ = door.prepay(&no);
    let paid = door.sim.admin().pay(no.as_str()).unwrap();
    let started = std::time::Instant::now();
    wait_for(Duration::from_secs(5), || {
        (status(&door, &no) == OrderStatus::Paid).then_some(())
    })
    .expect("the notification marked the order paid");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let p = payments(&door, &no);
    assert_eq!(p.len(), 1);
    assert_eq!(
        Some(p[0].transaction_id.as_str()),
        paid.transaction_id.as_deref()
    );
    assert_eq!(
        (p[0].amount.get(), p[0].paid_after_close),
        (2 * UNIT_FEN, false)
    );
    let at_sim = wait_for(Duration::from_secs(2), || {
        door.sim
            .admin()
            .order(no.as_str())
            .unwrap()
            .filter(|o| o.notify_delivered)
    })
    .expect("the simulator saw a 2xx");
    assert_eq!(at_sim.notify_attempts, 1);
    let shown = door.call("GET", &format!("/v1/orders/{no}"), None).json();
    assert_eq!(shown["status"], "paid");
    assert_eq!(
        shown["payment"]["transaction_id"],
        p[0].transaction_id.as_str()
    );
    assert_eq!(shown["payment"]["paid_after_close"], false);
}

#[test]
fn a_duplicate_notification_is_acknowledged_and_changes_nothing() {
    let door = FrontDoor::start();
    let no = door.order_tea(2);
    let tx = paid_transaction(no.as_str(), 2 * UNIT_FEN, "4200000000202611260000000101");
    let first = door.notification(&tx, unix_now());
    assert_eq!(door.deliver(&first).status, 204);
    // The same bytes again (WeChat Pay retrying after a lost answer), and a
    // fresh signature of the same payment: both acknowledged, nothing new.
    assert_eq!(door.deliver(&first).status, 204);
    assert_eq!(
        door.deliver(&door.notification(&tx, unix_now())).status,
        204
    );
    assert_eq!(payments(&door, &no).len(), 1);
    let events = domain::order_events(&mut door.db.conn(), &no).unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "paid").count(), 1);
}

#[test]
fn untrustworthy_notifications_are_refused_and_change_nothing() {
    let door = FrontDoor::start();
    let no = door.order_tea(2);
    let tx = paid_transaction(no.as_str(), 2 * UNIT_FEN, "4200000000202611260000000102");
    let good = door.notification(&tx, unix_now());
    let header = |n: &wechatpay_sim::SignedNotification, name: &str| {
        n.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let with_header = |name: &str, value: &str| {
        let mut n = good.clone();
        for (k, v) in &mut n.headers {
            if k.eq_ignore_ascii_case(name) {
                *v = value.to_owned();
            }
        }
        n
    };

    let mut tampered = good.clone();
    let at = tampered.body.iter().position(|b| *b == b'}').unwrap();
    tampered.body.insert(at, b' ');
    let stale = door.notification(&tx, unix_now() - 300);
    let future = door.notification(&tx, unix_now() + 300);
    let probe = with_header(
        "Wechatpay-Signature",
        &format!(
            "WECHATPAY/SIGNTEST/{}",
            header(&good, "Wechatpay-Signature")
        ),
    );
    let unknown_serial = with_header(
        "Wechatpay-Serial",
        "PUB_KEY_ID_0000000000000000000000000000000000",
    );
    let other_scheme = with_header("Wechatpay-Signature-Type", "WECHATPAY2-SM2-WITH-SM3");
    let mut unsigned = good.clone();
    unsigned
        .headers
        .retain(|(k, _)| !k.to_ascii_lowercase().starts_with("wechatpay-"));
    // Encrypted with another APIv3 key, yet correctly signed.
    let other_key = wechatpay_sim::signed_notification(
        wechatpay_sim::SimKeys::shared(),
        &door.sim.config().signing_serial,
        b"AnotherApiV3Key00000000000000000",
        &tx,
        unix_now(),
    );
    for (what, n, want) in [
        ("tampered", &tampered, 401),
        ("stale", &stale, 401),
        ("from the future", &future, 401),
        ("probe", &probe, 401),
        ("unknown serial", &unknown_serial, 401),
        ("another signature type", &other_scheme, 401),
        ("unsigned", &unsigned, 401),
        ("undecryptable", &other_key, 400),
    ] {
        let a = door.deliver(n);
        assert_eq!(a.status, want, "{what}: {}", a.body);
        assert_eq!(a.json()["code"], "FAIL", "{what}");
        assert!(a.json()["message"].is_string(), "{what}");
    }
    let garbage = door.send(
        "POST",
        order_producer::serve::NOTIFY_PATH,
        &[("Content-Type", "application/json")],
        Some(b"{\"not\":\"a notification\"}"),
    );
    assert_eq!(garbage.status, 401);
    let mut oversized = good.clone();
    oversized.body = vec![b' '; order_producer::testing::MAX_BODY + 1];
    assert_eq!(door.deliver(&oversized).status, 413);
    assert_eq!(status(&door, &no), OrderStatus::PendingPayment);
    assert!(payments(&door, &no).is_empty());
    // The genuine one still works afterwards.
    assert_eq!(door.deliver(&good).status, 204);
    assert_eq!(status(&door, &no), OrderStatus::Paid);
}

#[test]
fn notifications_about_another_merchant_app_or_order_are_refused() {
    let door = FrontDoor::start();
    let no = door.order_tea(2);
    let mut other_mch = paid_transaction(no.as_str(), 2 * UNIT_FEN, "4200000000202611260000000103");
    other_mch["mchid"] = "1999999999".into();
    let mut other_app = paid_transaction(no.as_str(), 2 * UNIT_FEN, "4200000000202611260000000104");
    other_app["appid"] = "wx0000000000000000".into();
    let mut no_trade_no =
        paid_transaction(no.as_str(), 2 * UNIT_FEN, "4200000000202611260000000105");
    no_trade_no.as_object_mut().unwrap().remove("out_trade_no");
    for (what, tx, want) in [
        ("another merchant", &other_mch, 400),
        ("another app", &other_app, 400),
        ("no out_trade_no", &no_trade_no, 400),
        (
            "an order that is not ours",
            &paid_transaction(
                "OT20260101000000000000",
                100,
                "4200000000202611260000000106",
            ),
            404,
        ),
    ] {
        let a = door.deliver(&door.notification(tx, unix_now()));
        assert_eq!(a.status, want, "{what}: {}", a.body);
        assert_eq!(a.json()["code"], "FAIL");
    }
    assert_eq!(status(&door, &no), OrderStatus::PendingPayment);
    assert!(payments(&door, &no).is_empty());
    assert_eq!(APPID, door.sim.config().appid.as_deref().unwrap());
}

#[test]
fn a_payment_that_does_not_match_the_order_is_left_for_a_human() {
    let door = FrontDoor::start();
    let no = door.order_tea(2);
    let tx = paid_transaction(no.as_str(), 1, "4200000000202611260000000107");
    let a = door.deliver(&door.notification(&tx, unix_now()));
    assert_eq!(a.status, 204, "recorded as an anomaly: {}", a.body);
    let order = domain::find_order(&mut door.db.conn(), &no)
        .unwrap()
        .unwrap();
    assert_eq!(order.status, OrderStatus::PendingPayment);
    assert_eq!(order.anomaly, Some(domain::Anomaly::AmountMismatch));
    assert!(payments(&door, &no).is_empty());
}

#[test]
fn a_notification_for_an_order_closed_here_records_a_payment_after_close() {
    let door = FrontDoor::start();
    let no = door.order_tea(2);
    let _ = domain::close_unpaid(&mut door.db.conn(), &no, "test close", None).unwrap();
    let tx = paid_transaction(no.as_str(), 2 * UNIT_FEN, "4200000000202611260000000108");
    assert_eq!(
        door.deliver(&door.notification(&tx, unix_now())).status,
        204
    );
    assert_eq!(
        door.deliver(&door.notification(&tx, unix_now())).status,
        204
    );
    assert_eq!(status(&door, &no), OrderStatus::Closed);
    let p = payments(&door, &no);
    assert_eq!(p.len(), 1);
    assert!(p[0].paid_after_close);
    let shown = door.call("GET", &format!("/v1/orders/{no}"), None).json();
    assert_eq!(shown["payment"]["paid_after_close"], true);
}

#[test]
fn a_lost_notification_leaves_the_order_pending_for_the_worker() {
    let door = FrontDoor::start();
    door.sim.admin().set_drop_notifications(true).unwrap();
    let no = door.order_tea(2);
    let _ = door.prepay(&no);
    door.sim.admin().pay(no.as_str()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&door, &no), OrderStatus::PendingPayment);
    assert_eq!(door.sim.admin().stats().unwrap().notifications_dropped, 1);
}

#[test]
fn paying_after_the_deadline_is_refused_by_wechat_pay() {
    let door = FrontDoor::start();
    let a = door.call(
        "POST",
        "/v1/orders",
        Some(r#"{"items":[{"sku":"TEA","quantity":2}],"payment_window":"7s"}"#),
    );
    let no = OrderNo::parse(a.json()["order_no"].as_str().unwrap()).unwrap();
    let _ = door.prepay(&no);
    // time_expire is the deadline rounded down to the second.
    std::thread::sleep(Duration::from_secs(8));
    let err = door.sim.admin().pay(no.as_str()).unwrap_err().to_string();
    assert!(err.contains("ORDER_CLOSED") || err.contains("409"), "{err}");
    let at_sim = door.sim.admin().order(no.as_str()).unwrap().unwrap();
    assert_eq!(at_sim.trade_state, "CLOSED");
    assert_eq!(
        status(&door, &no),
        OrderStatus::PendingPayment,
        "the worker closes it here"
    );
}

#[test]
fn refund_notifications_are_verified_and_must_name_our_refund() {
    let door = FrontDoor::start();
    let notice = |out_refund_no: &str, mchid: &str| {
        wechatpay_sim::signed_refund_notification(
            wechatpay_sim::SimKeys::shared(),
            &door.sim.config().signing_serial,
            door.sim.config().apiv3_key.as_bytes(),
            &serde_json::json!({
                "mchid": mchid,
                "out_trade_no": "OT20260101000000000000",
                "transaction_id": "4200000000202611260000000109",
                "out_refund_no": out_refund_no,
                "refund_id": "50300000000000000000000000001",
                "refund_status": "SUCCESS",
                "success_time": "2026-11-26T18:40:00+08:00",
                "user_received_account": "支付用户零钱",
                "amount": {"total": 100, "refund": 100, "payer_total": 100, "payer_refund": 100},
            }),
            unix_now(),
        )
    };
    let deliver = |n: &wechatpay_sim::SignedNotification| {
        door.deliver_to(order_producer::serve::REFUND_NOTIFY_PATH, n)
    };
    let unknown = deliver(&notice(
        "OT20260101000000000000-R1",
        wechatpay_sim::DEFAULT_MCHID,
    ));
    assert_eq!(
        (unknown.status, unknown.json()["code"].as_str()),
        (404, Some("FAIL"))
    );
    let other = deliver(&notice("OT20260101000000000000-R1", "1999999999"));
    assert_eq!(other.status, 400, "{}", other.body);
    let mut tampered = notice("OT20260101000000000000-R1", wechatpay_sim::DEFAULT_MCHID);
    tampered.body.push(b' ');
    assert_eq!(deliver(&tampered).status, 401);
    // A payment notification is not a refund notification.
    let payment = door.notification(
        &paid_transaction(
            "OT20260101000000000000",
            100,
            "4200000000202611260000000110",
        ),
        unix_now(),
    );
    assert_eq!(deliver(&payment).status, 400);
}

#[test]
fn a_refund_notification_for_another_amount_parks_our_refund_for_a_human() {
    let door = FrontDoor::start();
    let no = door.order_tea(2);
    let _ = domain::close_unpaid(&mut door.db.conn(), &no, "test close", None).unwrap();
    let tx = paid_transaction(no.as_str(), 2 * UNIT_FEN, "4200000000202611260000000111");
    assert_eq!(
        door.deliver(&door.notification(&tx, unix_now())).status,
        204
    );
    let ours = domain::refunds_of(&mut door.db.conn(), &no)
        .unwrap()
        .remove(0);
    let refund = |fen: i64| {
        wechatpay_sim::signed_refund_notification(
            wechatpay_sim::SimKeys::shared(),
            &door.sim.config().signing_serial,
            door.sim.config().apiv3_key.as_bytes(),
            &serde_json::json!({
                "mchid": wechatpay_sim::DEFAULT_MCHID,
                "out_trade_no": no.as_str(),
                "transaction_id": "4200000000202611260000000111",
                "out_refund_no": ours.out_refund_no,
                "refund_id": "50300000000000000000000000002",
                "refund_status": "SUCCESS",
                "success_time": "2026-11-26T18:40:00+08:00",
                "amount": {"total": fen, "refund": fen, "payer_total": fen, "payer_refund": fen},
            }),
            unix_now(),
        )
    };
    let send = |n: &wechatpay_sim::SignedNotification| {
        door.deliver_to(order_producer::serve::REFUND_NOTIFY_PATH, n)
    };
    assert_eq!(send(&refund(1)).status, 204, "recorded for a human");
    let after = domain::refunds_of(&mut door.db.conn(), &no)
        .unwrap()
        .remove(0);
    assert_eq!(
        after.status,
        domain::RefundStatus::Requested,
        "not marked succeeded"
    );
    assert!(
        after.needs_human.as_deref().unwrap().contains("1 fen"),
        "{after:?}"
    );
}
