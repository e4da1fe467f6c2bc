//! `order-producer serve` as a process: exit 2 on bad settings, SIGTERM
//! finishes and exits 0, and no secret in its log even at trace level.

use std::process::{Command, Stdio};
use std::time::Duration;

use domain::testing::{wait_for, KillOnDrop, TestDb};
use order_producer::testing::{free_port, TempDir, APPID};
use wechatpay_sim::{SimConfig, SimKeys, Simulator};

const TOKEN: &str = "binary-test-token-4242424242";

struct Setup {
    db: TestDb,
    sim: Simulator,
    files: wechatpay_sim::ClientFiles,
    dir: TempDir,
}

fn setup() -> Setup {
    let dir = TempDir::new().unwrap();
    let sim = Simulator::start("127.0.0.1:0", SimKeys::shared(), SimConfig::default()).unwrap();
    let files = sim.write_client_files(dir.path()).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    Setup {
        db: TestDb::new(),
        sim,
        files,
        dir,
    }
}

fn serve(s: &Setup, port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_order-producer"));
    c.arg("serve")
        .env("DATABASE_URL", s.db.url().expose_secret())
        .env("API_LISTEN", format!("127.0.0.1:{port}"))
        .env("API_TOKEN_FILE", s.dir.path().join("token"))
        .env("WECHATPAY_APPID", APPID)
        .env("WECHATPAY_APIV3_KEY_FILE", &s.files.apiv3_key_file)
        .env(
            "WECHATPAY_NOTIFY_URL",
            format!("http://127.0.0.1:{port}/wechatpay/notify/transaction"),
        )
        .env("WECHATPAY_BASE_URL", s.sim.base_url())
        .env("WECHATPAY_MCHID", wechatpay_sim::DEFAULT_MCHID)
        .env(
            "WECHATPAY_MERCHANT_SERIAL_NO",
            wechatpay_sim::DEFAULT_MERCHANT_SERIAL_NO,
        )
        .env("WECHATPAY_MERCHANT_KEY_FILE", &s.files.merchant_key_file)
        .env(
            "WECHATPAY_PUBLIC_KEY_ID",
            wechatpay_sim::DEFAULT_PUBLIC_KEY_ID,
        )
        .env(
            "WECHATPAY_PUBLIC_KEY_FILE",
            &s.files.wechatpay_public_key_file,
        )
        .env("RUST_LOG", "trace")
        .env_remove("LOG_FORMAT")
        .env_remove("PAYMENT_WINDOW");
    c
}

