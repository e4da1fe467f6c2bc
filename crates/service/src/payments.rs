//! The one way a payment that WeChat Pay reports (in a query answer or a
//! payment notification) becomes a record: every field that moves money is
//! checked against the order first (invariant 11), then the order is marked
//! paid, or the payment recorded as paid after close, or the order left for
//! a human with the reason. The worker's compensation and the front door's
//! notification endpoint both call [`record_payment`], so they cannot
//! disagree about what a payment means.

use chrono::{DateTime, Utc};
use domain::{
    Anomaly, AnomalyOutcome, Fen, MarkPaidOutcome, Order, PaymentRecord, PgConnection, StoreError,
    TransactionId,
};
use payment_client::Transaction;

/// What [`record_payment`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Recorded {
    /// The pending order is now paid, the payment recorded.
    Paid,
    /// The order was already paid; nothing changed.
    AlreadyPaid,
    /// The order had been closed: the payment is recorded as paid after
    /// close (someone must refund it); `newly_recorded` is false when it was
    /// on record already.
    PaidAfterClose { newly_recorded: bool },
    /// The report does not match the order (or its transaction id belongs to
    /// another order): the anomaly is recorded on the order, nothing else
    /// changed, a human must look.
    NeedsHuman { anomaly: Anomaly, detail: String },
    /// No order has this number.
    NotFound,
}

/// Records the payment `tx` reports for `order` (see the module docs).
/// Every outcome is idempotent: a repeated report changes nothing more.
/// Logs `PAID AFTER CLOSE` and `NEEDS A HUMAN` lines for operators.
pub fn record_payment(
    conn: &mut PgConnection,
    order: &Order,
    tx: &Transaction,
) -> Result<Recorded, StoreError> {
    let payment = match payment_record(order, tx) {
        Ok(p) => p,
        Err((anomaly, detail)) => return needs_human(conn, order, anomaly, detail),
    };
    match domain::mark_paid(conn, &order.order_no, &payment)? {
        MarkPaidOutcome::Paid => Ok(Recorded::Paid),
        MarkPaidOutcome::AlreadyPaid => Ok(Recorded::AlreadyPaid),
        MarkPaidOutcome::PaidAfterClose { newly_recorded } => {
            // Loud once, when it is news; a repeat report changed nothing.
            if newly_recorded {
                log::error!(
                    order_no:% = order.order_no,
                    outcome = crate::Outcome::PaidAfterClose.as_str();
                    "order {}: PAID AFTER CLOSE: WeChat Pay transaction {} ({}) for an order closed here; the worker refunds it",
                    order.order_no,
                    payment.transaction_id,
                    payment.amount
                );
            } else {
                log::info!(
                    order_no:% = order.order_no,
                    outcome = crate::Outcome::AlreadySettled.as_str();
                    "order {}: WeChat Pay transaction {} is already recorded as paid after close; nothing changed",
                    order.order_no,
                    payment.transaction_id
                );
            }
            Ok(Recorded::PaidAfterClose { newly_recorded })
        }
        MarkPaidOutcome::TransactionOfAnotherOrder { other } => needs_human(
            conn,
            order,
            Anomaly::DuplicateTransaction,
            format!(
                "WeChat Pay reports transaction {} for this order, but it is already recorded for order {other}",
                payment.transaction_id
            ),
        ),
        MarkPaidOutcome::NotFound => Ok(Recorded::NotFound),
    }
}

/// A refund's status as WeChat Pay reports it, in the store's terms.
#[must_use]
pub fn refund_status(s: payment_client::RefundState) -> domain::RefundStatus {
    match s {
        payment_client::RefundState::Success => domain::RefundStatus::Succeeded,
        payment_client::RefundState::Processing => domain::RefundStatus::Processing,
        payment_client::RefundState::Abnormal => domain::RefundStatus::Abnormal,
        payment_client::RefundState::Closed => domain::RefundStatus::Closed,
    }
}

/// A report about one of our refunds names another amount than ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WeChat Pay reports refund {out_refund_no} for {reported_fen} fen, ours is {ours}")]
pub struct RefundAmountDiffers {
    pub out_refund_no: String,
    pub reported_fen: i64,
    pub ours: domain::Fen,
}

