//! Poison messages are parked with a reason and block nothing.

use std::time::Duration;

use broker::AmqpProperties;
use domain::OrderStatus;

use crate::Stack;

#[test]
fn poison_messages_are_parked_with_the_reason_and_the_rest_flows() {
    let stack = Stack::new();
    let good = stack.order();
    let poison: Vec<(Vec<u8>, &str)> = vec![
        (b"not json at all".to_vec(), "poison message: body is not a timeout message"),
        (br#"{"order":"x"}"#.to_vec(), "poison message: body is not a timeout message"),
        (
            br#"{"order_no":"bad/no","created_at":"2026-11-26T08:00:00Z","deadline":"2026-11-26T08:00:00Z"}"#.to_vec(),
            "poison message: invalid order number",
        ),
        (
            br#"{"order_no":"nosuchorder1","created_at":"2026-11-26T08:00:00Z","deadline":"2026-11-26T08:00:00Z"}"#.to_vec(),
            "unknown order",
        ),
        (vec![b'{'; 10_000], "exceeds the 4096-byte limit"),
    ];
    // Straight into the consumer queue, as if dead-lettered.
    for (body, _) in &poison {
        stack
            .vhost
            .publish_raw("queue.ordertimeout", body, AmqpProperties::default());
    }
    let worker = stack.start(stack.settings());
    stack.relay();
    assert_eq!(
        stack.wait_settled(&good, Duration::from_secs(15)),
        OrderStatus::Closed
    );
    stack.wait_depth(
        "queue.ordertimeout.parked",
        poison.len() as u32,
        Duration::from_secs(15),
    );
    stack.wait_depth("queue.ordertimeout", 0, Duration::from_secs(15));
    worker.stop();
    let parked = stack.drain("queue.ordertimeout.parked");
    assert_eq!(parked.len(), poison.len());
    // Lanes work in parallel: match each poison message to its parked copy.
    for (body, why) in &poison {
        let (_, props) = parked
            .iter()
            .find(|(parked_body, _)| parked_body == body)
            .expect("the body is kept as it was");
        let (reason, detail) = crate::support::reason_of(props);
        let want = if *why == "unknown order" {
            "unknown_order"
        } else {
            "poison"
        };
        assert_eq!(reason, want, "{detail}");
        assert!(detail.contains(why), "{detail:?} should say {why:?}");
        assert!(props
            .headers()
            .as_ref()
            .unwrap()
            .contains_key("x-ot-parked-at"));
    }
    stack.assert_conserved();
}
