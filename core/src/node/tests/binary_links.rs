//! Binary links (spec §27): negotiation, frames a relay forwards on their header alone, and
//! translation to JSON for JSON links, NDJSON bodies and mailboxes (binary HTTP bodies:
//! `http_bodies.rs`).

use super::*;
use crate::binary_envelope;
use crate::wire::Encoding;

fn json_only() -> NodeConfig {
    NodeConfig { binary_links: false, ..NodeConfig::default() }
}

/// Alice and Bob each send `n` messages to the other through the relay.
fn exchange(p: &mut Pump, n: u8) {
    for i in 0..n {
        let now = p.now;
        p.node("alice").send(now, &id("bob"), vec![b'a', i], SendOptions::default()).unwrap();
        p.node("bob").send(now, &id("alice"), vec![b'b', i], SendOptions::default()).unwrap();
        p.run();
    }
    p.advance(Duration::from_secs(3));
    let sent = |c: u8| (0..n).map(|i| vec![c, i]).collect::<Vec<_>>();
    assert_eq!(p.messages_at("bob"), sent(b'a'));
    assert_eq!(p.messages_at("alice"), sent(b'b'));
}

/// A session message from Alice to Bob, as a relay sees it: it holds no session to check it by.
fn for_bob(payload: Payload) -> Envelope {
    Envelope {
        message_id: MessageId::new("m1").unwrap(),
        message_type: MessageType::PeerMessage,
        version: crate::PROTOCOL_VERSION.to_owned(),
        timestamp: T0,
        seq: 1,
        session_id: Some(crate::ids::SessionId::new("sess_x").unwrap()),
        sender_id: id("alice"),
        recipient_id: Some(id("bob")),
        payload,
        nonce: [0; 12],
        signature: None,
        verified: crate::envelope::Verified::NO,
    }
}

fn sent_on(outputs: &[Output], on: LinkId) -> Vec<Arc<[u8]>> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Transmit { link, frame } if *link == on => Some(Arc::clone(frame)),
            _ => None,
        })
        .collect()
}

#[test]
fn peerlink_nodes_agree_on_binary_links_and_deliver_over_them() {
    let d = NodeConfig::default;
    let mut p = relayed_in_session(d(), d(), d());
    let before = p.binary_frames;
    exchange(&mut p, 5);
    // Ten messages and their acknowledgements, each way through the relay: at least 20 binary
    // frames on the links (the Pump checks each was on a link that agreed on binary).
    assert!(p.binary_frames - before >= 20, "{} binary frames", p.binary_frames - before);
}

#[test]
fn a_relay_translates_for_a_json_only_node_in_both_directions() {
    let d = NodeConfig::default;
    for (relay, alice, bob) in
        [(d(), d(), json_only()), (d(), json_only(), d()), (json_only(), d(), d())]
    {
        let relay_binary = relay.binary_links;
        let mut p = relayed_in_session(relay, alice, bob);
        exchange(&mut p, 5);
        if relay_binary {
            // One side's link is binary (at least its 5 messages), the other's JSON: the relay
            // translated each frame between them.
            assert!(p.binary_frames >= 5, "{} binary frames", p.binary_frames);
        } else {
            // A relay that keeps to JSON agrees on binary with nobody.
            assert_eq!(p.binary_frames, 0);
        }
        assert!(p.link_frames > p.binary_frames, "JSON frames too");
    }
}

#[test]
fn messages_cross_binary_links_and_http_under_every_preference() {
    for preference in TransportPreference::ALL {
        let mut p = via_relay(preference);
        let now = p.now;
        p.node("bob").connect(now, &id("alice")).unwrap();
        p.run();
        // The Pump checks that every HTTP body it carries is binary only if both ends agreed.
        exchange(&mut p, 4);
        if preference == TransportPreference::HttpOnly {
            // Alice's posts and polls, in binary once the relay's first answer said so.
            assert!(p.binary_bodies > 0, "no binary body of {}", p.http_bodies);
        }
    }
}

#[test]
fn a_binary_frame_on_a_json_link_is_refused() {
    let mut relay = node("relay", NodeConfig::default());
    let link = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Json).unwrap();
    drain(&mut relay);
    let ping = signed("alice", MessageType::Ping, None, json!({}), T0);
    let binary = binary_envelope::encode(&Envelope::decode(&ping, 1 << 20).unwrap());
    relay.handle_binary_frame(T0, link, &binary);
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::InvalidMessage]);
    // The same envelope in JSON is answered.
    relay.handle_frame(T0, link, &ping);
    assert_eq!(types(&drain(&mut relay)), vec![MessageType::Pong]);
}

