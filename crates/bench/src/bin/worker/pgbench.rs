//! The PostgreSQL baseline: pgbench doing the writes of the bench mix's
//! settlements and nothing else, one settlement per transaction
//! (scripts/pgbench/: 60% close on `ORDER_NOT_EXIST`, 30% close after
//! NOTPAY, 10% paid), 2 clients, against a fresh database of pending
//! orders. Every transaction settles its own pending order: each client
//! counts its transactions and takes the ids `k * clients + client_id + 1`,
//! so no transaction finds its order settled already (checked after).
//! PostgreSQL's CPU is measured as in the throughput runs.

use std::process::Command;
use std::time::Duration;

use diesel::RunQueryDsl;
use domain::testing::TestDb;

use crate::procfs::{Sample, Usage};

/// What one pgbench run measured.
#[derive(Debug, Clone)]
pub struct Pgbench {
    pub transactions: u64,
    pub tps: f64,
    pub usage: Usage,
    /// Why the machine was not quiet before the run, if it was not.
    pub not_quiet: Option<String>,
}

impl Pgbench {
    /// PostgreSQL CPU per transaction, ms.
    pub fn pg_ms(&self) -> f64 {
        self.usage.postgres * 1000.0 / self.transactions as f64
    }
}

#[derive(diesel::QueryableByName)]
struct Number {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn number(conn: &mut diesel::PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Number>(conn)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .n
}

/// Runs `per_client` transactions on each of `clients` clients.
pub fn run(clients: u32, per_client: u32) -> Pgbench {
    let total = u64::from(clients) * u64::from(per_client);
    let db = TestDb::new();
    let sku = {
        let mut conn = db.conn();
        let tea = domain::SkuCode::parse("TEA").unwrap();
        let _ = domain::set_stock(
            &mut conn,
            &tea,
            domain::StockLevel::new(total as u32).unwrap(),
            Some(domain::Fen::new(100).unwrap()),
        )
        .unwrap();
        domain::testing::bulk_orders(&mut conn, "TEA", total as usize, true);
        // The scripts take order id = its number: true in a fresh database.
        let ids = number(
            &mut conn,
            "SELECT count(*) AS n FROM orders WHERE order_no = 'bench' || lpad(id::text, 10, '0')",
        );
        assert_eq!(ids, total as i64, "order ids do not match their numbers");
        // A checkpoint now rather than during the run (autovacuum is off here).
        let _ = diesel::sql_query("CHECKPOINT").execute(&mut conn);
        number(&mut conn, "SELECT id AS n FROM skus WHERE code = 'TEA'")
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pgbench");
    let bin = std::env::var("PGBENCH").unwrap_or_else(|_| "pgbench".into());
    let not_quiet = crate::procfs::wait_quiet(db.name(), Duration::from_secs(30));
    let before = Sample::take(None, db.name());
    let out = Command::new(&bin)
        .args(["-n", "-M", "prepared"])
        .args(["-c", &clients.to_string(), "-t", &per_client.to_string()])
        .args(["-D", "k=0", "-D", &format!("nclients={clients}")])
        .args(["-D", &format!("sku={sku}")])
        .arg("-f")
        .arg(format!("{dir}/close_not_exist.sql@6"))
        .arg("-f")
        .arg(format!("{dir}/close_notpay.sql@3"))
        .arg("-f")
        .arg(format!("{dir}/pay.sql@1"))
        .arg(db.url().expose_secret())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin} ({e}): install pgbench (postgresql-client) or set PGBENCH")
        });
    // Let the two backends exit and be reaped: their CPU is then in the
    // postmaster's cutime, counted either way.
    std::thread::sleep(Duration::from_millis(200));
    let after = Sample::take(None, db.name());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let mut conn = db.conn();
    let settled = number(
        &mut conn,
        "SELECT count(*) AS n FROM orders WHERE status <> 'pending_payment'",
    );
    let events = number(&mut conn, "SELECT count(*) AS n FROM order_events");
    assert_eq!(
        (settled, events),
        (total as i64, total as i64),
        "pgbench settled {settled} orders with {events} events, expected {total} distinct ones"
    );
    Pgbench {
        transactions: total,
        tps,
        usage: Usage::between(&before, &after),
        not_quiet,
    }
}
