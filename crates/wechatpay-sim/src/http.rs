//! A minimal HTTP/1.1 server: one thread per connection, keep-alive,
//! `Content-Length` bodies only. Enough for ureq and curl talking to the
//! simulator, and nothing more.
//!
//! Why not `tiny_http`: its connection thread pool can leave a freshly accepted
//! keep-alive connection queued behind idle ones (a race in its idle-thread
//! count), so a client with several pooled connections sometimes waited
//! until its timeout. A thread per connection has no such queue.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// How often a waiting connection looks at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// Idle keep-alive connections are closed after this long.
const IDLE_LIMIT: Duration = Duration::from_mins(1);

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The request target exactly as received (path and query).
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Counts live connection threads so that shutdown can wait for them.
#[derive(Debug, Default)]
pub struct Live {
    pub stop: AtomicBool,
    pub connections: AtomicUsize,
}

/// Accepts until `live.stop` is set (and a connection wakes the listener),
/// handing each connection to its own thread.
pub fn accept_loop<H>(listener: &TcpListener, live: &Arc<Live>, handler: &Arc<H>)
where
    H: Fn(&Request) -> Response + Send + Sync + 'static,
{
    for stream in listener.incoming() {
        if live.stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept failed: {e}");
                thread::sleep(POLL);
                continue;
            }
        };
        let live = Arc::clone(live);
        let handler = Arc::clone(handler);
        live.connections.fetch_add(1, Ordering::SeqCst);
        let spawned = thread::Builder::new()
            .name("wechatpay-sim-conn".to_owned())
            .spawn(move || {
                if let Err(e) = serve_connection(&stream, &live, &*handler) {
                    log::debug!("connection ended: {e}");
                }
                let _ = stream.shutdown(Shutdown::Both);
                live.connections.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::error!("cannot start a connection thread: {e}");
        }
    }
}

fn serve_connection<H>(stream: &TcpStream, live: &Live, handler: &H) -> io::Result<()>
where
    H: Fn(&Request) -> Response,
{
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL))?;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some((request, close)) = read_request(stream, &mut buf, live)? else {
            return Ok(());
        };
        let response = handler(&request);
        write_response(stream, &request, &response)?;
        if close {
            return Ok(());
        }
    }
}

/// Reads more bytes into `buf`; `Ok(false)` on a clean end of stream or when
/// asked to stop while waiting.
fn read_more(mut stream: &TcpStream, buf: &mut Vec<u8>, live: &Live) -> io::Result<bool> {
    let mut chunk = [0u8; 8192];
    let started = Instant::now();
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(true);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if live.stop.load(Ordering::SeqCst) || started.elapsed() > IDLE_LIMIT {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// The next request on the connection and whether to close after it.
fn read_request(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    live: &Live,
) -> io::Result<Option<(Request, bool)>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("request head too large"));
        }
        if !read_more(stream, buf, live)? {
            return Ok(None);
        }
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(url), Some(version)) = (first.next(), first.next(), first.next())
    else {
        return Err(invalid("bad request line"));
    };
    let http10 = version == "HTTP/1.0";
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid("bad header line"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut request = Request {
        method: method.to_owned(),
        url: url.to_owned(),
        headers,
        body: Vec::new(),
    };
    if request.header("Transfer-Encoding").is_some() {
        return Err(invalid("chunked request bodies are not supported"));
    }
    let length: usize = match request.header("Content-Length") {
        Some(v) => v.parse().map_err(|_| invalid("bad Content-Length"))?,
        None => 0,
    };
    if length > MAX_BODY {
        return Err(invalid("request body too large"));
    }
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        if !read_more(stream, buf, live)? {
            return Err(invalid("connection closed inside a request body"));
        }
    }
    request.body = buf[body_start..body_start + length].to_vec();
    buf.drain(..body_start + length);
    let connection = request.header("Connection").map(str::to_ascii_lowercase);
    let close = if http10 {
        !connection
            .as_deref()
            .is_some_and(|c| c.contains("keep-alive"))
    } else {
        connection.as_deref().is_some_and(|c| c.contains("close"))
    };
    Ok(Some((request, close)))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn write_response(
    mut stream: &TcpStream,
    request: &Request,
    response: &Response,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nServer: wechatpay-sim\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    // 204 carries neither a body nor Content-Length.
    let send_body = response.status != 204 && response.status >= 200;
    if send_body {
        let _ = write!(out, "Content-Length: {}\r\n", response.body.len());
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if send_body && request.method != "HEAD" {
        bytes.extend_from_slice(&response.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}