/// The status line of the answer to a raw HTTP/1.0 request, and the rest.
fn http(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn bad_settings_exit_2_naming_the_setting_without_echoing_secrets() {
    let s = setup();
    let short = s.dir.path().join("short");
    std::fs::write(&short, "tiny-secret").unwrap();
    let bad_key = s.dir.path().join("apiv3");
    std::fs::write(&bad_key, "not-32-bytes-secret").unwrap();
    // (what, variable, value: empty = unset, what the message must name)
    let cases = [
        (
            "no token file",
            "API_TOKEN_FILE",
            "/nonexistent/token".to_owned(),
            "API_TOKEN_FILE",
        ),
        (
            "short token",
            "API_TOKEN_FILE",
            short.display().to_string(),
            "at least 16",
        ),
        (
            "bad APIv3 key",
            "WECHATPAY_APIV3_KEY_FILE",
            bad_key.display().to_string(),
            "WECHATPAY_APIV3_KEY_FILE",
        ),
        (
            "http notify URL",
            "WECHATPAY_NOTIFY_URL",
            "http://shop.example.com/n".to_owned(),
            "WECHATPAY_NOTIFY_URL",
        ),
        (
            "no mchid",
            "WECHATPAY_MCHID",
            String::new(),
            "missing payment setting WECHATPAY_MCHID (or --wechatpay-mchid)",
        ),
        // Required settings are named by their variable first (what users
        // set), then the flag; clap used to name only the flag.
        (
            "token file unset",
            "API_TOKEN_FILE",
            String::new(),
            "missing setting API_TOKEN_FILE (or --api-token-file)",
        ),
        (
            "appid unset",
            "WECHATPAY_APPID",
            String::new(),
            "missing setting WECHATPAY_APPID (or --wechatpay-appid)",
        ),
        (
            "APIv3 key file unset",
            "WECHATPAY_APIV3_KEY_FILE",
            String::new(),
            "missing setting WECHATPAY_APIV3_KEY_FILE (or --wechatpay-apiv3-key-file)",
        ),
        (
            "notify URL unset",
            "WECHATPAY_NOTIFY_URL",
            String::new(),
            "missing setting WECHATPAY_NOTIFY_URL (or --wechatpay-notify-url)",
        ),
    ];
    for (what, var, value, needle) in cases {
        let mut c = serve(&s, free_port());
        if value.is_empty() {
            c.env_remove(var);
        } else {
            c.env(var, &value);
        }
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
        assert!(
            !err.contains("tiny-secret") && !err.contains("not-32-bytes-secret"),
            "{what}: {err}"
        );
    }
}

#[test]
fn a_default_window_no_delay_queue_can_serve_exits_2() {
    let s = setup();
    let log = s.dir.path().join("refused.log");
    let mut child = KillOnDrop(
        serve(&s, free_port())
            .env("DELAY_TTL_MS", "20000")
            .env_remove("DELAY_WINDOWS")
            .env_remove("PAYMENT_WINDOWS")
            .env("PAYMENT_WINDOW", "3s")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // Started anyway, it would serve until killed: wait a bounded time.
    let status = wait_for(Duration::from_secs(20), || child.try_wait().unwrap());
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{err}");
    assert!(
        err.contains("PAYMENT_WINDOW: a payment window of 3s cannot be served")
            && err.contains("windows of 20s or longer"),
        "{err}"
    );
}

#[test]
fn sigterm_exits_0_and_the_log_holds_no_secret() {
    let log = serve_until_sigterm(None);
    assert!(log.contains("finishing the requests in hand"), "{log}");
}

/// `LOG_FORMAT=json`: every line of the front door's log (at trace level,
/// hyper, tokio and ureq included) is one JSON object.
#[test]
fn log_format_json_makes_every_line_a_json_object() {
    let log = serve_until_sigterm(Some("json"));
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for v in &lines {
        for field in ["ts", "level", "target", "msg"] {
            assert!(v[field].is_string(), "{field}: {v}");
        }
    }
    assert!(
        lines.iter().any(|v| v["msg"]
            .as_str()
            .unwrap()
            .contains("finishing the requests in hand")),
        "{log}"
    );
}

/// Runs `serve` (in `format`, or the default), asks it a few things, stops
/// it with SIGTERM (exit 0) and returns its log, checked for secrets.
fn serve_until_sigterm(format: Option<&str>) -> String {
    let s = setup();
    let port = free_port();
    // A file, not a pipe: at trace level the log would fill a pipe nobody reads.
    let log_path = s.dir.path().join("serve.log");
    let mut command = serve(&s, port);
    if let Some(format) = format {
        command.env("LOG_FORMAT", format);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    wait_for(Duration::from_secs(20), || {
        http(port, "GET /healthz HTTP/1.0\r\n\r\n")
            .starts_with("HTTP/1.0 200")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "serve answers /healthz; its log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    });
    let unauthorized = http(
        port,
        "GET /v1/orders/OT20260101000000000000 HTTP/1.0\r\nAuthorization: Bearer wrong-token-xxxxxxxxxxxx\r\n\r\n",
    );
    assert!(unauthorized.starts_with("HTTP/1.0 401"), "{unauthorized}");
    let ok = http(
        port,
        &format!("GET /v1/orders/OT20260101000000000000 HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
    );
    assert!(ok.starts_with("HTTP/1.0 404"), "{ok}");
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_for(Duration::from_secs(20), || child.0.try_wait().unwrap())
        .expect("serve exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let log = std::fs::read_to_string(&log_path).unwrap();
    let apiv3 = std::fs::read_to_string(&s.files.apiv3_key_file).unwrap();
    for secret in [TOKEN, apiv3.trim_end()] {
        assert!(!log.contains(secret), "a secret in the log");
    }
    log
}
