//! Forgetting idle peers (spec §15.5): what is forgotten, when, what keeps a peer, and that
//! nothing is lost or delivered twice across it.

use super::*;

/// A node that forgets peers idle for 5 s; its messages time out after 2 s (less, as required).
fn forgetful() -> NodeConfig {
    let mut c = NodeConfig { peer_idle_timeout: Duration::from_secs(5), ..NodeConfig::default() };
    c.stream.send_timeout = Duration::from_secs(2);
    c
}

/// A relay and the named clients, each with its configuration, reachable through the relay.
fn clients_of_relay(clients: &[(&str, NodeConfig)]) -> Pump {
    let mut nodes = vec![("relay", NodeConfig::default())];
    nodes.extend(clients.iter().cloned());
    let mut p = Pump::new(&nodes);
    for (n, _) in clients {
        let now = p.now;
        p.node(n).set_default_route(now, Pump::addr("relay"));
    }
    p.run();
    p
}

/// Alice and Bob, forgetful, after Alice sent Bob "one" on a link of her own to him.
fn alice_sent_bob_one_directly() -> Pump {
    let mut p = Pump::new(&[("alice", forgetful()), ("bob", forgetful())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p
}

/// Whether `who` holds state for `peer`.
fn knows(p: &mut Pump, who: &str, peer: &str) -> bool {
    p.node(who).peers.contains_key(&id(peer))
}

/// Whether every peer of `node` that may be forgotten has its idle deadline after `now` (once
/// timers due at `now` have run: the idle deadline is never missed).
fn no_idle_peer_left(node: &Node, now: Timestamp) -> bool {
    node.peers
        .iter()
        .all(|(peer, p)| !node.may_forget(peer, p) || p.idle_deadline(&node.config) > now)
}

#[test]
fn peer_idle_timeout_must_exceed_the_send_timeout() {
    assert!(NodeConfig::default().validate().is_ok());
    assert!(forgetful().validate().is_ok());
    let equal = NodeConfig { peer_idle_timeout: Duration::from_secs(60), ..NodeConfig::default() };
    assert!(matches!(equal.validate(), Err(UsageError::InvalidConfig(_))));
    let mut shorter = forgetful();
    shorter.stream.send_timeout = Duration::from_secs(30);
    assert!(shorter.validate().is_err());
}

#[test]
fn an_idle_peer_is_forgotten_so_max_peers_bounds_active_peers_only() {
    let alice = NodeConfig { max_peers: 1, ..forgetful() };
    let mut p = clients_of_relay(&[
        ("alice", alice),
        ("bob", NodeConfig::default()),
        ("carol", NodeConfig::default()),
    ]);
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"to bob".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    assert_eq!(p.messages_at("bob"), vec![b"to bob".to_vec()]);
    let now = p.now;
    let early =
        p.node("alice").send(now, &id("carol"), b"to carol".to_vec(), SendOptions::default());
    assert_eq!(early, Err(SendError::LimitReached("max_peers")), "bob is still active");
    // Bob has been silent for the idle timeout: his state goes, and carol takes his place.
    p.advance(Duration::from_secs(5));
    assert!(!knows(&mut p, "alice", "bob"));
    assert_eq!(p.node("alice").stats().peers_forgotten, 1);
    assert!(p.node("alice").poll_timeout().is_none_or(|t| t > p.now), "no timer left behind");
    let now = p.now;
    p.node("alice").send(now, &id("carol"), b"to carol".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    assert!(p.node("alice").has_session(&id("carol")));
    assert_eq!(p.messages_at("carol"), vec![b"to carol".to_vec()]);
    assert!(!p.events_of("alice").iter().any(|e| matches!(e, Event::Failed { .. })));
}

#[test]
fn a_forgotten_peer_is_answered_session_not_found_and_nothing_arrives_twice() {
    // Bob forgets after 5 s; alice keeps her state. Both give messages up after 2 s.
    let alice = NodeConfig { peer_idle_timeout: Duration::from_secs(600), ..forgetful() };
    let mut p = clients_of_relay(&[("alice", alice), ("bob", forgetful())]);
    // Bob's acknowledgements are lost at first: "one" is delivered, re-sent (a duplicate for
    // bob), and given up by alice: reported failed although delivered, as §13.6 allows.
    p.lose.push(("bob".to_owned(), MessageType::Ack));
    let now = p.now;
    let one =
        p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_millis(1500));
    p.lose.clear();
    p.advance(Duration::from_secs(1));
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec()]);
    let failed = |p: &Pump, m: &MessageId| {
        p.events_of("alice").iter().any(|e| matches!(e, Event::Failed { id, .. } if id == m))
    };
    assert!(failed(&p, &one));
    // Bob forgets alice; alice still holds the session.
    p.advance(Duration::from_secs(6));
    assert!(!knows(&mut p, "bob", "alice"));
    assert_eq!(p.node("bob").stats().peers_forgotten, 1);
    assert!(p.node("alice").has_session(&id("bob")));
    // Alice writes under the old session: SESSION_NOT_FOUND, a new handshake, and what was
    // unacknowledged is re-sent under the new session, delivered once.
    let now = p.now;
    let mut later = Vec::new();
    for m in [b"two".to_vec(), b"three".to_vec()] {
        later.push(p.node("alice").send(now, &id("bob"), m, SendOptions::default()).unwrap());
    }
    p.run();
    p.advance(Duration::from_secs(1));
    let lost = p
        .events_of("alice")
        .iter()
        .filter(|e| matches!(e, Event::SessionLost { reason: ErrorCode::SessionNotFound, .. }))
        .count();
    assert_eq!(lost, 1);
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
    for m in &later {
        assert!(
            p.events_of("alice")
                .iter()
                .any(|e| matches!(e, Event::Delivered { id, .. } if id == m))
        );
        assert!(!failed(&p, m));
    }
    // Bob forgets again and writes first: new state, a new epoch, delivered once.
    p.advance(Duration::from_secs(6));
    assert!(!knows(&mut p, "bob", "alice"));
    assert_eq!(p.node("bob").stats().peers_forgotten, 2);
    let now = p.now;
    p.node("bob").send(now, &id("alice"), b"four".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    assert_eq!(p.messages_at("alice"), vec![b"four".to_vec()]);
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
}

#[test]
fn a_pending_request_keeps_both_peers_until_it_is_answered() {
    let mut p = clients_of_relay(&[("alice", forgetful()), ("bob", forgetful())]);
    let now = p.now;
    let hour = Duration::from_secs(3600);
    let request = p.node("alice").request(now, &id("bob"), b"work".to_vec(), hour).unwrap();
    p.run();
    p.advance(Duration::from_secs(30));
    assert!(
        p.events_of("bob").iter().any(|e| matches!(e, Event::Request { id, .. } if *id == request))
    );
    assert!(knows(&mut p, "alice", "bob"), "alice waits for the response");
    assert!(knows(&mut p, "bob", "alice"), "bob has not answered yet");
    let now = p.now;
    p.node("bob").respond(now, &id("alice"), &request, b"done".to_vec()).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    assert!(p.events_of("alice").iter().any(
        |e| matches!(e, Event::Response { request: r, payload, .. } if *r == request && payload == b"done")
    ));
    p.advance(Duration::from_secs(6));
    assert!(!knows(&mut p, "alice", "bob") && !knows(&mut p, "bob", "alice"));
}

#[test]
fn directly_linked_peers_are_kept_while_their_link_is_up() {
    let mut p = alice_sent_bob_one_directly();
    p.advance(Duration::from_secs(20));
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec()]);
    assert!(knows(&mut p, "alice", "bob"), "alice holds a link to bob as her next hop");
    assert!(knows(&mut p, "bob", "alice"), "bob holds a link accepted from alice");
    // Once the link is gone, both become idle from that moment.
    let now = p.now;
    p.node("alice").disconnect(now, &id("bob"));
    p.run();
    assert_eq!(p.node("bob").link_count(), 0);
    p.advance(Duration::from_secs(4));
    assert!(knows(&mut p, "alice", "bob") && knows(&mut p, "bob", "alice"));
    p.advance(Duration::from_secs(2));
    assert!(!knows(&mut p, "alice", "bob") && !knows(&mut p, "bob", "alice"));
}

