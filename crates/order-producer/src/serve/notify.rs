//! `POST /wechatpay/notify/transaction`: WeChat Pay's payment notifications.
//!
//! Authenticated by WeChat Pay's signature, not by the shop's token: the
//! signature probe (`WECHATPAY/SIGNTEST/...`) is refused first, then the
//! signature over `timestamp\nnonce\nbody\n` must verify with the key the
//! `Wechatpay-Serial` names, within 5 minutes of our clock, and the
//! `resource` must decrypt (`AEAD_AES_256_GCM`, APIv3 key). Only then are
//! `mchid`, `appid` and `out_trade_no` compared with ours, and the payment
//! recorded through `service::payments::record_payment`, the same
//! operation the worker uses (amount checked against the order; a repeat
//! changes nothing; an order closed here gets a payment after close).
//!
//! 204 only once the notification is recorded (or was already); anything
//! else answers 4xx/5xx with `{"code":"FAIL","message"}` so that WeChat Pay
//! delivers it again. Nothing unverified or undecryptable is ever acted on.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use domain::OrderNo;
use payment_client::notify::NotifyError;
use payment_client::TradeState;
use service::payments::Recorded;

use super::api::{NotificationEnvelope, NotifyFailure};
use super::{ApiError, AppState};

pub const PATH: &str = "/wechatpay/notify/transaction";
/// Refund notifications (`REFUND.SUCCESS`, `REFUND.ABNORMAL`, `REFUND.CLOSED`).
pub const REFUND_PATH: &str = "/wechatpay/notify/refund";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(PATH, post(transaction))
        .route(REFUND_PATH, post(refund))
}

/// A notification not recorded: WeChat Pay will deliver it again.
#[derive(Debug)]
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let body = NotifyFailure {
            code: "FAIL",
            message: self.1,
        };
        (self.0, Json(body)).into_response()
    }
}

/// WeChat Pay's payment notification (`TRANSACTION.SUCCESS`).
///
/// Verified (`Wechatpay-Timestamp`, `-Nonce`, `-Serial`, `-Signature`)
/// and decrypted before anything is done; 204 once recorded (or already).
#[utoipa::path(
    post,
    path = "/wechatpay/notify/transaction",
    tag = "wechatpay",
    operation_id = "notify_transaction",
    request_body(content = NotificationEnvelope, content_type = "application/json"),
    responses(
        (status = 204, description = "recorded (or already recorded, or nothing to record)"),
        (status = 400, description = "undecryptable, unusable, or not our merchant/app; delivered again", body = NotifyFailure),
        (status = 401, description = "signature missing, wrong, stale, or a signature probe", body = NotifyFailure),
        (status = 404, description = "no such order here", body = NotifyFailure),
        (status = 413, description = "`BODY_TOO_LARGE`", body = ApiError),
        (status = "default", description = "503 (database unavailable) or 500: `FAIL`; delivered again", body = NotifyFailure),
    )
)]
pub(super) async fn transaction(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let handled = tokio::task::spawn_blocking(move || handle(&state, &headers, &body)).await;
    match handled {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(fail)) => fail.into_response(),
        Err(e) => {
            log::error!("the notification handler panicked: {e}");
            Fail(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()).into_response()
        }
    }
}

/// WeChat Pay's refund notification (`REFUND.SUCCESS`, `REFUND.ABNORMAL`,
/// `REFUND.CLOSED`): moves our refund forward at once.
#[utoipa::path(
    post,
    path = "/wechatpay/notify/refund",
    tag = "wechatpay",
    operation_id = "notify_refund",
    request_body(content = NotificationEnvelope, content_type = "application/json"),
    responses(
        (status = 204, description = "recorded (or already)"),
        (status = 400, description = "undecryptable, unusable, or not our merchant; delivered again", body = NotifyFailure),
        (status = 401, description = "signature missing, wrong, stale, or a signature probe", body = NotifyFailure),
        (status = 404, description = "no such refund here", body = NotifyFailure),
        (status = "default", description = "503 (database unavailable) or 500: `FAIL`; delivered again", body = NotifyFailure),
    )
)]
pub(super) async fn refund(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let handled = tokio::task::spawn_blocking(move || handle_refund(&state, &headers, &body)).await;
    match handled {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(fail)) => fail.into_response(),
        Err(e) => {
            log::error!("the refund notification handler panicked: {e}");
            Fail(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()).into_response()
        }
    }
}

