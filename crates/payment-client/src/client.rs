//! The client: builds signed requests, sends them on one shared agent,
//! verifies every answer and maps it to an outcome or a typed error. (The
//! one unsigned answer, a trade bill file, is trusted through the SHA1 a
//! verified answer gave for it: see `trade_bill`.)

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use ureq::http::{HeaderMap, Uri};

use crate::bill::{self, BillError, TradeBill};
use crate::config::{Config, ConfigError};
use crate::error::{Error, DEFAULT_RATE_LIMIT_BACKOFF};
use crate::model::{
    CloseAnswer, NativePrepay, QueryOutcome, RawRefund, RawTransaction, Refund, RefundRequest,
};
use crate::observe::{Call, CallObserver, CallResult};
use crate::signing::{self, MerchantKey};
use crate::verify::{self, KeyStore, ReplayGuard};

/// `User-Agent` of every request: WeChat Pay refuses requests without one.
pub const USER_AGENT: &str = concat!("order-timeout/", env!("CARGO_PKG_VERSION"));

/// Responses larger than this are not WeChat Pay's answers to our calls.
const MAX_BODY: u64 = 1024 * 1024;
/// A `Retry-After` longer than this is capped: the caller's own back-off
/// schedule takes over beyond it.
const MAX_RETRY_AFTER: Duration = Duration::from_mins(5);
/// The whole trade bill download may take this long (at least; the
/// configured timeout if longer): a big day is megabytes, not the few hundred
/// bytes of an answer.
const BILL_DOWNLOAD_TIMEOUT: Duration = Duration::from_mins(5);
/// Read and write buffer of each pooled connection.
const IO_BUFFER_SIZE: usize = 16 * 1024;
/// The longest prepay `description` WeChat Pay accepts, in characters.
const MAX_DESCRIPTION_CHARS: usize = 127;
/// The longest refund `reason` WeChat Pay accepts, in characters.
const MAX_REFUND_REASON_CHARS: usize = 80;

/// Checks the `out_trade_no` rule (6 to 32 of `0-9 a-z A-Z _ - | *`). It
/// also keeps anything that could change the URL's meaning out of the path.
pub fn validate_out_trade_no(out_trade_no: &str) -> Result<(), Error> {
    let ok = (6..=32).contains(&out_trade_no.len())
        && out_trade_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidOutTradeNo(out_trade_no.to_owned()))
    }
}

/// Checks the `out_refund_no` rule (1 to 64 of `0-9 a-z A-Z _ - | * @`),
/// which also keeps anything that could change the URL's meaning out of the
/// refund query's path. Refused as [`Error::InvalidArgument`].
pub fn validate_out_refund_no(out_refund_no: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&out_refund_no.len())
        && out_refund_no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'|' | b'*' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field: "out_refund_no",
            reason: "expected 1 to 64 of 0-9 a-z A-Z _ - | * @",
        })
    }
}

/// WeChat Pay APIv3 client for native prepay, query, close, domestic
/// refunds and trade bills. Cheap to
/// share: `Send + Sync`, one connection pool for all threads (wrap it in an
/// `Arc`).
pub struct Client {
    agent: ureq::Agent,
    base_url: String,
    backup_base_url: Option<String>,
    mchid: String,
    merchant_serial_no: String,
    merchant_key: MerchantKey,
    /// Sent as `Wechatpay-Serial` on requests in public key mode.
    public_key_id: Option<String>,
    keys: KeyStore,
    replays: ReplayGuard,
    observer: Option<Arc<dyn CallObserver>>,
    /// The configured overall timeout (the bill download may take longer).
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("backup_base_url", &self.backup_base_url)
            .field("mchid", &self.mchid)
            .field("merchant_serial_no", &self.merchant_serial_no)
            .field("merchant_key", &self.merchant_key)
            .field("public_key_id", &self.public_key_id)
            .field("keys", &self.keys)
            .field("observer", &self.observer)
            .finish_non_exhaustive()
    }
}

/// A response whose signature has been verified.
struct Verified {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<Duration>,
}

#[derive(Debug, Deserialize)]
struct ApiErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    detail: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TradeBillAnswer {
    #[serde(default)]
    hash_type: Option<String>,
    #[serde(default)]
    hash_value: Option<String>,
    #[serde(default)]
    download_url: Option<String>,
}

#[derive(Deserialize)]
struct NativePrepayAnswer {
    #[serde(default)]
    code_url: Option<String>,
}

