//! A front door for tests (feature `test-support`): a fresh database and
//! vhost, the WeChat Pay simulator in-process (with an appid, notifications
//! on a short schedule), `serve` started in-process on a free port with a
//! token, small body and time limits, and an HTTP client that never treats
//! a status as an error. Used by this crate's tests and the worker's.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::testing::TestVhost;
use clap::Parser;
use domain::testing::TestDb;
use serde_json::Value;
use wechatpay_sim::{ClientFiles, SimConfig, SimKeys, Simulator};

use crate::serve::Running;
use crate::{Cli, Command};

pub const APPID: &str = "wxd678efh567hg6787";
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// Price of one TEA or one MUG, in fen: 2 TEA cost the simulator's default
/// amount (100 fen).
pub const UNIT_FEN: i64 = 50;
/// `--api-max-body-bytes` of the test front door.
pub const MAX_BODY: usize = 4096;

/// A temporary directory, removed on drop (`tempfile`'s, here so that the
/// worker's tests find it beside [`free_port`]).
pub use tempfile::TempDir;

/// A free loopback port (bound, read, released).
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// An HTTP answer: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    #[must_use]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The database, vhost, simulator and a running front door.
pub struct FrontDoor {
    pub db: TestDb,
    pub vhost: TestVhost,
    pub sim: Simulator,
    pub files: ClientFiles,
    pub base: String,
    pub notify_url: String,
    stop: Arc<AtomicBool>,
    running: Option<Running>,
    agent: ureq::Agent,
    dir: TempDir,
}

