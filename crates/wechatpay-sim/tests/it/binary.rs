//! The `wechatpay-sim` binary: keys in --wechatpay-sim-key-dir, env lines on stdout.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use wechatpay_sim::AdminClient;

use crate::support::scratch;

/// Runs the binary until it printed its seven env lines, then stops it.
fn run_once(key_dir: &std::path::Path) -> HashMap<String, String> {
    run_with(key_dir, &[], |_| ())
}

/// Runs the binary with `extra` arguments, lets `check` use its admin API,
/// and stops it.
fn run_with(
    key_dir: &std::path::Path,
    extra: &[&str],
    check: impl FnOnce(&HashMap<String, String>),
) -> HashMap<String, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wechatpay-sim"))
        .args([
            "--wechatpay-sim-listen",
            "127.0.0.1:0",
            "--wechatpay-sim-key-dir",
        ])
        .arg(key_dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut env = HashMap::new();
    for _ in 0..7 {
        let line = lines.next().unwrap().unwrap();
        let (k, v) = line.split_once('=').unwrap();
        env.insert(k.to_owned(), v.to_owned());
    }
    let admin = AdminClient::new(&env["WECHATPAY_BASE_URL"]);
    let ready = admin.wait_ready(Duration::from_secs(5));
    let checked = ready
        .is_ok()
        .then(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&env))));
    let _ = child.kill();
    let _ = child.wait();
    ready.unwrap();
    if let Some(Err(panic)) = checked {
        std::panic::resume_unwind(panic);
    }
    env
}

#[test]
fn prints_the_client_environment_and_reuses_its_keys() {
    let dir = scratch("bin-keys");
    let first = run_once(&dir);
    for k in [
        "WECHATPAY_BASE_URL",
        "WECHATPAY_MCHID",
        "WECHATPAY_MERCHANT_SERIAL_NO",
        "WECHATPAY_MERCHANT_KEY_FILE",
        "WECHATPAY_PUBLIC_KEY_ID",
        "WECHATPAY_PUBLIC_KEY_FILE",
        "WECHATPAY_APIV3_KEY_FILE",
    ] {
        assert!(first.contains_key(k), "{k} missing from {first:?}");
    }
    assert!(first["WECHATPAY_PUBLIC_KEY_ID"].starts_with("PUB_KEY_ID_"));
    assert!(std::path::Path::new(&first["WECHATPAY_MERCHANT_KEY_FILE"]).is_absolute());
    assert!(std::path::Path::new(&first["WECHATPAY_MERCHANT_KEY_FILE"]).is_absolute());
    let key = std::fs::read(&first["WECHATPAY_MERCHANT_KEY_FILE"]).unwrap();
    assert!(String::from_utf8_lossy(&key).starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first["WECHATPAY_MERCHANT_KEY_FILE"])
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
        let mode = std::fs::metadata(&first["WECHATPAY_APIV3_KEY_FILE"])
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "APIv3 key readable by others: {mode:o}");
    }
    assert_eq!(
        std::fs::read(&first["WECHATPAY_APIV3_KEY_FILE"]).unwrap(),
        wechatpay_sim::DEFAULT_APIV3_KEY.as_bytes()
    );
    // A second start loads the same keys instead of making new ones.
    let second = run_once(&dir);
    assert_eq!(
        std::fs::read(&second["WECHATPAY_MERCHANT_KEY_FILE"]).unwrap(),
        key
    );
}

