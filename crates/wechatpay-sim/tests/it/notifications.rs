//! Payment notifications reaching a real receiver: format, signature,
//! encryption, retries and the drop switches.

use std::sync::mpsc::Receiver;
use std::time::Duration;

use openssl::symm::{decrypt_aead, Cipher};
use serde_json::{json, Value};
use wechatpay_sim::{Order, SimConfig, Simulator};

use crate::support::{eventually, keys, now, receiver, signed, wechatpay_signed, Received};

const WAIT: Duration = Duration::from_secs(5);

fn start_with(schedule: &[Duration]) -> Simulator {
    Simulator::start(
        "127.0.0.1:0",
        &keys().sim,
        SimConfig {
            notify_schedule: schedule.to_vec(),
            ..SimConfig::default()
        },
    )
    .unwrap()
}

fn prepay(sim: &Simulator, no: &str, notify_url: &str) {
    let body = json!({
        "appid": "wx2421b1c4370ec43b",
        "mchid": wechatpay_sim::DEFAULT_MCHID,
        "description": "notification test",
        "out_trade_no": no,
        "notify_url": notify_url,
        "amount": { "total": 880 },
    });
    let a = signed(
        sim.addr(),
        "POST",
        "/v3/pay/transactions/native",
        &body.to_string(),
    );
    assert_eq!(a.status, 200, "{a:?}");
}

fn signature_verifies(r: &Received) -> bool {
    wechatpay_signed(
        r.header("Wechatpay-Timestamp").unwrap(),
        r.header("Wechatpay-Nonce").unwrap(),
        &r.body,
        r.header("Wechatpay-Signature").unwrap(),
    )
}

/// The decrypted `resource` of a notification body.
fn decrypt(body: &[u8], apiv3_key: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap();
    let resource = &v["resource"];
    let data = openssl::base64::decode_block(resource["ciphertext"].as_str().unwrap()).unwrap();
    let (ciphertext, tag) = data.split_at(data.len() - 16);
    let plaintext = decrypt_aead(
        Cipher::aes_256_gcm(),
        apiv3_key,
        Some(resource["nonce"].as_str().unwrap().as_bytes()),
        resource["associated_data"].as_str().unwrap().as_bytes(),
        ciphertext,
        tag,
    )
    .unwrap();
    serde_json::from_slice(&plaintext).unwrap()
}

fn next(rx: &Receiver<Received>) -> Received {
    rx.recv_timeout(WAIT).expect("a notification within 5 s")
}

#[test]
fn a_payment_notifies_the_receiver_signed_and_encrypted() {
    let sim = start_with(&[Duration::from_millis(50)]);
    let (url, rx) = receiver(&[204]);
    prepay(&sim, "NOTIFY0001", &url);
    let paid = sim.admin().pay("NOTIFY0001").unwrap();

    let r = next(&rx);
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/notify"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(
        r.header("Wechatpay-Serial"),
        Some(wechatpay_sim::DEFAULT_PUBLIC_KEY_ID)
    );
    let ts: u64 = r.header("Wechatpay-Timestamp").unwrap().parse().unwrap();
    assert!(ts.abs_diff(now()) < 10);
    let nonce = r.header("Wechatpay-Nonce").unwrap();
    assert!(nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(signature_verifies(&r));

    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["event_type"], "TRANSACTION.SUCCESS");
    assert_eq!(v["resource_type"], "encrypt-resource");
    assert_eq!(v["summary"], "支付成功");
    assert!(v["create_time"].as_str().unwrap().ends_with("+08:00"));
    assert_eq!(v["id"].as_str().unwrap().len(), 36);
    let resource = &v["resource"];
    assert_eq!(resource["algorithm"], "AEAD_AES_256_GCM");
    assert_eq!(resource["original_type"], "transaction");
    assert_eq!(resource["associated_data"], "transaction");
    assert_eq!(resource["nonce"].as_str().unwrap().len(), 12);

    let t = decrypt(&r.body, wechatpay_sim::DEFAULT_APIV3_KEY.as_bytes());
    assert_eq!(t["out_trade_no"], "NOTIFY0001");
    assert_eq!(t["trade_state"], "SUCCESS");
    assert_eq!(t["trade_type"], "NATIVE");
    assert_eq!(t["appid"], "wx2421b1c4370ec43b");
    assert_eq!(t["mchid"], wechatpay_sim::DEFAULT_MCHID);
    assert_eq!(t["transaction_id"].as_str(), paid.transaction_id.as_deref());
    assert_eq!(t["success_time"].as_str(), paid.success_time.as_deref());
    assert_eq!(t["amount"]["total"], 880);
    assert_eq!(t["amount"]["payer_total"], 880);
    assert_eq!(t["amount"]["currency"], "CNY");
    assert!(t["payer"]["openid"].is_string());

    // The same transaction the query answers.
    let query = signed(
        sim.addr(),
        "GET",
        "/v3/pay/transactions/out-trade-no/NOTIFY0001?mchid=1900000001",
        "",
    );
    assert_eq!(serde_json::from_str::<Value>(&query.body).unwrap(), t);

    assert!(eventually(WAIT, || sim
        .admin()
        .order("NOTIFY0001")
        .unwrap()
        .unwrap()
        .notify_delivered));
    let order = sim.admin().order("NOTIFY0001").unwrap().unwrap();
    assert_eq!(order.notify_attempts, 1);
    let stats = sim.admin().stats().unwrap();
    assert_eq!(
        (
            stats.notifications_sent,
            stats.notifications_delivered,
            stats.notifications_failed,
            stats.notifications_dropped
        ),
        (1, 1, 0, 0)
    );
}

