//! The shop's API through `serve`, against the real PostgreSQL and the
//! simulator: every status code, and nothing written on any refusal.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use domain::OrderStatus;
use order_producer::testing::{FrontDoor, MAX_BODY, TOKEN, UNIT_FEN};
use serde_json::Value;

/// Rows in a table (for "nothing was written").
fn rows(door: &FrontDoor, table: &str) -> i64 {
    let out = std::process::Command::new("psql")
        .args([
            door.db.url().expose_secret(),
            "-tAc",
            &format!("SELECT count(*) FROM {table}"),
        ])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count")
}

fn stock(door: &FrontDoor, sku: &str) -> u32 {
    domain::get_sku(&mut door.db.conn(), &domain::SkuCode::parse(sku).unwrap())
        .unwrap()
        .unwrap()
        .stock
}

/// Orders, outbox rows, keys and TEA stock: what a refusal must not change.
fn footprint(door: &FrontDoor) -> (i64, i64, i64, u32) {
    (
        rows(door, "orders"),
        rows(door, "outbox"),
        rows(door, "idempotency_keys"),
        stock(door, "TEA"),
    )
}

const TEA2: &str = r#"{"items":[{"sku":"TEA","quantity":2}],"payment_window":"15m"}"#;

#[test]
fn an_order_is_created_with_stock_and_outbox_and_can_be_read() {
    let door = FrontDoor::start();
    let a = door.call("POST", "/v1/orders", Some(TEA2));
    assert_eq!(a.status, 201, "{}", a.body);
    let created = a.json();
    assert_eq!(created["status"], "pending_payment");
    assert_eq!(created["total_fen"], 2 * UNIT_FEN);
    let no = created["order_no"].as_str().unwrap().to_owned();
    let deadline =
        chrono::DateTime::parse_from_rfc3339(created["deadline"].as_str().unwrap()).unwrap();
    let window = deadline.signed_duration_since(
        chrono::DateTime::parse_from_rfc3339(created["created_at"].as_str().unwrap()).unwrap(),
    );
    assert_eq!(window.num_seconds(), 15 * 60);
    assert_eq!((rows(&door, "outbox"), stock(&door, "TEA")), (1, 998));

    let a = door.call("GET", &format!("/v1/orders/{no}"), None);
    assert_eq!(a.status, 200, "{}", a.body);
    let order = a.json();
    assert_eq!(order["order_no"], no.as_str());
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(order["deadline"], created["deadline"]);
    assert_eq!(
        order["items"],
        serde_json::json!([{"sku": "TEA", "quantity": 2, "unit_price_fen": UNIT_FEN}])
    );
    assert_eq!(order["payment"], Value::Null);
    assert_eq!(order["events"][0]["kind"], "created");
    assert_eq!(order["events"][0]["by"], serde_json::Value::Null);

    // Without a window: the delay queue's TTL (30 min here).
    let a = door.call(
        "POST",
        "/v1/orders",
        Some(r#"{"items":[{"sku":"MUG","quantity":1}]}"#),
    );
    assert_eq!(a.status, 201, "{}", a.body);
}

#[test]
fn without_the_token_nothing_is_served_and_nothing_written() {
    let door = FrontDoor::start();
    let no = door.order_tea(1);
    let before = footprint(&door);
    let routes = [
        ("POST", "/v1/orders".to_owned(), Some(TEA2.as_bytes())),
        ("GET", format!("/v1/orders/{no}"), None),
        ("POST", format!("/v1/orders/{no}/wechatpay/native"), None),
    ];
    let bad_auth: [&[(&str, &str)]; 4] = [
        &[],
        &[("Authorization", "Bearer wrong-token-0123456789")],
        &[("Authorization", TOKEN)],
        &[("Authorization", &format!("Basic {TOKEN}"))],
    ];
    for (method, path, body) in &routes {
        for headers in bad_auth {
            let a = door.send(method, path, headers, *body);
            assert_eq!(a.status, 401, "{method} {path} {headers:?}: {}", a.body);
            assert_eq!(a.json()["code"], "UNAUTHORIZED");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
            assert!(!a.body.contains(TOKEN));
        }
    }
    assert_eq!(footprint(&door), before);
    assert_eq!(
        door.sim.admin().stats().unwrap().api_requests,
        0,
        "no prepay reached WeChat Pay"
    );
}

#[test]
fn a_payment_window_no_delay_queue_can_serve_is_refused_naming_the_windows_that_can() {
    // One delay queue of 20 s: a 3 s window would come out 17 s late.
    let door = FrontDoor::start_with(&["--delay-windows", "20s"]);
    let before = footprint(&door);
    let a = door.call(
        "POST",
        "/v1/orders",
        Some(r#"{"items":[{"sku":"TEA","quantity":1}],"payment_window":"3s"}"#),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["code"], "INVALID_FIELD", "{}", a.body);
    assert_eq!(a.json()["field"], "payment_window", "{}", a.body);
    let message = a.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("a payment window of 3s cannot be served")
            && message.contains("windows of 20s or longer can be served"),
        "{message}"
    );
    assert_eq!(footprint(&door), before, "nothing written");
    let ok = door.call(
        "POST",
        "/v1/orders",
        Some(r#"{"items":[{"sku":"TEA","quantity":1}],"payment_window":"25s"}"#),
    );
    assert_eq!(ok.status, 201, "{}", ok.body);
}

#[test]
fn a_body_sent_as_a_form_is_refused_and_nothing_is_written() {
    let door = FrontDoor::start();
    let before = footprint(&door);
    let auth = format!("Bearer {TOKEN}");
    let post = |content_type: &str| {
        door.send(
            "POST",
            "/v1/orders",
            &[("Authorization", &auth), ("Content-Type", content_type)],
            Some(TEA2.as_bytes()),
        )
    };
    // curl's default with `-d` and no `-H 'Content-Type: application/json'`.
    for form in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "application/jsonx",
    ] {
        let a = post(form);
        assert_eq!(a.status, 415, "{form}: {}", a.body);
        assert_eq!(a.json()["code"], "UNSUPPORTED_MEDIA_TYPE", "{}", a.body);
        assert!(
            a.json()["message"]
                .as_str()
                .unwrap()
                .contains("Content-Type: application/json"),
            "{}",
            a.body
        );
    }
    assert_eq!(footprint(&door), before, "nothing written");
    let ok = post("Application/JSON; charset=utf-8");
    assert_eq!(ok.status, 201, "{}", ok.body);
}

#[test]
fn bad_input_is_refused_naming_the_field_and_nothing_is_written() {
    let door = FrontDoor::start();
    let before = footprint(&door);
    let cases: &[(&str, u16, &str)] = &[
        ("{", 400, "body"),
        (r#"{"items":[]}"#, 400, "items"),
        (
            r#"{"items":[{"sku":"TEA","quantity":0}]}"#,
            400,
            "items[0].quantity",
        ),
        (
            r#"{"items":[{"sku":"TEA","quantity":-3}]}"#,
            400,
            "items[0].quantity",
        ),
        (
            r#"{"items":[{"sku":"TEA","quantity":1},{"sku":"no such!","quantity":1}]}"#,
            400,
            "items[1].sku",
        ),
        (
            r#"{"items":[{"sku":"TEA","quantity":1}],"payment_window":"forever"}"#,
            400,
            "payment_window",
        ),
        (
            r#"{"items":[{"sku":"TEA","quantity":1}],"payment_window":"400d"}"#,
            400,
            "payment_window",
        ),
        (
            r#"{"items":[{"sku":"TEA","quantity":1}],"discount":5}"#,
            400,
            "discount",
        ),
        (
            r#"{"items":[{"sku":"TEA","quantity":1},{"sku":"NOPE","quantity":1}]}"#,
            404,
            "items",
        ),
        (
            r#"{"items":[{"sku":"MUG","quantity":1},{"sku":"TEA","quantity":1001}]}"#,
            409,
            "items",
        ),
    ];
    for (body, status, field) in cases {
        let a = door.call("POST", "/v1/orders", Some(body));
        assert_eq!(a.status, *status, "{body}: {}", a.body);
        assert_eq!(a.json()["field"], *field, "{body}: {}", a.body);
    }
    let unknown = door.call(
        "POST",
        "/v1/orders",
        Some(r#"{"items":[{"sku":"NOPE","quantity":1}]}"#),
    );
    assert!(unknown.json()["message"].as_str().unwrap().contains("NOPE"));
    let short = door.call(
        "POST",
        "/v1/orders",
        Some(r#"{"items":[{"sku":"TEA","quantity":1001}]}"#),
    );
    assert_eq!(short.json()["code"], "INSUFFICIENT_STOCK");
    assert!(short.json()["message"].as_str().unwrap().contains("TEA"));
    let key = door.send(
        "POST",
        "/v1/orders",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Idempotency-Key", "has space"),
        ],
        Some(TEA2.as_bytes()),
    );
    assert_eq!(
        (key.status, key.json()["field"].as_str()),
        (400, Some("Idempotency-Key"))
    );
    assert_eq!(stock(&door, "MUG"), 1000);
    assert_eq!(footprint(&door), before);
}

/// Defect 2 (issue 21): a SKU priced 0 (created before prices were
/// required) was sold for 0 fen, an order WeChat Pay can never take.
#[test]
fn a_sku_without_a_price_is_refused_naming_it_and_nothing_is_reserved() {
    let door = FrontDoor::start();
    let out = std::process::Command::new("psql")
        .args([
            door.db.url().expose_secret(),
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            "INSERT INTO skus (code, stock, price_fen) VALUES ('FREE', 5, 0)",
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = footprint(&door);
    for body in [
        r#"{"items":[{"sku":"FREE","quantity":1}]}"#,
        r#"{"items":[{"sku":"TEA","quantity":1},{"sku":"FREE","quantity":1}]}"#,
    ] {
        let a = door.call("POST", "/v1/orders", Some(body));
        assert_eq!(a.status, 409, "{body}: {}", a.body);
        let answer = a.json();
        assert_eq!(answer["code"], "SKU_NOT_FOR_SALE", "{}", a.body);
        assert_eq!(answer["field"], "items");
        assert!(
            answer["message"].as_str().unwrap().contains("FREE"),
            "{}",
            a.body
        );
    }
    assert_eq!(footprint(&door), before);
    assert_eq!(stock(&door, "FREE"), 5);
}

#[test]
fn an_oversized_body_is_refused_unread() {
    let door = FrontDoor::start();
    let before = footprint(&door);
    let pad = "x".repeat(MAX_BODY);
    let body = format!(r#"{{"items":[{{"sku":"TEA","quantity":1}}],"pad":"{pad}"}}"#);
    let a = door.call("POST", "/v1/orders", Some(&body));
    assert_eq!(a.status, 413, "{}", a.body);
    // Defect 6 (issue 21): this was `text/plain` "length limit exceeded".
    assert_json_error(&a, "BODY_TOO_LARGE");
    assert_eq!(footprint(&door), before);
}

/// An error answer is JSON with this `code` and a message.
fn assert_json_error(a: &order_producer::testing::Answer, code: &str) {
    assert_eq!(
        a.header("content-type"),
        Some("application/json"),
        "{}",
        a.body
    );
    let body = a.json();
    assert_eq!(body["code"], code, "{}", a.body);
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// Defect 6 (issue 21): axum's own answers were plain text or empty.
#[test]
fn wrong_methods_and_unknown_routes_answer_json_errors() {
    let door = FrontDoor::start();
    for (method, path) in [
        ("GET", "/wechatpay/notify/transaction"),
        ("PUT", "/wechatpay/notify/refund"),
        ("DELETE", "/v1/orders"),
        ("POST", "/healthz"),
    ] {
        let a = door.call(method, path, None);
        assert_eq!(a.status, 405, "{method} {path}: {}", a.body);
        assert_json_error(&a, "METHOD_NOT_ALLOWED");
        assert!(a.header("allow").is_some(), "{method} {path}");
    }
    let a = door.call("GET", "/v2/anything", None);
    assert_eq!(a.status, 404);
    assert_json_error(&a, "NOT_FOUND");
}

#[test]
fn order_numbers_are_checked_and_unknown_orders_are_404() {
    let door = FrontDoor::start();
    let a = door.call("GET", "/v1/orders/bad!no", None);
    assert_eq!(
        (a.status, a.json()["field"].as_str()),
        (400, Some("order_no"))
    );
    for path in [
        "/v1/orders/OT20260101000000000000",
        "/v1/orders/OT20260101000000000000/wechatpay/native",
    ] {
        let method = if path.ends_with("native") {
            "POST"
        } else {
            "GET"
        };
        let a = door.call(method, path, None);
        assert_eq!(a.status, 404, "{path}: {}", a.body);
        assert_eq!(a.json()["code"], "ORDER_NOT_FOUND");
    }
    assert_eq!(door.call("GET", "/v2/anything", None).status, 404);
}

#[test]
fn the_same_idempotency_key_gives_the_same_order_and_another_body_422() {
    let door = FrontDoor::start();
    let auth = format!("Bearer {TOKEN}");
    let with_key = |key: &str, body: &str| {
        door.send(
            "POST",
            "/v1/orders",
            &[("Authorization", &auth), ("Idempotency-Key", key)],
            Some(body.as_bytes()),
        )
    };
    let first = with_key("checkout-42", TEA2);
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = with_key("checkout-42", TEA2);
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["order_no"], first.json()["order_no"]);
    let other = with_key(
        "checkout-42",
        r#"{"items":[{"sku":"TEA","quantity":3}],"payment_window":"15m"}"#,
    );
    assert_eq!(other.status, 422, "{}", other.body);
    assert_eq!(other.json()["code"], "IDEMPOTENCY_KEY_REUSED");
    assert_eq!((rows(&door, "orders"), stock(&door, "TEA")), (1, 998));
}

#[test]
fn sixteen_concurrent_retries_of_one_key_reserve_once() {
    let door = Arc::new(FrontDoor::start());
    let barrier = Arc::new(Barrier::new(16));
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let door = Arc::clone(&door);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                door.send(
                    "POST",
                    "/v1/orders",
                    &[
                        ("Authorization", &format!("Bearer {TOKEN}")),
                        ("Idempotency-Key", "storm"),
                    ],
                    Some(TEA2.as_bytes()),
                )
            })
        })
        .collect();
    let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(answers.iter().all(|a| a.status == 201), "{answers:?}");
    let fresh = answers
        .iter()
        .filter(|a| a.header("idempotent-replayed").is_none())
        .count();
    assert_eq!(fresh, 1);
    let no = answers[0].json()["order_no"].clone();
    assert!(answers.iter().all(|a| a.json()["order_no"] == no));
    assert_eq!(
        (
            rows(&door, "orders"),
            rows(&door, "outbox"),
            stock(&door, "TEA")
        ),
        (1, 1, 998)
    );
}

#[test]
fn a_native_prepay_carries_the_deadline_as_time_expire() {
    let door = FrontDoor::start();
    let a = door.call("POST", "/v1/orders", Some(TEA2));
    let created = a.json();
    let no = domain::OrderNo::parse(created["order_no"].as_str().unwrap()).unwrap();
    let code_url = door.prepay(&no);
    assert!(code_url.starts_with("weixin://"), "{code_url}");
    let at_wechat = door.sim.admin().order(no.as_str()).unwrap().unwrap();
    assert_eq!(at_wechat.trade_state, "NOTPAY");
    assert_eq!(at_wechat.amount_total, 2 * UNIT_FEN);
    assert_eq!(
        at_wechat.notify_url.as_deref(),
        Some(door.notify_url.as_str())
    );
    let expire =
        chrono::DateTime::parse_from_rfc3339(at_wechat.time_expire.as_deref().unwrap()).unwrap();
    assert_eq!(expire.offset().local_minus_utc(), 8 * 3600, "Beijing time");
    let deadline =
        chrono::DateTime::parse_from_rfc3339(created["deadline"].as_str().unwrap()).unwrap();
    assert!((deadline - expire).num_milliseconds() >= 0 && (deadline - expire).num_seconds() < 1);
    // Asking again gives the same code; the audit trail has one prepay.
    assert_eq!(door.prepay(&no), code_url);
    let events = domain::order_events(&mut door.db.conn(), &no).unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "prepay").count(), 1);
}

#[test]
fn no_prepay_for_an_order_that_is_not_pending_or_past_its_deadline() {
    let door = FrontDoor::start();
    let closed = door.order_tea(1);
    let _ = domain::close_unpaid(&mut door.db.conn(), &closed, "test", None).unwrap();
    let a = door.call(
        "POST",
        &format!("/v1/orders/{closed}/wechatpay/native"),
        None,
    );
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (409, Some("ORDER_NOT_PENDING")),
        "{}",
        a.body
    );

    let late = door.call(
        "POST",
        "/v1/orders",
        Some(r#"{"items":[{"sku":"TEA","quantity":1}],"payment_window":"1s"}"#),
    );
    let late = late.json()["order_no"].as_str().unwrap().to_owned();
    let a = door.call("POST", &format!("/v1/orders/{late}/wechatpay/native"), None);
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (409, Some("DEADLINE_PASSED")),
        "{}",
        a.body
    );
    assert_eq!(
        door.sim.admin().stats().unwrap().api_requests,
        0,
        "WeChat Pay never asked"
    );
}

