//! Worker benchmark (not a test; run by `scripts/bench.sh worker`). Prints
//! figures as markdown tables, fit to paste into docs/benchmarks.md.
//!
//! 1. PostgreSQL baseline: pgbench doing only the writes of the mix's
//!    settlements, one settlement per transaction (scripts/pgbench/), 2
//!    clients, on a fresh database; PostgreSQL CPU per transaction.
//! 2. Throughput and cost: N orders expiring together (their messages put
//!    straight into queue.ordertimeout, deadlines passed), mix 60% never
//!    created at WeChat Pay, 30% NOTPAY, 10% paid; the release worker binary
//!    settles them; orders/s from its start to the last settlement, and its
//!    peak RSS (`VmHWM`). Scenarios, simulator latency per call / worker
//!    `--worker-concurrency` (lanes): 0 ms/16, 0 ms/64, 50 ms/64. Each prints where
//!    the CPU went over that interval, from /proc: the worker, PostgreSQL
//!    (every `postgres` process and the reaped ones), the local RabbitMQ
//!    broker, the bench process (which runs the simulator) and how busy the
//!    machine was; the worker's crypto (signatures and verifications per
//!    order, from the simulator's counters, times their single-thread cost
//!    measured in the same run through the payment-client crate's own code)
//!    against its CPU; PostgreSQL's CPU per order against pgbench's per
//!    transaction; with a latency, the lane bound (lanes / (calls per order
//!    x latency)) against what was achieved, and what limited it.
//!    Then, once: PostgreSQL round trips and statements per settlement by
//!    outcome, counted on the connection while the worker's `Settler`
//!    settles orders of each kind in this process (`round_trips`).
//! 3. Lag: orders created at a steady rate with a 1 s payment window, the
//!    relay and the worker running; lag = settlement time - deadline,
//!    p50/p95/p99, and the worker's peak RSS.
//! 4. Metrics cost: the throughput run (latency 0) with metrics off and on
//!    (`METRICS_LISTEN`, scraped every second, the collector reading the
//!    gauges), alternated, side by side: orders/s and the worker's CPU per
//!    order (from /proc), medians and ratios.
//! 5. Targets: each target, the figure measured, met or not.
//!
//! Options: `--orders N` (20000), `--scenarios 0/16,0/64,50/64` (latency
//! ms / concurrency), `--pgbench-transactions N` (4000), `--lag-seconds S`
//! (30), `--metrics-orders N` (5000), `--metrics-pairs P` (3).
//! `--only-cost` runs 1, 2 and 5; `--only-metrics` runs 4 alone;
//! `--skip-metrics` leaves 4 out. `BENCH_WORKER_BIN` names the worker binary
//! (`scripts/bench.sh worker` sets it to the fresh release build unless
//! given).
//!
//! Each run uses a fresh database and vhost and the in-process simulator.
//! This machine's RSA-2048 signature rate (one thread) is printed beside
//! every table, measured before and after: it differs several-fold between
//! machines and between hours on a shared one.

mod crypto;
mod pgbench;
mod procfs;
mod round_trips;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::testing::TestVhost;
use broker::{ConfirmedPublisher, Outgoing, QueueType, TimeoutMessage, Topology};
use diesel::RunQueryDsl;
use domain::testing::TestDb;
use wechatpay_sim::{ClientFiles, Faults, SimKeys, Simulator};

use crate::crypto::CryptoCost;
use crate::pgbench::Pgbench;
use crate::procfs::{Sample, Usage};

/// The worker's CPU per settled order over its crypto per order: at most this.
const TARGET_CRYPTO_RATIO: f64 = 1.3;
/// PostgreSQL's CPU per settled order over per pgbench transaction: at most this.
const TARGET_PG_RATIO: f64 = 1.5;
/// Orders/s achieved over the lane bound: at least this.
const TARGET_LANE_FRACTION: f64 = 0.9;
/// Lag p99 below this, ms.
const TARGET_LAG_P99_MS: f64 = 1000.0;
/// The worker's peak RSS in the lag run below this, MiB.
const TARGET_LAG_RSS_MIB: f64 = 64.0;

