//! Connections, the r2d2 pool and the embedded migrations.
//!
//! The database URL may carry a password, so it travels as [`DatabaseUrl`],
//! whose `Debug` and `Display` never show it, and connection errors are
//! reported without the URL.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::{Position, Url};

use diesel::pg::PgConnection;
use diesel::r2d2::Pool;
use diesel::{Connection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::StoreError;
use crate::pool::{PgManager, RoundTrips, CHECK_IDLE_AFTER};

/// The schema, compiled into every binary that links this crate.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Key of the advisory lock that serialises concurrent `migrate` runs.
const MIGRATION_LOCK_KEY: i64 = 0x6f72_6465_725f_746f; // "order_to"

/// A pool of PostgreSQL connections.
pub type PgPool = Pool<PgManager>;

/// A connection checked out of a [`PgPool`]; it returns to the pool on drop.
pub type PooledConnection = diesel::r2d2::PooledConnection<PgManager>;

/// A PostgreSQL URL whose password never reaches logs, errors or `Debug`:
/// held as a [`SecretString`], read only through
/// [`DatabaseUrl::expose_secret`] (to connect).
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    /// The URL as given; libpq reads it, so anything libpq accepts is kept
    /// (its key=value form too, which prints as `[redacted: not a URL]`).
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The full URL, password included: only for handing to the driver.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// `text` with every occurrence of this URL's password (as written and
    /// percent-decoded) replaced by `***`: for driver messages that may
    /// quote parts of the URL.
    #[must_use]
    pub fn scrub(&self, text: &str) -> String {
        scrub_password(self.expose_secret(), text)
    }

    /// The URL with any password replaced by `***`.
    #[must_use]
    pub fn redacted(&self) -> String {
        redact_password(self.expose_secret())
    }
}

impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

impl Eq for DatabaseUrl {}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A URL read by the `url` crate. libpq also takes URLs that are not
/// WHATWG URLs, which `url` refuses: several hosts with ports
/// (`postgres://u:p@h1:5432,h2:5432/db`) or none before the path
/// (`postgres://u@/db?host=/run/postgresql`). Those are read with one
/// stand-in host, and `hosts` keeps the hosts as written, to be put back.
struct Parsed {
    url: Url,
    hosts: Option<String>,
}

/// Stands in for libpq's host list while `url` reads the rest.
const STAND_IN_HOST: &str = "libpq-hosts.invalid";

impl Parsed {
    fn new(text: &str) -> Option<Self> {
        // Without `://`, `url` would read `user:secret@host` as a scheme
        // and a path, the secret in the clear: not a URL of ours.
        let after_scheme = text.find("://")? + 3;
        if let Ok(url) = Url::parse(text) {
            return Some(Self { url, hosts: None });
        }
        // The host list ends the authority: it follows the last `@` (the
        // userinfo's end, as `url` reads it) before the path, query or
        // fragment.
        let rest = &text[after_scheme..];
        let authority_end = after_scheme + rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let hosts_start = text[after_scheme..authority_end]
            .rfind('@')
            .map_or(after_scheme, |i| after_scheme + i + 1);
        let stood_in = format!(
            "{}{STAND_IN_HOST}{}",
            &text[..hosts_start],
            &text[authority_end..]
        );
        let url = Url::parse(&stood_in).ok()?;
        Some(Self {
            url,
            hosts: Some(text[hosts_start..authority_end].to_owned()),
        })
    }

    /// The URL written out, hosts as given.
    fn write(&self) -> String {
        match &self.hosts {
            None => self.url.to_string(),
            Some(hosts) => format!(
                "{}{hosts}{}",
                &self.url[..Position::BeforeHost],
                &self.url[Position::AfterPort..]
            ),
        }
    }
}

