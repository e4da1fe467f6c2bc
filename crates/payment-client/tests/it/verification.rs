//! Nothing unverified is believed; our own signatures are accepted.

use payment_client::verify::VerifyError;
use payment_client::{Client, CloseAnswer, Config, Error, QueryOutcome, TradeState};
use wechatpay_sim::{Faults, SimConfig};

use crate::support::{
    config_for, env, keys, other_keys, scratch, start_sim, MCHID, MERCHANT_SERIAL,
};

fn unverified(err: &Error) -> &VerifyError {
    assert!(err.is_transient(), "{err:?}");
    match err {
        Error::Unverified { reason, .. } => reason,
        other => panic!("expected an unverified response, got {other:?}"),
    }
}

#[test]
fn tampered_signature_is_never_believed() {
    let e = env();
    e.admin.set_state("TAMPER0001", "SUCCESS").unwrap();
    e.admin.set_state("TAMPER0002", "NOTPAY").unwrap();
    e.admin
        .set_global_faults(&Faults {
            tamper_signature: true,
            ..Faults::default()
        })
        .unwrap();
    let err = e.client.query_by_out_trade_no("TAMPER0001").unwrap_err();
    assert_eq!(unverified(&err), &VerifyError::BadSignature);
    // A 204 is verified too.
    let err = e.client.close("TAMPER0002").unwrap_err();
    assert!(
        matches!(err, Error::Unverified { status: 204, .. }),
        "{err:?}"
    );
    // And so is an error body: a forged 404 must not read as "no such order".
    let err = e.client.query_by_out_trade_no("NEVERSEEN3").unwrap_err();
    assert!(
        matches!(err, Error::Unverified { status: 404, .. }),
        "{err:?}"
    );
}

#[test]
fn unknown_serial_is_not_believed() {
    let e = env();
    e.admin.set_state("SERIAL0001", "CLOSED").unwrap();
    e.admin
        .set_global_faults(&Faults {
            unknown_serial: true,
            ..Faults::default()
        })
        .unwrap();
    let err = e.client.query_by_out_trade_no("SERIAL0001").unwrap_err();
    assert!(
        matches!(unverified(&err), VerifyError::UnknownSerial(s) if s.starts_with("PUB_KEY_ID_")),
        "{err:?}"
    );
}

#[test]
fn stale_timestamp_is_not_believed() {
    let e = env();
    e.admin.set_state("STALE00001", "NOTPAY").unwrap();
    e.admin
        .set_global_faults(&Faults {
            stale_timestamp: true,
            ..Faults::default()
        })
        .unwrap();
    let err = e.client.query_by_out_trade_no("STALE00001").unwrap_err();
    assert!(
        matches!(unverified(&err), VerifyError::StaleTimestamp { skew_secs } if *skew_secs >= 600),
        "{err:?}"
    );
}

#[test]
fn unsigned_answer_is_not_believed_even_an_error() {
    let e = env();
    e.admin
        .set_global_faults(&Faults {
            unsigned: true,
            ..Faults::default()
        })
        .unwrap();
    let err = e.client.query_by_out_trade_no("UNSIGNED01").unwrap_err();
    assert!(
        matches!(unverified(&err), VerifyError::MissingHeader(_)),
        "{err:?}"
    );
    e.admin
        .set_global_faults(&Faults {
            unsigned: true,
            ..Faults {
                status: Some(400),
                ..Faults::default()
            }
        })
        .unwrap();
    let err = e.client.close("UNSIGNED01").unwrap_err();
    assert!(
        matches!(err, Error::Unverified { status: 400, .. }),
        "{err:?}"
    );
}

#[test]
fn answers_signed_by_another_key_are_not_believed() {
    let sim = start_sim(SimConfig::default());
    sim.admin().set_state("OTHERKEY01", "SUCCESS").unwrap();
    let mut config = config_for(&sim);
    config.wechatpay_public_key.as_mut().unwrap().file =
        other_keys().files.wechatpay_public_key_file.clone();
    let client = Client::new(config).unwrap();
    let err = client.query_by_out_trade_no("OTHERKEY01").unwrap_err();
    assert_eq!(unverified(&err), &VerifyError::BadSignature);
}

#[test]
fn wrong_merchant_key_gets_a_permanent_sign_error() {
    let sim = start_sim(SimConfig::default());
    let mut config = config_for(&sim);
    config.merchant_key_file = other_keys().files.merchant_key_file.clone();
    let client = Client::new(config).unwrap();
    let err = client.query_by_out_trade_no("SIGNERR001").unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { status: 401, code, .. } if code == "SIGN_ERROR"),
        "{err:?}"
    );
    assert!(err.is_permanent());
    assert_eq!(sim.admin().stats().unwrap().bad_signatures, 1);
}

