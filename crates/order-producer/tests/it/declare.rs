use crate::stderr;

#[test]
fn declare_prints_what_it_declared_and_is_idempotent() {
    let env = crate::env();
    let first = env.ok(&["declare"]);
    assert!(first.contains("exchange.ordertimeout"), "{first}");
    for q in [
        "queue.ordertimeout",
        "queue.ordercreate",
        "queue.ordertimeout.parked",
        "queue.ordertimeout.retry.5s",
    ] {
        assert!(
            first.lines().any(|l| l.trim() == q),
            "{q} missing in {first}"
        );
    }
    assert_eq!(env.ok(&["declare"]), first);
}

#[test]
fn a_changed_ttl_exits_2_naming_queue_argument_and_both_values() {
    let env = crate::env();
    env.ok(&["declare"]);
    let out = env.run(&["declare", "--delay-ttl-ms", "60000"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "queue queue.ordercreate exists with x-message-ttl = 1800000, but 60000 is wanted"
        ),
        "{err}"
    );
    assert!(
        err.contains("rabbitmqctl delete_queue queue.ordercreate"),
        "{err}"
    );
    assert!(!err.contains("guest:guest"), "{err}");
}

#[test]
fn several_windows_get_a_delay_queue_each() {
    let env = crate::env();
    let out = env.ok(&[
        "declare",
        "--delay-windows",
        "15m",
        "--delay-windows",
        "30m",
    ]);
    assert!(
        out.contains("queue.ordercreate.15m") && out.contains("queue.ordercreate.30m"),
        "{out}"
    );
    let queues = env.vhost.list_queues().to_string();
    assert!(queues.contains("queue.ordercreate.15m"), "{queues}");
    assert!(!queues.contains("\"queue.ordercreate\""), "{queues}");
}

#[test]
fn an_unreachable_broker_exits_1_without_the_password() {
    let env = crate::env();
    let out = env
        .command(&["declare"])
        .env("AMQP_URL", "amqp://guest:s3cr3tpw@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("127.0.0.1:1") && err.contains("RabbitMQ"),
        "{err}"
    );
    assert!(!err.contains("s3cr3tpw"), "{err}");
}
