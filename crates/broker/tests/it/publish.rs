use std::time::{Duration, Instant};

use amiquip::AmqpValue;
use broker::testing::TestVhost;
use broker::topology::{EXCHANGE, TIMEOUT_QUEUE};
use broker::{
    connect, Confirmation, ConfirmedPublisher, ConsumerEvent, Outgoing, QueueType, TimeoutMessage,
    Topology,
};
use chrono::Utc;
use domain::OrderNo;

fn message(no: &str) -> TimeoutMessage {
    let now = Utc::now();
    TimeoutMessage {
        order_no: OrderNo::parse(no).unwrap(),
        created_at: now,
        deadline: now + chrono::Duration::milliseconds(300),
    }
}

#[test]
fn a_300ms_delay_message_comes_out_of_the_timeout_queue_dead_lettered() {
    let vhost = TestVhost::new();
    let mut conn = connect(vhost.url()).unwrap();
    let topo = Topology::single(Duration::from_millis(300), QueueType::Classic).unwrap();
    topo.declare(&mut conn, vhost.url()).unwrap();

    let mut publisher =
        ConfirmedPublisher::open(&mut conn, vhost.url(), Duration::from_secs(5)).unwrap();
    let msg = message("order300ms");
    let sent_at = Instant::now();
    let outcomes = publisher
        .publish_all(&[Outgoing {
            exchange: "",
            queue: &topo.delay_queues()[0].name,
            message: &msg,
        }])
        .unwrap();
    assert_eq!(outcomes, [Confirmation::Confirmed]);

    let lane = conn.consumer_channel(1).unwrap();
    let consumer = lane.consume(TIMEOUT_QUEUE).unwrap();
    let delivery = match consumer.next(Duration::from_secs(10)) {
        ConsumerEvent::Delivery(d) => *d,
        other => panic!("expected a delivery, got {other:?}"),
    };
    let elapsed = sent_at.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250),
        "expired too early: {elapsed:?}"
    );
    assert_eq!(TimeoutMessage::decode(&delivery.body).unwrap(), msg);
    assert_eq!(
        delivery.properties.message_id().as_deref(),
        Some("order300ms")
    );
    assert_eq!(
        delivery.properties.content_type().as_deref(),
        Some("application/json")
    );
    assert_eq!(*delivery.properties.delivery_mode(), Some(2));
    assert!(delivery.properties.timestamp().is_some());
    let headers = delivery.properties.headers().as_ref().expect("headers");
    let Some(AmqpValue::FieldArray(deaths)) = headers.get("x-death") else {
        panic!("no x-death header: {headers:?}");
    };
    let Some(AmqpValue::FieldTable(death)) = deaths.first() else {
        panic!("bad x-death: {deaths:?}")
    };
    assert_eq!(
        death.get("reason"),
        Some(&AmqpValue::LongString("expired".into()))
    );
    assert_eq!(
        death.get("queue"),
        Some(&AmqpValue::LongString("queue.ordercreate".into()))
    );
    assert_eq!(delivery.exchange, EXCHANGE);
    consumer.ack(delivery).unwrap();
    consumer.stop();
    lane.close();
}

#[test]
fn an_unroutable_message_is_reported_returned_not_confirmed() {
    let vhost = TestVhost::new();
    let mut conn = connect(vhost.url()).unwrap();
    let topo = Topology::single(Duration::from_mins(1), QueueType::Classic).unwrap();
    topo.declare(&mut conn, vhost.url()).unwrap();
    let mut publisher =
        ConfirmedPublisher::open(&mut conn, vhost.url(), Duration::from_secs(5)).unwrap();
    let (a, b, c) = (
        message("orderAAA"),
        message("orderBBB"),
        message("orderCCC"),
    );
    let outcomes = publisher
        .publish_all(&[
            Outgoing {
                exchange: "",
                queue: "queue.ordercreate",
                message: &a,
            },
            Outgoing {
                exchange: "",
                queue: "queue.does-not-exist",
                message: &b,
            },
            Outgoing {
                exchange: "",
                queue: "queue.ordercreate",
                message: &c,
            },
        ])
        .unwrap();
    assert_eq!(outcomes[0], Confirmation::Confirmed);
    assert!(
        matches!(&outcomes[1], Confirmation::Returned(why) if why.contains("NO_ROUTE")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], Confirmation::Confirmed);
    // A second batch on the same channel keeps its own tags straight.
    let again = publisher
        .publish_all(&[Outgoing {
            exchange: "",
            queue: "queue.ordercreate",
            message: &b,
        }])
        .unwrap();
    assert_eq!(again, [Confirmation::Confirmed]);
    let depths = topo.depths(&mut conn, vhost.url()).unwrap();
    let delay = depths
        .iter()
        .find(|d| d.name == "queue.ordercreate")
        .unwrap();
    assert_eq!(delay.state, Some((3, 0)));
}

