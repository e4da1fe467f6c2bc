//! Payment and refund notifications: what WeChat Pay POSTs to an order's
//! `notify_url` once the buyer paid, or to a refund's once the refund is
//! final, and the small pool of sender threads that delivers them and
//! retries on a schedule.
//!
//! It exists so that the merchant's notification receiver can be tested
//! against the real format: a JSON envelope whose `resource` is the
//! transaction (as the query answers it) or the refund, encrypted with
//! AES-256-GCM under the merchant's APIv3 key, signed like an API answer.
//! [`signed_notification`] and [`signed_refund_notification`] are public so
//! that tests and benchmarks can craft notifications (tampered, stale,
//! pre-signed by the thousand) with the very code the sender uses.
//!
//! Delivery: a fixed pool of [`SENDER_THREADS`] threads takes tasks from one
//! delay queue (a binary heap by due time under a mutex and condition
//! variable), so a burst of payments never spawns a thread per notification.
//! The same queue holds the moment each processing refund becomes final, so
//! that its notification goes out even when nobody reads the refund.
//! A failed attempt (non-2xx, connection error, [`ATTEMPT_TIMEOUT`]) is put
//! back with the next wait of `SimConfig::notify_schedule` and sent again
//! with a fresh timestamp, nonce and signature; the envelope (its `id` and
//! encrypted resource) stays the same, as WeChat Pay's retries do.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use openssl::symm::{encrypt_aead, Cipher};
use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;
use serde_json::json;

use crate::keys::SimKeys;
use crate::model::SimRefund;
use crate::server::{unix_now, Shared, State};
use crate::signing;

/// Sender threads per simulator.
pub(crate) const SENDER_THREADS: usize = 4;
/// One delivery attempt gives up after this long.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A notification ready to POST: its headers (`Content-Type` and the
/// `Wechatpay-*` signature headers) and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNotification {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// `resource.ciphertext` of a notification: base64 of the AES-256-GCM
/// ciphertext of `plaintext` followed by its 16-byte tag, under the 32-byte
/// `apiv3_key`, with `nonce` (12 bytes in WeChat Pay's notifications) as IV
/// and `associated_data` as AAD.
///
/// # Panics
///
/// When `apiv3_key` is not 32 bytes long (or OpenSSL fails).
#[must_use]
pub fn encrypt_resource(
    apiv3_key: &[u8],
    nonce: &str,
    associated_data: &str,
    plaintext: &[u8],
) -> String {
    assert_eq!(apiv3_key.len(), 32, "an APIv3 key has 32 bytes");
    let mut tag = [0u8; 16];
    let mut out = encrypt_aead(
        Cipher::aes_256_gcm(),
        apiv3_key,
        Some(nonce.as_bytes()),
        associated_data.as_bytes(),
        plaintext,
        &mut tag,
    )
    .expect("AES-256-GCM encryption");
    out.extend_from_slice(&tag);
    openssl::base64::encode_block(&out)
}

/// A complete `TRANSACTION.SUCCESS` notification about `transaction` (the
/// JSON the query endpoint answers), encrypted with `apiv3_key`, created and
/// signed at `timestamp` (unix seconds) with the simulated WeChat Pay private
/// key of `keys`, naming `serial` in `Wechatpay-Serial`. Nonces and the
/// notification id are random.
///
/// # Panics
///
/// When `apiv3_key` is not 32 bytes long (or OpenSSL fails).
#[must_use]
pub fn signed_notification(
    keys: &SimKeys,
    serial: &str,
    apiv3_key: &[u8],
    transaction: &serde_json::Value,
    timestamp: u64,
) -> SignedNotification {
    let body = notification_body(apiv3_key, transaction, timestamp);
    let headers = signature_headers(keys, serial, &body, timestamp);
    SignedNotification { headers, body }
}

