//! The HTTP server: API endpoints (signed, verified, fault-injected), the
//! admin API under `/sim/`, and the embeddable [`Simulator`] handle.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::hash::MessageDigest;
use openssl::sign::{Signer, Verifier};
use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;
use serde_json::json;

use crate::admin::AdminClient;
use crate::http::{self, Live, Request as Incoming, Response};
use crate::keys::{ClientFiles, SimKeys};
use crate::model::{Endpoint, Faults, Order, Stats};

const MAX_SKEW_SECS: u64 = 300;
const STALE_BY_SECS: u64 = 600;
const API_PREFIX: &str = "/v3/pay/transactions/out-trade-no/";
/// How long a shutdown waits for requests in hand (e.g. injected latency).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Serial named by responses when the `unknown_serial` fault is on.
pub const UNKNOWN_SERIAL: &str = "PUB_KEY_ID_0119999999992099010100000000000000";

/// How the simulator behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Requests must be signed for this merchant id (any when `None`).
    pub mchid: Option<String>,
    /// Requests must name this merchant serial (any when `None`).
    pub merchant_serial_no: Option<String>,
    /// `Wechatpay-Serial` of responses: a public key id, or a certificate
    /// serial to test platform certificate mode.
    pub signing_serial: String,
    /// Treat unknown orders as fresh `NOTPAY` prepay orders instead of
    /// answering 404 `ORDER_NOT_EXIST` (handy for the demo).
    pub auto_create: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            mchid: Some(crate::DEFAULT_MCHID.to_owned()),
            merchant_serial_no: Some(crate::DEFAULT_MERCHANT_SERIAL_NO.to_owned()),
            signing_serial: crate::DEFAULT_PUBLIC_KEY_ID.to_owned(),
            auto_create: false,
        }
    }
}

/// The simulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the accept thread: {0}")]
    Thread(#[source] std::io::Error),
}

#[derive(Default)]
struct State {
    orders: HashMap<String, Order>,
    global_faults: Option<Faults>,
    stats: Stats,
    /// The last signed API answer about each `out_trade_no`, for replays.
    last_answers: HashMap<String, Reply>,
}

struct Shared {
    state: Mutex<State>,
    keys: SimKeys,
    config: SimConfig,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A handler that panicked leaves consistent data behind (every
        // update is a single assignment), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running simulator. Dropping it shuts it down.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    live: Arc<Live>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Listens on `addr` (`127.0.0.1:0` picks a free port) and serves, one
    /// thread per connection, until [`Simulator::shutdown`] or drop.
    pub fn start(addr: &str, keys: &SimKeys, config: SimConfig) -> Result<Self, SimError> {
        let bind_err = |source| SimError::Bind {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        let bound = listener.local_addr().map_err(bind_err)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            keys: keys.clone(),
            config,
        });
        let live = Arc::new(Live::default());
        let handler = {
            let shared = Arc::clone(&shared);
            Arc::new(move |req: &Incoming| handle(&shared, req))
        };
        let accept = {
            let live = Arc::clone(&live);
            thread::Builder::new()
                .name("wechatpay-sim-accept".to_owned())
                .spawn(move || http::accept_loop(&listener, &live, &handler))
                .map_err(SimError::Thread)?
        };
        log::info!("wechatpay simulator listening on http://{bound}");
        Ok(Self {
            addr: bound,
            shared,
            live,
            accept: Some(accept),
        })
    }

    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the client's base URL.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client for the admin API of this simulator.
    #[must_use]
    pub fn admin(&self) -> AdminClient {
        AdminClient::new(&self.base_url())
    }

    #[must_use]
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// The environment lines a client (the worker) needs to talk to this
    /// simulator, one `NAME=value` per line.
    #[must_use]
    pub fn env_lines(&self, files: &ClientFiles) -> String {
        let c = &self.shared.config;
        format!(
            "WECHATPAY_BASE_URL={}\nWECHATPAY_MCHID={}\nWECHATPAY_MERCHANT_SERIAL_NO={}\nWECHATPAY_MERCHANT_KEY_FILE={}\nWECHATPAY_PUBLIC_KEY_ID={}\nWECHATPAY_PUBLIC_KEY_FILE={}\n",
            self.base_url(),
            c.mchid.as_deref().unwrap_or(crate::DEFAULT_MCHID),
            c.merchant_serial_no.as_deref().unwrap_or(crate::DEFAULT_MERCHANT_SERIAL_NO),
            files.merchant_key_file.display(),
            c.signing_serial,
            files.wechatpay_public_key_file.display(),
        )
    }

