//! The worker's crypto, timed alone on one thread through the payment-client
//! crate's own public code paths: signing one request (nonce, message,
//! `MerchantKey::sign`, `Authorization` header, as `Client` does before
//! each call) and verifying one answer (`KeyStore::verify`: headers,
//! timestamp, base64, SHA256withRSA verification, as `Client` does after
//! each call). The answer verified is a notification signed by the
//! simulator's WeChat Pay key (`wechatpay_sim::signed_notification`, the
//! one public way to get a signed WeChat Pay message), about the size of a
//! query answer. Not counted: the replay check after a verification (one
//! hash-set insert).
//!
//! Signing is also timed with every core signing at once, since that is
//! how busy the machine is during a run.
//!
//! Times are this thread's CPU time (/proc/thread-self/schedstat), so that
//! they compare with the worker's CPU seconds; wall time where the kernel
//! does not keep it.

use std::time::{Duration, Instant};

use payment_client::signing::{self, MerchantKey};
use payment_client::verify::KeyStore;
use wechatpay_sim::{ClientFiles, SimKeys};

use crate::procfs::thread_cpu_ns;

/// Milliseconds of one signature and one verification.
#[derive(Debug, Clone, Copy)]
pub struct CryptoCost {
    pub sign_ms: f64,
    pub verify_ms: f64,
    /// One signature while every core signs at once (a thread per core):
    /// what a signature costs when the machine is busy, as in a run.
    pub sign_ms_all_cores: f64,
}

impl CryptoCost {
    /// Times each, for about `budget` (at least 20 operations).
    pub fn measure(keys: &SimKeys, files: &ClientFiles, budget: Duration) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let all_cores: Vec<f64> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..cores)
                .map(|_| s.spawn(|| time_sign(files, budget)))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("a signing thread"))
                .collect()
        });
        Self {
            sign_ms: time_sign(files, budget),
            verify_ms: time_verify(keys, files, budget),
            sign_ms_all_cores: all_cores.iter().sum::<f64>() / all_cores.len() as f64,
        }
    }

    /// The mean of two measurements (before and after a run).
    pub fn mean(&self, other: &Self) -> Self {
        Self {
            sign_ms: f64::midpoint(self.sign_ms, other.sign_ms),
            verify_ms: f64::midpoint(self.verify_ms, other.verify_ms),
            sign_ms_all_cores: f64::midpoint(self.sign_ms_all_cores, other.sign_ms_all_cores),
        }
    }
}

/// Runs `op` until `budget` has passed (and at least 20 times); milliseconds
/// of CPU (else wall) time per call.
fn per_op(budget: Duration, mut op: impl FnMut()) -> f64 {
    let wall = Instant::now();
    let cpu = thread_cpu_ns();
    let mut n = 0u32;
    while n < 20 || wall.elapsed() < budget {
        op();
        n += 1;
    }
    let ns = match (cpu, thread_cpu_ns()) {
        (Some(a), Some(b)) => (b - a) as f64,
        _ => wall.elapsed().as_nanos() as f64,
    };
    ns / 1e6 / f64::from(n)
}

fn time_sign(files: &ClientFiles, budget: Duration) -> f64 {
    let key = MerchantKey::load(&files.merchant_key_file).expect("the merchant key");
    let path = "/v3/pay/transactions/out-trade-no/bench0000000001?mchid=1900000001";
    per_op(budget, || {
        let timestamp = unix_now();
        let nonce = signing::new_nonce();
        let message = signing::request_message("GET", path, timestamp, &nonce, b"");
        let signature = key.sign(&message).expect("a signature");
        let header = signing::authorization_header(
            wechatpay_sim::DEFAULT_MCHID,
            wechatpay_sim::DEFAULT_MERCHANT_SERIAL_NO,
            timestamp,
            &nonce,
            &signature,
        );
        std::hint::black_box(header);
    })
}

fn time_verify(keys: &SimKeys, files: &ClientFiles, budget: Duration) -> f64 {
    let serial = wechatpay_sim::DEFAULT_PUBLIC_KEY_ID;
    let mut store = KeyStore::new();
    store.insert(
        serial,
        KeyStore::load_public_key(&files.wechatpay_public_key_file).expect("the public key"),
    );
    let now = unix_now();
    let transaction = serde_json::json!({
        "appid": "wxd678efh567hg6787",
        "mchid": wechatpay_sim::DEFAULT_MCHID,
        "out_trade_no": "bench0000000001",
        "transaction_id": "4200000000000000000000000001",
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "success_time": "2026-11-30T10:00:00+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY"}
    });
    let answer = wechatpay_sim::signed_notification(
        keys,
        serial,
        wechatpay_sim::DEFAULT_APIV3_KEY.as_bytes(),
        &transaction,
        now,
    );
    let header = |name: &'static str| {
        answer
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    store
        .verify(header, &answer.body, now)
        .expect("the simulator's signature verifies");
    per_op(budget, || {
        std::hint::black_box(store.verify(header, &answer.body, now)).expect("verified");
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