#[test]
fn wrong_merchant_serial_gets_a_sign_error() {
    let sim = start_sim(SimConfig::default());
    let mut config = config_for(&sim);
    config.merchant_serial_no = "1DDE55AD98ED71D6EDD4A4A16996DE7B47773A8C".to_owned();
    let err = Client::new(config)
        .unwrap()
        .close("SIGNERR002")
        .unwrap_err();
    assert_eq!(err.provider_code(), Some("SIGN_ERROR"));
}

#[test]
fn pkcs1_merchant_key_signs_accepted_requests() {
    let sim = start_sim(SimConfig::default());
    sim.admin().set_state("PKCS1ORD01", "NOTPAY").unwrap();
    let path = scratch("pkcs1").join("merchant_rsa_key.pem");
    std::fs::write(&path, keys().sim.merchant_private_key_pkcs1_pem().unwrap()).unwrap();
    let mut config = config_for(&sim);
    config.merchant_key_file = path;
    let client = Client::new(config).unwrap();
    assert_eq!(client.close("PKCS1ORD01").unwrap(), CloseAnswer::Closed);
}

#[test]
fn platform_certificate_mode() {
    let serial = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
    let sim = start_sim(SimConfig {
        signing_serial: serial.to_owned(),
        ..SimConfig::default()
    });
    sim.admin().set_state("CERTMODE01", "REVOKED").unwrap();
    let cert = scratch("cert").join("wechatpay_platform.pem");
    std::fs::write(&cert, keys().sim.wechatpay_certificate_pem(serial).unwrap()).unwrap();
    let config = Config::new(MCHID, MERCHANT_SERIAL, &keys().files.merchant_key_file)
        .with_platform_certificate(serial, &cert)
        .with_base_url(sim.base_url());
    let client = Client::new(config).unwrap();
    match client.query_by_out_trade_no("CERTMODE01").unwrap() {
        QueryOutcome::Found(t) => assert_eq!(t.trade_state, TradeState::Revoked),
        other @ QueryOutcome::NotFound => panic!("{other:?}"),
    }
    // The same client does not trust the public key id it was not given.
    sim.admin()
        .set_global_faults(&Faults {
            unknown_serial: true,
            ..Faults::default()
        })
        .unwrap();
    assert!(matches!(
        client.query_by_out_trade_no("CERTMODE01"),
        Err(Error::Unverified { .. })
    ));
}

#[test]
fn an_answer_must_name_the_order_and_the_merchant_asked_about() {
    let e = env();
    e.admin.set_state("IDENT00001", "SUCCESS").unwrap();
    let cases = [
        Faults {
            answer_out_trade_no: Some("IDENT00002".into()),
            ..Faults::default()
        },
        Faults {
            omit_out_trade_no: true,
            ..Faults::default()
        },
        Faults {
            answer_mchid: Some("1900009999".into()),
            ..Faults::default()
        },
        Faults {
            omit_mchid: true,
            ..Faults::default()
        },
    ];
    for f in &cases {
        e.admin.set_order_faults("IDENT00001", f).unwrap();
        let err = e.client.query_by_out_trade_no("IDENT00001").unwrap_err();
        assert!(
            matches!(err, Error::UnexpectedResponse { status: 200, .. }),
            "{f:?}: {err:?}"
        );
        assert!(err.is_permanent());
    }
    e.admin.clear_order_faults("IDENT00001").unwrap();
    assert!(matches!(
        e.client.query_by_out_trade_no("IDENT00001").unwrap(),
        QueryOutcome::Found(_)
    ));
}

#[test]
fn a_replayed_answer_is_not_believed_twice() {
    let e = env();
    e.admin.set_state("REPLAY0001", "NOTPAY").unwrap();
    let first = e.client.query_by_out_trade_no("REPLAY0001").unwrap();
    e.admin
        .set_order_faults(
            "REPLAY0001",
            &Faults {
                replay_answer_of: Some("REPLAY0001".into()),
                times: Some(1),
                ..Faults::default()
            },
        )
        .unwrap();
    let err = e.client.query_by_out_trade_no("REPLAY0001").unwrap_err();
    assert_eq!(unverified(&err), &VerifyError::Replayed);
    // The next, fresh answer is fine again.
    assert_eq!(e.client.query_by_out_trade_no("REPLAY0001").unwrap(), first);
}
