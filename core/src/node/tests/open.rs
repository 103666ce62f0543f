//! The open trust policy (spec §2.3, §9.1, §19, §21): an entity the trust store does not hold,
//! admitted with the key it proved at `/auth`, is bound to that key on its link or HTTP call,
//! and is answered there or in its mailbox until its token expires.

use super::*;
use crate::handshake::{HandshakeConfig, HandshakeOutput, Initiator};
use crate::wire::Encoding;

/// The envelopes of the answer to `request` among `outputs` (`None`: not answered).
fn answer(outputs: &[Output], request: RequestId) -> Option<Vec<Envelope>> {
    outputs.iter().find_map(|o| match o {
        Output::HttpRespond { request: r, status: 200, body, .. } if *r == request => Some(
            body.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| crate::wire::decode(l, 1 << 20).unwrap())
                .collect(),
        ),
        _ => None,
    })
}

fn kinds(envelopes: &[Envelope]) -> Vec<MessageType> {
    envelopes.iter().map(|e| e.message_type).collect()
}

fn codes(envelopes: &[Envelope]) -> Vec<ErrorCode> {
    envelopes
        .iter()
        .filter(|e| e.message_type == MessageType::Error)
        .filter_map(|e| ErrorBody::parse(&e.payload).ok().map(|b| b.code))
        .collect()
}

/// `who` starts a handshake with `node`, whose key it holds.
fn initiator(who: Identity, node: &str, now: Timestamp) -> (Initiator, Envelope) {
    let mut trust = TrustStore::new(TrustPolicy::Allowlist);
    trust.insert(id(node), ident(node).public_key());
    let mut rng = ChaCha20Rng::seed_from_u64(now.as_unix_millis());
    Initiator::start(Arc::new(who), id(node), &trust, HandshakeConfig::default(), now, &mut rng)
        .unwrap()
}

/// Another key holder using `name`.
fn imposter(name: &str) -> Identity {
    Identity::from_secret_bytes(id(name), &[99; 32])
}

/// A PING from `who`.
fn ping(who: &Identity, now: Timestamp, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let payload = Payload::new(json!({})).unwrap();
    signed_message(who, MessageType::Ping, None, None, payload, now, &mut rng).unwrap().encode()
}

#[test]
fn signed_messages_on_a_link_verify_with_the_key_proven_at_auth() {
    let mut relay = open_node("relay", NodeConfig::default());
    for (n, kind) in [LinkKind::Peers, LinkKind::Events].into_iter().enumerate() {
        let t = T0.saturating_add(Duration::from_secs(n as u64));
        let link = relay.accept_link(t, kind, bearer("alice", t), Encoding::Json).unwrap();
        drain(&mut relay);
        relay.handle_frame(t, link, &ping(&ident("alice"), t, 10 + n as u64));
        assert_eq!(types(&drain(&mut relay)), vec![MessageType::Pong], "{kind:?}");
        // Signed by another key under the same id: refused, and the link stays.
        relay.handle_frame(t, link, &ping(&imposter("alice"), t, 20 + n as u64));
        assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::AuthenticationFailed]);
        assert!(relay.links.contains_key(&link));
    }
    assert!(relay.trust().is_empty(), "nothing was added to the trust store");
}