/// A refund notification moves the refund forward at once (the worker's
/// own follow-up would find the same a little later).
fn handle_refund(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), Fail> {
    let notification = open(state, headers, body, "refund")?;
    let notice = notification.refund().map_err(|e| {
        log::error!(
            "refund notification {} decrypted but unusable: {e}",
            notification.id
        );
        Fail(StatusCode::BAD_REQUEST, e.to_string())
    })?;
    if notice.mchid.as_deref() != Some(state.payments.mchid()) {
        log::error!(
            "refund notification {} refused: mchid {:?} is not ours",
            notification.id,
            notice.mchid.as_deref().unwrap_or("")
        );
        return Err(Fail(StatusCode::BAD_REQUEST, "mchid is not ours".into()));
    }
    let status = service::payments::refund_status(notice.status);
    let unavailable = |e: &domain::StoreError| {
        log::warn!(
            out_refund_no = notice.out_refund_no.as_str();
            "refund notification {} for {} not recorded: {e}",
            notification.id,
            notice.out_refund_no
        );
        Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "not recorded; deliver again".into(),
        )
    };
    let mut conn = domain::checkout(&state.pool).map_err(|e| unavailable(&e))?;
    let Some(ours) =
        domain::find_refund(&mut conn, &notice.out_refund_no).map_err(|e| unavailable(&e))?
    else {
        log::error!(
            out_refund_no = notice.out_refund_no.as_str();
            "refund notification {} names refund {}, which is not ours",
            notification.id,
            notice.out_refund_no
        );
        return Err(Fail(
            StatusCode::NOT_FOUND,
            format!("no refund {}", notice.out_refund_no),
        ));
    };
    if let Err(why) = service::payments::check_refund_amount(&ours, notice.refund_fen) {
        log::error!(
            out_refund_no = notice.out_refund_no.as_str(),
            order_no:% = ours.order_no,
            outcome = "parked";
            "refund {} NEEDS A HUMAN: {why} (notification {})",
            notice.out_refund_no,
            notification.id
        );
        // Recorded for a human: WeChat Pay need not send it again.
        return domain::park_refund(&mut conn, &notice.out_refund_no, &why.to_string())
            .map_err(|e| unavailable(&e));
    }
    // While not final, the worker asks again soon anyway.
    let next = chrono::Utc::now() + chrono::Duration::seconds(5);
    match domain::record_refund_status(
        &mut conn,
        &notice.out_refund_no,
        status,
        notice.refund_id.as_deref(),
        next,
    ) {
        Ok(domain::RefundUpdate::Moved { from }) => {
            let line = format!(
                "refund {} ({} notification {}): {from} -> {status}",
                notice.out_refund_no, notification.event_type, notification.id
            );
            let (no, order_no) = (notice.out_refund_no.as_str(), &ours.order_no);
            let outcome = status.as_str();
            if status == domain::RefundStatus::Abnormal {
                log::error!(
                    out_refund_no = no, order_no:% = order_no, outcome = outcome;
                    "{line}: NEEDS A HUMAN (the buyer's account cannot take it back)"
                );
            } else {
                log::info!(
                    out_refund_no = no, order_no:% = order_no, outcome = outcome;
                    "{line}"
                );
            }
            Ok(())
        }
        Ok(domain::RefundUpdate::Unchanged { .. }) => Ok(()),
        Ok(domain::RefundUpdate::NotFound) => {
            log::error!(
                out_refund_no = notice.out_refund_no.as_str();
                "refund notification {} names refund {}, which is not ours",
                notification.id,
                notice.out_refund_no
            );
            Err(Fail(
                StatusCode::NOT_FOUND,
                format!("no refund {}", notice.out_refund_no),
            ))
        }
        Err(e) => Err(unavailable(&e)),
    }
}