struct Env {
    db: TestDb,
    vhost: TestVhost,
    sim: Simulator,
    files: ClientFiles,
    topology: Topology,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new(keys: &SimKeys, window: Duration) -> Self {
        let db = TestDb::new();
        let vhost = TestVhost::new();
        let dir = tempfile::tempdir().unwrap();
        let files = keys.write_client_files(dir.path()).unwrap();
        let sim =
            Simulator::start("127.0.0.1:0", keys, wechatpay_sim::SimConfig::default()).unwrap();
        let topology = Topology::single(window, QueueType::Classic).unwrap();
        let mut conn = broker::connect(vhost.url()).unwrap();
        topology.declare(&mut conn, vhost.url()).unwrap();
        let _ = conn.close();
        Self {
            db,
            vhost,
            sim,
            files,
            topology,
            _dir: dir,
        }
    }

    fn worker(&self, concurrency: u16, metrics: Option<&str>) -> Child {
        let bin = std::env::var("BENCH_WORKER_BIN")
            .unwrap_or_else(|_| "target/release/order-timeout-worker".into());
        let mut command = Command::new(bin);
        if let Some(addr) = metrics {
            command.env("METRICS_LISTEN", addr);
        }
        command
            .args(["--worker-concurrency", &concurrency.to_string()])
            .env("DATABASE_URL", self.db.url().expose_secret())
            .env("AMQP_URL", self.vhost.url().expose_secret())
            .env(
                "DELAY_TTL_MS",
                self.topology.delay_queues()[0].ttl.as_millis().to_string(),
            )
            .envs(self.files.worker_env(&self.sim.base_url()))
            .env("WORKER_SWEEP_INTERVAL", "1h")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the worker (build it with cargo build --release)")
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Peak resident set size of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// How the bench watches the orders settle: one connection held for the
/// whole run and one small query every 100 ms, so that its own cost stays
/// out of the figures (a connection per poll cost PostgreSQL a fork and a
/// TLS handshake each time).
struct Poller {
    conn: diesel::PgConnection,
    polls: u32,
    spent: Duration,
}

impl Poller {
    const INTERVAL: Duration = Duration::from_millis(100);

    fn new(db: &TestDb) -> Self {
        Self {
            conn: db.conn(),
            polls: 0,
            spent: Duration::ZERO,
        }
    }

    /// Whether an order without an anomaly is still pending. It asks the
    /// partial index `orders_pending_deadline_idx` for its first live entry:
    /// the entries of settled orders are marked dead by the first scan that
    /// meets them, so a poll costs about the orders settled since the last
    /// one (a count of the pending orders would read them all, every poll).
    /// The bench makes no anomalies, and every run checks at the end that no
    /// order is left pending.
    fn any_pending(&mut self) -> bool {
        let started = Instant::now();
        let n = diesel::sql_query(
            "SELECT count(*) AS n FROM (SELECT 1 FROM orders \
             WHERE status = 'pending_payment' AND anomaly IS NULL LIMIT 1) AS first",
        )
        .get_result::<Count>(&mut self.conn)
        .expect("look for pending orders")
        .n;
        self.polls += 1;
        self.spent += started.elapsed();
        n > 0
    }

    /// Polls until no order is pending; panics with `stuck` after `limit`.
    fn wait_settled(&mut self, limit: Duration, stuck: &str) {
        let started = Instant::now();
        while self.any_pending() {
            assert!(started.elapsed() < limit, "{stuck}");
            std::thread::sleep(Self::INTERVAL);
        }
    }

    /// Mean wall time of one poll, ms (an upper bound of its server time).
    fn mean_ms(&self) -> f64 {
        self.spent.as_secs_f64() * 1000.0 / f64::from(self.polls.max(1))
    }
}

/// What one throughput run measured.
struct Throughput {
    n: usize,
    rate: f64,
    rss_mib: f64,
    closed: i64,
    paid: i64,
    /// Worker CPU per settled order, ms.
    cpu_ms: f64,
    /// CPU by process from the worker's start to the last settlement.
    usage: Usage,
    /// WeChat Pay API requests over the run, from the simulator's counters.
    api_requests: u64,
    queries: u64,
    closes: u64,
    polls: u32,
    poll_ms: f64,
    /// Why the machine was not quiet before the run, if it was not.
    not_quiet: Option<String>,
}

impl Throughput {
    /// `cpu_secs` per settled order, ms.
    fn per_order_ms(&self, cpu_secs: f64) -> f64 {
        cpu_secs * 1000.0 / self.n as f64
    }

    fn per_order(&self, count: u64) -> f64 {
        count as f64 / self.n as f64
    }
}

/// Scrapes `addr`'s /metrics every second until `stop` (as Prometheus would,
/// more often than its default); returns the scrapes that answered 200.
fn scraper(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut ok = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(mut r) = agent.get(format!("http://{addr}/metrics")).call() {
                let _ = r.body_mut().read_to_string();
                ok += 1;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        ok
    })
}

/// `n` pending orders `bench0000000001`.. whose deadline passed a minute
/// ago, one TEA each, the stock they hold reserved; their numbers.
fn overdue_orders(conn: &mut domain::PgConnection, n: usize) -> Vec<String> {
    let tea = domain::SkuCode::parse("TEA").unwrap();
    let _ = domain::set_stock(
        conn,
        &tea,
        domain::StockLevel::new(n as u32).unwrap(),
        Some(domain::Fen::new(100).unwrap()),
    )
    .unwrap();
    domain::testing::bulk_orders(conn, "TEA", n, true);
    (1..=n).map(|g| format!("bench{g:010}")).collect()
}

/// `n` orders whose deadline passed a minute ago (one TEA each, stock
/// reserved), in the bench mix at the simulator, their messages all in the
/// consumer queue at once.
fn expire_together(env: &Env, n: usize, latency_ms: u64) {
    let mut conn = env.db.conn();
    let nos = overdue_orders(&mut conn, n);
    let admin = env.sim.admin();
    for (i, no) in nos.iter().enumerate() {
        match i % 10 {
            0..=5 => {} // never created at WeChat Pay: ORDER_NOT_EXIST
            6..=8 => {
                let _ = admin.set_state(no, "NOTPAY").unwrap();
            }
            _ => {
                let _ = admin.set_state(no, "NOTPAY").unwrap();
                let _ = admin.pay(no).unwrap();
            }
        }
    }
    if latency_ms > 0 {
        admin
            .set_global_faults(&Faults {
                latency_ms,
                ..Default::default()
            })
            .unwrap();
    }
    // Every message at once in the consumer queue, as if all expired together.
    let mut amqp = broker::connect(env.vhost.url()).unwrap();
    let mut publisher =
        ConfirmedPublisher::open(&mut amqp, env.vhost.url(), Duration::from_secs(30)).unwrap();
    let now = chrono::Utc::now();
    let messages: Vec<TimeoutMessage> = nos
        .iter()
        .map(|no| TimeoutMessage {
            order_no: domain::OrderNo::parse(no).unwrap(),
            created_at: now - chrono::Duration::minutes(31),
            deadline: now - chrono::Duration::minutes(1),
        })
        .collect();
    for chunk in messages.chunks(1000) {
        let out: Vec<Outgoing<'_>> = chunk
            .iter()
            .map(|message| Outgoing {
                exchange: "",
                queue: "queue.ordertimeout",
                message,
            })
            .collect();
        publisher.publish_all(&out).unwrap();
    }
    let _ = publisher.close();
    let _ = amqp.close();
    // The setup's dirty pages written now, not during the measured run (the
    // pgbench baseline does the same).
    let _ = diesel::sql_query("CHECKPOINT").execute(&mut conn);
}

/// Throughput run (see the module docs); with `metrics` the worker serves
/// and counts metrics, scraped every second.
fn throughput(
    keys: &SimKeys,
    n: usize,
    latency_ms: u64,
    concurrency: u16,
    metrics: bool,
) -> Throughput {
    let env = Env::new(keys, Duration::from_mins(30));
    expire_together(&env, n, latency_ms);
    let metrics_addr = metrics.then(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        format!("127.0.0.1:{port}")
    });
    let mut poller = Poller::new(&env.db);
    let admin = env.sim.admin();
    let calls_before = admin.stats().unwrap();
    let not_quiet = procfs::wait_quiet(env.db.name(), Duration::from_secs(30));
    // The interval: from spawning the worker to seeing the last settlement.
    let before = Sample::take(None, env.db.name());
    let started = Instant::now();
    let worker = env.worker(concurrency, metrics_addr.as_deref());
    let pid = worker.id();
    let stop_scraping = Arc::new(AtomicBool::new(false));
    let scraping = metrics_addr
        .clone()
        .map(|addr| scraper(addr, Arc::clone(&stop_scraping)));
    poller.wait_settled(Duration::from_mins(15), "worker too slow or stuck");
    let secs = started.elapsed().as_secs_f64();
    let after = Sample::take(Some(pid), env.db.name());
    let calls_after = admin.stats().unwrap();
    // VmHWM is the high-water mark: one read at the end is the peak.
    let peak = peak_rss_kib(pid).unwrap_or(0);
    stop_scraping.store(true, Ordering::Relaxed);
    if let Some(s) = scraping {
        let scrapes = s.join().unwrap_or(0);
        assert!(
            scrapes > 0 || secs < 2.0,
            "the worker's /metrics never answered"
        );
    }
    stop(worker);
    let counts = domain::count_by_status(&mut poller.conn).unwrap();
    assert_eq!(counts[0].1, 0, "orders left pending: {counts:?}");
    for b in domain::stock_balances(&mut poller.conn).unwrap() {
        // Loaded n, held by paid orders, the rest back in stock.
        assert_eq!(b.stock + b.held, n as i64, "stock not conserved: {b:?}");
    }
    let usage = Usage::between(&before, &after);
    Throughput {
        n,
        rate: n as f64 / secs,
        rss_mib: peak as f64 / 1024.0,
        closed: counts[2].1,
        paid: counts[1].1,
        cpu_ms: usage.worker * 1000.0 / n as f64,
        usage,
        api_requests: calls_after.api_requests - calls_before.api_requests,
        queries: calls_after.queries - calls_before.queries,
        closes: calls_after.closes - calls_before.closes,
        polls: poller.polls,
        poll_ms: poller.mean_ms(),
        not_quiet,
    }
}