#[test]
fn a_json_only_node_never_agrees_on_binary_whatever_its_driver_says() {
    let mut relay = node("relay", json_only());
    let link = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Binary).unwrap();
    drain(&mut relay);
    let ping = signed("alice", MessageType::Ping, None, json!({}), T0);
    let binary = binary_envelope::encode(&Envelope::decode(&ping, 1 << 20).unwrap());
    relay.handle_binary_frame(T0, link, &binary);
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::InvalidMessage]);
}

#[test]
fn a_relay_forwards_a_binary_frame_for_another_entity_on_its_header_alone() {
    let mut relay = node("relay", NodeConfig::default());
    let alice = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Binary).unwrap();
    let bob = relay.accept_link(T0, LinkKind::Peers, id("bob"), Encoding::Binary).unwrap();
    drain(&mut relay);
    // 64 KiB of ciphertext the relay cannot check: it goes on byte for byte.
    let frame = binary_envelope::encode(&for_bob(Payload::ciphertext(vec![0xa5; 64 << 10])));
    relay.handle_binary_frame(T0, alice, &frame);
    let out = drain(&mut relay);
    assert_eq!(sent_on(&out, bob).iter().map(|f| f.to_vec()).collect::<Vec<_>>(), vec![frame]);
    // A payload that is not canonical JSON: the header is all the relay reads, so it forwards
    // it to a binary link unchanged, and Bob's node is the one to refuse it.
    let mut broken = binary_envelope::encode(&for_bob(Payload::new(json!({"a": 1})).unwrap()));
    let last = broken.len() - 1;
    assert_eq!(broken[last], b'}');
    broken[last] = b']';
    assert!(binary_envelope::decode(&broken, 1 << 20).is_err());
    relay.handle_binary_frame(T0, alice, &broken);
    let out = drain(&mut relay);
    assert_eq!(sent_on(&out, bob).iter().map(|f| f.to_vec()).collect::<Vec<_>>(), vec![broken]);
    assert!(error_codes(&out).is_empty());
}

#[test]
fn a_binary_frame_bound_for_a_json_link_is_translated_or_refused_to_its_sender() {
    let mut relay = node("relay", NodeConfig::default());
    let alice = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Binary).unwrap();
    let bob = relay.accept_link(T0, LinkKind::Peers, id("bob"), Encoding::Json).unwrap();
    drain(&mut relay);
    let env = for_bob(Payload::ciphertext(vec![1, 2, 3, b'\n']));
    relay.handle_binary_frame(T0, alice, &binary_envelope::encode(&env));
    let out = drain(&mut relay);
    // Bob gets the JSON form: the same envelope, the same canonical bytes.
    assert_eq!(
        sent_on(&out, bob).iter().map(|f| f.to_vec()).collect::<Vec<_>>(),
        vec![env.encode()]
    );
    // A frame that does not decode cannot be translated: Alice hears why, Bob gets nothing.
    let mut broken = binary_envelope::encode(&for_bob(Payload::new(json!({"a": 1})).unwrap()));
    let last = broken.len() - 1;
    broken[last] = b']';
    relay.handle_binary_frame(T0, alice, &broken);
    let out = drain(&mut relay);
    assert!(sent_on(&out, bob).is_empty());
    assert_eq!(error_codes(&out), vec![ErrorCode::InvalidMessage]);
    assert_eq!(sent_on(&out, alice).len(), 1, "the answer goes back to Alice");
}

#[test]
fn a_binary_frame_still_cannot_claim_another_sender() {
    let mut relay = node("relay", NodeConfig::default());
    let link = relay.accept_link(T0, LinkKind::Peers, id("carol"), Encoding::Binary).unwrap();
    drain(&mut relay);
    // Carol's link, Alice's name: refused on the header alone, and the link is closed.
    relay.handle_binary_frame(
        T0,
        link,
        &binary_envelope::encode(&for_bob(Payload::ciphertext(vec![7]))),
    );
    let out = drain(&mut relay);
    assert_eq!(error_codes(&out), vec![ErrorCode::AuthenticationFailed]);
    assert!(out.iter().any(|o| matches!(o, Output::CloseLink { link: l, .. } if *l == link)));
}

#[test]
fn a_mailbox_keeps_the_json_form_of_a_binary_frame() {
    let mut relay = node("relay", NodeConfig::default());
    let alice = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Binary).unwrap();
    drain(&mut relay);
    // Bob is offline: the frame waits in his mailbox, and his poll gets it as NDJSON.
    let env = for_bob(Payload::ciphertext(vec![9; 100]));
    relay.handle_binary_frame(T0, alice, &binary_envelope::encode(&env));
    assert!(error_codes(&drain(&mut relay)).is_empty());
    let call = HttpCall::poll(Some(Duration::ZERO));
    relay.handle_input(T0, Input::HttpCall { who: bearer("bob", T0), call }).unwrap();
    let body = drain(&mut relay)
        .into_iter()
        .find_map(|o| match o {
            Output::HttpRespond { body, .. } => Some(body),
            _ => None,
        })
        .unwrap();
    assert_eq!(body, ndjson_line(&env.encode()));
}

