//! The embeddable simulator: the [`Simulator`] handle with its
//! configuration, start-up and shutdown, the state every request handler
//! shares, the `Reply` type handlers build, and the top-level dispatch of
//! each request to the WeChat Pay API or to the admin API under `/sim/`.
//!
//! It exists so that the lifecycle and the shared types live in one place,
//! while what each endpoint does lives in its own module: `api` (the WeChat
//! Pay endpoints), `auth` (request checks), `signing` (response signatures),
//! `admin_api` (the `/sim/` endpoints), `refund` (refunds), `notify`
//! (payment and refund notifications), `tradebill` (the trade bill
//! endpoints) and `bill` (the bill's text).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::admin::AdminClient;
use crate::http::{Listening, Request as Incoming, SHUTDOWN_GRACE};
use crate::keys::{ApiV3Key, ClientFiles, KeyError, SimKeys};
use crate::model::{BillFaults, Faults, Order, Stats};
use crate::notify::{self, Notifier};
use crate::refund::RefundRecord;
use crate::tradebill::BillLink;
use crate::{admin_api, api};

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
    /// Prepay calls must name this `appid` (any when `None`); also the
    /// `appid` of answers about orders that were never prepaid.
    pub appid: Option<String>,
    /// Encrypts payment notifications ([`crate::DEFAULT_APIV3_KEY`] unless
    /// told otherwise).
    pub apiv3_key: ApiV3Key,
    /// Waits before each retry of a notification that failed: after the
    /// first failed attempt `notify_schedule[0]`, and so on; after the last
    /// the simulator gives up. Default: [`crate::WECHATPAY_NOTIFY_SCHEDULE`]
    /// divided by 100 (150 ms, 150 ms, 300 ms, 1.8 s, ... 216 s).
    pub notify_schedule: Vec<Duration>,
    /// How long a refund stays `PROCESSING` before it becomes final (200 ms
    /// unless told otherwise; `PUT /sim/refunds/outcome` can change it
    /// while running).
    pub refund_delay: Duration,
    /// How long a trade bill download link lives (30 s, as at WeChat Pay,
    /// unless told otherwise).
    pub bill_link_ttl: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            mchid: Some(crate::DEFAULT_MCHID.to_owned()),
            merchant_serial_no: Some(crate::DEFAULT_MERCHANT_SERIAL_NO.to_owned()),
            signing_serial: crate::DEFAULT_PUBLIC_KEY_ID.to_owned(),
            auto_create: false,
            appid: None,
            apiv3_key: ApiV3Key::default(),
            notify_schedule: crate::WECHATPAY_NOTIFY_SCHEDULE
                .iter()
                .map(|d| *d / 100)
                .collect(),
            refund_delay: Duration::from_millis(200),
            bill_link_ttl: Duration::from_secs(30),
        }
    }
}

