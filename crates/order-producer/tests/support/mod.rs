//! Shared by the test binaries: a database and a vhost per test, and the
//! producer binary pointed at both.
#![allow(dead_code)] // each test binary uses a different part

use std::process::{Command, Output};
use std::time::Duration;

use broker::testing::TestVhost;
use domain::testing::TestDb;

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A database and a vhost for one test, and the producer pointed at both.
pub struct Env {
    pub db: TestDb,
    pub vhost: TestVhost,
}

impl Env {
    pub fn new() -> Self {
        Self {
            db: TestDb::new(),
            vhost: TestVhost::new(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_order-producer"));
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

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run order-producer")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {}", stderr(&out));
        stdout(&out)
    }

    /// Takes every message from `queue` (no ack needed) and returns their
    /// message ids, in queue order.
    pub fn drain_ids(&self, queue: &str) -> Vec<String> {
        self.vhost
            .drain(queue)
            .into_iter()
            .map(|(_, props)| props.message_id().clone().expect("message_id"))
            .collect()
    }

    /// Ready messages in `queue`.
    pub fn depth(&self, queue: &str) -> u32 {
        self.vhost.depth(queue)
    }

    /// Creates `n` orders of one unit of SKU `TEA` directly in the store.
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