#[test]
fn the_opcode_decides_the_encoding_whatever_the_first_byte() {
    let mut relay = node("relay", NodeConfig::default());
    let json_link = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Json).unwrap();
    let binary_link = relay.accept_link(T0, LinkKind::Peers, id("bob"), Encoding::Binary).unwrap();
    drain(&mut relay);
    let ping = signed("alice", MessageType::Ping, None, json!({}), T0);
    // JSON in a binary message, on a JSON link: refused, however valid the JSON.
    relay.handle_binary_frame(T0, json_link, &ping);
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::InvalidMessage]);
    // On a binary link: a binary message must hold a binary envelope, a text message JSON.
    let bob_ping = signed("bob", MessageType::Ping, None, json!({}), T0);
    relay.handle_binary_frame(T0, binary_link, &bob_ping);
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::InvalidMessage]);
    let as_binary = binary_envelope::encode(&Envelope::decode(&bob_ping, 1 << 20).unwrap());
    relay.handle_frame(T0, binary_link, &as_binary);
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::InvalidMessage]);
    // Each in its own kind of message is answered.
    relay.handle_binary_frame(T0, binary_link, &as_binary);
    assert_eq!(types(&drain(&mut relay)), vec![MessageType::Pong]);
    let later = signed(
        "bob",
        MessageType::Ping,
        None,
        json!({}),
        T0.saturating_add(Duration::from_millis(1)),
    );
    relay.handle_frame(T0, binary_link, &later);
    assert_eq!(types(&drain(&mut relay)), vec![MessageType::Pong]);
}

#[test]
fn an_error_in_a_binary_message_on_a_json_link_gets_no_error_back() {
    let mut relay = node("relay", NodeConfig::default());
    let link = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Json).unwrap();
    drain(&mut relay);
    let error = crate::signed::error_message(
        &ident("alice"),
        None,
        None,
        ErrorCode::Timeout,
        None,
        T0,
        &mut ChaCha20Rng::seed_from_u64(5),
    );
    relay.handle_binary_frame(T0, link, &binary_envelope::encode(&error));
    assert!(frames(&drain(&mut relay)).is_empty(), "never an ERROR for an ERROR");
}

#[test]
fn an_ndjson_body_carries_json_only() {
    let mut relay = node("relay", NodeConfig::default());
    let ping = signed("alice", MessageType::Ping, None, json!({}), T0);
    let binary = binary_envelope::encode(&Envelope::decode(&ping, 1 << 20).unwrap());
    let call = HttpCall::post(ndjson_line(&binary));
    relay.handle_input(T0, Input::HttpCall { who: bearer("alice", T0), call }).unwrap();
    let body = drain(&mut relay)
        .into_iter()
        .find_map(|o| match o {
            Output::HttpRespond { body, .. } => Some(body),
            _ => None,
        })
        .unwrap();
    // The binary frame may hold line breaks: each piece is a line, and each is refused.
    let codes: Vec<ErrorCode> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| Envelope::decode(l, 1 << 20).unwrap())
        .map(|e| crate::signed::ErrorBody::parse(&e.payload).unwrap().code)
        .collect();
    assert!(!codes.is_empty());
    assert!(codes.iter().all(|c| *c == ErrorCode::InvalidMessage), "{codes:?}");
}

#[test]
fn a_binary_frame_whose_payload_does_not_decode_is_answered_to_its_sender() {
    // What a recipient does with a frame a relay forwarded on its header alone: the answer
    // names the message and is addressed to its sender, so it reaches the sender through the
    // relay as a relay's own answer would have (spec §27.4).
    let mut bob = node("bob", NodeConfig::default());
    let link = bob.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Binary).unwrap();
    drain(&mut bob);
    let mut broken = binary_envelope::encode(&for_bob(Payload::new(json!({"a": 1})).unwrap()));
    let last = broken.len() - 1;
    broken[last] = b']';
    bob.handle_binary_frame(T0, link, &broken);
    let errors: Vec<Envelope> = frames(&drain(&mut bob))
        .iter()
        .filter_map(|f| crate::wire::decode(f, 1 << 20).ok())
        .filter(|e| e.message_type == MessageType::Error)
        .collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].recipient_id, Some(id("alice")));
    let body = crate::signed::ErrorBody::parse(&errors[0].payload).unwrap();
    assert_eq!(body.code, ErrorCode::InvalidMessage);
    assert_eq!(body.in_reply_to, Some(MessageId::new("m1").unwrap()));
}
