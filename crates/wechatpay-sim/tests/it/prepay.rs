//! Native prepay and `time_expire`: signed API calls over real HTTP.

use serde_json::{json, Value};
use wechatpay_sim::{AdminError, Endpoint, Faults, Order, SimConfig, Simulator};

use crate::support::{keys, signed, start, wechatpay_signed, Answer};

const PREPAY: &str = "/v3/pay/transactions/native";

fn body(no: &str) -> Value {
    json!({
        "appid": "wxd678efh567hg6787",
        "mchid": wechatpay_sim::DEFAULT_MCHID,
        "description": "Image形象店-深圳腾大-QQ公仔",
        "out_trade_no": no,
        "time_expire": "2099-11-26T18:00:00+08:00",
        "notify_url": "https://www.weixin.qq.com/wxpay/pay.php",
        "amount": { "total": 2500, "currency": "CNY" },
    })
}

fn prepay(sim: &Simulator, body: &Value) -> Answer {
    signed(sim.addr(), "POST", PREPAY, &body.to_string())
}

fn json_of(a: &Answer) -> Value {
    serde_json::from_str(&a.body).unwrap()
}

fn code(a: &Answer) -> String {
    json_of(a)["code"].as_str().unwrap_or_default().to_owned()
}

fn verifies(a: &Answer) -> bool {
    wechatpay_signed(
        a.header("Wechatpay-Timestamp").unwrap(),
        a.header("Wechatpay-Nonce").unwrap(),
        a.body.as_bytes(),
        a.header("Wechatpay-Signature").unwrap(),
    )
}

#[test]
fn prepay_creates_the_order_and_repeats_its_code_url() {
    let sim = start();
    let a = prepay(&sim, &body("PREPAY0001"));
    assert_eq!(a.status, 200, "{a:?}");
    assert!(verifies(&a));
    let code_url = json_of(&a)["code_url"].as_str().unwrap().to_owned();
    let pr = code_url
        .strip_prefix("weixin://wxpay/bizpayurl?pr=")
        .unwrap();
    assert!(
        pr.len() >= 10 && pr.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{code_url}"
    );

    let order = sim.admin().order("PREPAY0001").unwrap().unwrap();
    assert_eq!(order.trade_state, "NOTPAY");
    assert_eq!((order.amount_total, order.currency.as_str()), (2500, "CNY"));
    assert_eq!(order.appid.as_deref(), Some("wxd678efh567hg6787"));
    assert_eq!(
        order.description.as_deref(),
        Some("Image形象店-深圳腾大-QQ公仔")
    );
    assert_eq!(
        order.notify_url.as_deref(),
        Some("https://www.weixin.qq.com/wxpay/pay.php")
    );
    assert_eq!(
        order.time_expire.as_deref(),
        Some("2099-11-26T18:00:00+08:00")
    );
    assert_eq!(order.code_url.as_deref(), Some(code_url.as_str()));

    // The same call again (currency left out, the same instant in UTC):
    // the same code_url.
    let mut again = body("PREPAY0001");
    again["amount"] = json!({ "total": 2500 });
    again["time_expire"] = json!("2099-11-26T10:00:00Z");
    let a = prepay(&sim, &again);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(json_of(&a)["code_url"], code_url);

    // Other parameters for the same out_trade_no are refused.
    for (field, value) in [
        ("amount", json!({ "total": 2501 })),
        ("description", json!("another")),
        ("notify_url", json!("https://example.com/other")),
        ("time_expire", json!("2099-11-26T18:00:01+08:00")),
        ("appid", json!("wx0000000000000002")),
    ] {
        let mut other = body("PREPAY0001");
        other[field] = value;
        let a = prepay(&sim, &other);
        assert_eq!(
            (a.status, code(&a).as_str()),
            (400, "INVALID_REQUEST"),
            "{field}"
        );
        assert!(a.body.contains("other parameters"), "{}", a.body);
    }
    let order = sim.admin().order("PREPAY0001").unwrap().unwrap();
    assert_eq!((order.prepays, order.amount_total), (7, 2500));
    assert_eq!(sim.admin().stats().unwrap().prepays, 7);
}

