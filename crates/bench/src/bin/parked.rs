//! `parked --replay` throughput benchmark (not a test; run by
//! `scripts/bench.sh parked`).
//!
//! For each run: a fresh vhost with the topology, N valid timeout messages
//! parked straight into `queue.ordertimeout.parked` with the worker's park
//! headers, then the release `order-producer parked --replay --limit N`
//! (the real code path, process start included) is timed. Afterwards every
//! message must be in `queue.ordertimeout` exactly once and the parking
//! queue empty. Prints per-run figures, the median, and this machine's
//! RSA-2048 signature rate before and after.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use broker::testing::TestVhost;
use broker::topology::{PARKED_QUEUE, TIMEOUT_QUEUE};
use broker::{
    AmqpProperties, AmqpValue, Confirmation, ConfirmedPublisher, FieldTable, QueueType, Topology,
};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Parks `n` valid messages as the worker would, with confirms.
fn park(vhost: &TestVhost, n: usize) {
    let mut conn = broker::connect(vhost.url()).unwrap();
    Topology::single(Duration::from_mins(30), QueueType::Classic)
        .unwrap()
        .declare(&mut conn, vhost.url())
        .unwrap();
    let mut publisher =
        ConfirmedPublisher::open(&mut conn, vhost.url(), Duration::from_secs(30)).unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    let settle = |p: &mut ConfirmedPublisher, block| {
        for (_, o) in p.settle(block).unwrap() {
            assert_eq!(o, Confirmation::Confirmed, "parking a message");
        }
    };
    for i in 0..n {
        let no = format!("parked{i:010}");
        let body = format!(r#"{{"order_no":"{no}","created_at":"{now}","deadline":"{now}"}}"#);
        let mut h = FieldTable::new();
        h.insert("x-ot-attempt".into(), AmqpValue::LongLongInt(8));
        h.insert(
            "x-ot-reason".into(),
            AmqpValue::LongString("retries_exhausted".into()),
        );
        h.insert(
            "x-ot-detail".into(),
            AmqpValue::LongString("gave up after 8 attempts; last: 503".into()),
        );
        h.insert("x-ot-parked-at".into(), AmqpValue::LongString(now.clone()));
        let props = AmqpProperties::default()
            .with_message_id(no)
            .with_content_type("application/json".into())
            .with_headers(h);
        publisher
            .send("", PARKED_QUEUE, body.as_bytes(), props)
            .unwrap();
        while publisher.unsettled() >= 1000 {
            settle(&mut publisher, true);
        }
    }
    while publisher.unsettled() > 0 {
        settle(&mut publisher, true);
    }
    let _ = publisher.close();
    let _ = conn.close();
}

fn run(bin: &str, n: usize) -> f64 {
    let vhost = TestVhost::new();
    park(&vhost, n);
    assert_eq!(vhost.depth(PARKED_QUEUE) as usize, n);
    if std::env::var_os("BENCH_PARKED_LIST").is_some() {
        let started = Instant::now();
        let status = Command::new(bin)
            .args(["parked", "--limit", &n.to_string()])
            .env("AMQP_URL", vhost.url().expose_secret())
            .stdout(Stdio::null())
            .status()
            .expect("run order-producer");
        assert!(status.success());
        let secs = started.elapsed().as_secs_f64();
        println!("  listing: {:.0} messages/s", n as f64 / secs);
    }
    let started = Instant::now();
    let status = Command::new(bin)
        .args(["parked", "--replay", "--limit", &n.to_string()])
        .env("AMQP_URL", vhost.url().expose_secret())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .status()
        .expect("run order-producer");
    let secs = started.elapsed().as_secs_f64();
    assert!(status.success(), "parked --replay failed: {status}");
    assert_eq!(vhost.depth(PARKED_QUEUE), 0, "the parking queue is empty");
    let got = vhost.drain(TIMEOUT_QUEUE);
    assert_eq!(got.len(), n, "every message arrived, none twice");
    let distinct: HashSet<String> = got
        .iter()
        .map(|(body, _)| {
            broker::TimeoutMessage::decode(body)
                .expect("a timeout message")
                .order_no
                .to_string()
        })
        .collect();
    assert_eq!(distinct.len(), n, "each message exactly once");
    n as f64 / secs
}

fn main() {
    let n = arg("--messages", 20_000);
    let runs = arg("--runs", 3);
    let bin = std::env::var("BENCH_PRODUCER_BIN").expect("BENCH_PRODUCER_BIN");
    let sig_before = wechatpay_sim::signature_rate();
    println!(
        "parked --replay benchmark: {n} parked messages per run, {runs} runs, window {}",
        order_producer::parked::REPLAY_WINDOW
    );
    println!("signature rate before: {sig_before:.0} signatures/s");
    let mut rates = Vec::new();
    for i in 1..=runs {
        let r = run(&bin, n);
        println!(
            "  run {i}: {r:>8.0} messages/s ({:.2} s); all {n} in {TIMEOUT_QUEUE} exactly once, parking queue empty",
            n as f64 / r
        );
        rates.push(r);
    }
    let sig_after = wechatpay_sim::signature_rate();
    println!("signature rate after: {sig_after:.0} signatures/s");
    println!();
    println!("| what | messages | messages/s (median of {runs}) | signatures/s |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| `parked --replay`, parked -> confirmed in {TIMEOUT_QUEUE} and acked | {n} | **{:.0}** | {sig_before:.0} / {sig_after:.0} |",
        median(rates)
    );
}