#[derive(Clone, Copy)]
enum Method {
    Get,
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

impl Client {
    /// Validates `config`, loads the keys and sets up the HTTP agent.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let invalid = |setting, reason: &str| ConfigError::Invalid {
            setting,
            reason: reason.to_owned(),
        };
        if config.mchid.is_empty() || !config.mchid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "WECHATPAY_MCHID",
                "expected the merchant id, digits only",
            ));
        }
        if config.merchant_serial_no.is_empty()
            || !config
                .merchant_serial_no
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        {
            return Err(invalid(
                "WECHATPAY_MERCHANT_SERIAL_NO",
                "expected the merchant certificate serial number (hex)",
            ));
        }
        let base_url = check_base_url(&config.base_url)
            .map_err(|reason| invalid("WECHATPAY_BASE_URL", &reason))?;
        let backup_base_url = match &config.backup_base_url {
            Some(url) => {
                Some(check_base_url(url).map_err(|reason| invalid("backup base URL", &reason))?)
            }
            None => None,
        };
        if config.connect_timeout.is_zero() || config.timeout.is_zero() {
            return Err(invalid("timeout", "timeouts must be greater than zero"));
        }

        let merchant_key = MerchantKey::load(&config.merchant_key_file)?;

        let mut keys = KeyStore::new();
        let mut public_key_id = None;
        if let Some(pk) = &config.wechatpay_public_key {
            if !pk.id.starts_with("PUB_KEY_ID_")
                || !pk
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(invalid(
                    "WECHATPAY_PUBLIC_KEY_ID",
                    "expected PUB_KEY_ID_ followed by digits",
                ));
            }
            keys.insert(pk.id.clone(), KeyStore::load_public_key(&pk.file)?);
            public_key_id = Some(pk.id.clone());
        }
        for cert in &config.platform_certificates {
            if cert.serial.is_empty() || !cert.serial.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "platform certificate serial",
                    "expected hex digits",
                ));
            }
            let key = KeyStore::load_platform_certificate(&cert.file, &cert.serial)?;
            // Responses name the serial in upper case hex.
            keys.insert(cert.serial.to_ascii_uppercase(), key.clone());
            keys.insert(cert.serial.clone(), key);
        }
        if keys.is_empty() {
            return Err(ConfigError::NoVerificationKey);
        }
        if base_url.starts_with("http://") {
            log::warn!("WeChat Pay base URL {base_url} is plain http: fine for a local simulator, never for production");
        }
        let agent = build_agent(&config)?;
        let timeout = config.timeout;

        Ok(Self {
            agent,
            base_url,
            backup_base_url,
            mchid: config.mchid,
            merchant_serial_no: config.merchant_serial_no,
            merchant_key,
            public_key_id,
            keys,
            replays: ReplayGuard::new(ReplayGuard::DEFAULT_CAPACITY),
            observer: None,
            timeout,
        })
    }

    /// Reports every request sent (which call, what came back, how long it
    /// took) to `observer`: the binaries' metrics. Requests refused before
    /// sending are not reported.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The merchant id every request is made for.
    #[must_use]
    pub fn mchid(&self) -> &str {
        &self.mchid
    }

    /// The WeChat Pay keys answers are verified with, for verifying payment
    /// notifications with the same trust ([`crate::notify`]). Clone it to
    /// keep it.
    #[must_use]
    pub fn key_store(&self) -> &KeyStore {
        &self.keys
    }

    /// `POST /v3/pay/transactions/native`: creates (or, with the same
    /// parameters, finds again) the payment order and returns its `code_url`
    /// (`weixin://wxpay/bizpayurl?pr=...`), to be shown as a QR code.
    ///
    /// Refused before sending, as [`Error::InvalidOutTradeNo`] or
    /// [`Error::InvalidArgument`]: a bad `out_trade_no`, an empty `appid`,
    /// `time_expire` or `notify_url`, a `description` empty or over 127
    /// characters, a total of 0 fen or less. WeChat Pay's refusals are
    /// [`Error::Rejected`] with its code: 403 `ORDERPAID`, 400
    /// `ORDER_CLOSED`, 400 `INVALID_REQUEST` (same `out_trade_no`, other
    /// parameters), `PARAM_ERROR`, ... Retrying after a transient error is
    /// safe: the same parameters find the same payment order.
    pub fn native_prepay(&self, req: &NativePrepay) -> Result<String, Error> {
        check_native_prepay(req)?;
        let body = serde_json::json!({
            "appid": req.appid,
            "mchid": self.mchid,
            "description": req.description,
            "out_trade_no": req.out_trade_no,
            "time_expire": req.time_expire,
            "notify_url": req.notify_url,
            "amount": { "total": req.total_fen, "currency": "CNY" },
        })
        .to_string();
        let resp = self.execute(
            Call::NativePrepay,
            Method::Post,
            "/v3/pay/transactions/native",
            body.as_bytes(),
        )?;
        match resp.status {
            200 => {
                let answer: NativePrepayAnswer =
                    serde_json::from_slice(&resp.body).map_err(|e| Error::UnexpectedResponse {
                        status: 200,
                        reason: format!("prepay answer is not JSON with a code_url: {e}"),
                    })?;
                answer
                    .code_url
                    .filter(|url| !url.is_empty())
                    .ok_or_else(|| Error::UnexpectedResponse {
                        status: 200,
                        reason: "prepay answer has no code_url".to_owned(),
                    })
            }
            201..=299 => Err(Error::UnexpectedResponse {
                status: resp.status,
                reason: "prepay answered a success other than 200".to_owned(),
            }),
            _ => Err(error_for(&resp)),
        }
    }

    /// `GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=...`
    ///
    /// `Ok(NotFound)` only for a verified 404 `ORDER_NOT_EXIST`; an unknown
    /// `trade_state` is [`Error::UnknownTradeState`].
    pub fn query_by_out_trade_no(&self, out_trade_no: &str) -> Result<QueryOutcome, Error> {
        validate_out_trade_no(out_trade_no)?;
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}?mchid={}",
            encode_path_segment(out_trade_no),
            self.mchid
        );
        let resp = self.execute(Call::Query, Method::Get, &path, b"")?;
        match resp.status {
            200 => {
                let raw: RawTransaction =
                    serde_json::from_slice(&resp.body).map_err(|e| Error::UnexpectedResponse {
                        status: 200,
                        reason: format!("query answer is not a transaction: {e}"),
                    })?;
                // The answer must name the order and the merchant asked
                // about: absent counts as different. Nothing may ever be
                // settled on an answer about another order.
                if raw.out_trade_no.as_deref() != Some(out_trade_no) {
                    return Err(Error::UnexpectedResponse {
                        status: 200,
                        reason: format!(
                            "asked about {out_trade_no}, got an answer about {}",
                            raw.out_trade_no.as_deref().unwrap_or("(no out_trade_no)")
                        ),
                    });
                }
                if raw.mchid.as_deref() != Some(self.mchid.as_str()) {
                    return Err(Error::UnexpectedResponse {
                        status: 200,
                        reason: format!(
                            "answer is for merchant {}, not {}",
                            raw.mchid.as_deref().unwrap_or("(no mchid)"),
                            self.mchid
                        ),
                    });
                }
                raw.into_transaction()
                    .map(QueryOutcome::Found)
                    .map_err(|state| Error::UnknownTradeState {
                        out_trade_no: out_trade_no.to_owned(),
                        state,
                    })
            }
            404 => match error_for(&resp) {
                Error::Rejected { code, .. } if code == "ORDER_NOT_EXIST" => {
                    Ok(QueryOutcome::NotFound)
                }
                other => Err(other),
            },
            _ => Err(error_for(&resp)),
        }
    }

    /// `POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close`
    ///
    /// `Closed` (204) is not proof that nothing was paid: query again.
    pub fn close(&self, out_trade_no: &str) -> Result<CloseAnswer, Error> {
        validate_out_trade_no(out_trade_no)?;
        let path = format!(
            "/v3/pay/transactions/out-trade-no/{}/close",
            encode_path_segment(out_trade_no)
        );
        let body = serde_json::json!({ "mchid": self.mchid }).to_string();
        let resp = self.execute(Call::Close, Method::Post, &path, body.as_bytes())?;
        match resp.status {
            204 => Ok(CloseAnswer::Closed),
            202 => Ok(CloseAnswer::UserPaying),
            200..=299 => Err(Error::UnexpectedResponse {
                status: resp.status,
                reason: "close answered neither 204 nor 202".to_owned(),
            }),
            _ => Err(error_for(&resp)),
        }
    }

    /// `POST /v3/refund/domestic/refunds`: refunds `refund_fen` of a paid
    /// transaction, or (the same `out_refund_no` again) finds the refund
    /// already asked for: WeChat Pay never refunds one `out_refund_no`
    /// twice, so retrying after a transient error is safe. The answer is
    /// usually `PROCESSING`; follow it with [`Client::query_refund`] or the
    /// refund notification.
    ///
    /// Refused before sending, as [`Error::InvalidArgument`]: an
    /// `out_refund_no` not 1 to 64 of `0-9 a-z A-Z _ - | * @`, an empty
    /// `transaction_id`, a refund of 0 fen or less or more than the total, a
    /// `reason` over 80 characters, an empty `notify_url`. WeChat Pay's
    /// refusals are [`Error::Rejected`] with its code: 404
    /// `RESOURCE_NOT_EXISTS` (no such transaction), 403 `NOT_ENOUGH`
    /// (merchant balance), 400 `INVALID_REQUEST`, `PARAM_ERROR`, ... An
    /// answer about another refund is [`Error::UnexpectedResponse`], an
    /// unknown `status` [`Error::UnknownRefundStatus`].
    pub fn refund(&self, req: &RefundRequest) -> Result<Refund, Error> {
        check_refund(req)?;
        let body = refund_body(req).to_string();
        let resp = self.execute(
            Call::Refund,
            Method::Post,
            "/v3/refund/domestic/refunds",
            body.as_bytes(),
        )?;
        match resp.status {
            200 => {
                let refund = parse_refund(&resp.body, &req.out_refund_no)?;
                // An answer about another payment is as untrustworthy as one
                // about another refund (absent is tolerated: it is optional).
                if let Some(other) = refund
                    .transaction_id
                    .as_deref()
                    .filter(|t| *t != req.transaction_id)
                {
                    return Err(Error::UnexpectedResponse {
                        status: 200,
                        reason: format!(
                            "refund {} asked for transaction {}, got an answer about transaction {other}",
                            req.out_refund_no, req.transaction_id
                        ),
                    });
                }
                Ok(refund)
            }
            201..=299 => Err(Error::UnexpectedResponse {
                status: resp.status,
                reason: "refund answered a success other than 200".to_owned(),
            }),
            _ => Err(error_for(&resp)),
        }
    }

    /// `GET /v3/refund/domestic/refunds/{out_refund_no}`
    ///
    /// `Ok(None)` only for a verified 404 `RESOURCE_NOT_EXISTS` (no refund
    /// with this number was ever accepted); an answer about another refund
    /// is [`Error::UnexpectedResponse`], an unknown `status`
    /// [`Error::UnknownRefundStatus`].
    pub fn query_refund(&self, out_refund_no: &str) -> Result<Option<Refund>, Error> {
        validate_out_refund_no(out_refund_no)?;
        let path = format!(
            "/v3/refund/domestic/refunds/{}",
            encode_path_segment(out_refund_no)
        );
        let resp = self.execute(Call::RefundQuery, Method::Get, &path, b"")?;
        match resp.status {
            200 => parse_refund(&resp.body, out_refund_no).map(Some),
            404 => match error_for(&resp) {
                Error::Rejected { code, .. } if code == "RESOURCE_NOT_EXISTS" => Ok(None),
                other => Err(other),
            },
            201..=299 => Err(Error::UnexpectedResponse {
                status: resp.status,
                reason: "refund query answered a success other than 200".to_owned(),
            }),
            _ => Err(error_for(&resp)),
        }
    }

    /// `GET /v3/bill/tradebill?bill_date=...&bill_type=ALL&tar_type=GZIP`
    /// (the answer verified like any other), then at once a signed `GET` of
    /// its `download_url`. The file carries no signature: it is trusted
    /// through the verified answer's `hash_value`, the SHA1 of the
    /// decompressed text, which must match or the whole file is refused.
    /// The text is then parsed and checked against its summary
    /// ([`crate::parse_bill`]).
    ///
    /// `Ok(NotReady)` for a verified 400 `STATEMENT_CREATING` (ask again
    /// later; yesterday's bill is ready after 10:00 Beijing time),
    /// `Ok(NoStatement)` for a verified 400 `NO_STATEMENT_EXIST` (no trades
    /// that day). A `download_url` on another origin than the configured
    /// base URL or backup base URL, a `hash_type` other than SHA1 or a
    /// missing field is [`Error::UnexpectedResponse`]; a refused download or
    /// a file that fails its checks is [`Error::Bill`]; anything else as for
    /// any call ([`Error::Rejected`] with `INVALID_REQUEST` for a date out of
    /// range, `NO_AUTH`, ...).
    pub fn trade_bill(&self, date: chrono::NaiveDate) -> Result<TradeBill, Error> {
        let path = format!(
            "/v3/bill/tradebill?bill_date={}&bill_type=ALL&tar_type=GZIP",
            date.format("%Y-%m-%d")
        );
        let resp = self.execute(Call::TradeBill, Method::Get, &path, b"")?;
        match resp.status {
            200 => {
                let (hash_value, download_url) = parse_trade_bill_answer(&resp.body)?;
                let bases = std::iter::once(self.base_url.as_str())
                    .chain(self.backup_base_url.as_deref())
                    .collect::<Vec<_>>();
                let (base, path_and_query) =
                    download_target(&download_url, &bases).map_err(|reason| {
                        Error::UnexpectedResponse {
                            status: 200,
                            reason,
                        }
                    })?;
                let file = self.download(base, &path_and_query)?;
                Ok(TradeBill::Ready(bill::open_download(&file, &hash_value)?))
            }
            400 => match error_for(&resp) {
                Error::Rejected { code, message, .. } if code == "STATEMENT_CREATING" => {
                    Ok(TradeBill::NotReady { message })
                }
                Error::Rejected { code, .. } if code == "NO_STATEMENT_EXIST" => {
                    Ok(TradeBill::NoStatement)
                }
                other => Err(other),
            },
            201..=299 => Err(Error::UnexpectedResponse {
                status: resp.status,
                reason: "trade bill answered a success other than 200".to_owned(),
            }),
            _ => Err(error_for(&resp)),
        }
    }

    /// The signed download of a bill file at `base` + `path_and_query`,
    /// reported to the observer as [`Call::BillDownload`]. The answer is not
    /// signature-verified (the file has no signature); its body is read up
    /// to [`bill::MAX_DOWNLOAD_BYTES`].
    fn download(&self, base: &str, path_and_query: &str) -> Result<Vec<u8>, Error> {
        let started = Instant::now();
        let (observed, result) = self.download_once(base, path_and_query);
        if let Some(observer) = &self.observer {
            observer.observe(Call::BillDownload, &observed, started.elapsed());
        }
        result
    }

    fn download_once(
        &self,
        base: &str,
        path_and_query: &str,
    ) -> (CallResult, Result<Vec<u8>, Error>) {
        // The query holds the download token: errors and logs name the
        // path only.
        let shown = format!(
            "{base}{}",
            path_and_query.split('?').next().unwrap_or_default()
        );
        let url = format!("{base}{path_and_query}");
        let timestamp = unix_now();
        let nonce = signing::new_nonce();
        let message = signing::request_message("GET", path_and_query, timestamp, &nonce, b"");
        let signature = match self.merchant_key.sign(&message) {
            Ok(s) => s,
            Err(e) => return (CallResult::SigningError, Err(Error::Signing(e))),
        };
        let authorization = signing::authorization_header(
            &self.mchid,
            &self.merchant_serial_no,
            timestamp,
            &nonce,
            &signature,
        );
        let mut req = self
            .agent
            .get(&url)
            .header("Authorization", &authorization)
            .header("Accept", "application/json");
        if let Some(id) = &self.public_key_id {
            req = req.header(verify::HEADER_SERIAL, id);
        }
        let started = Instant::now();
        let result = req
            .config()
            .timeout_global(Some(self.timeout.max(BILL_DOWNLOAD_TIMEOUT)))
            .build()
            .call();
        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                let e = map_ureq_error(e, &shown);
                return (CallResult::of_unanswered(&e), Err(e));
            }
        };
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(bill::MAX_DOWNLOAD_BYTES)
            .read_to_vec();
        log::debug!(
            "GET {shown} -> {status} in {:?} (Request-ID {})",
            started.elapsed(),
            header(resp.headers(), "Request-ID").unwrap_or("-"),
        );
        let body = match body {
            Ok(body) => body,
            Err(ureq::Error::BodyExceedsLimit(limit)) => {
                let e = Error::Bill(BillError::TooLarge {
                    what: "download",
                    limit,
                });
                return (CallResult::Answered { status, code: None }, Err(e));
            }
            Err(e) => {
                let e = map_ureq_error(e, &shown);
                return (CallResult::of_unanswered(&e), Err(e));
            }
        };
        if status == 200 {
            return (CallResult::Answered { status, code: None }, Ok(body));
        }
        let parsed: Option<ApiErrorBody> = serde_json::from_slice(&body).ok();
        let (code, message) = match parsed {
            Some(b) => (b.code, b.message),
            None => (None, None),
        };
        (
            CallResult::Answered {
                status,
                code: code.clone(),
            },
            Err(Error::Bill(BillError::DownloadRefused {
                status,
                code,
                message: message.map(|m| m.chars().take(200).collect()),
            })),
        )
    }

    /// Sends once to the main URL and, if that could not even connect, once
    /// to the backup domain.
    fn execute(
        &self,
        call: Call,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> Result<Verified, Error> {
        let started = Instant::now();
        let result = self.execute_once_or_backup(method, path, body);
        if let Some(observer) = &self.observer {
            observer.observe(call, &CallResult::of(&result), started.elapsed());
        }
        result
    }

    fn execute_once_or_backup(
        &self,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> Result<Verified, Error> {
        match self.send(&self.base_url, method, path, body) {
            Err(Error::Connect { url, source }) if self.backup_base_url.is_some() => {
                let backup = self.backup_base_url.as_deref().unwrap_or_default();
                log::warn!("cannot connect to {url} ({source}); trying backup {backup}");
                self.send(backup, method, path, body)
            }
            other => other,
        }
    }

    fn send(&self, base: &str, method: Method, path: &str, body: &[u8]) -> Result<Verified, Error> {
        let url = format!("{base}{path}");
        let timestamp = unix_now();
        let nonce = signing::new_nonce();
        let message = signing::request_message(method.as_str(), path, timestamp, &nonce, body);
        let signature = self.merchant_key.sign(&message).map_err(Error::Signing)?;
        let authorization = signing::authorization_header(
            &self.mchid,
            &self.merchant_serial_no,
            timestamp,
            &nonce,
            &signature,
        );

        let started = Instant::now();
        let result = match method {
            Method::Get => {
                let mut req = self
                    .agent
                    .get(&url)
                    .header("Authorization", &authorization)
                    .header("Accept", "application/json");
                if let Some(id) = &self.public_key_id {
                    req = req.header(verify::HEADER_SERIAL, id);
                }
                req.call()
            }
            Method::Post => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Authorization", &authorization)
                    .header("Accept", "application/json")
                    .header("Content-Type", "application/json");
                if let Some(id) = &self.public_key_id {
                    req = req.header(verify::HEADER_SERIAL, id);
                }
                req.send(body)
            }
        };
        let mut resp = result.map_err(|e| map_ureq_error(e, &url))?;
        let status = resp.status().as_u16();
        let resp_body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| map_ureq_error(e, &url))?;
        let headers = resp.headers();
        log::debug!(
            "{} {url} -> {status} in {:?} (Request-ID {})",
            method.as_str(),
            started.elapsed(),
            header(headers, "Request-ID").unwrap_or("-"),
        );

        let now = unix_now();
        self.keys
            .verify(|name| header(headers, name), &resp_body, now)
            .and_then(|()| {
                // Verified above: both headers are present and valid.
                let ts = header(headers, verify::HEADER_TIMESTAMP)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_default();
                let nonce = header(headers, verify::HEADER_NONCE).unwrap_or_default();
                self.replays.check(ts, nonce, now)
            })
            .map_err(|reason| Error::Unverified { status, reason })?;

        Ok(Verified {
            status,
            retry_after: header(headers, "Retry-After").and_then(parse_retry_after),
            body: resp_body,
        })
    }
}

