//! The `wechatpay-sim` binary: keys in --key-dir, env lines on stdout.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use wechatpay_sim::AdminClient;

use crate::support::scratch;

/// Runs the binary until it printed its six env lines, then stops it.
fn run_once(key_dir: &std::path::Path) -> HashMap<String, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wechatpay-sim"))
        .args(["--listen", "127.0.0.1:0", "--key-dir"])
        .arg(key_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut env = HashMap::new();
    for _ in 0..6 {
        let line = lines.next().unwrap().unwrap();
        let (k, v) = line.split_once('=').unwrap();
        env.insert(k.to_owned(), v.to_owned());
    }
    let admin = AdminClient::new(&env["WECHATPAY_BASE_URL"]);
    let ready = admin.wait_ready(Duration::from_secs(5));
    let _ = child.kill();
    let _ = child.wait();
    ready.unwrap();
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
    }
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
        .args(["--listen", "127.0.0.1:0", "--key-dir"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-a-dir"), "{err}");
}