    /// Stops accepting, lets connections finish the requests in hand (at
    /// most a few seconds) and closes them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.live.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = accept.join();
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.live.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One answer before it is put on the wire.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    fn error(status: u16, code: &str, message: &str) -> Self {
        Self::json(status, &json!({ "code": code, "message": message }))
    }

    fn empty(status: u16) -> Self {
        Self {
            status,
            body: Vec::new(),
            headers: Vec::new(),
        }
    }
}

fn handle(shared: &Shared, incoming: &Incoming) -> Response {
    let started = Instant::now();
    let mut reply = if incoming.url.starts_with("/sim/") {
        admin(shared, incoming)
    } else {
        api(shared, incoming)
    };
    log::info!(
        "{} {} -> {} ({} ms)",
        incoming.method,
        incoming.url,
        reply.status,
        started.elapsed().as_millis()
    );
    if !reply.body.is_empty() && !reply.headers.iter().any(|(n, _)| n == "Content-Type") {
        reply
            .headers
            .push(("Content-Type".to_owned(), "application/json".to_owned()));
    }
    Response {
        status: reply.status,
        headers: reply.headers,
        body: reply.body,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------- API

/// A recognised API call.
struct Call {
    endpoint: Endpoint,
    out_trade_no: String,
    /// The `mchid` query parameter (query only).
    query_mchid: Option<String>,
}

fn route(method: &str, url: &str) -> Option<Call> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let rest = path.strip_prefix(API_PREFIX)?;
    let (no, endpoint) = match (method, rest.strip_suffix("/close")) {
        ("POST", Some(no)) => (no, Endpoint::Close),
        ("GET", None) => (rest, Endpoint::Query),
        _ => return None,
    };
    if no.is_empty() || no.contains('/') {
        return None;
    }
    let query_mchid = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("mchid="))
        .map(percent_decode);
    Some(Call {
        endpoint,
        out_trade_no: percent_decode(no),
        query_mchid,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            // Both are ASCII hex digits, so this slice is on char boundaries.
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn api(shared: &Shared, req: &Incoming) -> Reply {
    shared.state().stats.api_requests += 1;
    // Requests refused for their headers or signature neither consume nor
    // suffer the injected faults: a test's "fail twice" stays two failures
    // of well-formed requests.
    let mchid = match check_request(shared, req) {
        Ok(mchid) => mchid,
        Err(reply) => return sign(shared, reply, &Faults::default()),
    };
    let call = route(&req.method, &req.url);
    let faults = take_faults(shared, call.as_ref());
    if faults.latency_ms > 0 {
        thread::sleep(Duration::from_millis(faults.latency_ms));
    }
    if let Some(of) = &faults.replay_answer_of {
        let earlier = shared.state().last_answers.get(of).cloned();
        return earlier.unwrap_or_else(|| {
            sign(
                shared,
                Reply::error(500, "SIM_FAULT", "nothing to replay for that out_trade_no"),
                &Faults::default(),
            )
        });
    }
    let reply = sign(
        shared,
        api_answer(shared, req, call.as_ref(), &faults, &mchid),
        &faults,
    );
    if let Some(call) = &call {
        shared
            .state()
            .last_answers
            .insert(call.out_trade_no.clone(), reply.clone());
    }
    reply
}

/// The faults that apply to this call (the order's own win over the global
/// ones), counting down `times`.
fn take_faults(shared: &Shared, call: Option<&Call>) -> Faults {
    let Some(call) = call else {
        return Faults::default();
    };
    let mut state = shared.state();
    let applies = |f: &Faults| f.only.is_none_or(|only| only == call.endpoint);
    let take = |slot: &mut Option<Faults>| -> Option<Faults> {
        let f = slot.as_mut().filter(|f| applies(f))?;
        let taken = f.clone();
        if let Some(n) = f.times.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *slot = None;
            }
        }
        Some(taken)
    };
    let order_faults = state
        .orders
        .get_mut(&call.out_trade_no)
        .and_then(|o| take(&mut o.faults));
    order_faults
        .or_else(|| take(&mut state.global_faults))
        .unwrap_or_default()
}

/// Headers, signature and `Wechatpay-Serial`; the signer's mchid or the
/// refusal.
fn check_request(shared: &Shared, req: &Incoming) -> Result<String, Reply> {
    let accept_ok = req
        .header("Accept")
        .is_some_and(|a| a.contains("application/json") || a.contains("*/*"));
    let ua_ok = req
        .header("User-Agent")
        .is_some_and(|u| !u.trim().is_empty());
    if !accept_ok || !ua_ok {
        shared.state().stats.invalid_requests += 1;
        let missing = if accept_ok { "User-Agent" } else { "Accept" };
        return Err(Reply::error(
            400,
            "INVALID_REQUEST",
            &format!("HTTP header {missing} is missing or invalid"),
        ));
    }
    let mchid = match check_signature(shared, req) {
        Ok(mchid) => mchid,
        Err(why) => {
            shared.state().stats.bad_signatures += 1;
            log::warn!("refusing {} {}: {why}", req.method, req.url);
            return Err(Reply::error(
                401,
                "SIGN_ERROR",
                &format!("signature verification failed: {why}"),
            ));
        }
    };
    if let Some(serial) = req.header("Wechatpay-Serial") {
        if serial != shared.config.signing_serial {
            return Err(Reply::error(
                400,
                "PARAM_ERROR",
                "Wechatpay-Serial names an unknown WeChat Pay public key",
            ));
        }
    }
    Ok(mchid)
}

fn api_answer(
    shared: &Shared,
    req: &Incoming,
    call: Option<&Call>,
    faults: &Faults,
    mchid: &str,
) -> Reply {
    let Some(call) = call else {
        return Reply::error(404, "NOT_FOUND", "no such API in the simulator");
    };
    if let Some(status) = faults.status {
        shared.state().stats.faults_injected += 1;
        let (code, message) = match status {
            429 => ("FREQUENCY_LIMITED", "too many requests, slow down"),
            500 => ("SYSTEM_ERROR", "system error, try again later"),
            502..=504 => (
                "SERVICE_UNAVAILABLE",
                "service unavailable, try again later",
            ),
            400 => ("PARAM_ERROR", "parameter error (injected)"),
            401 => ("SIGN_ERROR", "signature error (injected)"),
            403 => ("NO_AUTH", "merchant has no permission (injected)"),
            _ => ("SIM_FAULT", "injected fault"),
        };
        let mut reply = Reply::error(status, code, message);
        if let (429, Some(secs)) = (status, faults.retry_after_secs) {
            reply
                .headers
                .push(("Retry-After".to_owned(), secs.to_string()));
        }
        return reply;
    }
    match call.endpoint {
        Endpoint::Query => query(shared, call, mchid, faults),
        Endpoint::Close => close(shared, req, call, mchid, faults),
    }
}

/// Verifies `Authorization`; returns the merchant id it names.
fn check_signature(shared: &Shared, req: &Incoming) -> Result<String, String> {
    let auth = req
        .header("Authorization")
        .ok_or("no Authorization header")?;
    let params = auth
        .strip_prefix("WECHATPAY2-SHA256-RSA2048 ")
        .ok_or("Authorization scheme is not WECHATPAY2-SHA256-RSA2048")?;
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for part in params.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or("malformed Authorization")?;
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or("Authorization values must be quoted")?;
        fields.insert(k, v);
    }
    let field = |k: &str| {
        fields
            .get(k)
            .copied()
            .ok_or(format!("Authorization lacks {k}"))
    };
    let (mchid, nonce, signature, timestamp, serial) = (
        field("mchid")?,
        field("nonce_str")?,
        field("signature")?,
        field("timestamp")?,
        field("serial_no")?,
    );
    if let Some(expected) = &shared.config.mchid {
        if mchid != expected {
            return Err(format!("unknown mchid {mchid}"));
        }
    }
    if let Some(expected) = &shared.config.merchant_serial_no {
        if !serial.eq_ignore_ascii_case(expected) {
            return Err(format!("unknown merchant serial_no {serial}"));
        }
    }
    let ts: u64 = timestamp.parse().map_err(|_| "timestamp is not a number")?;
    if ts.abs_diff(unix_now()) >= MAX_SKEW_SECS {
        return Err("timestamp too far from the server's clock".to_owned());
    }
    let signature =
        openssl::base64::decode_block(signature).map_err(|_| "signature is not base64")?;
    let mut message = Vec::new();
    for part in [
        req.method.as_bytes(),
        req.url.as_bytes(),
        timestamp.as_bytes(),
        nonce.as_bytes(),
        &req.body,
    ] {
        message.extend_from_slice(part);
        message.push(b'\n');
    }
    let ok = Verifier::new(MessageDigest::sha256(), &shared.keys.merchant_public)
        .and_then(|mut v| v.verify_oneshot(&signature, &message))
        .unwrap_or(false);
    if ok {
        Ok(mchid.to_owned())
    } else {
        Err("signature does not match the merchant public key".to_owned())
    }
}

