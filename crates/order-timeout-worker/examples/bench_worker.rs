//! Worker benchmark (not a test; run by scripts/bench.sh). Prints figures.
//!
//! 1. Throughput: N orders expiring together (their messages put straight
//!    into queue.ordertimeout, deadlines passed), mix 60% never created at
//!    WeChat Pay, 30% NOTPAY, 10% paid; the release worker binary settles
//!    them; orders/s from its start to the last settlement, and its peak RSS
//!    (`VmHWM`). Run at simulator latency 0 and 50 ms per call.
//! 2. Lag: orders created at a steady rate with a 1 s payment window, the
//!    relay and the worker running; lag = settlement time - deadline,
//!    p50/p95/p99.
//!
//! 3. Metrics cost: the throughput run (latency 0) with metrics off and on
//!    (`METRICS_LISTEN`, scraped every second, the collector reading the
//!    gauges), alternated, side by side: orders/s and the worker's CPU per
//!    order (from /proc), medians and ratios, with this machine's RSA-2048
//!    signature rate before and after. `--only-metrics` runs this alone.
//!
//! Each run uses a fresh database and vhost and the in-process simulator.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::testing::TestVhost;
use broker::{ConfirmedPublisher, Outgoing, QueueType, TimeoutMessage, Topology};
use domain::testing::TestDb;
use wechatpay_sim::{ClientFiles, Faults, SimKeys, Simulator};

struct Env {
    db: TestDb,
    vhost: TestVhost,
    sim: Simulator,
    files: ClientFiles,
    topology: Topology,
    dir: std::path::PathBuf,
}