/// Like [`signed_notification`], a complete refund notification about
/// `refund` (its plaintext: `mchid`, `out_trade_no`, `transaction_id`,
/// `out_refund_no`, `refund_id`, `refund_status`, `success_time`,
/// `user_received_account`, `amount`), encrypted with `associated_data`
/// and `original_type` `refund`. Its `event_type` and `summary` follow
/// `refund_status`: `REFUND.SUCCESS` 退款成功, `REFUND.ABNORMAL` 退款异常,
/// `REFUND.CLOSED` 退款关闭 (any other status `REFUND.<status>`).
///
/// # Panics
///
/// When `apiv3_key` is not 32 bytes long (or OpenSSL fails).
#[must_use]
pub fn signed_refund_notification(
    keys: &SimKeys,
    serial: &str,
    apiv3_key: &[u8],
    refund: &serde_json::Value,
    timestamp: u64,
) -> SignedNotification {
    let status = refund["refund_status"].as_str().unwrap_or_default();
    let body = event_body(apiv3_key, &Event::refund(status), refund, timestamp);
    let headers = signature_headers(keys, serial, &body, timestamp);
    SignedNotification { headers, body }
}

/// What a notification announces: its envelope's `event_type` and
/// `summary`, and what its resource holds.
struct Event {
    /// `event_type`.
    kind: String,
    summary: &'static str,
    /// `resource.original_type`, also its `associated_data`.
    original_type: &'static str,
}

impl Event {
    fn payment() -> Self {
        Self {
            kind: "TRANSACTION.SUCCESS".to_owned(),
            summary: "支付成功",
            original_type: "transaction",
        }
    }

    fn refund(status: &str) -> Self {
        let summary = match status {
            "SUCCESS" => "退款成功",
            "ABNORMAL" => "退款异常",
            "CLOSED" => "退款关闭",
            _ => "退款状态变更",
        };
        Self {
            kind: format!("REFUND.{status}"),
            summary,
            original_type: "refund",
        }
    }
}

/// The `TRANSACTION.SUCCESS` envelope with the encrypted transaction.
fn notification_body(apiv3_key: &[u8], transaction: &serde_json::Value, timestamp: u64) -> Vec<u8> {
    event_body(apiv3_key, &Event::payment(), transaction, timestamp)
}

/// The JSON envelope with the encrypted resource.
fn event_body(
    apiv3_key: &[u8],
    event: &Event,
    resource: &serde_json::Value,
    timestamp: u64,
) -> Vec<u8> {
    let mut rng = rand::rng();
    let nonce = Alphanumeric.sample_string(&mut rng, 12);
    let plaintext = resource.to_string();
    let ciphertext = encrypt_resource(apiv3_key, &nonce, event.original_type, plaintext.as_bytes());
    // A version 4 UUID, as WeChat Pay's notification ids look.
    let r: u128 = rng.random();
    let r = (((r & !(0xF << 76)) | (0x4 << 76)) & !(0x3 << 62)) | (0x2 << 62);
    let id = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        r >> 96,
        (r >> 80) & 0xFFFF,
        (r >> 64) & 0xFFFF,
        (r >> 48) & 0xFFFF,
        r & 0xFFFF_FFFF_FFFF
    );
    let body = json!({
        "id": id,
        "create_time": rfc3339_beijing(timestamp),
        "resource_type": "encrypt-resource",
        "event_type": event.kind,
        "summary": event.summary,
        "resource": {
            "original_type": event.original_type,
            "algorithm": "AEAD_AES_256_GCM",
            "ciphertext": ciphertext,
            "associated_data": event.original_type,
            "nonce": nonce,
        },
    });
    body.to_string().into_bytes()
}

