//! The connection pool's manager and a counter of what connections send.
//!
//! r2d2's own check (`test_on_check_out`) sends `SELECT 1` before every
//! checkout: a round trip, and a parse, for each short unit of work. The
//! worker checks a connection out twice per settlement (to read the order,
//! then to write the result without holding a connection across the WeChat
//! Pay call), so the checks were two of its nine round trips for a close.
//! [`PgManager`] checks only a connection that has sat idle in the pool
//! for [`CHECK_IDLE_AFTER`] or longer: that is where a connection dies
//! unnoticed (a database restart, a firewall dropping idle sessions). A
//! connection in steady use is not checked; if it dies anyway, the query on
//! it fails (every caller treats that as "try again later", nothing being
//! committed), and the probe each connection carries sees the failure say
//! the connection is gone, so the pool drops it when it comes back (diesel's
//! own `is_broken` only looks at the transaction state, which stays idle).
//!
//! [`RoundTrips`] counts statements, round trips and transactions on the
//! connections of a pool, for the benchmark and the tests that hold the
//! settlement's database cost to a number.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, ManageConnection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::Connection;

/// A pooled connection idle this long is checked (`SELECT 1`) before it is
/// handed out.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(2);

/// A PostgreSQL connection in the pool, with when it last came back.
pub struct PoolConn {
    conn: PgConnection,
    returned: Instant,
    /// Set by the connection's probe when a statement found it gone.
    lost: Arc<AtomicBool>,
}

impl std::fmt::Debug for PoolConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConn")
            .field("idle", &self.returned.elapsed())
            .finish_non_exhaustive()
    }
}

impl Deref for PoolConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for PoolConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// r2d2's manager for [`PoolConn`]: diesel's, with the check limited to
/// connections that sat idle (see the module docs).
pub struct PgManager {
    inner: ConnectionManager<PgConnection>,
    check_idle_after: Duration,
    counter: Option<RoundTrips>,
}

impl std::fmt::Debug for PgManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The inner manager holds the URL, password included.
        f.debug_struct("PgManager")
            .field("check_idle_after", &self.check_idle_after)
            .finish_non_exhaustive()
    }
}

impl PgManager {
    /// `counter`, when given, counts what every connection sends.
    #[must_use]
    pub fn new(url: &str, check_idle_after: Duration, counter: Option<RoundTrips>) -> Self {
        Self {
            inner: ConnectionManager::new(url),
            check_idle_after,
            counter,
        }
    }
}

impl ManageConnection for PgManager {
    type Connection = PoolConn;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<PoolConn, Self::Error> {
        let mut conn = self.inner.connect()?;
        let lost = Arc::new(AtomicBool::new(false));
        let counts = self.counter.as_ref().map(|c| {
            let _ = c.0.connections.fetch_add(1, Ordering::Relaxed);
            Arc::clone(&c.0)
        });
        conn.set_instrumentation(Probe {
            counts,
            lost: Some(Arc::clone(&lost)),
        });
        Ok(PoolConn {
            conn,
            returned: Instant::now(),
            lost,
        })
    }

    fn is_valid(&self, conn: &mut PoolConn) -> Result<(), Self::Error> {
        if conn.returned.elapsed() < self.check_idle_after {
            return Ok(());
        }
        self.inner.is_valid(&mut conn.conn)
    }

    fn has_broken(&self, conn: &mut PoolConn) -> bool {
        conn.returned = Instant::now();
        conn.lost.load(Ordering::Relaxed) || self.inner.has_broken(&mut conn.conn)
    }
}

/// Counts of what connections sent, shared by every connection a
/// [`RoundTrips`] is installed on.
#[derive(Debug, Default)]
struct Counts {
    statements: AtomicU64,
    round_trips: AtomicU64,
    transactions: AtomicU64,
    connections: AtomicU64,
}

/// What a set of connections sent, read with [`RoundTrips::snapshot`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// SQL statements, the connection checks and `BEGIN`/`COMMIT` excluded.
    pub statements: u64,
    /// Messages that waited for the server's answer: every statement,
    /// check, `BEGIN`, `COMMIT` and `ROLLBACK`, and each first-time prepare
    /// of a cached statement (its own round trip in libpq).
    pub round_trips: u64,
    /// Transactions opened (outermost `BEGIN`s).
    pub transactions: u64,
    /// Connections established.
    pub connections: u64,
}

impl std::ops::Add for Sent {
    type Output = Sent;

    fn add(self, other: Sent) -> Sent {
        Sent {
            statements: self.statements + other.statements,
            round_trips: self.round_trips + other.round_trips,
            transactions: self.transactions + other.transactions,
            connections: self.connections + other.connections,
        }
    }
}

impl std::ops::Sub for Sent {
    type Output = Sent;

    fn sub(self, earlier: Sent) -> Sent {
        Sent {
            statements: self.statements - earlier.statements,
            round_trips: self.round_trips - earlier.round_trips,
            transactions: self.transactions - earlier.transactions,
            connections: self.connections - earlier.connections,
        }
    }
}

/// A counter of statements and round trips, installed on a connection with
/// [`RoundTrips::install`] or on a pool's with [`crate::build_counted_pool`].
/// Meant for benchmarks and tests: it formats each statement's SQL to tell
/// the bookkeeping ones apart.
#[derive(Debug, Clone, Default)]
pub struct RoundTrips(Arc<Counts>);

impl RoundTrips {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The counts so far.
    #[must_use]
    pub fn snapshot(&self) -> Sent {
        let c = &self.0;
        Sent {
            statements: c.statements.load(Ordering::Relaxed),
            round_trips: c.round_trips.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            connections: c.connections.load(Ordering::Relaxed),
        }
    }

    /// Counts what `conn`, a connection of its own (not pooled), sends from
    /// now on. For a pool's connections, give the counter to
    /// [`crate::build_counted_pool`].
    pub fn install(&self, conn: &mut PgConnection) {
        conn.set_instrumentation(Probe {
            counts: Some(Arc::clone(&self.0)),
            lost: None,
        });
    }
}

/// The instrumentation installed on a connection: notes a statement that
/// found the connection gone and, with a counter, counts.
struct Probe {
    counts: Option<Arc<Counts>>,
    lost: Option<Arc<AtomicBool>>,
}

impl Instrumentation for Probe {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let (
            InstrumentationEvent::FinishQuery {
                error: Some(error), ..
            },
            Some(lost),
        ) = (&event, &self.lost)
        {
            if matches!(
                error,
                DieselError::DatabaseError(
                    DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                    _
                )
            ) {
                lost.store(true, Ordering::Relaxed);
            }
        }
        if let Some(c) = &self.counts {
            count(c, &event);
        }
    }
}

fn count(c: &Counts, event: &InstrumentationEvent<'_>) {
    match event {
        InstrumentationEvent::StartQuery { query, .. } => {
            let _ = c.round_trips.fetch_add(1, Ordering::Relaxed);
            let sql = query.to_string();
            let sql = sql.trim_start();
            let bookkeeping = ["BEGIN", "COMMIT", "ROLLBACK", "SELECT 1"].iter().any(|k| {
                sql.get(..k.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(k))
            }) && !sql.contains("FROM");
            if !bookkeeping {
                let _ = c.statements.fetch_add(1, Ordering::Relaxed);
            }
        }
        InstrumentationEvent::CacheQuery { .. } => {
            let _ = c.round_trips.fetch_add(1, Ordering::Relaxed);
        }
        InstrumentationEvent::BeginTransaction { depth, .. } if depth.get() == 1 => {
            let _ = c.transactions.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}
