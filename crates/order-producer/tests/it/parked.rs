//! The parking queue: the pipelined `parked --replay`, and `list`/`take`
//! of one order for the `cases` commands (library calls on a vhost of
//! their own; the CLI listing is in relay.rs).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use broker::testing::TestVhost;
use broker::topology::{PARKED_QUEUE, TIMEOUT_QUEUE};
use broker::{
    AmqpProperties, AmqpValue, Confirmation, ConfirmedPublisher, FieldTable, QueueType, Topology,
};
use domain::OrderNo;
use order_producer::parked::{self, Take, Taken};

/// A message to park: a valid timeout message of `order_no` (or poison),
/// maybe the recheck.
pub(crate) struct Park {
    pub(crate) order_no: Option<String>,
    pub(crate) recheck: bool,
}

pub(crate) fn valid(no: &str) -> Park {
    Park {
        order_no: Some(no.to_owned()),
        recheck: false,
    }
}

fn body_of(no: &str) -> Vec<u8> {
    let now = chrono::Utc::now().to_rfc3339();
    format!(r#"{{"order_no":"{no}","created_at":"{now}","deadline":"{now}"}}"#).into_bytes()
}

fn declared() -> TestVhost {
    let vhost = TestVhost::new();
    declare(&vhost);
    vhost
}

/// Declares the default topology (one 30 min delay queue) in `vhost`.
pub(crate) fn declare(vhost: &TestVhost) {
    let mut conn = broker::connect(vhost.url()).unwrap();
    Topology::single(Duration::from_mins(30), QueueType::Classic)
        .unwrap()
        .declare(&mut conn, vhost.url())
        .unwrap();
    let _ = conn.close();
}

/// Parks every message, in order, as the worker would (park headers),
/// with confirms.
pub(crate) fn park(vhost: &TestVhost, messages: &[Park]) {
    let mut conn = broker::connect(vhost.url()).unwrap();
    let mut publisher =
        ConfirmedPublisher::open(&mut conn, vhost.url(), Duration::from_secs(30)).unwrap();
    for m in messages {
        let mut h = FieldTable::new();
        h.insert("x-ot-attempt".into(), AmqpValue::LongLongInt(8));
        let reason = if m.order_no.is_some() {
            "retries_exhausted"
        } else {
            "poison"
        };
        h.insert("x-ot-reason".into(), AmqpValue::LongString(reason.into()));
        h.insert(
            "x-ot-detail".into(),
            AmqpValue::LongString("gave up after 8 attempts".into()),
        );
        h.insert(
            "x-ot-parked-at".into(),
            AmqpValue::LongString(chrono::Utc::now().to_rfc3339()),
        );
        if m.recheck {
            h.insert("x-ot-recheck".into(), AmqpValue::Boolean(true));
        }
        let (body, props) = match &m.order_no {
            Some(no) => (
                body_of(no),
                AmqpProperties::default()
                    .with_message_id(no.clone())
                    .with_headers(h),
            ),
            None => (
                b"not json".to_vec(),
                AmqpProperties::default().with_headers(h),
            ),
        };
        publisher.send("", PARKED_QUEUE, &body, props).unwrap();
        while publisher.unsettled() >= 500 {
            for (_, o) in publisher.settle(true).unwrap() {
                assert_eq!(o, Confirmation::Confirmed);
            }
        }
    }
    while publisher.unsettled() > 0 {
        for (_, o) in publisher.settle(true).unwrap() {
            assert_eq!(o, Confirmation::Confirmed);
        }
    }
    let _ = publisher.close();
    let _ = conn.close();
}

/// Order numbers of the messages in `queue` (taken out), with the recheck
/// marker, in order; poison as `None`.
fn drained(vhost: &TestVhost, queue: &str) -> Vec<(Option<String>, bool, FieldTable)> {
    vhost
        .drain(queue)
        .into_iter()
        .map(|(body, props)| {
            let no = broker::TimeoutMessage::decode(&body)
                .ok()
                .map(|m| m.order_no.to_string());
            let recheck = broker::headers::is_recheck(&props);
            (no, recheck, props.headers().clone().unwrap_or_default())
        })
        .collect()
}

/// The parked order numbers, in order (poison as `None`), taking nothing.
fn parked_now(vhost: &TestVhost) -> Vec<Option<String>> {
    parked::list(vhost.url(), 100_000)
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.order_no.map(|n| n.to_string()))
        .collect()
}

/// An output that takes its time over each line, so that what interrupts a
/// replay lands part-way.
struct Slow(Vec<u8>);

