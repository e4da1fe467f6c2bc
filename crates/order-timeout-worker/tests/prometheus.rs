//! A real Prometheus (Debian's `prometheus` package) scrapes a worker (the
//! binary) and a relay (the `relay` command, in this process) while they
//! settle a known mix of orders against the simulator; the counts by
//! outcome are asserted through Prometheus' query API, and the project's
//! alert rules (docker/prometheus/alerts.yml) are loaded and must evaluate
//! without error against the real series.
//!
//! A test binary of its own: it starts processes and listens on ports, and
//! is the one test that needs `prometheus` installed (`.ci/run` installs it;
//! without it the test fails and says how to install it).

#[path = "support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::testing::{wait_for, KillOnDrop};
use serde_json::Value;
use support::{free_port, Stack, TempDir};

const TOKEN: &str = "prometheus-test-token-0123456789";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn prometheus_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "this test needs a real Prometheus: install Debian's `prometheus` package \
             (apt-get install prometheus; .ci/run does it when missing)"
        )
    })
}

/// A running Prometheus scraping `targets` (job name, address, bearer token).
struct Prometheus {
    _process: KillOnDrop,
    base: String,
    agent: ureq::Agent,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[(&str, &str, Option<&Path>)]) -> Self {
        let rules = repo().join("docker/prometheus/alerts.yml");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
            rules.display()
        );
        for (job, addr, token) in targets {
            let _ = writeln!(config, "  - job_name: {job}");
            if let Some(t) = token {
                let _ = writeln!(
                    config,
                    "    authorization:\n      type: Bearer\n      credentials_file: {}",
                    t.display()
                );
            }
            let _ = writeln!(config, "    static_configs:\n      - targets: ['{addr}']");
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = free_port();
        let process = KillOnDrop(
            Command::new(prometheus_binary())
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start prometheus"),
        );
        let prometheus = Self {
            _process: process,
            base: format!("http://127.0.0.1:{port}"),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into(),
        };
        let ready = wait_for(Duration::from_secs(30), || {
            prometheus
                .agent
                .get(format!("{}/-/ready", prometheus.base))
                .call()
                .ok()
                .filter(|r| r.status().as_u16() == 200)
        });
        assert!(ready.is_some(), "prometheus did not become ready");
        prometheus
    }

    fn api(&self, path: &str, query: Option<&str>) -> Value {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(q) = query {
            req = req.query("query", q);
        }
        let body = req
            .call()
            .expect("prometheus answers")
            .body_mut()
            .read_to_string()
            .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{path} {query:?}: {body}");
        v["data"].clone()
    }

    /// An instant query: each result's `label` value and count.
    fn query(&self, q: &str, label: &str) -> Vec<(String, i64)> {
        let data = self.api("/api/v1/query", Some(q));
        let mut out: Vec<(String, i64)> = data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["metric"][label].as_str().unwrap_or("").to_owned(),
                    r["value"][1]
                        .as_str()
                        .unwrap()
                        .parse::<f64>()
                        .unwrap()
                        .round() as i64,
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Waits (scrapes are a second apart, and not in step) until `q` gives
    /// `want`.
    fn eventually(&self, q: &str, want: i64) {
        let got = wait_for(Duration::from_secs(20), || {
            (self.scalar(q) == Some(want)).then_some(())
        });
        assert!(got.is_some(), "{q}: {:?}, expected {want}", self.scalar(q));
    }

    fn scalar(&self, q: &str) -> Option<i64> {
        self.query(q, "").first().map(|(_, v)| *v)
    }
}

