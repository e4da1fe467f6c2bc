//! Shared by the worker's test binaries: a database, a vhost, the
//! simulator in-process and helpers to run scenarios through them.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use broker::testing::TestVhost;
use broker::{QueueType, Topology};
use domain::testing::{wait_for, TestDb};
use domain::{OrderNo, OrderStatus};
use order_timeout_worker::{ConsumerSettings, Settler, Worker};
use service::Outcome;
use wechatpay_sim::{ClientFiles, SimKeys, Simulator};

pub(crate) const WINDOW: Duration = Duration::from_millis(300);
/// The total of [`Stack::order`]'s orders, in fen.
pub(crate) const ORDER_TOTAL_FEN: i64 = 100;

fn keys() -> &'static SimKeys {
    SimKeys::shared()
}

/// A temporary directory (removed on drop) and a free loopback port: the
/// front door's test helpers, one home for both.
#[allow(unused_imports)] // each test binary uses a different part
pub(crate) use order_producer::testing::{free_port, TempDir};

/// Everything one scenario needs.
pub(crate) struct Stack {
    pub db: TestDb,
    pub vhost: TestVhost,
    pub sim: Simulator,
    pub files: ClientFiles,
    pub topology: Topology,
    /// What the settlers of this stack use; long by default, so that the
    /// recheck after an `ORDER_NOT_EXIST` close stays out of scenarios that
    /// do not look for it.
    pub recheck_after: Duration,
    _dir: TempDir,
}

pub(crate) fn short_topology() -> Topology {
    Topology::single(WINDOW, QueueType::Classic)
        .unwrap()
        .with_retry_delays(&[
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(400),
        ])
        .unwrap()
}

impl Stack {
    pub(crate) fn new() -> Self {
        let db = TestDb::new();
        let vhost = TestVhost::new();
        let dir = TempDir::new().unwrap();
        let files = keys().write_client_files(dir.path()).unwrap();
        let sim =
            Simulator::start("127.0.0.1:0", keys(), wechatpay_sim::SimConfig::default()).unwrap();
        let topology = short_topology();
        let mut conn = broker::connect(vhost.url()).unwrap();
        topology.declare(&mut conn, vhost.url()).unwrap();
        let _ = conn.close();
        let mut c = db.conn();
        // 50 fen each: an order of 2 TEA costs 100 fen, the simulator's
        // default amount, so a simulated payment matches the order.
        for (sku, n) in [("TEA", 1000), ("MUG", 1000)] {
            let _ = domain::set_stock(
                &mut c,
                &domain::SkuCode::parse(sku).unwrap(),
                domain::StockLevel::new(n).unwrap(),
                Some(domain::Fen::new(ORDER_TOTAL_FEN / 2).unwrap()),
            )
            .unwrap();
        }
        Self {
            db,
            vhost,
            sim,
            files,
            topology,
            recheck_after: Duration::from_hours(1),
            _dir: dir,
        }
    }

    pub(crate) fn payment_config(&self) -> payment_client::Config {
        payment_client::Config::new(
            wechatpay_sim::DEFAULT_MCHID,
            wechatpay_sim::DEFAULT_MERCHANT_SERIAL_NO,
            &self.files.merchant_key_file,
        )
        .with_public_key(
            wechatpay_sim::DEFAULT_PUBLIC_KEY_ID,
            &self.files.wechatpay_public_key_file,
        )
        .with_base_url(self.sim.base_url())
        .with_timeouts(Duration::from_millis(500), Duration::from_secs(2))
    }

    pub(crate) fn settler(&self) -> Settler {
        let client = payment_client::Client::new(self.payment_config()).unwrap();
        Settler::new(self.db.pool(10), Arc::new(client)).with_recheck_after(self.recheck_after)
    }

    #[allow(clippy::unused_self)] // a method so that scenarios read stack.settings()
    pub(crate) fn settings(&self) -> ConsumerSettings {
        ConsumerSettings {
            concurrency: 4,
            prefetch: 2,
            max_attempts: 4,
            sweep_interval: Duration::from_hours(1),
            sweep_grace: Duration::from_mins(5),
            sweep_batch: 100,
            summary_interval: Duration::from_hours(1),
            refund_interval: Duration::from_hours(1),
            refund_notify_url: None,
        }
    }

    /// Starts a worker in this process; stop it with [`Running::stop`].
    pub(crate) fn start(&self, settings: ConsumerSettings) -> Running {
        self.start_with(self.settler(), settings)
    }

