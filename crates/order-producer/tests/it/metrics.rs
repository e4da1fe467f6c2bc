//! The relay's and the front door's metrics listener (`METRICS_LISTEN`):
//! what they count, their probes, and `status --json`.

use std::process::Stdio;
use std::time::Duration;

use domain::testing::wait_for;
use order_producer::testing::{free_port, http_get, sample, FrontDoor, TOKEN};

use crate::{Env, KillOnDrop};

fn get(addr: &str, path: &str) -> (u16, String) {
    http_get(addr, path, None)
}

fn spawn_relay(env: &Env, amqp_url: Option<&str>, addr: &str) -> KillOnDrop {
    let mut c = env.command(&["relay", "--relay-poll-interval", "50ms"]);
    c.env("METRICS_LISTEN", addr)
        .env("METRICS_GAUGE_INTERVAL", "100ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(url) = amqp_url {
        c.env("AMQP_URL", url);
    }
    KillOnDrop(c.spawn().unwrap())
}

#[test]
fn the_relay_counts_what_it_publishes_and_reads_the_gauges() {
    let env = crate::env();
    env.ok(&["declare"]);
    let orders = env.orders(7, Duration::from_mins(30));
    let addr = format!("127.0.0.1:{}", free_port());
    let _relay = spawn_relay(&env, None, &addr);
    let text = wait_for(Duration::from_secs(20), || {
        let (status, text) = get(&addr, "/metrics");
        (status == 200
            && sample(&text, "order_timeout_relay_published_total") == 7
            && sample(
                &text,
                r#"order_timeout_queue_messages{queue="queue.ordercreate"}"#,
            ) == 7)
            .then_some(text)
    })
    .unwrap_or_else(|| panic!("never saw 7 published:\n{}", get(&addr, "/metrics").1));
    assert_eq!(sample(&text, "order_timeout_relay_refused_total"), 0);
    assert_eq!(sample(&text, "order_timeout_broker_connected"), 1);
    assert_eq!(sample(&text, "order_timeout_collector"), 1);
    assert_eq!(sample(&text, "order_timeout_outbox_backlog"), 0);
    assert_eq!(
        sample(&text, r#"order_timeout_orders{status="pending_payment"}"#),
        7
    );
    assert!(
        text.contains(r#"order_timeout_build_info{version=""#),
        "{text}"
    );
    assert!(text.contains(r#"process="relay"}"#), "{text}");
    assert_eq!(
        get(&addr, "/readyz"),
        (200, r#"{"broker":"ok","database":"ok"}"#.to_owned())
    );
    assert_eq!(orders.len(), 7);
}

#[test]
fn a_relay_without_its_broker_is_alive_but_not_ready() {
    let env = crate::env();
    let addr = format!("127.0.0.1:{}", free_port());
    // A vhost that does not exist: the relay keeps retrying.
    let _relay = spawn_relay(
        &env,
        Some("amqp://guest:guest@127.0.0.1:5672/ot-no-such-vhost"),
        &addr,
    );
    let ready = wait_for(Duration::from_secs(20), || {
        let (status, body) = get(&addr, "/readyz");
        (status == 503).then_some(body)
    });
    assert_eq!(
        ready.as_deref(),
        Some(r#"{"broker":"unreachable","database":"ok"}"#)
    );
    assert_eq!(get(&addr, "/healthz").0, 200);
    let (_, text) = get(&addr, "/metrics");
    assert_eq!(sample(&text, "order_timeout_broker_connected"), 0, "{text}");
    assert_eq!(sample(&text, "order_timeout_relay_published_total"), 0);
}

#[test]
fn two_processes_never_both_report_the_gauges() {
    let env = crate::env();
    env.ok(&["declare"]);
    let a = format!("127.0.0.1:{}", free_port());
    let b = format!("127.0.0.1:{}", free_port());
    let mut first = spawn_relay(&env, None, &a);
    let mut second = spawn_relay(&env, None, &b);
    let collectors = |addr: &str| sample(&get(addr, "/metrics").1, "order_timeout_collector");
    let one = wait_for(Duration::from_secs(20), || {
        (collectors(&a) + collectors(&b) == 1).then_some(())
    });
    assert!(one.is_some(), "not exactly one collector");
    for _ in 0..5 {
        assert!(collectors(&a) + collectors(&b) <= 1);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The other exports none of the gauges it does not read (not zeros
    // beside the holder's real values).
    let other = if collectors(&a) == 1 { &b } else { &a };
    let text = get(other, "/metrics").1;
    for name in [
        "order_timeout_outbox_backlog",
        "order_timeout_overdue_orders",
        "order_timeout_payments_after_close",
        "order_timeout_snapshot_timestamp_seconds",
        "order_timeout_orders{",
    ] {
        assert!(
            !text.lines().any(|l| l.starts_with(name)),
            "{name} exported by the process without the collector lock:\n{text}"
        );
    }
    // The holder goes away: the other takes over.
    let holder_was_first = collectors(&a) == 1;
    if holder_was_first {
        let _ = first.kill();
        let _ = first.wait();
    } else {
        let _ = second.kill();
        let _ = second.wait();
    }
    let survivor = if holder_was_first { &b } else { &a };
    let took_over = wait_for(Duration::from_secs(20), || {
        (collectors(survivor) == 1).then_some(())
    });
    assert!(took_over.is_some(), "the survivor never took over");
    let text = get(survivor, "/metrics").1;
    assert!(
        text.contains(r#"order_timeout_orders{status="paid"} 0"#),
        "{text}"
    );
}

#[test]
fn status_json_has_the_same_facts() {
    let env = crate::env();
    let missing = env.run(&["status", "--json"]);
    assert_eq!(missing.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(report["queues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["exists"] == false));

    env.ok(&["declare"]);
    let _ = env.orders(3, Duration::from_mins(30));
    env.ok(&["relay", "--once"]);
    let out = env.ok(&["status", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], true, "{out}");
    assert_eq!(report["orders"]["pending_payment"], 3, "{out}");
    assert_eq!(report["orders"]["closed"], 0, "{out}");
    assert_eq!(report["outbox"]["backlog"], 0, "{out}");
    assert_eq!(report["outbox"]["oldest"], serde_json::Value::Null, "{out}");
    assert_eq!(report["refunds"]["succeeded"], 0, "{out}");
    assert_eq!(report["needs_human"]["orders"], 0, "{out}");
    assert_eq!(report["broker_error"], serde_json::Value::Null, "{out}");
    let ordercreate = report["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "queue.ordercreate")
        .unwrap();
    assert_eq!(ordercreate["messages"], 3, "{out}");
    let tea = report["stock"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sku"] == "TEA")
        .unwrap();
    assert_eq!(tea["conserved"], true, "{out}");
    assert_eq!(tea["held"], 3, "{out}");
    assert_eq!(report["overdue"]["orders"], 0, "{out}");

    // An order whose deadline passed and nobody settled: overdue.
    let late = env.orders(1, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(1500));
    let out = env.ok(&["status", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["overdue"]["orders"], 1, "{out}");
    assert!(
        report["overdue"]["oldest_seconds"].as_f64().unwrap() >= 0.4,
        "{out}"
    );
    let text = env.ok(&["status"]);
    assert!(
        text.contains("overdue (pending past the deadline, anomalies aside): 1, the oldest due"),
        "{text}"
    );
    assert_eq!(late.len(), 1);
}

#[test]
fn the_front_door_counts_requests_by_route_and_status() {
    let door = FrontDoor::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let no = door.order_tea(2);
    let _ = door.prepay(&no);
    assert_eq!(
        door.call("GET", &format!("/v1/orders/{no}"), None).status,
        200
    );
    assert_eq!(
        door.send("GET", &format!("/v1/orders/{no}"), &[], None)
            .status,
        401
    );
    assert_eq!(door.call("GET", "/nope", None).status, 404);
    assert_eq!(
        door.call("POST", "/v1/orders", Some(&"x".repeat(8192)))
            .status,
        413
    );
    let text = door.scrape();
    for (series, n) in [
        (
            r#"order_timeout_http_requests_total{route="/v1/orders",status="201"}"#,
            1,
        ),
        (
            r#"order_timeout_http_requests_total{route="/v1/orders",status="413"}"#,
            1,
        ),
        (
            r#"order_timeout_http_requests_total{route="/v1/orders/{order_no}",status="200"}"#,
            1,
        ),
        (
            r#"order_timeout_http_requests_total{route="/v1/orders/{order_no}",status="401"}"#,
            1,
        ),
        (
            r#"order_timeout_http_requests_total{route="/v1/orders/{order_no}/wechatpay/native",status="200"}"#,
            1,
        ),
        (
            r#"order_timeout_http_requests_total{route="unmatched",status="404"}"#,
            1,
        ),
        (
            r#"order_timeout_http_request_duration_seconds_count{route="/v1/orders"}"#,
            2,
        ),
        (
            r#"order_timeout_wechatpay_requests_total{call="prepay",result="2xx"}"#,
            1,
        ),
    ] {
        assert_eq!(sample(&text, series), n, "{series} in\n{text}");
    }
    assert!(text.contains(r#"process="serve"}"#), "{text}");
    assert!(!text.contains(TOKEN));
}
