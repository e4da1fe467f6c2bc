//! Keys, a raw HTTP helper, an independent request signer and signature
//! check, and a scripted notification receiver.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private, Public};
use openssl::sign::{Signer, Verifier};
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
    /// The body as text (lossy for a binary body: see `bytes`).
    pub body: String,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends exactly these headers (plus Content-Length, `Connection: close`
/// and, unless given, Host) and reads the answer.
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
        "{method} {url} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("Host")) {
        let _ = write!(req, "Host: {addr}\r\n");
    }
    for (n, v) in headers {
        let _ = write!(req, "{n}: {v}\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&bytes[..head_end]).unwrap();
    let body = bytes[head_end + 4..].to_vec();
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
        body: String::from_utf8_lossy(&body).into_owned(),
        bytes: body,
    }
}

/// A signed API request with the headers the simulator demands (and
/// `Content-Type: application/json` when there is a body).
pub fn signed(addr: SocketAddr, method: &str, url: &str, body: &str) -> Answer {
    let auth = authorization(&keys().merchant, method, url, now(), body);
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Accept", "application/json"),
        ("User-Agent", "sim-test/1"),
    ];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    raw(addr, method, url, &headers, body)
}

/// The simulated WeChat Pay public key, as a client reads it from its file.
pub fn wechatpay_public_key() -> PKey<Public> {
    PKey::public_key_from_pem(&std::fs::read(&keys().files.wechatpay_public_key_file).unwrap())
        .unwrap()
}

/// Whether `signature` (base64) signs `timestamp\nnonce\nbody\n` with the
/// simulated WeChat Pay key.
pub fn wechatpay_signed(timestamp: &str, nonce: &str, body: &[u8], signature: &str) -> bool {
    let mut message = format!("{timestamp}\n{nonce}\n").into_bytes();
    message.extend_from_slice(body);
    message.push(b'\n');
    let Ok(sig) = openssl::base64::decode_block(signature) else {
        return false;
    };
    Verifier::new(MessageDigest::sha256(), &wechatpay_public_key())
        .unwrap()
        .verify_oneshot(&sig, &message)
        .unwrap_or(false)
}

/// One request a [`receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A notification receiver on a free port: answers the n-th request with
/// `statuses[n]` (the last one from then on) and hands each request to the
/// returned channel. Its `http://.../notify` URL comes first.
pub fn receiver(statuses: &[u16]) -> (String, Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    let statuses = statuses.to_vec();
    let (tx, rx) = mpsc::channel();
    // Left running when the test ends: the process exits soon after.
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let Some(request) = read_request(&mut stream) else {
                continue;
            };
            let status = statuses[n.min(statuses.len() - 1)];
            let body = if status < 300 {
                String::new()
            } else {
                r#"{"code":"FAIL","message":"try again"}"#.to_owned()
            };
            let head = format!(
                "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
                if status == 204 { 0 } else { body.len() }
            );
            let _ = stream.write_all(head.as_bytes());
            if status != 204 {
                let _ = stream.write_all(body.as_bytes());
            }
            if tx.send(request).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

fn read_request(stream: &mut TcpStream) -> Option<Received> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + 4 + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        method,
        path,
        headers,
        body: buf[head_end + 4..head_end + 4 + length].to_vec(),
    })
}

/// Polls `check` until it holds, at most `timeout`.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
