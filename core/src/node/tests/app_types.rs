//! Application-defined message types (spec §13.1 `app_type`) and the transport each delivery
//! reports (`Event::Delivered::transport`, seed 000's `TransportResult`).

use super::*;
use crate::capabilities::{Capabilities, Transport};
use crate::ids::AppType;

fn app(name: &str) -> AppType {
    AppType::new(name).unwrap()
}

/// `(app_type, payload)` of every message `name` received, in order.
fn typed_messages_at(p: &Pump, name: &str) -> Vec<(Option<AppType>, Vec<u8>)> {
    p.events_of(name)
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { app_type, payload, .. } => Some((app_type.clone(), payload.clone())),
            _ => None,
        })
        .collect()
}

fn delivered_via(p: &Pump, m: &MessageId) -> Option<Option<Transport>> {
    p.events_of("alice").into_iter().find_map(|e| match e {
        Event::Delivered { id, transport, .. } if id == m => Some(*transport),
        _ => None,
    })
}

#[test]
fn messages_keep_their_application_type_whole_or_chunked() {
    let mut p = via_relay(TransportPreference::WebsocketFirst);
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let typed = SendOptions::typed(app("MODEL_CREATED"));
    let alice = p.node("alice");
    let small = alice.send(now, &id("bob"), b"small".to_vec(), typed.clone()).unwrap();
    let chunked = alice.send(now, &id("bob"), big.clone(), typed).unwrap();
    let plain = alice.send(now, &id("bob"), b"plain".to_vec(), SendOptions::default()).unwrap();
    let status = SendOptions::typed(app("training.progress"));
    alice.send_status(now, &id("bob"), b"50%".to_vec(), status).unwrap();
    p.run();
    p.advance(Duration::from_secs(5));
    let now = p.now;
    let (ok, _) = p.node("alice").broadcast_with(now, b"all", SendOptions::typed(app("NEWS")));
    assert_eq!(ok.len(), 1);
    p.run();
    p.advance(Duration::from_secs(1));
    assert_eq!(
        typed_messages_at(&p, "bob"),
        vec![
            (Some(app("MODEL_CREATED")), b"small".to_vec()),
            (Some(app("MODEL_CREATED")), big),
            (None, b"plain".to_vec()),
            (Some(app("training.progress")), b"50%".to_vec()),
            (Some(app("NEWS")), b"all".to_vec()),
        ]
    );
    for m in [&small, &chunked, &plain] {
        assert_eq!(delivered_via(&p, m), Some(Some(Transport::WebSocket)), "{m:?}");
    }
}

#[test]
fn deliveries_over_http_say_so() {
    let mut p = via_relay(TransportPreference::HttpOnly);
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    let m = p.node("alice").send(now, &id("bob"), b"x".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(3));
    assert_eq!(p.messages_at("bob"), vec![b"x".to_vec()]);
    assert_eq!(delivered_via(&p, &m), Some(Some(Transport::Http)));
}

#[test]
fn a_typed_message_to_a_peer_without_app_types_fails_and_never_leaves() {
    let legacy = NodeConfig {
        capabilities: Capabilities { app_types: false, ..Capabilities::default() },
        ..NodeConfig::default()
    };
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", legacy)]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    let alice = p.node("alice");
    let typed = alice.send(now, &id("bob"), b"t".to_vec(), SendOptions::typed(app("T"))).unwrap();
    let plain = alice.send(now, &id("bob"), b"p".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(2));
    assert_eq!(typed_messages_at(&p, "bob"), vec![(None, b"p".to_vec())]);
    let failed = p.events_of("alice").into_iter().find_map(|e| match e {
        Event::Failed { id, reason, maybe_delivered, .. } if *id == typed => {
            Some((*reason, *maybe_delivered))
        }
        _ => None,
    });
    assert_eq!(failed, Some((FailReason::Rejected, false)));
    assert!(delivered_via(&p, &plain).is_some());
}

proptest::proptest! {
    // Each case moves up to 1.5 MB through a debug-build pump.
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

    /// Whatever the application types and payload sizes, and whether the peer offers the
    /// capability, every message is either delivered once with its type or (typed, to a peer
    /// without it) fails as certainly undelivered.
    #[test]
    fn app_types_arrive_intact_or_fail_cleanly(
        sends in proptest::collection::vec(
            (proptest::option::of("[A-Za-z0-9._-]{1,64}"), 0usize..300_000),
            1..6,
        ),
        bob_offers in proptest::bool::ANY,
    ) {
        let bob = NodeConfig {
            capabilities: Capabilities { app_types: bob_offers, ..Capabilities::default() },
            ..NodeConfig::default()
        };
        let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", bob)]);
        p.node("alice").add_route(id("bob"), Pump::addr("bob"));
        let mut expected = Vec::new();
        for (k, (name, len)) in sends.iter().enumerate() {
            let app_type = name.as_deref().map(app);
            let payload = vec![u8::try_from(k).unwrap(); *len];
            let options = SendOptions { app_type: app_type.clone(), ..SendOptions::default() };
            let now = p.now;
            p.node("alice").send(now, &id("bob"), payload.clone(), options).unwrap();
            if app_type.is_none() || bob_offers {
                expected.push((app_type, payload));
            }
            p.run();
        }
        p.advance(Duration::from_secs(5));
        proptest::prop_assert_eq!(typed_messages_at(&p, "bob"), expected);
        let failed = p.events_of("alice").iter().filter(|e| matches!(e, Event::Failed { .. })).count();
        let typed = sends.iter().filter(|(n, _)| n.is_some()).count();
        proptest::prop_assert_eq!(failed, if bob_offers { 0 } else { typed });
    }
}
