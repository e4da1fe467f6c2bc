//! The response signer: adds the `Wechatpay-*` signature headers to every
//! API answer in WeChat Pay public key mode, or spoils them when a fault asks
//! for an unsigned answer, a tampered signature, a stale timestamp or an
//! unknown serial. Payment notifications are signed with the same message
//! format and key ([`signature`], [`nonce`]).
//!
//! It exists because our client verifies every answer, so the simulator must
//! sign like the real API does, with its own key and independently of the
//! `payment-client` crate.

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use rand::distr::{Alphanumeric, SampleString};
use rand::Rng;

use crate::model::Faults;
use crate::server::{unix_now, Reply, Shared};

const STALE_BY_SECS: u64 = 600;
/// Serial named by responses when the `unknown_serial` fault is on.
pub(crate) const UNKNOWN_SERIAL: &str = "PUB_KEY_ID_0119999999992099010100000000000000";

/// Adds the WeChat Pay signature headers (or spoils them, as faults ask).
pub(crate) fn sign(shared: &Shared, mut reply: Reply, faults: &Faults) -> Reply {
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
    let nonce = nonce();
    let signature = signature(
        &shared.keys.wechatpay_private,
        &timestamp,
        &nonce,
        &reply.body,
    );
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

/// A fresh `Wechatpay-Nonce`: 32 random letters and digits.
pub(crate) fn nonce() -> String {
    Alphanumeric
        .sample_string(&mut rand::rng(), 32)
        .to_ascii_uppercase()
}

/// SHA256withRSA (PKCS#1 v1.5) over `timestamp\nnonce\nbody\n`: the
/// signature of an answer or a notification.
pub(crate) fn signature(
    key: &PKey<Private>,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> Result<Vec<u8>, ErrorStack> {
    let mut message = Vec::with_capacity(body.len() + 64);
    for part in [timestamp.as_bytes(), nonce.as_bytes(), body] {
        message.extend_from_slice(part);
        message.push(b'\n');
    }
    let mut signer = Signer::new(MessageDigest::sha256(), key)?;
    signer.update(&message)?;
    signer.sign_to_vec()
}
