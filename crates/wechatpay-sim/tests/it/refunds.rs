//! Domestic refunds over real HTTP: creation and its safe repetition, the
//! refusals, the query, how a refund becomes final, refund notifications
//! and faults.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use openssl::symm::{decrypt_aead, Cipher};
use serde_json::{json, Value};
use wechatpay_sim::{AdminError, Endpoint, Faults, Order, SimConfig, Simulator};

use crate::support::{
    authorization, eventually, keys, now, raw, receiver, signed, wechatpay_signed, Answer, Received,
};

const REFUNDS: &str = "/v3/refund/domestic/refunds";
const WAIT: Duration = Duration::from_secs(5);

fn start_with(refund_delay: Duration) -> Simulator {
    Simulator::start(
        "127.0.0.1:0",
        &keys().sim,
        SimConfig {
            refund_delay,
            ..SimConfig::default()
        },
    )
    .unwrap()
}

/// A paid order of 880 fen; its transaction id.
fn paid(sim: &Simulator, no: &str) -> String {
    let admin = sim.admin();
    admin
        .put_order(
            no,
            &Order {
                amount_total: 880,
                ..Order::default()
            },
        )
        .unwrap();
    admin.pay(no).unwrap().transaction_id.unwrap()
}

fn refund_body(transaction_id: &str, out_refund_no: &str, refund: i64) -> Value {
    json!({
        "transaction_id": transaction_id,
        "out_refund_no": out_refund_no,
        "reason": "订单超时关闭后到账",
        "amount": { "refund": refund, "total": 880, "currency": "CNY" },
    })
}

fn post(sim: &Simulator, body: &Value) -> Answer {
    signed(sim.addr(), "POST", REFUNDS, &body.to_string())
}