#[test]
fn frames_buffered_out_of_order_keep_the_receiver_until_they_are_released() {
    let mut p = clients_of_relay(&[("alice", forgetful()), ("bob", forgetful())]);
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"zero".to_vec(), SendOptions::default()).unwrap();
    p.run();
    // "one" is lost; the empty message after it is buffered by bob and acknowledged selectively:
    // bob holds it but has not delivered it, so alice does not report it delivered.
    p.lose.push(("alice".to_owned(), MessageType::PeerMessage));
    let one =
        p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.lose.clear();
    let empty = p.node("alice").send(now, &id("bob"), Vec::new(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_millis(100));
    let delivered = |p: &Pump, m: &MessageId| {
        p.events_of("alice").iter().any(|e| matches!(e, Event::Delivered { id, .. } if id == m))
    };
    assert!(!delivered(&p, &empty));
    assert_eq!(p.messages_at("bob"), vec![b"zero".to_vec()]);
    // Alice gives both up (the send timeout); her `forward` (and everything else of hers) is
    // lost for a while. Both were sent, so both may still be delivered.
    p.lose.push(("alice".to_owned(), MessageType::PeerMessage));
    p.lose.push(("alice".to_owned(), MessageType::Ack));
    p.advance(Duration::from_secs(30));
    let failed = |p: &Pump, m: &MessageId| {
        p.events_of("alice")
            .iter()
            .any(|e| matches!(e, Event::Failed { id, maybe_delivered: true, .. } if id == m))
    };
    assert!(failed(&p, &one) && failed(&p, &empty));
    assert!(!delivered(&p, &empty));
    assert!(knows(&mut p, "bob", "alice"), "bob holds a frame that may still be delivered");
    // The forward gets through: bob delivers the empty message, once, after alice reported it
    // failed with `maybe_delivered` (spec §13.6 allows exactly this).
    p.lose.clear();
    p.advance(Duration::from_secs(2));
    assert_eq!(p.messages_at("bob"), vec![b"zero".to_vec(), Vec::new()]);
    p.advance(Duration::from_secs(6));
    assert!(!knows(&mut p, "alice", "bob") && !knows(&mut p, "bob", "alice"));
    assert_eq!(p.messages_at("bob"), vec![b"zero".to_vec(), Vec::new()]);
}

