//! Native prepay: what is sent, what is refused before sending, and how a
//! verified answer without a `code_url` is treated.

use std::time::Duration;

use payment_client::{Error, NativePrepay};

use crate::support::{client_for, env, one_shot_server, MCHID, PUBLIC_KEY_ID};

fn request(out_trade_no: &str) -> NativePrepay {
    NativePrepay {
        appid: "wxd678efh567hg6787".to_owned(),
        description: "Image形象店-深圳腾大-QQ公仔".to_owned(),
        out_trade_no: out_trade_no.to_owned(),
        total_fen: 1_990,
        time_expire: "2099-11-26T18:00:00+08:00".to_owned(),
        notify_url: "https://shop.example.com/wechatpay/notify".to_owned(),
    }
}

#[test]
fn sends_a_signed_native_prepay_and_returns_the_code_url() {
    let (url, rx) = one_shot_server(200, r#"{"code_url":"weixin://wxpay/bizpayurl?pr=abc123"}"#);
    let client = client_for(&url);
    let code_url = client.native_prepay(&request("PREPAY0001")).unwrap();
    assert_eq!(code_url, "weixin://wxpay/bizpayurl?pr=abc123");

    let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        got.request_line,
        "POST /v3/pay/transactions/native HTTP/1.1"
    );
    let header = |name| got.header(name);
    assert!(
        header("authorization").is_some_and(|a| a.starts_with("WECHATPAY2-SHA256-RSA2048 ")
            && a.contains(&format!(r#"mchid="{MCHID}""#)))
    );
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("wechatpay-serial"), Some(PUBLIC_KEY_ID));
    let sent: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({
            "appid": "wxd678efh567hg6787",
            "mchid": MCHID,
            "description": "Image形象店-深圳腾大-QQ公仔",
            "out_trade_no": "PREPAY0001",
            "time_expire": "2099-11-26T18:00:00+08:00",
            "notify_url": "https://shop.example.com/wechatpay/notify",
            "amount": {"total": 1_990, "currency": "CNY"}
        })
    );
    assert_eq!(client.mchid(), MCHID);
}

#[test]
fn a_verified_200_without_code_url_is_unexpected() {
    for body in [
        r#"{"prepay_id":"wx2017033010242291fcfe0db70013231072"}"#,
        r#"{"code_url":""}"#,
        "not json",
    ] {
        let (url, _rx) = one_shot_server(200, body);
        let err = client_for(&url)
            .native_prepay(&request("PREPAY0002"))
            .unwrap_err();
        assert!(
            matches!(err, Error::UnexpectedResponse { status: 200, .. }),
            "{body}: {err:?}"
        );
        assert!(err.is_permanent());
    }
}

#[test]
fn a_verified_refusal_keeps_its_code() {
    let (url, _rx) = one_shot_server(403, r#"{"code":"ORDERPAID","message":"该订单已支付"}"#);
    let err = client_for(&url)
        .native_prepay(&request("PREPAY0003"))
        .unwrap_err();
    assert!(
        matches!(err, Error::Rejected { status: 403, .. }),
        "{err:?}"
    );
    assert_eq!(err.provider_code(), Some("ORDERPAID"));
    assert!(err.is_permanent());
}

#[test]
fn invalid_requests_are_refused_before_sending() {
    let e = env();
    let cases: Vec<fn(&mut NativePrepay)> = vec![
        |r| r.out_trade_no = "short".into(),
        |r| r.out_trade_no = "PREPAY/../x".into(),
        |r| r.appid.clear(),
        |r| r.description.clear(),
        |r| r.description = "x".repeat(128),
        |r| r.total_fen = 0,
        |r| r.total_fen = -1,
    ];
    for change in cases {
        let mut req = request("PREPAY0004");
        change(&mut req);
        let err = e.client.native_prepay(&req).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidOutTradeNo(_) | Error::InvalidArgument { .. }
            ),
            "{req:?}: {err:?}"
        );
        assert!(err.is_permanent());
    }
    assert_eq!(e.admin.stats().unwrap().api_requests, 0);
}

/// A request whose notifications go nowhere (a local port that refuses).
fn sim_request(out_trade_no: &str) -> NativePrepay {
    NativePrepay {
        notify_url: "http://127.0.0.1:9/wechatpay/notify".to_owned(),
        ..request(out_trade_no)
    }
}

