//! Domestic refunds: what is sent, what is refused before sending, and how
//! verified answers (a refund, another refund, not found, refusals, provider
//! trouble) are read, against hand-made signed servers, so that the real
//! API's wire format is what is checked; then the whole path against the
//! simulator (idempotent refund, settling, refund notification).

use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use payment_client::{Client, Config, Error, Refund, RefundRequest, RefundState};

use crate::support::{
    client_for, env, keys, one_shot_server, MCHID, MERCHANT_SERIAL, PUBLIC_KEY_ID,
};

const TRANSACTION_ID: &str = "4200000000202611260000000001";

fn request(out_refund_no: &str) -> RefundRequest {
    RefundRequest {
        transaction_id: TRANSACTION_ID.to_owned(),
        out_refund_no: out_refund_no.to_owned(),
        reason: "商品已售完".to_owned(),
        refund_fen: 500,
        total_fen: 1_990,
        notify_url: Some("https://shop.example.com/wechatpay/refund-notify".to_owned()),
    }
}

/// A refund answer as the real API gives it, with fields we do not keep.
fn answer(out_refund_no: &str, status: &str) -> String {
    serde_json::json!({
        "refund_id": "50000000382019052709732678859",
        "out_refund_no": out_refund_no,
        "transaction_id": TRANSACTION_ID,
        "out_trade_no": "OT20261126000000000001",
        "channel": "ORIGINAL",
        "user_received_account": "招商银行信用卡0403",
        "create_time": "2026-11-26T10:00:00+08:00",
        "status": status,
        "funds_account": "AVAILABLE",
        "amount": {
            "total": 1_990, "refund": 500,
            "from": [],
            "payer_total": 1_990, "payer_refund": 500,
            "settlement_refund": 500, "settlement_total": 1_990,
            "discount_refund": 0, "currency": "CNY", "refund_fee": 0
        },
        "promotion_detail": []
    })
    .to_string()
}

