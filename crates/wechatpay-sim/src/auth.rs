//! Checks on incoming API requests before they are answered: the `Accept`
//! and `User-Agent` headers, the merchant's `Authorization` signature and the
//! `Wechatpay-Serial` the client expects answers to be signed with.
//!
//! It exists because the real API refuses such requests (400
//! `INVALID_REQUEST`, 401 `SIGN_ERROR`) and our client must be tested against
//! those refusals. The verification is written independently of the
//! `payment-client` crate so that a shared bug cannot pass every test.

use std::collections::HashMap;

use openssl::hash::MessageDigest;
use openssl::sign::Verifier;

use crate::http::Request as Incoming;
use crate::server::{unix_now, Reply, Shared};

const MAX_SKEW_SECS: u64 = 300;

/// Headers, signature and `Wechatpay-Serial`; the signer's mchid or the
/// refusal.
pub(crate) fn check_request(shared: &Shared, req: &Incoming) -> Result<String, Reply> {
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