#[test]
fn each_obligation_keeps_a_peer_however_long_it_was_silent() {
    use crate::stream::{DataHeader, FrameSpec, InFrame, OutgoingMessage, StreamConfig};
    fn message(name: &str) -> OutgoingMessage {
        let id = MessageId::new(name).unwrap();
        let frame = FrameSpec {
            message_type: MessageType::PeerMessage,
            message_id: id.clone(),
            reply_to: None,
            app_type: None,
            chunk: None,
            body: b"x".to_vec(),
        };
        OutgoingMessage { id, frames: vec![frame] }
    }
    type Hold = fn(&mut PeerState, Timestamp);
    let cases: [(&str, Option<Hold>); 10] = [
        ("nothing", None),
        (
            "a message waiting for acknowledgement",
            Some(|s, now| s.send.push(message("m"), now, &StreamConfig::default()).unwrap()),
        ),
        (
            "a forward owed",
            Some(|s, now| {
                s.send.push(message("m"), now, &StreamConfig::default()).unwrap();
                assert!(s.send.fail(&MessageId::new("m").unwrap()).is_some());
            }),
        ),
        (
            "an empty frame buffered out of order",
            Some(|s, _| {
                let header = DataHeader {
                    epoch: 77,
                    no: 3,
                    base: 1,
                    reply_to: None,
                    app_type: None,
                    chunk: None,
                };
                let frame = InFrame {
                    message_type: MessageType::PeerMessage,
                    message_id: MessageId::new("ahead").unwrap(),
                    header,
                    body: Vec::new(),
                };
                let r = s.recv.accept(frame, &StreamConfig::default());
                assert_eq!(r, crate::stream::Received::Buffered);
            }),
        ),
        (
            "a chunked message being reassembled",
            Some(|s, now| {
                let chunk = crate::chunking::Chunk {
                    chunk_id: MessageId::new("big").unwrap(),
                    sequence_number: 0,
                    is_last: false,
                    total_len: 8,
                    data: vec![0; 4],
                };
                assert_eq!(s.reassembly.insert(chunk, now), Ok(None));
            }),
        ),
        (
            "a request sent",
            Some(|s, now| {
                let deadline = now.saturating_add(Duration::from_secs(3600));
                s.requests.insert(MessageId::new("req").unwrap(), deadline);
            }),
        ),
        (
            "a request received",
            Some(|s, _| {
                s.inbound_requests.insert(MessageId::new("req").unwrap());
            }),
        ),
        (
            "a handshake in progress",
            Some(|s, now| {
                let (initiator, _) = crate::handshake::Initiator::start(
                    Arc::new(ident("bob")),
                    id("alice"),
                    &trust_all(&["alice"]),
                    crate::handshake::HandshakeConfig::default(),
                    now,
                    &mut ChaCha20Rng::seed_from_u64(1),
                )
                .unwrap();
                s.initiator = Some(initiator);
            }),
        ),
        (
            "an acknowledgement held",
            Some(|s, now| s.ack_due = Some(now.saturating_add(Duration::from_secs(1)))),
        ),
        ("a connect", Some(|s, _| s.wanted = true)),
    ];
    for (name, hold) in cases {
        let mut p = clients_of_relay(&[("alice", forgetful()), ("bob", forgetful())]);
        let now = p.now;
        p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
        p.run();
        p.advance(Duration::from_secs(1));
        let now = p.now;
        let bob = p.node("bob");
        let state = bob.peers.get_mut(&id("alice")).unwrap();
        assert!(state.session.is_some());
        if let Some(hold) = hold {
            hold(state, now);
        }
        // Silent for an hour.
        state.last_active = now.saturating_sub(Duration::from_secs(3600));
        bob.forget_if_idle(now, &id("alice"));
        assert_eq!(bob.peers.contains_key(&id("alice")), hold.is_some(), "{name}");
        if hold.is_none() {
            assert_eq!(bob.stats().peers_forgotten, 1);
        }
    }
}

