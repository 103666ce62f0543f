//! Public-key work handed out ([`Output::Work`]): what waits for it, in what order it is
//! handled, and that the results are those of the work done in place.

use proptest::prelude::*;

use super::*;
use crate::capabilities::Capabilities;
use crate::node::Work;

impl Pump {
    /// Completes held work in the order `pick` chooses (an index into what is still held),
    /// carrying out what each completion gives; then runs the network.
    fn finish_work(&mut self, mut pick: impl FnMut(usize) -> usize) {
        while !self.held_work.is_empty() {
            let i = pick(self.held_work.len()).min(self.held_work.len() - 1);
            let (name, work) = self.held_work.remove(i);
            let now = self.now;
            self.node(&name).complete_work(now, work.run());
            self.run();
        }
    }

    fn held_kinds(&self) -> Vec<String> {
        self.held_work.iter().map(|(_, w)| format!("{w:?}")).collect()
    }
}

/// Alice sends `payload` to Bob, and the data frame is caught on its way (her outputs are
/// carried out, but for it).
fn caught_message(p: &mut Pump, payload: &[u8]) -> Arc<[u8]> {
    let now = p.now;
    p.node("alice").send(now, &id("bob"), payload.to_vec(), SendOptions::default()).unwrap();
    let out = drain(p.node("alice"));
    frames(&out)
        .into_iter()
        .find(|f| {
            crate::wire::decode(f, 1 << 20)
                .is_ok_and(|e| e.message_type == MessageType::PeerMessage)
        })
        .unwrap()
}

/// A relay, and Alice and Bob in session through it, every node holding the work it hands out;
/// Alice has sent `payload` to Bob.
fn sent_with_work_held(payload: &[u8]) -> Pump {
    let d = NodeConfig::default;
    let mut p = relayed_in_session(d(), d(), d());
    p.hold_work = true;
    let now = p.now;
    p.node("alice").send(now, &id("bob"), payload.to_vec(), SendOptions::default()).unwrap();
    p.run();
    p
}

/// Alice sends `n` messages to Bob's own node over her link to it (so Bob answers her INIT
/// from a link), each node holding its work until `finish` completes it.
fn through_held_work(n: u8, mut finish: impl FnMut(&mut Pump)) -> Pump {
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    p.hold_work = true;
    let now = p.now;
    p.node("alice").connect(now, &id("bob")).unwrap();
    p.run();
    finish(&mut p);
    for i in 0..n {
        let now = p.now;
        p.node("alice").send(now, &id("bob"), vec![b'm', i], SendOptions::default()).unwrap();
        p.run();
    }
    finish(&mut p);
    p.advance(Duration::from_secs(3));
    finish(&mut p);
    p.advance(Duration::from_secs(3));
    p
}

#[test]
fn a_handshake_and_signed_messages_wait_for_their_work_and_arrive_in_order() {
    let mut kinds = Vec::new();
    let p = through_held_work(6, |p| {
        kinds.extend(p.held_kinds());
        // The newest first: results come back in any order.
        p.finish_work(|held| held - 1);
    });
    let sent: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'm', i]).collect();
    assert_eq!(p.messages_at("bob"), sent);
    // Bob answered Alice's INIT off his task; every other signed envelope to a node (the
    // handshake's other steps, and messages and acknowledgements under sign_all) was checked
    // off it too.
    assert!(kinds.iter().any(|k| k.contains("accept")), "{kinds:?}");
    assert!(kinds.iter().filter(|k| k.contains("verify")).count() >= 6 + 2, "{kinds:?}");
    let delivered =
        p.events_of("alice").iter().filter(|e| matches!(e, Event::Delivered { .. })).count();
    assert_eq!(delivered, 6);
}

#[test]
fn only_large_envelopes_have_their_signatures_checked_elsewhere_by_default() {
    // The drivers' threshold: Bob checks small signatures himself, large ones elsewhere.
    let d = NodeConfig::default;
    let mut p = relayed_in_session(d(), d(), d());
    let bob = NodeConfig { offload_verify_min_bytes: 16 * 1024, ..p.node("bob").config().clone() };
    p.node("bob").config = bob;
    p.hold_work = true;
    let now = p.now;
    p.node("alice").send(now, &id("bob"), vec![1; 64], SendOptions::default()).unwrap();
    p.run();
    assert!(p.held_work.iter().all(|(n, _)| n != "bob"), "{:?}", p.held_kinds());
    assert_eq!(p.messages_at("bob").len(), 1);
    p.node("alice").send(now, &id("bob"), vec![2; 64 * 1024], SendOptions::default()).unwrap();
    p.run();
    assert!(p.held_work.iter().any(|(n, _)| n == "bob"), "{:?}", p.held_kinds());
    assert_eq!(p.messages_at("bob").len(), 1, "the large one waits for its check");
    p.finish_work(|_| 0);
    assert_eq!(p.messages_at("bob"), vec![vec![1; 64], vec![2; 64 * 1024]]);
}

