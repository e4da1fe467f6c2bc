//! Relay throughput benchmark (not a test; run by `scripts/bench.sh relay`).
//!
//! For each run: a fresh database and vhost, N outbox rows (inserted in
//! bulk), then the relay drains them: rows created -> published, confirmed
//! by the broker and marked. Also times a bare confirmed publisher on the
//! same messages, for the ratio. Prints per-run figures and medians.

use std::time::{Duration, Instant};

use broker::testing::TestVhost;
use broker::{ConfirmedPublisher, Outgoing, QueueType, TimeoutMessage, Topology};
use domain::testing::TestDb;
use order_producer::relay::{Relay, Settings};

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

fn seed(db: &TestDb, n: usize) {
    domain::testing::bulk_orders(&mut db.conn(), "TEA", n, false);
}

fn relay_run(n: usize, batch: i64) -> f64 {
    let db = TestDb::new();
    let vhost = TestVhost::new();
    seed(&db, n);
    let topology = Topology::single(Duration::from_mins(30), QueueType::Classic).unwrap();
    let settings = Settings {
        batch_size: batch,
        poll_interval: Duration::from_millis(100),
        confirm_timeout: Duration::from_secs(30),
        max_backoff: Duration::from_secs(1),
    };
    let mut relay = Relay::new(db.url().clone(), vhost.url().clone(), topology, settings);
    let started = Instant::now();
    let stats = relay.drain().expect("relay");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(stats.published as usize, n, "every row published");
    assert_eq!(domain::unpublished_count(&mut db.conn()).unwrap(), 0);
    n as f64 / secs
}

fn bare_run(n: usize, batch: usize) -> f64 {
    let vhost = TestVhost::new();
    let mut conn = broker::connect(vhost.url()).unwrap();
    let topology = Topology::single(Duration::from_mins(30), QueueType::Classic).unwrap();
    topology.declare(&mut conn, vhost.url()).unwrap();
    let mut publisher =
        ConfirmedPublisher::open(&mut conn, vhost.url(), Duration::from_secs(30)).unwrap();
    let now = chrono::Utc::now();
    let messages: Vec<TimeoutMessage> = (0..n)
        .map(|i| TimeoutMessage {
            order_no: domain::OrderNo::parse(&format!("bench{i:010}")).unwrap(),
            created_at: now,
            deadline: now + chrono::Duration::minutes(30),
        })
        .collect();
    let started = Instant::now();
    for chunk in messages.chunks(batch) {
        let out: Vec<Outgoing<'_>> = chunk
            .iter()
            .map(|message| Outgoing {
                exchange: "",
                queue: "queue.ordercreate",
                message,
            })
            .collect();
        publisher.publish_all(&out).unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = publisher.close();
    let _ = conn.close();
    n as f64 / secs
}

fn main() {
    let n = arg("--messages", 20_000);
    let runs = arg("--runs", 3);
    let batch = arg("--batch-size", 500);
    println!("relay benchmark: {n} messages per run, batch {batch}, {runs} runs");
    let mut relay = Vec::new();
    let mut bare = Vec::new();
    for run in 1..=runs {
        let r = relay_run(n, batch as i64);
        let b = bare_run(n, batch);
        println!("  run {run}: relay {r:>8.0} msg/s   bare confirmed publisher {b:>8.0} msg/s");
        relay.push(r);
        bare.push(b);
    }
    let (r, b) = (median(relay), median(bare));
    println!(
        "median: relay {r:.0} msg/s, bare publisher {b:.0} msg/s, relay/bare = {:.2}",
        r / b
    );
}