impl std::io::Write for Slow {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.ends_with(b"\n") {
            std::thread::sleep(Duration::from_micros(300));
        }
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn no(s: &str) -> OrderNo {
    OrderNo::parse(s).unwrap()
}

#[test]
fn a_replay_of_thousands_delivers_each_once_and_leaves_only_poison() {
    let vhost = declared();
    let n = 2_000;
    let mut messages: Vec<Park> = (0..n).map(|i| valid(&format!("replay{i:06}"))).collect();
    // Poison late in the queue, then early: acks with `multiple` must never
    // cover it.
    messages.insert(
        1_500,
        Park {
            order_no: None,
            recheck: false,
        },
    );
    messages.insert(
        700,
        Park {
            order_no: None,
            recheck: false,
        },
    );
    messages.push(Park {
        order_no: Some("replay000001".into()),
        recheck: true,
    });
    park(&vhost, &messages);

    let stop = AtomicBool::new(false);
    let mut out = Vec::new();
    let report = parked::parked(vhost.url(), true, 100_000, &stop, &mut out).unwrap();
    assert_eq!(report.listed, n + 3);
    assert_eq!(report.replayed, n + 1);
    assert_eq!(report.poison, 2);
    assert!(!report.stopped);

    assert_eq!(
        parked_now(&vhost),
        vec![None, None],
        "poison stays, nothing else"
    );
    let got = drained(&vhost, TIMEOUT_QUEUE);
    assert_eq!(got.len(), n + 1);
    let mut seen: BTreeMap<(String, bool), usize> = BTreeMap::new();
    for (no, recheck, headers) in &got {
        *seen.entry((no.clone().unwrap(), *recheck)).or_default() += 1;
        assert!(
            !headers.contains_key("x-ot-attempt") && !headers.contains_key("x-ot-reason"),
            "per-attempt headers cleared: {headers:?}"
        );
    }
    assert_eq!(seen.len(), n + 1, "each exactly once");
    assert!(seen.values().all(|&c| c == 1));
    assert_eq!(
        seen.get(&("replay000001".into(), true)),
        Some(&1),
        "recheck stays recheck"
    );
    // In their parked order.
    let order: Vec<String> = got
        .iter()
        .filter(|g| !g.1)
        .map(|g| g.0.clone().unwrap())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

#[test]
fn a_replay_stopped_part_way_loses_nothing_and_doubles_nothing() {
    let vhost = declared();
    let n = 3_000;
    let messages: Vec<Park> = (0..n).map(|i| valid(&format!("stop{i:06}"))).collect();
    park(&vhost, &messages);

    // The stop flag goes up while the replay runs (as SIGTERM would).
    let stop = Arc::new(AtomicBool::new(false));
    let raiser = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    // A writer slow enough that the flag lands part-way.
    let mut out = Slow(Vec::new());
    let report = parked::parked(vhost.url(), true, 100_000, &stop, &mut out).unwrap();
    raiser.join().unwrap();
    assert!(report.stopped, "{report:?}");
    assert!(report.replayed > 0 && report.replayed < n, "{report:?}");
    let text = String::from_utf8(out.0).unwrap();
    assert!(text.contains("stopped:"), "{text}");

    let still: Vec<String> = parked_now(&vhost).into_iter().map(Option::unwrap).collect();
    let replayed: Vec<String> = drained(&vhost, TIMEOUT_QUEUE)
        .into_iter()
        .map(|g| g.0.unwrap())
        .collect();
    assert_eq!(replayed.len(), report.replayed);
    assert_eq!(still.len() + replayed.len(), n, "none lost, none doubled");
    let mut all: Vec<String> = replayed.into_iter().chain(still).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n);
}

#[test]
fn a_replay_cut_off_by_the_broker_leaves_every_message_parked_or_delivered() {
    let vhost = declared();
    let n = 10_000;
    let messages: Vec<Park> = (0..n).map(|i| valid(&format!("cut{i:07}"))).collect();
    park(&vhost, &messages);

    let url = vhost.url().clone();
    let replay = std::thread::spawn(move || {
        let stop = AtomicBool::new(false);
        parked::parked(&url, true, 100_000, &stop, &mut Slow(Vec::new()))
    });
    // Cut the connection part-way, as a broker restart or a crash would.
    while vhost.depth(TIMEOUT_QUEUE) < 500 {
        std::thread::sleep(Duration::from_millis(20));
    }
    vhost.close_all_connections();
    let result = replay.join().unwrap();
    assert!(result.is_err(), "the replay was cut off: {result:?}");

    let still: Vec<String> = parked_now(&vhost).into_iter().map(Option::unwrap).collect();
    let replayed: Vec<String> = drained(&vhost, TIMEOUT_QUEUE)
        .into_iter()
        .map(|g| g.0.unwrap())
        .collect();
    assert!(!replayed.is_empty() && !still.is_empty(), "cut part-way");
    let mut all: Vec<String> = replayed.iter().chain(&still).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "none lost");
    // What can double: copies confirmed whose original's ack was cut off,
    // at most one window.
    let doubled = replayed.len() + still.len() - n;
    assert!(doubled <= parked::REPLAY_WINDOW, "{doubled} doubled");
}