#[test]
fn nothing_from_a_sender_is_handled_while_its_work_is_out() {
    let d = NodeConfig::default;
    let mut p = relayed_in_session(d(), d(), d());
    p.hold_work = true;
    for i in 0..3u8 {
        let now = p.now;
        p.node("alice").send(now, &id("bob"), vec![i], SendOptions::default()).unwrap();
        p.run();
    }
    // Bob holds the three messages behind the check of the first one's signature.
    assert!(p.messages_at("bob").is_empty());
    assert_eq!(p.node("bob").parking.len(), 3);
    p.finish_work(|_| 0);
    assert_eq!(p.messages_at("bob"), vec![vec![0], vec![1], vec![2]]);
    assert_eq!(p.node("bob").parking.len(), 0);
}

#[test]
fn a_forged_signature_is_refused_with_the_code_it_gets_without_offloading() {
    // The same tampered INIT sent to a node that offloads and to one that does not.
    let codes = [false, true].map(|offload| {
        let config = NodeConfig { offload_work: offload, ..NodeConfig::default() };
        let mut bob = node("bob", config);
        let link = bob.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Json).unwrap();
        drain(&mut bob);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let trust = trust_all(&["alice", "bob"]);
        let (_, mut init) = crate::handshake::Initiator::start(
            Arc::new(ident("alice")),
            id("bob"),
            &trust,
            HandshakeConfig::default(),
            T0,
            &mut rng,
        )
        .unwrap();
        init.nonce[0] ^= 1;
        bob.handle_frame(T0, link, &init.encode());
        let out = drain(&mut bob);
        (error_codes(&out), bob.peers.is_empty())
    });
    assert_eq!(codes[0], codes[1]);
    assert_eq!(codes[0].0, vec![ErrorCode::AuthenticationFailed]);
}

#[test]
fn a_link_sending_faster_than_its_work_returns_is_closed_and_nothing_is_lost() {
    let d = NodeConfig::default;
    let mut p = relayed_in_session(d(), d(), d());
    p.hold_work = true;
    let now = p.now;
    // Catch the frame on its way to Bob, then hand it to him more times than he parks.
    let frame = caught_message(&mut p, b"once");
    let bob_link = p.pairs.keys().find(|(n, _)| n == "bob").map(|(_, l)| *l).unwrap();
    for _ in 0..512 {
        deliver(p.node("bob"), now, bob_link, &frame);
    }
    assert_eq!(p.node("bob").parking.len(), 512);
    assert!(p.node("bob").parking.bytes() >= 512 * frame.len());
    assert_eq!(p.node("bob").stats.parked_dropped, 0);
    deliver(p.node("bob"), now, bob_link, &frame);
    // The 513th found the wait full: dropped, and its link closed, after what waited was
    // handled in place.
    assert_eq!(p.node("bob").parking.len(), 0);
    assert_eq!(p.node("bob").stats.parked_dropped, 1);
    let out = drain(p.node("bob"));
    assert!(
        out.iter().any(|o| matches!(o, Output::CloseLink { link, reason: Some(ErrorCode::RateLimitExceeded) } if *link == bob_link)),
        "the link that overflowed is closed"
    );
    for o in out {
        p.carry("bob", o);
    }
    // What the link delivered before it closed was handled first, in place: the message once.
    assert_eq!(p.node("bob").parking.len(), 0);
    assert_eq!(p.node("bob").parking.bytes(), 0);
    assert_eq!(p.messages_at("bob"), vec![b"once".to_vec()]);
    p.run();
    // The work still out for it comes back to nothing.
    p.finish_work(|_| 0);
    for _ in 0..3 {
        p.advance(Duration::from_secs(3));
        p.finish_work(|_| 0);
    }
    assert_eq!(p.messages_at("bob"), vec![b"once".to_vec()]);
    assert_eq!(p.node("bob").stats.parked_dropped, 1);
}

#[test]
fn what_waits_when_its_link_closes_is_handled_before_the_close() {
    let mut p = sent_with_work_held(b"late");
    assert_eq!(p.node("bob").parking.len(), 1);
    p.cut("bob");
    assert_eq!(p.node("bob").parking.len(), 0);
    p.run();
    assert_eq!(p.messages_at("bob"), vec![b"late".to_vec()], "handled as the link closed");
    p.finish_work(|_| 0);
    assert_eq!(p.node("bob").stats.parked_dropped, 0);
    for _ in 0..3 {
        p.advance(Duration::from_secs(3));
        p.finish_work(|_| 0);
    }
    assert_eq!(p.messages_at("bob"), vec![b"late".to_vec()]);
}

#[test]
fn an_init_answered_elsewhere_is_answered_again_if_the_trust_store_changed_meanwhile() {
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    p.hold_work = true;
    let now = p.now;
    p.node("alice").connect(now, &id("bob")).unwrap();
    p.run();
    assert!(p.held_kinds().iter().any(|k| k.contains("accept")), "{:?}", p.held_kinds());
    // Bob now expects another key for alice: the answer worked out for her key is not used.
    let other = ident("carol").public_key();
    p.node("bob").trust_entity(id("alice"), other);
    p.finish_work(|_| 0);
    p.advance(Duration::from_secs(1));
    p.finish_work(|_| 0);
    assert!(!p.node("bob").has_session(&id("alice")));
    assert!(p.events_of("alice").iter().any(|e| matches!(e, Event::Error { .. })));
}

