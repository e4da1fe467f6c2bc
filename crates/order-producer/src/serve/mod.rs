//! `order-producer serve`: the front door. The shop's JSON API (create an
//! order, read it, create its WeChat Pay Native prepay) behind a bearer
//! token, WeChat Pay's payment notifications behind WeChat Pay's signature,
//! and `/healthz` / `/readyz`.
//!
//! The stack is `service::http` (axum on tokio, hyper's HTTP/1 builder with
//! a header-read timeout, tower layers for the request timeout, the body
//! limit and the cap on requests in flight). Every database call and every
//! WeChat Pay call (both blocking: diesel, ureq) runs on tokio's blocking
//! pool. SIGTERM stops accepting, lets the requests in hand finish (up to
//! `--api-shutdown-grace`) and exits 0. With `--metrics-listen` every request is
//! counted by route and status, and `/metrics` is served on that listener.

pub mod api;
mod error;
mod health;
mod notify;
pub mod openapi;
mod shop;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use clap::Args;
use payment_client::notify::{ApiV3Key, NotificationVerifier};
use service::http::{Limits, Threads};
use service::token::BearerToken;
use service::{parse_duration, Metrics, MetricsArgs, PaymentArgs, UsageError};

pub use error::ApiError;
pub use notify::{PATH as NOTIFY_PATH, REFUND_PATH as REFUND_NOTIFY_PATH};

/// The front door's settings: its own (`API_*`), the WeChat Pay ones, the
/// database, broker and topology, and metrics.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Keep it on loopback and put a TLS-terminating
    /// proxy in front for WeChat Pay's notifications.
    #[arg(long, env = "API_LISTEN", default_value = "127.0.0.1:8080")]
    pub api_listen: SocketAddr,
    /// Required. File holding the shop's API token (at least 16
    /// characters; one trailing newline ignored). Requests to /v1/ must send
    /// `Authorization: Bearer <token>`. Never printed.
    #[arg(long, env = "API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Required. The app id (`appid`) the Native prepay is created for;
    /// notifications naming another are refused.
    #[arg(long = "wechatpay-appid", env = "WECHATPAY_APPID")]
    pub appid: Option<String>,
    /// Required. File holding the APIv3 key (32 bytes) that decrypts
    /// notifications. Never printed.
    #[arg(long = "wechatpay-apiv3-key-file", env = "WECHATPAY_APIV3_KEY_FILE")]
    pub apiv3_key_file: Option<PathBuf>,
    /// Required. The public https URL WeChat Pay sends payment
    /// notifications to (it must reach `POST /wechatpay/notify/transaction`
    /// here). Plain http is accepted only for a loopback host (a local
    /// simulator).
    #[arg(long = "wechatpay-notify-url", env = "WECHATPAY_NOTIFY_URL")]
    pub notify_url: Option<String>,
    /// Accept a plain-http notify URL to any host: only for a simulator on
    /// another host (the Docker stack). WeChat Pay itself refuses them.
    #[arg(
        long = "wechatpay-allow-http-notify-url",
        env = "WECHATPAY_ALLOW_HTTP_NOTIFY_URL"
    )]
    pub allow_http_notify_url: bool,
    /// The payment window of an order that names none. When not set: the
    /// delay queue's TTL (`DELAY_TTL_MS`), or the longest of the delay
    /// windows (`DELAY_WINDOWS`), like `create-order`.
    #[arg(long, env = "PAYMENT_WINDOW", value_parser = parse_duration)]
    pub payment_window: Option<Duration>,
    /// Longest a request may take, body included (a slow client gets 408).
    #[arg(long, env = "API_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub api_request_timeout: Duration,
    /// Longest a client may take to send a request's headers.
    #[arg(long, env = "API_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub api_header_timeout: Duration,
    /// Largest request body accepted (413 above it).
    #[arg(long, env = "API_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub api_max_body_bytes: usize,
    /// Requests handled at once; more wait their turn.
    #[arg(long, env = "API_MAX_IN_FLIGHT", default_value_t = 256)]
    pub api_max_in_flight: usize,
    /// Database connections.
    #[arg(long, env = "API_DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub api_db_pool_size: u32,
    /// How long SIGTERM waits for requests in hand before exiting anyway.
    #[arg(long, env = "API_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub api_shutdown_grace: Duration,
    #[command(flatten)]
    pub payment: PaymentArgs,
    #[command(flatten)]
    pub database: service::DatabaseArgs,
    #[command(flatten)]
    pub broker: service::BrokerArgs,
    #[command(flatten)]
    pub topology: service::TopologyArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// A setting serve cannot start without, or a usage error naming it by its