#[test]
fn missing_or_invalid_fields_are_a_param_error_naming_them() {
    let sim = start();
    for field in [
        "appid",
        "mchid",
        "description",
        "out_trade_no",
        "notify_url",
        "amount",
    ] {
        let mut b = body("PREPAY0002");
        b.as_object_mut().unwrap().remove(field);
        let a = prepay(&sim, &b);
        assert_eq!(
            (a.status, code(&a).as_str()),
            (400, "PARAM_ERROR"),
            "{field}"
        );
        assert!(a.body.contains(field), "{field}: {}", a.body);
        assert!(verifies(&a));
    }
    let mut b = body("PREPAY0002");
    b["mchid"] = json!("1900000002");
    let a = prepay(&sim, &b);
    assert_eq!((a.status, code(&a).as_str()), (400, "PARAM_ERROR"));
    // http is fine for local receivers; no time_expire is fine too.
    let mut b = body("PREPAY0002");
    b["notify_url"] = json!("http://127.0.0.1:9/notify");
    b.as_object_mut().unwrap().remove("time_expire");
    assert_eq!(prepay(&sim, &b).status, 200);
    assert_eq!(
        sim.admin()
            .order("PREPAY0002")
            .unwrap()
            .unwrap()
            .time_expire,
        None
    );
    // Without Content-Type, like close.
    let auth = crate::support::authorization(
        &keys().merchant,
        "POST",
        PREPAY,
        crate::support::now(),
        &b.to_string(),
    );
    let a = crate::support::raw(
        sim.addr(),
        "POST",
        PREPAY,
        &[
            ("Authorization", &auth),
            ("Accept", "application/json"),
            ("User-Agent", "sim-test/1"),
        ],
        &b.to_string(),
    );
    assert_eq!((a.status, code(&a).as_str()), (400, "INVALID_REQUEST"));
}

#[test]
fn paid_and_closed_orders_cannot_be_prepaid_again() {
    let sim = start();
    let admin = sim.admin();
    assert_eq!(prepay(&sim, &body("PREPAY0003")).status, 200);
    admin.pay("PREPAY0003").unwrap();
    let a = prepay(&sim, &body("PREPAY0003"));
    assert_eq!((a.status, code(&a).as_str()), (403, "ORDERPAID"), "{a:?}");

    assert_eq!(prepay(&sim, &body("PREPAY0004")).status, 200);
    let close = "/v3/pay/transactions/out-trade-no/PREPAY0004/close";
    let mchid = json!({ "mchid": wechatpay_sim::DEFAULT_MCHID }).to_string();
    assert_eq!(signed(sim.addr(), "POST", close, &mchid).status, 204);
    let a = prepay(&sim, &body("PREPAY0004"));
    assert_eq!(
        (a.status, code(&a).as_str()),
        (400, "ORDER_CLOSED"),
        "{a:?}"
    );

    // An order whose time_expire passed is closed.
    admin
        .put_order(
            "PREPAY0005",
            &Order {
                time_expire: Some("2020-01-01T00:00:00+08:00".to_owned()),
                ..Order::default()
            },
        )
        .unwrap();
    let a = prepay(&sim, &body("PREPAY0005"));
    assert_eq!(
        (a.status, code(&a).as_str()),
        (400, "ORDER_CLOSED"),
        "{a:?}"
    );
}

#[test]
fn an_order_made_through_the_admin_api_takes_the_prepay_parameters() {
    let sim = start();
    sim.admin().set_state("PREPAY0006", "NOTPAY").unwrap();
    let a = prepay(&sim, &body("PREPAY0006"));
    assert_eq!(a.status, 200, "{a:?}");
    let order = sim.admin().order("PREPAY0006").unwrap().unwrap();
    assert_eq!(order.amount_total, 2500);
    assert_eq!(order.code_url.as_deref(), json_of(&a)["code_url"].as_str());
    assert!(order.notify_url.is_some());
    // Queried now, it is a Native payment of the prepay's appid.
    let url = "/v3/pay/transactions/out-trade-no/PREPAY0006?mchid=1900000001";
    let q = json_of(&signed(sim.addr(), "GET", url, ""));
    assert_eq!(
        (q["trade_type"].as_str(), q["appid"].as_str()),
        (Some("NATIVE"), Some("wxd678efh567hg6787"))
    );
}

