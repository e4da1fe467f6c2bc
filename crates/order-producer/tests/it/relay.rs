use std::collections::HashSet;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use broker::{ConfirmedPublisher, Outgoing, TimeoutMessage};

use crate::{stderr, Env, KillOnDrop};

/// A minute longer than the delay queue's TTL (30 min): the relay routes by
/// the time left until the deadline, so orders made a few seconds before
/// the relay publishes them must still fit `queue.ordercreate`.
const WINDOW: Duration = Duration::from_mins(31);

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn unpublished(env: &Env) -> i64 {
    domain::unpublished_count(&mut env.db.conn()).unwrap()
}

fn spawn_relay(env: &Env, extra: &[&str]) -> KillOnDrop {
    let mut args = vec!["relay"];
    args.extend_from_slice(extra);
    KillOnDrop(
        env.command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

#[test]
fn relay_once_puts_one_confirmed_message_per_order_into_the_delay_queue() {
    let env = crate::env();
    let orders = env.orders(25, WINDOW);
    env.ok(&["relay", "--once", "--relay-batch-size", "10"]);
    assert_eq!(unpublished(&env), 0);
    assert_eq!(sorted(env.drain_ids("queue.ordercreate")), sorted(orders));
    // Nothing left to do: a second run publishes nothing more.
    env.ok(&["relay", "--once"]);
    assert_eq!(env.depth("queue.ordercreate"), 0);
}

#[test]
fn the_setup_script_then_create_order_and_relay_once_give_one_message_per_order() {
    let env = crate::env();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/setup-topology.sh"
    );
    let out = std::process::Command::new("bash")
        .arg(script)
        .env("ORDER_PRODUCER", env!("CARGO_BIN_EXE_order-producer"))
        .env("AMQP_URL", env.vhost.url().expose_secret())
        .env("DELAY_TTL_MS", "600000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setup-topology.sh failed: {}",
        stderr(&out)
    );
    env.ok(&[
        "stock",
        "set",
        "--sku",
        "TEA",
        "--quantity",
        "10",
        "--price-fen",
        "100",
    ]);
    let envs = [("DELAY_TTL_MS", "600000")];
    let mut created = Vec::new();
    for _ in 0..3 {
        let out = env
            .command(&["create-order", "--item", "TEA:1"])
            .envs(envs)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        created.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    }
    let out = env
        .command(&["relay", "--once"])
        .envs(envs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sorted(env.drain_ids("queue.ordercreate")), sorted(created));
}

#[test]
fn orders_go_to_the_delay_queue_of_their_window() {
    let env = crate::env();
    let short = env.orders(3, Duration::from_mins(1));
    let long = env.orders(2, WINDOW);
    env.ok(&["relay", "--once", "--delay-windows", "1m,30m"]);
    assert_eq!(sorted(env.drain_ids("queue.ordercreate.1m")), sorted(short));
    assert_eq!(sorted(env.drain_ids("queue.ordercreate.30m")), sorted(long));
}

#[test]
fn a_crash_between_publish_and_mark_loses_nothing() {
    let env = crate::env();
    let orders = env.orders(10, WINDOW);
    env.ok(&["declare"]);
    // A relay that publishes (and gets confirms) but dies before marking.
    let mut conn = broker::connect(env.vhost.url()).unwrap();
    let mut publisher =
        ConfirmedPublisher::open(&mut conn, env.vhost.url(), Duration::from_secs(5)).unwrap();
    let result = domain::relay_batch(&mut env.db.conn(), 4, |batch| {
        let messages: Vec<TimeoutMessage> = batch
            .iter()
            .map(|m| TimeoutMessage {
                order_no: m.order_no.clone(),
                created_at: m.created_at,
                deadline: m.deadline,
            })
            .collect();
        let outgoing: Vec<Outgoing<'_>> = messages
            .iter()
            .map(|message| Outgoing {
                exchange: "",
                queue: "queue.ordercreate",
                message,
            })
            .collect();
        publisher.publish_all(&outgoing).unwrap();
        Err("killed before marking")
    })
    .unwrap();
    assert!(result.is_err());
    assert_eq!(unpublished(&env), 10, "nothing was marked");
    assert_eq!(env.depth("queue.ordercreate"), 4);

    env.ok(&["relay", "--once"]);
    assert_eq!(unpublished(&env), 0);
    let ids = env.drain_ids("queue.ordercreate");
    assert_eq!(ids.len(), 14, "the 4 are published twice, which is allowed");
    let unique: HashSet<String> = ids.into_iter().collect();
    assert_eq!(unique, orders.into_iter().collect());
}

#[test]
fn a_relay_killed_mid_stream_loses_nothing() {
    let env = crate::env();
    let orders = env.orders(3000, WINDOW);
    env.ok(&["declare"]);
    let mut relay = spawn_relay(&env, &["--relay-batch-size", "50"]);
    let started = Instant::now();
    while env.depth("queue.ordercreate") < 100 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "relay published nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    relay.kill().unwrap(); // SIGKILL: no chance to finish the batch
    let _ = relay.wait();
    let left = unpublished(&env);
    env.ok(&["relay", "--once"]);
    assert_eq!(unpublished(&env), 0);
    let ids = env.drain_ids("queue.ordercreate");
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        unique,
        orders.iter().cloned().collect(),
        "every order has its message"
    );
    assert!(ids.len() >= 3000, "at least one message per order");
    eprintln!(
        "killed with {left} rows left; {} duplicates",
        ids.len() - 3000
    );
}

