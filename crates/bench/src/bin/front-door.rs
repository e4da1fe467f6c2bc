//! Front door benchmark (not a test; run by `scripts/bench.sh front-door`).
//!
//! Starts the release `order-producer serve` as a child process against a
//! fresh database, then, from 32 client threads on keep-alive connections:
//! `POST /v1/orders` (random SKU of 64; again with an `Idempotency-Key`
//! each; orders of three lines; every order on one SKU, the hot-row case),
//! then WeChat
//! Pay payment notifications for the orders just created (signed and
//! encrypted before the clock starts: the bench must not spend the
//! machine's CPU on the simulator's RSA signatures while measuring). Prints
//! requests/s, p50/p99 latency and the server's CPU per request, with the
//! per-process `create-order` rate and this machine's RSA-2048 signature
//! rate measured in the same run.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::testing::TestDb;
use order_producer::testing::{free_port, paid_transaction, unix_now, TempDir, APPID};
use wechatpay_sim::{SignedNotification, SimKeys, Simulator};

const TOKEN: &str = "bench-token-0123456789abcdef";
const SKUS: usize = 64;
const PRICE_FEN: i64 = 100;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Fields 14 and 15 of stat (utime, stime), counted after the `)`.
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

/// CPU seconds used so far by every PostgreSQL server process.
fn postgres_cpu_secs() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == "postgres")
        })
        .map(cpu_secs)
        .sum()
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Result of one phase: requests/s, p50 and p99 in ms, server CPU ms per request.
struct Phase {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_ms: f64,
    pg_cpu_ms: f64,
    client_cpu_ms: f64,
}