#[test]
fn a_failed_delivery_is_retried_with_a_fresh_signature() {
    let sim = start_with(&[Duration::from_millis(50), Duration::from_millis(100)]);
    let (url, rx) = receiver(&[500, 500, 204]);
    prepay(&sim, "NOTIFY0002", &url);
    sim.admin().pay("NOTIFY0002").unwrap();
    let attempts: Vec<Received> = (0..3).map(|_| next(&rx)).collect();
    for r in &attempts {
        assert!(signature_verifies(r));
        assert_eq!(r.body, attempts[0].body, "the same notification each time");
    }
    let nonces: std::collections::HashSet<&str> = attempts
        .iter()
        .map(|r| r.header("Wechatpay-Nonce").unwrap())
        .collect();
    assert_eq!(nonces.len(), 3);
    assert!(eventually(WAIT, || sim
        .admin()
        .order("NOTIFY0002")
        .unwrap()
        .unwrap()
        .notify_delivered));
    assert_eq!(
        sim.admin()
            .order("NOTIFY0002")
            .unwrap()
            .unwrap()
            .notify_attempts,
        3
    );
    let stats = sim.admin().stats().unwrap();
    assert_eq!(
        (
            stats.notifications_sent,
            stats.notifications_delivered,
            stats.notifications_failed
        ),
        (3, 1, 2)
    );
    // Delivered: nothing more comes.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
}

#[test]
fn delivery_gives_up_after_the_schedule() {
    let sim = start_with(&[Duration::from_millis(30), Duration::from_millis(30)]);
    // Nobody listens there: connections are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/notify", dead.local_addr().unwrap());
    drop(dead);
    prepay(&sim, "NOTIFY0003", &url);
    sim.admin().pay("NOTIFY0003").unwrap();
    assert!(eventually(WAIT, || sim
        .admin()
        .stats()
        .unwrap()
        .notifications_failed
        == 3));
    std::thread::sleep(Duration::from_millis(200));
    let stats = sim.admin().stats().unwrap();
    assert_eq!(
        (
            stats.notifications_sent,
            stats.notifications_failed,
            stats.notifications_delivered
        ),
        (3, 3, 0)
    );
    let order = sim.admin().order("NOTIFY0003").unwrap().unwrap();
    assert_eq!((order.notify_attempts, order.notify_delivered), (3, false));
}

