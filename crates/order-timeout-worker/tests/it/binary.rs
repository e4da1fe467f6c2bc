//! The `order-timeout-worker` binary as an operator runs it.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use domain::testing::KillOnDrop;
use domain::OrderStatus;

use crate::Stack;

pub(crate) fn worker(stack: &Stack, args: &[&str]) -> Command {
    stack.worker_command(args)
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn missing_or_bad_payment_settings_exit_2_naming_them() {
    let stack = Stack::new();
    let out = worker(&stack, &[])
        .env_remove("WECHATPAY_MCHID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("missing payment setting WECHATPAY_MCHID"),
        "{}",
        stderr(&out)
    );

    let out = worker(&stack, &[])
        .env_remove("WECHATPAY_PUBLIC_KEY_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("WECHATPAY_PUBLIC_KEY_FILE"),
        "{}",
        stderr(&out)
    );

    let out = worker(&stack, &[])
        .env("WECHATPAY_MERCHANT_KEY_FILE", "/nonexistent/merchant.pem")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/merchant.pem"),
        "{}",
        stderr(&out)
    );

    // A key file that is not a key: named, its contents never printed.
    let garbage = stack.files.merchant_key_file.with_file_name("garbage.pem");
    std::fs::write(&garbage, "TOPSECRETCONTENT").unwrap();
    let out = worker(&stack, &[])
        .env("WECHATPAY_MERCHANT_KEY_FILE", &garbage)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("garbage.pem"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("TOPSECRETCONTENT"));
}

