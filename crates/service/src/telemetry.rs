//! The operator's listener of every long-running process: `GET /metrics`
//! (Prometheus text exposition), `GET /healthz` (the process answers) and
//! `GET /readyz` (its dependencies answer), on `--metrics-listen` /
//! `METRICS_LISTEN`. Off unless set; loopback unless said otherwise, and a
//! non-loopback address needs `METRICS_TOKEN_FILE` (Prometheus sends it as
//! a bearer token; the probes stay open, they say nothing but ok or which
//! dependency failed). Small requests only, short timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Args;
use serde_json::json;

use crate::duration::parse_duration;
use crate::http::{self, Limits, Running, Threads};
use crate::metrics::Metrics;
use crate::token::BearerToken;
use crate::UsageError;

/// Longest a readiness probe waits for its checks.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The listener's limits: scrapes and probes are small GETs.
const LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(5),
    request_timeout: Duration::from_secs(10),
    max_body_bytes: 1024,
    max_in_flight: 8,
    shutdown_grace: Duration::from_secs(2),
};

/// Where metrics and probes are served.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Address for GET /metrics (Prometheus), /healthz and /readyz, e.g.
    /// 127.0.0.1:9464. Off unless set: without it nothing is recorded.
    #[arg(long, env = "METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// File holding a bearer token (16+ printable characters) that
    /// /metrics requires. Needed when --metrics-listen is not a loopback
    /// address. Never printed.
    #[arg(long, env = "METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// How often the database and broker gauges (orders by status, refunds,
    /// needs a human, outbox, queue depths) are read, by one process of all
    /// those with metrics on (an advisory lock decides which).
    #[arg(long, env = "METRICS_GAUGE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub metrics_gauge_interval: Duration,
}

impl MetricsArgs {
    /// Enabled metrics for `process` when a listener is configured, a
    /// disabled handle otherwise.
    #[must_use]
    pub fn metrics(&self, process: &str) -> Metrics {
        if self.metrics_listen.is_some() {
            Metrics::new(process)
        } else {
            Metrics::disabled()
        }
    }

    /// The token /metrics requires, checked against the address.
    fn token(&self, addr: SocketAddr) -> Result<Option<BearerToken>, UsageError> {
        match &self.metrics_token_file {
            Some(path) => BearerToken::load(path, "METRICS_TOKEN_FILE").map(Some),
            None if addr.ip().is_loopback() => Ok(None),
            None => Err(UsageError(format!(
                "METRICS_LISTEN {addr} is not a loopback address: set METRICS_TOKEN_FILE so that /metrics is not open to anyone who can reach it"
            ))),
        }
    }
}

/// The checks `/readyz` runs (on the blocking pool, at most
/// [`PROBE_TIMEOUT`]): each a name (`database`, `broker`) and whether it is
/// fine now.
pub type Readiness = Arc<dyn Fn() -> Vec<(&'static str, bool)> + Send + Sync>;

#[derive(Clone)]
struct Shared {
    metrics: Metrics,
    token: Option<BearerToken>,
    ready: Readiness,
}

/// Starts the listener when `--metrics-listen` is set (`None` otherwise).
/// A bad address or token file is a [`UsageError`].
pub fn start(
    args: &MetricsArgs,
    metrics: &Metrics,
    ready: Readiness,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Option<Running>> {
    let Some(addr) = args.metrics_listen else {
        return Ok(None);
    };
    let token = args.token(addr)?;
    let listener = http::bind(addr, "METRICS_LISTEN")?;
    let app = http::layered(
        router(Shared {
            metrics: metrics.clone(),
            token,
            ready,
        }),
        &LIMITS,
    );
    let running = http::spawn("metrics", listener, app, &LIMITS, Threads::One, stop)?;
    log::info!(
        "metrics on http://{}/metrics, probes on /healthz and /readyz",
        running.addr
    );
    Ok(Some(running))
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(shared.clone())
        .merge(probes(shared.ready))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such route\n") })
}

/// `GET /healthz` (200 `{"status":"ok"}`: the process answers) and `GET
/// /readyz` (200, or 503 naming what is unreachable, from `ready`, within
/// a few seconds), for any listener.
pub fn probes(ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(ready)
}

async fn scrape(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(token) = &s.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !token.authorizes(presented) {
            let mut resp = (
                StatusCode::UNAUTHORIZED,
                "send Authorization: Bearer <metrics token>\n",
            )
                .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(checks): State<Readiness>) -> Response {
    let results =
        tokio::time::timeout(PROBE_TIMEOUT, tokio::task::spawn_blocking(move || checks()))
            .await
            .ok()
            .and_then(Result::ok);
    let Some(results) = results else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "checks timed out"})),
        )
            .into_response();
    };
    let all_ok = results.iter().all(|(_, ok)| *ok);
    let body: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(name, ok)| {
            (
                name.to_owned(),
                json!(if ok { "ok" } else { "unreachable" }),
            )
        })
        .collect();
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The readiness of a process without a pool (the relay): a fresh
/// database connection answers a query, and the broker connection it
/// reports through [`Metrics::set_broker_connected`] is up. A connection
/// per probe (every 10 s or so) rather than one kept for probing, so a
/// database that is away at start delays nothing.
#[must_use]
pub fn database_url_and_broker(url: domain::DatabaseUrl, metrics: Metrics) -> Readiness {
    Arc::new(move || {
        let db = domain::connect(&url)
            .and_then(|mut c| domain::db::ping(&mut c))
            .is_ok();
        vec![("database", db), ("broker", metrics.broker_connected())]
    })
}

/// The usual readiness of a process with a database pool and a broker
/// connection it reports through [`Metrics::set_broker_connected`].
#[must_use]
pub fn pool_and_broker(pool: domain::PgPool, metrics: Metrics) -> Readiness {
    Arc::new(move || {
        let db = domain::checkout(&pool)
            .and_then(|mut c| domain::db::ping(&mut c))
            .is_ok();
        vec![("database", db), ("broker", metrics.broker_connected())]
    })
}
