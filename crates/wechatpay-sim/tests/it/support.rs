//! Keys, a raw HTTP helper and an independent request signer.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use wechatpay_sim::{ClientFiles, SimConfig, SimKeys, Simulator};

pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("wechatpay-sim-it-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Keys {
    pub sim: SimKeys,
    pub files: ClientFiles,
    pub merchant: PKey<Private>,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let sim = SimKeys::shared().clone();
        let files = sim.write_client_files(&scratch("keys")).unwrap();
        let merchant =
            PKey::private_key_from_pem(&std::fs::read(&files.merchant_key_file).unwrap()).unwrap();
        Keys {
            sim,
            files,
            merchant,
        }
    })
}

pub fn start() -> Simulator {
    Simulator::start("127.0.0.1:0", &keys().sim, SimConfig::default()).unwrap()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `Authorization` for a request, signed with `key`.
pub fn authorization(
    key: &PKey<Private>,
    method: &str,
    url: &str,
    timestamp: u64,
    body: &str,
) -> String {
    let nonce = "TESTNONCE0123456789";
    let message = format!("{method}\n{url}\n{timestamp}\n{nonce}\n{body}\n");
    let mut signer = Signer::new(MessageDigest::sha256(), key).unwrap();
    signer.update(message.as_bytes()).unwrap();
    let signature = openssl::base64::encode_block(&signer.sign_to_vec().unwrap());
    format!(
        r#"WECHATPAY2-SHA256-RSA2048 mchid="{}",nonce_str="{nonce}",signature="{signature}",timestamp="{timestamp}",serial_no="{}""#,
        wechatpay_sim::DEFAULT_MCHID,
        wechatpay_sim::DEFAULT_MERCHANT_SERIAL_NO
    )
}

/// A parsed raw answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends exactly these headers (plus Host, Content-Length and
/// `Connection: close`) and reads the answer.
pub fn raw(
    addr: SocketAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut req = format!(
        "{method} {url} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        let _ = write!(req, "{n}: {v}\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}