/// A report about our refund (an answer or a notification) must name its
/// amount, when it names one: otherwise it is not this refund's money and
/// a human must look. The error says what differs.
pub fn check_refund_amount(
    ours: &domain::Refund,
    reported_fen: Option<i64>,
) -> Result<(), RefundAmountDiffers> {
    match reported_fen {
        Some(fen) if fen != ours.amount.get() => Err(RefundAmountDiffers {
            out_refund_no: ours.out_refund_no.clone(),
            reported_fen: fen,
            ours: ours.amount,
        }),
        _ => Ok(()),
    }
}

/// Records the anomaly on the order (once) and leaves everything else.
fn needs_human(
    conn: &mut PgConnection,
    order: &Order,
    anomaly: Anomaly,
    detail: String,
) -> Result<Recorded, StoreError> {
    match domain::record_anomaly(conn, &order.order_no, anomaly, &detail)? {
        AnomalyOutcome::Recorded | AnomalyOutcome::AlreadyRecorded => {
            log::error!(
                order_no:% = order.order_no,
                outcome = crate::Outcome::Anomaly.as_str();
                "order {}: NEEDS A HUMAN ({anomaly}): {detail}; nothing paid, nothing closed, stock held",
                order.order_no
            );
            Ok(Recorded::NeedsHuman { anomaly, detail })
        }
        AnomalyOutcome::NotFound => Ok(Recorded::NotFound),
    }
}

/// The payment WeChat Pay reports, as the store records it, or the anomaly
/// that forbids recording it: every field that moves money must be there
/// and match the order (invariant 11).
pub fn payment_record(order: &Order, tx: &Transaction) -> Result<PaymentRecord, (Anomaly, String)> {
    checked_payment(Some(order.total.get()), tx)
}

/// The payment WeChat Pay reports, complete (a usable transaction id, an
/// amount in CNY, an RFC 3339 success time) but whatever its amount: what
/// an operator's `cases accept` or `cases refund` records, after deciding
/// that a payment which does not match its order is genuine. The error
/// says which field is missing or unusable (no decision can record it).
pub fn reported_payment(tx: &Transaction) -> Result<PaymentRecord, (Anomaly, String)> {
    checked_payment(None, tx)
}

/// Every field that moves money, checked; the total against the order's
/// when `order_total` is given.
fn checked_payment(
    order_total: Option<i64>,
    tx: &Transaction,
) -> Result<PaymentRecord, (Anomaly, String)> {
    let state = tx.trade_state;
    let ours = order_total.map_or_else(String::new, |t| format!("; the order's total is {t} fen"));
    let transaction_id = tx
        .transaction_id
        .as_deref()
        .ok_or_else(|| {
            (
                Anomaly::MissingTransactionId,
                format!("WeChat Pay reports the order {state} without a transaction_id"),
            )
        })
        .and_then(|id| {
            TransactionId::parse(id).map_err(|e| {
                (
                    Anomaly::MissingTransactionId,
                    format!(
                        "WeChat Pay reports the order {state} with an unusable transaction_id: {e}"
                    ),
                )
            })
        })?;
    let (total, currency) = match tx.amount.as_ref() {
        Some(a) => match a.total {
            Some(total) => (total, a.currency.as_deref()),
            None => {
                return Err((
                    Anomaly::MissingAmount,
                    format!("WeChat Pay reports transaction {transaction_id} ({state}) without amount.total{ours}"),
                ))
            }
        },
        None => {
            return Err((
                Anomaly::MissingAmount,
                format!("WeChat Pay reports transaction {transaction_id} ({state}) without an amount{ours}"),
            ))
        }
    };
    if order_total.is_some_and(|t| t != total) || currency != Some("CNY") {
        return Err((
            Anomaly::AmountMismatch,
            match order_total {
                Some(t) => format!(
                    "WeChat Pay reports transaction {transaction_id} ({state}) for {total} fen in {}, the order's total is {t} fen in CNY",
                    currency.unwrap_or("(no currency)"),
                ),
                None => format!(
                    "WeChat Pay reports transaction {transaction_id} ({state}) for {total} fen in {}: only CNY can be recorded",
                    currency.unwrap_or("(no currency)"),
                ),
            },
        ));
    }
    let amount = Fen::new(total).map_err(|e| (Anomaly::AmountMismatch, e.to_string()))?;
    let success_time = match tx.success_time.as_deref() {
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                (
                    Anomaly::BadSuccessTime,
                    format!("WeChat Pay reports transaction {transaction_id} ({state}) with success_time {t:?}, which is not RFC 3339: {e}"),
                )
            })?,
        None => {
            return Err((
                Anomaly::BadSuccessTime,
                format!("WeChat Pay reports transaction {transaction_id} ({state}) without a success_time"),
            ))
        }
    };
    Ok(PaymentRecord {
        transaction_id,
        amount,
        success_time,
    })
}

