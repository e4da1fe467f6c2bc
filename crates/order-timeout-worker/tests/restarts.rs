//! Invariant 16 (ARCHITECTURE.md): nothing is lost when the broker or the database restarts
//! under a running worker.
//!
//! A test binary of its own with one test: it stops and starts the RabbitMQ
//! application and the PostgreSQL cluster, which would break tests running
//! beside it (cargo runs test binaries one at a time). Guards start both
//! again even if the test fails halfway.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use domain::OrderStatus;
use support::Stack;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pg_version() -> String {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("a local PostgreSQL cluster (pg_ctlcluster)")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version")
}

fn pg_ctl(action: &str) {
    let version = pg_version();
    let mut args = vec![
        "--skip-systemctl-redirect",
        version.as_str(),
        "main",
        action,
    ];
    if action == "stop" {
        args.extend(["-m", "fast"]);
    }
    run("pg_ctlcluster", &args);
}

/// Starts PostgreSQL and RabbitMQ again on drop, whatever happened.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let version = pg_version();
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "start"])
            .output();
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .output();
    }
}

fn wait_all_settled(stack: &Stack, nos: &[domain::OrderNo], limit: Duration) {
    let started = Instant::now();
    for no in nos {
        let left = limit.saturating_sub(started.elapsed());
        let _ = stack.wait_settled(no, left.max(Duration::from_millis(1)));
    }
}

#[test]
fn broker_and_database_restarts_under_a_running_worker_lose_nothing() {
    let stack = Stack::new();
    let mut settings = stack.settings();
    // Attempts fail fast while the database is down: allow enough of them.
    settings.max_attempts = 100;
    let worker = stack.start(settings);
    let _restore = Restore;

    // 1. The broker goes away with messages in flight and comes back.
    let mut nos: Vec<_> = (0..30).map(|_| stack.order()).collect();
    for (i, no) in nos.iter().enumerate() {
        if i % 2 == 0 {
            stack.sim_put(no, "NOTPAY");
        }
    }
    stack.relay();
    std::thread::sleep(Duration::from_millis(150));
    run("rabbitmqctl", &["stop_app"]);
    std::thread::sleep(Duration::from_secs(1));
    run("rabbitmqctl", &["start_app"]);
    run("rabbitmqctl", &["await_startup", "--timeout", "60"]);
    wait_all_settled(&stack, &nos, Duration::from_mins(1));

    // 2. The database goes away while messages are being settled. Their
    // deadlines lie after it stops: the relay routes each message by the time
    // left, so an order whose deadline had already passed when it was
    // published would go straight to the worker and could be settled
    // before the outage this step is about.
    let more: Vec<_> = (0..30)
        .map(|_| stack.order_with_window(Duration::from_secs(5)))
        .collect();
    for (i, no) in more.iter().enumerate() {
        if i % 3 == 0 {
            stack.sim_put(no, "NOTPAY");
            let _ = stack.sim.admin().pay(no.as_str()).unwrap();
        }
    }
    stack.relay();
    // Down before the deadlines: every attempt until it is back meets the
    // outage (and must come back through the retry queues, not be lost or
    // acked).
    pg_ctl("stop");
    std::thread::sleep(Duration::from_secs(2));
    let back = chrono::Utc::now();
    pg_ctl("start");
    wait_all_settled(&stack, &more, Duration::from_secs(90));
    worker.stop();

    for no in &more {
        let order = domain::find_order(&mut stack.db.conn(), no)
            .unwrap()
            .unwrap();
        assert!(
            order.updated_at >= back,
            "order {no} settled while the database was down?"
        );
    }
    nos.extend(more.iter().cloned());
    for (i, no) in more.iter().enumerate() {
        let want = if i % 3 == 0 {
            OrderStatus::Paid
        } else {
            OrderStatus::Closed
        };
        assert_eq!(stack.status(no), want, "order {no}");
    }
    assert!(nos
        .iter()
        .all(|no| stack.status(no) != OrderStatus::PendingPayment));
    assert_eq!(
        stack.depth("queue.ordertimeout.parked"),
        0,
        "nothing given up on"
    );
    // 10 paid orders hold 2 TEA each; everything else came back exactly once.
    assert_eq!(stack.stock("TEA"), 1000 - 10 * 2);
    stack.assert_conserved();
}