/// Verifies and decrypts a notification, or the answer refusing it.
fn open(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    what: &str,
) -> Result<payment_client::notify::Notification, Fail> {
    state
        .verifier
        .open(
            |name| headers.get(name).and_then(|v| v.to_str().ok()),
            body,
            unix_now(),
        )
        .map_err(|e| {
            log::warn!("refused a {what} notification: {e}");
            let status = match e {
                NotifyError::SignatureProbe | NotifyError::Unverified(_) => {
                    StatusCode::UNAUTHORIZED
                }
                _ => StatusCode::BAD_REQUEST,
            };
            Fail(status, e.to_string())
        })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn handle(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), Fail> {
    let notification = open(state, headers, body, "payment")?;
    let tx = notification.transaction().map_err(|e| {
        log::error!(
            "payment notification {} decrypted but unusable: {e}",
            notification.id
        );
        Fail(StatusCode::BAD_REQUEST, e.to_string())
    })?;
    if tx.trade_state != TradeState::Success {
        log::info!(
            order_no = tx.out_trade_no.as_deref();
            "payment notification {} ({}) reports {} for {}: nothing to record",
            notification.id,
            notification.event_type,
            tx.trade_state,
            tx.out_trade_no.as_deref().unwrap_or("?")
        );
        return Ok(());
    }
    let no = ours(state, &tx).map_err(|what| {
        log::error!(
            "payment notification {} refused: {what}; nothing recorded",
            notification.id
        );
        Fail(StatusCode::BAD_REQUEST, what)
    })?;
    let unavailable = |e: &domain::StoreError| {
        log::warn!(
            order_no:% = no;
            "payment notification {} for {no} not recorded: {e}",
            notification.id
        );
        Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "not recorded; deliver again".into(),
        )
    };
    let mut conn = domain::checkout(&state.pool).map_err(|e| unavailable(&e))?;
    let Some(order) = domain::find_order(&mut conn, &no).map_err(|e| unavailable(&e))? else {
        log::error!(
            order_no:% = no;
            "payment notification {} names order {no}, which is not ours",
            notification.id
        );
        return Err(Fail(StatusCode::NOT_FOUND, format!("no order {no}")));
    };
    match service::payments::record_payment(&mut conn, &order, &tx) {
        Ok(Recorded::Paid) => {
            log::info!(
                order_no:% = no,
                outcome = service::Outcome::Paid.as_str();
                "order {no} paid (notification {}, transaction {})",
                notification.id,
                tx.transaction_id.as_deref().unwrap_or("?")
            );
            Ok(())
        }
        Ok(
            Recorded::AlreadyPaid
            | Recorded::PaidAfterClose {
                newly_recorded: false,
            },
        ) => {
            log::debug!(
                order_no:% = no;
                "order {no}: duplicate notification {}",
                notification.id
            );
            Ok(())
        }
        // Logged (PAID AFTER CLOSE / NEEDS A HUMAN) where recorded.
        Ok(
            Recorded::PaidAfterClose {
                newly_recorded: true,
            }
            | Recorded::NeedsHuman { .. },
        ) => Ok(()),
        Ok(Recorded::NotFound) => Err(Fail(StatusCode::NOT_FOUND, format!("no order {no}"))),
        Err(e) => Err(unavailable(&e)),
    }
}

/// The order a decrypted transaction is about, once its merchant and app are
/// ours; otherwise what is wrong.
fn ours(state: &AppState, tx: &payment_client::Transaction) -> Result<OrderNo, String> {
    if tx.mchid.as_deref() != Some(state.payments.mchid()) {
        return Err(format!(
            "mchid {:?} is not ours",
            tx.mchid.as_deref().unwrap_or("")
        ));
    }
    if tx.appid.as_deref() != Some(state.appid.as_str()) {
        return Err(format!(
            "appid {:?} is not ours",
            tx.appid.as_deref().unwrap_or("")
        ));
    }
    tx.out_trade_no
        .as_deref()
        .and_then(|s| OrderNo::parse(s).ok())
        .ok_or_else(|| "out_trade_no missing or malformed".to_owned())
}