/// `scheme://user:secret@host/db` -> `scheme://user:***@host/db`; also hides
/// a `password=` query parameter. Anything unparseable is hidden whole.
#[must_use]
pub fn redact_password(url: &str) -> String {
    let Some(mut parsed) = Parsed::new(url) else {
        return "[redacted: not a URL]".to_owned();
    };
    if parsed.url.password().is_some() {
        // Cannot fail: the URL has a host (it has a password).
        let _ = parsed.url.set_password(Some("***"));
    }
    if let Some(query) = parsed.url.query() {
        let query: Vec<&str> = query
            .split('&')
            .map(|kv| {
                if kv.to_ascii_lowercase().starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect();
        let query = query.join("&");
        parsed.url.set_query(Some(&query));
    }
    parsed.write()
}

/// The password in a URL's userinfo (`scheme://user:PASSWORD@host/...`),
/// percent-encoded as the `url` crate writes it, if there is one.
#[must_use]
pub fn password_of(url: &str) -> Option<String> {
    Parsed::new(url)?.url.password().map(str::to_owned)
}

/// `text` with every occurrence of `url`'s password replaced by `***`: as
/// the `url` crate writes it (which is how amiquip quotes it) and
/// percent-decoded (how the server and the driver know it).
#[must_use]
pub fn scrub_password(url: &str, text: &str) -> String {
    let Some(password) = password_of(url) else {
        return text.to_owned();
    };
    let mut out = text.replace(&password, "***");
    let decoded = percent_encoding::percent_decode_str(&password).decode_utf8_lossy();
    if !decoded.is_empty() && decoded != password {
        out = out.replace(decoded.as_ref(), "***");
    }
    out
}

/// `url` with its database (its path) replaced by `db`; the rest as the
/// `url` crate writes it.
#[must_use]
pub fn url_with_database(url: &str, db: &str) -> String {
    match Parsed::new(url) {
        Some(mut parsed) => {
            parsed.url.set_path(db);
            parsed.write()
        }
        None => url.to_owned(),
    }
}

/// The name of the database a URL points at (its path, without the
/// leading `/`), if any.
#[must_use]
pub fn database_name(url: &str) -> Option<String> {
    let parsed = Parsed::new(url)?;
    let db = parsed.url.path().strip_prefix('/')?;
    (!db.is_empty()).then(|| db.to_owned())
}

/// Creates the database `url` names unless it exists, connecting to the
/// `postgres` maintenance database on the same server. Returns whether it
/// created it. Repeat: `false`, nothing changes.
pub fn create_database_if_missing(url: &DatabaseUrl) -> Result<bool, StoreError> {
    use diesel::sql_types::{Bool, Text};
    #[derive(diesel::QueryableByName)]
    struct Exists {
        #[diesel(sql_type = Bool)]
        exists: bool,
    }
    let name = database_name(url.expose_secret())
        .ok_or_else(|| StoreError::Connect(format!("{url} names no database")))?;
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(StoreError::Connect(format!(
            "will not create database {name:?}: only A-Z a-z 0-9 _ are supported in its name"
        )));
    }
    let maintenance = DatabaseUrl::new(url_with_database(url.expose_secret(), "postgres"));
    let mut conn = connect(&maintenance)?;
    let exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<Text, _>(&name)
            .get_result::<Exists>(&mut conn)?
            .exists;
    if exists {
        return Ok(false);
    }
    match diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut conn) {
        Ok(_) => Ok(true),
        // Someone else created it meanwhile: fine.
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// One connection, for short-lived commands.
pub fn connect(url: &DatabaseUrl) -> Result<PgConnection, StoreError> {
    PgConnection::establish(url.expose_secret())
        .map_err(|e| StoreError::Connect(url.scrub(&format!("{}: {e}", url.redacted()))))
}

/// A pool of at most `max_size` connections. Fails fast (within
/// `connect_timeout`) when the database is unreachable, naming the URL
/// without its password. A connection idle for
/// [`CHECK_IDLE_AFTER`](crate::pool::CHECK_IDLE_AFTER) is checked before it
/// is handed out; one in steady use is not (see [`crate::pool`]).
pub fn build_pool(
    url: &DatabaseUrl,
    max_size: u32,
    connect_timeout: Duration,
) -> Result<PgPool, StoreError> {
    build_counted_pool(url, max_size, connect_timeout, None)
}

/// [`build_pool`], with `counter` counting what every connection sends.
pub fn build_counted_pool(
    url: &DatabaseUrl,
    max_size: u32,
    connect_timeout: Duration,
    counter: Option<&RoundTrips>,
) -> Result<PgPool, StoreError> {
    // Try one connection first: r2d2 would only report "timed out" after
    // its wait, hiding libpq's reason (refused, unknown database, ...).
    drop(connect(url)?);
    Pool::builder()
        .max_size(max_size)
        .min_idle(Some(0))
        .connection_timeout(connect_timeout)
        .test_on_check_out(true)
        .build(PgManager::new(
            url.expose_secret(),
            CHECK_IDLE_AFTER,
            counter.cloned(),
        ))
        .map_err(|e| StoreError::Connect(url.scrub(&format!("{}: {e}", url.redacted()))))
}

/// A connection from `pool`, or [`StoreError::Connect`] saying why none
/// came (the pool's timeout, the database unreachable).
pub fn checkout(pool: &PgPool) -> Result<PooledConnection, StoreError> {
    pool.get().map_err(|e| StoreError::Connect(e.to_string()))
}

/// Key of the advisory lock that lets one worker sweep at a time.
const SWEEP_LOCK_KEY: i64 = 0x6f74_5f73_7765_6570; // "ot_sweep"

/// The sweep's lock, held on one connection while a pass runs: only one
/// worker sweeps at a time. Dropping it releases the lock.
pub struct SweepLock<'c> {
    conn: &'c mut PgConnection,
}

impl std::fmt::Debug for SweepLock<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SweepLock").finish_non_exhaustive()
    }
}

