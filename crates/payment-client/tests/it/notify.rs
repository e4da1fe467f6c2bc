//! Payment notifications as WeChat Pay sends them: signed with the
//! simulator's WeChat Pay key, the resource encrypted here with OpenSSL, and
//! opened with the keys a client trusts.

use std::time::{SystemTime, UNIX_EPOCH};

use openssl::symm::{encrypt_aead, Cipher};
use payment_client::notify::{ALGORITHM, SIGNATURE_PROBE_PREFIX};
use payment_client::verify::{self, VerifyError};
use payment_client::{ApiV3Key, Client, Config, NotificationVerifier, NotifyError, TradeState};

use crate::support::{
    env, keys, read_request, wechatpay_sign, MCHID, MERCHANT_SERIAL, PUBLIC_KEY_ID,
};

const APIV3_KEY: &[u8; 32] = b"an APIv3 key of exactly 32 bytes";
const OUT_TRADE_NO: &str = "NOTIFY000001";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A verifier with the keys a client configured for the simulator trusts.
fn verifier() -> NotificationVerifier {
    let config = Config::new(MCHID, MERCHANT_SERIAL, &keys().files.merchant_key_file)
        .with_public_key(PUBLIC_KEY_ID, &keys().files.wechatpay_public_key_file)
        .with_base_url("http://127.0.0.1:9");
    let client = Client::new(config).unwrap();
    NotificationVerifier::new(
        client.key_store().clone(),
        ApiV3Key::new(APIV3_KEY).unwrap(),
    )
}

fn transaction_json(out_trade_no: &str, trade_state: &str) -> String {
    serde_json::json!({
        "appid": "wxd678efh567hg6787",
        "mchid": MCHID,
        "out_trade_no": out_trade_no,
        "transaction_id": "4200000000202611260000000001",
        "trade_type": "NATIVE",
        "trade_state": trade_state,
        "trade_state_desc": "支付成功",
        "bank_type": "CMC",
        "attach": "",
        "success_time": "2026-11-26T10:00:00+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY"}
    })
    .to_string()
}

/// base64(AES-256-GCM ciphertext || 16-byte tag), as WeChat Pay sends it.
fn encrypt(key: &[u8], nonce: &str, associated_data: &str, plaintext: &[u8]) -> String {
    let mut tag = [0; 16];
    let mut data = encrypt_aead(
        Cipher::aes_256_gcm(),
        key,
        Some(nonce.as_bytes()),
        associated_data.as_bytes(),
        plaintext,
        &mut tag,
    )
    .unwrap();
    data.extend_from_slice(&tag);
    openssl::base64::encode_block(&data)
}

fn envelope(algorithm: &str, ciphertext: &str, nonce: &str) -> Vec<u8> {
    serde_json::json!({
        "id": "EV-2018022511223320873",
        "create_time": "2026-11-26T10:00:01+08:00",
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {
            "original_type": "transaction",
            "algorithm": algorithm,
            "ciphertext": ciphertext,
            "associated_data": "transaction",
            "nonce": nonce
        }
    })
    .to_string()
    .into_bytes()
}

/// A well-formed notification body for `out_trade_no`, paid.
fn good_body() -> Vec<u8> {
    let nonce = "fdasflkja484";
    let ct = encrypt(
        APIV3_KEY,
        nonce,
        "transaction",
        transaction_json(OUT_TRADE_NO, "SUCCESS").as_bytes(),
    );
    envelope(ALGORITHM, &ct, nonce)
}