impl std::fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoor")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl FrontDoor {
    /// Everything up, TEA and MUG loaded (1000 each at [`UNIT_FEN`]).
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`FrontDoor::start`], with more `serve` arguments: flag and
    /// value pairs, a flag given replacing its default.
    #[must_use]
    pub fn start_with(extra: &[&str]) -> Self {
        let db = TestDb::new();
        let vhost = TestVhost::new();
        let dir = TempDir::new().expect("a temporary directory");
        let sim = Simulator::start(
            "127.0.0.1:0",
            SimKeys::shared(),
            SimConfig {
                appid: Some(APPID.to_owned()),
                notify_schedule: vec![
                    Duration::from_millis(50),
                    Duration::from_millis(100),
                    Duration::from_millis(200),
                ],
                ..SimConfig::default()
            },
        )
        .expect("start the simulator");
        let files = sim.write_client_files(dir.path()).expect("client files");
        let mut conn = db.conn();
        for sku in ["TEA", "MUG"] {
            let _ = domain::set_stock(
                &mut conn,
                &domain::SkuCode::parse(sku).expect("sku"),
                domain::StockLevel::new(1000).expect("stock"),
                Some(domain::Fen::new(UNIT_FEN).expect("price")),
            )
            .expect("load stock");
        }
        let port = free_port();
        let notify_url = format!("http://127.0.0.1:{port}/wechatpay/notify/transaction");
        let mut door = Self {
            db,
            vhost,
            sim,
            files,
            base: format!("http://127.0.0.1:{port}"),
            notify_url,
            stop: Arc::new(AtomicBool::new(false)),
            running: None,
            // No pooled connections: a refusal answered before its body was
            // read may close the connection, and a request sent on it in
            // that moment fails in the client ("Peer disconnected"), which
            // is no answer of the front door's to test.
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(20)))
                .max_idle_connections(0)
                .max_idle_connections_per_host(0)
                .build()
                .into(),
            dir,
        };
        let cli = door.cli(port, extra);
        let Command::Serve(args) = &cli.command else {
            unreachable!("built a serve command")
        };
        door.running =
            Some(crate::serve::start(args, Arc::clone(&door.stop)).expect("start the front door"));
        door
    }

    /// The command line `serve` runs with.
    fn cli(&self, port: u16, extra: &[&str]) -> Cli {
        let token_file = self.dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token");
        let listen = format!("127.0.0.1:{port}");
        let mut args: Vec<String> = [
            "order-producer",
            "serve",
            "--database-url",
            self.db.url().expose_secret(),
            "--amqp-url",
            self.vhost.url().expose_secret(),
            "--delay-ttl-ms",
            "1800000",
            "--api-listen",
            &listen,
            "--api-token-file",
            token_file.to_str().expect("utf-8 path"),
            "--wechatpay-appid",
            APPID,
            "--wechatpay-apiv3-key-file",
            self.files.apiv3_key_file.to_str().expect("utf-8 path"),
            "--wechatpay-notify-url",
            &self.notify_url,
            "--api-request-timeout",
            "3s",
            "--api-header-timeout",
            "1s",
            "--api-max-body-bytes",
            &MAX_BODY.to_string(),
            "--api-db-pool-size",
            "8",
            "--api-shutdown-grace",
            "5s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(self.wechatpay_args());
        if !extra.contains(&"--delay-windows") {
            // Delay queues of 1 s and 30 min, so that every window the tests
            // ask for (1s to 15m) can be served; the default stays 30 min.
            args.extend(["--delay-windows", "1s", "--delay-windows", "30m"].map(str::to_owned));
        }
        // A flag in `extra` replaces the default given above.
        for pair in extra.chunks(2) {
            if let Some(at) = args.iter().position(|a| a == pair[0]) {
                args.drain(at..at + 2);
            }
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Cli::try_parse_from(args).expect("a valid serve command line")
    }

    /// The settings that reach the simulator as this merchant (base URL,
    /// merchant id and key, WeChat Pay's public key), as flag and value
    /// pairs: what every command that asks WeChat Pay takes.
    #[must_use]
    pub fn wechatpay_args(&self) -> Vec<String> {
        let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
        vec![
            "--wechatpay-base-url".into(),
            self.sim.base_url(),
            "--wechatpay-mchid".into(),
            wechatpay_sim::DEFAULT_MCHID.into(),
            "--wechatpay-merchant-serial-no".into(),
            wechatpay_sim::DEFAULT_MERCHANT_SERIAL_NO.into(),
            "--wechatpay-merchant-key-file".into(),
            path(&self.files.merchant_key_file),
            "--wechatpay-public-key-id".into(),
            wechatpay_sim::DEFAULT_PUBLIC_KEY_ID.into(),
            "--wechatpay-public-key-file".into(),
            path(&self.files.wechatpay_public_key_file),
            "--wechatpay-timeout".into(),
            "2s".into(),
        ]
    }

    /// A request with the shop's token.
    #[must_use]
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.send(
            method,
            path,
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            body.map(str::as_bytes),
        )
    }

    /// Any request: exactly these headers, this body.
    #[must_use]
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        let request = builder
            .body(body.map(<[u8]>::to_vec).unwrap_or_default())
            .expect("a valid request");
        let mut resp = self.agent.run(request).expect("the front door answers");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// `GET /metrics` of the metrics listener (started with
    /// `--metrics-listen 127.0.0.1:0`): the exposition text.
    #[must_use]
    pub fn scrape(&self) -> String {
        let addr = self
            .running
            .as_ref()
            .and_then(|r| r.metrics_addr)
            .expect("started with --metrics-listen");
        let mut resp = self
            .agent
            .get(format!("http://{addr}/metrics"))
            .call()
            .expect("the metrics listener answers");
        assert_eq!(resp.status().as_u16(), 200);
        resp.body_mut().read_to_string().unwrap_or_default()
    }

    /// `POST /v1/orders` for `qty` TEA; the order number.
    #[must_use]
    pub fn order_tea(&self, qty: u32) -> domain::OrderNo {
        let a = self.call(
            "POST",
            "/v1/orders",
            Some(&format!(
                r#"{{"items":[{{"sku":"TEA","quantity":{qty}}}]}}"#
            )),
        );
        assert_eq!(a.status, 201, "{}", a.body);
        domain::OrderNo::parse(a.json()["order_no"].as_str().expect("order_no"))
            .expect("a valid order number")
    }

    /// Creates the Native prepay; the `code_url`.
    #[must_use]
    pub fn prepay(&self, no: &domain::OrderNo) -> String {
        let a = self.call("POST", &format!("/v1/orders/{no}/wechatpay/native"), None);
        assert_eq!(a.status, 200, "{}", a.body);
        a.json()["code_url"].as_str().expect("code_url").to_owned()
    }

    /// A signed, encrypted `TRANSACTION.SUCCESS` notification about
    /// `transaction`, made at `timestamp`, as WeChat Pay would send it.
    #[must_use]
    pub fn notification(
        &self,
        transaction: &Value,
        timestamp: u64,
    ) -> wechatpay_sim::SignedNotification {
        wechatpay_sim::signed_notification(
            SimKeys::shared(),
            &self.sim.config().signing_serial,
            self.sim.config().apiv3_key.as_bytes(),
            transaction,
            timestamp,
        )
    }

    /// POSTs a notification to the front door.
    #[must_use]
    pub fn deliver(&self, n: &wechatpay_sim::SignedNotification) -> Answer {
        self.deliver_to(crate::serve::NOTIFY_PATH, n)
    }

    /// POSTs a notification to `path` (e.g. the refund notifications').
    #[must_use]
    pub fn deliver_to(&self, path: &str, n: &wechatpay_sim::SignedNotification) -> Answer {
        let headers: Vec<(&str, &str)> = n
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.send("POST", path, &headers, Some(&n.body))
    }

    /// Every (route template, method, status) this front door answered.
    #[must_use]
    pub fn observed(&self) -> std::collections::BTreeSet<(String, String, u16)> {
        self.running
            .as_ref()
            .map(Running::observed)
            .unwrap_or_default()
    }

    /// Raises the stop flag (as SIGTERM does) without waiting.
    pub fn raise_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops the front door (as SIGTERM would) and waits for it.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.running.take() {
            Some(r) => r.wait(),
            None => Ok(()),
        }
    }
}

