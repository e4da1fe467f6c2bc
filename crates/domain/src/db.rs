//! Connections, the r2d2 pool and the embedded migrations.
//!
//! The database URL may carry a password, so it travels as [`DatabaseUrl`],
//! whose `Debug` and `Display` never show it, and connection errors are
//! reported without the URL.

use std::fmt;
use std::time::Duration;

use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::{Connection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::StoreError;

/// The schema, compiled into every binary that links this crate.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Key of the advisory lock that serialises concurrent `migrate` runs.
const MIGRATION_LOCK_KEY: i64 = 0x6f72_6465_725f_746f; // "order_to"

/// A pool of PostgreSQL connections.
pub type PgPool = Pool<ConnectionManager<PgConnection>>;

/// A PostgreSQL URL whose password never reaches logs, errors or `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The full URL, password included: only for handing to the driver.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of this URL's password replaced by `***`:
    /// for driver messages that may quote parts of the URL.
    #[must_use]
    pub fn scrub(&self, text: &str) -> String {
        match password_of(&self.0) {
            Some(pw) if !pw.is_empty() => text.replace(pw, "***"),
            _ => text.to_owned(),
        }
    }

    /// The URL with any password replaced by `***`.
    #[must_use]
    pub fn redacted(&self) -> String {
        redact_password(&self.0)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `scheme://user:secret@host/db` -> `scheme://user:***@host/db`; also hides
/// a `password=` query parameter. Anything unparseable is hidden whole.
#[must_use]
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[redacted: not a URL]".to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| {
                    if kv.to_ascii_lowercase().starts_with("password=") {
                        "password=***".to_owned()
                    } else {
                        kv.to_owned()
                    }
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo.split_once(':').map(|(_, pw)| pw)
}

/// One connection, for short-lived commands.
pub fn connect(url: &DatabaseUrl) -> Result<PgConnection, StoreError> {
    PgConnection::establish(url.expose())
        .map_err(|e| StoreError::Connect(url.scrub(&format!("{}: {e}", url.redacted()))))
}

/// A pool of at most `max_size` connections. Fails fast (within
/// `connect_timeout`) when the database is unreachable, naming the URL
/// without its password.
pub fn build_pool(
    url: &DatabaseUrl,
    max_size: u32,
    connect_timeout: Duration,
) -> Result<PgPool, StoreError> {
    // Try one connection first: r2d2 would only report "timed out" after
    // its wait, hiding libpq's reason (refused, unknown database, ...).
    drop(connect(url)?);
    Pool::builder()
        .max_size(max_size)
        .min_idle(Some(0))
        .connection_timeout(connect_timeout)
        .test_on_check_out(true)
        .build(ConnectionManager::new(url.expose()))
        .map_err(|e| StoreError::Connect(url.scrub(&format!("{}: {e}", url.redacted()))))
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

/// Versions of embedded migrations not yet applied: empty when the schema is
/// current. Binaries check this at start-up instead of failing later.
pub fn pending_migrations(conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
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
    }

    #[test]
    fn debug_and_display_hide_the_password() {
        let url = DatabaseUrl::new("postgres://app:s3cret@db/orders");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(!url.to_string().contains("s3cret"));
        assert_eq!(url.expose(), "postgres://app:s3cret@db/orders");
        assert_eq!(url.scrub("bad token near s3cret"), "bad token near ***");
    }
}
