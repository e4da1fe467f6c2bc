//! The trade bill against a hand-made server standing in for WeChat Pay:
//! a signed `/v3/bill/tradebill` answer, then the unsigned file at its
//! `download_url`. (The simulator's bill endpoints are tested end to end
//! where the reconciliation uses them.)

use std::fmt::Write as _;
use std::io::Write;
use std::net::TcpListener;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::NaiveDate;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Verifier;
use payment_client::{verify, BillError, Call, CallObserver, CallResult, Error, TradeBill};

use crate::support::{
    client_for, keys, one_shot_server, read_request, scratch, wechatpay_sign, Received,
    PUBLIC_KEY_ID,
};

const TEXT: &str = "交易时间,微信订单号,商户订单号,交易状态,应结订单金额,商品名称\r\n\
                    `2026-11-26 10:00:00,`42001,`OT0000000001,`SUCCESS,`12.30,`a, b\r\n\
                    总交易单数,应结订单总金额\r\n\
                    `1,`12.30\r\n";

fn sha1_hex(bytes: &[u8]) -> String {
    openssl::sha::sha1(bytes)
        .iter()
        .fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// One answer of [`server`]: status, body, and whether WeChat Pay signs it
/// (the bill file is not signed).
struct Answer {
    status: u16,
    body: Vec<u8>,
    signed: bool,
}

fn signed_json(status: u16, body: &str) -> Answer {
    Answer {
        status,
        body: body.as_bytes().to_vec(),
        signed: true,
    }
}

/// A server answering one request per connection, in order, with the
/// answers `answers(its own base URL)` makes; hands back each request.
fn server(answers: impl FnOnce(&str) -> Vec<Answer>) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answers = answers(&url);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for answer in answers {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let (received, mut stream) = read_request(stream);
            let mut head = format!(
                "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                answer.status,
                answer.body.len()
            );
            if answer.signed {
                let ts = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    .to_string();
                let nonce = payment_client::signing::new_nonce();
                let signature =
                    wechatpay_sign(&verify::response_message(&ts, &nonce, &answer.body));
                let _ = write!(
                    head,
                    "Content-Type: application/json\r\nWechatpay-Timestamp: {ts}\r\n\
                     Wechatpay-Nonce: {nonce}\r\nWechatpay-Signature: {signature}\r\n\
                     Wechatpay-Serial: {PUBLIC_KEY_ID}\r\n"
                );
            }
            head.push_str("\r\n");
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&answer.body).unwrap();
            stream.flush().unwrap();
            let _ = tx.send(received);
        }
    });
    (url, rx)
}

fn tradebill_answer(hash: &str, download_url: &str) -> Answer {
    signed_json(
        200,
        &serde_json::json!({
            "hash_type": "SHA1",
            "hash_value": hash,
            "download_url": download_url,
        })
        .to_string(),
    )
}

fn file(body: Vec<u8>) -> Answer {
    Answer {
        status: 200,
        body,
        signed: false,
    }
}

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 26).unwrap()
}

#[derive(Debug, Default)]
struct Seen(Mutex<Vec<(Call, String)>>);

impl CallObserver for Seen {
    fn observe(&self, call: Call, result: &CallResult, _: Duration) {
        self.0
            .lock()
            .unwrap()
            .push((call, result.label().into_owned()));
    }
}

/// Checks `received`'s Authorization signature with the merchant's public
/// key, over `GET\n{path_and_query}\n...`, as WeChat Pay would.
fn assert_signed_over(received: &Received, path_and_query: &str) {
    let auth = received.header("authorization").expect("authorization");
    let field = |name: &str| {
        let start = auth.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        let len = auth[start..].find('"').unwrap();
        auth[start..start + len].to_owned()
    };
    let message = format!(
        "GET\n{path_and_query}\n{}\n{}\n\n",
        field("timestamp"),
        field("nonce_str")
    );
    let dir = scratch("bill-merchant-public");
    keys().sim.write_all(&dir).unwrap();
    // The name `SimKeys::write_all` gives the merchant's public key.
    let pem = std::fs::read(dir.join("merchant_public_key.pem")).unwrap();
    let key = PKey::public_key_from_pem(&pem).unwrap();
    let mut verifier = Verifier::new(MessageDigest::sha256(), &key).unwrap();
    verifier.update(message.as_bytes()).unwrap();
    let signature = openssl::base64::decode_block(&field("signature")).unwrap();
    assert!(
        verifier.verify(&signature).unwrap(),
        "signature over {path_and_query}"
    );
}

#[test]
fn a_bill_is_fetched_downloaded_checked_and_parsed() {
    let hash = sha1_hex(TEXT.as_bytes());
    let (url, requests) = server(|url| {
        vec![
            tradebill_answer(
                &hash.to_ascii_uppercase(),
                &format!("{url}/v3/billdownload/file?token=SECRET%2Btoken"),
            ),
            file(gzip(TEXT.as_bytes())),
        ]
    });
    let seen = Arc::new(Seen::default());
    let client = client_for(&url).with_observer(seen.clone());

    let TradeBill::Ready(bill) = client.trade_bill(day()).unwrap() else {
        panic!("not ready")
    };
    assert_eq!(bill.sha1, hash);
    assert_eq!(bill.rows.len(), 1);
    assert_eq!(bill.rows[0].out_trade_no, "OT0000000001");
    assert_eq!(bill.rows[0].settlement_fen, 1230);
    assert_eq!(bill.rows[0].product.as_deref(), Some("a, b"));

    let asked = requests.recv().unwrap();
    assert_eq!(
        asked.request_line,
        "GET /v3/bill/tradebill?bill_date=2026-11-26&bill_type=ALL&tar_type=GZIP HTTP/1.1"
    );
    assert_signed_over(
        &asked,
        "/v3/bill/tradebill?bill_date=2026-11-26&bill_type=ALL&tar_type=GZIP",
    );
    let download = requests.recv().unwrap();
    assert_eq!(
        download.request_line,
        "GET /v3/billdownload/file?token=SECRET%2Btoken HTTP/1.1"
    );
    assert_signed_over(&download, "/v3/billdownload/file?token=SECRET%2Btoken");
    assert_eq!(
        *seen.0.lock().unwrap(),
        [
            (Call::TradeBill, "2xx".to_owned()),
            (Call::BillDownload, "2xx".to_owned())
        ]
    );
}