    /// [`Stack::start`] with this settler (keep a clone to look into it).
    pub(crate) fn start_with(&self, settler: Settler, settings: ConsumerSettings) -> Running {
        let worker = Worker::new(
            settler,
            self.topology.clone(),
            self.vhost.url().clone(),
            settings,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let summary = worker.summary();
        let handle = std::thread::spawn(move || worker.run(&flag));
        Running {
            stop,
            summary,
            handle: Some(handle),
        }
    }

    /// A new order of one TEA (and one MUG when `two_lines`), window 300 ms.
    pub(crate) fn order(&self) -> OrderNo {
        self.order_with_window(WINDOW)
    }

    pub(crate) fn order_with_window(&self, window: Duration) -> OrderNo {
        let lines = [domain::OrderLine {
            sku: domain::SkuCode::parse("TEA").unwrap(),
            quantity: domain::Quantity::new(2).unwrap(),
        }];
        domain::create_order(&mut self.db.conn(), &lines, window)
            .unwrap()
            .order_no
    }

    /// Publishes every outbox row, as the relay does.
    pub(crate) fn relay(&self) {
        let mut relay = order_producer::relay::Relay::new(
            self.db.url().clone(),
            self.vhost.url().clone(),
            self.topology.clone(),
            order_producer::relay::Settings {
                batch_size: 500,
                poll_interval: Duration::from_millis(50),
                confirm_timeout: Duration::from_secs(10),
                max_backoff: Duration::from_secs(1),
            },
        );
        relay.drain().unwrap();
    }

    /// Puts the order's timeout message straight into `queue.ordertimeout`,
    /// as if it had just been dead-lettered, without declaring anything (the
    /// relay would declare the topology again).
    pub(crate) fn dead_letter(&self, no: &OrderNo) {
        self.dead_letter_to(self.vhost.url(), no);
    }

    /// [`Stack::dead_letter`] on the broker at `url`.
    pub(crate) fn dead_letter_to(&self, url: &broker::AmqpUrl, no: &OrderNo) {
        let order = domain::find_order(&mut self.db.conn(), no)
            .unwrap()
            .unwrap();
        let message = broker::TimeoutMessage {
            order_no: no.clone(),
            created_at: order.created_at,
            deadline: order.deadline,
        };
        let mut conn = broker::connect(url).unwrap();
        let mut publisher =
            broker::ConfirmedPublisher::open(&mut conn, url, Duration::from_secs(10)).unwrap();
        let outcome = publisher
            .publish_one(
                broker::topology::TIMEOUT_QUEUE,
                &message.body(),
                message.properties(chrono::Utc::now()),
            )
            .unwrap();
        assert_eq!(outcome, broker::Confirmation::Confirmed);
        let _ = conn.close();
    }

    pub(crate) fn status(&self, no: &OrderNo) -> OrderStatus {
        domain::find_order(&mut self.db.conn(), no)
            .unwrap()
            .unwrap()
            .status
    }

    /// Waits until the order is no longer pending; panics after `limit`.
    pub(crate) fn wait_settled(&self, no: &OrderNo, limit: Duration) -> OrderStatus {
        wait_for(limit, || {
            Some(self.status(no)).filter(|st| *st != OrderStatus::PendingPayment)
        })
        .unwrap_or_else(|| panic!("order {no} still pending after {limit:?}"))
    }

    /// Ready messages in a queue of this vhost.
    pub(crate) fn depth(&self, queue: &str) -> u32 {
        self.vhost.depth(queue)
    }

    /// Waits until a worker consumes `queue.ordertimeout` (its start-up
    /// checks are behind it).
    pub(crate) fn wait_consuming(&self, limit: Duration) {
        assert!(
            wait_for(limit, || (self.vhost.consumers("queue.ordertimeout") > 0)
                .then_some(()))
            .is_some(),
            "no consumer after {limit:?}"
        );
    }

    /// Waits until `queue` holds `n` messages.
    pub(crate) fn wait_depth(&self, queue: &str, n: u32, limit: Duration) {
        assert!(
            wait_for(limit, || (self.depth(queue) == n).then_some(())).is_some(),
            "{queue} holds {} messages, not {n}, after {limit:?}",
            self.depth(queue)
        );
    }

    /// Takes every message from `queue`: (body, properties).
    pub(crate) fn drain(&self, queue: &str) -> Vec<(Vec<u8>, broker::AmqpProperties)> {
        self.vhost.drain(queue)
    }

    pub(crate) fn stock(&self, sku: &str) -> u32 {
        domain::get_sku(&mut self.db.conn(), &domain::SkuCode::parse(sku).unwrap())
            .unwrap()
            .unwrap()
            .stock
    }

    /// Invariant 3 after every scenario.
    pub(crate) fn assert_conserved(&self) {
        domain::testing::assert_stock_conserved(&mut self.db.conn());
    }

    /// The simulator's view of an order's state.
    pub(crate) fn sim_state(&self, no: &OrderNo) -> Option<String> {
        self.sim
            .admin()
            .order(no.as_str())
            .unwrap()
            .map(|o| o.trade_state)
    }

    pub(crate) fn sim_put(&self, no: &OrderNo, state: &str) {
        let _ = self
            .sim
            .admin()
            .put_order(no.as_str(), &wechatpay_sim::Order::in_state(state))
            .unwrap();
    }
}

/// The `x-ot-reason` code and `x-ot-detail` text of a parked or retried copy.
pub(crate) fn reason_of(props: &broker::AmqpProperties) -> (String, String) {
    let text = |key| broker::headers::text_of(props, key).unwrap_or_default();
    (text(broker::headers::REASON), text(broker::headers::DETAIL))
}

/// A worker running in a thread of this process.
pub(crate) struct Running {
    stop: Arc<AtomicBool>,
    summary: Arc<order_timeout_worker::Summary>,
    handle: Option<JoinHandle<()>>,
}

impl Running {
    /// Waits until the worker has counted at least `n` settlement attempts
    /// with `outcome` since it started.
    pub(crate) fn wait_outcomes(&self, outcome: Outcome, n: u64, limit: Duration) {
        assert!(
            wait_for(limit, || (self.summary.total(outcome) >= n).then_some(())).is_some(),
            "{} {outcome} outcome(s), not {n}, after {limit:?}",
            self.summary.total(outcome)
        );
    }

