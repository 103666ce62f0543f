//! Binary HTTP bodies (spec §27.7): negotiated per hop by `Accept` and `Content-Type`, refused
//! with `415` by a node that speaks JSON alone, framed safely, and nothing lost or repeated.

use super::*;
use crate::binary_envelope;
use crate::http_body;
use crate::wire::Encoding;

fn http_only(binary_links: bool) -> NodeConfig {
    NodeConfig { preference: TransportPreference::HttpOnly, binary_links, ..NodeConfig::default() }
}

/// `relay`, and Alice and Bob reaching each other through it over HTTP alone, in session.
fn over_http(relay: NodeConfig, alice: bool, bob: bool) -> Pump {
    let mut p = relayed(relay, http_only(alice), http_only(bob));
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    p
}

/// Alice and Bob each send `n` more messages to the other; each side then has every message
/// sent to it, once, in order (`before` of them from earlier rounds).
fn exchange(p: &mut Pump, before: u8, n: u8) {
    for i in before..before + n {
        let now = p.now;
        p.node("alice").send(now, &id("bob"), vec![b'a', i], SendOptions::default()).unwrap();
        p.node("bob").send(now, &id("alice"), vec![b'b', i], SendOptions::default()).unwrap();
        p.run();
    }
    p.advance(Duration::from_secs(5));
    let sent = |c: u8| (0..before + n).map(|i| vec![c, i]).collect::<Vec<_>>();
    assert_eq!(p.messages_at("bob"), sent(b'a'));
    assert_eq!(p.messages_at("alice"), sent(b'b'));
}

/// The answer `relay` gave to `request`: status, body and its encoding.
fn answer(out: &[Output], request: RequestId) -> (u16, Vec<u8>, Encoding) {
    out.iter()
        .find_map(|o| match o {
            Output::HttpRespond { request: r, status, body, encoding } if *r == request => {
                Some((*status, body.clone(), *encoding))
            }
            _ => None,
        })
        .expect("an answer")
}

/// The envelopes of a body.
fn envelopes(body: &[u8], encoding: Encoding) -> Vec<Envelope> {
    http_body::frames(body, encoding, 1 << 20)
        .map(|f| crate::wire::decode(f.unwrap(), 1 << 20).unwrap())
        .collect()
}

fn code_of(env: &Envelope) -> ErrorCode {
    crate::signed::ErrorBody::parse(&env.payload).unwrap().code
}

fn binary(frame: &[u8]) -> Vec<u8> {
    binary_envelope::encode(&Envelope::decode(frame, 1 << 20).unwrap())
}

#[test]
fn two_binary_nodes_exchange_binary_bodies_over_http_alone() {
    let mut p = over_http(NodeConfig::default(), true, true);
    exchange(&mut p, 0, 6);
    // Posts and poll answers both ways (the Pump checks each body's ends agreed on binary).
    assert!(p.binary_bodies >= 12, "{} binary bodies of {}", p.binary_bodies, p.http_bodies);
    assert_eq!(p.unsupported, 0);
}

#[test]
fn a_json_only_relay_is_spoken_ndjson_both_ways() {
    let json_only = NodeConfig { binary_links: false, ..NodeConfig::default() };
    let mut p = over_http(json_only, true, true);
    exchange(&mut p, 0, 4);
    assert!(p.http_bodies > 0);
    assert_eq!(p.binary_bodies, 0, "the relay never answered binary, so nobody posted it");
    assert_eq!(p.unsupported, 0);
}

#[test]
fn a_json_only_client_is_answered_ndjson_by_a_binary_relay() {
    // Alice keeps to JSON: her bodies are NDJSON, Bob's binary; the relay translates.
    let mut p = over_http(NodeConfig::default(), false, true);
    exchange(&mut p, 0, 4);
    assert!(p.binary_bodies > 0, "Bob's side is binary");
    assert_eq!(p.unsupported, 0);
}

#[test]
fn a_relay_that_stops_speaking_binary_gets_the_same_frames_again_in_json() {
    let durable = NodeConfig { durable: true, ..NodeConfig::default() };
    let mut p = over_http(durable.clone(), true, true);
    exchange(&mut p, 0, 3);
    assert!(p.binary_bodies > 0);
    // The relay restarts without binary bodies: Alice's next post is binary (she learned it),
    // gets 415, and goes again in JSON; nothing is lost or delivered twice.
    let json_only = NodeConfig { binary_links: false, ..durable };
    p.crash("relay", json_only);
    exchange(&mut p, 3, 3);
    assert!(p.unsupported > 0, "a binary post met the JSON-only relay");
}

