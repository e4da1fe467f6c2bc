//! Test support (feature `test-support`): a fresh, migrated PostgreSQL
//! database per test, dropped when the test ends.
//!
//! The schema is migrated once into a template database named after a hash
//! of the migrations (`ot_tmpl_<hash>`), built under an advisory lock and
//! renamed into place only when complete, so concurrent test processes share
//! it and a crashed build never leaves a half-migrated template. Each test
//! then gets `CREATE DATABASE ... TEMPLATE`, which takes milliseconds.
//! `scripts/test.sh` drops the templates when the suite is done.
//!
//! The server is `TEST_DATABASE_URL` (any database on it the user may connect
//! to; default `postgres://postgres@127.0.0.1:5432/postgres`). The user must
//! be allowed to create databases.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use diesel::{Connection, PgConnection, RunQueryDsl};

use crate::db::{build_pool, run_migrations, DatabaseUrl, PgPool};

const TEMPLATE_LOCK_KEY: i64 = 0x6f74_5f74_6d70_6c00; // "ot_tmpl"
/// Held (shared) by every test process that uses a template, for its whole
/// life; `scripts/drop-test-templates.sh` drops the templates only when it
/// can take it exclusively, so a suite never loses its template to another
/// suite finishing beside it. The script spells the key in decimal:
/// 8031148989165366273.
pub const TEMPLATE_IN_USE_KEY: i64 = 0x6f74_5f74_6d70_6c01;

/// The session that holds [`TEMPLATE_IN_USE_KEY`] for this process.
static TEMPLATE_IN_USE: OnceLock<std::sync::Mutex<PgConnection>> = OnceLock::new();

/// The server's admin URL for tests.
#[must_use]
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub use crate::db::url_with_database;

fn admin_conn() -> PgConnection {
    PgConnection::establish(&admin_url()).unwrap_or_else(|e| {
        panic!(
            "tests need PostgreSQL at {} ({e}); start it or set TEST_DATABASE_URL",
            crate::db::redact_password(&admin_url())
        )
    })
}

fn migrations_hash() -> u64 {
    let mut hasher = DefaultHasher::new();
    // The SQL the embedded migrations were built from, names and contents.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");
    let mut files: Vec<_> = walk(std::path::Path::new(dir));
    files.sort();
    for f in files {
        f.strip_prefix(dir).unwrap_or(&f).hash(&mut hasher);
        std::fs::read(&f).expect("read migration").hash(&mut hasher);
    }
    hasher.finish()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The migrated template database, built on first use.
pub fn template() -> &'static str {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let name = format!("ot_tmpl_{:016x}", migrations_hash());
        let mut admin = admin_conn();
        diesel::sql_query(format!("SELECT pg_advisory_lock({TEMPLATE_LOCK_KEY})"))
            .execute(&mut admin)
            .expect("advisory lock");
        if !database_exists(&mut admin, &name) {
            let building = format!("{name}_building");
            diesel::sql_query(format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
                .execute(&mut admin)
                .expect("drop stale template");
            diesel::sql_query(format!("CREATE DATABASE {building}"))
                .execute(&mut admin)
                .expect("create template");
            {
                let mut conn = PgConnection::establish(&url_with_database(&admin_url(), &building))
                    .expect("connect to template");
                run_migrations(&mut conn).expect("migrate template");
            }
            diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {name}"))
                .execute(&mut admin)
                .expect("rename template");
        }
        diesel::sql_query(format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK_KEY})"))
            .execute(&mut admin)
            .expect("advisory unlock");
        // Keep the session (and its shared lock) open until the process ends.
        diesel::sql_query(format!(
            "SELECT pg_advisory_lock_shared({TEMPLATE_IN_USE_KEY})"
        ))
        .execute(&mut admin)
        .expect("shared advisory lock");
        let _ = TEMPLATE_IN_USE.set(std::sync::Mutex::new(admin));
        name
    })
}

fn database_exists(conn: &mut PgConnection, name: &str) -> bool {
    use diesel::sql_types::{Bool, Text};
    #[derive(diesel::QueryableByName)]
    struct Exists {
        #[diesel(sql_type = Bool)]
        exists: bool,
    }
    diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
        .bind::<Text, _>(name)
        .get_result::<Exists>(conn)
        .expect("query pg_database")
        .exists
}

/// A fresh migrated database, dropped (connections and all) on drop.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: DatabaseUrl,
}

impl TestDb {
    /// Creates the database from the template. Panics with a clear message
    /// when PostgreSQL is unreachable: tests cannot run without it.
    #[must_use]
    pub fn new() -> Self {
        Self::create(Some(template()))
    }

    /// An empty database, not migrated: for testing migrations themselves.
    #[must_use]
    pub fn empty() -> Self {
        Self::create(None)
    }

    fn create(template: Option<&str>) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        init_test_logging();
        let name = format!(
            "ot_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let mut admin = admin_conn();
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {name} TEMPLATE {t}"),
            None => format!("CREATE DATABASE {name}"),
        };
        diesel::sql_query(sql)
            .execute(&mut admin)
            .expect("create test database");
        let url = DatabaseUrl::new(url_with_database(&admin_url(), &name));
        Self { name, url }
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// A new connection to this database.
    #[must_use]
    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(self.url.expose_secret()).expect("connect to test database")
    }

    /// A pool of `size` connections to this database.
    #[must_use]
    pub fn pool(&self, size: u32) -> PgPool {
        build_pool(&self.url, size, std::time::Duration::from_secs(5)).expect("test pool")
    }
}

