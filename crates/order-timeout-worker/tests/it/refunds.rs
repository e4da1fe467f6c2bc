//! Refunds of payments after close, against the real database, the
//! simulator and the front door: exactly one refund per payment, whatever
//! the duplicates, failures and crashes.

use std::time::Duration;

use domain::testing::wait_for;
use domain::{OrderNo, RefundStatus};
use order_producer::testing::FrontDoor;
use std::sync::Arc;

use order_timeout_worker::{RefundReport, Refunder, Settler, Trigger};

use crate::front_door::settler;

const LADDER: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
];

fn ladder() -> broker::RetryLadder {
    broker::RetryLadder::new(&LADDER).unwrap()
}

/// An order closed here whose buyer then paid its (still open) payment
/// order at WeChat Pay: the notification records a payment after close,
/// and with it a refund. Returns the order and its refund's `out_refund_no`.
fn paid_after_close(door: &FrontDoor) -> (OrderNo, String) {
    let no = door.order_tea(2);
    let _ = door.prepay(&no);
    let _ = domain::close_unpaid(&mut door.db.conn(), &no, "closed by the test", None).unwrap();
    door.sim.admin().pay(no.as_str()).unwrap();
    let refund = wait_for(Duration::from_secs(5), || {
        domain::refunds_of(&mut door.db.conn(), &no)
            .unwrap()
            .into_iter()
            .next()
    })
    .expect("the notification recorded a payment after close and its refund");
    assert_eq!(refund.status, RefundStatus::Requested);
    (no, refund.out_refund_no)
}

fn refund_status(door: &FrontDoor, no: &OrderNo) -> RefundStatus {
    domain::refunds_of(&mut door.db.conn(), no).unwrap()[0].status
}

/// Runs refund passes until the order's refund is final (or 10 s pass).
fn until_final(door: &FrontDoor, r: &Refunder, no: &OrderNo) -> RefundStatus {
    wait_for(Duration::from_secs(10), || {
        let _: RefundReport = r.refund_due().unwrap();
        let st = refund_status(door, no);
        st.is_final().then_some(st)
    })
    .unwrap_or_else(|| refund_status(door, no))
}

/// The refunder the worker would run, with the test's short ladder.
fn refunder(s: &Settler) -> Refunder {
    Refunder::new(Arc::new(s.clone()), ladder())
}

fn refund_notify(door: &FrontDoor) -> String {
    format!("{}{}", door.base, order_producer::serve::REFUND_NOTIFY_PATH)
}

#[test]
fn a_payment_after_close_is_refunded_once_and_the_notification_finishes_it() {
    let door = FrontDoor::start();
    let (no, out_refund_no) = paid_after_close(&door);
    let r = refunder(&settler(&door)).with_notify_url(Some(refund_notify(&door)));
    let report = r.refund_due().unwrap();
    assert_eq!(report.claimed, 1);
    // The refund notification (not another pass) finishes it.
    let done = wait_for(Duration::from_secs(5), || {
        (refund_status(&door, &no) == RefundStatus::Succeeded).then_some(())
    });
    assert!(done.is_some(), "still {:?}", refund_status(&door, &no));
    let at_sim = door.sim.admin().refund(&out_refund_no).unwrap().unwrap();
    assert_eq!((at_sim.status.as_str(), at_sim.refund), ("SUCCESS", 100));
    let stats = door.sim.admin().stats().unwrap();
    assert_eq!((stats.refunds_created, stats.refund_requests), (1, 1));
    let shown = door.call("GET", &format!("/v1/orders/{no}"), None).json();
    assert_eq!(shown["refund"]["status"], "succeeded");
    assert_eq!(shown["refund"]["out_refund_no"], out_refund_no.as_str());
    // Nothing left to do.
    assert_eq!(r.refund_due().unwrap().claimed, 0);
}