impl<'c> SweepLock<'c> {
    /// Takes the lock on `conn` if nobody holds it (`None` when another
    /// session does). A session-level advisory lock: it dies with the
    /// connection, so a crashed worker never blocks the sweep for good.
    pub fn try_acquire(conn: &'c mut PgConnection) -> Result<Option<Self>, StoreError> {
        #[derive(diesel::QueryableByName)]
        struct Locked {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            locked: bool,
        }
        let locked = diesel::sql_query(format!(
            "SELECT pg_try_advisory_lock({SWEEP_LOCK_KEY}) AS locked"
        ))
        .get_result::<Locked>(conn)?
        .locked;
        Ok(locked.then_some(Self { conn }))
    }

    /// The connection that holds the lock, for the pass's own queries.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn
    }
}

impl Drop for SweepLock<'_> {
    fn drop(&mut self) {
        let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({SWEEP_LOCK_KEY})"))
            .execute(self.conn);
    }
}

/// Key of the advisory lock held by the one process that reads the
/// database and broker gauges for the metrics.
const COLLECTOR_LOCK_KEY: i64 = 0x6f74_5f67_6175_6765; // "ot_gauge"

/// Takes the metrics collector's lock on `conn` if nobody holds it: a
/// session-level advisory lock, held for as long as `conn` stays open (a
/// crashed collector's lock dies with its connection and another process
/// takes over).
pub fn try_collector_lock(conn: &mut PgConnection) -> Result<bool, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    Ok(diesel::sql_query(format!(
        "SELECT pg_try_advisory_lock({COLLECTOR_LOCK_KEY}) AS locked"
    ))
    .get_result::<Locked>(conn)?
    .locked)
}

/// Applies every pending embedded migration and returns the versions applied
/// (empty when the schema was already current). Concurrent callers queue on
/// an advisory lock, so two `migrate` runs at once are safe.
pub fn run_migrations(conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")).execute(conn)?;
    let result = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|e| StoreError::Migration(e.to_string()));
    diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")).execute(conn)?;
    result
}

/// One trivial query: the database answers (readiness probes).
pub fn ping(conn: &mut PgConnection) -> Result<(), StoreError> {
    diesel::sql_query("SELECT 1").execute(conn)?;
    Ok(())
}