/// The rules WeChat Pay would refuse a native prepay for, checked before
/// anything is signed or sent.
fn check_native_prepay(req: &NativePrepay) -> Result<(), Error> {
    let invalid = |field, reason| Err(Error::InvalidArgument { field, reason });
    validate_out_trade_no(&req.out_trade_no)?;
    if req.appid.is_empty() {
        return invalid("appid", "must not be empty");
    }
    if req.description.is_empty() {
        return invalid("description", "must not be empty");
    }
    if req.description.chars().count() > MAX_DESCRIPTION_CHARS {
        return invalid("description", "must be at most 127 characters");
    }
    if req.total_fen <= 0 {
        return invalid("amount", "total must be at least 1 fen");
    }
    if req.time_expire.is_empty() {
        return invalid("time_expire", "must not be empty");
    }
    if req.notify_url.is_empty() {
        return invalid("notify_url", "must not be empty");
    }
    Ok(())
}

/// The rules WeChat Pay would refuse a refund for, checked before anything
/// is signed or sent.
fn check_refund(req: &RefundRequest) -> Result<(), Error> {
    let invalid = |field, reason| Err(Error::InvalidArgument { field, reason });
    validate_out_refund_no(&req.out_refund_no)?;
    if req.transaction_id.is_empty() {
        return invalid("transaction_id", "must not be empty");
    }
    if req.refund_fen <= 0 {
        return invalid("amount", "refund must be at least 1 fen");
    }
    if req.refund_fen > req.total_fen {
        return invalid("amount", "refund must not exceed the total");
    }
    if req.reason.chars().count() > MAX_REFUND_REASON_CHARS {
        return invalid("reason", "must be at most 80 characters");
    }
    if req.notify_url.as_deref().is_some_and(str::is_empty) {
        return invalid("notify_url", "must not be empty (None leaves it out)");
    }
    Ok(())
}

