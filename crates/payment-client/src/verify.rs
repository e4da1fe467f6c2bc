//! Response verification: nothing WeChat Pay says is believed before this
//! module has checked its signature.
//!
//! The signed message is `TIMESTAMP\nNONCE\nBODY\n` taken from the
//! `Wechatpay-Timestamp` and `Wechatpay-Nonce` headers and the raw body; the
//! base64 `Wechatpay-Signature` must verify (SHA256withRSA, PKCS#1 v1.5) under
//! the key named by `Wechatpay-Serial`: a WeChat Pay public key id
//! (`PUB_KEY_ID_...`) or a platform certificate serial. A timestamp 5 minutes
//! or more away from our clock is refused (replayed or badly delayed), and
//! [`ReplayGuard`] refuses a signed answer seen before within that window.
//! A `Wechatpay-Signature-Type` header, when sent, must be
//! `WECHATPAY2-SHA256-RSA2048`: an answer claiming another scheme is not
//! verified under this one.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Rsa;
use openssl::sign::Verifier;
use openssl::x509::X509;

use crate::config::ConfigError;

/// Responses whose timestamp is this far from our clock, or farther, are refused.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_mins(5);

pub const HEADER_TIMESTAMP: &str = "Wechatpay-Timestamp";
pub const HEADER_NONCE: &str = "Wechatpay-Nonce";
pub const HEADER_SIGNATURE: &str = "Wechatpay-Signature";
pub const HEADER_SERIAL: &str = "Wechatpay-Serial";
/// Sent with notifications (and by newer API answers); when present it
/// must name the one scheme verified here.
pub const HEADER_SIGNATURE_TYPE: &str = "Wechatpay-Signature-Type";
/// The signature scheme of APIv3: SHA256withRSA over the message below.
pub const SIGNATURE_TYPE: &str = "WECHATPAY2-SHA256-RSA2048";

/// Why a response was not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("header {0} is missing")]
    MissingHeader(&'static str),
    #[error("header {0} is not valid")]
    InvalidHeader(&'static str),
    #[error("signed by unknown key serial {0:?}")]
    UnknownSerial(String),
    #[error("timestamp is {skew_secs} s away from our clock (limit {} s)", MAX_CLOCK_SKEW.as_secs())]
    StaleTimestamp { skew_secs: u64 },
    #[error("signature does not match")]
    BadSignature,
    #[error("replayed: this signed answer (timestamp and nonce) was received before")]
    Replayed,
}

/// Remembers the signed answers (timestamp and nonce) verified in the last
/// [`MAX_CLOCK_SKEW`], so that a copy of one of them is refused: older
/// copies fail the timestamp check anyway. Bounded: it keeps at most
/// `capacity` entries (16 bytes each plus the set's overhead), evicting the
/// oldest first, so under a load above `capacity` answers per 5 minutes it
/// covers a shorter window; the timestamp check still bounds the rest.
pub struct ReplayGuard {
    /// A keyed hash, so answers cannot be crafted to collide.
    hasher: RandomState,
    capacity: usize,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    set: HashSet<u64>,
    /// (timestamp, hash), oldest first.
    order: VecDeque<(u64, u64)>,
}

impl fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl ReplayGuard {
    /// Default capacity: 65,536 answers (about 2 MiB).
    pub const DEFAULT_CAPACITY: usize = 1 << 16;

    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            capacity: capacity.max(1),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Records the answer identified by `timestamp` and `nonce`, received at
    /// `now_unix`; `Err(Replayed)` if it was recorded before.
    pub fn check(&self, timestamp: u64, nonce: &str, now_unix: u64) -> Result<(), VerifyError> {
        let key = self.hasher.hash_one((timestamp, nonce));
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let horizon = now_unix.saturating_sub(MAX_CLOCK_SKEW.as_secs());
        while let Some(&(ts, old)) = seen.order.front() {
            if ts >= horizon && seen.order.len() < self.capacity {
                break;
            }
            seen.order.pop_front();
            seen.set.remove(&old);
        }
        if !seen.set.insert(key) {
            return Err(VerifyError::Replayed);
        }
        seen.order.push_back((timestamp.max(now_unix), key));
        Ok(())
    }
}

/// The message a response signature covers.
#[must_use]
pub fn response_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    for part in [timestamp.as_bytes(), nonce.as_bytes(), body] {
        msg.extend_from_slice(part);
        msg.push(b'\n');
    }
    msg
}