#[test]
fn an_admitted_http_caller_is_answered_by_post_and_by_long_poll() {
    let mut relay = open_node("relay", NodeConfig::default());
    let post = |relay: &mut Node, now: Timestamp, frame: &[u8]| {
        let call = HttpCall::post(ndjson_line(frame));
        let request = relay.handle_http_request(now, bearer("alice", now), call);
        let out = drain(relay);
        answer(&out, request).expect("a POST is answered at once")
    };
    // A PING by POST: the PONG comes in the answer.
    let got = post(&mut relay, T0, &ping(&ident("alice"), T0, 1));
    assert_eq!(kinds(&got), vec![MessageType::Pong]);
    // A handshake in three POSTs, each answer carrying the node's next step.
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (mut init, m1) = initiator(ident("alice"), "relay", T0);
    let got = post(&mut relay, T0, &m1.encode());
    assert_eq!(kinds(&got), vec![MessageType::HandshakeInitAck]);
    let HandshakeOutput::Send(m3) = init.handle(&got[0], T0, &mut rng).unwrap() else { panic!() };
    let got = post(&mut relay, T0, &m3.encode());
    assert_eq!(kinds(&got), vec![MessageType::SessionEstablished]);
    let HandshakeOutput::Send(m5) = init.handle(&got[0], T0, &mut rng).unwrap() else { panic!() };
    let got = post(&mut relay, T0, &m5.encode());
    assert_eq!(kinds(&got), vec![MessageType::Ready]);
    assert!(matches!(init.handle(&got[0], T0, &mut rng), Ok(HandshakeOutput::Complete { .. })));
    assert!(relay.has_session(&id("alice")));

    // Bob, admitted by his token alone (no session), holds a long poll: the ERROR for his bad
    // line comes in his POST's answer and leaves the poll held (spec §21) ...
    let t1 = T0.saturating_add(Duration::from_secs(1));
    let poll = relay.handle_http_request(t1, bearer("bob", t1), HttpCall::poll(None));
    assert!(drain(&mut relay).is_empty(), "held");
    let call = HttpCall::post(b"not json\n".to_vec());
    let request = relay.handle_http_request(t1, bearer("bob", t1), call);
    let out = drain(&mut relay);
    assert_eq!(answer(&out, poll), None, "the poll stays held");
    let direct = answer(&out, request).expect("a POST is answered at once");
    assert_eq!(codes(&direct), vec![ErrorCode::InvalidMessage]);
    // ... and what alice then sends him through the relay releases it.
    let call = HttpCall::post(ndjson_line(&opaque_for("alice", "bob", 1)));
    relay.handle_http_request(t1, bearer("alice", t1), call);
    let out = drain(&mut relay);
    let held = answer(&out, poll).expect("the held poll is released");
    assert_eq!(held.len(), 1, "alice's frame");
}

#[test]
fn a_link_or_call_bound_to_a_key_cannot_handshake_with_another() {
    let mut relay = open_node("relay", NodeConfig::default());
    let link = relay.accept_link(T0, LinkKind::Peers, bearer("alice", T0), Encoding::Json).unwrap();
    drain(&mut relay);
    let (_, forged) = initiator(imposter("alice"), "relay", T0);
    relay.handle_frame(T0, link, &forged.encode());
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::AuthenticationFailed]);
    assert!(relay.peers.is_empty(), "no state for a refused step 1");
    // The same over HTTP (Bob holds no link: the answer comes in the POST's).
    let t1 = T0.saturating_add(Duration::from_millis(1));
    let (_, forged) = initiator(imposter("bob"), "relay", t1);
    let call = HttpCall::post(ndjson_line(&forged.encode()));
    let request = relay.handle_http_request(t1, bearer("bob", t1), call);
    let got = answer(&drain(&mut relay), request).unwrap();
    assert_eq!(codes(&got), vec![ErrorCode::AuthenticationFailed]);
    assert!(relay.peers.is_empty());
    // With the key it proved, the handshake goes on.
    let t2 = T0.saturating_add(Duration::from_millis(2));
    let (_, init) = initiator(ident("alice"), "relay", t2);
    relay.handle_frame(t2, link, &init.encode());
    assert_eq!(types(&drain(&mut relay)), vec![MessageType::HandshakeInitAck]);
}