#[test]
fn an_unusable_key_dir_exits_with_2() {
    let file = scratch("bin-bad").join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wechatpay-sim"))
        .args([
            "--wechatpay-sim-listen",
            "127.0.0.1:0",
            "--wechatpay-sim-key-dir",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-a-dir"), "{err}");
}

/// The same logger as the other binaries: `LOG_FORMAT=json` makes its exit
/// error a JSON line; an unknown format exits 2 naming the setting.
#[test]
fn log_format_json_writes_json_lines_and_an_unknown_one_exits_2() {
    let file = scratch("bin-json").join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let sim = |format: &str| {
        Command::new(env!("CARGO_BIN_EXE_wechatpay-sim"))
            .args([
                "--wechatpay-sim-listen",
                "127.0.0.1:0",
                "--wechatpay-sim-key-dir",
            ])
            .arg(&file)
            .env("LOG_FORMAT", format)
            .output()
            .unwrap()
    };
    let out = sim("json");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let last = lines.last().unwrap_or_else(|| panic!("no line: {err}"));
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["target"], "wechatpay-sim", "{last}");
    assert!(last["ts"].is_string(), "{last}");
    assert!(
        last["msg"].as_str().unwrap().contains("not-a-dir"),
        "{last}"
    );

    let out = sim("xml");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("LOG_FORMAT=\"xml\" is not a log format") && err.contains("json"),
        "{err}"
    );
}

#[test]
fn the_appid_apiv3_key_and_notify_schedule_flags_are_used() {
    let dir = scratch("bin-flags");
    let key_file = dir.join("my-apiv3.key");
    std::fs::write(&key_file, "0123456789abcdefABCDEF0123456789\n").unwrap();
    let key_arg = key_file.to_str().unwrap();
    let env = run_with(
        &dir.join("keys"),
        &[
            "--wechatpay-sim-appid",
            "wx9999999999999999",
            "--wechatpay-sim-apiv3-key-file",
            key_arg,
            "--wechatpay-sim-notify-schedule",
            "10ms,20ms",
        ],
        |env| {
            // The appid is demanded: a prepay naming another is refused.
            let base = &env["WECHATPAY_BASE_URL"];
            let addr = base.trim_start_matches("http://").parse().unwrap();
            let body = serde_json::json!({
                "appid": "wx0000000000000000",
                "mchid": wechatpay_sim::DEFAULT_MCHID,
                "description": "flags",
                "out_trade_no": "BINFLAGS01",
                "notify_url": "http://127.0.0.1:9/notify",
                "amount": { "total": 1 },
            })
            .to_string();
            let pem = std::fs::read(&env["WECHATPAY_MERCHANT_KEY_FILE"]).unwrap();
            let merchant = openssl::pkey::PKey::private_key_from_pem(&pem).unwrap();
            let url = "/v3/pay/transactions/native";
            let auth =
                crate::support::authorization(&merchant, "POST", url, crate::support::now(), &body);
            let a = crate::support::raw(
                addr,
                "POST",
                url,
                &[
                    ("Authorization", &auth),
                    ("Accept", "application/json"),
                    ("User-Agent", "sim-test/1"),
                    ("Content-Type", "application/json"),
                ],
                &body,
            );
            assert!(a.status == 400 && a.body.contains("appid"), "{a:?}");
        },
    );
    assert_eq!(
        std::fs::read(&env["WECHATPAY_APIV3_KEY_FILE"]).unwrap(),
        b"0123456789abcdefABCDEF0123456789"
    );
}

#[test]
fn a_bad_apiv3_key_or_schedule_exits_with_2_without_showing_the_key() {
    let dir = scratch("bin-bad-apiv3");
    let key_file = dir.join("short.key");
    std::fs::write(&key_file, "SECRETSECRET-too-short").unwrap();
    for extra in [
        vec!["--wechatpay-sim-apiv3-key-file", key_file.to_str().unwrap()],
        vec!["--wechatpay-sim-notify-schedule", "15s,soon"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wechatpay-sim"))
            .args([
                "--wechatpay-sim-listen",
                "127.0.0.1:0",
                "--wechatpay-sim-key-dir",
            ])
            .arg(dir.join("keys"))
            .args(&extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("SECRETSECRET"), "{err}");
        assert!(
            err.contains("short.key") || err.contains("soon"),
            "{extra:?}: {err}"
        );
    }
}
