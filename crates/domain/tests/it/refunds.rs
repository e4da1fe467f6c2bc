//! Refunds: born with the payment after close, claimed by one worker at a
//! time, moved forward only.

use std::time::Duration;

use chrono::Utc;
use domain::testing::TestDb;
use domain::{
    claim_due_refunds, close_unpaid, mark_paid, park_refund, record_refund_status, refund_counts,
    refunds_needing_human, refunds_of, retry_refund_later, RefundStatus, RefundUpdate,
};

use crate::payments::payment;
use crate::{load, order};

fn paid_after_close(db: &TestDb) -> (domain::OrderNo, String) {
    let mut conn = db.conn();
    load(&mut conn, "TEA", 10, 100);
    let o = order(&mut conn, &[("TEA", 2)]);
    let _ = close_unpaid(&mut conn, &o.order_no, "unpaid", None).unwrap();
    let _ = mark_paid(
        &mut conn,
        &o.order_no,
        &payment("4200000000000000000000000001", 200),
    )
    .unwrap();
    let no = refunds_of(&mut conn, &o.order_no).unwrap()[0]
        .out_refund_no
        .clone();
    (o.order_no, no)
}

#[test]
fn a_claim_hides_the_refund_from_other_workers_for_the_lease() {
    let db = TestDb::new();
    let (_, no) = paid_after_close(&db);
    let mut conn = db.conn();
    let now = Utc::now();
    let first = claim_due_refunds(&mut conn, now, Duration::from_mins(1), 10).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].out_refund_no.as_str(), first[0].attempts),
        (no.as_str(), 1)
    );
    assert!(
        claim_due_refunds(&mut db.conn(), now, Duration::from_mins(1), 10)
            .unwrap()
            .is_empty()
    );
    // After the lease (a worker died): claimable again, same out_refund_no.
    let later = now + chrono::Duration::seconds(61);
    let again = claim_due_refunds(&mut conn, later, Duration::from_mins(1), 10).unwrap();
    assert_eq!(
        (again[0].out_refund_no.as_str(), again[0].attempts),
        (no.as_str(), 2)
    );
}

#[test]
fn statuses_move_forward_only_and_abnormal_waits_for_a_human() {
    let db = TestDb::new();
    let (order_no, no) = paid_after_close(&db);
    let mut conn = db.conn();
    let later = Utc::now() + chrono::Duration::seconds(5);
    let moved = |conn: &mut domain::PgConnection, s| {
        record_refund_status(conn, &no, s, Some("50300000000000000000000000001"), later).unwrap()
    };
    assert_eq!(
        moved(&mut conn, RefundStatus::Processing),
        RefundUpdate::Moved {
            from: RefundStatus::Requested
        }
    );
    assert_eq!(
        moved(&mut conn, RefundStatus::Requested),
        RefundUpdate::Unchanged {
            current: RefundStatus::Processing
        }
    );
    assert_eq!(
        moved(&mut conn, RefundStatus::Abnormal),
        RefundUpdate::Moved {
            from: RefundStatus::Processing
        }
    );
    let parked = refunds_needing_human(&mut conn, 10).unwrap();
    assert_eq!(parked.len(), 1);
    assert!(parked[0]
        .needs_human
        .as_deref()
        .unwrap()
        .contains("ABNORMAL"));
    assert!(
        claim_due_refunds(&mut conn, later, Duration::from_mins(1), 10)
            .unwrap()
            .is_empty()
    );
    // The human had it paid out at WeChat Pay: succeeded, no longer parked.
    assert_eq!(
        moved(&mut conn, RefundStatus::Succeeded),
        RefundUpdate::Moved {
            from: RefundStatus::Abnormal
        }
    );
    assert_eq!(
        moved(&mut conn, RefundStatus::Closed),
        RefundUpdate::Unchanged {
            current: RefundStatus::Succeeded
        }
    );
    assert!(refunds_needing_human(&mut conn, 10).unwrap().is_empty());
    let r = &refunds_of(&mut conn, &order_no).unwrap()[0];
    assert_eq!(
        r.refund_id.as_deref(),
        Some("50300000000000000000000000001")
    );
    assert!(r.finished_at.is_some());
    assert_eq!(
        refund_counts(&mut conn).unwrap(),
        [(RefundStatus::Succeeded, 1)]
    );
    assert_eq!(
        record_refund_status(&mut conn, "nope", RefundStatus::Succeeded, None, later).unwrap(),
        RefundUpdate::NotFound
    );
}

#[test]
fn a_parked_refund_is_left_alone_and_a_retry_waits() {
    let db = TestDb::new();
    let (_, no) = paid_after_close(&db);
    let mut conn = db.conn();
    let now = Utc::now();
    retry_refund_later(
        &mut conn,
        &no,
        now + chrono::Duration::seconds(30),
        "503 SYSTEM_ERROR",
    )
    .unwrap();
    assert!(
        claim_due_refunds(&mut conn, now, Duration::from_mins(1), 10)
            .unwrap()
            .is_empty()
    );
    park_refund(
        &mut conn,
        &no,
        "403 NOT_ENOUGH: the merchant balance is too low",
    )
    .unwrap();
    let much_later = now + chrono::Duration::hours(1);
    assert!(
        claim_due_refunds(&mut conn, much_later, Duration::from_mins(1), 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        refunds_needing_human(&mut conn, 10).unwrap()[0]
            .needs_human
            .as_deref(),
        Some("403 NOT_ENOUGH: the merchant balance is too low")
    );
}