#[test]
fn take_replays_or_drops_one_order_and_leaves_the_others_in_order() {
    let vhost = declared();
    park(
        &vhost,
        &[
            valid("takeA001"),
            valid("takeB001"),
            Park {
                order_no: None,
                recheck: false,
            },
            valid("takeC001"),
            Park {
                order_no: Some("takeB001".into()),
                recheck: true,
            },
            valid("takeD001"),
        ],
    );
    let listed = parked::list(vhost.url(), 100).unwrap();
    assert_eq!(listed.waiting, 6);
    let b = &listed.entries[1];
    assert_eq!(b.order_no, Some(no("takeB001")));
    assert_eq!(b.reason, "retries_exhausted");
    assert_eq!(b.detail.as_deref(), Some("gave up after 8 attempts"));
    assert_eq!(b.attempt, Some(8));
    assert!(b.parked_at.is_some());
    assert!(!b.recheck);
    assert!(listed.entries[4].recheck);
    assert_eq!(listed.entries[2].order_no, None);
    assert_eq!(listed.entries[2].body_len, 8);
    let json = serde_json::to_value(&listed).unwrap();
    assert_eq!(json["entries"][1]["order_no"], "takeB001");

    let taken = parked::take(vhost.url(), &no("takeB001"), Take::Replay).unwrap();
    assert_eq!(
        taken,
        Taken {
            replayed: 2,
            dropped: 0
        }
    );
    let got = drained(&vhost, TIMEOUT_QUEUE);
    let got: Vec<(Option<String>, bool)> = got.into_iter().map(|g| (g.0, g.1)).collect();
    assert_eq!(
        got,
        vec![
            (Some("takeB001".into()), false),
            (Some("takeB001".into()), true)
        ]
    );
    assert_eq!(
        parked_now(&vhost),
        vec![
            Some("takeA001".into()),
            None,
            Some("takeC001".into()),
            Some("takeD001".into())
        ]
    );

    let taken = parked::take(vhost.url(), &no("takeC001"), Take::Drop).unwrap();
    assert_eq!(taken.dropped, 1);
    assert_eq!(taken.count(), 1);
    assert_eq!(vhost.depth(TIMEOUT_QUEUE), 0, "a drop sends nothing");
    assert_eq!(
        parked_now(&vhost),
        vec![Some("takeA001".into()), None, Some("takeD001".into())]
    );

    // Twice: the second finds nothing.
    let again = parked::take(vhost.url(), &no("takeC001"), Take::Drop).unwrap();
    assert_eq!(again.count(), 0);
}

#[test]
fn take_of_an_order_with_nothing_parked_changes_nothing() {
    let vhost = declared();
    park(
        &vhost,
        &[
            valid("keepA001"),
            Park {
                order_no: None,
                recheck: false,
            },
            valid("keepB001"),
        ],
    );
    for action in [Take::Replay, Take::Drop] {
        let taken = parked::take(vhost.url(), &no("absent001"), action).unwrap();
        assert_eq!(taken, Taken::default());
    }
    assert_eq!(
        parked_now(&vhost),
        vec![Some("keepA001".into()), None, Some("keepB001".into())]
    );
    assert_eq!(vhost.depth(TIMEOUT_QUEUE), 0);
}

#[test]
fn two_takes_of_one_order_at_once_one_gets_it_all() {
    for round in 0..5 {
        let vhost = declared();
        let mut messages: Vec<Park> = (0..300).map(|i| valid(&format!("other{i:05}"))).collect();
        messages.insert(10, valid("twice001"));
        messages.push(Park {
            order_no: Some("twice001".into()),
            recheck: true,
        });
        park(&vhost, &messages);

        let barrier = Arc::new(Barrier::new(2));
        let takers: Vec<_> = [Take::Replay, Take::Replay]
            .into_iter()
            .map(|action| {
                let (url, barrier) = (vhost.url().clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    parked::take(&url, &no("twice001"), action).unwrap()
                })
            })
            .collect();
        let mut counts: Vec<usize> = takers
            .into_iter()
            .map(|t| t.join().unwrap().count())
            .collect();
        counts.sort_unstable();
        assert_eq!(
            counts,
            vec![0, 2],
            "round {round}: one gets both, the other none"
        );
        assert_eq!(vhost.depth(TIMEOUT_QUEUE), 2);
        assert_eq!(vhost.depth(PARKED_QUEUE), 300);
    }
}

