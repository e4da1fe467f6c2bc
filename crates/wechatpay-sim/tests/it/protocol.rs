//! What the simulator demands of API requests and what it signs.

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Verifier;
use wechatpay_sim::{Faults, Order};

use crate::support::{authorization, keys, now, raw, start, Answer};

const QUERY: &str = "/v3/pay/transactions/out-trade-no/PROTO00001?mchid=1900000001";

fn signed_headers(auth: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Authorization", auth.to_owned()),
        ("Accept", "application/json".to_owned()),
        ("User-Agent", "sim-test/1".to_owned()),
    ]
}

fn send(
    addr: std::net::SocketAddr,
    method: &str,
    url: &str,
    headers: &[(&'static str, String)],
    body: &str,
) -> Answer {
    let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    raw(addr, method, url, &h, body)
}

/// Checks the answer's signature with the simulated WeChat Pay public key.
fn verifies(a: &Answer) -> bool {
    let message = format!(
        "{}\n{}\n{}\n",
        a.header("Wechatpay-Timestamp").unwrap(),
        a.header("Wechatpay-Nonce").unwrap(),
        a.body
    );
    let public =
        PKey::public_key_from_pem(&std::fs::read(&keys().files.wechatpay_public_key_file).unwrap())
            .unwrap();
    let sig = openssl::base64::decode_block(a.header("Wechatpay-Signature").unwrap()).unwrap();
    let mut verifier = Verifier::new(MessageDigest::sha256(), &public).unwrap();
    verifier.verify_oneshot(&sig, message.as_bytes()).unwrap()
}

#[test]
fn a_correctly_signed_query_gets_a_signed_answer() {
    let sim = start();
    sim.admin().set_state("PROTO00001", "NOTPAY").unwrap();
    let auth = authorization(&keys().merchant, "GET", QUERY, now(), "");
    let a = send(sim.addr(), "GET", QUERY, &signed_headers(&auth), "");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.body.contains(r#""trade_state":"NOTPAY""#), "{}", a.body);
    assert_eq!(
        a.header("Wechatpay-Serial"),
        Some(wechatpay_sim::DEFAULT_PUBLIC_KEY_ID)
    );
    assert!(verifies(&a));
    assert!(a.header("Request-ID").is_some());
}

#[test]
fn accept_and_user_agent_are_demanded() {
    let sim = start();
    let auth = authorization(&keys().merchant, "GET", QUERY, now(), "");
    for missing in ["Accept", "User-Agent"] {
        let headers: Vec<_> = signed_headers(&auth)
            .into_iter()
            .filter(|(n, _)| *n != missing)
            .collect();
        let a = send(sim.addr(), "GET", QUERY, &headers, "");
        assert_eq!(a.status, 400, "{a:?}");
        assert!(
            a.body.contains("INVALID_REQUEST") && a.body.contains(missing),
            "{}",
            a.body
        );
        assert!(verifies(&a), "error answers are signed too");
    }
    assert_eq!(sim.admin().stats().unwrap().invalid_requests, 2);
}

#[test]
fn bad_signatures_get_401_sign_error() {
    let sim = start();
    let other = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let cases = [
        ("wrong key", authorization(&other, "GET", QUERY, now(), "")),
        (
            "other url signed",
            authorization(&keys().merchant, "GET", "/v3/other", now(), ""),
        ),
        (
            "stale",
            authorization(&keys().merchant, "GET", QUERY, now() - 600, ""),
        ),
        ("wrong scheme", "Bearer abc".to_owned()),
    ];
    for (what, auth) in &cases {
        let a = send(sim.addr(), "GET", QUERY, &signed_headers(auth), "");
        assert_eq!(a.status, 401, "{what}: {a:?}");
        assert!(a.body.contains("SIGN_ERROR"), "{what}: {}", a.body);
        assert!(verifies(&a));
    }
    assert_eq!(sim.admin().stats().unwrap().bad_signatures, 4);
}

#[test]
fn close_demands_content_type_and_the_signed_mchid_in_the_body() {
    let sim = start();
    sim.admin().set_state("PROTO00002", "NOTPAY").unwrap();
    let url = "/v3/pay/transactions/out-trade-no/PROTO00002/close";
    let body = r#"{"mchid":"1900000001"}"#;
    let auth = authorization(&keys().merchant, "POST", url, now(), body);
    let a = send(sim.addr(), "POST", url, &signed_headers(&auth), body);
    assert_eq!(a.status, 400, "no Content-Type: {a:?}");

    let mut headers = signed_headers(&auth);
    headers.push(("Content-Type", "application/json".to_owned()));
    let a = send(sim.addr(), "POST", url, &headers, body);
    assert_eq!(a.status, 204, "{a:?}");
    assert!(a.body.is_empty() && verifies(&a));
    assert_eq!(
        sim.admin()
            .order("PROTO00002")
            .unwrap()
            .unwrap()
            .trade_state,
        "CLOSED"
    );

    let other = r#"{"mchid":"1900000002"}"#;
    let auth = authorization(&keys().merchant, "POST", url, now(), other);
    let mut headers = signed_headers(&auth);
    headers.push(("Content-Type", "application/json".to_owned()));
    let a = send(sim.addr(), "POST", url, &headers, other);
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.body.contains("PARAM_ERROR"));
}

#[test]
fn faults_spoil_the_signature_as_asked() {
    let sim = start();
    sim.admin()
        .put_order("PROTO00001", &Order::default())
        .unwrap();
    let go = |faults: Faults| {
        sim.admin().set_global_faults(&faults).unwrap();
        let auth = authorization(&keys().merchant, "GET", QUERY, now(), "");
        send(sim.addr(), "GET", QUERY, &signed_headers(&auth), "")
    };
    assert!(!verifies(&go(Faults {
        tamper_signature: true,
        ..Faults::default()
    })));
    let a = go(Faults {
        stale_timestamp: true,
        ..Faults::default()
    });
    assert!(verifies(&a), "stale but genuine");
    let ts: u64 = a.header("Wechatpay-Timestamp").unwrap().parse().unwrap();
    assert!(now() - ts >= 600);
    let a = go(Faults {
        unknown_serial: true,
        ..Faults::default()
    });
    assert!(
        verifies(&a) && a.header("Wechatpay-Serial") != Some(wechatpay_sim::DEFAULT_PUBLIC_KEY_ID)
    );
    assert!(go(Faults {
        unsigned: true,
        ..Faults::default()
    })
    .header("Wechatpay-Signature")
    .is_none());
    let a = go(Faults {
        status: Some(429),
        retry_after_secs: Some(3),
        ..Faults::default()
    });
    assert_eq!((a.status, a.header("Retry-After")), (429, Some("3")));
    assert!(a.body.contains("FREQUENCY_LIMITED") && verifies(&a));
}

#[test]
fn refused_requests_do_not_use_up_counted_faults() {
    let sim = start();
    sim.admin().set_state("PROTO00001", "NOTPAY").unwrap();
    sim.admin()
        .set_global_faults(&Faults {
            status: Some(500),
            times: Some(1),
            ..Faults::default()
        })
        .unwrap();
    let bad = authorization(&keys().merchant, "GET", "/v3/elsewhere", now(), "");
    assert_eq!(
        send(sim.addr(), "GET", QUERY, &signed_headers(&bad), "").status,
        401
    );
    let good = || authorization(&keys().merchant, "GET", QUERY, now(), "");
    assert_eq!(
        send(sim.addr(), "GET", QUERY, &signed_headers(&good()), "").status,
        500
    );
    assert_eq!(
        send(sim.addr(), "GET", QUERY, &signed_headers(&good()), "").status,
        200
    );
    let stats = sim.admin().stats().unwrap();
    assert_eq!(
        (stats.api_requests, stats.faults_injected, stats.queries),
        (3, 1, 1)
    );
}