#[test]
fn a_file_with_another_hash_is_refused_whole() {
    let wrong = sha1_hex(b"another text");
    let (url, _requests) = server(|url| {
        vec![
            tradebill_answer(&wrong, &format!("{url}/v3/billdownload/file?token=t")),
            file(gzip(TEXT.as_bytes())),
        ]
    });
    let err = client_for(&url).trade_bill(day()).unwrap_err();
    match &err {
        Error::Bill(BillError::HashMismatch { expected, actual }) => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &sha1_hex(TEXT.as_bytes()));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_permanent());
    assert!(err.to_string().contains("SHA1 mismatch"), "{err}");
}

#[test]
fn a_truncated_file_is_refused() {
    let hash = sha1_hex(TEXT.as_bytes());
    let mut gz = gzip(TEXT.as_bytes());
    gz.truncate(gz.len() - 4);
    let (url, _requests) = server(|url| {
        vec![
            tradebill_answer(&hash, &format!("{url}/v3/billdownload/file?token=t")),
            file(gz),
        ]
    });
    let err = client_for(&url).trade_bill(day()).unwrap_err();
    assert!(matches!(err, Error::Bill(BillError::Truncated)), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn a_download_url_elsewhere_is_never_asked() {
    let hash = sha1_hex(TEXT.as_bytes());
    // Another port on the same host is another origin.
    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = format!("http://{}", elsewhere.local_addr().unwrap());
    let (url, requests) = server(|_| {
        vec![tradebill_answer(
            &hash,
            &format!("{other}/v3/billdownload/file?token=SECRET"),
        )]
    });
    let seen = Arc::new(Seen::default());
    let err = client_for(&url)
        .with_observer(seen.clone())
        .trade_bill(day())
        .unwrap_err();
    assert!(
        matches!(err, Error::UnexpectedResponse { status: 200, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&other), "{message}");
    assert!(!message.contains("SECRET"), "{message}");
    requests.recv().unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    assert!(
        elsewhere.accept().is_err(),
        "the other origin was contacted"
    );
    assert_eq!(seen.0.lock().unwrap().len(), 1, "only the tradebill call");
}

#[test]
fn a_refused_download_names_status_and_code() {
    let hash = sha1_hex(TEXT.as_bytes());
    let (url, _requests) = server(|url| {
        vec![
            tradebill_answer(&hash, &format!("{url}/v3/billdownload/file?token=SECRET")),
            Answer {
                status: 400,
                body: br#"{"code":"INVALID_REQUEST","message":"link expired"}"#.to_vec(),
                signed: false,
            },
        ]
    });
    let seen = Arc::new(Seen::default());
    let err = client_for(&url)
        .with_observer(seen.clone())
        .trade_bill(day())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot use the trade bill: bill download refused (HTTP 400 INVALID_REQUEST: link expired): \
         ask for the bill again for a fresh link"
    );
    assert_eq!(
        seen.0.lock().unwrap()[1],
        (Call::BillDownload, "INVALID_REQUEST".to_owned())
    );
}

#[test]
fn not_ready_and_empty_days_are_answers() {
    let (url, _) = one_shot_server(
        400,
        r#"{"code":"STATEMENT_CREATING","message":"账单生成中"}"#,
    );
    assert_eq!(
        client_for(&url).trade_bill(day()).unwrap(),
        TradeBill::NotReady {
            message: "账单生成中".into()
        }
    );
    let (url, _) = one_shot_server(400, r#"{"code":"NO_STATEMENT_EXIST","message":"无账单"}"#);
    assert_eq!(
        client_for(&url).trade_bill(day()).unwrap(),
        TradeBill::NoStatement
    );
    let (url, _) = one_shot_server(400, r#"{"code":"INVALID_REQUEST","message":"日期错误"}"#);
    let err = client_for(&url).trade_bill(day()).unwrap_err();
    assert_eq!(err.provider_code(), Some("INVALID_REQUEST"));
}

#[test]
fn a_tradebill_answer_must_name_a_sha1() {
    for body in [
        r#"{"hash_type":"MD5","hash_value":"00","download_url":"x"}"#,
        r#"{"hash_value":"0000000000000000000000000000000000000000","download_url":"x"}"#,
        r#"{"hash_type":"SHA1","download_url":"x"}"#,
        r#"{"hash_type":"SHA1","hash_value":"0000000000000000000000000000000000000000"}"#,
        "not json",
    ] {
        let (url, _) = one_shot_server(200, body);
        let err = client_for(&url).trade_bill(day()).unwrap_err();
        assert!(
            matches!(err, Error::UnexpectedResponse { status: 200, .. }),
            "{body}: {err:?}"
        );
    }
}