/// The JSON body of a refund request.
fn refund_body(req: &RefundRequest) -> serde_json::Value {
    let mut body = serde_json::json!({
        "transaction_id": req.transaction_id,
        "out_refund_no": req.out_refund_no,
        "reason": req.reason,
        "amount": { "refund": req.refund_fen, "total": req.total_fen, "currency": "CNY" },
    });
    if let Some(url) = &req.notify_url {
        body["notify_url"] = url.as_str().into();
    }
    body
}

/// A verified 200 refund answer, which must be about `out_refund_no`: nothing
/// may ever be acted on from an answer about another refund.
fn parse_refund(body: &[u8], out_refund_no: &str) -> Result<Refund, Error> {
    let raw: RawRefund = serde_json::from_slice(body).map_err(|e| Error::UnexpectedResponse {
        status: 200,
        reason: format!("refund answer is not a refund: {e}"),
    })?;
    if raw.out_refund_no != out_refund_no {
        return Err(Error::UnexpectedResponse {
            status: 200,
            reason: format!(
                "asked about refund {out_refund_no}, got an answer about {}",
                raw.out_refund_no
            ),
        });
    }
    raw.into_refund()
        .map_err(|status| Error::UnknownRefundStatus {
            out_refund_no: out_refund_no.to_owned(),
            status,
        })
}