fn rejected(err: &Error) -> (u16, &str) {
    assert!(err.is_permanent(), "{err:?}");
    match err {
        Error::Rejected { status, code, .. } => (*status, code.as_str()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_simulator_answers_a_code_url_and_the_same_one_again() {
    let e = env();
    let req = sim_request("SIMPREPAY1");
    let code_url = e.client.native_prepay(&req).unwrap();
    assert!(
        code_url.starts_with("weixin://wxpay/bizpayurl?pr=") && code_url.len() > 28,
        "{code_url}"
    );
    assert_eq!(e.client.native_prepay(&req).unwrap(), code_url);

    let order = e.admin.order("SIMPREPAY1").unwrap().unwrap();
    assert_eq!(order.code_url.as_deref(), Some(code_url.as_str()));
    assert_eq!(order.amount_total, 1_990);
    assert_eq!(order.appid.as_deref(), Some("wxd678efh567hg6787"));
    assert_eq!(order.trade_state, "NOTPAY");
    // The new payment order reads as unpaid.
    match e.client.query_by_out_trade_no("SIMPREPAY1").unwrap() {
        payment_client::QueryOutcome::Found(t) => {
            assert_eq!(t.trade_state, payment_client::TradeState::NotPay);
        }
        other @ payment_client::QueryOutcome::NotFound => panic!("{other:?}"),
    }
}

#[test]
fn the_same_out_trade_no_with_other_parameters_is_refused() {
    let e = env();
    e.client.native_prepay(&sim_request("SIMPREPAY2")).unwrap();
    let changes: [fn(&mut NativePrepay); 3] = [
        |r| r.total_fen += 1,
        |r| r.description.push('!'),
        |r| r.time_expire = "2099-11-26T18:30:00+08:00".into(),
    ];
    for change in changes {
        let mut req = sim_request("SIMPREPAY2");
        change(&mut req);
        let err = e.client.native_prepay(&req).unwrap_err();
        assert_eq!(rejected(&err), (400, "INVALID_REQUEST"), "{req:?}");
    }
}

#[test]
fn a_paid_order_is_refused_with_orderpaid() {
    let e = env();
    let req = sim_request("SIMPREPAY3");
    e.client.native_prepay(&req).unwrap();
    e.admin.pay("SIMPREPAY3").unwrap();
    let err = e.client.native_prepay(&req).unwrap_err();
    assert_eq!(rejected(&err), (403, "ORDERPAID"));
    assert_eq!(err.provider_code(), Some("ORDERPAID"));
}

#[test]
fn a_closed_or_expired_order_is_refused_with_order_closed() {
    let e = env();
    let req = sim_request("SIMPREPAY4");
    e.client.native_prepay(&req).unwrap();
    assert_eq!(
        e.client.close("SIMPREPAY4").unwrap(),
        payment_client::CloseAnswer::Closed
    );
    let err = e.client.native_prepay(&req).unwrap_err();
    assert_eq!(rejected(&err), (400, "ORDER_CLOSED"));

    // Past its time_expire a payment order closes by itself.
    let expired = NativePrepay {
        time_expire: "2020-01-01T00:00:00+08:00".to_owned(),
        ..sim_request("SIMPREPAY5")
    };
    let _ = e.client.native_prepay(&expired);
    let err = e.client.native_prepay(&expired).unwrap_err();
    assert_eq!(rejected(&err), (400, "ORDER_CLOSED"));
}

#[test]
fn provider_trouble_during_prepay_is_transient() {
    let e = env();
    e.admin
        .set_global_faults(&wechatpay_sim::Faults {
            status: Some(500),
            ..wechatpay_sim::Faults::default()
        })
        .unwrap();
    let err = e
        .client
        .native_prepay(&sim_request("SIMPREPAY6"))
        .unwrap_err();
    assert!(matches!(err, Error::Server { status: 500, .. }), "{err:?}");
    assert!(err.is_transient());

    e.admin
        .set_global_faults(&wechatpay_sim::Faults {
            tamper_signature: true,
            ..wechatpay_sim::Faults::default()
        })
        .unwrap();
    let err = e
        .client
        .native_prepay(&sim_request("SIMPREPAY6"))
        .unwrap_err();
    assert!(matches!(err, Error::Unverified { .. }), "{err:?}");
    assert!(err.is_transient());

    e.admin.clear_global_faults().unwrap();
    assert!(e.client.native_prepay(&sim_request("SIMPREPAY6")).is_ok());
}
