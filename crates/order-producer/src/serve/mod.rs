//! `order-producer serve`: the front door. The shop's JSON API (create an
//! order, read it, create its WeChat Pay Native prepay) behind a bearer
//! token, WeChat Pay's payment notifications behind WeChat Pay's signature,
//! and `/healthz` / `/readyz`.
//!
//! The stack is axum on tokio, served connection by connection with hyper's
//! own HTTP/1 builder so that slow clients meet a header-read timeout
//! (axum's `serve` sets no timer, which leaves hyper's timeout off); tower
//! layers add the request timeout, the body-size limit and a cap on requests
//! in flight. Every database call and every WeChat Pay call (both blocking:
//! diesel, ureq) runs on tokio's blocking pool. SIGTERM stops accepting,
//! lets the requests in hand finish (up to `--shutdown-grace`) and exits 0.

mod error;
mod health;
mod notify;
mod shop;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::Router;
use clap::Args;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use openssl::hash::{hash, MessageDigest};
use payment_client::notify::{ApiV3Key, NotificationVerifier};
use service::{parse_duration, PaymentArgs, UsageError};
use tower::limit::ConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub use error::ApiError;
pub use notify::{PATH as NOTIFY_PATH, REFUND_PATH as REFUND_NOTIFY_PATH};

/// The front door's settings (besides the database, broker and WeChat Pay
/// ones every command shares).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Loopback by default: put a TLS-terminating
    /// proxy in front for WeChat Pay's notifications.
    #[arg(long, env = "API_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// File holding the shop's API token (at least 16 characters; one
    /// trailing newline ignored). Requests to /v1/ must send
    /// `Authorization: Bearer <token>`. Never printed.
    #[arg(long, env = "API_TOKEN_FILE")]
    pub api_token_file: PathBuf,
    /// The app id (`appid`) the Native prepay is created for; notifications
    /// naming another are refused.
    #[arg(long = "wechatpay-appid", env = "WECHATPAY_APPID")]
    pub appid: String,
    /// File holding the APIv3 key (32 bytes) that decrypts notifications.
    /// Never printed.
    #[arg(long = "wechatpay-apiv3-key-file", env = "WECHATPAY_APIV3_KEY_FILE")]
    pub apiv3_key_file: PathBuf,
    /// The public https URL WeChat Pay sends payment notifications to (it
    /// must reach `POST /wechatpay/notify/transaction` here). Plain http is
    /// accepted only for a loopback host (a local simulator).
    #[arg(long = "wechatpay-notify-url", env = "WECHATPAY_NOTIFY_URL")]
    pub notify_url: String,
    /// Accept a plain-http notify URL to any host: only for a simulator on
    /// another host (the Docker stack). WeChat Pay itself refuses them.
    #[arg(
        long = "wechatpay-allow-http-notify-url",
        env = "WECHATPAY_ALLOW_HTTP_NOTIFY_URL"
    )]
    pub allow_http_notify_url: bool,
    /// The payment window of an order that names none. Default: the delay
    /// queue's TTL (`DELAY_TTL_MS`), or the longest of the windows
    /// (`PAYMENT_WINDOWS`), like `create-order`.
    #[arg(long, env = "PAYMENT_WINDOW", value_parser = parse_duration)]
    pub payment_window: Option<Duration>,
    /// Longest a request may take, body included (a slow client gets 408).
    #[arg(long, env = "API_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Longest a client may take to send a request's headers.
    #[arg(long, env = "API_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Largest request body accepted (413 above it).
    #[arg(long, env = "API_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Requests handled at once; more wait their turn.
    #[arg(long, env = "API_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: usize,
    /// Database connections.
    #[arg(long, env = "API_DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=512))]
    pub db_pool_size: u32,
    /// How long SIGTERM waits for requests in hand before exiting anyway.
    #[arg(long, env = "API_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub payment: PaymentArgs,
}

/// Everything a handler needs, shared by all of them.
pub(crate) struct AppState {
    pub(crate) pool: domain::PgPool,
    token_digest: Vec<u8>,
    pub(crate) payments: payment_client::Client,
    pub(crate) verifier: NotificationVerifier,
    pub(crate) appid: String,
    pub(crate) notify_url: String,
    pub(crate) default_window: Duration,
    pub(crate) amqp: broker::AmqpUrl,
    pub(crate) broker_check: health::BrokerCheck,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("appid", &self.appid)
            .field("notify_url", &self.notify_url)
            .field("amqp", &self.amqp)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Constant time in the token's content: both sides are hashed first.
    pub(crate) fn token_matches(&self, presented: &str) -> bool {
        digest(presented.as_bytes()).is_some_and(|d| openssl::memcmp::eq(&d, &self.token_digest))
    }
}

fn digest(bytes: &[u8]) -> Option<Vec<u8>> {
    hash(MessageDigest::sha256(), bytes)
        .ok()
        .map(|d| d.to_vec())
}