#[test]
fn a_binary_post_to_a_json_only_node_is_refused_with_415_unread() {
    let json_only = NodeConfig { binary_links: false, ..NodeConfig::default() };
    let mut relay = node("relay", json_only);
    let ping = binary(&signed("alice", MessageType::Ping, None, json!({}), T0));
    let body = http_body::encode([&ping[..]], Encoding::Binary);
    let call = HttpCall::PostMessages { body, encoding: Encoding::Binary, accept_binary: true };
    let request = relay.handle_http_request(T0, bearer("alice", T0), call);
    let out = drain(&mut relay);
    assert_eq!(answer(&out, request), (415, Vec::new(), Encoding::Json));
    assert_eq!(relay.stats().http_messages_received, 0, "nothing of it was read");
}

#[test]
fn a_binary_node_answers_binary_only_a_call_that_accepts_it() {
    for accept_binary in [true, false] {
        let mut relay = node("relay", NodeConfig::default());
        let ping = signed("alice", MessageType::Ping, None, json!({}), T0);
        let body = http_body::encode([&binary(&ping)[..]], Encoding::Binary);
        let call = HttpCall::PostMessages { body, encoding: Encoding::Binary, accept_binary };
        let request = relay.handle_http_request(T0, bearer("alice", T0), call);
        let (status, body, encoding) = answer(&drain(&mut relay), request);
        assert_eq!(status, 200);
        let want = if accept_binary { Encoding::Binary } else { Encoding::Json };
        assert_eq!(encoding, want);
        let pong = envelopes(&body, encoding);
        assert_eq!(pong.iter().map(|e| e.message_type).collect::<Vec<_>>(), [MessageType::Pong]);
    }
}

#[test]
fn a_binary_body_is_read_up_to_its_first_framing_error_which_is_answered() {
    let mut relay = node("relay", NodeConfig::default());
    let ping = binary(&signed("alice", MessageType::Ping, None, json!({}), T0));
    let later = T0.saturating_add(Duration::from_millis(1));
    let ping2 = binary(&signed("alice", MessageType::Ping, None, json!({}), later));
    for (tail, code) in [
        (vec![0, 0, 1], ErrorCode::InvalidMessage),
        (vec![0, 0, 0, 0], ErrorCode::InvalidMessage),
        (vec![0, 0, 0, 9, 1, 2], ErrorCode::InvalidMessage),
        (vec![0xff, 0xff, 0xff, 0xff], ErrorCode::InvalidMessage),
    ] {
        let mut relay = node("relay", NodeConfig::default());
        let mut body = http_body::encode([&ping[..]], Encoding::Binary);
        body.extend_from_slice(&tail);
        let call = HttpCall::PostMessages { body, encoding: Encoding::Binary, accept_binary: true };
        let request = relay.handle_http_request(T0, bearer("alice", T0), call);
        let (status, body, encoding) = answer(&drain(&mut relay), request);
        assert_eq!((status, encoding), (200, Encoding::Binary));
        let got = envelopes(&body, encoding);
        let kinds: Vec<MessageType> = got.iter().map(|e| e.message_type).collect();
        assert_eq!(kinds, [MessageType::Pong, MessageType::Error], "{tail:?}");
        assert_eq!(code_of(&got[1]), code);
    }
    // A length over the frame limit within the body: that envelope is refused
    // (MESSAGE_TOO_LARGE) and the next one is read, as with NDJSON lines.
    let max = relay.config.limits.max_frame_bytes;
    let over = vec![binary_envelope::LAYOUT_VERSION; max + 1];
    let body = http_body::encode([&over[..], &ping2[..]], Encoding::Binary);
    let call = HttpCall::PostMessages { body, encoding: Encoding::Binary, accept_binary: true };
    let request = relay.handle_http_request(T0, bearer("alice", T0), call);
    let (_, body, encoding) = answer(&drain(&mut relay), request);
    let got = envelopes(&body, encoding);
    let kinds: Vec<MessageType> = got.iter().map(|e| e.message_type).collect();
    assert_eq!(kinds, [MessageType::Error, MessageType::Pong]);
    assert_eq!(code_of(&got[0]), ErrorCode::MessageTooLarge);
}

#[test]
fn a_json_envelope_in_a_binary_body_is_refused_as_on_a_binary_message() {
    let mut relay = node("relay", NodeConfig::default());
    let ping = signed("alice", MessageType::Ping, None, json!({}), T0);
    let body = http_body::encode([&ping[..]], Encoding::Binary);
    let call = HttpCall::PostMessages { body, encoding: Encoding::Binary, accept_binary: true };
    let request = relay.handle_http_request(T0, bearer("alice", T0), call);
    let (_, body, encoding) = answer(&drain(&mut relay), request);
    let got = envelopes(&body, encoding);
    assert_eq!(got.len(), 1);
    assert_eq!(code_of(&got[0]), ErrorCode::InvalidMessage);
}