#[test]
fn a_lost_connection_is_a_transient_error() {
    let vhost = TestVhost::new();
    let mut conn = connect(vhost.url()).unwrap();
    let topo = Topology::single(Duration::from_mins(1), QueueType::Classic).unwrap();
    topo.declare(&mut conn, vhost.url()).unwrap();
    let mut publisher =
        ConfirmedPublisher::open(&mut conn, vhost.url(), Duration::from_secs(2)).unwrap();
    vhost.close_all_connections();
    std::thread::sleep(Duration::from_millis(300));
    let m = message("orderLOST");
    let err = publisher
        .publish_all(&[Outgoing {
            exchange: "",
            queue: "queue.ordercreate",
            message: &m,
        }])
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[test]
fn pipelined_sends_settle_each_message_once_and_pair_returns_with_their_message() {
    let vhost = TestVhost::new();
    let mut conn = connect(vhost.url()).unwrap();
    let topo = Topology::single(Duration::from_mins(1), QueueType::Classic).unwrap();
    topo.declare(&mut conn, vhost.url()).unwrap();
    let mut publisher =
        ConfirmedPublisher::open(&mut conn, vhost.url(), Duration::from_secs(5)).unwrap();
    let n = 1_000u64;
    let mut sent = Vec::new();
    let mut settled = std::collections::BTreeMap::new();
    for i in 0..n {
        let m = message(&format!("pipe{i:06}"));
        // Every 100th goes nowhere: returned.
        let queue = if i % 100 == 7 {
            "queue.does-not-exist"
        } else {
            "queue.ordercreate"
        };
        let props = m.properties(Utc::now());
        sent.push((publisher.send("", queue, &m.body(), props).unwrap(), queue));
        for (tag, o) in publisher.settle(false).unwrap() {
            assert!(settled.insert(tag, o).is_none(), "settled twice");
        }
        while publisher.unsettled() >= 64 {
            for (tag, o) in publisher.settle(true).unwrap() {
                assert!(settled.insert(tag, o).is_none(), "settled twice");
            }
        }
    }
    // The same message twice, to the queue then nowhere: the return (which
    // names no tag) goes to the second only.
    let twin = message("pipe999999");
    let body = twin.body();
    let good = publisher
        .send("", "queue.ordercreate", &body, twin.properties(Utc::now()))
        .unwrap();
    let bad = publisher
        .send(
            "",
            "queue.does-not-exist",
            &body,
            twin.properties(Utc::now()),
        )
        .unwrap();
    while publisher.unsettled() > 0 {
        for (tag, o) in publisher.settle(true).unwrap() {
            assert!(settled.insert(tag, o).is_none(), "settled twice");
        }
    }
    assert_eq!(settled.len() as u64, n + 2);
    for (tag, queue) in sent {
        let o = &settled[&tag];
        if queue == "queue.ordercreate" {
            assert_eq!(o, &Confirmation::Confirmed, "tag {tag}");
        } else {
            assert!(matches!(o, Confirmation::Returned(_)), "tag {tag}: {o:?}");
        }
    }
    assert_eq!(settled[&good], Confirmation::Confirmed);
    assert!(matches!(settled[&bad], Confirmation::Returned(_)));
}
