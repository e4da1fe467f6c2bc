//! Scale benchmark (not a test; run by `scripts/bench.sh scale`). Prints
//! figures. For classic queues on the local broker and for quorum queues on
//! the three-node cluster of scripts/cluster.sh (on this same machine):
//!
//! 1. relay rate: N orders (one TEA each, outbox rows) published by the
//!    relay (batches of 500, publisher confirms) into a delay queue whose
//!    TTL (1 h) keeps them all pending;
//! 2. broker memory per million pending messages: the RSS of every node
//!    (`rabbitmqctl status`), before and after;
//! 3. expiry: the delay queue's TTL (`--ttl-seconds`, default 300) is
//!    longer than the publishing, so the N messages expire one after the
//!    other at the pace they were published (a flash sale's orders expiring
//!    together); the rate at which they arrive in `queue.ordertimeout` (its
//!    depth polled; no consumer yet), from the first to the last. When it
//!    equals the publish rate the broker kept up, and the figure is a lower
//!    bound (an expiry backlog would show as a lower rate). RabbitMQ fixes
//!    a message's expiry when it is enqueued, so a policy cannot make
//!    queued messages expire at once;
//! 4. the worker's drain rate: the deadlines moved into the past, the
//!    release worker binary (`--worker-concurrency 16`) settles them against the
//!    in-process simulator (none of them exists there: query, then close
//!    here with the stock back and a recheck published) for a fixed time;
//!    orders per second, and how long the whole backlog would take.
//!
//! Each mode uses a fresh database and vhost, removed at the end; the
//! cluster is started if it is not up (and then taken down again).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use broker::{AmqpUrl, NodeOrder, QueueType, Topology};
use domain::testing::TestDb;
use wechatpay_sim::{SimKeys, Simulator};

/// How long dead-lettering may make no progress before it counts as stalled.
const STALL: Duration = Duration::from_mins(2);

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn has_flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn repo_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