#[test]
fn a_lost_binary_answer_goes_back_to_the_mailbox_in_json() {
    let mut relay = node("relay", NodeConfig::default());
    let frame = opaque_for("alice", "bob", 1);
    let request =
        relay.handle_http_request(T0, bearer("alice", T0), HttpCall::post(ndjson_line(&frame)));
    drain(&mut relay);
    let _ = request;
    // Bob's poll is answered in binary; the answer never reaches him.
    let call = HttpCall::Poll { wait: Some(Duration::ZERO), accept_binary: true };
    let poll = relay.handle_http_request(T0, bearer("bob", T0), call);
    let (_, body, encoding) = answer(&drain(&mut relay), poll);
    assert_eq!(encoding, Encoding::Binary);
    assert_eq!(envelopes(&body, encoding), [Envelope::decode(&frame, 1 << 20).unwrap()]);
    relay.http_answer_lost(T0, &id("bob"), &body, encoding);
    drain(&mut relay);
    // His next poll, in NDJSON, has the same envelope, in the JSON the mailbox keeps.
    let poll =
        relay.handle_http_request(T0, bearer("bob", T0), HttpCall::poll(Some(Duration::ZERO)));
    let (_, body, encoding) = answer(&drain(&mut relay), poll);
    assert_eq!((body, encoding), (ndjson_line(&frame), Encoding::Json));
}

/// Three data frames for bob, each with a ciphertext of `len` bytes, in the binary encoding.
fn big_binary_frames(len: usize) -> Vec<super::super::hops::BatchItem> {
    (0..3u8)
        .map(|i| {
            let env = Envelope {
                message_id: MessageId::new(format!("m{i}")).unwrap(),
                message_type: MessageType::PeerMessage,
                version: crate::PROTOCOL_VERSION.to_owned(),
                timestamp: T0,
                seq: u64::from(i) + 1,
                session_id: Some(crate::ids::SessionId::new("sess_x").unwrap()),
                sender_id: id("alice"),
                recipient_id: Some(id("bob")),
                payload: Payload::ciphertext(vec![i; len]),
                nonce: [0; 12],
                signature: None,
                verified: crate::envelope::Verified::NO,
            };
            super::super::hops::BatchItem {
                frame: Arc::from(binary_envelope::encode(&env)),
                owner: None,
            }
        })
        .collect()
}

#[test]
fn a_post_sized_in_binary_is_sized_again_when_its_hop_speaks_json_by_then() {
    // Three frames fit one body in binary but not in JSON (base64 is 4/3 of the bytes): a
    // retry after the hop stopped answering binary must not post them as one JSON body over
    // the limit (a 413 would fail them for good).
    let max_body = (1 << 20) + 64 * 1024;
    let config = NodeConfig { max_http_body_bytes: max_body, ..http_only(true) };
    let mut alice = node("alice", config);
    alice.set_default_route(T0, Pump::addr("relay"));
    drain(&mut alice);
    let items = big_binary_frames(300_000);
    let binary_total: usize = items.iter().map(|i| i.frame.len() + 4).sum();
    assert!(binary_total <= max_body, "one binary body would hold them");
    alice.post(T0, &id("relay"), items, 2);
    alice.finish(T0);
    let posts: Vec<(Vec<u8>, Encoding)> = drain(&mut alice)
        .into_iter()
        .filter_map(|o| match o {
            Output::HttpRequest { method: HttpMethod::Post, body, body_encoding, .. } => {
                Some((body, body_encoding))
            }
            _ => None,
        })
        .collect();
    assert!(posts.len() >= 2, "split into bodies within the limit: {}", posts.len());
    let mut ids = Vec::new();
    for (body, encoding) in &posts {
        assert_eq!(*encoding, Encoding::Json);
        assert!(body.len() <= max_body, "{} > {max_body}", body.len());
        ids.extend(envelopes(body, *encoding).into_iter().map(|e| e.message_id));
    }
    let want: Vec<MessageId> = (0..3).map(|i| MessageId::new(format!("m{i}")).unwrap()).collect();
    assert_eq!(ids, want, "every frame once, in order");
}

#[test]
fn a_hop_reached_at_another_url_is_posted_json_until_it_answers_binary() {
    let mut alice = node("alice", http_only(true));
    alice.set_default_route(T0, Pump::addr("relay"));
    let urls = vec!["http://relay.test".to_owned(), "http://relay2.test".to_owned()];
    alice.set_failover_urls(&id("relay"), urls).unwrap();
    alice.hops.get_mut(&id("relay")).unwrap().binary_bodies = true;
    assert_eq!(alice.hop_body_encoding(&id("relay")), Encoding::Binary);
    for _ in 0..crate::node::hops::FAILOVER_AFTER {
        alice.hop_attempt_failed(&id("relay"));
    }
    let h = alice.hops.get(&id("relay")).unwrap();
    assert_eq!(h.addr.base_url, "http://relay2.test", "failed over");
    assert_eq!(alice.hop_body_encoding(&id("relay")), Encoding::Json);
}