/// `hash_value` and `download_url` of a verified 200 trade bill answer.
fn parse_trade_bill_answer(body: &[u8]) -> Result<(String, String), Error> {
    let unexpected = |reason: String| Error::UnexpectedResponse {
        status: 200,
        reason,
    };
    let answer: TradeBillAnswer = serde_json::from_slice(body)
        .map_err(|e| unexpected(format!("trade bill answer is not JSON: {e}")))?;
    match answer.hash_type.as_deref() {
        Some("SHA1") => {}
        Some(other) => {
            return Err(unexpected(format!(
                "trade bill answer has hash_type {other:?}, expected SHA1"
            )))
        }
        None => return Err(unexpected("trade bill answer has no hash_type".to_owned())),
    }
    let hash_value = answer
        .hash_value
        .filter(|h| h.len() == 40 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            unexpected("trade bill answer has no SHA1 hash_value (40 hex digits)".to_owned())
        })?;
    let download_url = answer
        .download_url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| unexpected("trade bill answer has no download_url".to_owned()))?;
    Ok((hash_value, download_url))
}

/// Which of `bases` (scheme and host, as configured) `download_url` is on,
/// and its path and query exactly as they will be sent and signed. A URL on
/// any other origin is refused: a signed request goes only where the
/// configuration says WeChat Pay is. The error names the URL's origin only,
/// never its query (the download token).
fn download_target<'b>(download_url: &str, bases: &[&'b str]) -> Result<(&'b str, String), String> {
    let uri: Uri = download_url
        .parse()
        .map_err(|_| "trade bill download_url is not a URL".to_owned())?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err("trade bill download_url is not an absolute URL".to_owned());
    };
    let origin = format!("{scheme}://{authority}");
    if authority.as_str().contains('@') || download_url.contains('#') {
        return Err(format!(
            "trade bill download_url on {:?} carries user info or a fragment; refused",
            uri.host().unwrap_or_default()
        ));
    }
    let path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        // A bare origin reads as path `/`: no file to fetch.
        .filter(|pq| pq.starts_with('/') && !pq.starts_with("/?") && pq != "/")
        .ok_or_else(|| format!("trade bill download_url on {origin} has no file path"))?;
    let port = |u: &Uri| {
        u.port_u16().or(match u.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        })
    };
    for base in bases {
        let Ok(b) = base.parse::<Uri>() else { continue };
        let same = b
            .scheme_str()
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
            && b.host()
                .zip(uri.host())
                .is_some_and(|(x, y)| x.eq_ignore_ascii_case(y))
            && port(&b) == port(&uri);
        if same {
            return Ok((base, path_and_query));
        }
    }
    Err(format!(
        "trade bill download_url is on {origin}, not on the configured WeChat Pay base URL; refused"
    ))
}

