//! `LOG_FORMAT=json`: every line a process writes to stderr is one JSON
//! object with `ts`, `level`, `target`, `msg`, and settlement lines name the
//! order; the text format reads as before; an unknown format exits 2.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use domain::testing::KillOnDrop;
use domain::OrderStatus;
use serde_json::Value;

use crate::binary::{stderr, worker};
use crate::Stack;

/// Each line of `text` as a JSON object with the four fields every line has.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n--- all:\n{text}"));
            let ts = v["ts"].as_str().unwrap_or_else(|| panic!("no ts: {line}"));
            chrono::DateTime::parse_from_rfc3339(ts)
                .unwrap_or_else(|e| panic!("ts is not RFC 3339 ({e}): {line}"));
            assert!(
                ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                    .contains(&v["level"].as_str().unwrap_or("")),
                "level: {line}"
            );
            assert!(v["target"].is_string(), "target: {line}");
            assert!(v["msg"].is_string(), "msg: {line}");
            v
        })
        .collect()
}

/// The one line whose message contains `needle`.
fn line_with<'a>(lines: &'a [Value], needle: &str) -> &'a Value {
    let found: Vec<_> = lines
        .iter()
        .filter(|v| v["msg"].as_str().unwrap_or("").contains(needle))
        .collect();
    assert_eq!(found.len(), 1, "lines with {needle:?}: {found:#?}");
    found[0]
}

fn terminate(child: &mut KillOnDrop) {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "no exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn json_logs_are_one_object_a_line_and_settlement_lines_name_the_order() {
    let stack = Stack::new();
    // A password of its own: the AMQP handshake (amiquip, at debug) must
    // stay out of the JSON too.
    let amqp_user = stack.vhost.secret_user();
    let no = stack.order();
    stack.sim_put(&no, "NOTPAY");
    let log_dir = crate::support::TempDir::new().unwrap();
    let log_path = log_dir.path().join("worker.log");
    let mut child = KillOnDrop(
        worker(&stack, &["--worker-concurrency", "2"])
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "trace")
            .env("AMQP_URL", amqp_user.url.expose_secret())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    stack.relay();
    assert_eq!(
        stack.wait_settled(&no, Duration::from_secs(20)),
        OrderStatus::Closed
    );
    // A poison message, parked: its line says so, with the reason.
    stack.vhost.publish_raw(
        "queue.ordertimeout",
        b"not json at all",
        broker::AmqpProperties::default().with_message_id("POISON0000001".into()),
    );
    stack.wait_depth("queue.ordertimeout.parked", 1, Duration::from_secs(10));
    terminate(&mut child);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains(&amqp_user.password),
        "the AMQP password was logged"
    );
    let lines = json_lines(&log);
    assert!(lines.len() > 5, "{log}");
    let settled = line_with(&lines, &format!("order {no}: closed, stock given back"));
    assert_eq!(settled["order_no"], no.as_str(), "{settled}");
    assert_eq!(settled["outcome"], "closed", "{settled}");
    assert_eq!(settled["attempt"], 1, "{settled}");
    assert_eq!(settled["level"], "INFO", "{settled}");
    assert_eq!(settled["target"], "service::settle", "{settled}");
    let parked = line_with(&lines, "PARKED message POISON0000001");
    assert_eq!(parked["level"], "ERROR", "{parked}");
    assert_eq!(parked["order_no"], "POISON0000001", "{parked}");
    assert_eq!(parked["outcome"], "parked", "{parked}");
    assert_eq!(parked["reason"], "poison", "{parked}");
    // As the text says: poison is parked before any settlement attempt.
    assert_eq!(parked["attempt"], 0, "{parked}");
    // At trace, others' debug lines are there; amiquip's are not.
    assert!(lines.iter().any(|v| v["level"] == "TRACE"), "{log}");
    let amiquip_debug = lines.iter().find(|v| {
        v["target"].as_str().unwrap_or("").starts_with("amiquip")
            && matches!(v["level"].as_str(), Some("DEBUG" | "TRACE"))
    });
    assert!(amiquip_debug.is_none(), "{amiquip_debug:?}");

    // The operator's `settle`, and an error it ends with: JSON too.
    let out = worker(&stack, &["settle", no.as_str()])
        .env("LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stderr(&out));
    let rechecked = line_with(
        &lines,
        &format!("order {no}: closed here; rechecked at WeChat Pay"),
    );
    assert_eq!(rechecked["order_no"], no.as_str());
    assert_eq!(rechecked["outcome"], "rechecked");

    let out = worker(&stack, &["settle", "nosuchorder1"])
        .env("LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = json_lines(&stderr(&out));
    let unknown = line_with(&lines, "order nosuchorder1: not settled: no such order");
    assert_eq!(unknown["order_no"], "nosuchorder1");

    let empty = domain::testing::TestDb::empty();
    let out = worker(&stack, &["settle", no.as_str()])
        .env("LOG_FORMAT", "json")
        .env("DATABASE_URL", empty.url().expose_secret())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let lines = json_lines(&stderr(&out));
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["target"], "order-timeout-worker", "{last}");
    assert!(
        last["msg"]
            .as_str()
            .unwrap()
            .contains("order-producer migrate"),
        "{last}"
    );
    stack.assert_conserved();
}

fn settle(stack: &Stack, no: &str, format: Option<&str>) -> Output {
    let mut c = worker(stack, &["settle", no]);
    if let Some(f) = format {
        c.env("LOG_FORMAT", f);
    }
    c.output().unwrap()
}

#[test]
fn the_text_format_is_the_default_and_an_unknown_format_exits_2() {
    let stack = Stack::new();
    let no = stack.order();
    stack.sim_put(&no, "NOTPAY");
    std::thread::sleep(crate::WINDOW + Duration::from_millis(100));

    let out = settle(&stack, "nosuchorder1", Some("xml"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.trim_end(),
        "error: LOG_FORMAT=\"xml\" is not a log format; set LOG_FORMAT to text (the default) or json, or unset it"
    );

    for format in [None, Some("text"), Some("")] {
        let out = settle(&stack, no.as_str(), format);
        assert!(out.status.success(), "{format:?}: {}", stderr(&out));
        let err = stderr(&out);
        let line = err
            .lines()
            .find(|l| l.contains(&format!("order {no}: ")))
            .unwrap_or_else(|| panic!("{format:?}: {err}"));
        // `[2026-12-06T22:19:23Z INFO  service::settle] order ...: ...; attempt 1, 12 ms`
        assert!(line.starts_with('['), "{format:?}: {line}");
        assert!(
            line.contains(" service::settle] order "),
            "{format:?}: {line}"
        );
        assert!(
            !line.contains("order_no") && !line.contains("outcome"),
            "{line}"
        );
    }
    assert_eq!(stack.status(&no), OrderStatus::Closed);
}