/// environment variable (what users set) and its flag.
fn required<'a, T: ?Sized>(
    value: Option<&'a T>,
    var: &str,
    flag: &str,
    what: &str,
) -> Result<&'a T, UsageError> {
    value.ok_or_else(|| UsageError(format!("missing setting {var} (or --{flag}): {what}")))
}

/// Everything a handler needs, shared by all of them.
pub(crate) struct AppState {
    pub(crate) pool: domain::PgPool,
    pub(crate) token: BearerToken,
    pub(crate) payments: payment_client::Client,
    pub(crate) verifier: NotificationVerifier,
    pub(crate) appid: String,
    pub(crate) notify_url: String,
    pub(crate) default_window: Duration,
    /// The declared delay queues: which payment windows can be served.
    pub(crate) topology: broker::Topology,
    pub(crate) amqp: broker::AmqpUrl,
    pub(crate) broker_check: health::BrokerCheck,
    /// Every (route template, method, status) answered, for the test that
    /// compares them with the OpenAPI document.
    #[cfg(feature = "test-support")]
    pub(crate) observed: Observed,
}

/// (route template, method, status) answered by one front door.
#[cfg(feature = "test-support")]
pub type Observed = Arc<std::sync::Mutex<std::collections::BTreeSet<(String, String, u16)>>>;

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("appid", &self.appid)
            .field("notify_url", &self.notify_url)
            .field("amqp", &self.amqp)
            .finish_non_exhaustive()
    }
}

fn check_notify_url(url: &str, allow_http: bool) -> Result<(), UsageError> {
    let bad = |why: &str| {
        UsageError(format!(
            "WECHATPAY_NOTIFY_URL {url:?} {why}; it must be the public https URL of POST /wechatpay/notify/transaction"
        ))
    };
    let rest = if let Some(rest) = url.strip_prefix("https://") {
        rest
    } else if let Some(rest) = url.strip_prefix("http://") {
        let host = rest.split(['/', ':']).next().unwrap_or("");
        if !allow_http && !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            return Err(bad(
                "is plain http on a non-loopback host (WECHATPAY_ALLOW_HTTP_NOTIFY_URL=true for a simulator elsewhere)",
            ));
        }
        log::warn!(
            "WECHATPAY_NOTIFY_URL is plain http: fine for a local simulator, never for production"
        );
        rest
    } else {
        return Err(bad("is not an https URL"));
    };
    if rest.is_empty() || rest.starts_with('/') || url.contains('?') || url.contains('#') {
        return Err(bad("has no host or carries a query"));
    }
    Ok(())
}