#[cfg(test)]
mod tests {
    use domain::{OrderNo, OrderStatus};
    use payment_client::{Amount, TradeState};

    use super::*;

    fn order(total: i64) -> Order {
        let now = Utc::now();
        Order {
            id: 1,
            order_no: OrderNo::parse("ORDER123456").unwrap(),
            status: OrderStatus::PendingPayment,
            total: Fen::new(total).unwrap(),
            deadline: now,
            created_at: now,
            updated_at: now,
            paid_at: None,
            closed_at: None,
            close_reason: None,
            anomaly: None,
            recheck_at: None,
            next_check_at: None,
            check_failures: 0,
        }
    }

    fn paid(total: Option<i64>, currency: Option<&str>) -> Transaction {
        Transaction {
            trade_state: TradeState::Success,
            trade_state_desc: None,
            out_trade_no: Some("ORDER123456".into()),
            transaction_id: Some("4200000000000000000000000001".into()),
            mchid: Some("1900000001".into()),
            appid: None,
            trade_type: None,
            bank_type: None,
            attach: None,
            success_time: Some("2026-11-26T18:30:00+08:00".into()),
            payer: None,
            amount: Some(Amount {
                total,
                payer_total: total,
                currency: currency.map(str::to_owned),
                payer_currency: None,
            }),
        }
    }

    #[test]
    fn a_matching_payment_is_recorded_with_its_own_time() {
        let p = payment_record(&order(200), &paid(Some(200), Some("CNY"))).unwrap();
        assert_eq!(p.amount.get(), 200);
        assert_eq!(p.success_time.to_rfc3339(), "2026-11-26T10:30:00+00:00");
    }

    #[test]
    fn every_field_that_moves_money_must_match() {
        let o = order(200);
        let kind = |tx: &Transaction| payment_record(&o, tx).unwrap_err();

        let (a, detail) = kind(&paid(Some(100), Some("CNY")));
        assert_eq!(a, Anomaly::AmountMismatch);
        assert!(
            detail.contains("100 fen") && detail.contains("200 fen"),
            "{detail}"
        );
        assert_eq!(
            kind(&paid(Some(200), Some("USD"))).0,
            Anomaly::AmountMismatch
        );
        assert_eq!(kind(&paid(Some(200), None)).0, Anomaly::AmountMismatch);
        assert_eq!(kind(&paid(None, Some("CNY"))).0, Anomaly::MissingAmount);
        let mut no_amount = paid(Some(200), Some("CNY"));
        no_amount.amount = None;
        assert_eq!(kind(&no_amount).0, Anomaly::MissingAmount);
        let mut bad_time = paid(Some(200), Some("CNY"));
        bad_time.success_time = Some("yesterday".into());
        assert_eq!(kind(&bad_time).0, Anomaly::BadSuccessTime);
        bad_time.success_time = None;
        assert_eq!(kind(&bad_time).0, Anomaly::BadSuccessTime);
        let mut no_id = paid(Some(200), Some("CNY"));
        no_id.transaction_id = None;
        assert_eq!(kind(&no_id).0, Anomaly::MissingTransactionId);
        no_id.transaction_id = Some("has space".into());
        assert_eq!(kind(&no_id).0, Anomaly::MissingTransactionId);
    }
}
