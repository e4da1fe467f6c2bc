//! Payment and refund notifications: what WeChat Pay POSTs to the
//! `notify_url` of a prepay order or a refund, opened only after its
//! signature has been verified.
//!
//! A notification carries the same four `Wechatpay-*` headers as an API
//! answer and is verified exactly like one ([`KeyStore::verify`], same keys,
//! same 5-minute limit). Its `resource` is the transaction
//! ([`Notification::transaction`]) or the refund ([`Notification::refund`]),
//! encrypted with
//! AES-256-GCM under the merchant's APIv3 key ([`ApiV3Key`]); the
//! `ciphertext` is base64 of the encrypted bytes followed by the 16-byte tag.
//!
//! Every [`NotifyError`] prints a short message that is safe to send back to
//! WeChat Pay in `{"code":"FAIL","message":...}`: no key, no plaintext. There
//! is no replay guard here on purpose: a copy of a genuine notification
//! within the 5 minutes says nothing new, and the caller records payments
//! idempotently.

use std::fmt;
use std::path::Path;

use openssl::symm::{decrypt_aead, Cipher};
use secrecy::{ExposeSecret, SecretSlice};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::model::{RawTransaction, RefundState, Transaction};
use crate::verify::{KeyStore, VerifyError, HEADER_SIGNATURE};

/// The only `resource.algorithm` WeChat Pay uses for notifications.
pub const ALGORITHM: &str = "AEAD_AES_256_GCM";
/// `Wechatpay-Signature` of WeChat Pay's signature probes starts with this.
pub const SIGNATURE_PROBE_PREFIX: &str = "WECHATPAY/SIGNTEST/";
/// Length of the APIv3 key, in bytes.
pub const API_V3_KEY_LEN: usize = 32;
/// Length of the GCM tag at the end of the decoded ciphertext.
const TAG_LEN: usize = 16;

/// The merchant's APIv3 key (32 bytes, set on the merchant platform), which
/// decrypts notification resources. `Debug` never shows it and no error
/// contains it.
#[derive(Clone)]
pub struct ApiV3Key(SecretSlice<u8>);

impl fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiV3Key(<redacted>)")
    }
}

impl ApiV3Key {
    /// Exactly 32 bytes, or [`ConfigError::ApiV3KeyLength`].
    pub fn new(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.len() != API_V3_KEY_LEN {
            return Err(ConfigError::ApiV3KeyLength(bytes.len()));
        }
        Ok(Self(SecretSlice::from(bytes.to_vec())))
    }

    /// Reads a file of exactly 32 bytes; one trailing `\n` or `\r\n` (as an
    /// editor leaves it) is not part of the key. Errors name the file and
    /// the length found, never the content.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let what = "WeChat Pay APIv3 key";
        let bytes = std::fs::read(path).map_err(|e| ConfigError::KeyFile {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let key = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(&bytes);
        Self::new(key).map_err(|_| ConfigError::KeyFile {
            what,
            path: path.to_owned(),
            reason: format!(
                "expected exactly {API_V3_KEY_LEN} bytes (one trailing newline allowed), found {}",
                key.len()
            ),
        })
    }
}

/// Why a notification was not accepted. Each message is short and safe to
/// return to WeChat Pay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// `Wechatpay-Signature` starts with `WECHATPAY/SIGNTEST/`: WeChat Pay
    /// checking that we verify signatures. Refused, never acted on.
    #[error("signature probe refused")]
    SignatureProbe,
    /// The signature headers do not verify (missing, stale, unknown serial,
    /// wrong signature).
    #[error("signature not verified: {0}")]
    Unverified(#[source] VerifyError),
    /// A verified body that is not a notification as documented, or a
    /// resource that is not what the caller asked for.
    #[error("malformed notification: {0}")]
    Malformed(String),
    /// `resource.algorithm` is not `AEAD_AES_256_GCM`.
    #[error("unsupported resource algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The resource does not decrypt: wrong APIv3 key, or nonce, associated
    /// data or ciphertext not as encrypted.
    #[error("resource cannot be decrypted")]
    Undecryptable,
    /// The decrypted transaction has a `trade_state` we do not know.
    #[error("unknown trade_state {0:?}")]
    UnknownTradeState(String),
    /// The decrypted refund has a `refund_status` we do not know.
    #[error("unknown refund_status {0:?}")]
    UnknownRefundStatus(String),
}

/// The refund a refund notification (`REFUND.SUCCESS`, `REFUND.ABNORMAL`,
/// `REFUND.CLOSED`) carries. Amounts are in integer fen, from the resource's
/// `amount.refund` and `amount.total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundNotice {
    pub mchid: Option<String>,
    pub out_trade_no: Option<String>,
    pub transaction_id: Option<String>,
    pub out_refund_no: String,
    pub refund_id: Option<String>,
    /// `refund_status` in the resource.
    pub status: RefundState,
    /// RFC 3339; kept as sent.
    pub success_time: Option<String>,
    pub refund_fen: Option<i64>,
    pub total_fen: Option<i64>,
}