/// The one HTTP agent of a client: no redirects, no decompression, small
/// buffers, idle connections for the threads, and a proxy only when asked.
fn build_agent(config: &Config) -> Result<ureq::Agent, ConfigError> {
    // Only an explicit setting routes WeChat Pay calls through a proxy:
    // ureq would otherwise follow ALL_PROXY/HTTPS_PROXY/HTTP_PROXY from
    // the environment, sending signed requests wherever they point.
    let proxy = match &config.proxy {
        Some(url) => {
            Some(
                ureq::Proxy::new(url.expose_secret()).map_err(|_| ConfigError::Invalid {
                    setting: "WECHATPAY_PROXY",
                    reason: "expected a proxy URL such as http://proxy.internal:3128".to_owned(),
                })?,
            )
        }
        None => None,
    };

    let config = ureq::Agent::config_builder()
        .proxy(proxy)
        .timeout_connect(Some(config.connect_timeout))
        .timeout_global(Some(config.timeout))
        // Status codes are answers to verify and classify, not errors.
        .http_status_as_error(false)
        // A signed request must not wander to another host.
        .max_redirects(0)
        .user_agent(USER_AGENT)
        // The signature covers the body as sent: no transparent decoding.
        .accept_encoding(ureq::config::AutoHeaderValue::None)
        // One idle connection per thread sharing the client.
        .max_idle_connections(config.max_idle_connections)
        .max_idle_connections_per_host(config.max_idle_connections)
        // Answers are a few hundred bytes; ureq's 128 KiB default buffers
        // per connection would cost megabytes with dozens of threads.
        .input_buffer_size(IO_BUFFER_SIZE)
        .output_buffer_size(IO_BUFFER_SIZE)
        .build();
    // ureq resolves the host of every request; its own resolver spawns a
    // thread per lookup (see `resolve`).
    Ok(ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        crate::resolve::CachingResolver::default(),
    ))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `|` is not allowed raw in a URI path; the signature covers the encoded
/// form, which is what goes on the wire.
fn encode_path_segment(s: &str) -> String {
    s.replace('|', "%7C")
}

fn check_base_url(url: &str) -> Result<String, String> {
    let url = url.trim_end_matches('/');
    let uri: Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("https" | "http"));
    let bare = uri
        .path_and_query()
        .is_none_or(|pq| pq.as_str().is_empty() || pq.as_str() == "/");
    let Some(host) = uri.host().filter(|_| scheme_ok && bare) else {
        return Err(format!(
            "{url:?}: expected scheme and host only, e.g. https://api.mch.weixin.qq.com"
        ));
    };
    // Signed requests and the answers we act on must not cross a network in
    // clear: plain http only to this machine (a local simulator).
    if uri.scheme_str() == Some("http") && !is_loopback(host) {
        return Err(format!(
            "{url:?}: plain http is allowed only to this machine (127.0.0.0/8, ::1, localhost); use https"
        ));
    }
    Ok(url.to_owned())
}

/// `localhost`, an address in 127.0.0.0/8, or `::1` (bracketed in a URI).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

fn map_ureq_error(e: ureq::Error, url: &str) -> Error {
    let url = url.to_owned();
    match &e {
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed => Error::Connect { url, source: e },
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::HostUnreachable
                    | io::ErrorKind::NetworkUnreachable
                    | io::ErrorKind::NetworkDown
                    | io::ErrorKind::AddrNotAvailable
            ) =>
        {
            Error::Connect { url, source: e }
        }
        ureq::Error::Timeout(_) => Error::Timeout { url, source: e },
        _ => Error::Transport { url, source: e },
    }
}

impl CallResult {
    fn of(result: &Result<Verified, Error>) -> Self {
        match result {
            Ok(resp) => Self::Answered {
                status: resp.status,
                code: if (200..300).contains(&resp.status) {
                    None
                } else {
                    error_for(resp).provider_code().map(str::to_owned)
                },
            },
            Err(e) => Self::of_unanswered(e),
        }
    }

    /// For a request that got no (verified) answer.
    fn of_unanswered(e: &Error) -> Self {
        match e {
            Error::Connect { .. } => Self::ConnectError,
            Error::Timeout { .. } => Self::Timeout,
            Error::Unverified { .. } => Self::Unverified,
            Error::Signing(_) => Self::SigningError,
            _ => Self::TransportError,
        }
    }
}