impl Env {
    fn new(keys: &SimKeys, window: Duration) -> Self {
        let db = TestDb::new();
        let vhost = TestVhost::new();
        let dir =
            std::env::temp_dir().join(format!("ot-bench-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = keys.write_client_files(&dir).unwrap();
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
            dir,
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
            .args(["--concurrency", &concurrency.to_string()])
            .env("DATABASE_URL", self.db.url().expose())
            .env("AMQP_URL", self.vhost.url().expose())
            .env(
                "DELAY_TTL_MS",
                self.topology.delay_queues()[0].ttl.as_millis().to_string(),
            )
            .envs(self.files.worker_env(&self.sim.base_url()))
            .env("SWEEP_INTERVAL", "1h")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the worker (build it with cargo build --release)")
    }

    fn pending(&self) -> i64 {
        domain::count_by_status(&mut self.db.conn()).unwrap()[0].1
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
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

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is 3rd.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // Linux reports in USER_HZ, 100 on every architecture we run on.
    Some(ticks / 100.0)
}

/// What one throughput run measured.
struct Throughput {
    rate: f64,
    rss_mib: f64,
    closed: i64,
    paid: i64,
    /// Worker CPU per settled order, ms.
    cpu_ms: f64,
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

/// `n` orders whose deadline passed a minute ago (one TEA each, stock
/// reserved), in the bench mix at the simulator, their messages all in the
/// consumer queue at once.
fn expire_together(env: &Env, n: usize, latency_ms: u64) {
    // Orders whose deadline passed a minute ago, one TEA each, stock reserved.
    let mut conn = env.db.conn();
    let tea = domain::SkuCode::parse("TEA").unwrap();
    let _ = domain::set_stock(
        &mut conn,
        &tea,
        domain::StockLevel::new(n as u32).unwrap(),
        None,
    )
    .unwrap();
    domain::testing::bulk_orders(&mut conn, "TEA", n, true);
    let admin = env.sim.admin();
    let nos: Vec<String> = (1..=n).map(|g| format!("bench{g:010}")).collect();
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
                queue: "queue.ordertimeout",
                message,
            })
            .collect();
        publisher.publish_all(&out).unwrap();
    }
    let _ = publisher.close();
    let _ = amqp.close();
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
    let started = Instant::now();
    let worker = env.worker(concurrency, metrics_addr.as_deref());
    let pid = worker.id();
    let stop_scraping = Arc::new(AtomicBool::new(false));
    let scraping = metrics_addr
        .clone()
        .map(|addr| scraper(addr, Arc::clone(&stop_scraping)));
    let mut peak = 0;
    while env.pending() > 0 {
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        assert!(
            started.elapsed() < Duration::from_mins(15),
            "worker too slow or stuck"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(f64::NAN);
    peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
    stop_scraping.store(true, Ordering::Relaxed);
    if let Some(s) = scraping {
        let scrapes = s.join().unwrap_or(0);
        assert!(
            scrapes > 0 || secs < 2.0,
            "the worker's /metrics never answered"
        );
    }
    stop(worker);
    let counts = domain::count_by_status(&mut env.db.conn()).unwrap();
    for b in domain::stock_balances(&mut env.db.conn()).unwrap() {
        // Loaded n, held by paid orders, the rest back in stock.
        assert_eq!(b.stock + b.held, n as i64, "stock not conserved: {b:?}");
    }
    Throughput {
        rate: n as f64 / secs,
        rss_mib: peak as f64 / 1024.0,
        closed: counts[2].1,
        paid: counts[1].1,
        cpu_ms: cpu * 1000.0 / n as f64,
    }
}

/// Lag run: `rate` orders/s for `secs` s, 1 s window; returns lag percentiles in ms.
fn lag(keys: &SimKeys, rate: u32, secs: u32, concurrency: u16) -> (f64, f64, f64, usize) {
    let window = Duration::from_secs(1);
    let env = Env::new(keys, window);
    let tea = domain::SkuCode::parse("TEA").unwrap();
    let total = rate * secs;
    let _ = domain::set_stock(
        &mut env.db.conn(),
        &tea,
        domain::StockLevel::new(total).unwrap(),
        None,
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
    let waited = Instant::now();
    while env.pending() > 0 {
        assert!(
            waited.elapsed() < Duration::from_mins(2),
            "orders left pending"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_relay.store(true, Ordering::Relaxed);
    let _ = relay_thread.join();
    stop(worker);
    let lags = domain::testing::settlement_lags_ms(&mut conn);
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    (pct(0.50), pct(0.95), pct(0.99), lags.len())
}

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
        m.settlement(service::Outcome::Closed, "message");
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
        "metrics cost: {n} orders expiring together, latency 0, --concurrency 16, metrics off / on \
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg("--orders", 20_000);
    let lag_secs = arg("--lag-seconds", 30) as u32;
    let metrics_orders = arg("--metrics-orders", 5_000);
    let metrics_pairs = arg("--metrics-pairs", 3);
    let keys = SimKeys::generate().unwrap();
    println!(
        "worker benchmark on {} cores; mix 60% never created at WeChat Pay, 30% NOTPAY, 10% paid",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    if args.iter().any(|a| a == "--only-metrics") {
        metrics_cost(&keys, metrics_orders, metrics_pairs);
        return;
    }
    println!(
        "This machine's RSA-2048 signatures/s on one thread: {:.0}",
        wechatpay_sim::signature_rate()
    );
    println!("| scenario | orders | orders/s | worker peak RSS | closed / paid |");
    println!("| --- | --- | --- | --- | --- |");
    for (latency, concurrency) in [(0, 16), (0, 64), (50, 64)] {
        let t = throughput(&keys, n, latency, concurrency, false);
        println!(
            "| latency {latency} ms, --concurrency {concurrency} | {n} | {:.0} | {:.1} MiB | {} / {} |",
            t.rate, t.rss_mib, t.closed, t.paid
        );
    }
    let (p50, p95, p99, count) = lag(&keys, 100, lag_secs, 16);
    println!();
    println!("lag, deadline -> settled, steady 100 orders/s for {lag_secs} s ({count} orders, 1 s window, relay + worker --concurrency 16):");
    println!("| p50 | p95 | p99 |");
    println!("| --- | --- | --- |");
    println!("| {p50:.0} ms | {p95:.0} ms | {p99:.0} ms |");
    metrics_cost(&keys, metrics_orders, metrics_pairs);
}
