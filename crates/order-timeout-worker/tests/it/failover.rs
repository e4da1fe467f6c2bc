//! Several AMQP URLs (the nodes of one cluster): a process connects to the
//! first that answers and, when its node goes away, to the next. The
//! "nodes" here are one real broker reached directly and through a TCP
//! forwarder the test can cut, which is what a stopped node looks like to
//! a client: its connections drop and new ones are refused.

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::testing::{wait_for, KillOnDrop};
use domain::OrderStatus;

use crate::Stack;

/// A TCP forwarder to the broker: a "node" that can be stopped.
struct Node {
    port: u16,
    stopped: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Node {
    fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stopped = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (flag, held, target) = (
            Arc::clone(&stopped),
            Arc::clone(&streams),
            target.to_owned(),
        );
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
                held.lock().unwrap().extend([client, server]);
            }
            // Stopped: the listener goes with this thread (new connections
            // are refused), and every forwarded connection is cut.
            for s in held.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        });
        Self {
            port,
            stopped,
            streams,
        }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        // The accept loop notices within 10 ms; wait for it to cut.
        let cut = wait_for(Duration::from_secs(5), || {
            self.streams.lock().unwrap().is_empty().then_some(())
        });
        assert!(cut.is_some(), "the forwarder did not stop");
    }
}

/// The vhost's URL with another port.
fn via(stack: &Stack, port: u16) -> String {
    stack
        .vhost
        .url()
        .expose_secret()
        .replace("127.0.0.1:5672", &format!("127.0.0.1:{port}"))
}

#[test]
fn a_worker_whose_node_stops_goes_on_with_the_next_and_settles_everything_once() {
    let stack = Stack::new();
    assert!(
        stack.vhost.url().expose_secret().contains("127.0.0.1:5672"),
        "this test forwards to the broker on 127.0.0.1:5672"
    );
    let first = Node::start("127.0.0.1:5672");
    // Node 1: through the forwarder; node 2: the broker itself.
    let urls = format!(
        "{},{}",
        via(&stack, first.port),
        stack.vhost.url().expose_secret()
    );
    let mut worker = KillOnDrop(
        stack
            .worker_command(&["--worker-concurrency", "4"])
            .env("AMQP_URL", &urls)
            .env("AMQP_NODE_ORDER", "listed")
            .env("WORKER_RECHECK_AFTER", "1h")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    stack.wait_consuming(Duration::from_secs(20));
    let before: Vec<_> = (0..5).map(|_| stack.order()).collect();
    stack.relay();
    for no in &before {
        assert_eq!(
            stack.wait_settled(no, Duration::from_secs(20)),
            OrderStatus::Closed
        );
    }

    // Node 1 stops: the worker's connection drops, node 1 refuses, node 2
    // answers.
    first.stop();
    let after: Vec<_> = (0..5).map(|_| stack.order()).collect();
    stack.relay();
    for no in &after {
        assert_eq!(
            stack.wait_settled(no, Duration::from_secs(30)),
            OrderStatus::Closed,
            "{no} not settled after the failover"
        );
    }
    stack.assert_conserved();
    // Each order closed once: one close event each.
    let mut conn = stack.db.conn();
    for no in before.iter().chain(&after) {
        let events = domain::order_events(&mut conn, no).unwrap();
        let closes = events.iter().filter(|e| e.kind == "closed").count();
        assert_eq!(closes, 1, "{no}: {events:?}");
    }

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let status = wait_for(Duration::from_secs(20), || worker.try_wait().unwrap());
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let mut log = String::new();
    let _ = worker.stderr.take().unwrap().read_to_string(&mut log);
    assert!(log.contains("did not answer"), "{log}");
    assert!(
        log.contains(&format!("connected to {}", stack.vhost.url())),
        "{log}"
    );
    assert!(!log.contains(":guest@"), "a password in the log: {log}");
}

#[test]
fn every_command_takes_several_urls_and_skips_a_node_that_is_down() {
    let stack = Stack::new();
    // Nothing listens on port 1: a node that is down, listed first.
    let urls = format!("{},{}", via(&stack, 1), stack.vhost.url().expose_secret());
    let producer = |args: &[&str]| {
        let mut argv = vec![
            "order-producer",
            "--database-url",
            stack.db.url().expose_secret(),
            "--amqp-url",
            &urls,
            "--amqp-node-order",
            "listed",
            "--delay-ttl-ms",
            "300",
            "--retry-delays",
            "100ms,200ms,400ms",
        ];
        argv.extend_from_slice(args);
        let cli = service::cli::try_parse_from::<order_producer::Cli>(argv).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        order_producer::run(&cli, &stop).unwrap()
    };
    let _ = producer(&["declare"]);
    let orders: Vec<_> = (0..3).map(|_| stack.order()).collect();
    let _ = producer(&["relay", "--once"]);
    assert_eq!(domain::unpublished_count(&mut stack.db.conn()).unwrap(), 0);
    assert_eq!(stack.depth("queue.ordercreate"), 3);
    let url = broker::AmqpUrl::new(urls.clone()).with_order(broker::NodeOrder::Listed);
    let report =
        order_producer::status::Report::gather(&mut stack.db.conn(), &url, &stack.topology)
            .unwrap();
    assert!(report.ok, "{:?}", report.snapshot);
    assert_eq!(report.snapshot.broker_error, None);

    // The worker binary: `settle` and the consumer take the list from the
    // environment (once the order is due).
    std::thread::sleep(crate::WINDOW + Duration::from_millis(100));
    let settled = stack
        .worker_command(&["settle", orders[0].as_str()])
        .env("AMQP_URL", &urls)
        .output()
        .unwrap();
    assert!(
        settled.status.success(),
        "{}",
        String::from_utf8_lossy(&settled.stderr)
    );
    let log = String::from_utf8_lossy(&settled.stderr);
    assert!(!log.contains(":guest@"), "a password in the log: {log}");
}