/// Builds the shared state: settings checked, keys loaded, pool opened.
fn state(args: &ServeArgs, metrics: &Metrics) -> anyhow::Result<AppState> {
    let token_file = required(
        args.api_token_file.as_deref(),
        "API_TOKEN_FILE",
        "api-token-file",
        "the file holding the bearer token the shop sends to /v1/",
    )?;
    let appid = required(
        args.appid.as_deref(),
        "WECHATPAY_APPID",
        "wechatpay-appid",
        "the app id Native prepays are created for",
    )?;
    let apiv3_key_file = required(
        args.apiv3_key_file.as_deref(),
        "WECHATPAY_APIV3_KEY_FILE",
        "wechatpay-apiv3-key-file",
        "the file holding the APIv3 key that decrypts WeChat Pay's notifications",
    )?;
    let notify_url = required(
        args.notify_url.as_deref(),
        "WECHATPAY_NOTIFY_URL",
        "wechatpay-notify-url",
        "the public https URL of POST /wechatpay/notify/transaction",
    )?;
    let token = BearerToken::load(token_file, "API_TOKEN_FILE")?;
    if appid.is_empty() || !appid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(UsageError(
            "WECHATPAY_APPID must be the app id (letters and digits, e.g. wx8888888888888888)"
                .into(),
        )
        .into());
    }
    check_notify_url(notify_url, args.allow_http_notify_url)?;
    let apiv3 = ApiV3Key::load(apiv3_key_file)
        .map_err(|e| UsageError(format!("WECHATPAY_APIV3_KEY_FILE: {e}")))?;
    let config = args
        .payment
        .config()
        .map_err(|e| UsageError(e.to_string()))?;
    let payments = payment_client::Client::new(config)
        .map_err(|e| UsageError(format!("WeChat Pay client not usable: {e}")))?
        .with_observer(Arc::new(metrics.clone()));
    let verifier = NotificationVerifier::new(payments.key_store().clone(), apiv3);
    let topology = args.topology.topology()?;
    // A default window no delay queue can serve would make every order
    // without a window of its own come out after its deadline.
    let default_window = topology
        .window_or_default(args.payment_window)
        .map_err(|e| UsageError(format!("PAYMENT_WINDOW: {e}")))?;

    let url = args.database.url();
    let pool = domain::build_pool(&url, args.api_db_pool_size, Duration::from_secs(5))
        .context("is PostgreSQL running and DATABASE_URL right?")?;
    {
        let mut conn = domain::checkout(&pool)?;
        crate::require_schema(&mut conn)?;
    }
    Ok(AppState {
        pool,
        token,
        payments,
        verifier,
        appid: appid.to_owned(),
        notify_url: notify_url.to_owned(),
        default_window,
        topology,
        amqp: args.broker.url(),
        broker_check: health::BrokerCheck::default(),
        #[cfg(feature = "test-support")]
        observed: Observed::default(),
    })
}

impl ServeArgs {
    fn limits(&self) -> Limits {
        Limits {
            header_timeout: self.api_header_timeout,
            request_timeout: self.api_request_timeout,
            max_body_bytes: self.api_max_body_bytes,
            max_in_flight: self.api_max_in_flight,
            shutdown_grace: self.api_shutdown_grace,
        }
    }
}

/// The whole HTTP surface with its layers; every request is counted into
/// `metrics` by route template and status (the limit layers' 408 and 413
/// included).
pub(crate) fn app(state: Arc<AppState>, args: &ServeArgs, metrics: Metrics) -> Router {
    let probes = service::telemetry::probes(health::readiness(Arc::clone(&state)));
    #[cfg(feature = "test-support")]
    let observed = Arc::clone(&state.observed);
    let router = Router::new()
        .merge(shop::routes(Arc::clone(&state)))
        // No token: the document holds no secret, only the API's shape.
        .route("/openapi.json", axum::routing::get(openapi::openapi_json))
        .merge(notify::routes())
        .with_state(state)
        .merge(probes)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") });
    let app = service::http::layered(router, &args.limits())
        .layer(middleware::from_fn_with_state(
            args.api_max_body_bytes,
            error::json_errors,
        ))
        .layer(middleware::from_fn_with_state(metrics, count_request));
    #[cfg(feature = "test-support")]
    let app = app.layer(middleware::from_fn_with_state(observed, observe));
    app
}

/// Records what was answered (see [`Observed`]).
#[cfg(feature = "test-support")]
async fn observe(State(observed): State<Observed>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_ascii_lowercase();
    let response = next.run(request).await;
    observed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert((route, method, response.status().as_u16()));
    response
}