#[test]
fn the_trust_store_refuses_a_token_proving_another_key_for_an_entity_it_holds() {
    let mut trust = TrustStore::new(TrustPolicy::Open);
    trust.insert(id("alice"), ident("alice").public_key());
    let rng = ChaCha20Rng::seed_from_u64(1);
    let mut relay = Node::new(NodeConfig::default(), ident("relay"), trust, rng).unwrap();
    let wrong = Bearer::with_key(
        id("alice"),
        imposter("alice").public_key(),
        T0.saturating_add(TOKEN_LIFE),
    );
    assert_eq!(
        relay.accept_link(T0, LinkKind::Peers, wrong.clone(), Encoding::Json),
        Err(ErrorCode::AuthenticationFailed)
    );
    let request = relay.handle_http_request(T0, wrong, HttpCall::poll(None));
    let out = drain(&mut relay);
    assert!(
        matches!(out.as_slice(), [Output::HttpRespond { request: r, status: 403, .. }] if *r == request)
    );
    assert!(relay.accept_link(T0, LinkKind::Peers, bearer("alice", T0), Encoding::Json).is_ok());
}

#[test]
fn clients_unknown_to_an_open_relay_handshake_and_exchange_messages_through_it() {
    for preference in TransportPreference::ALL {
        let config = NodeConfig { preference, ..NodeConfig::default() };
        let mut p = Pump::new(&[("alice", config.clone()), ("bob", config)]);
        p.nodes.insert("relay".to_owned(), open_node("relay", NodeConfig::default()));
        for n in ["alice", "bob"] {
            let now = p.now;
            p.node(n).set_default_route(now, Pump::addr("relay"));
        }
        p.run();
        for n in 0..3u8 {
            let now = p.now;
            p.node("alice").send(now, &id("bob"), vec![b'm', n], SendOptions::default()).unwrap();
            p.run();
        }
        p.advance(Duration::from_secs(3));
        assert_eq!(
            p.messages_at("bob"),
            (0..3u8).map(|n| vec![b'm', n]).collect::<Vec<_>>(),
            "{preference:?}"
        );
        let delivered =
            p.events_of("alice").iter().filter(|e| matches!(e, Event::Delivered { .. })).count();
        assert_eq!(delivered, 3, "{preference:?}");
        let shown = format!("{:?}", p.events);
        assert!(!shown.contains("UnknownRecipient"), "{preference:?}: {shown}");
        assert!(!shown.contains("AuthenticationFailed"), "{preference:?}: {shown}");
        assert!(p.node("relay").trust().is_empty());
    }
}

#[test]
fn admissions_are_bounded_and_end_with_the_token() {
    let config = NodeConfig { max_links: 3, ..NodeConfig::default() };
    let mut relay = open_node("relay", config);
    let alice =
        relay.accept_link(T0, LinkKind::Peers, bearer("alice", T0), Encoding::Json).unwrap();
    // Three HTTP-only entities, whose tokens end 10, 20 and 30 s from now.
    for (n, who) in ["carol", "dave", "erin"].into_iter().enumerate() {
        let until = T0.saturating_add(Duration::from_secs(10 * (n as u64 + 1)));
        let token = Bearer::with_key(id(who), ident(who).public_key(), until);
        relay.handle_http_request(T0, token, HttpCall::poll(None));
    }
    drain(&mut relay);
    assert_eq!(relay.admitted.len(), 3, "at most max_links admissions");
    // Carol's token ended first: hers was forgotten to make room for Erin's.
    relay.handle_frame(T0, alice, &opaque_for("alice", "carol", 1));
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::UnknownRecipient]);
    relay.handle_frame(T0, alice, &opaque_for("alice", "dave", 2));
    let out = drain(&mut relay);
    assert!(error_codes(&out).is_empty());
    assert!(out.iter().any(|o| matches!(o, Output::HttpRespond { body, .. } if !body.is_empty())));
    // Once Dave's token has expired, nothing more waits for him.
    let t = T0.saturating_add(Duration::from_secs(20));
    relay.handle_frame(t, alice, &opaque_for("alice", "dave", 3));
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::UnknownRecipient]);
    relay.handle_frame(t, alice, &opaque_for("alice", "erin", 4));
    assert!(error_codes(&drain(&mut relay)).is_empty());
}