/// The decrypted refund resource with `refund_status` still a string.
#[derive(Deserialize)]
struct RawRefundNotice {
    out_refund_no: String,
    refund_status: String,
    #[serde(default)]
    mchid: Option<String>,
    #[serde(default)]
    out_trade_no: Option<String>,
    #[serde(default)]
    transaction_id: Option<String>,
    #[serde(default)]
    refund_id: Option<String>,
    #[serde(default)]
    success_time: Option<String>,
    #[serde(default)]
    amount: Option<RawRefundNoticeAmount>,
}

#[derive(Default, Deserialize)]
struct RawRefundNoticeAmount {
    #[serde(default)]
    total: Option<i64>,
    #[serde(default)]
    refund: Option<i64>,
}

/// Decrypts a notification `resource`: AES-256-GCM under `key`, with the
/// `nonce` and `associated_data` strings as given, over base64
/// `ciphertext_b64` whose last 16 decoded bytes are the tag. Any failure
/// (bad base64, too short, authentication failed) is
/// [`NotifyError::Undecryptable`].
pub fn decrypt_resource(
    key: &ApiV3Key,
    nonce: &str,
    associated_data: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, NotifyError> {
    let data =
        openssl::base64::decode_block(ciphertext_b64).map_err(|_| NotifyError::Undecryptable)?;
    if nonce.is_empty() || data.len() < TAG_LEN {
        return Err(NotifyError::Undecryptable);
    }
    let (ciphertext, tag) = data.split_at(data.len() - TAG_LEN);
    decrypt_aead(
        Cipher::aes_256_gcm(),
        key.0.expose_secret(),
        Some(nonce.as_bytes()),
        associated_data.as_bytes(),
        ciphertext,
        tag,
    )
    .map_err(|_| NotifyError::Undecryptable)
}

/// An opened notification: verified, decrypted, not yet interpreted.
#[derive(Clone, PartialEq, Eq)]
pub struct Notification {
    /// WeChat Pay's id of this notification (the same on redelivery).
    pub id: String,
    /// RFC 3339, as sent.
    pub create_time: String,
    /// `TRANSACTION.SUCCESS`, `REFUND.SUCCESS`, ...
    pub event_type: String,
    /// `encrypt-resource`
    pub resource_type: String,
    /// `transaction` or `refund`.
    pub original_type: String,
    pub summary: String,
    /// The decrypted resource (JSON).
    pub plaintext: Vec<u8>,
}

impl fmt::Debug for Notification {
    // The plaintext (payer, amounts) stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notification")
            .field("id", &self.id)
            .field("create_time", &self.create_time)
            .field("event_type", &self.event_type)
            .field("resource_type", &self.resource_type)
            .field("original_type", &self.original_type)
            .field("summary", &self.summary)
            .field(
                "plaintext",
                &format_args!("<{} bytes>", self.plaintext.len()),
            )
            .finish()
    }
}

