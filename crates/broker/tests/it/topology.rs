use std::time::Duration;

use broker::testing::TestVhost;
use broker::topology::{declared_arguments, DEFAULT_TTL};
use broker::{connect, BrokerError, QueueType, Topology};

/// `rabbitmqctl list_queues name arguments`, as queue -> {argument -> value}
/// (rabbitmqctl prints arguments as `[name, type, value]` triples).
fn queue_args(vhost: &TestVhost) -> serde_json::Map<String, serde_json::Value> {
    vhost
        .list_queues()
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let args: serde_json::Map<String, serde_json::Value> = q["arguments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|triple| (triple[0].as_str().unwrap().to_owned(), triple[2].clone()))
                .collect();
            (
                q["name"].as_str().unwrap().to_owned(),
                serde_json::Value::Object(args),
            )
        })
        .collect()
}

#[test]
fn declare_creates_exactly_the_specified_queues_and_arguments() {
    let vhost = TestVhost::new();
    let mut conn = connect(vhost.url()).unwrap();
    let topo = Topology::single(DEFAULT_TTL, QueueType::Classic).unwrap();
    let declared = topo.declare(&mut conn, vhost.url()).unwrap();
    assert_eq!(
        declared[0], "exchange.ordertimeout",
        "the exchange comes first"
    );

    let on_broker = queue_args(&vhost);
    let wanted = declared_arguments(&topo);
    assert_eq!(on_broker.len(), wanted.len(), "{on_broker:?}");
    for (queue, args) in &wanted {
        let there = on_broker[queue].as_object().unwrap();
        assert_eq!(there.len(), args.len(), "{queue}: {there:?}");
        for (k, v) in args {
            let got = &there[k];
            let got = got
                .as_str()
                .map_or_else(|| got.to_string(), ToOwned::to_owned);
            assert_eq!(&got, v, "{queue} {k}");
        }
    }
    let delay = on_broker["queue.ordercreate"].as_object().unwrap();
    assert_eq!(delay["x-message-ttl"], 1_800_000);
    assert_eq!(delay["x-dead-letter-exchange"], "exchange.ordertimeout");
    assert!(on_broker.contains_key("queue.ordertimeout.parked"));
    assert!(on_broker.contains_key("queue.ordertimeout.retry.5s"));
    topo.check(&mut conn, vhost.url()).unwrap();
}

#[test]
fn declaring_twice_changes_nothing() {
    let vhost = TestVhost::new();
    let mut conn = connect(vhost.url()).unwrap();
    let topo = Topology::single(DEFAULT_TTL, QueueType::Classic).unwrap();
    let first = topo.declare(&mut conn, vhost.url()).unwrap();
    let before = vhost.list_queues();
    let second = topo.declare(&mut conn, vhost.url()).unwrap();
    assert_eq!(first, second);
    assert_eq!(before, vhost.list_queues());
}