fn query(shared: &Shared, call: &Call, mchid: &str, faults: &Faults) -> Reply {
    if call.query_mchid.as_deref() != Some(mchid) {
        return Reply::error(
            400,
            "PARAM_ERROR",
            "query parameter mchid is missing or differs from the signer",
        );
    }
    let mut state = shared.state();
    state.stats.queries += 1;
    let auto = shared.config.auto_create;
    let Some(order) = lookup(&mut state, &call.out_trade_no, auto) else {
        return Reply::error(404, "ORDER_NOT_EXIST", "order does not exist");
    };
    order.queries += 1;
    let mut answer = transaction_json(
        faults.answer_mchid.as_deref().unwrap_or(mchid),
        faults
            .answer_out_trade_no
            .as_deref()
            .unwrap_or(&call.out_trade_no),
        order,
    );
    if let Some(fields) = answer.as_object_mut() {
        if faults.omit_out_trade_no {
            fields.remove("out_trade_no");
        }
        if faults.omit_mchid {
            fields.remove("mchid");
        }
    }
    Reply::json(200, &answer)
}

fn lookup<'s>(state: &'s mut State, no: &str, auto_create: bool) -> Option<&'s mut Order> {
    if auto_create {
        Some(state.orders.entry(no.to_owned()).or_default())
    } else {
        state.orders.get_mut(no)
    }
}

