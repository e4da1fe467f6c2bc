//! Shared set-up: keys, a simulator, a client pointed at it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use payment_client::signing::MerchantKey;
use payment_client::{verify, Client, Config};
use wechatpay_sim::{AdminClient, ClientFiles, SimConfig, SimKeys, Simulator};

pub const MCHID: &str = wechatpay_sim::DEFAULT_MCHID;
pub const MERCHANT_SERIAL: &str = wechatpay_sim::DEFAULT_MERCHANT_SERIAL_NO;
pub const PUBLIC_KEY_ID: &str = wechatpay_sim::DEFAULT_PUBLIC_KEY_ID;

pub fn init_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = env_logger_like();
    }
}

// The client crate does not depend on env_logger; a minimal logger suffices.
fn env_logger_like() -> Result<(), log::SetLoggerError> {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, r: &log::Record<'_>) {
            eprintln!("{} {}: {}", r.level(), r.target(), r.args());
        }
        fn flush(&self) {}
    }
    log::set_logger(&Stderr).map(|()| log::set_max_level(log::LevelFilter::Debug))
}

/// A scratch directory unique to this test binary run.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("payment-client-it-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Keys {
    pub sim: SimKeys,
    pub files: ClientFiles,
}

/// The simulated merchant and WeChat Pay keys, generated once.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let sim = SimKeys::shared().clone();
        let files = sim.write_client_files(&scratch("keys")).unwrap();
        Keys { sim, files }
    })
}

/// Another, unrelated pair of keys (a wrong merchant key, a wrong WeChat Pay key).
pub fn other_keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let sim = SimKeys::generate().unwrap();
        let files = sim.write_client_files(&scratch("other-keys")).unwrap();
        Keys { sim, files }
    })
}

/// Signs `message` with the simulated WeChat Pay private key, as WeChat Pay
/// signs its answers and notifications (base64).
pub fn wechatpay_sign(message: &[u8]) -> String {
    static KEY: OnceLock<MerchantKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = scratch("wechatpay-signer");
        keys().sim.write_all(&dir).unwrap();
        // The name `SimKeys::write_all` gives the simulated WeChat Pay key.
        MerchantKey::load(&dir.join("wechatpay_private_key.pem")).unwrap()
    })
    .sign(message)
    .unwrap()
}

pub fn start_sim(config: SimConfig) -> Simulator {
    init_log();
    Simulator::start("127.0.0.1:0", &keys().sim, config).unwrap()
}

/// Client config for `sim` in public key mode, with short timeouts.
pub fn config_for(sim: &Simulator) -> Config {
    let files = &keys().files;
    Config::new(MCHID, MERCHANT_SERIAL, &files.merchant_key_file)
        .with_public_key(PUBLIC_KEY_ID, &files.wechatpay_public_key_file)
        .with_base_url(sim.base_url())
        .with_timeouts(Duration::from_millis(300), Duration::from_secs(2))
}

/// A simulator, its admin client and a client talking to it.
pub struct Env {
    pub sim: Simulator,
    pub admin: AdminClient,
    pub client: Client,
}

pub fn env() -> Env {
    let sim = start_sim(SimConfig::default());
    let client = Client::new(config_for(&sim)).unwrap();
    Env {
        admin: sim.admin(),
        client,
        sim,
    }
}

/// One HTTP request as a hand-made server received it (header names in
/// lower case).
pub struct Received {
    pub request_line: String,
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

/// Reads one request (with a `Content-Length` body) from `stream`, for
/// servers that stand in for WeChat Pay or for a notification receiver.
pub fn read_request(stream: TcpStream) -> (Received, TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let received = Received {
        request_line: request_line.trim_end().to_owned(),
        headers,
        body,
    };
    (received, reader.into_inner())
}

/// A server that stands in for WeChat Pay: it answers one request with
/// `status` and `body`, signed with the simulated WeChat Pay key, and hands
/// the request back.
pub fn one_shot_server(status: u16, body: impl Into<String>) -> (String, mpsc::Receiver<Received>) {
    let body = body.into();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let (received, mut stream) = read_request(stream);

        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let nonce = payment_client::signing::new_nonce();
        let signature = wechatpay_sign(&verify::response_message(&ts, &nonce, body.as_bytes()));
        write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\nWechatpay-Timestamp: {ts}\r\nWechatpay-Nonce: {nonce}\r\n\
             Wechatpay-Signature: {signature}\r\nWechatpay-Serial: {PUBLIC_KEY_ID}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        stream.flush().unwrap();
        let _ = tx.send(received);
    });
    (url, rx)
}

/// A client for a hand-made server at `url`, in public key mode.
pub fn client_for(url: &str) -> Client {
    let config = Config::new(MCHID, MERCHANT_SERIAL, &keys().files.merchant_key_file)
        .with_public_key(PUBLIC_KEY_ID, &keys().files.wechatpay_public_key_file)
        .with_base_url(url)
        .with_timeouts(Duration::from_millis(500), Duration::from_secs(3));
    Client::new(config).unwrap()
}