#[test]
fn duplicate_triggers_and_two_workers_make_one_refund_request() {
    let door = FrontDoor::start();
    let (no, out_refund_no) = paid_after_close(&door);
    // The same payment reported again: by a duplicate notification and by
    // the operator's settle (a recheck of the closed order).
    door.sim.admin().notify_again(no.as_str()).unwrap();
    let s = settler(&door);
    let r = refunder(&s);
    let _ = s.settle(&no, Trigger::Operator, chrono::Utc::now());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        domain::refunds_of(&mut door.db.conn(), &no).unwrap().len(),
        1
    );
    // Two workers at once.
    let (a, b) = std::thread::scope(|scope| {
        let r2 = refunder(&settler(&door));
        let a = scope.spawn(|| r.refund_due().unwrap());
        let b = scope.spawn(move || r2.refund_due().unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a.claimed + b.claimed, 1, "{a:?} {b:?}");
    assert_eq!(
        until_final(&door, &r, &no),
        RefundStatus::Succeeded,
        "followed by querying"
    );
    let stats = door.sim.admin().stats().unwrap();
    assert_eq!((stats.refunds_created, stats.refund_requests), (1, 1));
    assert!(
        door.sim
            .admin()
            .refund(&out_refund_no)
            .unwrap()
            .unwrap()
            .queries
            >= 1
    );
}

#[test]
fn server_errors_and_timeouts_are_retried_with_the_same_refund() {
    let door = FrontDoor::start();
    let (no, out_refund_no) = paid_after_close(&door);
    let s = settler(&door);
    let r = refunder(&s);
    door.sim
        .admin()
        .set_global_faults(&wechatpay_sim::Faults {
            status: Some(500),
            times: Some(2),
            only: Some(wechatpay_sim::Endpoint::Refund),
            ..wechatpay_sim::Faults::default()
        })
        .unwrap();
    let first = r.refund_due().unwrap();
    assert_eq!(first.retried, 1);
    let row = &domain::refunds_of(&mut door.db.conn(), &no).unwrap()[0];
    assert!(
        row.last_error.as_deref().unwrap_or("").contains("500"),
        "{row:?}"
    );
    // Longer than the client's 2 s timeout, once: WeChat Pay may have made
    // the refund though we never heard.
    std::thread::sleep(Duration::from_millis(100));
    let _ = r.refund_due().unwrap();
    door.sim
        .admin()
        .set_global_faults(&wechatpay_sim::Faults {
            latency_ms: 2500,
            times: Some(1),
            only: Some(wechatpay_sim::Endpoint::Refund),
            ..wechatpay_sim::Faults::default()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let _ = r.refund_due().unwrap();
    assert_eq!(until_final(&door, &r, &no), RefundStatus::Succeeded);
    let stats = door.sim.admin().stats().unwrap();
    assert_eq!(
        stats.refunds_created, 1,
        "one refund at WeChat Pay: {stats:?}"
    );
    let at_sim = door.sim.admin().refund(&out_refund_no).unwrap().unwrap();
    assert_eq!(at_sim.refund, 100);
}

#[test]
fn an_abnormal_refund_is_parked_for_a_human_and_shown_by_status() {
    let door = FrontDoor::start();
    door.sim
        .admin()
        .set_refund_outcome("ABNORMAL", Some(Duration::from_millis(50)))
        .unwrap();
    let (no, out_refund_no) = paid_after_close(&door);
    let s = settler(&door);
    let r = refunder(&s);
    assert_eq!(until_final(&door, &r, &no), RefundStatus::Abnormal);
    let parked = domain::refunds_needing_human(&mut door.db.conn(), 10).unwrap();
    assert_eq!(parked.len(), 1);
    assert!(parked[0]
        .needs_human
        .as_deref()
        .unwrap()
        .contains("ABNORMAL"));
    // The worker leaves it alone from now on.
    assert_eq!(r.refund_due().unwrap().claimed, 0);
    let mut out = Vec::new();
    let topology =
        broker::Topology::single(Duration::from_mins(30), broker::QueueType::Classic).unwrap();
    let _ =
        order_producer::status::print(&mut out, &mut door.db.conn(), door.vhost.url(), &topology)
            .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("refunds: abnormal 1"), "{out}");
    assert!(out.contains("refunds that need a human: 1"), "{out}");
    assert!(out.contains(&out_refund_no), "{out}");
}

#[test]
fn a_crash_between_the_request_and_its_record_reuses_the_out_refund_no() {
    let door = FrontDoor::start();
    let (no, out_refund_no) = paid_after_close(&door);
    let s = settler(&door);
    let r = refunder(&s);
    // A worker sent the request, WeChat Pay made the refund, and the worker
    // died (kill -9) before recording anything: the row still says requested.
    let refund = domain::refunds_of(&mut door.db.conn(), &no)
        .unwrap()
        .remove(0);
    let made = s
        .payments()
        .refund(&payment_client::RefundRequest {
            transaction_id: refund.transaction_id.clone(),
            out_refund_no: out_refund_no.clone(),
            reason: "the crashed worker's request".into(),
            refund_fen: 100,
            total_fen: 100,
            notify_url: None,
        })
        .unwrap();
    assert_eq!(refund_status(&door, &no), RefundStatus::Requested);
    // The next worker asks again with the same out_refund_no.
    assert_eq!(until_final(&door, &r, &no), RefundStatus::Succeeded);
    let stats = door.sim.admin().stats().unwrap();
    assert_eq!((stats.refunds_created, stats.refund_requests), (1, 2));
    let row = domain::refunds_of(&mut door.db.conn(), &no)
        .unwrap()
        .remove(0);
    assert_eq!(
        row.refund_id, made.refund_id,
        "the refund WeChat Pay made the first time"
    );
}