fn transaction_json(mchid: &str, out_trade_no: &str, order: &Order) -> serde_json::Value {
    let paid = matches!(order.trade_state.as_str(), "SUCCESS" | "REFUND");
    let desc = match order.trade_state.as_str() {
        "SUCCESS" => "支付成功",
        "REFUND" => "转入退款",
        "NOTPAY" => "订单未支付",
        "CLOSED" => "已关闭",
        "REVOKED" => "已撤销",
        "USERPAYING" => "用户支付中",
        "PAYERROR" => "支付失败",
        _ => "",
    };
    let mut amount = json!({
        "total": order.amount_total,
        "currency": order.currency,
        "payer_currency": order.currency,
    });
    let mut v = json!({
        "appid": "wxd678efh567hg6787",
        "mchid": mchid,
        "out_trade_no": out_trade_no,
        "trade_type": "JSAPI",
        "trade_state": order.trade_state,
        "trade_state_desc": desc,
        "attach": "",
        "promotion_detail": [],
    });
    if let Some(id) = &order.transaction_id {
        v["transaction_id"] = json!(id);
    }
    if let Some(t) = &order.success_time {
        v["success_time"] = json!(t);
    }
    if paid {
        v["bank_type"] = json!("OTHERS");
        v["payer"] = json!({ "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" });
        amount["payer_total"] = json!(order.payer_total.unwrap_or(order.amount_total));
    }
    if !order.omit_amount {
        v["amount"] = amount;
    }
    v
}

