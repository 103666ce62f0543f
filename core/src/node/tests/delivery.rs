//! "Delivered" means handed to the receiving application (spec §13.2, §13.3, §13.6): a frame
//! the receiver only holds out of order completes nothing, and a message given up says whether
//! it may still arrive.

use super::*;

/// Every `Delivered` reported by `from` came after the recipient's application got the message.
fn delivered_only_after_arrival(p: &Pump, from: &str, to: &str) {
    for (i, (node, e)) in p.events.iter().enumerate() {
        let Event::Delivered { id: acked, .. } = e else { continue };
        if node != from {
            continue;
        }
        let arrived = p.events[..i].iter().any(|(n, e)| {
            n == to
                && matches!(e, Event::Message { id, .. } | Event::Request { id, .. } if id == acked)
        });
        assert!(arrived, "{from} reported {acked:?} delivered before {to} had it");
    }
}

fn reported_delivered(p: &Pump, m: &MessageId) -> bool {
    p.events_of("alice").iter().any(|e| matches!(e, Event::Delivered { id, .. } if id == m))
}

#[test]
fn a_message_held_out_of_order_is_not_reported_delivered_until_it_reaches_the_application() {
    let mut p = via_relay(TransportPreference::WebsocketFirst);
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    p.node("alice").send(now, &id("bob"), b"zero".to_vec(), SendOptions::default()).unwrap();
    p.run();
    // "one" is lost on the wire; "two" reaches bob, who holds it behind the hole and
    // acknowledges it selectively.
    p.lose.push(("alice".to_owned(), MessageType::PeerMessage));
    let one = p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default());
    let one = one.unwrap();
    p.run();
    p.lose.clear();
    let two = p.node("alice").send(now, &id("bob"), b"two".to_vec(), SendOptions::default());
    let two = two.unwrap();
    p.run();
    p.advance(Duration::from_millis(100));
    assert_eq!(p.messages_at("bob"), vec![b"zero".to_vec()]);
    assert!(!reported_delivered(&p, &two), "two is only held by bob, not delivered");
    // The retransmission of "one" fills the hole: bob delivers both, then alice reports both.
    p.advance(Duration::from_secs(2));
    assert_eq!(p.messages_at("bob"), vec![b"zero".to_vec(), b"one".to_vec(), b"two".to_vec()]);
    assert!(reported_delivered(&p, &one) && reported_delivered(&p, &two));
    delivered_only_after_arrival(&p, "alice", "bob");
}

#[test]
fn a_message_that_never_left_fails_as_certainly_undelivered() {
    // Bob is unreachable (no route to him at the relay, and the relay refuses WebSocket links):
    // nothing alice accepts ever leaves her node.
    let mut p = via_relay(TransportPreference::WebsocketOnly);
    p.no_ws.push("relay".to_owned());
    let now = p.now;
    let m = p.node("alice").send(now, &id("bob"), b"x".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(2));
    let failed = p.events_of("alice").into_iter().find_map(|e| match e {
        Event::Failed { id, maybe_delivered, .. } if *id == m => Some(*maybe_delivered),
        _ => None,
    });
    assert_eq!(failed, Some(false), "{:?}", p.events_of("alice"));
}

#[test]
fn a_message_sent_and_not_confirmed_fails_as_maybe_delivered() {
    let mut config = NodeConfig::default();
    config.stream.send_timeout = Duration::from_secs(2);
    let mut p = relayed_in_session(NodeConfig::default(), config, NodeConfig::default());
    let now = p.now;
    // Bob's acknowledgements are lost: the message arrives, alice cannot know it did.
    p.lose.push(("bob".to_owned(), MessageType::Ack));
    let m = p.node("alice").send(now, &id("bob"), b"x".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(3));
    assert_eq!(p.messages_at("bob"), vec![b"x".to_vec()]);
    let failed = p.events_of("alice").into_iter().find_map(|e| match e {
        Event::Failed { id, maybe_delivered, .. } if *id == m => Some(*maybe_delivered),
        _ => None,
    });
    assert_eq!(failed, Some(true));
    assert!(!reported_delivered(&p, &m));
}

#[test]
fn outcomes_are_reported_even_while_the_event_queue_is_full() {
    // Alice's application has stopped reading: her queue is full. A driver waiting on the
    // outcome of a send (a confirmed send) or of a request must still hear of it.
    let alice = NodeConfig { max_events: 4, ..NodeConfig::default() };
    let mut p = Pump::new(&[("alice", alice), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").connect(now, &id("bob")).unwrap();
    p.run();
    p.node("alice").set_app_backlog(4);
    let m = p.node("alice").send(now, &id("bob"), b"x".to_vec(), SendOptions::default()).unwrap();
    let r = p.node("alice").request(now, &id("bob"), b"q".to_vec(), Duration::from_secs(1));
    let r = r.unwrap();
    p.run();
    p.advance(Duration::from_secs(2));
    assert!(reported_delivered(&p, &m), "{:?}", p.events_of("alice"));
    let timed_out = p
        .events_of("alice")
        .iter()
        .any(|e| matches!(e, Event::RequestTimedOut { request, .. } if *request == r));
    assert!(timed_out, "{:?}", p.events_of("alice"));
}