#[test]
fn a_peer_idle_when_its_link_goes_is_forgotten_on_the_next_timer() {
    // The idle deadline, already past, is scheduled (not missed) when the last condition
    // clears: here the peer's link goes after an hour without traffic.
    let mut p = alice_sent_bob_one_directly();
    p.advance(Duration::from_secs(1));
    let now = p.now;
    let bob = p.node("bob");
    if let Some(s) = bob.peers.get_mut(&id("alice")) {
        s.last_active = now.saturating_sub(Duration::from_secs(3600));
    }
    bob.reschedule_peer(&id("alice"));
    bob.handle_timeout(now);
    assert!(bob.peers.contains_key(&id("alice")), "bound to a link");
    let link = *bob.bound.get(&id("alice")).unwrap();
    // The link's loss starts a new idle period, so the peer is kept 5 s more.
    bob.link_closed(now, link);
    bob.handle_timeout(now);
    assert!(bob.peers.contains_key(&id("alice")));
    let at = bob.poll_timeout().unwrap();
    assert!(at <= now.saturating_add(Duration::from_secs(5)));
    bob.handle_timeout(now.saturating_add(Duration::from_secs(5)));
    assert!(!bob.peers.contains_key(&id("alice")));
    assert!(no_idle_peer_left(bob, now.saturating_add(Duration::from_secs(5))));
}

#[derive(Debug, Clone)]
enum PairInput {
    /// A message from alice (true) or bob (false).
    Send(bool),
    Advance(u16),
    /// From now on, frames of one side (alice: true) of one kind (data: true, else `ACK`) are
    /// lost.
    Lose(bool, bool),
    Heal,
    /// Alice's (true) or bob's links are cut; they reconnect.
    Cut(bool),
}

fn pair_input() -> impl Strategy<Value = PairInput> {
    prop_oneof![
        4 => any::<bool>().prop_map(PairInput::Send),
        4 => any::<u16>().prop_map(PairInput::Advance),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(a, d)| PairInput::Lose(a, d)),
        1 => Just(PairInput::Heal),
        1 => any::<bool>().prop_map(PairInput::Cut),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Two clients of a relay, both forgetting idle peers after 5 s (messages time out after
    /// 2 s), exchange messages through losses and cuts with silences of up to 20 s: whatever is
    /// forgotten, every message is delivered at most once and in order, every message reported
    /// delivered arrived, each gets an outcome, and no idle peer outlives its deadline.
    #[test]
    fn forgetting_idle_peers_loses_and_duplicates_nothing(
        inputs in prop::collection::vec(pair_input(), 1..40)
    ) {
        let mut p = clients_of_relay(&[("alice", forgetful()), ("bob", forgetful())]);
        let mut sent: Vec<(bool, MessageId, Vec<u8>)> = Vec::new();
        let name = |alice: bool| if alice { "alice" } else { "bob" };
        for (n, input) in inputs.into_iter().enumerate() {
            match input {
                PairInput::Send(from_alice) => {
                    let payload = u32::try_from(n).unwrap().to_be_bytes().to_vec();
                    let now = p.now;
                    let to = id(name(!from_alice));
                    if let Ok(m) = p.node(name(from_alice)).send(now, &to, payload.clone(), SendOptions::default()) {
                        sent.push((from_alice, m, payload));
                    }
                    p.run();
                }
                PairInput::Advance(ms) => {
                    p.advance(Duration::from_millis(u64::from(ms % 20_000)));
                    let now = p.now;
                    for who in ["alice", "bob"] {
                        prop_assert!(no_idle_peer_left(p.node(who), now), "{who} kept an idle peer");
                    }
                }
                PairInput::Lose(alice, data) => {
                    let kind = if data { MessageType::PeerMessage } else { MessageType::Ack };
                    p.lose.push((name(alice).to_owned(), kind));
                }
                PairInput::Heal => p.lose.clear(),
                PairInput::Cut(alice) => {
                    p.cut(name(alice));
                    p.run();
                }
            }
        }
        // Settle: everything outstanding is delivered or given up, and forwards get through.
        p.lose.clear();
        p.advance(Duration::from_secs(90));
        for from_alice in [true, false] {
            let got = p.messages_at(name(!from_alice));
            let order: Vec<u32> =
                got.iter().map(|m| u32::from_be_bytes(m[..4].try_into().unwrap())).collect();
            prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}: twice or out of order");
            for (_, m, payload) in sent.iter().filter(|(a, _, _)| *a == from_alice) {
                let events = p.events_of(name(from_alice));
                let delivered = events.iter().any(|e| matches!(e, Event::Delivered { id, .. } if id == m));
                let failed = events.iter().any(|e| matches!(e, Event::Failed { id, .. } if id == m));
                prop_assert!(delivered != failed, "one outcome for {payload:?}");
                prop_assert!(!delivered || got.contains(payload), "{payload:?} reported delivered");
            }
        }
    }
}