fn cluster(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo_script("cluster.sh"))
        .args(args)
        .output()
        .expect("scripts/cluster.sh");
    assert!(
        out.status.success(),
        "cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `rabbitmqctl` against `node` (`None`: the machine's own node).
fn ctl(node: Option<&str>, args: &[&str]) -> String {
    let mut c = Command::new("rabbitmqctl");
    c.arg("-q");
    if let Some(n) = node {
        c.args(["-n", n]);
    }
    let out = c.args(args).output().expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where a mode runs: the nodes (for rabbitmqctl) and the vhost's URLs.
struct Broker {
    nodes: Vec<Option<String>>,
    vhost: String,
    url: AmqpUrl,
    queue_type: QueueType,
    label: &'static str,
}

impl Broker {
    fn classic() -> Self {
        let vhost = format!("ot_scale_{}", std::process::id());
        let _ = ctl(None, &["add_vhost", &vhost]);
        let _ = ctl(
            None,
            &["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"],
        );
        Self {
            nodes: vec![None],
            url: AmqpUrl::new(format!("amqp://guest:guest@127.0.0.1:5672/{vhost}")),
            vhost,
            queue_type: QueueType::Classic,
            label: "classic, one node",
        }
    }

    fn quorum() -> Self {
        let vhost = format!("ot_scale_q_{}", std::process::id());
        let first = "ot-rabbit-1@localhost";
        let _ = ctl(Some(first), &["add_vhost", &vhost]);
        let _ = ctl(
            Some(first),
            &["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"],
        );
        let urls = cluster(&["urls"]).replace("%2f", &vhost);
        Self {
            nodes: (1..=3)
                .map(|n| Some(format!("ot-rabbit-{n}@localhost")))
                .collect(),
            url: AmqpUrl::new(urls).with_order(NodeOrder::Listed),
            vhost,
            queue_type: QueueType::Quorum,
            label: "quorum, three nodes",
        }
    }

    /// RSS of every node, bytes.
    fn memory(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| {
                let out = ctl(n.as_deref(), &["status", "--formatter", "json"]);
                serde_json::from_str::<serde_json::Value>(&out)
                    .ok()
                    .and_then(|v| v["memory"]["total"]["rss"].as_u64())
                    .unwrap_or(0)
            })
            .sum()
    }

    fn depth(&self, queue: &str) -> u64 {
        let mut conn = broker::connect(&self.url).expect("broker");
        let topology = Topology::single(Duration::from_hours(1), self.queue_type).unwrap();
        let depth = topology
            .depths(&mut conn, &self.url)
            .unwrap()
            .into_iter()
            .find(|d| d.name == queue)
            .and_then(|d| d.state)
            .map_or(0, |(ready, _)| u64::from(ready));
        let _ = conn.close();
        depth
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = ctl(self.nodes[0].as_deref(), &["delete_vhost", &self.vhost]);
    }
}

/// What one mode measured.
struct Figures {
    label: &'static str,
    relay_per_s: f64,
    mib_per_million: f64,
    dead_letter_per_s: f64,
    dead_lettered: u64,
    drain_per_s: f64,
}

fn run_mode(broker: &Broker, keys: &SimKeys, n: usize, drain_secs: u64, ttl: Duration) -> Figures {
    let db = TestDb::new();
    let mut conn = db.conn();
    let _ = domain::set_stock(
        &mut conn,
        &domain::SkuCode::parse("TEA").unwrap(),
        domain::StockLevel::new(0).unwrap(),
        Some(domain::Fen::new(100).unwrap()),
    )
    .unwrap();
    // N pending orders with their items and outbox rows, in one statement.
    diesel_exec(
        &mut conn,
        &format!(
            "WITH o AS (
               INSERT INTO orders (order_no, status, total_fen, deadline, created_at, updated_at)
               SELECT 'scale' || lpad(g::text, 10, '0'), 'pending_payment', 100,
                      now() + interval '1 hour', now(), now()
                 FROM generate_series(1, {n}) g
               RETURNING id),
             i AS (INSERT INTO order_items (order_id, sku_id, quantity, unit_price_fen)
                   SELECT o.id, s.id, 1, 100 FROM o, skus s WHERE s.code = 'TEA')
             INSERT INTO outbox (order_id) SELECT id FROM o ORDER BY id"
        ),
    );
    let topology = Topology::single(ttl, broker.queue_type).unwrap();
    let memory_before = broker.memory();

    // 1. The relay.
    let mut relay = order_producer::relay::Relay::new(
        db.url().clone(),
        broker.url.clone(),
        topology.clone(),
        order_producer::relay::Settings {
            batch_size: 500,
            poll_interval: Duration::from_millis(50),
            confirm_timeout: Duration::from_mins(1),
            max_backoff: Duration::from_secs(1),
        },
    );
    let started = Instant::now();
    let stats = relay.drain().expect("relay");
    let relay_secs = started.elapsed().as_secs_f64();
    assert_eq!(stats.published, n as u64, "not all published");

    // 2. Memory with N pending (give the broker a moment to settle).
    let published_at = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let memory_after = broker.memory();
    let pending = broker.depth("queue.ordercreate");
    assert!(
        published_at.elapsed() + Duration::from_secs(1) < ttl.saturating_sub(Duration::from_secs_f64(relay_secs)),
        "the TTL ({ttl:?}) is too short for publishing {n} ({relay_secs:.0} s): raise --ttl-seconds"
    );

    // 3. They expire at the pace they were published. Given up on when
    // nothing more arrives for STALL after the first should have expired.
    let due = Instant::now() + ttl.saturating_sub(published_at.elapsed());
    let mut first_seen = None;
    let mut dead_lettered = 0;
    let mut last_growth = due;
    loop {
        let now_depth = broker.depth("queue.ordertimeout");
        if now_depth > dead_lettered {
            last_growth = Instant::now();
        }
        dead_lettered = now_depth;
        if dead_lettered > 0 && first_seen.is_none() {
            first_seen = Some(Instant::now());
        }
        if dead_lettered >= n as u64 {
            break;
        }
        if Instant::now() > last_growth + STALL {
            println!(
                "{}: dead-lettering stalled: {dead_lettered} of {n} arrived in queue.ordertimeout, none in the last {STALL:?}",
                broker.label
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let dl_secs = first_seen.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());

    // 4. The worker drains for a while.
    let drain_per_s = drain(broker, &db, keys, drain_secs, ttl);

    Figures {
        label: broker.label,
        relay_per_s: n as f64 / relay_secs,
        mib_per_million: (memory_after.saturating_sub(memory_before)) as f64 / 1_048_576.0
            * (1_000_000.0 / pending.max(1) as f64),
        dead_letter_per_s: dead_lettered as f64 / dl_secs,
        dead_lettered,
        drain_per_s,
    }
}

/// Moves every deadline into the past and lets the release worker settle
/// for `secs` (counted from its first settlement): settled per second.
fn drain(broker: &Broker, db: &TestDb, keys: &SimKeys, secs: u64, ttl: Duration) -> f64 {
    let mut conn = db.conn();
    let drain_secs = secs;
    diesel_exec(
        &mut conn,
        "UPDATE orders SET deadline = now() - interval '1 minute', created_at = now() - interval '61 minutes'",
    );
    let dir = tempfile::tempdir().unwrap();
    let files = keys.write_client_files(dir.path()).unwrap();
    let sim = Simulator::start("127.0.0.1:0", keys, wechatpay_sim::SimConfig::default()).unwrap();
    let bin = std::env::var("BENCH_WORKER_BIN")
        .unwrap_or_else(|_| "target/release/order-timeout-worker".into());
    let mut worker = Command::new(bin)
        .args(["--worker-concurrency", "16"])
        .args(["--queue-type", broker.queue_type.as_str()])
        .env("DATABASE_URL", db.url().expose_secret())
        .env("AMQP_URL", broker.url.expose_secret())
        .env("AMQP_NODE_ORDER", "listed")
        .env("DELAY_TTL_MS", ttl.as_millis().to_string())
        .envs(files.worker_env(&sim.base_url()))
        .env("WORKER_SWEEP_INTERVAL", "1h")
        .env("RUST_LOG", "error")
        .env_remove("DELAY_WINDOWS")
        .stdout(Stdio::null())
        .spawn()
        .expect("the release worker (cargo build --release)");
    let closed = |conn: &mut domain::PgConnection| domain::count_by_status(conn).unwrap()[2].1;
    // Counted from the first settlement, so start-up is not in the rate.
    let first = Instant::now();
    while closed(&mut conn) == 0 && first.elapsed() < Duration::from_mins(1) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (c0, t0) = (closed(&mut conn), Instant::now());
    std::thread::sleep(Duration::from_secs(drain_secs));
    let (c1, t1) = (closed(&mut conn), Instant::now());
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    drop(dir);
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

fn diesel_exec(conn: &mut domain::PgConnection, sql: &str) {
    use diesel::RunQueryDsl;
    let _ = diesel::sql_query(sql).execute(conn).expect(sql);
}

fn main() {
    let n = arg("--orders", 1_000_000);
    let drain_secs = arg("--drain-seconds", 60) as u64;
    let ttl = Duration::from_secs(arg("--ttl-seconds", 300) as u64);
    let keys = SimKeys::generate().unwrap();
    let sig_before = wechatpay_sim::signature_rate();
    println!(
        "scale benchmark: {n} orders per mode, on {} cores; this machine's RSA-2048 signatures/s on one thread: {sig_before:.0}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    // Each row is printed as soon as it is measured.
    println!("| queues | relay, published/s | broker RSS per million pending | dead-lettered/s, expiring at the publish pace | worker drain, settled/s | whole backlog drained in |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let row = |f: &Figures| {
        println!(
            "| {} | {:.0} | {:.0} MiB | {:.0} ({} of {n}) | {:.0} | {:.0} min |",
            f.label,
            f.relay_per_s,
            f.mib_per_million,
            f.dead_letter_per_s,
            f.dead_lettered,
            f.drain_per_s,
            n as f64 / f.drain_per_s.max(1.0) / 60.0
        );
    };
    if !has_flag("--only-quorum") {
        row(&run_mode(&Broker::classic(), &keys, n, drain_secs, ttl));
    }
    if !has_flag("--only-classic") {
        let started_here = cluster(&["status"]).contains("not running");
        cluster(&["up"]);
        row(&run_mode(&Broker::quorum(), &keys, n, drain_secs, ttl));
        if started_here {
            cluster(&["down"]);
        }
    }
    let sig_after = wechatpay_sim::signature_rate();
    println!("This machine's RSA-2048 signatures/s on one thread, before / after: {sig_before:.0} / {sig_after:.0}");
}