fn close(shared: &Shared, req: &Incoming, call: &Call, mchid: &str, faults: &Faults) -> Reply {
    if !req
        .header("Content-Type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return Reply::error(
            400,
            "INVALID_REQUEST",
            "Content-Type must be application/json",
        );
    }
    let body_mchid = serde_json::from_slice::<serde_json::Value>(&req.body)
        .ok()
        .and_then(|v| v.get("mchid").and_then(|m| m.as_str().map(str::to_owned)));
    if body_mchid.as_deref() != Some(mchid) {
        return Reply::error(
            400,
            "PARAM_ERROR",
            "body mchid is missing or differs from the signer",
        );
    }
    let mut state = shared.state();
    state.stats.closes += 1;
    let auto = shared.config.auto_create;
    let Some(order) = lookup(&mut state, &call.out_trade_no, auto) else {
        return Reply::error(404, "ORDER_NOT_EXIST", "order does not exist");
    };
    order.closes += 1;
    match order.trade_state.as_str() {
        "NOTPAY" | "PAYERROR" => {
            if !faults.close_noop {
                "CLOSED".clone_into(&mut order.trade_state);
            }
            Reply::empty(204)
        }
        "CLOSED" | "REVOKED" => Reply::empty(204),
        "USERPAYING" => Reply::error(202, "USER_PAYING", "user is paying, query again later"),
        "SUCCESS" | "REFUND" => {
            Reply::error(400, "ORDER_PAID", "order is paid and cannot be closed")
        }
        _ => Reply::error(
            500,
            "SYSTEM_ERROR",
            "order in a state the simulator cannot close",
        ),
    }
}

/// Adds the WeChat Pay signature headers (or spoils them, as faults ask).
fn sign(shared: &Shared, mut reply: Reply, faults: &Faults) -> Reply {
    let mut rng = rand::rng();
    let request_id = format!("08{:030X}", rng.random::<u128>() >> 8);
    reply.headers.push(("Request-ID".to_owned(), request_id));
    if !reply.body.is_empty() {
        reply
            .headers
            .push(("Content-Type".to_owned(), "application/json".to_owned()));
    }
    if faults.unsigned {
        return reply;
    }
    let now = unix_now();
    let timestamp = if faults.stale_timestamp {
        now - STALE_BY_SECS
    } else {
        now
    }
    .to_string();
    let nonce = Alphanumeric
        .sample_string(&mut rng, 32)
        .to_ascii_uppercase();
    let mut message = Vec::with_capacity(reply.body.len() + 64);
    for part in [timestamp.as_bytes(), nonce.as_bytes(), &reply.body] {
        message.extend_from_slice(part);
        message.push(b'\n');
    }
    let signature =
        Signer::new(MessageDigest::sha256(), &shared.keys.wechatpay_private).and_then(|mut s| {
            s.update(&message)?;
            s.sign_to_vec()
        });
    let mut signature = match signature {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot sign the answer: {e}");
            return reply;
        }
    };
    if faults.tamper_signature {
        signature[0] ^= 0x01;
    }
    let serial = if faults.unknown_serial {
        UNKNOWN_SERIAL
    } else {
        shared.config.signing_serial.as_str()
    };
    reply.headers.extend([
        ("Wechatpay-Timestamp".to_owned(), timestamp),
        ("Wechatpay-Nonce".to_owned(), nonce),
        (
            "Wechatpay-Signature".to_owned(),
            openssl::base64::encode_block(&signature),
        ),
        ("Wechatpay-Serial".to_owned(), serial.to_owned()),
    ]);
    reply
}

// ---------------------------------------------------------------- admin

