//! Start-up: clear errors that name the file, never key material.

use std::time::Duration;

use payment_client::{Client, Config, ConfigError};
use wechatpay_sim::SimConfig;

use crate::support::{config_for, keys, scratch, start_sim, MCHID, MERCHANT_SERIAL, PUBLIC_KEY_ID};

fn base() -> Config {
    Config::new(MCHID, MERCHANT_SERIAL, &keys().files.merchant_key_file)
        .with_public_key(PUBLIC_KEY_ID, &keys().files.wechatpay_public_key_file)
}

#[test]
fn defaults_point_at_the_real_api_with_its_backup() {
    let c = base();
    assert_eq!(c.base_url, "https://api.mch.weixin.qq.com");
    assert_eq!(
        c.backup_base_url.as_deref(),
        Some("https://api2.mch.weixin.qq.com")
    );
    let c = c.with_base_url("http://127.0.0.1:1");
    assert_eq!(c.backup_base_url, None);
    assert!(Client::new(base()).is_ok());
}

#[test]
fn missing_merchant_key_file_is_named() {
    let mut c = base();
    c.merchant_key_file = scratch("missing").join("nope.pem");
    let err = Client::new(c).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::KeyFile { .. }));
    assert!(
        msg.contains("nope.pem") && msg.contains("merchant private key"),
        "{msg}"
    );
}

#[test]
fn bad_key_files_are_named_without_their_contents() {
    let dir = scratch("bad");
    let secret_looking = dir.join("garbage.pem");
    std::fs::write(
        &secret_looking,
        "-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let mut c = base();
    c.merchant_key_file = secret_looking.clone();
    let msg = Client::new(c).unwrap_err().to_string();
    assert!(msg.contains("garbage.pem"), "{msg}");
    assert!(!msg.contains("TOPSECRET"), "{msg}");

    // A private key where the WeChat Pay public key belongs.
    let mut c = base();
    c.wechatpay_public_key.as_mut().unwrap().file = keys().files.merchant_key_file.clone();
    let msg = Client::new(c).unwrap_err().to_string();
    assert!(
        msg.contains("WeChat Pay public key") && msg.contains("merchant_private_key.pem"),
        "{msg}"
    );
    assert!(!msg.contains("MII"), "{msg}");
}

#[test]
fn settings_are_checked_and_named() {
    type Change = Box<dyn Fn(&mut Config)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|c| c.mchid = String::new()), "WECHATPAY_MCHID"),
        (Box::new(|c| c.mchid = "19x".into()), "WECHATPAY_MCHID"),
        (
            Box::new(|c| c.merchant_serial_no = String::new()),
            "WECHATPAY_MERCHANT_SERIAL_NO",
        ),
        (
            Box::new(|c| c.base_url = "api.mch.weixin.qq.com".into()),
            "WECHATPAY_BASE_URL",
        ),
        (
            Box::new(|c| c.base_url = "https://example.com/v3".into()),
            "WECHATPAY_BASE_URL",
        ),
        (
            Box::new(|c| c.wechatpay_public_key.as_mut().unwrap().id = "12345".into()),
            "WECHATPAY_PUBLIC_KEY_ID",
        ),
        (
            Box::new(|c| c.wechatpay_public_key = None),
            "WECHATPAY_PUBLIC_KEY_ID",
        ),
        (Box::new(|c| c.timeout = Duration::ZERO), "timeout"),
    ];
    for (change, expected) in cases {
        let mut c = base();
        change(&mut c);
        let msg = Client::new(c).unwrap_err().to_string();
        assert!(msg.contains(expected), "{msg} should name {expected}");
    }
}

#[test]
fn platform_certificate_serial_must_match_the_file() {
    let cert = scratch("cert-mismatch").join("cert.pem");
    std::fs::write(
        &cert,
        keys().sim.wechatpay_certificate_pem("0A1B2C3D").unwrap(),
    )
    .unwrap();
    let c = Config::new(MCHID, MERCHANT_SERIAL, &keys().files.merchant_key_file)
        .with_platform_certificate("FFFF0000", &cert);
    let msg = Client::new(c).unwrap_err().to_string();
    assert!(
        msg.contains("0A1B2C3D") && msg.contains("FFFF0000") && msg.contains("cert.pem"),
        "{msg}"
    );
}

#[test]
fn debug_output_shows_no_key_material() {
    let sim = start_sim(SimConfig::default());
    let client = Client::new(config_for(&sim)).unwrap();
    let shown = format!("{client:?}");
    assert!(shown.contains("[redacted]"), "{shown}");
    assert!(shown.contains(PUBLIC_KEY_ID), "{shown}");
    assert!(
        !shown.contains("MII") && !shown.contains("BEGIN"),
        "{shown}"
    );
}

#[test]
fn client_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Client>();
}

#[test]
fn plain_http_only_to_this_machine_and_a_proxy_url_must_parse() {
    let sim = start_sim(SimConfig::default());
    for remote in ["http://api.mch.weixin.qq.com", "http://192.168.1.10:8099"] {
        let err = Client::new(config_for(&sim).with_base_url(remote)).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    setting: "WECHATPAY_BASE_URL",
                    ..
                }
            ),
            "{remote}: {err:?}"
        );
        assert!(err.to_string().contains("plain http"), "{err}");
    }
    for local in ["http://localhost:1", "http://127.0.0.9:1", "http://[::1]:1"] {
        Client::new(config_for(&sim).with_base_url(local)).unwrap();
    }
    let err = Client::new(
        config_for(&sim).with_proxy(payment_client::ProxyUrl::new("ht tp://bad proxy")),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                setting: "WECHATPAY_PROXY",
                ..
            }
        ),
        "{err:?}"
    );
}