struct Headers(Vec<(&'static str, String)>);

impl Headers {
    /// The four `Wechatpay-*` headers (and the signature type) over `body`.
    fn signed(body: &[u8], timestamp: u64) -> Self {
        let ts = timestamp.to_string();
        let nonce = payment_client::signing::new_nonce();
        let signature = wechatpay_sign(&verify::response_message(&ts, &nonce, body));
        Self(vec![
            (verify::HEADER_TIMESTAMP, ts),
            (verify::HEADER_NONCE, nonce),
            (verify::HEADER_SIGNATURE, signature),
            (verify::HEADER_SERIAL, PUBLIC_KEY_ID.to_owned()),
            (
                verify::HEADER_SIGNATURE_TYPE,
                verify::SIGNATURE_TYPE.to_owned(),
            ),
        ])
    }

    fn set(mut self, name: &'static str, value: impl Into<String>) -> Self {
        for (n, v) in &mut self.0 {
            if *n == name {
                *v = value.into();
                return self;
            }
        }
        panic!("no header {name}");
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn open(headers: &Headers, body: &[u8]) -> Result<payment_client::Notification, NotifyError> {
    verifier().open(|name| headers.get(name), body, now())
}

#[test]
fn a_genuine_notification_opens_and_reads_as_paid() {
    let body = good_body();
    let n = open(&Headers::signed(&body, now()), &body).unwrap();
    assert_eq!(n.id, "EV-2018022511223320873");
    assert_eq!(n.event_type, "TRANSACTION.SUCCESS");
    assert_eq!(n.resource_type, "encrypt-resource");
    assert_eq!(n.original_type, "transaction");
    assert_eq!(n.summary, "支付成功");
    assert_eq!(n.create_time, "2026-11-26T10:00:01+08:00");
    let t = n.transaction().unwrap();
    assert_eq!(t.trade_state, TradeState::Success);
    assert_eq!(t.out_trade_no.as_deref(), Some(OUT_TRADE_NO));
    assert_eq!(t.mchid.as_deref(), Some(MCHID));
    assert_eq!(t.amount.and_then(|a| a.total), Some(100));
    // A skew just under the limit is still fine, either way.
    for ts in [now() - 290, now() + 290] {
        open(&Headers::signed(&body, ts), &body).unwrap();
    }
}

#[test]
fn a_tampered_body_is_not_opened() {
    let body = good_body();
    let headers = Headers::signed(&body, now());
    let mut tampered = body.clone();
    let at = tampered.len() - 3;
    tampered[at] ^= 0x01;
    assert_eq!(
        open(&headers, &tampered).unwrap_err(),
        NotifyError::Unverified(VerifyError::BadSignature)
    );
}

#[test]
fn a_tampered_signature_is_not_opened() {
    let body = good_body();
    let headers = Headers::signed(&body, now());
    let mut sig =
        openssl::base64::decode_block(headers.get(verify::HEADER_SIGNATURE).unwrap()).unwrap();
    sig[0] ^= 0x01;
    let headers = headers.set(
        verify::HEADER_SIGNATURE,
        openssl::base64::encode_block(&sig),
    );
    assert_eq!(
        open(&headers, &body).unwrap_err(),
        NotifyError::Unverified(VerifyError::BadSignature)
    );
}

#[test]
fn a_notification_signed_by_an_unknown_serial_is_not_opened() {
    let body = good_body();
    let headers = Headers::signed(&body, now()).set(verify::HEADER_SERIAL, "PUB_KEY_ID_0119999999");
    assert_eq!(
        open(&headers, &body).unwrap_err(),
        NotifyError::Unverified(VerifyError::UnknownSerial("PUB_KEY_ID_0119999999".into()))
    );
}

#[test]
fn a_notification_claiming_another_signature_type_is_not_opened() {
    let body = good_body();
    let headers =
        Headers::signed(&body, now()).set(verify::HEADER_SIGNATURE_TYPE, "WECHATPAY2-SM2-WITH-SM3");
    assert_eq!(
        open(&headers, &body).unwrap_err(),
        NotifyError::Unverified(VerifyError::InvalidHeader(verify::HEADER_SIGNATURE_TYPE))
    );
}

#[test]
fn a_stale_notification_is_not_opened() {
    let body = good_body();
    // One clock reading for signing and opening, so the skew is exact.
    let t = now();
    for ts in [t - 300, t + 300, t - 86_400] {
        let headers = Headers::signed(&body, ts);
        let err = verifier()
            .open(|name| headers.get(name), &body, t)
            .unwrap_err();
        assert!(
            matches!(err, NotifyError::Unverified(VerifyError::StaleTimestamp { skew_secs }) if skew_secs >= 300),
            "{err:?}"
        );
    }
}

#[test]
fn missing_headers_are_not_opened() {
    let body = good_body();
    let headers = Headers::signed(&body, now());
    assert_eq!(
        verifier()
            .open(
                |name| (name != verify::HEADER_SIGNATURE)
                    .then(|| headers.get(name))
                    .flatten(),
                &body,
                now()
            )
            .unwrap_err(),
        NotifyError::Unverified(VerifyError::MissingHeader(verify::HEADER_SIGNATURE))
    );
}

#[test]
fn a_signature_probe_is_refused_before_anything_else() {
    let body = good_body();
    let probe = format!("{SIGNATURE_PROBE_PREFIX}abcdefghijklmnop");
    // Even with a stale timestamp and an unknown serial: the probe is
    // recognised first, and never verified or acted on.
    let headers = Headers::signed(&body, now() - 3_600)
        .set(verify::HEADER_SIGNATURE, probe)
        .set(verify::HEADER_SERIAL, "PUB_KEY_ID_0119999999");
    let err = open(&headers, &body).unwrap_err();
    assert_eq!(err, NotifyError::SignatureProbe);
    assert!(!err.to_string().is_empty());
}

#[test]
fn another_algorithm_is_refused() {
    let nonce = "fdasflkja484";
    let ct = encrypt(
        APIV3_KEY,
        nonce,
        "transaction",
        transaction_json(OUT_TRADE_NO, "SUCCESS").as_bytes(),
    );
    let body = envelope("AEAD_AES_128_GCM", &ct, nonce);
    assert_eq!(
        open(&Headers::signed(&body, now()), &body).unwrap_err(),
        NotifyError::UnsupportedAlgorithm("AEAD_AES_128_GCM".into())
    );
}

#[test]
fn a_resource_that_does_not_decrypt_is_refused() {
    let nonce = "fdasflkja484";
    let plaintext = transaction_json(OUT_TRADE_NO, "SUCCESS");
    // Encrypted under another key, or with another nonce than announced.
    for body in [
        envelope(
            ALGORITHM,
            &encrypt(
                b"another key of exactly 32 bytes!",
                nonce,
                "transaction",
                plaintext.as_bytes(),
            ),
            nonce,
        ),
        envelope(
            ALGORITHM,
            &encrypt(
                APIV3_KEY,
                "otherNonce12",
                "transaction",
                plaintext.as_bytes(),
            ),
            nonce,
        ),
        envelope(ALGORITHM, "!!not base64!!", nonce),
    ] {
        let err = open(&Headers::signed(&body, now()), &body).unwrap_err();
        assert_eq!(err, NotifyError::Undecryptable);
        assert!(!err.to_string().contains(OUT_TRADE_NO));
    }
}

#[test]
fn a_verified_body_that_is_not_a_notification_is_malformed() {
    for body in [
        b"not json".to_vec(),
        br#"{"id":"EV-1","event_type":"TRANSACTION.SUCCESS"}"#.to_vec(),
        br#"{"id":"EV-1","event_type":"TRANSACTION.SUCCESS","resource":{"algorithm":"AEAD_AES_256_GCM"}}"#.to_vec(),
    ] {
        let err = open(&Headers::signed(&body, now()), &body).unwrap_err();
        assert!(matches!(err, NotifyError::Malformed(_)), "{err:?}");
    }
}

#[test]
fn an_unknown_trade_state_inside_is_an_error_not_unpaid() {
    let nonce = "fdasflkja484";
    let ct = encrypt(
        APIV3_KEY,
        nonce,
        "transaction",
        transaction_json(OUT_TRADE_NO, "REFUNDING").as_bytes(),
    );
    let body = envelope(ALGORITHM, &ct, nonce);
    let n = open(&Headers::signed(&body, now()), &body).unwrap();
    assert_eq!(
        n.transaction().unwrap_err(),
        NotifyError::UnknownTradeState("REFUNDING".into())
    );
}

#[test]
fn a_notification_the_simulator_delivers_opens_with_the_clients_keys() {
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let notify_url = format!("http://{}/wechatpay/notify", receiver.local_addr().unwrap());
    let e = env();
    let req = payment_client::NativePrepay {
        appid: "wxd678efh567hg6787".to_owned(),
        description: "order-timeout test".to_owned(),
        out_trade_no: "SIMNOTIFY1".to_owned(),
        total_fen: 4_990,
        time_expire: "2099-11-26T18:00:00+08:00".to_owned(),
        notify_url,
    };
    e.client.native_prepay(&req).unwrap();
    e.admin.pay("SIMNOTIFY1").unwrap();

    let (stream, _) = receiver.accept().unwrap();
    let (got, mut stream) = read_request(stream);
    std::io::Write::write_all(
        &mut stream,
        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(got.request_line, "POST /wechatpay/notify HTTP/1.1");

    let verifier = NotificationVerifier::new(
        e.client.key_store().clone(),
        ApiV3Key::new(wechatpay_sim::DEFAULT_APIV3_KEY.as_bytes()).unwrap(),
    );
    let n = verifier
        .open(|name| got.header(name), &got.body, now())
        .unwrap();
    assert_eq!(n.event_type, "TRANSACTION.SUCCESS");
    let t = n.transaction().unwrap();
    assert_eq!(t.trade_state, TradeState::Success);
    assert_eq!(t.out_trade_no.as_deref(), Some("SIMNOTIFY1"));
    assert_eq!(t.mchid.as_deref(), Some(e.client.mchid()));
    assert_eq!(t.amount.and_then(|a| a.total), Some(4_990));
}
