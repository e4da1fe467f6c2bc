//! Provider trouble: rate limits, server errors, slowness, unreachable hosts.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use payment_client::{Client, Error, QueryOutcome};
use wechatpay_sim::{Endpoint, Faults, SimConfig};

use crate::support::{config_for, env, start_sim};

fn status_fault(status: u16) -> Faults {
    Faults {
        status: Some(status),
        ..Faults::default()
    }
}

#[test]
fn rate_limit_is_transient_with_the_providers_back_off_hint() {
    let e = env();
    e.admin
        .set_global_faults(&Faults {
            retry_after_secs: Some(7),
            ..status_fault(429)
        })
        .unwrap();
    let err = e.client.query_by_out_trade_no("RATE000001").unwrap_err();
    assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
    assert!(err.is_transient());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(err.provider_code(), Some("FREQUENCY_LIMITED"));

    // Without Retry-After there is still a hint.
    e.admin.set_global_faults(&status_fault(429)).unwrap();
    let err = e.client.close("RATE000001").unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
}

#[test]
fn server_errors_are_transient_and_keep_code_and_message() {
    let e = env();
    for (status, code) in [(500, "SYSTEM_ERROR"), (503, "SERVICE_UNAVAILABLE")] {
        e.admin.set_global_faults(&status_fault(status)).unwrap();
        let err = e.client.query_by_out_trade_no("SERVER0001").unwrap_err();
        assert!(
            matches!(&err, Error::Server { status: s, .. } if *s == status),
            "{err:?}"
        );
        assert!(err.is_transient());
        assert_eq!(err.provider_code(), Some(code));
        assert!(err.provider_message().is_some_and(|m| !m.is_empty()));
        assert!(err.to_string().contains(code), "{err}");
    }
}

#[test]
fn other_client_errors_are_permanent() {
    let e = env();
    for (status, code) in [(403, "NO_AUTH"), (400, "PARAM_ERROR")] {
        e.admin.set_global_faults(&status_fault(status)).unwrap();
        let err = e.client.close("REJECT0001").unwrap_err();
        assert!(
            matches!(&err, Error::Rejected { status: s, .. } if *s == status),
            "{err:?}"
        );
        assert!(err.is_permanent());
        assert_eq!(err.provider_code(), Some(code));
    }
}

#[test]
fn faults_can_target_one_order_one_endpoint_and_run_out() {
    let e = env();
    e.admin.set_state("TARGET0001", "NOTPAY").unwrap();
    e.admin.set_state("TARGET0002", "NOTPAY").unwrap();
    e.admin
        .set_order_faults(
            "TARGET0001",
            &Faults {
                only: Some(Endpoint::Close),
                times: Some(1),
                ..status_fault(500)
            },
        )
        .unwrap();
    // Other orders and the other endpoint are untouched.
    assert!(e.client.close("TARGET0002").is_ok());
    assert!(matches!(
        e.client.query_by_out_trade_no("TARGET0001"),
        Ok(QueryOutcome::Found(_))
    ));
    // One failure, then the fault is used up.
    assert!(matches!(
        e.client.close("TARGET0001"),
        Err(Error::Server { status: 500, .. })
    ));
    assert!(e.client.close("TARGET0001").is_ok());
}

#[test]
fn a_provider_slower_than_the_timeout_is_a_transient_timeout() {
    let sim = start_sim(SimConfig::default());
    let client = Client::new(
        config_for(&sim).with_timeouts(Duration::from_millis(300), Duration::from_millis(300)),
    )
    .unwrap();
    sim.admin()
        .set_global_faults(&Faults {
            latency_ms: 1_000,
            ..Faults::default()
        })
        .unwrap();
    let started = Instant::now();
    let err = client.query_by_out_trade_no("SLOW000001").unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(
        took < Duration::from_millis(900),
        "gave up only after {took:?}"
    );
}

#[test]
fn latency_within_the_timeout_is_fine() {
    let e = env();
    e.admin.set_state("SLOW000002", "CLOSED").unwrap();
    e.admin
        .set_global_faults(&Faults {
            latency_ms: 100,
            ..Faults::default()
        })
        .unwrap();
    assert!(matches!(
        e.client.query_by_out_trade_no("SLOW000002"),
        Ok(QueryOutcome::Found(_))
    ));
}

/// A local port nobody listens on.
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

#[test]
fn unreachable_provider_is_a_transient_connect_error() {
    let sim = start_sim(SimConfig::default());
    let mut config = config_for(&sim);
    config.base_url = dead_url();
    let client = Client::new(config).unwrap();
    let err = client.query_by_out_trade_no("DEAD000001").unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[test]
fn backup_domain_is_tried_after_a_connection_failure() {
    let backup = start_sim(SimConfig::default());
    backup.admin().set_state("BACKUP0001", "NOTPAY").unwrap();
    let mut config = config_for(&backup);
    config.base_url = dead_url();
    config.backup_base_url = Some(backup.base_url());
    let client = Client::new(config).unwrap();
    assert!(matches!(
        client.query_by_out_trade_no("BACKUP0001"),
        Ok(QueryOutcome::Found(_))
    ));
    assert_eq!(backup.admin().stats().unwrap().queries, 1);
}

#[test]
fn backup_domain_is_not_tried_after_an_http_error_or_a_timeout() {
    let main = start_sim(SimConfig::default());
    let backup = start_sim(SimConfig::default());
    let mut config =
        config_for(&main).with_timeouts(Duration::from_millis(300), Duration::from_millis(300));
    config.backup_base_url = Some(backup.base_url());
    let client = Client::new(config).unwrap();

    main.admin().set_global_faults(&status_fault(500)).unwrap();
    assert!(matches!(
        client.query_by_out_trade_no("NOBACKUP01"),
        Err(Error::Server { .. })
    ));
    main.admin()
        .set_global_faults(&Faults {
            latency_ms: 600,
            ..Faults::default()
        })
        .unwrap();
    assert!(matches!(
        client.close("NOBACKUP01"),
        Err(Error::Timeout { .. })
    ));
    assert_eq!(backup.admin().stats().unwrap().api_requests, 0);
}