/// Reads a secret file: one trailing newline ignored, content never echoed.
fn read_token(path: &Path) -> Result<String, UsageError> {
    let raw = std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "cannot read the API token file {} (API_TOKEN_FILE): {e}",
            path.display()
        ))
    })?;
    let token = raw
        .strip_suffix("\r\n")
        .or_else(|| raw.strip_suffix('\n'))
        .unwrap_or(&raw);
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(UsageError(format!(
            "the API token in {} must be at least 16 printable characters without spaces ({} found)",
            path.display(),
            token.len()
        )));
    }
    Ok(token.to_owned())
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
fn state(cli: &crate::Cli, args: &ServeArgs) -> anyhow::Result<AppState> {
    let token = read_token(&args.api_token_file)?;
    if args.appid.is_empty() || !args.appid.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(UsageError(
            "WECHATPAY_APPID must be the app id (letters and digits, e.g. wx8888888888888888)"
                .into(),
        )
        .into());
    }
    check_notify_url(&args.notify_url, args.allow_http_notify_url)?;
    let apiv3 = ApiV3Key::load(&args.apiv3_key_file)
        .map_err(|e| UsageError(format!("WECHATPAY_APIV3_KEY_FILE: {e}")))?;
    let config = args
        .payment
        .config()
        .map_err(|e| UsageError(e.to_string()))?;
    let payments = payment_client::Client::new(config)
        .map_err(|e| UsageError(format!("WeChat Pay client not usable: {e}")))?;
    let verifier = NotificationVerifier::new(payments.key_store().clone(), apiv3);
    let topology = cli.broker.topology().map_err(UsageError)?;
    let default_window = args.payment_window.unwrap_or_else(|| {
        topology
            .delay_queues()
            .last()
            .expect("a topology has at least one delay queue")
            .ttl
    });

    let url = cli.database.url();
    let pool = domain::build_pool(&url, args.db_pool_size, Duration::from_secs(5))
        .context("is PostgreSQL running and DATABASE_URL right?")?;
    {
        let mut conn = domain::checkout(&pool)?;
        crate::require_schema(&mut conn)?;
    }
    Ok(AppState {
        pool,
        token_digest: digest(token.as_bytes()).context("SHA-256 unavailable")?,
        payments,
        verifier,
        appid: args.appid.clone(),
        notify_url: args.notify_url.clone(),
        default_window,
        amqp: cli.broker.url(),
        broker_check: health::BrokerCheck::default(),
    })
}

/// The whole HTTP surface with its layers.
pub(crate) fn app(state: Arc<AppState>, args: &ServeArgs) -> Router {
    Router::new()
        .merge(shop::routes(Arc::clone(&state)))
        .merge(notify::routes())
        .merge(health::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(ConcurrencyLimitLayer::new(args.max_in_flight.max(1)))
                .layer(RequestBodyLimitLayer::new(args.max_body_bytes))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    args.request_timeout,
                ))
                .layer(axum::extract::DefaultBodyLimit::max(args.max_body_bytes)),
        )
}

/// A front door listening and serving on its own thread.
#[derive(Debug)]
pub struct Running {
    /// Where it listens (the port is known even when `--listen` said 0).
    pub addr: SocketAddr,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until it has stopped (after `stop` was raised).
    pub fn wait(self) -> anyhow::Result<()> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the server thread panicked"))?
    }
}

/// Checks the settings, opens the pool, binds the listener and starts
/// serving on a thread of its own until `stop` is raised. Errors in the
/// settings are [`UsageError`]s (exit 2).
pub fn start(cli: &crate::Cli, args: &ServeArgs, stop: Arc<AtomicBool>) -> anyhow::Result<Running> {
    let state = Arc::new(state(cli, args)?);
    let listener = std::net::TcpListener::bind(args.listen).map_err(|e| {
        UsageError(format!(
            "cannot listen on {} (API_LISTEN): {e}",
            args.listen
        ))
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serve")
        .build()
        .context("cannot start the async runtime")?;
    let app = app(state, args);
    let limits = (args.header_timeout, args.shutdown_grace);
    log::info!(
        "serving the shop API and WeChat Pay notifications on http://{addr} (notify URL {})",
        args.notify_url
    );
    let thread = std::thread::Builder::new()
        .name("serve".into())
        .spawn(move || runtime.block_on(serve(listener, app, limits, stop)))
        .context("cannot start the server thread")?;
    Ok(Running { addr, thread })
}

/// Runs the front door until `stop` is raised.
pub fn run(cli: &crate::Cli, args: &ServeArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    start(cli, args, Arc::clone(stop))?.wait()
}

async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    (header_timeout, shutdown_grace): (Duration, Duration),
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, don't spin.
                        log::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        log::debug!("connection from {peer}: {e}");
                    }
                });
            }
            () = stopped(&stop) => break,
        }
    }
    drop(listener);
    log::info!("stopping: no new connections; finishing the requests in hand");
    tokio::select! {
        () = graceful.shutdown() => log::info!("all requests finished; bye"),
        () = tokio::time::sleep(shutdown_grace) => log::warn!(
            "requests still running after {shutdown_grace:?}; exiting anyway"
        ),
    }
    Ok(())
}

/// Resolves once SIGTERM/SIGINT raised the flag.
async fn stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

    #[test]
    fn tokens_are_checked_and_never_echoed() {
        let dir = std::env::temp_dir().join(format!("ot-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "tiny-secret\n").unwrap();
        let err = read_token(&short).unwrap_err().to_string();
        assert!(!err.contains("tiny-secret"), "{err}");
        let good = dir.join("good");
        std::fs::write(&good, "0123456789abcdef-token\n").unwrap();
        assert_eq!(read_token(&good).unwrap(), "0123456789abcdef-token");
        let missing = read_token(&dir.join("none")).unwrap_err().to_string();
        assert!(missing.contains("API_TOKEN_FILE"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
