//! The worker's `/metrics`, `/healthz` and `/readyz` (`METRICS_LISTEN`), on
//! the binary as an operator runs it: what it counts for a known mix of
//! orders, the gauges its collector reads, and what the listener refuses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use domain::testing::{wait_for, KillOnDrop};
use domain::OrderStatus;

use crate::binary::{stderr, worker};
use order_producer::testing::{http_get, sample, sum_of};

use crate::support::{free_port, Mix, TempDir};
use crate::Stack;

const TOKEN: &str = "metrics-token-0123456789";

/// Every sample of the settlements counter with this outcome, all triggers.
fn outcomes(text: &str, outcome: &str) -> i64 {
    sum_of(
        text,
        "order_timeout_settlements_total",
        &[&format!("outcome=\"{outcome}\"")],
    )
}

/// Settlement attempts other than `not_yet_due` (the rechecks of the
/// orders closed on `ORDER_NOT_EXIST`, an hour away, wait in the longest
/// retry queue and come back early, again and again, as they should).
fn attempts(text: &str) -> i64 {
    sum_of(text, "order_timeout_settlements_total", &[]) - outcomes(text, "not_yet_due")
}

/// Sends raw bytes and returns the status line's code (0 when the
/// connection was closed without an answer).
fn raw_status(addr: &str, request: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_worker_counts_a_known_mix_and_serves_its_probes() {
    let stack = Stack::new();
    let dir = TempDir::new().unwrap();
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = KillOnDrop(
        worker(&stack, &[])
            .env("METRICS_LISTEN", &addr)
            .env("METRICS_TOKEN_FILE", &token_file)
            .env("METRICS_GAUGE_INTERVAL", "200ms")
            .env("WORKER_RECHECK_AFTER", "1h")
            .env("WORKER_CONCURRENCY", "4")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Ready once it consumes: the broker connected, the database answers.
    let ready = wait_for(Duration::from_secs(20), || {
        let (status, body) = http_get(&addr, "/readyz", None);
        (status == 200).then_some(body)
    });
    assert_eq!(
        ready.as_deref(),
        Some(r#"{"broker":"ok","database":"ok"}"#),
        "readyz never answered 200"
    );
    assert_eq!(http_get(&addr, "/healthz", None).0, 200);

    // The mix: 3 never at WeChat Pay, 2 unpaid there, 2 paid, 1 paid 1 fen.
    let Mix {
        untouched,
        unpaid,
        paid,
        tampered,
    } = stack.create_mix();
    stack.relay();

    let scrape = || {
        let (status, body) = http_get(&addr, "/metrics", Some(TOKEN));
        assert_eq!(status, 200, "{body}");
        body
    };
    let settled = wait_for(Duration::from_secs(30), || {
        let text = scrape();
        let total = attempts(&text);
        // The gauges come from the collector, a few hundred ms behind.
        // (the parked copy is published after the anomaly is recorded).
        let gauges_caught_up = sample(&text, r#"order_timeout_orders{status="closed"}"#) == 5
            && sample(
                &text,
                r#"order_timeout_queue_messages{queue="queue.ordertimeout.parked"}"#,
            ) == 1;
        (total >= 8 && gauges_caught_up).then_some(text)
    });
    let text = settled.unwrap_or_else(|| panic!("not all settled:\n{}", scrape()));
    for no in untouched.iter().chain(&unpaid) {
        assert_eq!(stack.status(no), OrderStatus::Closed);
    }
    for no in &paid {
        assert_eq!(stack.status(no), OrderStatus::Paid, "{text}");
    }
    assert_eq!(stack.status(&tampered), OrderStatus::PendingPayment);

    assert_counts(&text);
    assert_gauges(&text);
    lint_with_promtool(&text);
    refusals_change_nothing(&addr, &scrape);
    stop_with_sigterm(&mut child);
}

/// Settlements by outcome, parked, lag and WeChat Pay requests, exactly.
fn assert_counts(text: &str) {
    assert_eq!(outcomes(text, "closed"), 5, "{text}");
    assert_eq!(outcomes(text, "paid"), 2, "{text}");
    assert_eq!(outcomes(text, "anomaly"), 1, "{text}");
    assert_eq!(attempts(text), 8, "{text}");
    assert_eq!(
        outcomes(text, "not_yet_due"),
        sum_of(
            text,
            "order_timeout_settlements_total",
            &[r#"outcome="not_yet_due",trigger="recheck""#]
        ),
        "only the rechecks come early: {text}"
    );
    assert_eq!(
        sample(
            text,
            r#"order_timeout_settlements_total{outcome="closed",trigger="message"}"#
        ),
        5
    );
    assert_eq!(
        sample(
            text,
            r#"order_timeout_parked_total{reason="amount_mismatch"}"#
        ),
        1
    );
    assert_eq!(
        sample(text, r#"order_timeout_parked_total{reason="poison"}"#),
        0
    );
    // The lag is observed for each order closed or paid here.
    assert_eq!(
        sample(text, "order_timeout_settlement_lag_seconds_count"),
        7
    );
    // WeChat Pay: 3 queries answered ORDER_NOT_EXIST; 2 x (query, close,
    // query) for the unpaid; one query each for the 3 paid.
    assert_eq!(
        sample(
            text,
            r#"order_timeout_wechatpay_requests_total{call="query",result="ORDER_NOT_EXIST"}"#
        ),
        3,
        "{text}"
    );
    assert_eq!(
        sample(
            text,
            r#"order_timeout_wechatpay_requests_total{call="query",result="2xx"}"#
        ),
        7,
        "{text}"
    );
    assert_eq!(
        sample(
            text,
            r#"order_timeout_wechatpay_requests_total{call="close",result="2xx"}"#
        ),
        2
    );
    assert_eq!(
        sample(
            text,
            r#"order_timeout_wechatpay_request_duration_seconds_count{call="query"}"#
        ),
        10
    );
}

/// The gauges the collector reads from the database and the broker.
fn assert_gauges(text: &str) {
    assert_eq!(sample(text, "order_timeout_collector"), 1);
    assert_eq!(sample(text, "order_timeout_broker_connected"), 1);
    assert_eq!(sample(text, r#"order_timeout_orders{status="paid"}"#), 2);
    assert_eq!(
        sample(text, r#"order_timeout_orders{status="pending_payment"}"#),
        1
    );
    assert_eq!(
        sample(text, r#"order_timeout_needs_human{kind="order"}"#),
        1
    );
    assert_eq!(sample(text, "order_timeout_outbox_backlog"), 0);
    // Every order settled but the one left for a human: none overdue.
    assert_eq!(sample(text, "order_timeout_overdue_orders"), 0);
    assert_eq!(
        sample(
            text,
            r#"order_timeout_queue_consumers{queue="queue.ordertimeout"}"#
        ),
        4
    );
    assert_eq!(
        sample(
            text,
            r#"order_timeout_queue_messages{queue="queue.ordertimeout.parked"}"#
        ),
        1
    );
}

/// `promtool check metrics`: Prometheus' own linter of an exposition
/// (names, suffixes, units, help texts) finds nothing to say.
fn lint_with_promtool(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

/// What the listener refuses (no or a wrong token, another method, an
/// unknown path, an oversized body, garbage), and that refusals change no
/// count.
fn refusals_change_nothing(addr: &str, scrape: &dyn Fn() -> String) {
    let before = attempts(&scrape());
    for token in [None, Some("wrong-token-0123456789"), Some(&TOKEN[1..])] {
        let (status, body) = http_get(addr, "/metrics", token);
        assert_eq!(status, 401, "{token:?}");
        assert!(!body.contains("order_timeout_"), "{body}");
    }
    assert_eq!(http_get(addr, "/nope", Some(TOKEN)).0, 404);
    assert_eq!(
        raw_status(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        ),
        405
    );
    let oversized = format!(
        "GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n{}",
        "x".repeat(4096)
    );
    assert_eq!(raw_status(addr, oversized.as_bytes()), 413);
    assert_eq!(raw_status(addr, b"GARBAGE\r\n\r\n"), 400);
    let after = scrape();
    assert_eq!(attempts(&after), before, "{after}");
}

/// SIGTERM: the listener goes with the worker, exit 0, no token in the log.
fn stop_with_sigterm(child: &mut KillOnDrop) {
    let process = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &process])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        !err.contains(TOKEN),
        "the metrics token leaked into the log"
    );
}

#[test]
fn a_metrics_listener_off_loopback_needs_a_token_and_bad_ones_exit_2() {
    let stack = Stack::new();
    let out = worker(&stack, &[])
        .env("METRICS_LISTEN", format!("0.0.0.0:{}", free_port()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("METRICS_TOKEN_FILE"),
        "{}",
        stderr(&out)
    );

    let dir = TempDir::new().unwrap();
    let short = dir.path().join("short.token");
    std::fs::write(&short, "tiny-secret\n").unwrap();
    let out = worker(&stack, &[])
        .env("METRICS_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("METRICS_TOKEN_FILE", &short)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("METRICS_TOKEN_FILE"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("tiny-secret"), "{}", stderr(&out));

    let out = worker(&stack, &[])
        .env("METRICS_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