/// `timestamp` as RFC 3339 in China Standard Time, as WeChat Pay writes it.
pub(crate) fn rfc3339_beijing(timestamp: u64) -> String {
    let utc = chrono::DateTime::from_timestamp(i64::try_from(timestamp).unwrap_or(0), 0)
        .unwrap_or_default();
    utc.with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset"))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// Fresh signature headers for `body` at `timestamp`.
fn signature_headers(
    keys: &SimKeys,
    serial: &str,
    body: &[u8],
    timestamp: u64,
) -> Vec<(String, String)> {
    let timestamp = timestamp.to_string();
    let nonce = signing::nonce();
    let signature = signing::signature(&keys.wechatpay_private, &timestamp, &nonce, body)
        .expect("RSA signature with the simulator's key");
    vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("Wechatpay-Timestamp".to_owned(), timestamp),
        ("Wechatpay-Nonce".to_owned(), nonce),
        (
            "Wechatpay-Signature".to_owned(),
            openssl::base64::encode_block(&signature),
        ),
        ("Wechatpay-Serial".to_owned(), serial.to_owned()),
        (
            "Wechatpay-Signature-Type".to_owned(),
            "WECHATPAY2-SHA256-RSA2048".to_owned(),
        ),
    ]
}

/// One notification to deliver.
#[derive(Debug)]
pub(crate) struct Job {
    /// The order it is about (for a refund notification, the refunded one).
    out_trade_no: String,
    url: String,
    /// Built once: every attempt sends the same envelope, freshly signed.
    body: Vec<u8>,
    /// Attempts made so far.
    attempts: usize,
    /// The `Notifier::epoch` it was queued in; a reset makes it stale.
    epoch: u64,
}

/// Whose counters a notification's attempts go to.
#[derive(Debug)]
pub(crate) enum Subject {
    /// The order's (`Job::out_trade_no`).
    Payment,
    /// The refund's with this `out_refund_no`.
    Refund(String),
}

/// Work for the sender threads.
#[derive(Debug)]
pub(crate) enum Task {
    /// One attempt to deliver a notification.
    Deliver(Subject, Job),
    /// Make this refund final if it is still processing and due (its
    /// notification follows).
    SettleRefund { out_refund_no: String, epoch: u64 },
}

/// The first attempt of the payment notification about `transaction`,
/// built now.
pub(crate) fn payment_task(
    shared: &Shared,
    out_trade_no: &str,
    url: &str,
    transaction: &serde_json::Value,
) -> Task {
    let job = Job {
        out_trade_no: out_trade_no.to_owned(),
        url: url.to_owned(),
        body: notification_body(shared.config.apiv3_key.as_bytes(), transaction, unix_now()),
        attempts: 0,
        epoch: shared.notifier.epoch(),
    };
    Task::Deliver(Subject::Payment, job)
}

/// The first attempt of the notification about `refund` (in its current,
/// final status) to `url`, built now.
pub(crate) fn refund_task(shared: &Shared, refund: &SimRefund, url: &str) -> Task {
    let plaintext = crate::refund::notification_json(refund);
    let job = Job {
        out_trade_no: refund.out_trade_no.clone(),
        url: url.to_owned(),
        body: event_body(
            shared.config.apiv3_key.as_bytes(),
            &Event::refund(&refund.status),
            &plaintext,
            unix_now(),
        ),
        attempts: 0,
        epoch: shared.notifier.epoch(),
    };
    Task::Deliver(Subject::Refund(refund.out_refund_no.clone()), job)
}

struct Pending<T> {
    due: Instant,
    seq: u64,
    job: T,
}

// Ordered so that `BinaryHeap` (a max-heap) pops the earliest due first, in
// queueing order among equals.
impl<T> Ord for Pending<T> {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .due
            .cmp(&self.due)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl<T> PartialOrd for Pending<T> {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl<T> PartialEq for Pending<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}

impl<T> Eq for Pending<T> {}

struct Queue<T> {
    pending: BinaryHeap<Pending<T>>,
    seq: u64,
    stop: bool,
}

/// The delay queue the sender threads share (of [`Task`]s; generic only so
/// that its unit test can queue bare jobs).
pub(crate) struct Notifier<T = Task> {
    queue: Mutex<Queue<T>>,
    wake: Condvar,
    epoch: AtomicU64,
}

// By hand: the derive would demand `T: Default`.
impl<T> Default for Notifier<T> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                pending: BinaryHeap::new(),
                seq: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            epoch: AtomicU64::new(0),
        }
    }
}