/// What the lag run measured: percentiles in ms, orders, worker peak RSS.
struct Lag {
    p50: f64,
    p95: f64,
    p99: f64,
    count: usize,
    rss_mib: f64,
}

/// Lag run: `rate` orders/s for `secs` s, 1 s window.
fn lag(keys: &SimKeys, rate: u32, secs: u32, concurrency: u16) -> Lag {
    let window = Duration::from_secs(1);
    let env = Env::new(keys, window);
    let tea = domain::SkuCode::parse("TEA").unwrap();
    let total = rate * secs;
    let _ = domain::set_stock(
        &mut env.db.conn(),
        &tea,
        domain::StockLevel::new(total).unwrap(),
        Some(domain::Fen::new(100).unwrap()),
    )
    .unwrap();
    let worker = env.worker(concurrency, None);
    let stop_relay = Arc::new(AtomicBool::new(false));
    let relay_flag = Arc::clone(&stop_relay);
    let mut relay = order_producer::relay::Relay::new(
        env.db.url().clone(),
        env.vhost.url().clone(),
        env.topology.clone(),
        order_producer::relay::Settings {
            batch_size: 500,
            poll_interval: Duration::from_millis(20),
            confirm_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(1),
        },
    );
    let relay_thread = std::thread::spawn(move || relay.run(&relay_flag));
    std::thread::sleep(Duration::from_millis(500));
    let line = [domain::OrderLine {
        sku: tea,
        quantity: domain::Quantity::new(1).unwrap(),
    }];
    let mut conn = env.db.conn();
    let started = Instant::now();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let _ = domain::create_order(&mut conn, &line, window).unwrap();
    }
    Poller::new(&env.db).wait_settled(Duration::from_mins(2), "orders left pending");
    let peak = peak_rss_kib(worker.id()).unwrap_or(0);
    stop_relay.store(true, Ordering::Relaxed);
    let _ = relay_thread.join();
    stop(worker);
    let lags = domain::testing::settlement_lags_ms(&mut conn);
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    Lag {
        p50: pct(0.50),
        p95: pct(0.95),
        p99: pct(0.99),
        count: lags.len(),
        rss_mib: peak as f64 / 1024.0,
    }
}

fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn arg(name: &str, default: usize) -> usize {
    arg_str(name).map_or(default, |v| v.parse().expect("a number"))
}

/// `--scenarios 0/16,50/64`: simulator latency ms / worker concurrency.
fn scenarios_arg() -> Vec<(u64, u16)> {
    let spec = arg_str("--scenarios").unwrap_or_else(|| "0/16,0/64,50/64".into());
    spec.split(',')
        .map(|s| {
            let (latency, lanes) = s
                .trim()
                .split_once('/')
                .expect("--scenarios LATENCY_MS/CONCURRENCY,...");
            (
                latency.parse().expect("a latency in ms"),
                lanes.parse().expect("a concurrency"),
            )
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The metrics work the worker does for one settled order, timed alone:
/// the outcome, the lag, and three WeChat Pay calls (query, close, query)
/// observed. Nanoseconds per order.
fn metrics_ns_per_order() -> f64 {
    use payment_client::{Call, CallObserver, CallResult};
    let m = service::Metrics::new("bench");
    let ok = CallResult::Answered {
        status: 200,
        code: None,
    };
    let took = Duration::from_millis(3);
    let n = 200_000u32;
    let started = Instant::now();
    for _ in 0..n {
        m.observe(Call::Query, &ok, took);
        m.observe(Call::Close, &ok, took);
        m.observe(Call::Query, &ok, took);
        m.settlement_lag(chrono::TimeDelta::milliseconds(800));
        m.settlement(service::Outcome::Closed, service::Trigger::Message);
    }
    let ns = started.elapsed().as_secs_f64() * 1e9 / f64::from(n);
    assert!(m.encode().contains("order_timeout_settlements_total"));
    ns
}

/// Metrics off and on, alternated `pairs` times: medians and ratios.
fn metrics_cost(keys: &SimKeys, n: usize, pairs: usize) {
    let sig_before = wechatpay_sim::signature_rate();
    println!();
    println!(
        "metrics cost: {n} orders expiring together, latency 0, --worker-concurrency 16, metrics off / on \
         (METRICS_LISTEN, scraped every 1 s, collector every 10 s), alternated {pairs} times"
    );
    println!("| run | metrics | orders/s | worker CPU per order |");
    println!("| --- | --- | --- | --- |");
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        // Alternate which goes first, so a drift of the machine hits both.
        let order = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for metrics in order {
            let t = throughput(keys, n, 0, 16, metrics);
            println!(
                "| {} | {} | {:.0} | {:.3} ms |",
                i + 1,
                if metrics { "on" } else { "off" },
                t.rate,
                t.cpu_ms
            );
            if metrics { &mut on } else { &mut off }.push(t);
        }
    }
    let sig_after = wechatpay_sim::signature_rate();
    let rate = |v: &[Throughput]| median(v.iter().map(|t| t.rate).collect());
    let cpu = |v: &[Throughput]| median(v.iter().map(|t| t.cpu_ms).collect());
    println!();
    println!("| median | metrics off | metrics on | on / off |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| orders/s | {:.0} | {:.0} | {:.3} |",
        rate(&off),
        rate(&on),
        rate(&on) / rate(&off)
    );
    println!(
        "| worker CPU per order | {:.3} ms | {:.3} ms | {:.3} |",
        cpu(&off),
        cpu(&on),
        cpu(&on) / cpu(&off)
    );
    let ns = metrics_ns_per_order();
    println!(
        "The metrics work per settled order, timed alone (outcome, lag, 3 WeChat Pay calls observed): \
         {:.2} us = {:.3}% of the worker's CPU per order with metrics off",
        ns / 1000.0,
        ns / 1e6 / cpu(&off) * 100.0
    );
    println!(
        "This machine's RSA-2048 signatures/s on one thread, before / after: {sig_before:.0} / {sig_after:.0}"
    );
}

/// One throughput scenario with its cost figures.
struct CostRun {
    latency_ms: u64,
    concurrency: u16,
    t: Throughput,
    /// One signature and one verification, mean of before and after the run.
    crypto: CryptoCost,
    sig_before: f64,
    sig_after: f64,
}

impl CostRun {
    fn name(&self) -> String {
        format!(
            "latency {} ms, --worker-concurrency {}",
            self.latency_ms, self.concurrency
        )
    }

    /// Signatures (= verifications) per settled order: the worker signs each
    /// request and verifies each answer.
    fn calls_per_order(&self) -> f64 {
        self.t.per_order(self.t.api_requests)
    }

    fn crypto_ms(&self) -> f64 {
        self.calls_per_order() * (self.crypto.sign_ms + self.crypto.verify_ms)
    }

    fn crypto_ratio(&self) -> f64 {
        self.t.per_order_ms(self.t.usage.worker) / self.crypto_ms()
    }

    fn pg_ratio(&self, baseline: &Pgbench) -> f64 {
        self.t.per_order_ms(self.t.usage.postgres) / baseline.pg_ms()
    }

    /// Orders/s the lanes allow when every call takes the latency: lanes /
    /// (calls per order x latency). `None` without a latency.
    fn lane_bound(&self) -> Option<f64> {
        (self.latency_ms > 0).then(|| {
            f64::from(self.concurrency) / (self.calls_per_order() * self.latency_ms as f64 / 1000.0)
        })
    }
}

fn cost_run(
    keys: &SimKeys,
    files: &ClientFiles,
    n: usize,
    latency_ms: u64,
    concurrency: u16,
) -> CostRun {
    let budget = Duration::from_millis(500);
    let sig_before = wechatpay_sim::signature_rate();
    let crypto_before = CryptoCost::measure(keys, files, budget);
    let t = throughput(keys, n, latency_ms, concurrency, false);
    let crypto_after = CryptoCost::measure(keys, files, budget);
    let sig_after = wechatpay_sim::signature_rate();
    CostRun {
        latency_ms,
        concurrency,
        t,
        crypto: crypto_before.mean(&crypto_after),
        sig_before,
        sig_after,
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
}

fn print_baseline(p: &Pgbench, sig: (f64, f64)) {
    let u = &p.usage;
    println!();
    println!(
        "PostgreSQL baseline: pgbench -n -M prepared, 2 clients, scripts/pgbench/ \
         (close_not_exist@6, close_notpay@3, pay@1: the writes of one settlement per transaction, \
         each on its own pending order); RSA-2048 signatures/s on one thread, before / after: {:.0} / {:.0}",
        sig.0, sig.1
    );
    println!(
        "| transactions | tps | PostgreSQL CPU | PostgreSQL CPU per transaction | machine busy |"
    );
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| {} | {:.0} | {:.2} s | {:.3} ms | {:.0}% of {} cores over {:.2} s |",
        p.transactions,
        p.tps,
        u.postgres,
        p.pg_ms(),
        u.machine_fraction * 100.0,
        cores(),
        u.secs
    );
    warn_noise(u, p.not_quiet.as_deref());
}

/// Where the CPU went over one throughput run, per settled order.
fn print_cpu_table(r: &CostRun) {
    let t = &r.t;
    let u = &t.usage;
    println!();
    println!(
        "CPU by process from /proc (utime + stime), from the worker's start to the last settlement ({:.2} s):",
        u.secs
    );
    println!("| process | CPU seconds | per settled order | share of the four |");
    println!("| --- | --- | --- | --- |");
    let total = u.total();
    let rows = [
        ("worker", u.worker),
        (
            "PostgreSQL (every postgres process, with the reaped backends)",
            u.postgres,
        ),
        (
            "RabbitMQ (the local broker: beam.smp and children)",
            u.rabbitmq,
        ),
        (
            "simulator (the bench process, /proc/self: the simulator and the bench's polling)",
            u.bench,
        ),
    ];
    for (name, secs) in rows {
        println!(
            "| {name} | {secs:.2} | {:.3} ms | {:.0}% |",
            t.per_order_ms(secs),
            secs / total * 100.0
        );
    }
    println!(
        "| total | {total:.2} | {:.3} ms | 100% |",
        t.per_order_ms(total)
    );
    println!(
        "| kernel interrupts (irq, softirq: mostly the loopback networking of the above) | {:.2} | {:.3} ms | |",
        u.interrupts,
        t.per_order_ms(u.interrupts)
    );
    println!(
        "| other processes (not part of the run) | {:.2} | {:.3} ms | |",
        u.others(),
        t.per_order_ms(u.others())
    );
    println!(
        "| machine, all processes ({} cores {:.0}% busy) | {:.2} | {:.3} ms | |",
        cores(),
        u.machine_fraction * 100.0,
        u.machine_busy,
        t.per_order_ms(u.machine_busy)
    );
    println!(
        "The bench polled {} times (one held connection, every {} ms), {:.2} ms each on average (wall time, from the bench).",
        t.polls,
        Poller::INTERVAL.as_millis(),
        t.poll_ms
    );
    warn_noise(u, t.not_quiet.as_deref());
}

/// Says when other work ran beside a measured interval.
fn warn_noise(u: &Usage, not_quiet: Option<&str>) {
    if let Some(why) = not_quiet {
        println!("Warning: {why}.");
    }
    if u.foreign_backends_cpu >= 0.02 {
        println!(
            "Warning: {} PostgreSQL backends of other databases were alive during this interval, \
             using at least {:.2} s of CPU: the PostgreSQL figure includes someone else's work.",
            u.foreign_backends, u.foreign_backends_cpu
        );
    }
}

/// The worker's crypto per settled order against its CPU.
fn print_crypto_table(r: &CostRun) {
    let t = &r.t;
    let c = &r.crypto;
    let per = r.calls_per_order();
    println!();
    println!(
        "The worker's crypto per settled order: it signs each request and verifies each answer; \
         {:.2} WeChat Pay calls per order ({:.2} queries, {:.2} closes); one signature and one \
         verification timed on one thread through payment-client's code (mean of before and after the run):",
        per,
        t.per_order(t.queries),
        t.per_order(t.closes)
    );
    println!("| | per settled order | one, single thread | ms per settled order |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| signatures (MerchantKey::sign) | {per:.2} | {:.3} ms | {:.3} |",
        c.sign_ms,
        per * c.sign_ms
    );
    println!(
        "| verifications (KeyStore::verify) | {per:.2} | {:.4} ms | {:.3} |",
        c.verify_ms,
        per * c.verify_ms
    );
    println!("| crypto | | | {:.3} |", r.crypto_ms());
    println!("| worker CPU | | | {:.3} |", t.per_order_ms(t.usage.worker));
    println!(
        "| worker CPU / crypto (target <= {TARGET_CRYPTO_RATIO}) | | | {:.2} |",
        r.crypto_ratio()
    );
    let busy_crypto = per * (c.sign_ms_all_cores + c.verify_ms);
    println!(
        "With every core signing at once, one signature takes {:.3} ms of CPU ({:.2}x the single-thread time): \
         at that cost the crypto is {busy_crypto:.3} ms per order and worker CPU / crypto {:.2}.",
        c.sign_ms_all_cores,
        c.sign_ms_all_cores / c.sign_ms,
        t.per_order_ms(t.usage.worker) / busy_crypto
    );
}

/// Why a run stayed below its lane bound.
fn limit(r: &CostRun) -> String {
    let t = &r.t;
    let u = &t.usage;
    let (who, secs) = u.largest();
    let share = secs / u.total() * 100.0;
    // What the cores allow at the CPU per order the machine spent.
    let cpu_bound = cores() as f64 / (u.machine_busy / t.n as f64);
    let bound = if u.machine_fraction >= 0.9 {
        "CPU-bound"
    } else {
        "not quite CPU-bound"
    };
    format!(
        "{bound}: the {} cores were {:.0}% busy, at {:.3} ms of CPU per order (machine) they allow {cpu_bound:.0} orders/s; \
         most CPU: {who} ({share:.0}% of the four processes)",
        cores(),
        u.machine_fraction * 100.0,
        t.per_order_ms(u.machine_busy)
    )
}

fn print_cost_run(r: &CostRun, baseline: &Pgbench) {
    let t = &r.t;
    println!();
    println!(
        "{}: {} orders expiring together; RSA-2048 signatures/s on one thread, before / after: {:.0} / {:.0}",
        r.name(),
        t.n,
        r.sig_before,
        r.sig_after
    );
    println!("| orders | orders/s | worker peak RSS | closed / paid |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {} | {:.0} | {:.1} MiB | {} / {} |",
        t.n, t.rate, t.rss_mib, t.closed, t.paid
    );
    print_cpu_table(r);
    print_crypto_table(r);
    println!();
    println!(
        "PostgreSQL CPU per settled order / per pgbench transaction (target <= {TARGET_PG_RATIO}): \
         {:.3} ms / {:.3} ms = {:.2}",
        t.per_order_ms(t.usage.postgres),
        baseline.pg_ms(),
        r.pg_ratio(baseline)
    );
    if let Some(bound) = r.lane_bound() {
        let fraction = t.rate / bound;
        println!();
        println!(
            "Lane bound: {} lanes / ({:.2} calls per order x {} ms) = {bound:.0} orders/s; \
             achieved {:.0} = {fraction:.2} of it (target >= {TARGET_LANE_FRACTION}){}",
            r.concurrency,
            r.calls_per_order(),
            r.latency_ms,
            t.rate,
            if fraction < TARGET_LANE_FRACTION {
                format!("; {}", limit(r))
            } else {
                String::new()
            }
        );
    }
}

fn print_summary(runs: &[CostRun]) {
    println!();
    println!("Summary:");
    println!("| scenario | orders | orders/s | worker peak RSS | closed / paid | CPU per settled order: worker / PostgreSQL / RabbitMQ / simulator / total |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in runs {
        let t = &r.t;
        let u = &t.usage;
        println!(
            "| {} | {} | {:.0} | {:.1} MiB | {} / {} | {:.3} / {:.3} / {:.3} / {:.3} / {:.3} ms |",
            r.name(),
            t.n,
            t.rate,
            t.rss_mib,
            t.closed,
            t.paid,
            t.per_order_ms(u.worker),
            t.per_order_ms(u.postgres),
            t.per_order_ms(u.rabbitmq),
            t.per_order_ms(u.bench),
            t.per_order_ms(u.total()),
        );
    }
}

fn print_lag(l: &Lag, secs: u32, sig: (f64, f64)) {
    println!();
    println!(
        "lag, deadline -> settled, steady 100 orders/s for {secs} s ({} orders, 1 s window, relay + worker --worker-concurrency 16); \
         RSA-2048 signatures/s on one thread, before / after: {:.0} / {:.0}",
        l.count, sig.0, sig.1
    );
    println!("| p50 | p95 | p99 | worker peak RSS |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {:.0} ms | {:.0} ms | {:.0} ms | {:.1} MiB |",
        l.p50, l.p95, l.p99, l.rss_mib
    );
}

fn print_targets(runs: &[CostRun], baseline: &Pgbench, lag: Option<&Lag>) {
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!("Targets:");
    println!("| target | scenario | measured | |");
    println!("| --- | --- | --- | --- |");
    for r in runs {
        let ratio = r.crypto_ratio();
        println!(
            "| worker CPU / crypto per order <= {TARGET_CRYPTO_RATIO} | {} | {ratio:.2} | {} |",
            r.name(),
            met(ratio <= TARGET_CRYPTO_RATIO)
        );
    }
    for r in runs {
        let ratio = r.pg_ratio(baseline);
        println!(
            "| PostgreSQL CPU per order / per pgbench transaction <= {TARGET_PG_RATIO} | {} | {ratio:.2} | {} |",
            r.name(),
            met(ratio <= TARGET_PG_RATIO)
        );
    }
    for r in runs {
        if let Some(bound) = r.lane_bound() {
            let fraction = r.t.rate / bound;
            println!(
                "| orders/s / lane bound >= {TARGET_LANE_FRACTION} | {} | {fraction:.2} ({:.0} of {bound:.0}) | {} |",
                r.name(),
                r.t.rate,
                met(fraction >= TARGET_LANE_FRACTION)
            );
        }
    }
    if let Some(l) = lag {
        println!(
            "| lag p99 < {TARGET_LAG_P99_MS:.0} ms | 100 orders/s | {:.0} ms | {} |",
            l.p99,
            met(l.p99 < TARGET_LAG_P99_MS)
        );
        println!(
            "| worker peak RSS < {TARGET_LAG_RSS_MIB:.0} MiB | 100 orders/s | {:.1} MiB | {} |",
            l.rss_mib,
            met(l.rss_mib < TARGET_LAG_RSS_MIB)
        );
    } else {
        println!("| lag p99 < {TARGET_LAG_P99_MS:.0} ms | 100 orders/s | not run | |");
        println!("| worker peak RSS < {TARGET_LAG_RSS_MIB:.0} MiB | 100 orders/s | not run | |");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let n = arg("--orders", 20_000);
    let lag_secs = arg("--lag-seconds", 30) as u32;
    let metrics_orders = arg("--metrics-orders", 5_000);
    let metrics_pairs = arg("--metrics-pairs", 3);
    let pgbench_transactions = arg("--pgbench-transactions", 4_000) as u32;
    let scenarios = scenarios_arg();
    let keys = SimKeys::generate().unwrap();
    println!(
        "worker benchmark on {} cores; mix 60% never created at WeChat Pay, 30% NOTPAY, 10% paid",
        cores()
    );
    if flag("--only-metrics") {
        metrics_cost(&keys, metrics_orders, metrics_pairs);
        return;
    }
    let only_cost = flag("--only-cost");

    let sig_before = wechatpay_sim::signature_rate();
    let baseline = pgbench::run(2, pgbench_transactions.div_ceil(2));
    print_baseline(&baseline, (sig_before, wechatpay_sim::signature_rate()));

    // Key files for timing the worker's crypto alone.
    let crypto_dir = tempfile::tempdir().unwrap();
    let files = keys.write_client_files(crypto_dir.path()).unwrap();
    let mut runs = Vec::new();
    for (latency, concurrency) in scenarios {
        let r = cost_run(&keys, &files, n, latency, concurrency);
        print_cost_run(&r, &baseline);
        runs.push(r);
    }
    print_summary(&runs);
    round_trips::print(&keys, &files);
    drop(crypto_dir);

    let lag = (!only_cost).then(|| {
        let sig_before = wechatpay_sim::signature_rate();
        let l = lag(&keys, 100, lag_secs, 16);
        print_lag(&l, lag_secs, (sig_before, wechatpay_sim::signature_rate()));
        l
    });
    if !only_cost && !flag("--skip-metrics") {
        metrics_cost(&keys, metrics_orders, metrics_pairs);
    }
    print_targets(&runs, &baseline, lag.as_ref());
}