impl Drop for FrontDoor {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The current Unix time in seconds.
#[must_use]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A paid transaction as WeChat Pay reports it for `no`: our appid and
/// mchid, `total` fen in CNY.
#[must_use]
pub fn paid_transaction(no: &str, total: i64, transaction_id: &str) -> Value {
    serde_json::json!({
        "appid": APPID,
        "mchid": wechatpay_sim::DEFAULT_MCHID,
        "out_trade_no": no,
        "transaction_id": transaction_id,
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "attach": "",
        "success_time": "2026-11-26T18:30:00+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
    })
}

/// A GET to `http://{addr}{path}` with an optional bearer token: status and
/// body (any status; 0 and the error when there was no answer).
#[must_use]
pub fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut req = agent.get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    match req.call() {
        Ok(mut resp) => (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// The value of one sample (`name{labels}` exactly as exposed, or a bare
/// name) in a Prometheus text exposition, as a count; 0 when absent.
#[must_use]
pub fn sample(exposition: &str, series: &str) -> i64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0, count)
}

/// The sum of every sample of `name` whose labels contain all of `labels`
/// (`key="value"` strings), as a count.
#[must_use]
pub fn sum_of(exposition: &str, name: &str, labels: &[&str]) -> i64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|want| rest.contains(want))).then(|| count(value))
        })
        .sum()
}

fn count(value: &str) -> i64 {
    let v: f64 = value
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {value:?}"));
    assert!(v.fract().abs() < f64::EPSILON, "not a count: {value}");
    v as i64
}

/// What a process wrote to stderr, as text.
#[must_use]
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[must_use]
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A database and a vhost for one test, and the producer binary pointed at
/// both (the binary's path comes from the test: `CARGO_BIN_EXE_*` exists
/// only in integration tests).
#[derive(Debug)]
pub struct Env {
    pub db: TestDb,
    pub vhost: TestVhost,
    bin: std::path::PathBuf,
}

impl Env {
    /// `bin`: `env!("CARGO_BIN_EXE_order-producer")`.
    #[must_use]
    pub fn new(bin: &str) -> Self {
        Self {
            db: TestDb::new(),
            vhost: TestVhost::new(),
            bin: bin.into(),
        }
    }

    #[must_use]
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(&self.bin);
        c.args(args)
            .env("DATABASE_URL", self.db.url().expose_secret())
            .env("AMQP_URL", self.vhost.url().expose_secret())
            .env("RUST_LOG", "info")
            .env_remove("LOG_FORMAT")
            .env_remove("DELAY_WINDOWS")
            .env_remove("DELAY_TTL_MS")
            .env_remove("QUEUE_TYPE");
        c
    }

    #[must_use]
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("run order-producer")
    }

    /// Runs and asserts success; returns stdout (often unread: the call is
    /// for its assertion).
    #[allow(clippy::must_use_candidate)]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
        stdout(&out)
    }

    /// Takes every message from `queue` (no ack needed) and returns their
    /// message ids, in queue order.
    #[must_use]
    pub fn drain_ids(&self, queue: &str) -> Vec<String> {
        self.vhost
            .drain(queue)
            .into_iter()
            .map(|(_, props)| props.message_id().clone().expect("message_id"))
            .collect()
    }

    /// Ready messages in `queue`.
    #[must_use]
    pub fn depth(&self, queue: &str) -> u32 {
        self.vhost.depth(queue)
    }

    /// Creates `n` orders of one unit of SKU `TEA` directly in the store.
    #[must_use]
    pub fn orders(&self, n: usize, window: Duration) -> Vec<String> {
        let mut conn = self.db.conn();
        let line = domain::OrderLine {
            sku: domain::SkuCode::parse("TEA").unwrap(),
            quantity: domain::Quantity::new(1).unwrap(),
        };
        if domain::get_sku(&mut conn, &line.sku).unwrap().is_none() {
            let _ = domain::set_stock(
                &mut conn,
                &line.sku,
                domain::StockLevel::new(1_000_000).unwrap(),
                Some(domain::Fen::new(100).unwrap()),
            )
            .unwrap();
        }
        (0..n)
            .map(|_| {
                domain::create_order(&mut conn, std::slice::from_ref(&line), window)
                    .unwrap()
                    .order_no
                    .to_string()
            })
            .collect()
    }
}

pub use domain::testing::KillOnDrop;