fn admin(shared: &Shared, req: &Incoming) -> Reply {
    let path = req.url.split_once('?').map_or(req.url.as_str(), |(p, _)| p);
    let segments: Vec<&str> = path.trim_start_matches("/sim/").split('/').collect();
    let method = req.method.as_str();
    match (method, segments.as_slice()) {
        ("GET", ["health"]) => Reply::json(200, &json!({ "status": "ok" })),
        ("POST", ["reset"]) => {
            *shared.state() = State::default();
            Reply::empty(204)
        }
        ("GET", ["stats"]) => Reply::json(200, &json!(shared.state().stats)),
        ("PUT", ["faults"]) => match parse::<Faults>(&req.body) {
            Ok(f) => {
                shared.state().global_faults = Some(f);
                Reply::empty(204)
            }
            Err(r) => r,
        },
        ("DELETE", ["faults"]) => {
            shared.state().global_faults = None;
            Reply::empty(204)
        }
        (_, ["orders", no, rest @ ..]) => {
            admin_order(shared, method, &percent_decode(no), rest, &req.body)
        }
        _ => Reply::error(404, "NOT_FOUND", "no such admin endpoint"),
    }
}

fn admin_order(shared: &Shared, method: &str, no: &str, rest: &[&str], body: &[u8]) -> Reply {
    let mut state = shared.state();
    match (method, rest) {
        ("GET", []) => match state.orders.get(no) {
            Some(o) => Reply::json(200, &json!(o)),
            None => Reply::error(404, "ORDER_NOT_EXIST", "no such order in the simulator"),
        },
        ("PUT", []) => match parse::<Order>(body) {
            Ok(mut order) => {
                if let Some(old) = state.orders.get(no) {
                    order.queries = old.queries;
                    order.closes = old.closes;
                }
                let reply = Reply::json(200, &json!(order));
                state.orders.insert(no.to_owned(), order);
                reply
            }
            Err(r) => r,
        },
        ("DELETE", []) => {
            state.orders.remove(no);
            Reply::empty(204)
        }
        ("POST", ["pay"]) => {
            let Some(order) = state.orders.get_mut(no) else {
                return Reply::error(404, "ORDER_NOT_EXIST", "no such order in the simulator");
            };
            if !matches!(
                order.trade_state.as_str(),
                "NOTPAY" | "USERPAYING" | "PAYERROR"
            ) {
                return Reply::error(
                    409,
                    "CONFLICT",
                    &format!("an order in {} cannot be paid", order.trade_state),
                );
            }
            "SUCCESS".clone_into(&mut order.trade_state);
            order.payer_total = Some(order.amount_total);
            let mut rng = rand::rng();
            order.transaction_id =
                Some(format!("42000{:023}", rng.random_range(0..10u128.pow(23))));
            order.success_time = Some(
                chrono::Utc::now()
                    .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset"))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
            );
            Reply::json(200, &json!(order))
        }
        ("PUT", ["faults"]) => {
            let faults = match parse::<Faults>(body) {
                Ok(f) => f,
                Err(r) => return r,
            };
            match state.orders.get_mut(no) {
                Some(order) => {
                    order.faults = Some(faults);
                    Reply::empty(204)
                }
                None => Reply::error(404, "ORDER_NOT_EXIST", "no such order in the simulator"),
            }
        }
        ("DELETE", ["faults"]) => {
            if let Some(order) = state.orders.get_mut(no) {
                order.faults = None;
            }
            Reply::empty(204)
        }
        _ => Reply::error(404, "NOT_FOUND", "no such admin endpoint"),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, "PARAM_ERROR", &format!("bad JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_two_endpoints_only() {
        let c = route(
            "GET",
            "/v3/pay/transactions/out-trade-no/ORD123%7Cx?mchid=1900000001",
        )
        .unwrap();
        assert_eq!(
            (
                c.endpoint,
                c.out_trade_no.as_str(),
                c.query_mchid.as_deref()
            ),
            (Endpoint::Query, "ORD123|x", Some("1900000001"))
        );
        let c = route("POST", "/v3/pay/transactions/out-trade-no/ORD123/close").unwrap();
        assert_eq!(
            (c.endpoint, c.out_trade_no.as_str()),
            (Endpoint::Close, "ORD123")
        );
        assert!(route("POST", "/v3/pay/transactions/out-trade-no/ORD123").is_none());
        assert!(route("GET", "/v3/pay/transactions/out-trade-no/ORD123/close").is_none());
        assert!(route("GET", "/v3/pay/transactions/id/42000").is_none());
        assert!(route("GET", "/v3/pay/transactions/out-trade-no/a/b").is_none());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%7Cb%2a"), "a|b*");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