#[test]
fn sends_a_signed_refund_and_reads_the_answer() {
    let (url, rx) = one_shot_server(200, answer("RF20261126|01@x", "PROCESSING"));
    let refund = client_for(&url)
        .refund(&request("RF20261126|01@x"))
        .unwrap();
    assert_eq!(
        refund,
        Refund {
            refund_id: Some("50000000382019052709732678859".into()),
            out_refund_no: "RF20261126|01@x".into(),
            transaction_id: Some(TRANSACTION_ID.into()),
            out_trade_no: Some("OT20261126000000000001".into()),
            status: RefundState::Processing,
            success_time: None,
            refund_fen: Some(500),
            total_fen: Some(1_990),
            currency: Some("CNY".into()),
            user_received_account: Some("招商银行信用卡0403".into()),
        }
    );

    let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        got.request_line,
        "POST /v3/refund/domestic/refunds HTTP/1.1"
    );
    assert!(got
        .header("authorization")
        .is_some_and(|a| a.starts_with("WECHATPAY2-SHA256-RSA2048 ")
            && a.contains(&format!(r#"mchid="{MCHID}""#))));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("accept"), Some("application/json"));
    assert_eq!(got.header("wechatpay-serial"), Some(PUBLIC_KEY_ID));
    let sent: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({
            "transaction_id": TRANSACTION_ID,
            "out_refund_no": "RF20261126|01@x",
            "reason": "商品已售完",
            "notify_url": "https://shop.example.com/wechatpay/refund-notify",
            "amount": {"refund": 500, "total": 1_990, "currency": "CNY"}
        })
    );
}

#[test]
fn a_refund_without_notify_url_leaves_it_out() {
    let (url, rx) = one_shot_server(200, answer("RF0002", "SUCCESS"));
    let req = RefundRequest {
        notify_url: None,
        ..request("RF0002")
    };
    assert_eq!(
        client_for(&url).refund(&req).unwrap().status,
        RefundState::Success
    );
    let sent: serde_json::Value =
        serde_json::from_slice(&rx.recv_timeout(Duration::from_secs(5)).unwrap().body).unwrap();
    assert_eq!(sent.get("notify_url"), None);
    assert_eq!(sent["amount"]["currency"], "CNY");
}

#[test]
fn query_refund_sends_a_signed_get_and_reads_every_status() {
    for status in RefundState::ALL {
        let (url, rx) = one_shot_server(200, answer("RF|0003@x", status.as_str()));
        let refund = client_for(&url).query_refund("RF|0003@x").unwrap().unwrap();
        assert_eq!(refund.status, status);
        assert_eq!(refund.out_refund_no, "RF|0003@x");
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // `|` is encoded on the wire (and signed so); `@` may stay raw.
        assert_eq!(
            got.request_line,
            "GET /v3/refund/domestic/refunds/RF%7C0003@x HTTP/1.1"
        );
        assert!(got.body.is_empty());
        assert!(got
            .header("authorization")
            .is_some_and(|a| a.starts_with("WECHATPAY2-SHA256-RSA2048 ")));
    }
}

fn assert_unexpected(err: &Error) {
    assert!(
        matches!(err, Error::UnexpectedResponse { status: 200, .. }),
        "{err:?}"
    );
    assert!(err.is_permanent());
}

#[test]
fn an_answer_about_another_refund_is_unexpected() {
    let (url, _rx) = one_shot_server(200, answer("RF0004-OTHER", "SUCCESS"));
    let err = client_for(&url).refund(&request("RF0004")).unwrap_err();
    assert_unexpected(&err);
    assert!(err.to_string().contains("RF0004-OTHER"), "{err}");

    let (url, _rx) = one_shot_server(200, answer("RF0004-OTHER", "SUCCESS"));
    assert_unexpected(&client_for(&url).query_refund("RF0004").unwrap_err());

    // No out_refund_no at all counts as another refund.
    let (url, _rx) = one_shot_server(200, r#"{"status":"SUCCESS","refund_id":"5"}"#);
    assert_unexpected(&client_for(&url).query_refund("RF0004").unwrap_err());

    // The right refund number for another transaction is no better.
    let other_tx =
        answer("RF0004", "SUCCESS").replace(TRANSACTION_ID, "4200000000209999999999999999");
    let (url, _rx) = one_shot_server(200, other_tx);
    assert_unexpected(&client_for(&url).refund(&request("RF0004")).unwrap_err());

    for body in ["not json", r#"{"out_refund_no":"RF0004"}"#] {
        let (url, _rx) = one_shot_server(200, body);
        assert_unexpected(&client_for(&url).refund(&request("RF0004")).unwrap_err());
    }
}

#[test]
fn an_unknown_refund_status_is_an_error_not_a_guess() {
    let (url, _rx) = one_shot_server(200, answer("RF0005", "REFUNDCLOSE"));
    let err = client_for(&url).query_refund("RF0005").unwrap_err();
    assert!(err.is_permanent());
    match err {
        Error::UnknownRefundStatus {
            out_refund_no,
            status,
        } => assert_eq!(
            (out_refund_no.as_str(), status.as_str()),
            ("RF0005", "REFUNDCLOSE")
        ),
        other => panic!("{other:?}"),
    }
}

const NOT_EXISTS: &str = r#"{"code":"RESOURCE_NOT_EXISTS","message":"退款单不存在"}"#;

#[test]
fn not_found_is_none_for_the_query_and_a_refusal_for_the_refund() {
    let (url, _rx) = one_shot_server(404, NOT_EXISTS);
    assert_eq!(client_for(&url).query_refund("RF0006").unwrap(), None);

    let (url, _rx) = one_shot_server(404, NOT_EXISTS);
    let err = client_for(&url).refund(&request("RF0006")).unwrap_err();
    assert!(
        matches!(err, Error::Rejected { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(err.provider_code(), Some("RESOURCE_NOT_EXISTS"));
    assert!(err.is_permanent());

    // Only that code means "no such refund".
    for body in [r#"{"code":"NOT_FOUND","message":"x"}"#, "not json"] {
        let (url, _rx) = one_shot_server(404, body);
        let err = client_for(&url).query_refund("RF0006").unwrap_err();
        assert!(
            matches!(err, Error::Rejected { status: 404, .. }),
            "{body}: {err:?}"
        );
    }
}

#[test]
fn refusals_keep_their_code_and_are_permanent() {
    for (status, code) in [
        (403, "NOT_ENOUGH"),
        (400, "INVALID_REQUEST"),
        (400, "PARAM_ERROR"),
        (401, "SIGN_ERROR"),
    ] {
        let body = format!(r#"{{"code":"{code}","message":"refused"}}"#);
        let (url, _rx) = one_shot_server(status, body);
        let err = client_for(&url).refund(&request("RF0007")).unwrap_err();
        assert!(
            matches!(&err, Error::Rejected { status: s, .. } if *s == status),
            "{err:?}"
        );
        assert_eq!(err.provider_code(), Some(code));
        assert!(err.is_permanent());
    }
}

#[test]
fn provider_trouble_is_transient() {
    for call in [
        |c: &Client| c.refund(&request("RF0008")).map(drop),
        |c: &Client| c.query_refund("RF0008").map(drop),
    ] {
        let (url, _rx) = one_shot_server(500, r#"{"code":"SYSTEM_ERROR","message":"busy"}"#);
        let err = call(&client_for(&url)).unwrap_err();
        assert!(matches!(err, Error::Server { status: 500, .. }), "{err:?}");
        assert!(err.is_transient());
        assert_eq!(err.provider_code(), Some("SYSTEM_ERROR"));

        let (url, _rx) =
            one_shot_server(429, r#"{"code":"FREQUENCY_LIMITED","message":"slow down"}"#);
        let err = call(&client_for(&url)).unwrap_err();
        assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
        assert!(err.is_transient());

        // A 200 that does not verify is never read.
        let (url, _rx) = one_shot_server(200, answer("RF0008", "SUCCESS"));
        let config = Config::new(MCHID, MERCHANT_SERIAL, &keys().files.merchant_key_file)
            .with_public_key(
                PUBLIC_KEY_ID,
                &crate::support::other_keys().files.wechatpay_public_key_file,
            )
            .with_base_url(&url);
        let err = call(&Client::new(config).unwrap()).unwrap_err();
        assert!(matches!(err, Error::Unverified { .. }), "{err:?}");
        assert!(err.is_transient());

        // A server that accepts and never answers (until the client gave up).
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (done, gave_up) = mpsc::channel::<()>();
        let silent = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let _ = gave_up.recv_timeout(Duration::from_secs(5));
            drop(stream);
        });
        let config = Config::new(MCHID, MERCHANT_SERIAL, &keys().files.merchant_key_file)
            .with_public_key(PUBLIC_KEY_ID, &keys().files.wechatpay_public_key_file)
            .with_base_url(&url)
            .with_timeouts(Duration::from_millis(300), Duration::from_millis(500));
        let err = call(&Client::new(config).unwrap()).unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert!(err.is_transient());
        done.send(()).unwrap();
        silent.join().unwrap();
    }
}

#[test]
fn invalid_refunds_are_refused_before_sending() {
    let e = env();
    let cases: Vec<fn(&mut RefundRequest)> = vec![
        |r| r.out_refund_no.clear(),
        |r| r.out_refund_no = "R".repeat(65),
        |r| r.out_refund_no = "RF/../x".into(),
        |r| r.out_refund_no = "RF 1".into(),
        |r| r.transaction_id.clear(),
        |r| r.refund_fen = 0,
        |r| r.refund_fen = -1,
        |r| r.refund_fen = r.total_fen + 1,
        |r| r.reason = "x".repeat(81),
        |r| r.notify_url = Some(String::new()),
    ];
    for change in cases {
        let mut req = request("RF0009");
        change(&mut req);
        let err = e.client.refund(&req).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{req:?}: {err:?}"
        );
        assert!(err.is_permanent());
    }
    for bad in ["", "RF/../x", "RF?x=1", &"R".repeat(65)] {
        let err = e.client.query_refund(bad).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    field: "out_refund_no",
                    ..
                }
            ),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(e.admin.stats().unwrap().api_requests, 0);
}

// Against the simulator: its refund endpoints verify our signatures and
// answer in the real API's format.

/// A paid order at the simulator: its `transaction_id` and total.
fn paid_order(e: &crate::support::Env, out_trade_no: &str) -> (String, i64) {
    let order = wechatpay_sim::Order {
        amount_total: 1_990,
        ..wechatpay_sim::Order::in_state("NOTPAY")
    };
    e.admin.put_order(out_trade_no, &order).unwrap();
    let paid = e.admin.pay(out_trade_no).unwrap();
    (paid.transaction_id.unwrap(), paid.amount_total)
}

fn sim_request(transaction_id: &str, total_fen: i64, out_refund_no: &str) -> RefundRequest {
    RefundRequest {
        transaction_id: transaction_id.to_owned(),
        out_refund_no: out_refund_no.to_owned(),
        reason: "缺货".to_owned(),
        refund_fen: 500,
        total_fen,
        notify_url: None,
    }
}

#[test]
fn the_simulator_refunds_once_per_out_refund_no_and_settles() {
    let e = env();
    let (transaction_id, total) = paid_order(&e, "SIMREFUND1");
    // Every allowed character survives signing, the URL and the simulator.
    let no = "RF_1-a|b*c@d";
    let req = sim_request(&transaction_id, total, no);

    let first = e.client.refund(&req).unwrap();
    assert_eq!(first.status, RefundState::Processing);
    assert_eq!(first.out_refund_no, no);
    assert_eq!(
        first.transaction_id.as_deref(),
        Some(transaction_id.as_str())
    );
    assert_eq!(first.out_trade_no.as_deref(), Some("SIMREFUND1"));
    assert_eq!(
        (first.refund_fen, first.total_fen),
        (Some(500), Some(total))
    );
    assert!(first.refund_id.as_deref().is_some_and(|id| !id.is_empty()));

    // The same out_refund_no again is the same refund, not a second one.
    let again = e.client.refund(&req).unwrap();
    assert_eq!(again.refund_id, first.refund_id);
    assert_eq!(e.admin.stats().unwrap().refunds_created, 1);

    // PROCESSING, then SUCCESS after the simulator's delay (200 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let settled = loop {
        let r = e.client.query_refund(no).unwrap().unwrap();
        assert_eq!(r.refund_id, first.refund_id);
        if r.status != RefundState::Processing {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "still {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(settled.status, RefundState::Success);
    assert!(settled.success_time.is_some(), "{settled:?}");
    assert_eq!(settled.refund_fen, Some(500));
}

#[test]
fn the_simulator_does_not_know_other_refunds_or_transactions() {
    let e = env();
    assert_eq!(e.client.query_refund("RFNEVER1").unwrap(), None);

    let err = e
        .client
        .refund(&sim_request(
            "4200000000209999999999999999",
            1_990,
            "RFNEVER2",
        ))
        .unwrap_err();
    assert!(
        matches!(err, Error::Rejected { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(err.provider_code(), Some("RESOURCE_NOT_EXISTS"));
    assert_eq!(e.client.query_refund("RFNEVER2").unwrap(), None);
}

#[test]
fn a_refund_notification_the_simulator_delivers_opens_as_a_refund() {
    let receiver = TcpListener::bind("127.0.0.1:0").unwrap();
    let notify_url = format!(
        "http://{}/wechatpay/refund-notify",
        receiver.local_addr().unwrap()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = receiver.accept().unwrap();
        let (got, mut stream) = crate::support::read_request(stream);
        std::io::Write::write_all(
            &mut stream,
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let _ = tx.send(got);
    });

    let e = env();
    let (transaction_id, total) = paid_order(&e, "SIMREFUND2");
    let req = RefundRequest {
        notify_url: Some(notify_url),
        ..sim_request(&transaction_id, total, "RFNOTIFY1")
    };
    let refund = e.client.refund(&req).unwrap();

    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(got.request_line, "POST /wechatpay/refund-notify HTTP/1.1");
    let verifier = payment_client::NotificationVerifier::new(
        e.client.key_store().clone(),
        payment_client::ApiV3Key::new(wechatpay_sim::DEFAULT_APIV3_KEY.as_bytes()).unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let n = verifier
        .open(|name| got.header(name), &got.body, now)
        .unwrap();
    assert_eq!(n.event_type, "REFUND.SUCCESS");
    assert!(matches!(
        n.transaction(),
        Err(payment_client::NotifyError::Malformed(_))
    ));
    let notice = n.refund().unwrap();
    assert_eq!(notice.status, RefundState::Success);
    assert_eq!(notice.out_refund_no, "RFNOTIFY1");
    assert_eq!(notice.refund_id, refund.refund_id);
    assert_eq!(notice.mchid.as_deref(), Some(e.client.mchid()));
    assert_eq!(
        notice.transaction_id.as_deref(),
        Some(transaction_id.as_str())
    );
    assert_eq!(notice.out_trade_no.as_deref(), Some("SIMREFUND2"));
    assert_eq!(
        (notice.refund_fen, notice.total_fen),
        (Some(500), Some(total))
    );
    assert!(notice.success_time.is_some());
}
