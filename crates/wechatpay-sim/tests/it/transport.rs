//! What the listener does below the API: keep-alive, the framing of
//! answers, the body limit, and a shutdown that lets requests in hand
//! finish.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use wechatpay_sim::Faults;

use crate::support::{authorization, keys, now, start};

/// Writes `request`, half-closes, and returns every byte answered.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may close before reading everything (a refused body).
    let _ = s.write_all(request);
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    // A reset after a refused body counts as "nothing answered".
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn keep_alive_connections_answer_in_order_with_the_old_framing() {
    let sim = start();
    let answer = exchange(
        sim.addr(),
        b"GET /sim/health HTTP/1.1\r\nHost: x\r\n\r\nGET /sim/nothing HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(
        answer,
        "HTTP/1.1 200 OK\r\nServer: wechatpay-sim\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}\
         HTTP/1.1 404 Not Found\r\nServer: wechatpay-sim\r\nContent-Type: application/json\r\nContent-Length: 55\r\n\r\n\
         {\"code\":\"NOT_FOUND\",\"message\":\"no such admin endpoint\"}"
    );
}

#[test]
fn a_204_has_neither_body_nor_length_and_signed_headers_keep_their_order() {
    let sim = start();
    sim.admin().set_state("WIRE000001", "NOTPAY").unwrap();
    let url = "/v3/pay/transactions/out-trade-no/WIRE000001/close";
    let body = r#"{"mchid":"1900000001"}"#;
    let auth = authorization(&keys().merchant, "POST", url, now(), body);
    let request = format!(
        "POST {url} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nAccept: application/json\r\nUser-Agent: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(sim.addr(), request.as_bytes());
    let names: Vec<&str> = answer
        .split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_once(':').unwrap().0)
        .collect();
    assert!(
        answer.starts_with("HTTP/1.1 204 No Content\r\n"),
        "{answer}"
    );
    assert_eq!(
        names,
        [
            "Server",
            "Request-Id",
            "Wechatpay-Timestamp",
            "Wechatpay-Nonce",
            "Wechatpay-Signature",
            "Wechatpay-Serial"
        ],
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\n"), "no body: {answer}");
}

#[test]
fn a_body_above_64_kib_or_chunked_ends_the_connection_unanswered() {
    let sim = start();
    let at_limit = format!(
        "PUT /sim/faults HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n{{}}{}",
        " ".repeat(65534)
    );
    assert!(
        exchange(sim.addr(), at_limit.as_bytes()).starts_with("HTTP/1.1 204 No Content\r\n"),
        "64 KiB is still read"
    );
    let above = format!(
        "PUT /sim/faults HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n{{}}{}",
        " ".repeat(65535)
    );
    assert_eq!(exchange(sim.addr(), above.as_bytes()), "");
    let chunked =
        b"PUT /sim/faults HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    assert_eq!(exchange(sim.addr(), chunked), "");
    let truncated = b"PUT /sim/faults HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}";
    assert_eq!(exchange(sim.addr(), truncated), "");
    // Still serving.
    assert!(sim.admin().stats().is_ok());
}

#[test]
fn shutdown_lets_a_request_in_hand_finish_and_stops_listening() {
    let sim = start();
    sim.admin().set_state("WIRE000002", "NOTPAY").unwrap();
    sim.admin()
        .set_global_faults(&Faults {
            latency_ms: 500,
            ..Faults::default()
        })
        .unwrap();
    let addr = sim.addr();
    let url = "/v3/pay/transactions/out-trade-no/WIRE000002?mchid=1900000001";
    let auth = authorization(&keys().merchant, "GET", url, now(), "");
    let request = format!(
        "GET {url} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nAccept: application/json\r\nUser-Agent: t\r\n\r\n"
    );
    let slow = std::thread::spawn(move || exchange(addr, request.as_bytes()));
    // An idle keep-alive connection does not hold the shutdown up.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /sim/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    sim.shutdown();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    let answer = slow.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(TcpStream::connect(addr).is_err(), "no longer listening");
}
