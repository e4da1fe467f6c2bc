//! The simulator's HTTP listener: axum on hyper's HTTP/1 connection
//! builder, on a tokio runtime of the simulator's own, the stack
//! `service::http` serves the front door with (the simulator does not
//! depend on `service`, which depends on the payment client it is a test
//! double for).
//!
//! One axum fallback handler turns every request into a [`Request`] (method,
//! target exactly as received, headers, body) and hands it to the
//! simulator's dispatch, `server::handle`, on tokio's blocking pool: an
//! answer costs an RSA signature, and an injected latency fault sleeps on
//! the thread that answers. The connection keeps the limits of the
//! hand-written server this replaced: a request body above [`MAX_BODY`]
//! (or a chunked one, which it never read) and a body not in within
//! [`IDLE_LIMIT`] end the connection without an answer (the service fails,
//! and hyper closes the connection); a head gets [`IDLE_LIMIT`] to arrive
//! whole (hyper's header-read timer, where the old server only counted
//! silence), and the same timer closes a keep-alive connection idle that
//! long; heads are at most [`MAX_HEAD`] bytes. Answers
//! carry `Server: wechatpay-sim`, title-case header names and no `Date`, as
//! before. What hyper does its own way: a malformed or oversized head gets
//! its 400 or 431 instead of a bare close, `Request-ID` is written
//! `Request-Id`, a `Connection: close` request gets one in the answer, and
//! an HTTP/1.0 request an HTTP/1.0 answer.
//!
//! Why a current-thread runtime on a thread of its own: the socket work per
//! request is a few microseconds, so one thread serves the thousands of
//! requests per second of the worker benchmark, while the signing and the
//! injected latency run in parallel on the blocking pool. Test processes
//! start dozens of simulators, one thread each instead of one per core; and
//! the runtime is created, driven and dropped on that thread, so a
//! simulator can be started and dropped from any context, async or not.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{HeaderName, HeaderValue, SERVER, TRANSFER_ENCODING};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use hyper::body::Body as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::oneshot;
use tower::ServiceExt as _;

use crate::server::{self, Reply, Shared};

/// Largest request body; a larger one ends the connection unanswered.
const MAX_BODY: usize = 64 * 1024;
/// Largest request head (hyper answers 431 above it).
const MAX_HEAD: usize = 16 * 1024;
/// How long a head or a body may take to arrive, and how long a keep-alive
/// connection may idle.
const IDLE_LIMIT: Duration = Duration::from_mins(1);
/// How long a shutdown waits for requests in hand (e.g. injected latency).
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// One request as the simulator's handlers see it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The request target exactly as received (path and query).
    pub url: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    /// The first value of the header `name` (any case), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    }
}

/// Why a connection was ended without an answer.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error("chunked request bodies are not supported")]
    Chunked,
    #[error("request body too large")]
    TooLarge,
    #[error("no request body for {IDLE_LIMIT:?}")]
    BodyStalled,
    #[error("reading the request body: {0}")]
    Body(#[source] axum::Error),
}

/// The router: every request goes to the simulator's dispatch.
pub(crate) fn app(shared: Arc<Shared>) -> Router {
    Router::new().fallback(answer).with_state(shared)
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Request {
        method: method.as_str().to_owned(),
        url: uri.to_string(),
        headers,
        body,
    };
    match tokio::task::spawn_blocking(move || server::handle(&shared, &incoming)).await {
        Ok(reply) => response(reply),
        // A handler that panicked ends its connection, as its thread did
        // (a task is cancelled only when the runtime stops, which ends the
        // connection too).
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `reply` as hyper writes it: `Server` first, then the reply's headers in
/// order (axum appends `Content-Length`).
fn response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(SERVER, HeaderValue::from_static("wechatpay-sim"));
    for (name, value) in reply.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => log::error!("not a valid header, left out: {name}: {value}"),
        }
    }
    response
}

/// What the connection enforces before the router sees a request: the body
/// has a length, at most [`MAX_BODY`], and arrives.
async fn serve_request(
    app: Router,
    request: axum::http::Request<hyper::body::Incoming>,
) -> Result<Response, Unanswered> {
    if request.headers().contains_key(TRANSFER_ENCODING) {
        return Err(Unanswered::Chunked);
    }
    if request
        .body()
        .size_hint()
        .upper()
        .is_none_or(|n| n > MAX_BODY as u64)
    {
        return Err(Unanswered::TooLarge);
    }
    let (parts, body) = request.into_parts();
    let body = tokio::time::timeout(IDLE_LIMIT, axum::body::to_bytes(Body::new(body), MAX_BODY))
        .await
        .map_err(|_| Unanswered::BodyStalled)?
        .map_err(Unanswered::Body)?;
    let request = axum::http::Request::from_parts(parts, Body::from(body));
    Ok(app.oneshot(request).await.unwrap_or_else(|e| match e {}))
}

/// The listener's thread; [`Listening::begin_stop`] ends it.
#[derive(Debug)]
pub(crate) struct Listening {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Listening {
    /// Serves `app` on `listener` from a thread of its own.
    pub(crate) fn start(listener: TcpListener, app: Router) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("wechatpay-sim-blocking")
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("wechatpay-sim-http".to_owned())
            .spawn(move || {
                if let Err(e) = runtime.block_on(serve(listener, app, stopped)) {
                    log::error!("the simulator's listener failed: {e}");
                }
                // What the grace period left running is abandoned, as a
                // stuck connection thread was.
                runtime.shutdown_background();
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Asks the listener to stop; [`Listening::wait`] waits for it.
    pub(crate) fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the listener has stopped (at most [`SHUTDOWN_GRACE`]
    /// after [`Listening::begin_stop`]).
    pub(crate) fn wait(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    app: Router,
    mut stopped: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(IDLE_LIMIT)
        .max_header_size(MAX_HEAD)
        .title_case_headers(true)
        .auto_date_header(false)
        .keep_alive(true)
        .half_close(true);
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
                let app = app.clone();
                let service = hyper::service::service_fn(move |request| {
                    serve_request(app.clone(), request)
                });
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        log::debug!("connection from {peer} ended: {e}");
                    }
                });
            }
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            log::warn!("requests still running after {SHUTDOWN_GRACE:?}; stopping anyway");
        }
    }
    Ok(())
}