/// The simulator could not start.
#[derive(Debug, thiserror::Error)]
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
pub(crate) struct State {
    pub(crate) orders: HashMap<String, Order>,
    pub(crate) global_faults: Option<Faults>,
    pub(crate) stats: Stats,
    /// The last signed API answer about each `out_trade_no`, for replays.
    pub(crate) last_answers: HashMap<String, Reply>,
    /// Send no payment or refund notification at all (each counted as
    /// dropped).
    pub(crate) drop_notifications: bool,
    /// Refunds by `out_refund_no`.
    pub(crate) refunds: HashMap<String, RefundRecord>,
    /// The final status of refunds without their own outcome (`SUCCESS`
    /// when `None`).
    pub(crate) refund_outcome: Option<String>,
    /// Replaces `SimConfig::refund_delay` for refunds created from now on.
    pub(crate) refund_delay: Option<Duration>,
    pub(crate) bill_faults: BillFaults,
    /// Trade bill download links by token.
    pub(crate) bill_links: HashMap<String, BillLink>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) keys: SimKeys,
    pub(crate) config: SimConfig,
    /// The bound address: the origin of bill download links when a
    /// request names no `Host`.
    pub(crate) addr: SocketAddr,
    pub(crate) notifier: Notifier,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
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
    /// `None` once stopped.
    http: Option<Listening>,
    senders: Vec<JoinHandle<()>>,
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
    /// Listens on `addr` (`127.0.0.1:0` picks a free port) and serves from
    /// a thread of its own (see the `http` module) until
    /// [`Simulator::shutdown`] or drop. A few threads send payment
    /// notifications.
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
            addr: bound,
            notifier: Notifier::default(),
        });
        let senders = notify::start_senders(&shared).map_err(SimError::Thread)?;
        let http =
            Listening::start(listener, crate::http::app(Arc::clone(&shared))).map_err(|e| {
                shared.notifier.stop();
                SimError::Thread(e)
            })?;
        log::info!("wechatpay simulator listening on http://{bound}");
        Ok(Self {
            addr: bound,
            shared,
            http: Some(http),
            senders,
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

    /// Writes the files a client needs into `dir`, with this simulator's
    /// keys and APIv3 key (see [`SimKeys::write_client_files_with`]).
    pub fn write_client_files(&self, dir: &std::path::Path) -> Result<ClientFiles, KeyError> {
        self.shared
            .keys
            .write_client_files_with(dir, &self.shared.config.apiv3_key)
    }

    /// The environment lines a client needs to talk to this simulator, one
    /// `NAME=value` per line: the six the worker reads, then
    /// `WECHATPAY_APIV3_KEY_FILE` for a notification receiver.
    #[must_use]
    pub fn env_lines(&self, files: &ClientFiles) -> String {
        let c = &self.shared.config;
        format!(
            "WECHATPAY_BASE_URL={}\nWECHATPAY_MCHID={}\nWECHATPAY_MERCHANT_SERIAL_NO={}\nWECHATPAY_MERCHANT_KEY_FILE={}\nWECHATPAY_PUBLIC_KEY_ID={}\nWECHATPAY_PUBLIC_KEY_FILE={}\nWECHATPAY_APIV3_KEY_FILE={}\n",
            self.base_url(),
            c.mchid.as_deref().unwrap_or(crate::DEFAULT_MCHID),
            c.merchant_serial_no.as_deref().unwrap_or(crate::DEFAULT_MERCHANT_SERIAL_NO),
            files.merchant_key_file.display(),
            c.signing_serial,
            files.wechatpay_public_key_file.display(),
            files.apiv3_key_file.display(),
        )
    }

    /// Stops accepting, lets connections finish the requests in hand (at
    /// most a few seconds) and closes them. Queued notifications are not
    /// sent; one in flight may finish its attempt (at most 5 s).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(mut http) = self.http.take() else {
            return;
        };
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        http.begin_stop();
        self.shared.notifier.stop();
        // The listener gives the requests in hand the same grace.
        http.wait();
        while self.senders.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // A sender still stuck in an attempt is left to end on its own.
        for sender in std::mem::take(&mut self.senders) {
            if sender.is_finished() {
                let _ = sender.join();
            }
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
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    pub(crate) headers: Vec<(String, String)>,
}

impl Reply {
    pub(crate) fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }

    pub(crate) fn error(status: u16, code: &str, message: &str) -> Self {
        Self::json(status, &json!({ "code": code, "message": message }))
    }

    pub(crate) fn empty(status: u16) -> Self {
        Self {
            status,
            body: Vec::new(),
            headers: Vec::new(),
        }
    }
}

/// The answer to one request: the admin API under `/sim/`, else the WeChat
/// Pay API; JSON unless the reply says otherwise.
pub(crate) fn handle(shared: &Shared, incoming: &Incoming) -> Reply {
    let started = Instant::now();
    let mut reply = if incoming.url.starts_with("/sim/") {
        admin_api::admin(shared, incoming)
    } else {
        api::api(shared, incoming)
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
    reply
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