#[test]
fn two_relays_at_once_publish_each_row_once() {
    let env = crate::env();
    let orders = env.orders(2000, WINDOW);
    env.ok(&["declare"]);
    let quiet =
        |args: &[&str]| KillOnDrop(env.command(args).stderr(Stdio::null()).spawn().unwrap());
    let mut a = quiet(&["relay", "--once", "--relay-batch-size", "100"]);
    let mut b = quiet(&["relay", "--once", "--relay-batch-size", "100"]);
    assert!(wait_with_timeout(&mut a, Duration::from_mins(1)).success());
    assert!(wait_with_timeout(&mut b, Duration::from_mins(1)).success());
    assert_eq!(unpublished(&env), 0);
    let ids = env.drain_ids("queue.ordercreate");
    assert_eq!(ids.len(), 2000, "no duplicates in normal operation");
    assert_eq!(sorted(ids), sorted(orders));
}

#[test]
fn sigterm_stops_a_running_relay_cleanly_with_exit_0() {
    let env = crate::env();
    let mut relay = spawn_relay(&env, &[]);
    let orders = env.orders(5, WINDOW);
    let started = Instant::now();
    while unpublished(&env) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "relay published nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&relay, "-TERM");
    let status = wait_with_timeout(&mut relay, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(relay.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("relay stopped: 5 published"), "{err}");
    assert_eq!(sorted(env.drain_ids("queue.ordercreate")), sorted(orders));
}

#[test]
fn the_relay_survives_a_lost_connection() {
    let env = crate::env();
    let mut relay = spawn_relay(&env, &["--relay-poll-interval", "50ms"]);
    let first = env.orders(5, WINDOW);
    let started = Instant::now();
    while unpublished(&env) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "relay published nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    env.vhost.close_all_connections();
    let second = env.orders(5, WINDOW);
    while unpublished(&env) > 0 {
        assert!(
            started.elapsed() < Duration::from_mins(1),
            "relay did not reconnect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&relay, "-TERM");
    assert!(wait_with_timeout(&mut relay, Duration::from_secs(5)).success());
    let ids: HashSet<String> = env.drain_ids("queue.ordercreate").into_iter().collect();
    assert!(first.iter().chain(&second).all(|o| ids.contains(o)));
}

#[test]
fn publish_re_emits_pending_orders_and_refuses_others() {
    let env = crate::env();
    let orders = env.orders(2, WINDOW);
    let paid = domain::OrderNo::parse(&orders[1]).unwrap();
    let _ = domain::mark_paid(
        &mut env.db.conn(),
        &paid,
        &domain::PaymentRecord {
            transaction_id: domain::TransactionId::parse("tx-1").unwrap(),
            amount: domain::Fen::new(0).unwrap(),
            success_time: chrono::Utc::now(),
        },
    )
    .unwrap();
    let ok = env.ok(&["publish", &orders[0]]);
    assert!(
        ok.contains(&format!("{}: published to queue.ordercreate", orders[0])),
        "{ok}"
    );
    let refused = env.run(&["publish", &orders[1], "nosuchorder"]);
    assert_eq!(refused.status.code(), Some(1));
    let out = String::from_utf8_lossy(&refused.stdout);
    assert!(
        out.contains(&format!(
            "{}: order is paid, not pending; not published",
            orders[1]
        )),
        "{out}"
    );
    assert!(
        out.contains("nosuchorder: no such order; not published"),
        "{out}"
    );
    assert!(
        stderr(&refused).contains("2 of 2 order(s) not published"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(env.drain_ids("queue.ordercreate"), [orders[0].clone()]);
    let bad = env.run(&["publish", "bad/no"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn status_reports_queues_orders_backlog_refunds_and_stock() {
    let env = crate::env();
    let missing = env.run(&["status"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stdout).contains("MISSING"));
    let orders = env.orders(3, WINDOW);
    let _ = domain::close_unpaid(
        &mut env.db.conn(),
        &domain::OrderNo::parse(&orders[0]).unwrap(),
        "t",
        None,
    )
    .unwrap();
    env.ok(&["relay", "--once"]);
    let out = env.ok(&["status"]);
    assert!(
        out.lines()
            .any(|l| l.contains("queue.ordercreate") && l.contains(" 3 ready")),
        "{out}"
    );
    assert!(
        out.contains("orders: pending_payment 2, paid 0, closed 1"),
        "{out}"
    );
    assert!(out.contains("outbox backlog: 0 unpublished"), "{out}");
    assert!(
        out.contains("paid after close (each refunded automatically): 0"),
        "{out}"
    );
    assert!(out.contains("refunds: none"), "{out}");
    assert!(out.contains("refunds that need a human: 0"), "{out}");
    assert!(out.contains("needs a human"), "{out}");
    // An answer that does not match an order: counted and listed with why.
    let odd = domain::OrderNo::parse(&orders[1]).unwrap();
    let _ = domain::record_anomaly(
        &mut env.db.conn(),
        &odd,
        domain::Anomaly::AmountMismatch,
        "WeChat Pay reports 1 fen, the order's total is 0 fen",
    )
    .unwrap();
    let out = env.ok(&["status"]);
    assert!(
        out.contains("needs a human (WeChat Pay's answer does not match the order): 1"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains(odd.as_str())
            && l.contains("amount_mismatch")
            && l.contains("reports 1 fen")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("TEA") && l.ends_with("ok")),
        "{out}"
    );
}

#[test]
fn parked_lists_and_replays_what_the_worker_gave_up_on() {
    use broker::{AmqpProperties, AmqpValue, FieldTable};
    let env = crate::env();
    env.ok(&["declare"]);
    let orders = env.orders(1, WINDOW);
    let now = chrono::Utc::now();
    let body = format!(
        r#"{{"order_no":"{}","created_at":"{}","deadline":"{}"}}"#,
        orders[0],
        now.to_rfc3339(),
        now.to_rfc3339()
    );
    let mut headers = FieldTable::new();
    headers.insert("x-ot-attempt".into(), AmqpValue::LongLongInt(8));
    headers.insert(
        "x-ot-reason".into(),
        AmqpValue::LongString("gave up after 8 attempts; last: 503".into()),
    );
    headers.insert(
        "x-ot-parked-at".into(),
        AmqpValue::LongString(now.to_rfc3339()),
    );
    headers.insert("x-custom".into(), AmqpValue::LongString("kept".into()));
    let props = AmqpProperties::default().with_headers(headers.clone());
    env.vhost
        .publish_raw("queue.ordertimeout.parked", body.as_bytes(), props);
    let mut poison_headers = FieldTable::new();
    poison_headers.insert(
        "x-ot-reason".into(),
        AmqpValue::LongString("poison message: not json".into()),
    );
    env.vhost.publish_raw(
        "queue.ordertimeout.parked",
        b"garbage",
        AmqpProperties::default().with_headers(poison_headers),
    );

    let listing = env.ok(&["parked"]);
    assert!(listing.contains("2 message(s) parked"), "{listing}");
    assert!(
        listing.contains(&format!("{}  attempts 8", orders[0])),
        "{listing}"
    );
    assert!(
        listing.contains("gave up after 8 attempts; last: 503"),
        "{listing}"
    );
    assert!(listing.contains("(poison, 7 bytes)"), "{listing}");
    assert_eq!(
        env.depth("queue.ordertimeout.parked"),
        2,
        "listing takes nothing away"
    );

    let replay = env.ok(&["parked", "--replay"]);
    assert!(
        replay.contains(&format!("{}  replayed to queue.ordertimeout", orders[0])),
        "{replay}"
    );
    assert_eq!(env.depth("queue.ordertimeout.parked"), 1, "poison stays");
    let got = env.vhost.drain("queue.ordertimeout");
    assert_eq!(got.len(), 1, "one replayed message");
    assert_eq!(got[0].0, body.as_bytes());
    let h = got[0].1.headers().clone().unwrap();
    assert!(
        !h.contains_key("x-ot-attempt") && !h.contains_key("x-ot-reason"),
        "{h:?}"
    );
    assert_eq!(
        h.get("x-custom"),
        Some(&AmqpValue::LongString("kept".into()))
    );
}

#[test]
fn a_relay_whose_delay_queue_is_deleted_declares_it_again_and_loses_nothing() {
    let env = crate::env();
    let mut relay = spawn_relay(&env, &["--relay-poll-interval", "50ms"]);
    let first = env.orders(3, WINDOW);
    let started = Instant::now();
    while unpublished(&env) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing published"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // An operator deletes the delay queue under the running relay: the next
    // messages come back unroutable, and the relay must declare again.
    let _ = broker::testing::rabbitmqctl(&[
        "delete_queue",
        "-p",
        env.vhost.name(),
        "queue.ordercreate",
    ]);
    let second = env.orders(3, WINDOW);
    while unpublished(&env) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the relay did not declare the queue again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&relay, "-TERM");
    let status = wait_with_timeout(&mut relay, Duration::from_secs(5));
    let err = {
        use std::io::Read;
        let mut s = String::new();
        let _ = relay.0.stderr.take().unwrap().read_to_string(&mut s);
        s
    };
    assert!(status.success(), "{err}");
    assert!(err.contains("declare the topology again"), "{err}");
    let ids: HashSet<String> = env.drain_ids("queue.ordercreate").into_iter().collect();
    assert!(second.iter().all(|o| ids.contains(o)), "{ids:?}");
    // The first ones were in the deleted queue: gone with it (an operator's
    // act), which is what the sweep is for. None of the second is lost.
    assert!(first.iter().all(|o| !ids.contains(o)));
}