/// Versions of embedded migrations not yet applied: empty when the schema is
/// current. Binaries check this at start-up instead of failing later. Writes
/// nothing: on a database never migrated, every migration is pending (diesel's
/// own look creates its bookkeeping table first, which a read-only check
/// must not, and which a role without CREATE cannot).
pub fn pending_migrations(conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
    use diesel::migration::MigrationSource;
    let bookkept = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "to_regclass('__diesel_schema_migrations') IS NOT NULL",
    ))
    .get_result::<bool>(conn)?;
    if !bookkept {
        return MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
            .map(|ms| ms.iter().map(|m| m.name().to_string()).collect())
            .map_err(|e| StoreError::Migration(e.to_string()));
    }
    conn.pending_migrations(MIGRATIONS)
        .map(|ms| ms.iter().map(|m| m.name().to_string()).collect())
        .map_err(|e| StoreError::Migration(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_in_userinfo_and_query() {
        assert_eq!(
            redact_password("postgres://app:s3cret@db:5432/orders"),
            "postgres://app:***@db:5432/orders"
        );
        assert_eq!(
            redact_password("postgres://app@db/orders?password=s3cret&sslmode=require"),
            "postgres://app@db/orders?password=***&sslmode=require"
        );
        assert_eq!(redact_password("postgres://db"), "postgres://db");
        assert_eq!(redact_password("s3cret"), "[redacted: not a URL]");
        assert_eq!(
            redact_password("app:s3cret@db/orders"),
            "[redacted: not a URL]"
        );
    }

    #[test]
    fn database_names_are_found_and_replaced() {
        assert_eq!(
            database_name("postgres://u@h:5432/orders?sslmode=disable").as_deref(),
            Some("orders")
        );
        assert_eq!(database_name("postgres://u@h:5432"), None);
        assert_eq!(
            url_with_database("postgres://u:p@h:5432/orders?sslmode=disable", "postgres"),
            "postgres://u:p@h:5432/postgres?sslmode=disable"
        );
        assert_eq!(url_with_database("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    fn debug_and_display_hide_the_password() {
        let url = DatabaseUrl::new("postgres://app:s3cret@db/orders");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(!url.to_string().contains("s3cret"));
        assert_eq!(url.expose_secret(), "postgres://app:s3cret@db/orders");
        assert_eq!(url.scrub("bad token near s3cret"), "bad token near ***");
        // The secret itself prints as secrecy's `[REDACTED]`, never the URL.
        assert!(!format!("{:?}", url.0).contains("s3cret"));
    }

    #[test]
    fn libpq_urls_that_are_not_whatwg_urls_keep_working() {
        // Several hosts with ports, and no host before the path: the `url`
        // crate refuses both, libpq takes both; the hosts are kept as given.
        let several =
            "postgres://app:s3cret@h1:5432,h2:5433/orders?target_session_attrs=read-write";
        assert_eq!(
            redact_password(several),
            "postgres://app:***@h1:5432,h2:5433/orders?target_session_attrs=read-write"
        );
        assert_eq!(password_of(several).as_deref(), Some("s3cret"));
        assert_eq!(database_name(several).as_deref(), Some("orders"));
        assert_eq!(
            url_with_database(several, "postgres"),
            "postgres://app:s3cret@h1:5432,h2:5433/postgres?target_session_attrs=read-write"
        );
        let socket = "postgres://app:s3cret@/orders?host=/run/postgresql";
        assert_eq!(
            redact_password(socket),
            "postgres://app:***@/orders?host=/run/postgresql"
        );
        assert_eq!(database_name(socket).as_deref(), Some("orders"));
        for as_given in [
            "postgres:///orders?host=/run/postgresql",
            "postgres://%2Frun%2Fpostgresql/orders",
            "postgres://app:***@[::1]:5432/orders?sslmode=verify-full",
            "postgresql://app@Db.Example.com/Orders",
        ] {
            assert_eq!(redact_password(as_given), as_given);
        }
        // libpq's key=value form is no URL: hidden whole, passed on as is.
        let keywords = DatabaseUrl::new("host=db password=s3cret");
        assert_eq!(keywords.to_string(), "[redacted: not a URL]");
        assert_eq!(keywords.expose_secret(), "host=db password=s3cret");
    }

    #[test]
    fn a_password_is_scrubbed_as_written_and_decoded() {
        let url = DatabaseUrl::new("postgres://app:s%40cret@db/orders");
        assert_eq!(url.to_string(), "postgres://app:***@db/orders");
        assert_eq!(
            url.scrub("for app:s%40cret, that is s@cret"),
            "for app:***, that is ***"
        );
        // A `%` before a wide character once panicked a hand-written decoder.
        let url = DatabaseUrl::new("postgres://app:%中x@db/orders");
        assert_eq!(url.to_string(), "postgres://app:***@db/orders");
        assert_eq!(url.scrub("refused app:%中x"), "refused app:***");
    }
}