#[test]
fn prometheus_scrapes_the_worker_and_the_relay_and_counts_by_outcome() {
    let stack = Stack::new();
    let dir = TempDir::new().unwrap();
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();

    let worker_addr = format!("127.0.0.1:{}", free_port());
    let mut worker = spawn_worker(&stack, &worker_addr, &token_file);
    let relay_addr = format!("127.0.0.1:{}", free_port());
    let stop = Arc::new(AtomicBool::new(false));
    let relay = start_relay(&stack, &relay_addr, &stop);

    let prometheus = Prometheus::start(
        dir.path(),
        &[
            ("order-timeout-worker", &worker_addr, Some(&token_file)),
            ("order-timeout-relay", &relay_addr, None),
        ],
    );
    let up = wait_for(Duration::from_secs(30), || {
        let up = prometheus.query("up", "job");
        (up.len() == 2 && up.iter().all(|(_, v)| *v == 1)).then_some(up)
    });
    assert!(
        up.is_some(),
        "both targets up: {:?}",
        prometheus.query("up", "job")
    );

    let _mix = stack.create_mix();

    let by_outcome = r#"sum by (outcome) (order_timeout_settlements_total{job="order-timeout-worker", outcome!="not_yet_due"}) > 0"#;
    let expected = vec![
        ("anomaly".to_owned(), 1),
        ("closed".to_owned(), 5),
        ("paid".to_owned(), 2),
    ];
    let seen = wait_for(Duration::from_mins(1), || {
        let got = prometheus.query(by_outcome, "outcome");
        (got == expected).then_some(got)
    });
    assert!(
        seen.is_some(),
        "Prometheus saw {:?}, expected {expected:?}",
        prometheus.query(by_outcome, "outcome")
    );
    prometheus.eventually("sum(order_timeout_relay_published_total)", 8);
    prometheus.eventually(
        r#"sum(order_timeout_parked_total{reason="amount_mismatch"})"#,
        1,
    );
    prometheus.eventually("sum(order_timeout_settlement_lag_seconds_count)", 7);
    // The gauges come from exactly one of the two processes.
    let gauges = wait_for(Duration::from_secs(20), || {
        let closed = prometheus.query(r#"order_timeout_orders{status="closed"}"#, "job");
        (closed.len() == 1 && closed[0].1 == 5).then_some(closed)
    });
    assert!(
        gauges.is_some(),
        "one collector reporting 5 closed: {:?}",
        prometheus.query(r#"order_timeout_orders{status="closed"}"#, "job")
    );
    prometheus.eventually("sum(order_timeout_collector)", 1);
    prometheus.eventually(r#"max(order_timeout_needs_human{kind="order"})"#, 1);

    assert_rules_evaluate(&prometheus);

    stop.store(true, Ordering::Relaxed);
    relay.join().unwrap().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let status = wait_for(Duration::from_secs(20), || worker.try_wait().unwrap());
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

/// The worker, as an operator runs it, with its metrics behind a token.
fn spawn_worker(stack: &Stack, addr: &str, token_file: &Path) -> KillOnDrop {
    KillOnDrop(
        stack
            .worker_command(&[])
            .env("WORKER_RECHECK_AFTER", "1h")
            .env("METRICS_LISTEN", addr)
            .env("METRICS_TOKEN_FILE", token_file)
            .env("METRICS_GAUGE_INTERVAL", "500ms")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The relay: the `relay` command itself, on a thread of this process.
fn start_relay(
    stack: &Stack,
    addr: &str,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    let cli = service::cli::try_parse_from::<order_producer::Cli>([
        "order-producer",
        "--database-url",
        stack.db.url().expose_secret(),
        "--amqp-url",
        stack.vhost.url().expose_secret(),
        "--delay-ttl-ms",
        "300",
        "--retry-delays",
        "100ms,200ms,400ms",
        "relay",
        "--relay-poll-interval",
        "50ms",
        "--metrics-listen",
        addr,
    ])
    .unwrap();
    let stop = Arc::clone(stop);
    std::thread::spawn(move || order_producer::run(&cli, &stop).map(|_| ()))
}

/// The alert rules load and evaluate against the real series without error.
fn assert_rules_evaluate(prometheus: &Prometheus) {
    let rules = prometheus.api("/api/v1/rules", None);
    let groups = rules["groups"].as_array().unwrap();
    assert!(!groups.is_empty(), "no rule groups loaded");
    let evaluated = wait_for(Duration::from_secs(20), || {
        let rules = prometheus.api("/api/v1/rules", None);
        let all: Vec<Value> = rules["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect();
        all.iter().all(|r| r["health"] == "ok").then_some(all.len())
    });
    assert!(
        evaluated.is_some(),
        "rules with errors: {}",
        prometheus.api("/api/v1/rules", None)
    );
}