impl Notification {
    /// The decrypted resource as a transaction (`original_type`
    /// `transaction`). Lenient like a query answer: missing fields are
    /// `None`, and checking `mchid`, `appid`, `out_trade_no` and `amount`
    /// against the order is the caller's job. An unknown `trade_state` is
    /// [`NotifyError::UnknownTradeState`].
    pub fn transaction(&self) -> Result<Transaction, NotifyError> {
        // Absent is tolerated like any other missing field; another type is not.
        if !self.original_type.is_empty() && self.original_type != "transaction" {
            return Err(NotifyError::Malformed(format!(
                "resource is {:?}, not a transaction",
                cut(&self.original_type, 64)
            )));
        }
        let raw: RawTransaction = serde_json::from_slice(&self.plaintext).map_err(|e| {
            // serde's message may quote the plaintext: say only where.
            NotifyError::Malformed(format!(
                "decrypted resource is not a transaction ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        raw.into_transaction()
            .map_err(|state| NotifyError::UnknownTradeState(cut(&state, 64)))
    }

    /// The decrypted resource as a refund (`original_type` `refund`).
    /// Lenient like a refund answer: missing fields are `None`, and checking
    /// `mchid`, `out_refund_no` and the amounts against the refund asked for
    /// is the caller's job. An unknown `refund_status` is
    /// [`NotifyError::UnknownRefundStatus`].
    pub fn refund(&self) -> Result<RefundNotice, NotifyError> {
        // Absent is tolerated like any other missing field (the required
        // `out_refund_no` and `refund_status` tell a refund apart anyway);
        // another type is not.
        if !self.original_type.is_empty() && self.original_type != "refund" {
            return Err(NotifyError::Malformed(format!(
                "resource is {:?}, not a refund",
                cut(&self.original_type, 64)
            )));
        }
        let raw: RawRefundNotice = serde_json::from_slice(&self.plaintext).map_err(|e| {
            // serde's message may quote the plaintext: say only where.
            NotifyError::Malformed(format!(
                "decrypted resource is not a refund ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let status = raw
            .refund_status
            .parse()
            .map_err(|status: String| NotifyError::UnknownRefundStatus(cut(&status, 64)))?;
        let amount = raw.amount.unwrap_or_default();
        Ok(RefundNotice {
            mchid: raw.mchid,
            out_trade_no: raw.out_trade_no,
            transaction_id: raw.transaction_id,
            out_refund_no: raw.out_refund_no,
            refund_id: raw.refund_id,
            status,
            success_time: raw.success_time,
            refund_fen: amount.refund,
            total_fen: amount.total,
        })
    }
}

/// Opens notifications: verifies them with the trusted WeChat Pay keys (the
/// client's, see [`crate::Client::key_store`]) and decrypts them with the
/// APIv3 key. `Send + Sync`; share it.
#[derive(Debug, Clone)]
pub struct NotificationVerifier {
    keys: KeyStore,
    key: ApiV3Key,
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(default)]
    create_time: String,
    #[serde(default)]
    resource_type: String,
    event_type: String,
    #[serde(default)]
    summary: String,
    resource: Resource,
}

#[derive(Deserialize)]
struct Resource {
    #[serde(default)]
    original_type: String,
    algorithm: String,
    ciphertext: String,
    #[serde(default)]
    associated_data: String,
    nonce: String,
}

impl NotificationVerifier {
    #[must_use]
    pub fn new(keys: KeyStore, key: ApiV3Key) -> Self {
        Self { keys, key }
    }

    /// Opens one notification: `header` looks a request header up by name
    /// (case-insensitively), `body` is the raw request body, `now_unix` the
    /// current Unix time in seconds. In this order:
    ///
    /// 1. a signature probe is [`NotifyError::SignatureProbe`];
    /// 2. the signature must verify: [`NotifyError::Unverified`];
    /// 3. the body must be a notification: [`NotifyError::Malformed`], with
    ///    algorithm `AEAD_AES_256_GCM`: [`NotifyError::UnsupportedAlgorithm`];
    /// 4. the resource must decrypt: [`NotifyError::Undecryptable`].
    pub fn open<'h>(
        &self,
        header: impl Fn(&'static str) -> Option<&'h str>,
        body: &[u8],
        now_unix: u64,
    ) -> Result<Notification, NotifyError> {
        if header(HEADER_SIGNATURE).is_some_and(|s| s.starts_with(SIGNATURE_PROBE_PREFIX)) {
            return Err(NotifyError::SignatureProbe);
        }
        self.keys
            .verify(header, body, now_unix)
            .map_err(NotifyError::Unverified)?;
        let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
            NotifyError::Malformed(cut(&format!("body is not a notification: {e}"), 200))
        })?;
        let resource = envelope.resource;
        if resource.algorithm != ALGORITHM {
            return Err(NotifyError::UnsupportedAlgorithm(cut(
                &resource.algorithm,
                64,
            )));
        }
        let plaintext = decrypt_resource(
            &self.key,
            &resource.nonce,
            &resource.associated_data,
            &resource.ciphertext,
        )?;
        Ok(Notification {
            id: envelope.id,
            create_time: envelope.create_time,
            event_type: envelope.event_type,
            resource_type: envelope.resource_type,
            original_type: resource.original_type,
            summary: envelope.summary,
            plaintext,
        })
    }
}

/// At most `max` characters of a value echoed in an error (then `...`).
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{RefundState, TradeState};

    struct Vector {
        key: ApiV3Key,
        nonce: String,
        associated_data: String,
        plaintext: String,
        ciphertext: String,
    }

    /// Made by Python's `cryptography` (`scripts/make-aead-vector.py`), so
    /// it checks us against an independent implementation.
    fn vector() -> Vector {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/wechatpay-aead-vector.json"
        );
        let json = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let s = |name: &str| v[name].as_str().unwrap().to_owned();
        assert_eq!(s("algorithm"), ALGORITHM);
        Vector {
            key: ApiV3Key::new(s("apiv3_key").as_bytes()).unwrap(),
            nonce: s("nonce"),
            associated_data: s("associated_data"),
            plaintext: s("plaintext"),
            ciphertext: s("ciphertext"),
        }
    }

    fn decrypt(v: &Vector) -> Result<Vec<u8>, NotifyError> {
        decrypt_resource(&v.key, &v.nonce, &v.associated_data, &v.ciphertext)
    }

    #[test]
    fn the_reference_vector_decrypts_to_its_plaintext() {
        let v = vector();
        assert_eq!(decrypt(&v).unwrap(), v.plaintext.as_bytes());
    }

    #[test]
    fn its_plaintext_is_a_transaction() {
        let v = vector();
        let n = Notification {
            id: "id".into(),
            create_time: String::new(),
            event_type: "TRANSACTION.SUCCESS".into(),
            resource_type: "encrypt-resource".into(),
            original_type: "transaction".into(),
            summary: String::new(),
            plaintext: decrypt(&v).unwrap(),
        };
        let t = n.transaction().unwrap();
        assert_eq!(t.trade_state, TradeState::Success);
        assert_eq!(t.out_trade_no.as_deref(), Some("OT20261126000000000001"));
        assert_eq!(t.amount.unwrap().total, Some(100));
        let debug = format!("{n:?}");
        assert!(!debug.contains("OT2026"), "{debug}");
    }

    #[test]
    fn anything_changed_does_not_decrypt() {
        let v = vector();
        let mut data = openssl::base64::decode_block(&v.ciphertext).unwrap();

        let mut flipped = data.clone();
        flipped[3] ^= 0x01;
        let flipped = openssl::base64::encode_block(&flipped);
        let mut tag_flipped = data.clone();
        *tag_flipped.last_mut().unwrap() ^= 0x80;
        let tag_flipped = openssl::base64::encode_block(&tag_flipped);
        data.truncate(data.len() - 1);
        let truncated = openssl::base64::encode_block(&data);

        let other_key = ApiV3Key::new(b"0123456789abcdefABCDEF012345678X").unwrap();
        let cases: [(&ApiV3Key, &str, &str, &str); 10] = [
            (&v.key, &v.nonce, &v.associated_data, &flipped),
            (&v.key, &v.nonce, &v.associated_data, &tag_flipped),
            (&v.key, &v.nonce, "refund", &v.ciphertext),
            (&v.key, &v.nonce, "", &v.ciphertext),
            (&v.key, "fdasflkja485", &v.associated_data, &v.ciphertext),
            (&v.key, "", &v.associated_data, &v.ciphertext),
            (&other_key, &v.nonce, &v.associated_data, &v.ciphertext),
            (&v.key, &v.nonce, &v.associated_data, &truncated),
            (&v.key, &v.nonce, &v.associated_data, &v.ciphertext[..20]),
            (&v.key, &v.nonce, &v.associated_data, "!!not base64!!"),
        ];
        for (i, (key, nonce, ad, ct)) in cases.into_iter().enumerate() {
            assert_eq!(
                decrypt_resource(key, nonce, ad, ct),
                Err(NotifyError::Undecryptable),
                "case {i}"
            );
        }
        for short in ["", "AAAA", &openssl::base64::encode_block(&[0; 15])] {
            assert_eq!(
                decrypt_resource(&v.key, &v.nonce, &v.associated_data, short),
                Err(NotifyError::Undecryptable),
                "{short:?}"
            );
        }
    }

    #[test]
    fn the_key_is_exactly_32_bytes_and_never_printed() {
        assert_eq!(
            ApiV3Key::new(&[b'k'; 31]).unwrap_err().to_string(),
            ConfigError::ApiV3KeyLength(31).to_string()
        );
        assert!(matches!(
            ApiV3Key::new(&[b'k'; 33]),
            Err(ConfigError::ApiV3KeyLength(33))
        ));
        assert!(matches!(
            ApiV3Key::new(b""),
            Err(ConfigError::ApiV3KeyLength(0))
        ));
        let key = ApiV3Key::new(b"SECRETSECRETSECRETSECRETSECRET32").unwrap();
        assert_eq!(format!("{key:?}"), "ApiV3Key(<redacted>)");
        let verifier = NotificationVerifier::new(KeyStore::new(), key);
        assert!(!format!("{verifier:?}").contains("SECRET"));
    }

    #[test]
    fn a_key_file_may_end_in_one_newline() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let key = b"0123456789abcdefABCDEF0123456789";
        for (name, content, ok) in [
            ("plain", key.to_vec(), true),
            ("lf", [&key[..], b"\n"].concat(), true),
            ("crlf", [&key[..], b"\r\n"].concat(), true),
            ("two-lf", [&key[..], b"\n\n"].concat(), false),
            ("space", [&key[..], b" "].concat(), false),
            ("short", key[..31].to_vec(), false),
            ("long", [&key[..], b"X"].concat(), false),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, &content).unwrap();
            match ApiV3Key::load(&path) {
                Ok(loaded) => {
                    assert!(ok, "{name}");
                    assert_eq!(loaded.0.expose_secret(), key);
                }
                Err(e) => {
                    assert!(!ok, "{name}: {e}");
                    let msg = e.to_string();
                    assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
                    assert!(msg.contains("found "), "{msg}");
                    assert!(!msg.contains("0123456789abcdef"), "{msg}");
                }
            }
        }
        let missing = ApiV3Key::load(&dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("APIv3 key") && missing.contains("missing"));
    }

    #[test]
    fn transaction_errors_do_not_quote_the_plaintext() {
        let n = |original_type: &str, plaintext: &str| Notification {
            id: "id".into(),
            create_time: String::new(),
            event_type: "TRANSACTION.SUCCESS".into(),
            resource_type: "encrypt-resource".into(),
            original_type: original_type.into(),
            summary: String::new(),
            plaintext: plaintext.as_bytes().to_vec(),
        };
        let err = n(
            "transaction",
            r#"{"trade_state":"SUCCESS","amount":"SECRETVALUE"}"#,
        )
        .transaction()
        .unwrap_err();
        assert!(matches!(err, NotifyError::Malformed(_)), "{err:?}");
        assert!(!err.to_string().contains("SECRETVALUE"), "{err}");
        assert_eq!(
            n("transaction", r#"{"trade_state":"REFUNDING"}"#).transaction(),
            Err(NotifyError::UnknownTradeState("REFUNDING".into()))
        );
        assert!(matches!(
            n("refund", r#"{"trade_state":"SUCCESS"}"#).transaction(),
            Err(NotifyError::Malformed(_))
        ));
        let t = n("transaction", r#"{"trade_state":"NOTPAY"}"#)
            .transaction()
            .unwrap();
        assert_eq!(
            (t.trade_state, t.mchid, t.amount),
            (TradeState::NotPay, None, None)
        );
    }

    fn refund_json(refund_status: &str) -> String {
        // Shape of the official documentation's example refund resource.
        serde_json::json!({
            "mchid": "1900000100",
            "transaction_id": "1008450740201411110005820873",
            "out_trade_no": "20150806125346",
            "refund_id": "50200207182018070300011301001",
            "out_refund_no": "7752501201407033233368018",
            "refund_status": refund_status,
            "success_time": "2018-06-08T10:34:56+08:00",
            "user_received_account": "招商银行信用卡0403",
            "amount": {"total": 999, "refund": 888, "payer_total": 999, "payer_refund": 888}
        })
        .to_string()
    }

    fn notification(original_type: &str, event_type: &str, plaintext: &str) -> Notification {
        Notification {
            id: "id".into(),
            create_time: String::new(),
            event_type: event_type.into(),
            resource_type: "encrypt-resource".into(),
            original_type: original_type.into(),
            summary: String::new(),
            plaintext: plaintext.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_refund_resource_is_a_refund_notice() {
        for (event, status) in [
            ("REFUND.SUCCESS", RefundState::Success),
            ("REFUND.ABNORMAL", RefundState::Abnormal),
            ("REFUND.CLOSED", RefundState::Closed),
        ] {
            let n = notification("refund", event, &refund_json(status.as_str()));
            assert_eq!(
                n.refund().unwrap(),
                RefundNotice {
                    mchid: Some("1900000100".into()),
                    out_trade_no: Some("20150806125346".into()),
                    transaction_id: Some("1008450740201411110005820873".into()),
                    out_refund_no: "7752501201407033233368018".into(),
                    refund_id: Some("50200207182018070300011301001".into()),
                    status,
                    success_time: Some("2018-06-08T10:34:56+08:00".into()),
                    refund_fen: Some(888),
                    total_fen: Some(999),
                }
            );
        }
        let minimal = notification(
            "",
            "REFUND.SUCCESS",
            r#"{"out_refund_no":"R1","refund_status":"SUCCESS"}"#,
        )
        .refund()
        .unwrap();
        assert_eq!(
            (minimal.refund_fen, minimal.mchid, minimal.status),
            (None, None, RefundState::Success)
        );
    }

    #[test]
    fn refund_notice_errors() {
        assert_eq!(
            notification("refund", "REFUND.SUCCESS", &refund_json("REFUNDCLOSE")).refund(),
            Err(NotifyError::UnknownRefundStatus("REFUNDCLOSE".into()))
        );
        assert_eq!(
            notification("refund", "REFUND.SUCCESS", &refund_json("success")).refund(),
            Err(NotifyError::UnknownRefundStatus("success".into()))
        );
        // Required fields missing, a wrong type: malformed, without quoting.
        for plaintext in [
            r#"{"refund_status":"SUCCESS"}"#,
            r#"{"out_refund_no":"R1"}"#,
            r#"{"out_refund_no":"R1","refund_status":"SUCCESS","amount":"SECRETVALUE"}"#,
        ] {
            let err = notification("refund", "REFUND.SUCCESS", plaintext)
                .refund()
                .unwrap_err();
            assert!(matches!(err, NotifyError::Malformed(_)), "{err:?}");
            assert!(!err.to_string().contains("SECRETVALUE"), "{err}");
        }
    }

    #[test]
    fn transactions_and_refunds_are_not_mistaken_for_each_other() {
        let tx = notification(
            "transaction",
            "TRANSACTION.SUCCESS",
            r#"{"trade_state":"SUCCESS","out_trade_no":"OT1"}"#,
        );
        let err = tx.refund().unwrap_err();
        assert!(matches!(err, NotifyError::Malformed(_)), "{err:?}");
        assert!(err.to_string().contains("not a refund"), "{err}");

        let refund = notification("refund", "REFUND.SUCCESS", &refund_json("SUCCESS"));
        let err = refund.transaction().unwrap_err();
        assert!(matches!(err, NotifyError::Malformed(_)), "{err:?}");

        // Without original_type, the required fields still tell them apart.
        let untyped_tx = notification("", "TRANSACTION.SUCCESS", r#"{"trade_state":"SUCCESS"}"#);
        assert!(matches!(
            untyped_tx.refund(),
            Err(NotifyError::Malformed(_))
        ));
        let untyped_refund = notification("", "REFUND.SUCCESS", &refund_json("SUCCESS"));
        assert!(matches!(
            untyped_refund.transaction(),
            Err(NotifyError::Malformed(_))
        ));
    }

    #[test]
    fn long_echoed_values_are_cut() {
        assert_eq!(cut("abc", 3), "abc");
        let long = "é".repeat(100);
        assert_eq!(cut(&long, 64).chars().count(), 67);
    }
}
