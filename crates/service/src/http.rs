//! The HTTP listener every long-running binary shares: the front door
//! (`order-producer serve`) and the `/metrics`, `/healthz`, `/readyz`
//! listener of the worker, the relay and `serve`.
//!
//! axum on tokio, served connection by connection with hyper's own HTTP/1
//! builder so that slow clients meet a header-read timeout (axum's `serve`
//! sets no timer, which leaves hyper's timeout off); tower layers add the
//! request timeout (408), the body-size limit (413) and a cap on requests in
//! flight. When `stop` is raised it stops accepting, lets the requests in
//! hand finish (up to the grace period) and returns.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::limit::ConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::UsageError;

/// How a listener protects itself from slow, large or many requests.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a client may take to send a request's headers (the
    /// connection is closed).
    pub header_timeout: Duration,
    /// Longest a request may take, body included (408).
    pub request_timeout: Duration,
    /// Largest request body accepted (413).
    pub max_body_bytes: usize,
    /// Requests handled at once; more wait their turn.
    pub max_in_flight: usize,
    /// How long a stop waits for the requests in hand.
    pub shutdown_grace: Duration,
}

/// `router` behind the limit layers.
pub fn layered(router: Router, limits: &Limits) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(ConcurrencyLimitLayer::new(limits.max_in_flight.max(1)))
            .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                limits.request_timeout,
            ))
            .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes)),
    )
}

/// Binds `addr`; a failure is a [`UsageError`] naming `setting`.
pub fn bind(addr: SocketAddr, setting: &str) -> Result<std::net::TcpListener, UsageError> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| UsageError(format!("cannot listen on {addr} ({setting}): {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| UsageError(format!("cannot use the listener on {addr}: {e}")))?;
    Ok(listener)
}

/// A listener serving on a thread of its own.
#[derive(Debug)]
pub struct Running {
    /// Where it listens (the port is known even when the address said 0).
    pub addr: SocketAddr,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until it has stopped (after `stop` was raised).
    pub fn wait(self) -> anyhow::Result<()> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the HTTP server thread panicked"))?
    }
}

/// How many threads the listener's runtime gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One per core (the front door).
    PerCore,
    /// One thread (a metrics listener beside a synchronous process).
    One,
}

/// Serves `app` (already [`layered`]) on `listener` from a thread named
/// `name` until `stop` is raised.
pub fn spawn(
    name: &str,
    listener: std::net::TcpListener,
    app: Router,
    limits: &Limits,
    threads: Threads,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let runtime = match threads {
        Threads::PerCore => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(name)
            .build(),
        Threads::One => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .context("cannot start the async runtime")?;
    let limits = *limits;
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(serve(listener, app, limits, stop)))
        .context("cannot start the HTTP server thread")?;
    Ok(Running { addr, thread })
}

async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    limits: Limits,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
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
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    drop(listener);
    log::info!("http://{addr}: stopping: no new connections; finishing the requests in hand");
    tokio::select! {
        () = graceful.shutdown() => log::info!("http://{addr}: all requests finished"),
        () = tokio::time::sleep(limits.shutdown_grace) => log::warn!(
            "http://{addr}: requests still running after {:?}; stopping anyway",
            limits.shutdown_grace
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