/// The error for a verified non-success answer.
fn error_for(resp: &Verified) -> Error {
    let parsed: Option<ApiErrorBody> = serde_json::from_slice(&resp.body).ok();
    let (code, message, detail) = match parsed {
        Some(b) => (
            b.code.unwrap_or_default(),
            b.message.unwrap_or_default(),
            b.detail,
        ),
        None => (
            String::new(),
            String::from_utf8_lossy(&resp.body)
                .chars()
                .take(200)
                .collect(),
            None,
        ),
    };
    match resp.status {
        429 => Error::RateLimited {
            code,
            message,
            retry_after: resp.retry_after.unwrap_or(DEFAULT_RATE_LIMIT_BACKOFF),
        },
        500..=599 => Error::Server {
            status: resp.status,
            code,
            message,
        },
        400..=499 => Error::Rejected {
            status: resp.status,
            code,
            message,
            detail,
        },
        status => Error::UnexpectedResponse {
            status,
            reason: format!("unexpected HTTP status ({code} {message})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_trade_no_rule() {
        for ok in [
            "123456",
            "ORD_2024-01|x*",
            "a234567890123456789012345678901b",
        ] {
            validate_out_trade_no(ok).unwrap();
        }
        for bad in [
            "12345",
            "a2345678901234567890123456789012x",
            "abc/../x",
            "abc?d=1",
            "订单号123456",
            "abc def",
        ] {
            assert!(
                matches!(validate_out_trade_no(bad), Err(Error::InvalidOutTradeNo(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn native_prepay_rules_are_checked_before_sending() {
        let good = NativePrepay {
            appid: "wxd678efh567hg6787".into(),
            description: "Image形象店-深圳腾大-QQ公仔".into(),
            out_trade_no: "OT20261126000000000001".into(),
            total_fen: 1,
            time_expire: "2026-11-26T18:00:00+08:00".into(),
            notify_url: "https://shop.example.com/wechatpay/notify".into(),
        };
        check_native_prepay(&good).unwrap();
        let max = NativePrepay {
            description: "商".repeat(127),
            ..good.clone()
        };
        check_native_prepay(&max).unwrap();

        let field = |req: NativePrepay| match check_native_prepay(&req) {
            Err(e @ Error::InvalidArgument { field, .. }) => {
                assert!(e.is_permanent());
                field
            }
            other => panic!("{other:?}"),
        };
        let with = |f: fn(&mut NativePrepay)| {
            let mut r = good.clone();
            f(&mut r);
            r
        };
        assert_eq!(field(with(|r| r.appid.clear())), "appid");
        assert_eq!(field(with(|r| r.description.clear())), "description");
        assert_eq!(
            field(with(|r| r.description = "商".repeat(128))),
            "description"
        );
        assert_eq!(field(with(|r| r.total_fen = 0)), "amount");
        assert_eq!(field(with(|r| r.total_fen = -100)), "amount");
        assert_eq!(field(with(|r| r.time_expire.clear())), "time_expire");
        assert_eq!(field(with(|r| r.notify_url.clear())), "notify_url");
        assert!(matches!(
            check_native_prepay(&with(|r| r.out_trade_no = "abc/../x".into())),
            Err(Error::InvalidOutTradeNo(_))
        ));
    }

    #[test]
    fn out_refund_no_rule() {
        for ok in ["1", "R", "RF_2024-01|x*@shop", &"a".repeat(64)] {
            validate_out_refund_no(ok).unwrap();
        }
        for bad in [
            String::new(),
            "a".repeat(65),
            "abc/../x".into(),
            "abc?d=1".into(),
            "abc#d".into(),
            "abc%2F".into(),
            "退款1".into(),
            "abc def".into(),
        ] {
            assert!(
                matches!(
                    validate_out_refund_no(&bad),
                    Err(Error::InvalidArgument {
                        field: "out_refund_no",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    fn good_refund() -> RefundRequest {
        RefundRequest {
            transaction_id: "4200000000202611260000000001".into(),
            out_refund_no: "RF20261126000001".into(),
            reason: "商品已售完".into(),
            refund_fen: 1,
            total_fen: 100,
            notify_url: Some("https://shop.example.com/wechatpay/refund-notify".into()),
        }
    }

    #[test]
    fn refund_body_is_the_wire_format() {
        assert_eq!(
            refund_body(&good_refund()),
            serde_json::json!({
                "transaction_id": "4200000000202611260000000001",
                "out_refund_no": "RF20261126000001",
                "reason": "商品已售完",
                "notify_url": "https://shop.example.com/wechatpay/refund-notify",
                "amount": {"refund": 1, "total": 100, "currency": "CNY"}
            })
        );
        let without = RefundRequest {
            notify_url: None,
            ..good_refund()
        };
        let body = refund_body(&without);
        assert_eq!(body.get("notify_url"), None);
        assert_eq!(
            body.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["amount", "out_refund_no", "reason", "transaction_id"]
        );
    }

    #[test]
    fn refund_rules_are_checked_before_sending() {
        check_refund(&good_refund()).unwrap();
        let whole = RefundRequest {
            refund_fen: 100,
            reason: "退".repeat(80),
            notify_url: None,
            ..good_refund()
        };
        check_refund(&whole).unwrap();
        check_refund(&RefundRequest {
            reason: String::new(),
            ..good_refund()
        })
        .unwrap();

        let field = |req: RefundRequest| match check_refund(&req) {
            Err(e @ Error::InvalidArgument { field, .. }) => {
                assert!(e.is_permanent());
                field
            }
            other => panic!("{other:?}"),
        };
        let with = |f: fn(&mut RefundRequest)| {
            let mut r = good_refund();
            f(&mut r);
            r
        };
        assert_eq!(field(with(|r| r.out_refund_no.clear())), "out_refund_no");
        assert_eq!(
            field(with(|r| r.out_refund_no = "R".repeat(65))),
            "out_refund_no"
        );
        assert_eq!(
            field(with(|r| r.out_refund_no = "RF/../x".into())),
            "out_refund_no"
        );
        assert_eq!(field(with(|r| r.transaction_id.clear())), "transaction_id");
        assert_eq!(field(with(|r| r.refund_fen = 0)), "amount");
        assert_eq!(field(with(|r| r.refund_fen = -1)), "amount");
        assert_eq!(field(with(|r| r.refund_fen = 101)), "amount");
        assert_eq!(
            field(with(|r| {
                r.total_fen = 0;
                r.refund_fen = 0;
            })),
            "amount"
        );
        assert_eq!(field(with(|r| r.reason = "退".repeat(81))), "reason");
        assert_eq!(
            field(with(|r| r.notify_url = Some(String::new()))),
            "notify_url"
        );
    }

    #[test]
    fn a_refund_answer_must_name_the_refund_asked_about() {
        let body = br#"{"out_refund_no":"RF2","status":"SUCCESS","refund_id":"50"}"#;
        let err = parse_refund(body, "RF1").unwrap_err();
        assert!(
            matches!(err, Error::UnexpectedResponse { status: 200, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("RF2"), "{err}");
        assert_eq!(
            parse_refund(body, "RF2").unwrap().refund_id.as_deref(),
            Some("50")
        );
        let err = parse_refund(br#"{"status":"SUCCESS"}"#, "RF1").unwrap_err();
        assert!(matches!(err, Error::UnexpectedResponse { .. }), "{err:?}");
        let err =
            parse_refund(br#"{"out_refund_no":"RF1","status":"REFUNDCLOSE"}"#, "RF1").unwrap_err();
        assert!(err.is_permanent());
        match err {
            Error::UnknownRefundStatus {
                out_refund_no,
                status,
            } => assert_eq!(
                (out_refund_no.as_str(), status.as_str()),
                ("RF1", "REFUNDCLOSE")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn base_url_must_be_scheme_and_host() {
        assert_eq!(
            check_base_url("https://api.mch.weixin.qq.com/").unwrap(),
            "https://api.mch.weixin.qq.com"
        );
        assert_eq!(
            check_base_url("http://127.0.0.1:8099").unwrap(),
            "http://127.0.0.1:8099"
        );
        for loopback in [
            "http://127.0.0.2:1",
            "http://localhost:8099",
            "http://LOCALHOST",
            "http://[::1]:8099",
        ] {
            assert!(check_base_url(loopback).is_ok(), "{loopback}");
        }
        for remote in [
            "http://api.mch.weixin.qq.com",
            "http://10.0.0.1:8099",
            "http://[::2]:80",
            "http://localhost.example.com",
            "http://128.0.0.1",
        ] {
            let err = check_base_url(remote).unwrap_err();
            assert!(err.contains("plain http"), "{remote}: {err}");
        }
        assert!(check_base_url("https://10.0.0.1:8443").is_ok());
        assert!(check_base_url("https://example.com/prefix").is_err());
        assert!(check_base_url("ftp://example.com").is_err());
        assert!(check_base_url("api.mch.weixin.qq.com").is_err());
    }

    #[test]
    fn a_bill_download_goes_only_to_a_configured_origin() {
        let bases = [
            "https://api.mch.weixin.qq.com",
            "https://api2.mch.weixin.qq.com",
        ];
        let file = "/v3/billdownload/file?token=6XIv5TUPto7pByrTQKhd6kwvyKLG2uY2wMMR8cNXqaA_Cv_isgaUtBzp4QtiozLO";
        for (url, base) in [
            (format!("https://api.mch.weixin.qq.com{file}"), bases[0]),
            (format!("https://API.MCH.weixin.qq.com:443{file}"), bases[0]),
            (format!("https://api2.mch.weixin.qq.com{file}"), bases[1]),
        ] {
            assert_eq!(
                download_target(&url, &bases).unwrap(),
                (base, file.to_owned()),
                "{url}"
            );
        }
        assert_eq!(
            download_target("http://127.0.0.1:8099/x?a=%2B", &["http://127.0.0.1:8099"])
                .unwrap()
                .1,
            "/x?a=%2B",
            "the query is sent and signed as given"
        );
        for url in [
            format!("http://api.mch.weixin.qq.com{file}"),
            format!("https://api.mch.weixin.qq.com:8443{file}"),
            format!("https://api.mch.weixin.qq.com.evil.example{file}"),
            format!("https://evil.example{file}"),
            format!("https://user@api.mch.weixin.qq.com{file}"),
            format!("https://api.mch.weixin.qq.com{file}#frag"),
            file.to_owned(),
            "https://api.mch.weixin.qq.com".to_owned(),
            "not a url at all".to_owned(),
        ] {
            let reason = download_target(&url, &bases).unwrap_err();
            assert!(
                !reason.contains("6XIv5TUP"),
                "{url}: the token leaked: {reason}"
            );
        }
        let reason =
            download_target(&format!("https://evil.example:444{file}"), &bases).unwrap_err();
        assert!(reason.contains("https://evil.example:444"), "{reason}");
    }

    #[test]
    fn a_tradebill_answer_names_a_sha1_and_a_link() {
        let (hash, url) = parse_trade_bill_answer(
            br#"{"hash_type":"SHA1","hash_value":"79bb0f45fc4c42234a918000b2668d689e2bde04","download_url":"https://api.mch.weixin.qq.com/v3/billdownload/file?token=x"}"#,
        )
        .unwrap();
        assert_eq!(hash, "79bb0f45fc4c42234a918000b2668d689e2bde04");
        assert_eq!(
            url,
            "https://api.mch.weixin.qq.com/v3/billdownload/file?token=x"
        );
        for bad in [
            r#"{"hash_type":"SHA256","hash_value":"79bb0f45fc4c42234a918000b2668d689e2bde04","download_url":"u"}"#,
            r#"{"hash_type":"SHA1","hash_value":"79bb0f45","download_url":"u"}"#,
            r#"{"hash_type":"SHA1","hash_value":"79bb0f45fc4c42234a918000b2668d689e2bde04","download_url":""}"#,
            r#"{"hash_type":"SHA1","hash_value":"zzbb0f45fc4c42234a918000b2668d689e2bde04","download_url":"u"}"#,
        ] {
            let err = parse_trade_bill_answer(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(err, Error::UnexpectedResponse { status: 200, .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_and_cap() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("100000"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn error_classification() {
        let v = |status, body: &str| Verified {
            status,
            body: body.as_bytes().to_vec(),
            retry_after: None,
        };
        let e = error_for(&v(
            429,
            r#"{"code":"FREQUENCY_LIMITED","message":"slow down"}"#,
        ));
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(DEFAULT_RATE_LIMIT_BACKOFF));
        assert_eq!(e.provider_code(), Some("FREQUENCY_LIMITED"));
        let e = error_for(&v(
            503,
            r#"{"code":"SERVICE_UNAVAILABLE","message":"busy"}"#,
        ));
        assert!(e.is_transient());
        let e = error_for(&v(
            401,
            r#"{"code":"SIGN_ERROR","message":"bad sig","detail":{"field":"x"}}"#,
        ));
        assert!(e.is_permanent());
        assert_eq!(
            (e.provider_code(), e.provider_message()),
            (Some("SIGN_ERROR"), Some("bad sig"))
        );
        assert!(matches!(
            e,
            Error::Rejected {
                status: 401,
                detail: Some(_),
                ..
            }
        ));
        let e = error_for(&v(403, "not json"));
        assert!(e.is_permanent());
        assert_eq!(e.provider_message(), Some("not json"));
        let e = error_for(&v(302, ""));
        assert!(matches!(e, Error::UnexpectedResponse { status: 302, .. }));
    }
}