/// The WeChat Pay keys we trust, by serial.
#[derive(Clone, Default)]
pub struct KeyStore {
    keys: HashMap<String, PKey<Public>>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut serials: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        serials.sort_unstable();
        f.debug_struct("KeyStore")
            .field("serials", &serials)
            .finish()
    }
}

impl KeyStore {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key` for responses carrying `Wechatpay-Serial: serial`.
    pub fn insert(&mut self, serial: impl Into<String>, key: PKey<Public>) {
        self.keys.insert(serial.into(), key);
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Loads a WeChat Pay public key file (SPKI `BEGIN PUBLIC KEY`, or PKCS#1
    /// `BEGIN RSA PUBLIC KEY`) for public key mode.
    pub fn load_public_key(path: &Path) -> Result<PKey<Public>, ConfigError> {
        let what = "WeChat Pay public key";
        let pem = read(path, what)?;
        public_key_from_pem(&pem).ok_or_else(|| ConfigError::KeyFile {
            what,
            path: path.to_owned(),
            reason: "not a PEM RSA public key (expected `BEGIN PUBLIC KEY`)".to_owned(),
        })
    }

    /// Loads a platform certificate and checks that its serial is the one
    /// configured (a mismatch means the wrong file or the wrong serial, and
    /// would make every response unverifiable).
    pub fn load_platform_certificate(
        path: &Path,
        serial: &str,
    ) -> Result<PKey<Public>, ConfigError> {
        let what = "WeChat Pay platform certificate";
        let pem = read(path, what)?;
        let bad = |reason: String| ConfigError::KeyFile {
            what,
            path: path.to_owned(),
            reason,
        };
        let cert = X509::from_pem(&pem)
            .map_err(|_| bad("not a PEM X.509 certificate (`BEGIN CERTIFICATE`)".to_owned()))?;
        let actual = cert
            .serial_number()
            .to_bn()
            .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
            .map_err(|_| bad("certificate serial number unreadable".to_owned()))?;
        if !actual
            .trim_start_matches('0')
            .eq_ignore_ascii_case(serial.trim_start_matches('0'))
        {
            return Err(bad(format!(
                "certificate serial is {actual}, but the configured serial is {serial}"
            )));
        }
        let key = cert
            .public_key()
            .map_err(|_| bad("certificate public key unreadable".to_owned()))?;
        if key.rsa().is_err() {
            return Err(bad("certificate key is not RSA".to_owned()));
        }
        Ok(key)
    }

    /// Verifies one response. `now_unix` is the current Unix time in seconds;
    /// `header` looks a header up by name (case-insensitively).
    pub fn verify<'h>(
        &self,
        header: impl Fn(&'static str) -> Option<&'h str>,
        body: &[u8],
        now_unix: u64,
    ) -> Result<(), VerifyError> {
        let get = |name| header(name).ok_or(VerifyError::MissingHeader(name));
        let timestamp = get(HEADER_TIMESTAMP)?;
        let nonce = get(HEADER_NONCE)?;
        let signature = get(HEADER_SIGNATURE)?;
        let serial = get(HEADER_SERIAL)?;
        if header(HEADER_SIGNATURE_TYPE).is_some_and(|t| t.trim() != SIGNATURE_TYPE) {
            return Err(VerifyError::InvalidHeader(HEADER_SIGNATURE_TYPE));
        }

        let ts: u64 = timestamp
            .parse()
            .map_err(|_| VerifyError::InvalidHeader(HEADER_TIMESTAMP))?;
        let skew_secs = ts.abs_diff(now_unix);
        if skew_secs >= MAX_CLOCK_SKEW.as_secs() {
            return Err(VerifyError::StaleTimestamp { skew_secs });
        }
        let key = self
            .keys
            .get(serial)
            .ok_or_else(|| VerifyError::UnknownSerial(serial.to_owned()))?;
        let signature = openssl::base64::decode_block(signature)
            .map_err(|_| VerifyError::InvalidHeader(HEADER_SIGNATURE))?;
        let message = response_message(timestamp, nonce, body);
        // Any OpenSSL failure here (e.g. a signature of the wrong length) is a
        // failed verification, never a pass.
        let ok = Verifier::new(MessageDigest::sha256(), key)
            .and_then(|mut v| v.verify_oneshot(&signature, &message))
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::KeyFile {
        what,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn public_key_from_pem(pem: &[u8]) -> Option<PKey<Public>> {
    if let Ok(key) = PKey::public_key_from_pem(pem) {
        return key.rsa().is_ok().then_some(key);
    }
    Rsa::public_key_from_pem_pkcs1(pem)
        .ok()
        .and_then(|rsa| PKey::from_rsa(rsa).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::tests::{GO_SDK_PRIVATE_KEY, GO_SDK_PUBLIC_KEY, GO_SDK_SIGNATURE};
    use crate::signing::MerchantKey;

    const SERIAL: &str = "PUB_KEY_ID_0114232134912410000000000000";
    const NOW: u64 = 1_700_000_000;

    fn store() -> KeyStore {
        let mut s = KeyStore::new();
        s.insert(
            SERIAL,
            public_key_from_pem(GO_SDK_PUBLIC_KEY.as_bytes()).unwrap(),
        );
        s
    }

    fn signed(ts: u64, nonce: &str, body: &[u8]) -> Vec<(&'static str, String)> {
        let key = MerchantKey::from_pem(GO_SDK_PRIVATE_KEY.as_bytes()).unwrap();
        let sig = key
            .sign(&response_message(&ts.to_string(), nonce, body))
            .unwrap();
        vec![
            (HEADER_TIMESTAMP, ts.to_string()),
            (HEADER_NONCE, nonce.to_owned()),
            (HEADER_SIGNATURE, sig),
            (HEADER_SERIAL, SERIAL.to_owned()),
        ]
    }

    fn check(headers: &[(&'static str, String)], body: &[u8], now: u64) -> Result<(), VerifyError> {
        store().verify(
            |name| {
                headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.as_str())
            },
            body,
            now,
        )
    }

    #[test]
    fn go_sdk_public_key_verifies_the_go_sdk_signature() {
        let key = public_key_from_pem(GO_SDK_PUBLIC_KEY.as_bytes()).unwrap();
        let sig = openssl::base64::decode_block(GO_SDK_SIGNATURE).unwrap();
        let mut v = Verifier::new(MessageDigest::sha256(), &key).unwrap();
        assert!(v.verify_oneshot(&sig, b"source").unwrap());
        let mut v = Verifier::new(MessageDigest::sha256(), &key).unwrap();
        assert!(!v.verify_oneshot(&sig, b"sourcE").unwrap());
    }

    #[test]
    fn accepts_a_good_response_including_an_empty_204_body() {
        let body = br#"{"trade_state":"NOTPAY"}"#;
        check(&signed(NOW, "n1", body), body, NOW).unwrap();
        check(&signed(NOW, "n2", b""), b"", NOW + 299).unwrap();
    }

    #[test]
    fn rejects_a_changed_body() {
        let h = signed(NOW, "n", br#"{"trade_state":"NOTPAY"}"#);
        assert_eq!(
            check(&h, br#"{"trade_state":"SUCCESS"}"#, NOW),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn rejects_skew_of_five_minutes_either_way() {
        let h = signed(NOW, "n", b"");
        assert_eq!(
            check(&h, b"", NOW + 300),
            Err(VerifyError::StaleTimestamp { skew_secs: 300 })
        );
        assert_eq!(
            check(&h, b"", NOW - 300),
            Err(VerifyError::StaleTimestamp { skew_secs: 300 })
        );
    }

    #[test]
    fn a_signature_type_when_sent_must_be_wechatpay2_sha256_rsa2048() {
        let body = br#"{"trade_state":"NOTPAY"}"#;
        let mut h = signed(NOW, "t1", body);
        h.push((HEADER_SIGNATURE_TYPE, SIGNATURE_TYPE.to_owned()));
        check(&h, body, NOW).unwrap();
        for other in ["WECHATPAY2-SM2-WITH-SM3", "", "wechatpay2-sha256-rsa2048"] {
            let mut h = signed(NOW, "t2", body);
            h.push((HEADER_SIGNATURE_TYPE, other.to_owned()));
            assert_eq!(
                check(&h, body, NOW),
                Err(VerifyError::InvalidHeader(HEADER_SIGNATURE_TYPE)),
                "{other:?}"
            );
        }
    }

    #[test]
    fn rejects_unknown_serial_missing_headers_and_garbage() {
        let mut h = signed(NOW, "n", b"");
        h[3].1 = "PUB_KEY_ID_OTHER".to_owned();
        assert_eq!(
            check(&h, b"", NOW),
            Err(VerifyError::UnknownSerial("PUB_KEY_ID_OTHER".into()))
        );

        let h = signed(NOW, "n", b"");
        assert_eq!(
            check(&h[..3], b"", NOW),
            Err(VerifyError::MissingHeader(HEADER_SERIAL))
        );

        let mut h = signed(NOW, "n", b"");
        h[2].1 = "!!not base64!!".to_owned();
        assert_eq!(
            check(&h, b"", NOW),
            Err(VerifyError::InvalidHeader(HEADER_SIGNATURE))
        );

        let mut h = signed(NOW, "n", b"");
        h[2].1 = openssl::base64::encode_block(b"short");
        assert_eq!(check(&h, b"", NOW), Err(VerifyError::BadSignature));

        let mut h = signed(NOW, "n", b"");
        h[0].1 = "yesterday".to_owned();
        assert_eq!(
            check(&h, b"", NOW),
            Err(VerifyError::InvalidHeader(HEADER_TIMESTAMP))
        );
    }

    #[test]
    fn a_replayed_answer_is_refused_within_the_window() {
        let guard = ReplayGuard::new(100);
        guard.check(NOW, "n1", NOW).unwrap();
        guard.check(NOW, "n2", NOW).unwrap();
        assert_eq!(guard.check(NOW, "n1", NOW + 10), Err(VerifyError::Replayed));
        // Same nonce, other timestamp: another answer.
        guard.check(NOW + 1, "n1", NOW + 10).unwrap();
        // Past the window the entry is forgotten (the skew check refuses it).
        guard.check(NOW, "n2", NOW + 301 + 300).unwrap();
    }

    #[test]
    fn the_replay_guard_stays_within_its_capacity() {
        let guard = ReplayGuard::new(3);
        for i in 0..10 {
            guard.check(NOW, &format!("n{i}"), NOW).unwrap();
        }
        let seen = guard.seen.lock().unwrap();
        assert!(seen.set.len() <= 3 && seen.order.len() <= 3);
    }

    #[test]
    fn nonce_is_part_of_the_signed_message() {
        let mut h = signed(NOW, "n1", b"");
        h[1].1 = "n2".to_owned();
        assert_eq!(check(&h, b"", NOW), Err(VerifyError::BadSignature));
    }
}
