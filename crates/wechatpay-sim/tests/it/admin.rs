//! The admin API through the typed client.

use wechatpay_sim::{AdminError, Faults, Order};

use crate::support::start;

#[test]
fn orders_can_be_created_changed_paid_and_removed() {
    let sim = start();
    let admin = sim.admin();
    assert_eq!(admin.order("ADMIN00001").unwrap(), None);
    let o = admin
        .put_order(
            "ADMIN00001",
            &Order {
                amount_total: 1_234,
                ..Order::default()
            },
        )
        .unwrap();
    assert_eq!((o.trade_state.as_str(), o.amount_total), ("NOTPAY", 1_234));

    let paid = admin.pay("ADMIN00001").unwrap();
    assert_eq!(paid.trade_state, "SUCCESS");
    assert_eq!(paid.payer_total, Some(1_234));
    assert!(paid
        .transaction_id
        .as_deref()
        .is_some_and(|t| t.len() == 28 && t.starts_with("42000")));
    assert!(paid
        .success_time
        .as_deref()
        .is_some_and(|t| t.ends_with("+08:00")));
    assert_eq!(admin.order("ADMIN00001").unwrap(), Some(paid));

    // Paying twice, or paying a closed order, is refused.
    assert!(matches!(
        admin.pay("ADMIN00001"),
        Err(AdminError::Status { status: 409, .. })
    ));
    admin.set_state("ADMIN00002", "CLOSED").unwrap();
    assert!(matches!(
        admin.pay("ADMIN00002"),
        Err(AdminError::Status { status: 409, .. })
    ));
    assert!(matches!(
        admin.pay("NOSUCHORD1"),
        Err(AdminError::Status { status: 404, .. })
    ));

    admin.delete_order("ADMIN00002").unwrap();
    assert_eq!(admin.order("ADMIN00002").unwrap(), None);
}

#[test]
fn faults_need_an_existing_order_and_reset_forgets_everything() {
    let sim = start();
    let admin = sim.admin();
    let f = Faults {
        status: Some(500),
        ..Faults::default()
    };
    assert!(matches!(
        admin.set_order_faults("NOSUCHORD2", &f),
        Err(AdminError::Status { status: 404, .. })
    ));
    admin.set_state("ADMIN00003", "NOTPAY").unwrap();
    admin.set_order_faults("ADMIN00003", &f).unwrap();
    assert_eq!(
        admin.order("ADMIN00003").unwrap().unwrap().faults,
        Some(f.clone())
    );
    admin.set_global_faults(&f).unwrap();
    admin.reset().unwrap();
    assert_eq!(admin.order("ADMIN00003").unwrap(), None);
    assert_eq!(admin.stats().unwrap(), wechatpay_sim::Stats::default());
}

#[test]
fn bad_admin_json_is_a_400_and_unknown_paths_404() {
    let sim = start();
    let a = crate::support::raw(sim.addr(), "PUT", "/sim/faults", &[], "{not json");
    assert_eq!(a.status, 400);
    let a = crate::support::raw(sim.addr(), "GET", "/sim/nothing", &[], "");
    assert_eq!(a.status, 404);
}

#[test]
fn shutdown_frees_the_port_promptly() {
    // An address of its own: on 127.0.0.1 a simulator of a test running in
    // parallel may be given the freed port at once.
    let sim = wechatpay_sim::Simulator::start(
        "127.0.0.42:0",
        &crate::support::keys().sim,
        wechatpay_sim::SimConfig::default(),
    )
    .unwrap();
    let addr = sim.addr();
    sim.admin()
        .wait_ready(std::time::Duration::from_secs(2))
        .unwrap();
    let started = std::time::Instant::now();
    sim.shutdown();
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // Another test spawning a child process may hold a copy of the
    // listening socket for an instant (between fork and exec), so allow a
    // short while for the last copy to go.
    let closed = (0..20).any(|_| {
        let refused = std::net::TcpStream::connect(addr).is_err();
        if !refused {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        refused
    });
    assert!(closed, "still accepting a second after shutdown");
}