/// Counts one request by its route template (`unmatched` for none).
async fn count_request(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    if !metrics.is_enabled() {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(Cow::Borrowed("unmatched"), |p| {
            Cow::Owned(p.as_str().to_owned())
        });
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.http_request(route, response.status().as_u16(), started.elapsed());
    response
}

/// A front door listening and serving on its own thread (with its metrics
/// listener and collector when `--metrics-listen` is set).
#[derive(Debug)]
pub struct Running {
    /// Where it listens (the port is known even when `--api-listen` said 0).
    pub addr: SocketAddr,
    /// Where its metrics and probes listen, when they do.
    pub metrics_addr: Option<SocketAddr>,
    server: service::http::Running,
    telemetry: Option<service::http::Running>,
    collector: Option<std::thread::JoinHandle<()>>,
    #[cfg(feature = "test-support")]
    observed: Observed,
}

impl Running {
    /// Every (route template, method, status) answered so far.
    #[cfg(feature = "test-support")]
    #[must_use]
    pub fn observed(&self) -> std::collections::BTreeSet<(String, String, u16)> {
        self.observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until it has stopped (after `stop` was raised).
    pub fn wait(self) -> anyhow::Result<()> {
        let served = self.server.wait();
        if let Some(c) = self.collector {
            let _ = c.join();
        }
        if let Some(t) = self.telemetry {
            t.wait()?;
        }
        log::info!("the front door stopped");
        served
    }
}

/// Checks the settings, opens the pool, binds the listener and starts
/// serving on a thread of its own until `stop` is raised. Errors in the
/// settings are [`UsageError`]s (exit 2).
pub fn start(args: &ServeArgs, stop: Arc<AtomicBool>) -> anyhow::Result<Running> {
    let metrics = args.metrics.metrics("serve");
    let state = Arc::new(state(args, &metrics)?);
    let listener = service::http::bind(args.api_listen, "API_LISTEN")?;
    let telemetry = service::telemetry::start(
        &args.metrics,
        &metrics,
        health::readiness(Arc::clone(&state)),
        Arc::clone(&stop),
    )?;
    let collector = service::collector::spawn(
        metrics.clone(),
        service::collector::Settings {
            database: args.database.url(),
            amqp: args.broker.url(),
            topology: args.topology.topology()?,
            interval: args.metrics.metrics_gauge_interval,
        },
        Arc::clone(&stop),
    )?;
    #[cfg(feature = "test-support")]
    let observed = Arc::clone(&state.observed);
    let app = app(state, args, metrics);
    let server = service::http::spawn(
        "serve",
        listener,
        app,
        &args.limits(),
        Threads::PerCore,
        stop,
    )?;
    log::info!(
        "serving the shop API and WeChat Pay notifications on http://{} (notify URL {})",
        server.addr,
        args.notify_url.as_deref().unwrap_or_default()
    );
    Ok(Running {
        addr: server.addr,
        metrics_addr: telemetry.as_ref().map(|t| t.addr),
        server,
        telemetry,
        collector,
        #[cfg(feature = "test-support")]
        observed,
    })
}

/// Runs the front door until `stop` is raised.
pub fn run(args: &ServeArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    start(args, Arc::clone(stop))?.wait()
}

/// Runs blocking work (database, WeChat Pay) on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        log::error!("a request handler panicked: {e}");
        Err(ApiError::internal("the request failed unexpectedly"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_urls_must_be_https_except_on_loopback() {
        let check = |url| check_notify_url(url, false);
        assert!(check("https://shop.example.com/wechatpay/notify/transaction").is_ok());
        assert!(check("http://127.0.0.1:8080/wechatpay/notify/transaction").is_ok());
        assert!(check("http://shop.example.com/notify").is_err());
        assert!(check_notify_url("http://serve:8080/notify", true).is_ok());
        assert!(check("ftp://x/y").is_err());
        assert!(check_notify_url("ftp://x/y", true).is_err());
        assert!(check("https://").is_err());
        assert!(check("https://x/notify?a=1").is_err());
    }
}