fn get(sim: &Simulator, out_refund_no: &str) -> Answer {
    signed(sim.addr(), "GET", &format!("{REFUNDS}/{out_refund_no}"), "")
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
fn a_refund_is_created_once_and_its_repeat_answers_the_same() {
    let sim = start_with(Duration::from_mins(1));
    let transaction_id = paid(&sim, "REFUND0001");

    let a = post(&sim, &refund_body(&transaction_id, "RF0001", 300));
    assert_eq!(a.status, 200, "{a:?}");
    assert!(verifies(&a));
    let r = json_of(&a);
    let refund_id = r["refund_id"].as_str().unwrap().to_owned();
    assert!(
        refund_id.len() == 30
            && refund_id.starts_with("50")
            && refund_id.bytes().all(|b| b.is_ascii_digit()),
        "{refund_id}"
    );
    assert_eq!(r["out_refund_no"], "RF0001");
    assert_eq!(r["transaction_id"], transaction_id.as_str());
    assert_eq!(r["out_trade_no"], "REFUND0001");
    assert_eq!(r["channel"], "ORIGINAL");
    assert_eq!(r["user_received_account"], "支付用户零钱");
    assert_eq!(r["status"], "PROCESSING");
    assert_eq!(r["funds_account"], "AVAILABLE");
    assert!(r["create_time"].as_str().unwrap().ends_with("+08:00"));
    assert!(r.get("success_time").is_none());
    assert_eq!(
        r["amount"],
        json!({
            "total": 880, "refund": 300, "from": [], "payer_total": 880,
            "payer_refund": 300, "settlement_refund": 300, "settlement_total": 880,
            "discount_refund": 0, "currency": "CNY", "refund_fee": 0,
        })
    );
    let order = sim.admin().order("REFUND0001").unwrap().unwrap();
    assert_eq!(order.trade_state, "REFUND");

    // The same request again (a retry): the same refund, nothing created.
    let again = post(&sim, &refund_body(&transaction_id, "RF0001", 300));
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(json_of(&again), r);
    // Named by out_trade_no, it is the same transaction.
    let mut by_no = refund_body("", "RF0001", 300);
    by_no.as_object_mut().unwrap().remove("transaction_id");
    by_no["out_trade_no"] = json!("REFUND0001");
    assert_eq!(
        json_of(&post(&sim, &by_no))["refund_id"],
        refund_id.as_str()
    );
    let stats = sim.admin().stats().unwrap();
    assert_eq!((stats.refunds_created, stats.refund_requests), (1, 3));
    let held = sim.admin().refund("RF0001").unwrap().unwrap();
    assert_eq!(
        (held.requests, held.refund_id.as_str()),
        (3, refund_id.as_str())
    );

    // The same out_refund_no for another amount or transaction: refused.
    let other = post(&sim, &refund_body(&transaction_id, "RF0001", 301));
    assert_eq!(
        (other.status, code(&other)),
        (400, "INVALID_REQUEST".into())
    );
    let other_tx = paid(&sim, "REFUND0002");
    let other = post(&sim, &refund_body(&other_tx, "RF0001", 300));
    assert_eq!(
        (other.status, code(&other)),
        (400, "INVALID_REQUEST".into())
    );
    assert_eq!(sim.admin().refunds().unwrap().len(), 1);
    assert_eq!(sim.admin().stats().unwrap().refunds_created, 1);
}

#[test]
fn refunds_are_refused_like_wechat_pay_does() {
    let sim = start_with(Duration::from_mins(1));
    let transaction_id = paid(&sim, "REFUND0003");

    let unknown = post(
        &sim,
        &refund_body("4200000000000000000000000000", "RF0003", 1),
    );
    assert_eq!(
        (unknown.status, code(&unknown)),
        (404, "RESOURCE_NOT_EXISTS".into())
    );
    assert!(verifies(&unknown));

    sim.admin().set_state("REFUND0004", "NOTPAY").unwrap();
    let unpaid = post(
        &sim,
        &json!({
            "out_trade_no": "REFUND0004",
            "out_refund_no": "RF0004",
            "amount": { "refund": 1, "total": 100, "currency": "CNY" },
        }),
    );
    assert_eq!(
        (unpaid.status, code(&unpaid)),
        (400, "INVALID_REQUEST".into())
    );
    assert!(json_of(&unpaid)["message"]
        .as_str()
        .unwrap()
        .contains("not paid"));

    let mut wrong_total = refund_body(&transaction_id, "RF0005", 100);
    wrong_total["amount"]["total"] = json!(881);
    let a = post(&sim, &wrong_total);
    assert_eq!((a.status, code(&a)), (400, "PARAM_ERROR".into()));
    assert!(json_of(&a)["message"]
        .as_str()
        .unwrap()
        .contains("amount.total"));

    let a = post(&sim, &refund_body(&transaction_id, "RF0006", 881));
    assert_eq!((a.status, code(&a)), (400, "PARAM_ERROR".into()));
    assert!(json_of(&a)["message"]
        .as_str()
        .unwrap()
        .contains("amount.refund"));

    // Partial refunds add up to at most the total.
    assert_eq!(
        post(&sim, &refund_body(&transaction_id, "RF0007", 800)).status,
        200
    );
    let a = post(&sim, &refund_body(&transaction_id, "RF0008", 81));
    assert_eq!((a.status, code(&a)), (400, "PARAM_ERROR".into()));
    assert_eq!(
        post(&sim, &refund_body(&transaction_id, "RF0008", 80)).status,
        200
    );

    let a = post(&sim, &refund_body(&transaction_id, "RF 0009", 1));
    assert_eq!((a.status, code(&a)), (400, "PARAM_ERROR".into()));

    // Content-Type is required.
    let body = refund_body(&transaction_id, "RF0010", 1).to_string();
    let auth = authorization(&keys().merchant, "POST", REFUNDS, now(), &body);
    let a = raw(
        sim.addr(),
        "POST",
        REFUNDS,
        &[
            ("Authorization", &auth),
            ("Accept", "application/json"),
            ("User-Agent", "sim-test/1"),
        ],
        &body,
    );
    assert_eq!((a.status, code(&a)), (400, "INVALID_REQUEST".into()));

    // Unsigned: 401 like every endpoint, and no refund.
    let a = raw(
        sim.addr(),
        "POST",
        REFUNDS,
        &[
            ("Accept", "application/json"),
            ("User-Agent", "sim-test/1"),
            ("Content-Type", "application/json"),
        ],
        &refund_body(&transaction_id, "RF0011", 1).to_string(),
    );
    assert_eq!((a.status, code(&a)), (401, "SIGN_ERROR".into()));
    assert_eq!(sim.admin().refunds().unwrap().len(), 2);
}

#[test]
fn the_query_answers_processing_then_the_final_status() {
    let sim = start_with(Duration::from_millis(300));
    let transaction_id = paid(&sim, "REFUND0012");
    let created = json_of(&post(&sim, &refund_body(&transaction_id, "RF|0012@x", 880)));

    let a = get(&sim, "RF%7C0012@x");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(verifies(&a));
    assert_eq!(json_of(&a), created);
    assert_eq!(json_of(&a)["status"], "PROCESSING");

    let missing = get(&sim, "RF0099");
    assert_eq!(
        (missing.status, code(&missing)),
        (404, "RESOURCE_NOT_EXISTS".into())
    );

    assert!(eventually(WAIT, || json_of(&get(&sim, "RF%7C0012@x"))
        ["status"]
        == "SUCCESS"));
    let done = json_of(&get(&sim, "RF%7C0012@x"));
    assert!(done["success_time"].as_str().unwrap().ends_with("+08:00"));
    assert_eq!(done["refund_id"], created["refund_id"]);

    let held = sim.admin().refund("RF|0012@x").unwrap().unwrap();
    assert_eq!(held.status, "SUCCESS");
    assert_eq!(held.success_time.as_deref(), done["success_time"].as_str());
    assert!(held.queries >= 3);
    let stats = sim.admin().stats().unwrap();
    assert_eq!(stats.refund_queries, held.queries + 1);
    assert_eq!(sim.admin().refund("RF0099").unwrap(), None);
}

#[test]
fn the_admin_api_decides_how_refunds_end() {
    let sim = start_with(Duration::from_mins(1));
    let admin = sim.admin();
    admin
        .set_refund_outcome("ABNORMAL", Some(Duration::from_millis(50)))
        .unwrap();
    let transaction_id = paid(&sim, "REFUND0013");
    post(&sim, &refund_body(&transaction_id, "RF0013", 100));
    post(&sim, &refund_body(&transaction_id, "RF0014", 100));
    admin.override_refund_outcome("RF0014", "CLOSED").unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let r = json_of(&get(&sim, "RF0013"));
    assert_eq!(r["status"], "ABNORMAL");
    assert!(r.get("success_time").is_none());
    assert_eq!(json_of(&get(&sim, "RF0014"))["status"], "CLOSED");

    // A human fixed the account: forced to SUCCESS.
    let forced = admin.set_refund_status("RF0013", "SUCCESS").unwrap();
    assert_eq!(forced.status, "SUCCESS");
    assert!(forced.success_time.is_some());
    assert_eq!(json_of(&get(&sim, "RF0013"))["status"], "SUCCESS");

    // Held in PROCESSING, whatever the delay.
    post(&sim, &refund_body(&transaction_id, "RF0015", 100));
    admin.set_refund_status("RF0015", "PROCESSING").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(json_of(&get(&sim, "RF0015"))["status"], "PROCESSING");

    let listed: Vec<String> = admin
        .refunds()
        .unwrap()
        .into_iter()
        .map(|r| format!("{}={}", r.out_refund_no, r.status))
        .collect();
    assert_eq!(
        listed,
        ["RF0013=SUCCESS", "RF0014=CLOSED", "RF0015=PROCESSING"]
    );
    assert!(matches!(
        admin.set_refund_status("RF0015", "DONE"),
        Err(AdminError::Status { status: 400, .. })
    ));
    assert!(matches!(
        admin.set_refund_outcome("PROCESSING", None),
        Err(AdminError::Status { status: 400, .. })
    ));
    assert!(matches!(
        admin.set_refund_status("RF0099", "SUCCESS"),
        Err(AdminError::Status { status: 404, .. })
    ));

    admin.reset().unwrap();
    assert!(admin.refunds().unwrap().is_empty());
}

/// The decrypted `resource` of a refund notification, with the associated
/// data WeChat Pay uses for refunds.
fn decrypt_refund(body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap();
    let resource = &v["resource"];
    let data = openssl::base64::decode_block(resource["ciphertext"].as_str().unwrap()).unwrap();
    let (ciphertext, tag) = data.split_at(data.len() - 16);
    let plaintext = decrypt_aead(
        Cipher::aes_256_gcm(),
        wechatpay_sim::DEFAULT_APIV3_KEY.as_bytes(),
        Some(resource["nonce"].as_str().unwrap().as_bytes()),
        b"refund",
        ciphertext,
        tag,
    )
    .unwrap();
    serde_json::from_slice(&plaintext).unwrap()
}

fn next(rx: &Receiver<Received>) -> Received {
    rx.recv_timeout(WAIT).expect("a notification within 5 s")
}

fn signature_verifies(r: &Received) -> bool {
    wechatpay_signed(
        r.header("Wechatpay-Timestamp").unwrap(),
        r.header("Wechatpay-Nonce").unwrap(),
        &r.body,
        r.header("Wechatpay-Signature").unwrap(),
    )
}

#[test]
fn a_final_refund_notifies_its_receiver_without_being_read() {
    let sim = start_with(Duration::from_millis(100));
    let (url, rx) = receiver(&[204]);
    let transaction_id = paid(&sim, "REFUND0016");
    let mut body = refund_body(&transaction_id, "RF0016", 880);
    body["notify_url"] = json!(url);
    let created = json_of(&post(&sim, &body));

    let r = next(&rx);
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/notify"));
    assert_eq!(
        r.header("Wechatpay-Serial"),
        Some(wechatpay_sim::DEFAULT_PUBLIC_KEY_ID)
    );
    assert!(signature_verifies(&r));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["event_type"], "REFUND.SUCCESS");
    assert_eq!(v["resource_type"], "encrypt-resource");
    assert_eq!(v["summary"], "退款成功");
    assert_eq!(v["resource"]["original_type"], "refund");
    assert_eq!(v["resource"]["associated_data"], "refund");
    assert_eq!(v["resource"]["algorithm"], "AEAD_AES_256_GCM");

    let held = sim.admin().refund("RF0016").unwrap().unwrap();
    assert_eq!(held.status, "SUCCESS");
    let plain = decrypt_refund(&r.body);
    assert_eq!(
        plain,
        json!({
            "mchid": wechatpay_sim::DEFAULT_MCHID,
            "out_trade_no": "REFUND0016",
            "transaction_id": transaction_id,
            "out_refund_no": "RF0016",
            "refund_id": created["refund_id"],
            "refund_status": "SUCCESS",
            "success_time": held.success_time.unwrap(),
            "user_received_account": "支付用户零钱",
            "amount": { "total": 880, "refund": 880, "payer_total": 880, "payer_refund": 880 },
        })
    );
    assert!(eventually(WAIT, || sim
        .admin()
        .refund("RF0016")
        .unwrap()
        .unwrap()
        .notify_delivered));
    assert_eq!(
        sim.admin()
            .refund("RF0016")
            .unwrap()
            .unwrap()
            .notify_attempts,
        1
    );
    // The order's own payment notification counters are untouched.
    let order = sim.admin().order("REFUND0016").unwrap().unwrap();
    assert_eq!(order.notify_attempts, 0);

    // Forced to ABNORMAL: a REFUND.ABNORMAL notification follows.
    sim.admin().set_refund_status("RF0016", "ABNORMAL").unwrap();
    let r = next(&rx);
    assert!(signature_verifies(&r));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (v["event_type"].as_str(), v["summary"].as_str()),
        (Some("REFUND.ABNORMAL"), Some("退款异常"))
    );
    let plain = decrypt_refund(&r.body);
    assert_eq!(plain["refund_status"], "ABNORMAL");
    assert!(plain.get("success_time").is_none());
    assert!(eventually(WAIT, || {
        let stats = sim.admin().stats().unwrap();
        (stats.notifications_sent, stats.notifications_delivered) == (2, 2)
    }));
}

