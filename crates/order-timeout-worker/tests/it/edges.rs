//! The money edges as an operator meets them through the binary: the
//! transport rules, a topology that differs, and `settle` on an order that
//! needs a human.

use std::process::Output;

use domain::OrderStatus;

use crate::binary::{stderr, worker};
use crate::support::RecordingProxy;
use crate::Stack;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn plain_http_to_another_host_is_refused_naming_the_setting() {
    let stack = Stack::new();
    for url in [
        "http://api.mch.weixin.qq.com",
        "http://10.20.30.40:8099",
        "http://[fe80::1]:8099",
    ] {
        let out = worker(&stack, &[])
            .env("WECHATPAY_BASE_URL", url)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("WECHATPAY_BASE_URL") && err.contains("plain http"),
            "{url}: {err}"
        );
    }
}

#[test]
fn proxy_variables_of_the_environment_are_not_followed_but_wechatpay_proxy_is() {
    let stack = Stack::new();
    let proxy = RecordingProxy::start();
    let no = stack.order();
    stack.sim_put(&no, "NOTPAY");
    std::thread::sleep(crate::WINDOW);
    let proxy_url = format!("http://{}", proxy.addr);
    // Every proxy variable points at the proxy: none may be used.
    let out = worker(&stack, &["settle", no.as_str()])
        .env("HTTPS_PROXY", &proxy_url)
        .env("https_proxy", &proxy_url)
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env("all_proxy", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stack.status(&no), OrderStatus::Closed);
    assert!(proxy.seen().is_empty(), "went through {:?}", proxy.seen());

    // Asked for explicitly, the proxy is used (with its credentials), and
    // its password never printed, even at debug level.
    let second = stack.order();
    stack.sim_put(&second, "NOTPAY");
    std::thread::sleep(crate::WINDOW);
    let with_password = format!("http://ops:s3cret-proxy-pw@{}", proxy.addr);
    let out = worker(&stack, &["settle", second.as_str()])
        .env("WECHATPAY_PROXY", &with_password)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stack.status(&second), OrderStatus::Closed);
    let seen = proxy.seen();
    assert!(
        !seen.is_empty()
            && seen
                .iter()
                .all(|l| l.starts_with("CONNECT 127.0.0.1:") && l.ends_with("(authorized)")),
        "{seen:?}"
    );
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!printed.contains("s3cret-proxy-pw"), "{printed}");
    stack.assert_conserved();
}

#[test]
fn a_topology_with_other_arguments_stops_the_worker_at_start_naming_both_values() {
    let stack = Stack::new(); // declared with a 300 ms delay queue
    let out = worker(&stack, &[])
        .env("DELAY_TTL_MS", "600")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for word in ["queue.ordercreate", "x-message-ttl", "300", "600"] {
        assert!(err.contains(word), "{word:?} missing: {err}");
    }
    // The worker changed nothing on the broker.
    let queues = stack.vhost.list_queues();
    let delay = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "queue.ordercreate")
        .unwrap();
    let ttl = delay["arguments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a[0] == "x-message-ttl")
        .map(|a| a[2].clone());
    assert_eq!(ttl, Some(serde_json::json!(300)), "{queues}");
}

#[test]
fn settle_prints_why_an_order_needs_a_human_and_exits_1() {
    let stack = Stack::new();
    let no = stack.order();
    let _ = stack
        .sim
        .admin()
        .put_order(
            no.as_str(),
            &wechatpay_sim::Order {
                trade_state: "SUCCESS".into(),
                amount_total: 1,
                transaction_id: Some("4200000000000000000000000701".into()),
                success_time: Some("2026-11-26T18:30:00+08:00".into()),
                ..Default::default()
            },
        )
        .unwrap();
    std::thread::sleep(crate::WINDOW);
    let out = worker(&stack, &["settle", no.as_str()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("NEEDS A HUMAN (amount_mismatch)")
            && text.contains("1 fen")
            && text.contains("100 fen"),
        "{text}"
    );
    assert_eq!(stack.status(&no), OrderStatus::PendingPayment);
    assert_eq!(stack.stock("TEA"), 998, "stock held");
    stack.assert_conserved();
}

#[test]
fn settle_says_a_payment_after_close_is_news_once_then_already_recorded() {
    let stack = Stack::new();
    let no = stack.order();
    std::thread::sleep(crate::WINDOW);
    // No payment order at WeChat Pay: closed here.
    let out = worker(&stack, &["settle", no.as_str()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stack.status(&no), OrderStatus::Closed);
    // Paid later from a stale page.
    let _ = stack
        .sim
        .admin()
        .put_order(
            no.as_str(),
            &wechatpay_sim::Order {
                trade_state: "SUCCESS".into(),
                amount_total: crate::support::ORDER_TOTAL_FEN,
                transaction_id: Some("4200000000000000000000000702".into()),
                success_time: Some("2026-11-26T18:30:00+08:00".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let first = worker(&stack, &["settle", no.as_str()]).output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("PAID AFTER CLOSE: payment recorded for refund"),
        "{}",
        stdout(&first)
    );
    assert!(
        stderr(&first).contains("PAID AFTER CLOSE"),
        "{}",
        stderr(&first)
    );
    // Again: nothing new, and it says so, with the refund's state.
    let again = worker(&stack, &["settle", no.as_str()]).output().unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let text = stdout(&again);
    assert!(
        !text.contains("PAID AFTER CLOSE") && text.contains("already recorded"),
        "{text}"
    );
    assert!(
        text.contains(&format!("refund {no}-R")) && text.contains(" is requested"),
        "{text}"
    );
    let log = stderr(&again);
    assert!(
        !log.contains("PAID AFTER CLOSE") && !log.contains("ERROR"),
        "a repeat is not news: {log}"
    );
    assert_eq!(
        domain::payments_of(&mut stack.db.conn(), &no)
            .unwrap()
            .len(),
        1
    );
    stack.assert_conserved();
}
