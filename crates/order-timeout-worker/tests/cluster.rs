//! A real three-node RabbitMQ cluster (scripts/cluster.sh, on this machine):
//! quorum topology, the relay and two workers each connected to a different
//! node (with the other nodes listed behind), orders expiring steadily; the
//! node that leads `queue.ordertimeout` is stopped mid-run and started
//! again, then, in a second round, the node that leads the delay queue.
//! Nothing may be lost, nothing given back twice, no paid order closed; the
//! settlement pause each stop caused is printed.
//!
//! A test binary of its own (it stops cluster nodes, which nothing else may
//! share); it starts the cluster if it is not up, and then takes it down
//! again at the end (a cluster that was up stays up). Its vhost is removed
//! at the end.

#[path = "support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::testing::{wait_for, KillOnDrop, TestDb};
use domain::{OrderNo, OrderStatus};
use wechatpay_sim::{SimKeys, Simulator};

/// Orders created per second, for how long, and their payment window.
const RATE: u32 = 10;
const CREATING: Duration = Duration::from_secs(30);
const WINDOW: Duration = Duration::from_secs(2);

fn cluster(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("run scripts/cluster.sh");
    assert!(
        out.status.success(),
        "cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ctl(node: u32, args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "-n", &format!("ot-rabbit-{node}@localhost")])
        .args(args)
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Takes the cluster down on drop if this test brought it up.
struct Cluster {
    started_here: bool,
}

impl Cluster {
    fn up() -> Self {
        let started_here = cluster(&["status"]).contains("not running");
        // Built before `up`, so that nodes this test started are taken down
        // even when `up` fails half way.
        let cluster_guard = Self { started_here };
        cluster(&["up"]);
        cluster_guard
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started_here {
            let _ = std::process::Command::new("bash")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster.sh"))
                .arg("down")
                .output();
        }
    }
}

/// The cluster's vhost for this test, removed on drop.
struct Vhost(String);

impl Drop for Vhost {
    fn drop(&mut self) {
        for node in 1..=3 {
            if ctl(node, &["delete_vhost", &self.0]).is_empty() {
                break;
            }
        }
    }
}

/// The node (1-3) that leads `queue` now, asking any running node.
fn leader(vhost: &str, queue: &str) -> u32 {
    for node in 1..=3 {
        let out = ctl(
            node,
            &[
                "list_queues",
                "-p",
                vhost,
                "name",
                "leader",
                "--formatter",
                "json",
            ],
        );
        let Ok(queues) = serde_json::from_str::<serde_json::Value>(&out) else {
            continue;
        };
        for q in queues.as_array().into_iter().flatten() {
            if q["name"] == queue {
                let leader = q["leader"].as_str().unwrap_or_default();
                for n in 1..=3 {
                    if leader == format!("ot-rabbit-{n}@localhost") {
                        return n;
                    }
                }
            }
        }
    }
    panic!("no leader found for {queue}");
}

/// The cluster's URLs for `vhost`, starting with node `first`.
fn urls_from(all: &[String], first: usize) -> String {
    (0..all.len())
        .map(|i| all[(first - 1 + i) % all.len()].clone())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, told in order
fn stopping_the_leader_of_each_queue_loses_nothing_and_settles_each_order_once() {
    let _cluster = Cluster::up();
    let vhost = Vhost(format!("ot_cluster_{}", std::process::id()));
    let _ = ctl(1, &["add_vhost", &vhost.0]);
    let _ = ctl(
        1,
        &["set_permissions", "-p", &vhost.0, "guest", ".*", ".*", ".*"],
    );
    let nodes: Vec<String> = cluster(&["urls"])
        .split(',')
        .map(|u| u.replace("%2f", &vhost.0))
        .collect();

    let db = TestDb::new();
    let keys = SimKeys::generate().unwrap();
    let dir = support::TempDir::new().unwrap();
    let files = keys.write_client_files(dir.path()).unwrap();
    let sim = Simulator::start("127.0.0.1:0", &keys, wechatpay_sim::SimConfig::default()).unwrap();
    let _ = domain::set_stock(
        &mut db.conn(),
        &domain::SkuCode::parse("TEA").unwrap(),
        domain::StockLevel::new(100_000).unwrap(),
        Some(domain::Fen::new(support::ORDER_TOTAL_FEN / 2).unwrap()),
    )
    .unwrap();
    let topology_flags = [
        "--queue-type",
        "quorum",
        "--delay-ttl-ms",
        "2000",
        "--retry-delays",
        "200ms,500ms,1s,2s",
        "--amqp-node-order",
        "listed",
    ];

    // The relay on node 1 (it declares the quorum topology there).
    let relay_urls = urls_from(&nodes, 1);
    let mut argv = vec![
        "order-producer",
        "--database-url",
        db.url().expose_secret(),
        "--amqp-url",
        &relay_urls,
    ];
    argv.extend_from_slice(&topology_flags);
    argv.extend_from_slice(&["relay", "--relay-poll-interval", "50ms"]);
    let cli = service::cli::try_parse_from::<order_producer::Cli>(argv).unwrap();
    let stop_relay = Arc::new(AtomicBool::new(false));
    let relay = {
        let stop = Arc::clone(&stop_relay);
        std::thread::spawn(move || order_producer::run(&cli, &stop).map(|_| ()))
    };
    let declared = wait_for(Duration::from_secs(30), || {
        ctl(1, &["list_queues", "-p", &vhost.0, "name"])
            .contains("queue.ordertimeout.parked")
            .then_some(())
    });
    assert!(declared.is_some(), "the relay did not declare the topology");

    // Two workers, on nodes 2 and 3.
    let worker = |first: usize| {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_order-timeout-worker"))
                .args(["--worker-concurrency", "4"])
                .args(topology_flags)
                .env("DATABASE_URL", db.url().expose_secret())
                .env("AMQP_URL", urls_from(&nodes, first))
                .envs(files.worker_env(&sim.base_url()))
                .env("WORKER_RECHECK_AFTER", "1h")
                .env("WORKER_SWEEP_INTERVAL", "1h")
                .env("RUST_LOG", "warn")
                .env_remove("DELAY_WINDOWS")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _worker_a = worker(2);
    let _worker_b = worker(3);

    // Orders expiring steadily; a tenth paid at WeChat Pay, a fifth unpaid
    // there, the rest never created there.
    let started = Instant::now();
    let creating = {
        let url = db.url().clone();
        let admin = sim.admin();
        std::thread::spawn(move || {
            let mut conn = domain::connect(&url).unwrap();
            let line = [domain::OrderLine {
                sku: domain::SkuCode::parse("TEA").unwrap(),
                quantity: domain::Quantity::new(2).unwrap(),
            }];
            let mut paid = Vec::new();
            let total = RATE * CREATING.as_secs() as u32;
            for i in 0..total {
                let due = started + CREATING.mul_f64(f64::from(i) / f64::from(total));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let no = domain::create_order(&mut conn, &line, WINDOW)
                    .unwrap()
                    .order_no;
                match i % 10 {
                    0 => {
                        let order = wechatpay_sim::Order {
                            trade_state: "SUCCESS".into(),
                            amount_total: support::ORDER_TOTAL_FEN,
                            transaction_id: Some(format!("42000000002026112{i:010}")),
                            success_time: Some("2026-11-26T18:30:00+08:00".into()),
                            ..Default::default()
                        };
                        let _ = admin.put_order(no.as_str(), &order).unwrap();
                        paid.push(no);
                    }
                    1 | 2 => {
                        let _ = admin
                            .put_order(no.as_str(), &wechatpay_sim::Order::in_state("NOTPAY"))
                            .unwrap();
                    }
                    _ => {}
                }
            }
            paid
        })
    };

    // Round 1: the leader of queue.ordertimeout; round 2: the leader of the
    // delay queue. Each stopped for 8 s, then started again.
    let mut stops = Vec::new();
    for (at, queue) in [(6, "queue.ordertimeout"), (18, "queue.ordercreate")] {
        std::thread::sleep(
            (started + Duration::from_secs(at)).saturating_duration_since(Instant::now()),
        );
        let node = leader(&vhost.0, queue);
        let down = chrono::Utc::now();
        cluster(&["stop", &node.to_string()]);
        std::thread::sleep(Duration::from_secs(8));
        cluster(&["start", &node.to_string()]);
        stops.push((queue, node, down, chrono::Utc::now()));
    }
    let paid: Vec<OrderNo> = creating.join().unwrap();

    // Everything settles: closed, or paid when paid at WeChat Pay.
    let settled = wait_for(Duration::from_mins(3), || {
        let pending = domain::count_by_status(&mut db.conn()).unwrap()[0].1;
        (pending == 0).then_some(())
    });
    let counts = domain::count_by_status(&mut db.conn()).unwrap();
    assert!(settled.is_some(), "orders left pending: {counts:?}");
    let total = i64::from(RATE) * CREATING.as_secs() as i64;
    assert_eq!(counts[1].1, paid.len() as i64, "paid: {counts:?}");
    assert_eq!(counts[2].1, total - paid.len() as i64, "closed: {counts:?}");
    let mut conn = db.conn();
    for no in &paid {
        let order = domain::find_order(&mut conn, no).unwrap().unwrap();
        assert_eq!(order.status, OrderStatus::Paid, "{no}: a paid order closed");
        assert_eq!(domain::payments_of(&mut conn, no).unwrap().len(), 1, "{no}");
    }
    // Stock given back exactly once: what is left plus what paid orders
    // hold is what was loaded.
    domain::testing::assert_stock_conserved(&mut conn);
    for b in domain::stock_balances(&mut conn).unwrap() {
        assert_eq!(b.held, 2 * paid.len() as i64, "{b:?}");
    }
    // One close per closed order, whatever was delivered twice.
    let doubled = domain::testing::orders_with_more_than_one_event(&mut conn, "closed");
    assert!(doubled.is_empty(), "closed twice: {doubled:?}");
    assert!(
        domain::outbox_backlog(&mut conn).unwrap().0 == 0,
        "outbox not drained"
    );

    // The settlement pause of each stop: the longest time without any
    // settlement around it.
    let times = domain::testing::settlement_times(&mut conn);
    for (queue, node, down, up) in &stops {
        let window_start = *down - chrono::TimeDelta::seconds(2);
        let window_end = *up + chrono::TimeDelta::seconds(20);
        let mut around: Vec<_> = times
            .iter()
            .filter(|t| **t >= window_start && **t <= window_end)
            .copied()
            .collect();
        around.sort();
        let pause = around
            .windows(2)
            .map(|w| (w[1] - w[0]).num_milliseconds())
            .max()
            .unwrap_or(0);
        println!(
            "stopped node {node} (leader of {queue}) for {} ms: longest settlement pause {pause} ms",
            (*up - *down).num_milliseconds()
        );
    }
    let lags = domain::testing::settlement_lags_ms(&mut conn);
    println!(
        "{} orders: {} paid, {} closed; lag p50 {:.0} ms, max {:.0} ms",
        total,
        paid.len(),
        counts[2].1,
        lags[lags.len() / 2],
        lags.last().copied().unwrap_or(0.0)
    );

    stop_relay.store(true, Ordering::Relaxed);
    relay.join().unwrap().unwrap();
}