#[test]
fn work_a_driver_could_not_run_is_done_in_place() {
    let mut p = sent_with_work_held(b"x");
    let (name, work) = p.held_work.remove(0);
    let now = p.now;
    p.node(&name).complete_work(now, crate::node::WorkDone::undone(work.id()));
    p.run();
    p.finish_work(|_| 0);
    assert_eq!(p.messages_at("bob"), vec![b"x".to_vec()]);
}

#[test]
fn a_forged_signature_checked_elsewhere_gets_the_code_it_gets_in_place() {
    // Bob's session messages under sign_all, one with its signature broken, to a node that
    // checks signatures elsewhere and to one that does not.
    let outcome = [false, true].map(|offload| {
        let config = NodeConfig { offload_verify_min_bytes: 0, ..NodeConfig::default() };
        let mut p = relayed_in_session(config.clone(), config.clone(), config);
        p.node("bob").config.offload_work = offload;
        let frame = caught_message(&mut p, b"signed");
        let mut env = crate::wire::decode(&frame, 1 << 20).unwrap();
        if let Some(sig) = env.signature.as_mut() {
            sig[0] ^= 1;
        }
        let bob_link = p.pairs.keys().find(|(n, _)| n == "bob").map(|(_, l)| *l).unwrap();
        let now = p.now;
        p.node("bob").handle_frame(now, bob_link, &env.encode());
        let handed_out = p.node("bob").parking.len();
        let mut out = Vec::new();
        while let Some(o) = p.node("bob").poll_output() {
            match o {
                Output::Work(work) => {
                    let done = work.run();
                    p.node("bob").complete_work(now, done);
                }
                o => out.push(o),
            }
        }
        (handed_out, error_codes(&out), p.messages_at("bob").len())
    });
    assert_eq!(outcome[0].0, 0, "checked in place");
    assert_eq!(outcome[1].0, 1, "the check was handed out");
    assert_eq!(outcome[0].1, outcome[1].1);
    assert_eq!(outcome[0].1, vec![ErrorCode::AuthenticationFailed]);
    assert_eq!(outcome[0].2, 0);
}

#[test]
fn work_the_node_no_longer_waits_for_is_ignored() {
    let mut p = sent_with_work_held(b"x");
    let (name, work): (String, Work) = p.held_work.remove(0);
    let copy = work.clone();
    let now = p.now;
    p.node(&name).complete_work(now, work.run());
    p.run();
    assert_eq!(p.messages_at("bob"), vec![b"x".to_vec()]);
    // The same work again (a driver's mistake): nothing happens twice.
    p.node(&name).complete_work(now, copy.run());
    p.run();
    assert_eq!(p.messages_at("bob"), vec![b"x".to_vec()]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever order work comes back in, and however it interleaves with the network, every
    /// message arrives once and in its sender's order, both ways.
    #[test]
    fn any_completion_order_delivers_everything_once_in_order(
        picks in proptest::collection::vec(any::<u16>(), 0..400),
        sign_all in any::<bool>(),
    ) {
        let config = NodeConfig {
            capabilities: Capabilities { sign_all, ..Capabilities::default() },
            ..NodeConfig::default()
        };
        let mut p = relayed(config.clone(), config.clone(), config);
        p.hold_work = true;
        let mut picks = picks.into_iter().cycle();
        let mut next = move |held: usize| usize::from(picks.next().unwrap_or(0)) % held.max(1);
        for i in 0..4u8 {
            let now = p.now;
            p.node("alice").send(now, &id("bob"), vec![b'a', i], SendOptions::default()).unwrap();
            p.node("bob").send(now, &id("alice"), vec![b'b', i], SendOptions::default()).unwrap();
            p.run();
            // Part of what is held comes back now, the rest later.
            let some = next(4);
            for _ in 0..some {
                if p.held_work.is_empty() { break; }
                let i = next(p.held_work.len());
                let (name, work) = p.held_work.remove(i);
                let now = p.now;
                p.node(&name).complete_work(now, work.run());
                p.run();
            }
        }
        for _ in 0..4 {
            p.finish_work(&mut next);
            p.advance(Duration::from_secs(3));
        }
        let sent = |c: u8| (0..4u8).map(|i| vec![c, i]).collect::<Vec<_>>();
        prop_assert_eq!(p.messages_at("bob"), sent(b'a'));
        prop_assert_eq!(p.messages_at("alice"), sent(b'b'));
        for n in ["relay", "alice", "bob"] {
            prop_assert_eq!(p.node(n).parking.len(), 0);
            prop_assert_eq!(p.node(n).parking.bytes(), 0);
        }
        // The ends checked signatures off their tasks (with sign_all, every message's too).
        let handed = p.node("alice").parking.handed_out() + p.node("bob").parking.handed_out();
        prop_assert!(handed >= if sign_all { 8 } else { 2 }, "{handed}");
    }
}