#[test]
fn a_missing_topology_or_schema_exits_2() {
    let stack = Stack::new();
    let fresh = broker::testing::TestVhost::new();
    let out = worker(&stack, &[])
        .env("AMQP_URL", fresh.url().expose_secret())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exchange.ordertimeout does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("guest:guest"));

    // A retry ladder other than the declared one (100ms,200ms,400ms): said
    // as such, with both, not as a topology to declare.
    let out = worker(&stack, &[])
        .env("RETRY_DELAYS", "100ms,300ms")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "RETRY_DELAYS (100ms,300ms) differs from the declared topology: \
             queue.ordertimeout.retry.300ms does not exist"
        ) && stderr(&out).contains("the broker has: queue.ordertimeout.retry.100ms (100ms)"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("declare the topology first"),
        "{}",
        stderr(&out)
    );

    // A password the broker refuses is configuration, not an outage to
    // wait for: exit 2 naming AMQP_URL, the password not shown. (A vhost
    // that does not exist yet is waited for: see below.)
    let good = stack.vhost.url().expose_secret().to_owned();
    assert!(
        good.contains("guest:guest@"),
        "the test vhost's URL: {good}"
    );
    let wrong = good.replacen("guest:guest@", "guest:wrong-secret@", 1);
    let out = worker(&stack, &[])
        .env("AMQP_URL", &wrong)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the broker refused the credentials (invalid credentials)"),
        "{err}"
    );
    assert!(
        err.contains("AMQP_URL") && !err.contains("wrong-secret"),
        "{err}"
    );

    let empty = domain::testing::TestDb::empty();
    let out = worker(&stack, &[])
        .env("DATABASE_URL", empty.url().expose_secret())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("order-producer migrate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn settle_settles_one_order_now_and_prints_the_outcome() {
    let stack = Stack::new();
    let no = stack.order();
    stack.sim_put(&no, "NOTPAY");
    let early = worker(&stack, &["settle", no.as_str()]).output().unwrap();
    let early_out = String::from_utf8_lossy(&early.stdout);
    if early.status.success() {
        // The 300 ms window may already have passed on a slow machine.
        assert!(early_out.contains("closed"), "{early_out}");
    } else {
        assert!(early_out.contains("not_yet_due"), "{early_out}");
        assert_eq!(stack.status(&no), OrderStatus::PendingPayment);
        std::thread::sleep(crate::WINDOW);
        let out = worker(&stack, &["settle", no.as_str()]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(&format!("{no}: closed")), "{text}");
    }
    assert_eq!(stack.status(&no), OrderStatus::Closed);
    // On an order closed here the operator's settle looks at WeChat Pay
    // again (a late payment would be recorded for refund).
    let again = worker(&stack, &["settle", no.as_str()]).output().unwrap();
    assert!(again.status.success());
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.contains("rechecked") && text.contains("is closed"),
        "{text}"
    );
    let unknown = worker(&stack, &["settle", "nosuchorder1"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    let bad = worker(&stack, &["settle", "bad/no"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    stack.assert_conserved();
}

/// Defect 3 of issue 21: the missing-setting error tells the user to pass
/// `--wechatpay-mchid`, and `settle ORDER_NO --wechatpay-mchid ...` was
/// refused (`unexpected argument`).
#[test]
fn settle_takes_the_settings_it_reads_after_the_subcommand() {
    let stack = Stack::new();
    let no = stack.order();
    stack.sim_put(&no, "NOTPAY");
    std::thread::sleep(crate::WINDOW + Duration::from_millis(100));
    let mchid = wechatpay_sim::DEFAULT_MCHID;
    let out = worker(&stack, &["settle", no.as_str(), "--wechatpay-mchid", mchid])
        .env_remove("WECHATPAY_MCHID")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("{no}: closed")), "{text}");
    assert_eq!(stack.status(&no), OrderStatus::Closed);

    // The old place, before the subcommand, still works.
    let out = worker(&stack, &["--wechatpay-mchid", mchid, "settle", no.as_str()])
        .env_remove("WECHATPAY_MCHID")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Without it, the error names the variable first, then the flag.
    let out = worker(&stack, &["settle", no.as_str()])
        .env_remove("WECHATPAY_MCHID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("missing payment setting WECHATPAY_MCHID (or --wechatpay-mchid)"),
        "{}",
        stderr(&out)
    );

    // A consumer setting after `settle` is refused, naming it.
    let out = worker(
        &stack,
        &["settle", no.as_str(), "--worker-concurrency", "4"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--worker-concurrency"),
        "{}",
        stderr(&out)
    );
}

/// Renamed settings: the old flag and the old variable still work, each
/// with one warning naming the new name; old and new both set to different
/// values is refused naming both.
#[test]
fn old_setting_names_still_work_with_a_warning() {
    let stack = Stack::new();
    // Unknown at WeChat Pay: closed with a recheck due --worker-recheck-after later.
    let no = stack.order();
    std::thread::sleep(crate::WINDOW + Duration::from_millis(100));
    let out = worker(&stack, &["--recheck-after", "1h", "settle", no.as_str()])
        .env("REFUND_INTERVAL", "7s")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.matches("--recheck-after is deprecated, use --worker-recheck-after")
            .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("REFUND_INTERVAL is deprecated, use WORKER_REFUND_INTERVAL"),
        "{err}"
    );
    // The old flag's value was used: the recheck is due in an hour.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("recheck is due in 3600 s"), "{text}");

    let out = worker(&stack, &["settle", no.as_str()])
        .env("RECHECK_AFTER", "1h")
        .env("WORKER_RECHECK_AFTER", "2h")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("RECHECK_AFTER and WORKER_RECHECK_AFTER"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sigterm_mid_batch_finishes_what_is_in_hand_exits_0_and_loses_nothing() {
    let stack = Stack::new();
    let nos: Vec<_> = (0..40).map(|_| stack.order()).collect();
    for no in &nos {
        stack.sim_put(no, "NOTPAY");
    }
    // Slow provider: the worker is busy when the signal comes.
    stack
        .sim
        .admin()
        .set_global_faults(&wechatpay_sim::Faults {
            latency_ms: 100,
            ..Default::default()
        })
        .unwrap();
    let mut child = KillOnDrop(
        worker(&stack, &["--worker-concurrency", "4"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    stack.relay();
    let started = Instant::now();
    while nos
        .iter()
        .all(|no| stack.status(no) == OrderStatus::PendingPayment)
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "nothing settled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "no exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("worker stopped cleanly"), "{err}");
    // The last summary says how the closes were grouped into statements.
    assert!(err.contains("local closes so far, in"), "{err}");
    let done = nos
        .iter()
        .filter(|no| stack.status(no) != OrderStatus::PendingPayment)
        .count();
    assert!(
        done < nos.len(),
        "all settled before the signal: the test proved nothing"
    );

    // Nothing was lost: a second worker settles the rest from the queue.
    stack.sim.admin().clear_global_faults().unwrap();
    let again = stack.start(stack.settings());
    for no in &nos {
        assert_eq!(
            stack.wait_settled(no, Duration::from_secs(20)),
            OrderStatus::Closed
        );
    }
    again.stop();
    assert_eq!(stack.stock("TEA"), 1000);
    stack.assert_conserved();
}

#[test]
fn a_close_batch_out_of_range_exits_2_naming_it() {
    let stack = Stack::new();
    for bad in ["0", "1001", "many"] {
        let out = worker(&stack, &["--worker-close-batch", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--worker-close-batch"),
            "{}",
            stderr(&out)
        );
    }
    let help = worker(&stack, &["--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("WORKER_CLOSE_BATCH"), "{text}");
}

/// A vhost deleted on drop (made by the test itself, later than the worker).
struct DropVhost(String);

impl Drop for DropVhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .output();
    }
}

/// Sends SIGTERM and asserts an exit 0 within `limit`.
fn terminate(child: &mut KillOnDrop, limit: Duration) {
    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            signalled.elapsed() < limit,
            "no exit within {limit:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_broker_that_is_away_at_start_is_waited_for_not_an_exit() {
    let stack = Stack::new();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let log = stack.files.merchant_key_file.with_file_name("worker.log");
    let metrics = format!("127.0.0.1:{}", free());

    // Nothing listens on the AMQP port: the worker waits, not ready, and a
    // SIGTERM meanwhile ends it at once with exit 0.
    let mut child = KillOnDrop(
        worker(&stack, &[])
            .env(
                "AMQP_URL",
                format!("amqp://guest:guest@127.0.0.1:{}/%2f", free()),
            )
            .env("METRICS_LISTEN", &metrics)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let waiting = domain::testing::wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.matches("waiting for the broker").count() >= 2).then_some(())
    });
    assert!(
        waiting.is_some(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker exited: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (status, body) = order_producer::testing::http_get(&metrics, "/readyz", None);
    assert_ne!(status, 200, "ready without a broker: {body}");
    terminate(&mut child, Duration::from_secs(3));

    // A vhost that does not exist yet: the worker waits until it is made
    // and its topology declared, then settles.
    let vhost = format!("{}_later", stack.vhost.name());
    let host = std::env::var("TEST_AMQP_HOST").unwrap_or_else(|_| "127.0.0.1:5672".into());
    let url = broker::AmqpUrl::new(format!("amqp://guest:guest@{host}/{vhost}"));
    let mut child = KillOnDrop(
        worker(&stack, &[])
            .env("AMQP_URL", url.expose_secret())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let _cleanup = DropVhost(vhost.clone());
    std::thread::sleep(Duration::from_secs(3));
    assert!(child.try_wait().unwrap().is_none(), "the worker exited");
    let _ = broker::testing::rabbitmqctl(&["add_vhost", &vhost]);
    let _ =
        broker::testing::rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
    let mut conn = broker::connect(&url).unwrap();
    stack.topology.declare(&mut conn, &url).unwrap();
    let _ = conn.close();
    let no = stack.order();
    stack.sim_put(&no, "NOTPAY");
    std::thread::sleep(crate::WINDOW);
    stack.dead_letter_to(&url, &no);
    assert_eq!(
        stack.wait_settled(&no, Duration::from_secs(20)),
        OrderStatus::Closed
    );
    terminate(&mut child, Duration::from_secs(10));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("waiting for the broker"), "{text}");
    assert!(!text.contains("guest:guest"), "{text}");
    stack.assert_conserved();
}