#[test]
fn in_quorum_mode_reading_the_parking_queue_loses_nothing() {
    let vhost = TestVhost::new();
    let mut conn = broker::connect(vhost.url()).unwrap();
    Topology::single(Duration::from_mins(30), QueueType::Quorum)
        .unwrap()
        .declare(&mut conn, vhost.url())
        .unwrap();
    let _ = conn.close();
    park(&vhost, &[valid("quorum001"), valid("quorum002")]);
    // Each read returns the messages (a delivery each in a quorum queue):
    // with no delivery limit on the parking queue, none is ever dropped.
    for _ in 0..30 {
        assert_eq!(parked::list(vhost.url(), 100).unwrap().entries.len(), 2);
    }
    assert_eq!(
        parked::take(vhost.url(), &no("absent001"), Take::Drop)
            .unwrap()
            .count(),
        0
    );
    let stop = AtomicBool::new(false);
    let report = parked::parked(vhost.url(), true, 100, &stop, &mut std::io::sink()).unwrap();
    assert_eq!(report.replayed, 2);
    assert_eq!(vhost.depth(PARKED_QUEUE), 0);
    assert_eq!(vhost.depth(TIMEOUT_QUEUE), 2);
}

#[test]
fn poison_filling_the_prefetch_does_not_end_a_replay_early() {
    let vhost = declared();
    // More poison up front than the broker may push ahead unacked: the
    // pushed stream stalls, and the replay reads on with basic.get.
    let poison = 1_100;
    let mut messages: Vec<Park> = (0..poison)
        .map(|_| Park {
            order_no: None,
            recheck: false,
        })
        .collect();
    messages.extend((0..400).map(|i| valid(&format!("after{i:05}"))));
    park(&vhost, &messages);

    let stop = AtomicBool::new(false);
    let report = parked::parked(vhost.url(), true, 100_000, &stop, &mut std::io::sink()).unwrap();
    assert_eq!(report.poison, poison);
    assert_eq!(report.replayed, 400);
    assert_eq!(vhost.depth(PARKED_QUEUE) as usize, poison, "poison stays");
    let got = drained(&vhost, TIMEOUT_QUEUE);
    assert_eq!(got.len(), 400);
    assert_eq!(got[0].0.as_deref(), Some("after00000"));
}

#[test]
fn sigterm_stops_the_replay_command_cleanly_after_the_window_in_hand() {
    let vhost = declared();
    let n = 20_000;
    let messages: Vec<Park> = (0..n).map(|i| valid(&format!("term{i:07}"))).collect();
    park(&vhost, &messages);
    let out_dir = order_producer::testing::TempDir::new().unwrap();
    let out_path = out_dir.path().join("replay.out");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_order-producer"))
        .args(["parked", "--replay"])
        .env("AMQP_URL", vhost.url().expose_secret())
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = crate::KillOnDrop(child);
    while vhost.depth(TIMEOUT_QUEUE) < 1_000 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut child = child;
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    let out = std::fs::read_to_string(&out_path).unwrap();

    let still = parked_now(&vhost).len();
    let replayed = drained(&vhost, TIMEOUT_QUEUE).len();
    assert!(out.contains("stopped:"), "stopped part-way");
    assert!(still > 0, "stopped part-way");
    assert_eq!(still + replayed, n, "none lost, none doubled");
}

#[test]
fn the_replay_command_sends_back_every_message_without_a_limit() {
    let vhost = declared();
    let messages: Vec<Park> = (0..1_500).map(|i| valid(&format!("all{i:07}"))).collect();
    park(&vhost, &messages);
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_order-producer"))
            .args(args)
            .env("AMQP_URL", vhost.url().expose_secret())
            .output()
            .unwrap()
    };
    // A listing stops at 1,000 by default.
    let listing = run(&["parked"]);
    assert!(listing.status.success());
    let shown = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("all"))
        .count();
    assert_eq!(shown, 1_000);
    // A replay takes them all (the listing gave them back).
    let replay = run(&["parked", "--replay"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(drained(&vhost, TIMEOUT_QUEUE).len(), 1_500);
    assert!(parked_now(&vhost).is_empty());
}