impl<T> Notifier<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // Every update is a single push or pop: a poisoned lock is usable.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn enqueue(&self, job: T, due: Instant) {
        let mut queue = self.lock();
        queue.seq += 1;
        let seq = queue.seq;
        queue.pending.push(Pending { due, seq, job });
        drop(queue);
        self.wake.notify_one();
    }

    /// Forgets queued jobs and makes those in flight stale (admin reset).
    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.lock().pending.clear();
    }

    /// Makes every sender thread return once its attempt in hand is done.
    pub(crate) fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }

    /// The current epoch: tasks queued in an earlier one are stale.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn current(&self, epoch: u64) -> bool {
        epoch == self.epoch()
    }

    /// The next job that is due, waiting for it; `None` once stopped.
    fn next(&self) -> Option<T> {
        let mut queue = self.lock();
        loop {
            if queue.stop {
                return None;
            }
            let now = Instant::now();
            let wait = match queue.pending.peek() {
                Some(p) if p.due <= now => {
                    return queue.pending.pop().map(|p| p.job);
                }
                Some(p) => Some(p.due - now),
                None => None,
            };
            queue = match wait {
                Some(wait) => {
                    self.wake
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
                None => self
                    .wake
                    .wait(queue)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            };
        }
    }
}

/// Starts the sender threads; they run until `Notifier::stop`.
pub(crate) fn start_senders(shared: &Arc<Shared>) -> std::io::Result<Vec<JoinHandle<()>>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(ATTEMPT_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let mut threads = Vec::with_capacity(SENDER_THREADS);
    for _ in 0..SENDER_THREADS {
        let mine = Arc::clone(shared);
        let agent = agent.clone();
        let spawned = thread::Builder::new()
            .name("wechatpay-sim-notify".to_owned())
            .spawn(move || {
                while let Some(task) = mine.notifier.next() {
                    match task {
                        Task::Deliver(subject, job) => deliver(&mine, &agent, subject, job),
                        Task::SettleRefund {
                            out_refund_no,
                            epoch,
                        } => settle_refund(&mine, &out_refund_no, epoch),
                    }
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                shared.notifier.stop();
                return Err(e);
            }
        }
    }
    Ok(threads)
}

/// A refund's moment to become final has come (unless a read made it final
/// already, or the admin API held it): settle it and queue its notification.
fn settle_refund(shared: &Shared, out_refund_no: &str, epoch: u64) {
    if !shared.notifier.current(epoch) {
        return;
    }
    let task = crate::refund::settle_if_due(shared, &mut shared.state(), out_refund_no);
    if let Some(task) = task {
        shared.notifier.enqueue(task, Instant::now());
    }
}

/// The attempt and delivery counters of the order or refund a notification
/// is about, if it still exists.
fn counters<'s>(
    state: &'s mut State,
    subject: &Subject,
    out_trade_no: &str,
) -> Option<(&'s mut u64, &'s mut bool)> {
    match subject {
        Subject::Payment => state
            .orders
            .get_mut(out_trade_no)
            .map(|o| (&mut o.notify_attempts, &mut o.notify_delivered)),
        Subject::Refund(no) => state.refunds.get_mut(no).map(|r| {
            (
                &mut r.refund.notify_attempts,
                &mut r.refund.notify_delivered,
            )
        }),
    }
}

/// How one attempt went.
enum Attempt {
    Delivered(u16),
    Refused(u16),
    Unreachable(String),
}