impl Default for TestDb {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&admin_url()) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin);
        }
    }
}

/// Logs in tests only when asked for: `TEST_LOG=1` (or any `RUST_LOG`-style
/// filter in `TEST_LOG`).
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let filter = if filter == "1" {
            "debug".to_owned()
        } else {
            filter
        };
        let _ = env_logger::Builder::new()
            .parse_filters(&filter)
            .is_test(true)
            .try_init();
    }
}

/// A child process killed (SIGKILL) when dropped, so a failing test never
/// leaves a relay or worker running.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Drops the database `name` (connections and all), on the test server.
/// For tests of what creates a missing database.
pub fn drop_database(name: &str) {
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin_conn())
        .expect("drop database");
}

/// Benchmarks: `n` pending orders `bench0000000001`.. of one unit of SKU
/// `sku` at 100 fen, inserted in one statement, their stock held (the SKU's
/// stock is set to 0 after, as if the units had been reserved). With
/// `overdue`, their deadline passed a minute ago; otherwise it is 30 minutes
/// ahead and each order has an outbox row (for the relay benchmark).
pub fn bulk_orders(conn: &mut PgConnection, sku: &str, n: usize, overdue: bool) {
    let (deadline, created) = if overdue {
        (
            "now() - interval '1 minute'",
            "now() - interval '31 minutes'",
        )
    } else {
        ("now() + interval '30 minutes'", "now()")
    };
    let then = if overdue {
        format!(
            "INSERT INTO order_items (order_id, sku_id, quantity, unit_price_fen)
             SELECT o.id, s.id, 1, 100 FROM o, skus s WHERE s.code = '{sku}'"
        )
    } else {
        "INSERT INTO outbox (order_id) SELECT id FROM o ORDER BY id".to_owned()
    };
    diesel::sql_query(format!(
        "WITH o AS (
           INSERT INTO orders (order_no, status, total_fen, deadline, created_at, updated_at)
           SELECT 'bench' || lpad(g::text, 10, '0'), 'pending_payment', 100, {deadline}, {created}, now()
             FROM generate_series(1, {n}) g
           RETURNING id)
         {then}"
    ))
    .execute(conn)
    .expect("bulk insert orders");
    if overdue {
        diesel::sql_query(format!("UPDATE skus SET stock = 0 WHERE code = '{sku}'"))
            .execute(conn)
            .expect("hold the stock");
    }
}

/// Benchmarks: for every order, milliseconds from its deadline to its
/// settlement (closed, else last update), sorted.
#[must_use]
pub fn settlement_lags_ms(conn: &mut PgConnection) -> Vec<f64> {
    #[derive(diesel::QueryableByName)]
    struct Lag {
        #[diesel(sql_type = diesel::sql_types::Double)]
        ms: f64,
    }
    let mut lags: Vec<f64> = diesel::sql_query(
        "SELECT (EXTRACT(EPOCH FROM (COALESCE(closed_at, updated_at) - deadline)) * 1000)::double precision AS ms FROM orders",
    )
    .load::<Lag>(conn)
    .expect("read lags")
    .into_iter()
    .map(|l| l.ms)
    .collect();
    lags.sort_by(f64::total_cmp);
    lags
}

/// Tests: when each settled order was settled (closed, else last update),
/// in no particular order.
#[must_use]
pub fn settlement_times(conn: &mut PgConnection) -> Vec<chrono::DateTime<chrono::Utc>> {
    #[derive(diesel::QueryableByName)]
    struct At {
        #[diesel(sql_type = diesel::sql_types::Timestamptz)]
        at: chrono::DateTime<chrono::Utc>,
    }
    diesel::sql_query(
        "SELECT COALESCE(closed_at, updated_at) AS at FROM orders WHERE status <> 'pending_payment'",
    )
    .load::<At>(conn)
    .expect("read settlement times")
    .into_iter()
    .map(|a| a.at)
    .collect()
}

/// Tests: the order numbers with more than one event of `kind` (a close or
/// a payment recorded twice would show here).
#[must_use]
pub fn orders_with_more_than_one_event(conn: &mut PgConnection, kind: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct No {
        #[diesel(sql_type = diesel::sql_types::Text)]
        order_no: String,
    }
    diesel::sql_query(
        "SELECT o.order_no FROM order_events e JOIN orders o ON o.id = e.order_id \
         WHERE e.kind = $1 GROUP BY o.order_no HAVING count(*) > 1",
    )
    .bind::<diesel::sql_types::Text, _>(kind)
    .load::<No>(conn)
    .expect("read events")
    .into_iter()
    .map(|n| n.order_no)
    .collect()
}

/// Polls `probe` every 20 ms until it gives a value or `limit` has passed
/// (then `None`): the one wait-on-a-condition loop of the tests, instead of
/// fixed sleeps.
#[must_use = "None means the condition never came: assert on it"]
pub fn wait_for<T>(limit: std::time::Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if started.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Invariant 3 over every SKU: stock + held by pending and paid orders ==
/// everything ever loaded. Refuses a store without SKUs, over which the
/// check would hold vacuously.
pub fn assert_stock_conserved(conn: &mut PgConnection) {
    let balances = crate::stock_balances(conn).unwrap();
    assert!(!balances.is_empty(), "no SKU to check conservation on");
    for b in balances {
        assert!(b.is_conserved(), "stock not conserved: {b:?}");
    }
}
