//! The happy and ordinary paths: every state, close, not found.

use std::sync::Arc;

use payment_client::{CloseAnswer, Error, QueryOutcome, TradeState};
use wechatpay_sim::{Faults, Order};

use crate::support::env;

fn found(outcome: QueryOutcome) -> payment_client::Transaction {
    match outcome {
        QueryOutcome::Found(t) => t,
        other @ QueryOutcome::NotFound => panic!("expected a transaction, got {other:?}"),
    }
}

#[test]
fn query_reports_every_trade_state() {
    let e = env();
    for (i, state) in TradeState::ALL.into_iter().enumerate() {
        let no = format!("STATE{i:04}");
        e.admin.set_state(&no, state.as_str()).unwrap();
        let t = found(e.client.query_by_out_trade_no(&no).unwrap());
        assert_eq!(t.trade_state, state, "{no}");
        assert_eq!(t.out_trade_no.as_deref(), Some(no.as_str()));
        assert_eq!(t.mchid.as_deref(), Some(crate::support::MCHID));
    }
    assert_eq!(e.admin.stats().unwrap().queries, 7);
    assert!(e.sim.base_url().starts_with("http://127.0.0.1:"));
}

#[test]
fn query_of_a_paid_order_carries_payment_details() {
    let e = env();
    e.admin
        .put_order(
            "PAID000001",
            &Order {
                amount_total: 4_990,
                ..Order::default()
            },
        )
        .unwrap();
    let paid = e.admin.pay("PAID000001").unwrap();
    let t = found(e.client.query_by_out_trade_no("PAID000001").unwrap());
    assert_eq!(t.trade_state, TradeState::Success);
    assert_eq!(t.transaction_id, paid.transaction_id);
    assert!(t.transaction_id.as_deref().is_some_and(|id| id.len() == 28));
    assert_eq!(t.success_time, paid.success_time);
    let amount = t.amount.unwrap();
    assert_eq!(
        (amount.total, amount.payer_total),
        (Some(4_990), Some(4_990))
    );
}

#[test]
fn query_of_an_unknown_order_is_not_found() {
    let e = env();
    assert_eq!(
        e.client.query_by_out_trade_no("NEVERSEEN1").unwrap(),
        QueryOutcome::NotFound
    );
}

#[test]
fn unknown_trade_state_is_a_permanent_error_not_unpaid() {
    let e = env();
    e.admin.set_state("WEIRD00001", "REFUNDING").unwrap();
    let err = e.client.query_by_out_trade_no("WEIRD00001").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownTradeState { state, out_trade_no } if state == "REFUNDING" && out_trade_no == "WEIRD00001"),
        "{err:?}"
    );
    assert!(err.is_permanent());
}

#[test]
fn close_of_an_unpaid_order_answers_204_and_closes_it() {
    let e = env();
    for (no, state) in [("CLOSE00001", "NOTPAY"), ("CLOSE00002", "PAYERROR")] {
        e.admin.set_state(no, state).unwrap();
        assert_eq!(e.client.close(no).unwrap(), CloseAnswer::Closed);
        assert_eq!(e.admin.order(no).unwrap().unwrap().trade_state, "CLOSED");
        assert_eq!(
            found(e.client.query_by_out_trade_no(no).unwrap()).trade_state,
            TradeState::Closed
        );
    }
    // Closing again is harmless.
    assert_eq!(e.client.close("CLOSE00001").unwrap(), CloseAnswer::Closed);
}

#[test]
fn close_while_the_user_is_paying_answers_202() {
    let e = env();
    e.admin.set_state("PAYING0001", "USERPAYING").unwrap();
    assert_eq!(
        e.client.close("PAYING0001").unwrap(),
        CloseAnswer::UserPaying
    );
    assert_eq!(
        e.admin.order("PAYING0001").unwrap().unwrap().trade_state,
        "USERPAYING"
    );
}

#[test]
fn close_of_a_paid_or_unknown_order_is_a_permanent_rejection() {
    let e = env();
    e.admin.set_state("PAIDCLOSE1", "SUCCESS").unwrap();
    let err = e.client.close("PAIDCLOSE1").unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { status: 400, code, .. } if code == "ORDER_PAID"),
        "{err:?}"
    );
    assert!(err.is_permanent());

    let err = e.client.close("NEVERSEEN2").unwrap_err();
    assert_eq!(err.provider_code(), Some("ORDER_NOT_EXIST"));
    assert!(err.is_permanent());
}

#[test]
fn a_204_close_is_not_proof_the_order_is_closed() {
    // Why the worker queries again after closing.
    let e = env();
    e.admin.set_state("NOOP000001", "NOTPAY").unwrap();
    e.admin
        .set_order_faults(
            "NOOP000001",
            &Faults {
                close_noop: true,
                ..Faults::default()
            },
        )
        .unwrap();
    assert_eq!(e.client.close("NOOP000001").unwrap(), CloseAnswer::Closed);
    e.admin.pay("NOOP000001").unwrap();
    assert_eq!(
        found(e.client.query_by_out_trade_no("NOOP000001").unwrap()).trade_state,
        TradeState::Success
    );
}

#[test]
fn every_allowed_character_of_out_trade_no_survives_signing_and_the_url() {
    let e = env();
    let no = "Ab9_-|*Ord";
    e.admin.set_state(no, "NOTPAY").unwrap();
    assert_eq!(
        found(e.client.query_by_out_trade_no(no).unwrap()).trade_state,
        TradeState::NotPay
    );
    assert_eq!(e.client.close(no).unwrap(), CloseAnswer::Closed);
    assert_eq!(e.admin.order(no).unwrap().unwrap().trade_state, "CLOSED");
}

#[test]
fn invalid_out_trade_no_is_refused_before_sending() {
    let e = env();
    for bad in ["short", "../../v3/other", "has space1", "x?mchid=123"] {
        assert!(
            matches!(
                e.client.query_by_out_trade_no(bad),
                Err(Error::InvalidOutTradeNo(_))
            ),
            "{bad}"
        );
        assert!(
            matches!(e.client.close(bad), Err(Error::InvalidOutTradeNo(_))),
            "{bad}"
        );
    }
    assert_eq!(e.admin.stats().unwrap().api_requests, 0);
}

#[test]
fn one_client_serves_many_threads() {
    let e = env();
    for i in 0..4 {
        e.admin
            .set_state(&format!("THREAD{i:04}"), "NOTPAY")
            .unwrap();
    }
    let client = Arc::new(e.client);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                let no = format!("THREAD{i:04}");
                for _ in 0..5 {
                    assert!(matches!(
                        client.query_by_out_trade_no(&no).unwrap(),
                        QueryOutcome::Found(_)
                    ));
                }
                client.close(&no).unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), CloseAnswer::Closed);
    }
    let stats = e.admin.stats().unwrap();
    assert_eq!(
        (stats.queries, stats.closes, stats.bad_signatures),
        (20, 4, 0)
    );
}