/// One attempt: sign afresh, POST, count, and queue the retry if any.
fn deliver(shared: &Shared, agent: &ureq::Agent, subject: Subject, mut job: Job) {
    if !shared.notifier.current(job.epoch) {
        return;
    }
    let headers = signature_headers(
        &shared.keys,
        &shared.config.signing_serial,
        &job.body,
        unix_now(),
    );
    job.attempts += 1;
    {
        let mut state = shared.state();
        state.stats.notifications_sent += 1;
        if let Some((attempts, _)) = counters(&mut state, &subject, &job.out_trade_no) {
            *attempts += 1;
        }
    }
    let mut request = agent
        .post(&job.url)
        .header("User-Agent", "Mozilla/4.0")
        .header("Accept", "*/*");
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let outcome = match request.send(&job.body[..]) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            // Drain the body so the connection can be reused.
            let _ = response.body_mut().read_to_vec();
            if (200..300).contains(&status) {
                Attempt::Delivered(status)
            } else {
                Attempt::Refused(status)
            }
        }
        Err(e) => Attempt::Unreachable(e.to_string()),
    };
    if !shared.notifier.current(job.epoch) {
        return;
    }
    let n = job.attempts;
    let what = match &subject {
        Subject::Payment => format!("notification for {}", job.out_trade_no),
        Subject::Refund(no) => format!("refund notification for {no}"),
    };
    let why = match outcome {
        Attempt::Delivered(status) => {
            let mut state = shared.state();
            state.stats.notifications_delivered += 1;
            if let Some((_, delivered)) = counters(&mut state, &subject, &job.out_trade_no) {
                *delivered = true;
            }
            drop(state);
            log::info!("{what} delivered (attempt {n}, answer {status})");
            return;
        }
        Attempt::Refused(status) => format!("answer {status}"),
        Attempt::Unreachable(e) => e,
    };
    shared.state().stats.notifications_failed += 1;
    match shared.config.notify_schedule.get(n - 1) {
        Some(&wait) => {
            log::info!(
                "{what} failed (attempt {n}: {why}); again in {} ms",
                wait.as_millis()
            );
            shared
                .notifier
                .enqueue(Task::Deliver(subject, job), Instant::now() + wait);
        }
        None => log::warn!("{what} failed (attempt {n}: {why}); giving up"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vector {
        apiv3_key: String,
        nonce: String,
        associated_data: String,
        plaintext: String,
        ciphertext: String,
    }

    #[test]
    fn encrypts_like_pythons_aesgcm() {
        let v: Vector = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/wechatpay-aead-vector.json"
        )))
        .unwrap();
        assert_eq!(
            encrypt_resource(
                v.apiv3_key.as_bytes(),
                &v.nonce,
                &v.associated_data,
                v.plaintext.as_bytes()
            ),
            v.ciphertext
        );
    }

    #[test]
    fn ids_look_like_uuids_and_times_like_beijing() {
        let body = notification_body(crate::DEFAULT_APIV3_KEY.as_bytes(), &json!({}), 0);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let id = v["id"].as_str().unwrap();
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(&id[14..15], "4", "{id}");
        assert_eq!(v["create_time"], "1970-01-01T08:00:00+08:00");
        assert_eq!(v["resource"]["nonce"].as_str().unwrap().len(), 12);
    }

    #[test]
    fn the_queue_pops_the_earliest_due_first() {
        let n = Notifier::default();
        let job = |no: &str| Job {
            out_trade_no: no.to_owned(),
            url: String::new(),
            body: Vec::new(),
            attempts: 0,
            epoch: 0,
        };
        let now = Instant::now();
        n.enqueue(job("later"), now + Duration::from_millis(30));
        n.enqueue(job("first"), now);
        n.enqueue(job("second"), now);
        let order: Vec<String> = (0..3).map(|_| n.next().unwrap().out_trade_no).collect();
        assert_eq!(order, ["first", "second", "later"]);
        assert!(now.elapsed() >= Duration::from_millis(30));
        n.stop();
        assert!(n.next().is_none());
    }
}