#[test]
fn wechatpay_refusals_and_outages_reach_the_shop_as_409_502_and_503() {
    let door = FrontDoor::start();
    // Paid at WeChat Pay, its notification lost: pending here, 409 ORDER_PAID.
    door.sim.admin().set_drop_notifications(true).unwrap();
    let no = door.order_tea(2);
    let _ = door.prepay(&no);
    door.sim.admin().pay(no.as_str()).unwrap();
    let a = door.call("POST", &format!("/v1/orders/{no}/wechatpay/native"), None);
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (409, Some("ORDER_PAID")),
        "{}",
        a.body
    );

    let other = door.order_tea(2);
    let fault = |status| wechatpay_sim::Faults {
        status: Some(status),
        ..wechatpay_sim::Faults::default()
    };
    door.sim.admin().set_global_faults(&fault(500)).unwrap();
    let a = door.call(
        "POST",
        &format!("/v1/orders/{other}/wechatpay/native"),
        None,
    );
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (503, Some("WECHATPAY_UNAVAILABLE")),
        "{}",
        a.body
    );
    // WeChat Pay refusing our request (a configuration problem): 502.
    door.sim.admin().set_global_faults(&fault(403)).unwrap();
    let a = door.call(
        "POST",
        &format!("/v1/orders/{other}/wechatpay/native"),
        None,
    );
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (502, Some("WECHATPAY_REFUSED")),
        "{}",
        a.body
    );
    door.sim.admin().clear_global_faults().unwrap();
    let a = door.call(
        "POST",
        &format!("/v1/orders/{other}/wechatpay/native"),
        None,
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let order = domain::find_order(&mut door.db.conn(), &other)
        .unwrap()
        .unwrap();
    assert_eq!(order.status, OrderStatus::PendingPayment);
    let events = domain::order_events(&mut door.db.conn(), &other).unwrap();
    assert_eq!(
        events.iter().filter(|e| e.kind == "prepay").count(),
        1,
        "refusals leave no trace"
    );
}

