//! The OpenAPI document (`docs/openapi.json`) against the code: the served
//! one equals the checked-in one, it validates as OpenAPI 3.1, and the
//! statuses it lists are exactly the statuses the front door produces.
//!
//! Regenerate the checked-in file after changing the API:
//! `UPDATE_OPENAPI=1 cargo test -p order-producer --test it openapi::`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use order_producer::testing::{
    paid_transaction, unix_now, Answer, FrontDoor, MAX_BODY, TOKEN, UNIT_FEN,
};
use serde_json::Value;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

/// (path, method, status) of every response the document lists (`default`
/// is no status: it is left out).
fn documented(doc: &Value) -> BTreeSet<(String, String, u16)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            for status in op["responses"].as_object().expect("responses").keys() {
                if let Ok(code) = status.parse() {
                    out.insert((path.clone(), method.clone(), code));
                }
            }
        }
    }
    out
}

/// axum's `{order_no}` templates are OpenAPI's too.
fn observed_in(door: &FrontDoor) -> BTreeSet<(String, String, u16)> {
    door.observed()
}

#[test]
fn the_served_document_is_the_checked_in_one() {
    let door = FrontDoor::start();
    let a = door.send("GET", "/openapi.json", &[], None);
    assert_eq!(a.status, 200, "no token needed: {}", a.body);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.body, order_producer::serve::openapi::document());
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        let file = checked_in();
        std::fs::create_dir_all(file.parent().unwrap()).expect("create docs/");
        std::fs::write(file, &a.body).expect("write docs/openapi.json");
    }
    let file = std::fs::read_to_string(checked_in()).unwrap_or_default();
    assert!(
        file == a.body,
        "docs/openapi.json differs from what serve answers; regenerate it with \
         `UPDATE_OPENAPI=1 cargo test -p order-producer --test it openapi::`"
    );
    let doc = a.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// A real validator, not our reading of the specification:
/// `openapi-spec-validator` (a Python package; `.ci/run` installs it).
#[test]
fn the_document_validates_as_openapi_3_1() {
    let dir = order_producer::testing::TempDir::new().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, order_producer::serve::openapi::document()).unwrap();
    let out = std::process::Command::new("openapi-spec-validator")
        .arg(&file)
        .output()
        .expect(
            "openapi-spec-validator is not installed: `pip install openapi-spec-validator` \
             (.ci/run does)",
        );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends a request whose body never arrives: 408 after the request timeout.
