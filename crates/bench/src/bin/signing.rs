//! Benchmark (not a test): RSA signatures per second on one thread, and
//! query+close round trips per second against the in-process simulator.
//!
//! Run through `scripts/bench.sh signing` (release build). Prints the median
//! of several runs; each run lasts about `--seconds`.

use std::time::{Duration, Instant};

use payment_client::signing::{self, MerchantKey};
use payment_client::verify::{self, KeyStore};
use payment_client::{Client, CloseAnswer, Config, QueryOutcome};
use wechatpay_sim::{SimConfig, SimKeys, Simulator};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Calls `op` repeatedly for about `secs` and returns operations per second.
fn rate(secs: f64, mut op: impl FnMut(u64)) -> f64 {
    let budget = Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget {
        op(n);
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let mut runs = 5usize;
    let mut secs = 1.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--seconds" => {
                secs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--seconds S");
            }
            other => panic!("unknown argument {other}; use --runs N --seconds S"),
        }
    }

    let dir = tempfile::tempdir().expect("a temporary directory");
    let keys = SimKeys::generate().expect("generate keys");
    let files = keys
        .write_client_files(dir.path())
        .expect("write key files");
    let key = MerchantKey::load(&files.merchant_key_file).expect("load merchant key");

    // What a real query signs: method, path with query, timestamp, nonce, empty body.
    let message = signing::request_message(
        "GET",
        "/v3/pay/transactions/out-trade-no/ORD20261126000000000001?mchid=1900000001",
        1_764_144_000,
        &signing::new_nonce(),
        b"",
    );
    let sign: Vec<f64> = (0..runs)
        .map(|_| rate(secs, |_| drop(key.sign(&message).expect("sign"))))
        .collect();
    println!(
        "signatures/s (RSA-2048 SHA256, one thread, median of {runs}): {:.0}   runs: {}",
        median(sign.clone()),
        fmt_runs(&sign)
    );

    // Response verification, for comparison (public-key operation, cheap).
    let mut store = KeyStore::new();
    store.insert(
        wechatpay_sim::DEFAULT_PUBLIC_KEY_ID,
        KeyStore::load_public_key(&files.wechatpay_public_key_file).expect("load public key"),
    );
    let body = br#"{"trade_state":"NOTPAY"}"#;
    let ts = unix_now().to_string();
    let nonce = "BENCHNONCE";
    let sig = sim_sign(&keys, &verify::response_message(&ts, nonce, body));
    let lookup = |name: &str| -> Option<&str> {
        match name {
            verify::HEADER_TIMESTAMP => Some(ts.as_str()),
            verify::HEADER_NONCE => Some(nonce),
            verify::HEADER_SIGNATURE => Some(sig.as_str()),
            verify::HEADER_SERIAL => Some(wechatpay_sim::DEFAULT_PUBLIC_KEY_ID),
            _ => None,
        }
    };
    let ver: Vec<f64> = (0..runs)
        .map(|_| {
            rate(secs, |_| {
                store.verify(lookup, body, unix_now()).expect("verify");
            })
        })
        .collect();
    println!(
        "verifications/s (one thread, median of {runs}): {:.0}",
        median(ver)
    );

    let trips = round_trips(&keys, &files, runs, secs);
    println!(
        "query+close round trips/s (one client thread, in-process simulator, median of {runs}): {:.0}   runs: {}",
        median(trips.clone()),
        fmt_runs(&trips)
    );
    drop(dir);
}

/// Full round trips: each is a signed query and a signed close, both
/// answers verified; the simulator (same process, other threads) verifies
/// and signs too, so this is end-to-end CPU on this machine.
fn round_trips(
    keys: &SimKeys,
    files: &wechatpay_sim::ClientFiles,
    runs: usize,
    secs: f64,
) -> Vec<f64> {
    let sim = Simulator::start(
        "127.0.0.1:0",
        keys,
        SimConfig {
            auto_create: true,
            ..SimConfig::default()
        },
    )
    .expect("start simulator");
    let client = Client::new(
        Config::new(
            wechatpay_sim::DEFAULT_MCHID,
            wechatpay_sim::DEFAULT_MERCHANT_SERIAL_NO,
            &files.merchant_key_file,
        )
        .with_public_key(
            wechatpay_sim::DEFAULT_PUBLIC_KEY_ID,
            &files.wechatpay_public_key_file,
        )
        .with_base_url(sim.base_url()),
    )
    .expect("client");
    let mut round = 0u64;
    let trips: Vec<f64> = (0..runs)
        .map(|run| {
            rate(secs, |_| {
                round += 1;
                let no = format!("BENCH{run}X{round:012}");
                let q = client.query_by_out_trade_no(&no).expect("query");
                assert!(matches!(q, QueryOutcome::Found(_)));
                assert_eq!(client.close(&no).expect("close"), CloseAnswer::Closed);
            })
        })
        .collect();
    sim.shutdown();
    trips
}

fn fmt_runs(v: &[f64]) -> String {
    v.iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs as the simulated WeChat Pay would (its private key is only in the
/// key files, so go through a PEM round trip).
fn sim_sign(keys: &SimKeys, message: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    keys.write_all(dir.path()).expect("write keys");
    let pem = std::fs::read(dir.path().join("wechatpay_private_key.pem")).expect("read key");
    drop(dir);
    MerchantKey::from_pem(&pem)
        .expect("parse key")
        .sign(message)
        .expect("sign")
}
