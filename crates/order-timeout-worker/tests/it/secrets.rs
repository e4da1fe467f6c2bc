//! No password, key or token reaches the output, whatever `RUST_LOG` says
//! (an operator troubleshooting sets `RUST_LOG=trace`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use domain::testing::KillOnDrop;
use domain::OrderStatus;

use crate::binary::worker;
use crate::support::RecordingProxy;
use crate::Stack;

#[test]
fn a_worker_at_trace_level_prints_no_secret() {
    let stack = Stack::new();
    let amqp_user = stack.vhost.secret_user();
    // Trust authentication ignores the password, so the worker still
    // connects; it must never print it.
    let db_password = "db-s3cret-5c2e91";
    let db_url = stack.db.url().expose_secret().replacen(
        "postgres@",
        &format!("postgres:{db_password}@"),
        1,
    );
    assert!(db_url.contains(db_password), "{db_url}");
    let proxy = RecordingProxy::start();
    let proxy_password = "proxy-s3cret-84d0";
    let key_pem = std::fs::read_to_string(&stack.files.merchant_key_file).unwrap();
    let key_line = key_pem.lines().nth(2).unwrap().to_owned();

    let no = stack.order();
    stack.sim_put(&no, "NOTPAY");
    let log_dir = crate::support::TempDir::new().unwrap();
    let log_path = log_dir.path().join("worker.log");
    let mut child = KillOnDrop(
        worker(&stack, &["--worker-concurrency", "2"])
            .env("RUST_LOG", "trace")
            .env("AMQP_URL", amqp_user.url.expose_secret())
            .env("DATABASE_URL", &db_url)
            .env(
                "WECHATPAY_PROXY",
                format!("http://ops:{proxy_password}@{}", proxy.addr),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    stack.relay();
    assert_eq!(
        stack.wait_settled(&no, Duration::from_secs(20)),
        OrderStatus::Closed
    );
    assert!(!proxy.seen().is_empty(), "the calls went through the proxy");
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "no exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    // `settle` too, through the same logging set-up.
    let settle = worker(&stack, &["settle", no.as_str()])
        .env("RUST_LOG", "trace")
        .env("AMQP_URL", amqp_user.url.expose_secret())
        .env("DATABASE_URL", &db_url)
        .output()
        .unwrap();
    let log = format!(
        "{}{}{}",
        std::fs::read_to_string(&log_path).unwrap(),
        String::from_utf8_lossy(&settle.stdout),
        String::from_utf8_lossy(&settle.stderr)
    );
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the run logged at trace level"
    );
    for secret in [
        amqp_user.password.as_str(),
        db_password,
        proxy_password,
        key_line.as_str(),
    ] {
        assert!(!log.contains(secret), "{secret:?} was printed");
    }
    stack.assert_conserved();
}