#[test]
fn refund_notifications_are_retried_and_dropped_like_payment_ones() {
    let sim = Simulator::start(
        "127.0.0.1:0",
        &keys().sim,
        SimConfig {
            refund_delay: Duration::ZERO,
            notify_schedule: vec![Duration::from_millis(50)],
            ..SimConfig::default()
        },
    )
    .unwrap();
    let (url, rx) = receiver(&[500, 200]);
    let transaction_id = paid(&sim, "REFUND0017");
    let mut body = refund_body(&transaction_id, "RF0017", 1);
    body["notify_url"] = json!(url);
    post(&sim, &body);
    let first = next(&rx);
    let second = next(&rx);
    assert_eq!(first.body, second.body, "the same notification again");
    assert!(eventually(WAIT, || sim
        .admin()
        .refund("RF0017")
        .unwrap()
        .unwrap()
        .notify_delivered));
    assert_eq!(
        sim.admin()
            .refund("RF0017")
            .unwrap()
            .unwrap()
            .notify_attempts,
        2
    );

    sim.admin().set_drop_notifications(true).unwrap();
    body["out_refund_no"] = json!("RF0018");
    post(&sim, &body);
    assert!(eventually(WAIT, || sim
        .admin()
        .stats()
        .unwrap()
        .notifications_dropped
        == 1));
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(
        sim.admin().refund("RF0018").unwrap().unwrap().status,
        "SUCCESS"
    );
}

