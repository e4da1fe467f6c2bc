//! What a settlement costs the database, counted on the connections: the
//! statements and round trips per settlement by outcome. These are exact
//! counts, not timings; a change that adds a round trip to the hot path
//! fails here and must say why (ARCHITECTURE.md, "Cost per settled order").

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::pool::{RoundTrips, Sent};
use domain::OrderNo;
use order_timeout_worker::settle::{Settlement, Settler, Trigger};

use crate::Stack;

/// Settles `no` once and returns what it sent.
fn settle_counted(
    settler: &Settler,
    counter: &RoundTrips,
    no: &OrderNo,
    trigger: Trigger,
    now: chrono::DateTime<Utc>,
) -> (Settlement, Sent) {
    let before = counter.snapshot();
    let s = settler.settle(no, trigger, now);
    (s, counter.snapshot() - before)
}

fn sent(statements: u64, round_trips: u64, transactions: u64) -> Sent {
    Sent {
        statements,
        round_trips,
        transactions,
        connections: 0,
    }
}

#[test]
fn each_outcome_costs_the_database_a_known_number_of_round_trips() {
    let stack = Stack::new();
    let mix = stack.create_mix();
    let counter = RoundTrips::new();
    let pool =
        domain::build_counted_pool(stack.db.url(), 1, Duration::from_secs(5), Some(&counter))
            .unwrap();
    let client = payment_client::Client::new(stack.payment_config()).unwrap();
    let settler = Settler::new(pool, Arc::new(client)).with_recheck_after(Duration::from_secs(1));
    let now = Utc::now() + chrono::Duration::hours(1);
    let settle = |no: &OrderNo, trigger| settle_counted(&settler, &counter, no, trigger, now);

    // The first of each kind prepares its statements (a round trip each,
    // once per connection; the pool has one): warm it, then count.
    for no in [&mix.untouched[0], &mix.unpaid[0], &mix.paid[0]] {
        assert!(settle(no, Trigger::Message).0.is_final());
    }

    // Never created at WeChat Pay: read the order, close it (one statement).
    let (s, cost) = settle(&mix.untouched[1], Trigger::Message);
    assert!(matches!(s, Settlement::Closed { .. }), "{s:?}");
    assert_eq!(cost, sent(2, 2, 0));
    // NOTPAY: closed at WeChat Pay and read back; the same two statements.
    let (s, cost) = settle(&mix.unpaid[1], Trigger::Message);
    assert!(matches!(s, Settlement::Closed { .. }), "{s:?}");
    assert_eq!(cost, sent(2, 2, 0));
    // Paid: read, then pending -> paid with payment and event (one statement).
    let (s, cost) = settle(&mix.paid[1], Trigger::Message);
    assert_eq!(s, Settlement::Compensated { refunded: false });
    assert_eq!(cost, sent(2, 2, 0));
    // A duplicate message: the read says it is settled; nothing else.
    let (s, cost) = settle(&mix.untouched[1], Trigger::Message);
    assert!(matches!(s, Settlement::AlreadySettled(_)), "{s:?}");
    assert_eq!(cost, sent(1, 1, 0));
    // The recheck of a close on ORDER_NOT_EXIST, due: read, finish it.
    // (Warm the recheck's statement on the first order closed above.)
    let (s, _) = settle(&mix.untouched[0], Trigger::Recheck);
    assert!(matches!(s, Settlement::Rechecked { .. }), "{s:?}");
    let (s, cost) = settle(&mix.untouched[1], Trigger::Recheck);
    assert!(matches!(s, Settlement::Rechecked { .. }), "{s:?}");
    assert_eq!(cost, sent(2, 2, 0));
    // A duplicate recheck: the read says it is done.
    let (s, cost) = settle(&mix.untouched[1], Trigger::Recheck);
    assert!(matches!(s, Settlement::AlreadySettled(_)), "{s:?}");
    assert_eq!(cost, sent(1, 1, 0));
    stack.assert_conserved();
}