/// Runs `n` requests from `clients` threads; `request(i)` sends the i-th
/// and returns whether it got the expected status.
fn phase(
    server: &Server,
    n: usize,
    clients: usize,
    request: impl Fn(&ureq::Agent, usize) -> bool + Send + Sync + 'static,
) -> Phase {
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_secs(server.child.id());
    let pg_before = postgres_cpu_secs();
    let client_before = cpu_secs(std::process::id());
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (request, next) = (Arc::clone(&request), Arc::clone(&next));
            std::thread::spawn(move || {
                let agent = agent();
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t = Instant::now();
                    assert!(request(&agent, i), "request {i} failed");
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(server.child.id()) - cpu_before;
    let pg = postgres_cpu_secs() - pg_before;
    let client = cpu_secs(std::process::id()) - client_before;
    lat.sort_by(f64::total_cmp);
    let per = |secs: f64| secs * 1000.0 / n as f64;
    Phase {
        rate: n as f64 / secs,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        cpu_ms: per(cpu),
        pg_cpu_ms: per(pg),
        client_cpu_ms: per(client),
    }
}

fn create(agent: &ureq::Agent, base: &str, sku: &str, key: Option<&str>) -> Option<String> {
    create_items(
        agent,
        base,
        &format!(r#"{{"sku":"{sku}","quantity":1}}"#),
        key,
    )
}

/// `POST /v1/orders` with these `items` (JSON objects, comma-separated).
fn create_items(agent: &ureq::Agent, base: &str, items: &str, key: Option<&str>) -> Option<String> {
    let mut req = agent
        .post(&format!("{base}/v1/orders"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let mut resp = req
        .send(format!(r#"{{"items":[{items}],"payment_window":"30m"}}"#))
        .ok()?;
    if resp.status().as_u16() != 201 {
        return None;
    }
    let body = resp.body_mut().read_to_string().ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["order_no"].as_str().map(str::to_owned)
}

fn deliver(agent: &ureq::Agent, base: &str, n: &SignedNotification) -> bool {
    let mut req = agent.post(&format!("{base}{}", order_producer::serve::NOTIFY_PATH));
    for (k, v) in &n.headers {
        req = req.header(k, v);
    }
    req.send(&n.body[..])
        .is_ok_and(|r| r.status().as_u16() == 204)
}

fn print_phase(name: &str, n: usize, p: &Phase) {
    println!(
        "| {name} | {n} | **{:.0}** | {:.1} ms | {:.1} ms | {:.2} / {:.2} / {:.2} ms |",
        p.rate, p.p50, p.p99, p.cpu_ms, p.pg_cpu_ms, p.client_cpu_ms
    );
}

#[allow(clippy::too_many_lines)] // one straight script of phases
fn main() {
    let n = arg("--orders", 20_000);
    let clients = arg("--clients", 32);
    let per_process = arg("--create-order-runs", 50);
    let bin = std::env::var("BENCH_PRODUCER_BIN").expect("BENCH_PRODUCER_BIN");

    let db = TestDb::new();
    let dir = TempDir::new().expect("a temporary directory");
    let keys = SimKeys::generate().unwrap();
    let sim = Simulator::start("127.0.0.1:0", &keys, wechatpay_sim::SimConfig::default()).unwrap();
    let files = sim.write_client_files(dir.path()).unwrap();
    {
        let mut conn = db.conn();
        for i in 0..=SKUS {
            let code = if i == SKUS {
                "HOT".to_owned()
            } else {
                format!("B{i:02}")
            };
            let _ = domain::set_stock(
                &mut conn,
                &domain::SkuCode::parse(&code).unwrap(),
                domain::StockLevel::new(1_000_000).unwrap(),
                Some(domain::Fen::new(PRICE_FEN).unwrap()),
            )
            .unwrap();
        }
    }
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(&bin)
        .arg("serve")
        .env("DATABASE_URL", db.url().expose_secret())
        .env("API_LISTEN", format!("127.0.0.1:{port}"))
        .env("API_TOKEN_FILE", &token_file)
        .env("WECHATPAY_APPID", APPID)
        .env("WECHATPAY_APIV3_KEY_FILE", &files.apiv3_key_file)
        .env(
            "WECHATPAY_NOTIFY_URL",
            format!("{base}/wechatpay/notify/transaction"),
        )
        .envs(files.worker_env(&sim.base_url()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start order-producer serve");
    let server = Server { child, base };
    let ready = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        agent()
            .get(&format!("{}/healthz", server.base))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200)
    });
    assert!(ready, "serve did not start");

    let sig_before = wechatpay_sim::signature_rate();
    println!(
        "front door benchmark on {} cores, {clients} client threads on keep-alive connections, serve's database pool 16",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    println!();
    println!("| phase | requests | requests/s | p50 | p99 | CPU per request: serve / PostgreSQL / load client |");
    println!("| --- | --- | --- | --- | --- | --- |");

    // Warm-up: connections, pool, caches.
    let base = server.base.clone();
    let _ = phase(&server, 1000, clients, move |a, i| {
        create(a, &base, &format!("B{:02}", i % SKUS), None).is_some()
    });

    let created = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let (base, sink) = (server.base.clone(), Arc::clone(&created));
    let p = phase(&server, n, clients, move |a, i| {
        let no = create(a, &base, &format!("B{:02}", (i * 7919) % SKUS), None);
        let ok = no.is_some();
        if let Some(no) = no {
            sink.lock().unwrap().push(no);
        }
        ok
    });
    print_phase("POST /v1/orders, 64 SKUs", n, &p);

    let base = server.base.clone();
    let run = unix_now();
    let p = phase(&server, n, clients, move |a, i| {
        create(
            a,
            &base,
            &format!("B{:02}", (i * 7919) % SKUS),
            Some(&format!("bench-{run}-{i}")),
        )
        .is_some()
    });
    print_phase("POST /v1/orders + Idempotency-Key", n, &p);

    let base = server.base.clone();
    let multi = n / 4;
    let p = phase(&server, multi, clients, move |a, i| {
        let items: Vec<String> = (0..3)
            .map(|j| {
                format!(
                    r#"{{"sku":"B{:02}","quantity":1}}"#,
                    (i * 7919 + j * 17) % SKUS
                )
            })
            .collect();
        create_items(a, &base, &items.join(","), None).is_some()
    });
    print_phase("POST /v1/orders, 3 lines of 3 SKUs", multi, &p);

    let hot = n / 4;
    let base = server.base.clone();
    let p = phase(&server, hot, clients, move |a, _| {
        create(a, &base, "HOT", None).is_some()
    });
    print_phase("POST /v1/orders, all on one SKU", hot, &p);

    // Notifications for the orders of the first phase, signed beforehand,
    // one transaction id each.
    let orders = std::mem::take(&mut *created.lock().unwrap());
    let signing = Instant::now();
    let keys = Arc::new(keys);
    let apiv3 = sim.config().apiv3_key.as_bytes().to_vec();
    let serial = sim.config().signing_serial.clone();
    let half = orders.len().div_ceil(2);
    let chunks: Vec<(usize, Vec<String>)> = orders
        .chunks(half)
        .enumerate()
        .map(|(c, chunk)| (c * half, chunk.to_vec()))
        .collect();
    let notifications: Vec<SignedNotification> = chunks
        .into_iter()
        .map(|(offset, chunk)| {
            let (keys, apiv3, serial) = (Arc::clone(&keys), apiv3.clone(), serial.clone());
            std::thread::spawn(move || {
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, no)| {
                        let tx = paid_transaction(
                            no,
                            PRICE_FEN,
                            &format!("4200{run:014}{:010}", offset + i),
                        );
                        wechatpay_sim::signed_notification(&keys, &serial, &apiv3, &tx, unix_now())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let signed_in = signing.elapsed().as_secs_f64();
    let m = notifications.len();
    let notifications = Arc::new(notifications);
    let base = server.base.clone();
    let p = phase(&server, m, clients, move |a, i| {
        deliver(a, &base, &notifications[i])
    });
    print_phase("POST /wechatpay/notify/transaction (SUCCESS)", m, &p);
    let paid: i64 = domain::count_by_status(&mut db.conn())
        .unwrap()
        .into_iter()
        .filter(|(s, _)| *s == domain::OrderStatus::Paid)
        .map(|(_, c)| c)
        .sum();
    assert_eq!(paid as usize, m, "every notified order is paid");

    // One process per order, as `create-order` is used from a shell.
    let started = Instant::now();
    for i in 0..per_process {
        let out = Command::new(&bin)
            .args(["create-order", "--item", &format!("B{:02}:1", i % SKUS)])
            .env("DATABASE_URL", db.url().expose_secret())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let per_process_rate = per_process as f64 / started.elapsed().as_secs_f64();
    let sig_after = wechatpay_sim::signature_rate();
    println!(
        "| `order-producer create-order`, one process per order, sequential | {per_process} | {per_process_rate:.0} | | | |"
    );
    println!();
    println!(
        "{m} notifications signed beforehand in {signed_in:.1} s on 2 threads; every notified order paid: {paid}."
    );
    println!(
        "This machine's RSA-2048 signatures/s on one thread, before / after: {sig_before:.0} / {sig_after:.0}"
    );
}