#[test]
fn faults_for_refunds_only() {
    let sim = start_with(Duration::from_mins(1));
    let admin = sim.admin();
    let transaction_id = paid(&sim, "REFUND0019");
    assert_eq!(
        serde_json::to_value([Endpoint::Refund, Endpoint::RefundQuery]).unwrap(),
        json!(["refund", "refund_query"])
    );
    admin
        .set_global_faults(&Faults {
            status: Some(500),
            only: Some(Endpoint::Refund),
            ..Faults::default()
        })
        .unwrap();
    let a = post(&sim, &refund_body(&transaction_id, "RF0019", 10));
    assert_eq!((a.status, code(&a)), (500, "SYSTEM_ERROR".into()));
    assert!(verifies(&a));
    // Other endpoints answer.
    let q = signed(
        sim.addr(),
        "GET",
        "/v3/pay/transactions/out-trade-no/REFUND0019?mchid=1900000001",
        "",
    );
    assert_eq!(q.status, 200);
    assert!(admin.refunds().unwrap().is_empty());

    admin.clear_global_faults().unwrap();
    let a = post(&sim, &refund_body(&transaction_id, "RF0019", 10));
    assert_eq!(a.status, 200, "{a:?}");
    let stats = admin.stats().unwrap();
    assert_eq!(
        (
            stats.refund_requests,
            stats.refunds_created,
            stats.faults_injected
        ),
        (2, 1, 1)
    );

    // The query has its own switch, and the order's faults cover its refunds.
    admin
        .set_global_faults(&Faults {
            status: Some(503),
            only: Some(Endpoint::RefundQuery),
            times: Some(1),
            ..Faults::default()
        })
        .unwrap();
    assert_eq!(get(&sim, "RF0019").status, 503);
    assert_eq!(get(&sim, "RF0019").status, 200);
    admin
        .set_order_faults(
            "REFUND0019",
            &Faults {
                tamper_signature: true,
                only: Some(Endpoint::RefundQuery),
                ..Faults::default()
            },
        )
        .unwrap();
    let a = get(&sim, "RF0019");
    assert_eq!(a.status, 200);
    assert!(!verifies(&a));
    admin.clear_order_faults("REFUND0019").unwrap();
    assert!(verifies(&get(&sim, "RF0019")));
    assert_eq!(admin.stats().unwrap().refund_queries, 4);
}

#[test]
fn crafted_refund_notifications_verify_and_decrypt() {
    let refund = json!({ "out_refund_no": "CRAFTED01", "refund_status": "CLOSED" });
    let n = wechatpay_sim::signed_refund_notification(
        &keys().sim,
        wechatpay_sim::DEFAULT_PUBLIC_KEY_ID,
        wechatpay_sim::DEFAULT_APIV3_KEY.as_bytes(),
        &refund,
        1_700_000_000,
    );
    let header = |name: &str| {
        n.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    };
    assert!(wechatpay_signed(
        header("Wechatpay-Timestamp"),
        header("Wechatpay-Nonce"),
        &n.body,
        header("Wechatpay-Signature"),
    ));
    assert_eq!(decrypt_refund(&n.body), refund);
    let v: Value = serde_json::from_slice(&n.body).unwrap();
    assert_eq!(
        (v["event_type"].as_str(), v["summary"].as_str()),
        (Some("REFUND.CLOSED"), Some("退款关闭"))
    );
}