fn slow_body(door: &FrontDoor) -> String {
    let addr = door.base.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"items\":"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// `a`, once its status is `status`.
fn expect(a: Answer, status: u16, what: &str) -> Answer {
    assert_eq!(a.status, status, "{what}: {}", a.body);
    a
}

const MISSING: &str = "OT20260101000000000000";

/// `POST /v1/orders` with a form's content type.
fn unsupported_media_type(door: &FrontDoor) {
    let auth = format!("Bearer {TOKEN}");
    let form = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let body = br#"{"items":[{"sku":"TEA","quantity":1}]}"#;
    expect(
        door.send("POST", "/v1/orders", &form, Some(body)),
        415,
        "a form",
    );
}

/// Every status of the shop's routes.
fn shop_statuses(door: &FrontDoor) {
    let auth = format!("Bearer {TOKEN}");
    let tea = r#"{"items":[{"sku":"TEA","quantity":1}]}"#;

    // POST /v1/orders
    let created = expect(door.call("POST", "/v1/orders", Some(tea)), 201, "create");
    let no = created.json()["order_no"].as_str().unwrap().to_owned();
    expect(door.call("POST", "/v1/orders", Some("{")), 400, "bad JSON");
    expect(
        door.send("POST", "/v1/orders", &[], Some(tea.as_bytes())),
        401,
        "no token",
    );
    let unknown = r#"{"items":[{"sku":"NOPE","quantity":1}]}"#;
    expect(
        door.call("POST", "/v1/orders", Some(unknown)),
        404,
        "unknown SKU",
    );
    let many = r#"{"items":[{"sku":"TEA","quantity":5000}]}"#;
    expect(door.call("POST", "/v1/orders", Some(many)), 409, "short");
    let pad = "x".repeat(MAX_BODY);
    let big = format!(r#"{{"items":[],"pad":"{pad}"}}"#);
    expect(
        door.call("POST", "/v1/orders", Some(&big)),
        413,
        "too large",
    );
    let keyed = |body: &str| {
        door.send(
            "POST",
            "/v1/orders",
            &[("Authorization", &auth), ("Idempotency-Key", "k-1")],
            Some(body.as_bytes()),
        )
    };
    expect(keyed(tea), 201, "keyed");
    expect(keyed(many), 422, "key reused");
    assert!(slow_body(door).starts_with("HTTP/1.1 408"));

    // GET /v1/orders/{order_no}
    expect(
        door.call("GET", &format!("/v1/orders/{no}"), None),
        200,
        "show",
    );
    expect(
        door.call("GET", "/v1/orders/bad!no", None),
        400,
        "bad number",
    );
    expect(
        door.send("GET", &format!("/v1/orders/{no}"), &[], None),
        401,
        "no token",
    );
    expect(
        door.call("GET", &format!("/v1/orders/{MISSING}"), None),
        404,
        "none",
    );

    // POST /v1/orders/{order_no}/wechatpay/native
    let native = |no: &str| format!("/v1/orders/{no}/wechatpay/native");
    expect(door.call("POST", &native(&no), None), 200, "prepay");
    expect(
        door.call("POST", &native("bad!no"), None),
        400,
        "bad number",
    );
    expect(door.send("POST", &native(&no), &[], None), 401, "no token");
    expect(door.call("POST", &native(MISSING), None), 404, "none");
    let closed = door.order_tea(1);
    let _ = domain::close_unpaid(&mut door.db.conn(), &closed, "test", None).unwrap();
    expect(
        door.call("POST", &native(closed.as_str()), None),
        409,
        "closed",
    );
    let other = door.order_tea(1);
    let fault = |status| wechatpay_sim::Faults {
        status: Some(status),
        ..wechatpay_sim::Faults::default()
    };
    door.sim.admin().set_global_faults(&fault(403)).unwrap();
    expect(
        door.call("POST", &native(other.as_str()), None),
        502,
        "refused",
    );
    door.sim.admin().set_global_faults(&fault(500)).unwrap();
    expect(
        door.call("POST", &native(other.as_str()), None),
        503,
        "down",
    );
    door.sim.admin().clear_global_faults().unwrap();
}

/// Every status of the notification routes.
fn notification_statuses(door: &FrontDoor) {
    // POST /wechatpay/notify/transaction
    let paid_no = door.order_tea(2);
    let tx = paid_transaction(
        paid_no.as_str(),
        2 * UNIT_FEN,
        "4200000000202611260000000201",
    );
    let good = door.notification(&tx, unix_now());
    let mut tampered = good.clone();
    tampered.body.push(b' ');
    expect(door.deliver(&tampered), 401, "tampered");
    let mut oversized = good.clone();
    oversized.body = vec![b' '; MAX_BODY + 1];
    expect(door.deliver(&oversized), 413, "too large");
    let mut foreign = tx.clone();
    foreign["mchid"] = "1999999999".into();
    expect(
        door.deliver(&door.notification(&foreign, unix_now())),
        400,
        "not ours",
    );
    let stranger = paid_transaction(MISSING, 100, "4200000000202611260000000202");
    expect(
        door.deliver(&door.notification(&stranger, unix_now())),
        404,
        "no order",
    );
    expect(door.deliver(&good), 204, "paid");

    // POST /wechatpay/notify/refund: a payment after close makes a refund.
    let late = door.order_tea(1);
    let _ = domain::close_unpaid(&mut door.db.conn(), &late, "test", None).unwrap();
    let tx = paid_transaction(late.as_str(), UNIT_FEN, "4200000000202611260000000203");
    expect(
        door.deliver(&door.notification(&tx, unix_now())),
        204,
        "after close",
    );
    let ours = domain::refunds_of(&mut door.db.conn(), &late)
        .unwrap()
        .remove(0);
    let notice = |out_refund_no: &str, mchid: &str| {
        wechatpay_sim::signed_refund_notification(
            wechatpay_sim::SimKeys::shared(),
            &door.sim.config().signing_serial,
            door.sim.config().apiv3_key.as_bytes(),
            &serde_json::json!({
                "mchid": mchid,
                "out_trade_no": late.as_str(),
                "transaction_id": "4200000000202611260000000203",
                "out_refund_no": out_refund_no,
                "refund_id": "50300000000000000000000000009",
                "refund_status": "SUCCESS",
                "success_time": "2026-11-26T18:40:00+08:00",
                "amount": {"total": UNIT_FEN, "refund": UNIT_FEN, "payer_total": UNIT_FEN, "payer_refund": UNIT_FEN},
            }),
            unix_now(),
        )
    };
    let refund = |n: &wechatpay_sim::SignedNotification| {
        door.deliver_to(order_producer::serve::REFUND_NOTIFY_PATH, n)
    };
    let mchid = wechatpay_sim::DEFAULT_MCHID;
    let mut tampered = notice(&ours.out_refund_no, mchid);
    tampered.body.push(b' ');
    expect(refund(&tampered), 401, "tampered refund");
    expect(
        refund(&notice(&ours.out_refund_no, "1999999999")),
        400,
        "not ours",
    );
    expect(
        refund(&notice("OT20260101000000000000-R1", mchid)),
        404,
        "no refund",
    );
    expect(refund(&notice(&ours.out_refund_no, mchid)), 204, "refunded");
}

/// Every (path, method, status) the document lists is produced here, and
/// everything produced here is listed: a status added to the code without
/// the document, or documented but never produced, fails.
#[test]
fn every_documented_status_is_produced_and_every_produced_one_documented() {
    let door = FrontDoor::start();
    shop_statuses(&door);
    unsupported_media_type(&door);
    notification_statuses(&door);
    // Probes and this document.
    expect(door.send("GET", "/healthz", &[], None), 200, "healthz");
    expect(door.send("GET", "/readyz", &[], None), 200, "readyz");
    expect(door.send("GET", "/openapi.json", &[], None), 200, "openapi");
    let mut produced = observed_in(&door);
    let port = order_producer::testing::free_port();
    let gone = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let unready = FrontDoor::start_with(&["--amqp-url", &gone]);
    expect(unready.send("GET", "/readyz", &[], None), 503, "readyz");
    produced.extend(observed_in(&unready));

    let doc: Value = serde_json::from_str(&order_producer::serve::openapi::document()).unwrap();
    let listed = documented(&doc);
    let never: Vec<_> = listed.difference(&produced).collect();
    let undocumented: Vec<_> = produced.difference(&listed).collect();
    assert!(
        never.is_empty() && undocumented.is_empty(),
        "documented but never produced: {never:?}\nproduced but not documented: {undocumented:?}"
    );
}