    /// The summary line of what happened since the last one.
    pub(crate) fn summary(&self) -> Option<String> {
        self.summary.take()
    }

    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A minimal HTTP CONNECT proxy on 127.0.0.1 that tunnels to wherever it is
/// asked and remembers each request line it saw (and whether it carried
/// `Proxy-Authorization`), to tell whether WeChat Pay calls went through it.
pub(crate) struct RecordingProxy {
    pub addr: std::net::SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<String>>>,
}

impl RecordingProxy {
    pub(crate) fn start() -> Self {
        use std::io::{BufRead, BufReader, Write};
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(client.try_clone().unwrap());
                    let mut first = String::new();
                    if reader.read_line(&mut first).is_err() {
                        return;
                    }
                    let mut authorized = false;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        authorized |= line
                            .to_ascii_lowercase()
                            .starts_with("proxy-authorization:");
                    }
                    let entry = format!(
                        "{}{}",
                        first.trim_end(),
                        if authorized { " (authorized)" } else { "" }
                    );
                    log.lock().unwrap().push(entry);
                    let Some(target) = first
                        .strip_prefix("CONNECT ")
                        .and_then(|r| r.split_whitespace().next())
                    else {
                        return;
                    };
                    let Ok(upstream) = TcpStream::connect(target) else {
                        return;
                    };
                    let mut client = client;
                    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
                    let (mut up_read, mut up_write) = (upstream.try_clone().unwrap(), upstream);
                    let mut client_write = client.try_clone().unwrap();
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut up_read, &mut client_write);
                    });
                    // What the reader buffered belongs to the tunnel too.
                    let _ = up_write.write_all(reader.buffer());
                    let mut rest = reader.into_inner();
                    let _ = std::io::copy(&mut rest, &mut up_write);
                });
            }
        });
        Self { addr, seen }
    }

    pub(crate) fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The known mix the metrics tests settle: 3 orders never at WeChat Pay, 2
/// unpaid there (`NOTPAY`), 2 paid, 1 paid 1 fen (an anomaly).
pub(crate) struct Mix {
    pub untouched: Vec<OrderNo>,
    pub unpaid: Vec<OrderNo>,
    pub paid: Vec<OrderNo>,
    pub tampered: OrderNo,
}

impl Stack {
    /// Creates the [`Mix`] (orders here, states at the simulator).
    pub(crate) fn create_mix(&self) -> Mix {
        let paid_at_wechat = |tx: &str, fen: i64| wechatpay_sim::Order {
            trade_state: "SUCCESS".into(),
            amount_total: fen,
            transaction_id: Some(tx.into()),
            success_time: Some("2026-11-26T18:30:00+08:00".into()),
            ..Default::default()
        };
        let put = |no: &OrderNo, order: &wechatpay_sim::Order| {
            let _ = self.sim.admin().put_order(no.as_str(), order).unwrap();
        };
        let untouched = (0..3).map(|_| self.order()).collect();
        let unpaid: Vec<_> = (0..2).map(|_| self.order()).collect();
        for no in &unpaid {
            self.sim_put(no, "NOTPAY");
        }
        let paid: Vec<_> = (0..2).map(|_| self.order()).collect();
        for (i, no) in paid.iter().enumerate() {
            put(
                no,
                &paid_at_wechat(&format!("4200000000202611260000{i}"), ORDER_TOTAL_FEN),
            );
        }
        let tampered = self.order();
        put(&tampered, &paid_at_wechat("42000000002026112600009", 1));
        Mix {
            untouched,
            unpaid,
            paid,
            tampered,
        }
    }

    /// The `order-timeout-worker` binary pointed at this stack (its
    /// database, vhost, simulator, the short topology), with `args`.
    pub(crate) fn worker_command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_order-timeout-worker"));
        c.args(args)
            .env("DATABASE_URL", self.db.url().expose_secret())
            .env("AMQP_URL", self.vhost.url().expose_secret())
            .env("DELAY_TTL_MS", "300")
            .env("RETRY_DELAYS", "100ms,200ms,400ms")
            .envs(self.files.worker_env(&self.sim.base_url()))
            .env("RUST_LOG", "info")
            .env_remove("LOG_FORMAT")
            .env_remove("DELAY_WINDOWS")
            .env_remove("QUEUE_TYPE");
        c
    }
}