#[test]
fn drop_switches_hold_notifications_back() {
    let sim = start_with(&[]);
    let admin = sim.admin();
    let (url, rx) = receiver(&[204]);
    prepay(&sim, "NOTIFY0004", &url);
    admin.set_drop_notifications(true).unwrap();
    admin.pay("NOTIFY0004").unwrap();

    // Per order, through the admin API.
    admin
        .put_order(
            "NOTIFY0005",
            &Order {
                notify_url: Some(url.clone()),
                drop_notification: true,
                ..Order::default()
            },
        )
        .unwrap();
    admin.set_drop_notifications(false).unwrap();
    admin.pay("NOTIFY0005").unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    let stats = admin.stats().unwrap();
    assert_eq!(
        (stats.notifications_dropped, stats.notifications_sent),
        (2, 0)
    );

    // Switched off, the next payment is notified; an admin-made order with a
    // notify_url is a JSAPI payment.
    admin
        .put_order(
            "NOTIFY0006",
            &Order {
                notify_url: Some(url.clone()),
                ..Order::default()
            },
        )
        .unwrap();
    admin.pay("NOTIFY0006").unwrap();
    let t = decrypt(&next(&rx).body, wechatpay_sim::DEFAULT_APIV3_KEY.as_bytes());
    assert_eq!(
        (t["out_trade_no"].as_str(), t["trade_type"].as_str()),
        (Some("NOTIFY0006"), Some("JSAPI"))
    );

    // A duplicate on request, with a new id.
    admin.notify_again("NOTIFY0006").unwrap();
    let again = next(&rx);
    assert_eq!(
        decrypt(&again.body, wechatpay_sim::DEFAULT_APIV3_KEY.as_bytes()),
        t
    );
    assert!(matches!(
        admin.notify_again("NOSUCHORD9"),
        Err(wechatpay_sim::AdminError::Status { status: 404, .. })
    ));
    admin.set_state("NOTIFY0009", "NOTPAY").unwrap();
    assert!(matches!(
        admin.notify_again("NOTIFY0009"),
        Err(wechatpay_sim::AdminError::Status { status: 409, .. })
    ));
}

#[test]
fn a_configured_apiv3_key_encrypts() {
    let key = b"0123456789abcdefABCDEF0123456789";
    let sim = Simulator::start(
        "127.0.0.1:0",
        &keys().sim,
        SimConfig {
            apiv3_key: wechatpay_sim::ApiV3Key::new(key).unwrap(),
            ..SimConfig::default()
        },
    )
    .unwrap();
    assert!(!format!("{:?}", sim.config()).contains("0123456789abcdef"));
    let files = sim
        .write_client_files(&crate::support::scratch("apiv3-configured"))
        .unwrap();
    assert_eq!(std::fs::read(&files.apiv3_key_file).unwrap(), key);
    let (url, rx) = receiver(&[200]);
    prepay(&sim, "NOTIFY0007", &url);
    sim.admin().pay("NOTIFY0007").unwrap();
    let t = decrypt(&next(&rx).body, key);
    assert_eq!(t["trade_state"], "SUCCESS");
}

#[test]
fn reset_forgets_pending_retries() {
    let sim = start_with(&[Duration::from_millis(300)]);
    let (url, rx) = receiver(&[500]);
    prepay(&sim, "NOTIFY0008", &url);
    sim.admin().pay("NOTIFY0008").unwrap();
    next(&rx);
    sim.admin().reset().unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(700)).is_err());
    assert_eq!(
        sim.admin().stats().unwrap(),
        wechatpay_sim::Stats::default()
    );
}

#[test]
fn crafted_notifications_verify_and_decrypt() {
    let transaction = json!({ "out_trade_no": "CRAFTED001", "trade_state": "SUCCESS" });
    let key = wechatpay_sim::DEFAULT_APIV3_KEY.as_bytes();
    let n = wechatpay_sim::signed_notification(
        &keys().sim,
        wechatpay_sim::DEFAULT_PUBLIC_KEY_ID,
        key,
        &transaction,
        1_700_000_000,
    );
    let header = |name: &str| {
        n.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap()
    };
    assert_eq!(header("Wechatpay-Timestamp"), "1700000000");
    assert_eq!(
        header("Wechatpay-Serial"),
        wechatpay_sim::DEFAULT_PUBLIC_KEY_ID
    );
    assert!(wechatpay_signed(
        header("Wechatpay-Timestamp"),
        header("Wechatpay-Nonce"),
        &n.body,
        header("Wechatpay-Signature"),
    ));
    assert_eq!(decrypt(&n.body, key), transaction);
    let v: Value = serde_json::from_slice(&n.body).unwrap();
    assert_eq!(v["create_time"], "2023-11-15T06:13:20+08:00");
}