#[test]
fn frames_received_and_messages_sent_are_activity() {
    let mut p = clients_of_relay(&[("alice", forgetful()), ("bob", forgetful())]);
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    let long_ago = T0.saturating_sub(Duration::from_secs(3600));
    for (who, peer) in [("alice", "bob"), ("bob", "alice")] {
        p.node(who).peers.get_mut(&id(peer)).unwrap().last_active = long_ago;
    }
    // Alice's application sends; bob receives the frame and holds his acknowledgement for
    // `ack_delay`, sending nothing yet: both are active now.
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"two".to_vec(), SendOptions::default()).unwrap();
    p.run();
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec(), b"two".to_vec()]);
    assert!(p.node("bob").peers[&id("alice")].ack_due.is_some(), "nothing sent by bob yet");
    assert_eq!(p.node("bob").peers[&id("alice")].last_active, now);
    assert_eq!(p.node("alice").peers[&id("bob")].last_active, now);
    // Sending the acknowledgement, later, is activity too.
    p.node("bob").peers.get_mut(&id("alice")).unwrap().last_active = long_ago;
    p.advance(Duration::from_millis(10));
    assert!(p.node("bob").peers[&id("alice")].ack_due.is_none(), "acknowledged");
    assert!(p.node("bob").peers[&id("alice")].last_active > now);
}

#[test]
fn a_peer_created_by_a_refused_send_is_forgotten_too() {
    // The outbox refuses the message after the peer's state was created: nothing else would
    // ever schedule its timer.
    let mut config = forgetful();
    config.stream.max_outbox_bytes = 1;
    let mut p = clients_of_relay(&[("alice", config), ("bob", NodeConfig::default())]);
    let now = p.now;
    let refused = p.node("alice").send(now, &id("bob"), b"xx".to_vec(), SendOptions::default());
    assert!(matches!(refused, Err(SendError::OutboxFull(_))), "{refused:?}");
    assert!(knows(&mut p, "alice", "bob"));
    p.advance(Duration::from_secs(6));
    assert!(!knows(&mut p, "alice", "bob"));
}

#[test]
fn a_connect_keeps_the_peer_until_a_disconnect_withdraws_it() {
    let mut p = clients_of_relay(&[("alice", forgetful()), ("bob", forgetful())]);
    let now = p.now;
    p.node("alice").connect(now, &id("bob")).unwrap();
    p.run();
    assert!(p.node("alice").has_session(&id("bob")));
    p.advance(Duration::from_secs(30));
    assert!(knows(&mut p, "alice", "bob"), "a connected peer is kept however long it is silent");
    let now = p.now;
    p.node("alice").disconnect(now, &id("bob"));
    p.run();
    p.advance(Duration::from_secs(4));
    assert!(knows(&mut p, "alice", "bob"), "idle time counts from the disconnect");
    p.advance(Duration::from_secs(2));
    assert!(!knows(&mut p, "alice", "bob"), "forgotten once idle after the disconnect");
}