#[test]
fn a_configured_appid_must_be_named() {
    let sim = Simulator::start(
        "127.0.0.1:0",
        &keys().sim,
        SimConfig {
            appid: Some("wx1111111111111111".to_owned()),
            ..SimConfig::default()
        },
    )
    .unwrap();
    let a = prepay(&sim, &body("PREPAY0007"));
    assert_eq!((a.status, code(&a).as_str()), (400, "PARAM_ERROR"), "{a:?}");
    assert!(a.body.contains("appid"), "{}", a.body);
    let mut b = body("PREPAY0007");
    b["appid"] = json!("wx1111111111111111");
    assert_eq!(prepay(&sim, &b).status, 200);
    // Orders never prepaid answer with the configured appid.
    sim.admin().set_state("PREPAY0008", "NOTPAY").unwrap();
    let url = "/v3/pay/transactions/out-trade-no/PREPAY0008?mchid=1900000001";
    let q = json_of(&signed(sim.addr(), "GET", url, ""));
    assert_eq!(q["appid"], "wx1111111111111111");
}

#[test]
fn faults_apply_to_prepay() {
    let sim = start();
    sim.admin()
        .set_global_faults(&Faults {
            status: Some(503),
            only: Some(Endpoint::Prepay),
            times: Some(1),
            ..Faults::default()
        })
        .unwrap();
    let query = "/v3/pay/transactions/out-trade-no/PREPAY0009?mchid=1900000001";
    assert_eq!(
        signed(sim.addr(), "GET", query, "").status,
        404,
        "query untouched"
    );
    let a = prepay(&sim, &body("PREPAY0009"));
    assert_eq!((a.status, code(&a).as_str()), (503, "SERVICE_UNAVAILABLE"));
    assert_eq!(prepay(&sim, &body("PREPAY0009")).status, 200);

    // Faults of the order named in the body.
    sim.admin()
        .set_order_faults(
            "PREPAY0009",
            &Faults {
                tamper_signature: true,
                ..Faults::default()
            },
        )
        .unwrap();
    let a = prepay(&sim, &body("PREPAY0009"));
    assert_eq!(a.status, 200);
    assert!(!verifies(&a));
    assert_eq!(
        serde_json::to_value(Endpoint::Prepay).unwrap(),
        json!("prepay")
    );
}

#[test]
fn after_time_expire_an_unpaid_order_reads_closed_and_cannot_be_paid() {
    let sim = start();
    let admin = sim.admin();
    let expired = Order {
        time_expire: Some("2020-01-01T00:00:00+08:00".to_owned()),
        ..Order::default()
    };
    admin.put_order("EXPIRED001", &expired).unwrap();
    let url = "/v3/pay/transactions/out-trade-no/EXPIRED001?mchid=1900000001";
    let a = signed(sim.addr(), "GET", url, "");
    assert_eq!(json_of(&a)["trade_state"], "CLOSED", "{a:?}");

    admin.put_order("EXPIRED002", &expired).unwrap();
    match admin.pay("EXPIRED002") {
        Err(AdminError::Status { status: 409, body }) => {
            assert!(
                body.contains("ORDER_CLOSED") && body.contains("time_expire"),
                "{body}"
            );
        }
        other => panic!("paid after time_expire: {other:?}"),
    }
    let order = admin.order("EXPIRED002").unwrap().unwrap();
    assert_eq!(
        (order.trade_state.as_str(), order.transaction_id),
        ("CLOSED", None)
    );
    // Paying again says the same.
    assert!(matches!(
        admin.pay("EXPIRED002"),
        Err(AdminError::Status { status: 409, body }) if body.contains("ORDER_CLOSED")
    ));

    // Paid orders stay paid after their time_expire; future ones are payable.
    admin
        .put_order(
            "EXPIRED003",
            &Order {
                time_expire: Some("2099-01-01T00:00:00+08:00".to_owned()),
                ..Order::default()
            },
        )
        .unwrap();
    assert_eq!(admin.pay("EXPIRED003").unwrap().trade_state, "SUCCESS");
    admin
        .put_order(
            "EXPIRED004",
            &Order {
                trade_state: "SUCCESS".to_owned(),
                ..expired
            },
        )
        .unwrap();
    let order = admin.order("EXPIRED004").unwrap().unwrap();
    assert_eq!(order.trade_state, "SUCCESS");
}
