//! A RabbitMQ restart while the relay runs loses nothing.
//!
//! A test binary of its own: it stops and starts the broker application,
//! which would break tests running beside it, and cargo runs test binaries
//! one at a time.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use broker::testing::rabbitmqctl;
use order_producer::testing::{Env, KillOnDrop};

/// A minute longer than the delay queue's TTL (30 min): the relay routes by
/// the time left until the deadline, so orders made a few seconds before
/// the relay publishes them must still fit `queue.ordercreate`.
const WINDOW: Duration = Duration::from_mins(31);

/// Starts the broker application again even if the test fails halfway.
struct RestartGuard;

impl Drop for RestartGuard {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .output();
    }
}

#[test]
fn a_broker_restart_during_relaying_loses_nothing() {
    let env = Env::new(env!("CARGO_BIN_EXE_order-producer"));
    env.ok(&["declare"]);
    let mut relay = KillOnDrop(
        env.command(&[
            "relay",
            "--relay-batch-size",
            "50",
            "--relay-poll-interval",
            "50ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let mut orders = env.orders(500, WINDOW);
    std::thread::sleep(Duration::from_millis(200));

    let guard = RestartGuard;
    let _ = rabbitmqctl(&["stop_app"]);
    // Orders keep coming while the broker is down.
    orders.extend(env.orders(500, WINDOW));
    std::thread::sleep(Duration::from_secs(1));
    let _ = rabbitmqctl(&["start_app"]);
    let _ = rabbitmqctl(&["await_startup", "--timeout", "60"]);
    drop(guard);
    orders.extend(env.orders(500, WINDOW));

    let started = Instant::now();
    while domain::unpublished_count(&mut env.db.conn()).unwrap() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the relay did not catch up after the restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status();
    assert!(relay.wait().unwrap().success());

    let ids: HashSet<String> = env.drain_ids("queue.ordercreate").into_iter().collect();
    let missing: Vec<&String> = orders.iter().filter(|o| !ids.contains(*o)).collect();
    assert!(
        missing.is_empty(),
        "{} orders lost their message: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}