#[test]
fn a_changed_ttl_is_a_clear_mismatch_not_a_crash() {
    let vhost = TestVhost::new();
    let mut conn = connect(vhost.url()).unwrap();
    Topology::single(DEFAULT_TTL, QueueType::Classic)
        .unwrap()
        .declare(&mut conn, vhost.url())
        .unwrap();
    let err = Topology::single(Duration::from_mins(1), QueueType::Classic)
        .unwrap()
        .declare(&mut conn, vhost.url())
        .unwrap_err();
    match &err {
        BrokerError::TopologyMismatch(m) => {
            let broker::Mismatch {
                queue,
                argument,
                there,
                wanted,
                ..
            } = &**m;
            assert_eq!(queue, "queue.ordercreate");
            assert_eq!(argument, "x-message-ttl");
            assert_eq!(there, "1800000");
            assert_eq!(wanted, "60000");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("rabbitmqctl delete_queue queue.ordercreate"),
        "{text}"
    );
    // The connection survives the closed channel: declaring the original again works.
    Topology::single(DEFAULT_TTL, QueueType::Classic)
        .unwrap()
        .declare(&mut conn, vhost.url())
        .unwrap();
}

#[test]
fn classic_to_quorum_is_a_clear_mismatch() {
    let vhost = TestVhost::new();
    let mut conn = connect(vhost.url()).unwrap();
    Topology::single(DEFAULT_TTL, QueueType::Classic)
        .unwrap()
        .declare(&mut conn, vhost.url())
        .unwrap();
    let err = Topology::single(DEFAULT_TTL, QueueType::Quorum)
        .unwrap()
        .declare(&mut conn, vhost.url())
        .unwrap_err();
    assert!(
        matches!(&err, BrokerError::TopologyMismatch(m)
            if m.queue == "queue.ordertimeout" && m.argument == "x-queue-type"),
        "{err:?}"
    );
    assert!(err.to_string().contains("--queue-type quorum"), "{err}");
}

#[test]
fn quorum_mode_declares_at_least_once_dead_lettering() {
    let vhost = TestVhost::new();
    let mut conn = connect(vhost.url()).unwrap();
    let topo = Topology::windows(
        &[Duration::from_mins(15), Duration::from_mins(30)],
        QueueType::Quorum,
    )
    .unwrap();
    topo.declare(&mut conn, vhost.url()).unwrap();
    topo.declare(&mut conn, vhost.url()).unwrap();
    let args = queue_args(&vhost);
    for q in ["queue.ordercreate.15m", "queue.ordercreate.30m"] {
        let a = args[q].as_object().unwrap();
        assert_eq!(a["x-queue-type"], "quorum", "{q}");
        assert_eq!(a["x-dead-letter-strategy"], "at-least-once", "{q}");
        assert_eq!(a["x-overflow"], "reject-publish", "{q}");
        assert_eq!(a["x-dead-letter-exchange"], "exchange.ordertimeout", "{q}");
    }
    assert_eq!(args["queue.ordercreate.15m"]["x-message-ttl"], 900_000);
    assert_eq!(args["queue.ordertimeout"]["x-queue-type"], "quorum");
    assert!(
        !args.contains_key("queue.ordercreate"),
        "windows replace the single queue"
    );
}

#[test]
fn check_reports_a_missing_topology() {
    let vhost = TestVhost::new();
    let mut conn = connect(vhost.url()).unwrap();
    let topo = Topology::single(DEFAULT_TTL, QueueType::Classic).unwrap();
    let err = topo.check(&mut conn, vhost.url()).unwrap_err();
    assert!(
        matches!(&err, BrokerError::TopologyMissing { what } if what == "exchange exchange.ordertimeout"),
        "{err:?}"
    );
    assert!(err.to_string().contains("order-producer declare"));
    let depths = topo.depths(&mut conn, vhost.url()).unwrap();
    assert!(depths.iter().all(|d| d.state.is_none()));
}

#[test]
fn check_names_a_retry_ladder_that_differs_from_the_declared_one() {
    let vhost = TestVhost::new();
    let mut conn = connect(vhost.url()).unwrap();
    // Declared with the default ladder (5s, 30s, 2m, 10m) ...
    let declared = Topology::single(DEFAULT_TTL, QueueType::Classic).unwrap();
    declared.declare(&mut conn, vhost.url()).unwrap();
    // ... checked with RETRY_DELAYS=5s,45s.
    let wanted = declared
        .clone()
        .with_retry_delays(&[Duration::from_secs(5), Duration::from_secs(45)])
        .unwrap();
    let err = wanted.check(&mut conn, vhost.url()).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, BrokerError::RetryDelaysDiffer { missing, .. } if missing == "queue.ordertimeout.retry.45s"),
        "{err:?}"
    );
    assert!(
        text.contains("RETRY_DELAYS (5s,45s) differs from the declared topology"),
        "{text}"
    );
    assert!(
        text.contains(
            "the broker has: queue.ordertimeout.retry.5s (5s), \
             queue.ordertimeout.retry.30s (30s), queue.ordertimeout.retry.2m (2m), \
             queue.ordertimeout.retry.10m (10m)"
        ),
        "{text}"
    );
    assert!(!text.contains("declare the topology first"), "{text}");
    // Nothing was created by the check.
    assert!(!queue_args(&vhost).contains_key("queue.ordertimeout.retry.45s"));
    // A topology missing as a whole is still reported as missing.
    let fresh = TestVhost::new();
    let mut conn = connect(fresh.url()).unwrap();
    assert!(matches!(
        wanted.check(&mut conn, fresh.url()).unwrap_err(),
        BrokerError::TopologyMissing { .. }
    ));
}