#[test]
fn slow_clients_are_timed_out() {
    let door = FrontDoor::start();
    let addr = door.base.trim_start_matches("http://").to_owned();
    // Headers never finished: the connection is closed after the header timeout.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/orders HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed in {:?}",
        started.elapsed()
    );
    // A body that never arrives: 408 after the request timeout, nothing written.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"items\":"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Defect 6 (issue 21): this was an empty body.
    assert!(
        answer.contains("content-type: application/json")
            && answer.contains(r#""code":"REQUEST_TIMEOUT""#),
        "{answer}"
    );
    assert_eq!(rows(&door, "orders"), 0);
}

#[test]
fn health_and_readiness() {
    let door = FrontDoor::start();
    let a = door.send("GET", "/healthz", &[], None);
    assert_eq!(a.status, 200);
    let a = door.send("GET", "/readyz", &[], None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.json(),
        serde_json::json!({"database": "ok", "broker": "ok"})
    );
}

#[test]
fn readiness_fails_when_the_broker_is_gone() {
    let port = order_producer::testing::free_port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let door = FrontDoor::start_with(&["--amqp-url", &url]);
    let a = door.send("GET", "/readyz", &[], None);
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.json()["broker"], "unreachable");
    assert_eq!(a.json()["database"], "ok");
    assert_eq!(door.send("GET", "/healthz", &[], None).status, 200);
}

#[test]
fn stopping_finishes_the_request_in_hand() {
    let door = Arc::new(FrontDoor::start());
    let no = door.order_tea(1);
    door.sim
        .admin()
        .set_global_faults(&wechatpay_sim::Faults {
            latency_ms: 800,
            ..wechatpay_sim::Faults::default()
        })
        .unwrap();
    let slow = {
        let door = Arc::clone(&door);
        std::thread::spawn(move || {
            door.call("POST", &format!("/v1/orders/{no}/wechatpay/native"), None)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    door.raise_stop();
    let a = slow.join().unwrap();
    assert_eq!(a.status, 200, "the request in hand finished: {}", a.body);
    let mut door = Arc::into_inner(door).expect("the only handle");
    door.stop().expect("stopped cleanly");
    let addr = door.base.trim_start_matches("http://").to_owned();
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}
