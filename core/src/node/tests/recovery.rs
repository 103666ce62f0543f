//! Recovery across lost sessions (spec §15.4), and failures counted as they are reported
//! (`TransportStats::failures` and `Event::Failed`).

use super::*;

/// Alice and Bob on a direct link, with a session; Bob's application then forgets Alice, so the
/// session is gone on his side only (as when a peer restarts).
fn bob_forgot_alice() -> Pump {
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").connect(now, &id("bob")).unwrap();
    p.run();
    assert!(p.node("alice").has_session(&id("bob")));
    p.node("bob").close_peer(now, &id("alice"));
    p.run();
    p
}

/// The link `name` holds to the other node of a two-node pump.
fn link_of(p: &Pump, name: &str) -> LinkId {
    p.pairs.keys().find(|(n, _)| n == name).map(|(_, l)| *l).unwrap()
}

/// The `ERROR`s among `outputs`, as frames.
fn error_frames(outputs: &[Output]) -> Vec<Arc<[u8]>> {
    frames(outputs)
        .into_iter()
        .filter(|f| {
            crate::wire::decode(f, 1 << 20).is_ok_and(|e| e.message_type == MessageType::Error)
        })
        .collect()
}

fn session_of(p: &mut Pump, who: &str, peer: &str) -> Option<crate::ids::SessionId> {
    p.node(who).peers.get(&id(peer)).and_then(|s| s.session.as_ref()).map(|s| s.id().clone())
}

fn sessions_lost(p: &Pump, who: &str) -> usize {
    p.events_of(who).iter().filter(|e| matches!(e, Event::SessionLost { .. })).count()
}

/// A frame re-sent under a new session keeps its `message_id` (§13.1). An answer to its copy
/// sealed under the old session (an HTTP retry, a relay's mailbox, any late duplicate) names the
/// same message: it must neither abort the handshake replacing the old session nor end the new
/// session. The e2e relay-restart test lost its session with the relay this way.
#[test]
fn an_answer_to_a_copy_sealed_under_the_old_session_spares_the_new_one() {
    let mut p = bob_forgot_alice();
    let old = session_of(&mut p, "alice", "bob").unwrap();
    let (alice_link, bob_link) = (link_of(&p, "alice"), link_of(&p, "bob"));
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    let out = drain(p.node("alice"));
    let copy = frames(&out)
        .into_iter()
        .find(|f| {
            crate::wire::decode(f, 1 << 20)
                .is_ok_and(|e| e.message_type == MessageType::PeerMessage)
        })
        .unwrap();
    // Bob answers each copy of the old session's frame: SESSION_NOT_FOUND, naming that session.
    let mut answers = Vec::new();
    for _ in 0..3 {
        deliver(p.node("bob"), now, bob_link, &copy);
        let errors = error_frames(&drain(p.node("bob")));
        assert_eq!(errors.len(), 1);
        let env = crate::wire::decode(&errors[0], 1 << 20).unwrap();
        assert_eq!(env.session_id.as_ref(), Some(&old), "the answer names the session");
        answers.push(errors[0].clone());
    }
    // The first answer ends the old session; alice starts a handshake (its INIT is in her
    // outputs, not yet carried).
    deliver(p.node("alice"), now, alice_link, &answers[0]);
    let out = drain(p.node("alice"));
    assert!(out.iter().any(|o| matches!(o, Output::Event(Event::SessionLost { .. }))));
    assert!(types(&out).contains(&MessageType::HandshakeInit));
    for o in out {
        p.carry("alice", o);
    }
    // The second arrives while that handshake runs: it is about the old session, not this one.
    deliver(p.node("alice"), now, alice_link, &answers[1]);
    p.run();
    let new = session_of(&mut p, "alice", "bob");
    assert!(new.is_some() && new.as_ref() != Some(&old), "the handshake completed: {new:?}");
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec()]);
    // The third arrives after "one" was re-sent under the new session with the same message id.
    deliver(p.node("alice"), now, alice_link, &answers[2]);
    p.run();
    assert_eq!(session_of(&mut p, "alice", "bob"), new, "the new session stays");
    assert_eq!(sessions_lost(&p, "alice"), 1);
    p.advance(Duration::from_secs(1));
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec()], "once");
    assert_eq!(p.node("alice").outbox_len(&id("bob")), 0);
}

/// Runs `n`'s timers up to `until`; every output produced on the way.
fn run_timers(n: &mut Node, until: Timestamp) -> Vec<Output> {
    let mut out = drain(n);
    while let Some(t) = n.poll_timeout().filter(|t| *t <= until) {
        n.handle_timeout(t);
        out.extend(drain(n));
    }
    out
}

fn failed_events(outputs: &[Output]) -> usize {
    outputs.iter().filter(|o| matches!(o, Output::Event(Event::Failed { .. }))).count()
}

/// `TransportStats::failures` counts exactly the `Event::Failed` the application is given: a
/// failure is never dropped for a full event queue (unlike informational events), and messages
/// given up by `close_peer` are counted like any other.
#[test]
fn every_failure_counted_is_a_failure_the_application_is_told_of() {
    // Bob never answers (no link to him opens): alice's messages time out while her
    // application is not draining its events.
    let config = NodeConfig { max_events: 2, ..NodeConfig::default() };
    let mut alice = node("alice", config);
    alice.add_route(id("bob"), Pump::addr("bob"));
    alice.set_app_backlog(2);
    for m in [b"one", b"two", b"six"] {
        alice.send(T0, &id("bob"), m.to_vec(), SendOptions::default()).unwrap();
    }
    let timeout = NodeConfig::default().stream.send_timeout;
    let out = run_timers(&mut alice, T0.saturating_add(timeout + Duration::from_secs(1)));
    assert_eq!(alice.outbox_len(&id("bob")), 0, "all three timed out");
    assert_eq!(failed_events(&out), 3, "none dropped");
    assert_eq!(alice.stats().failures, 3);

    // The application closes a peer with messages outstanding.
    let mut alice = node("alice", NodeConfig::default());
    alice.add_route(id("bob"), Pump::addr("bob"));
    for m in [b"one", b"two"] {
        alice.send(T0, &id("bob"), m.to_vec(), SendOptions::default()).unwrap();
    }
    drain(&mut alice);
    alice.close_peer(T0, &id("bob"));
    let out = drain(&mut alice);
    assert_eq!(failed_events(&out), 2);
    assert_eq!(alice.stats().failures, 2, "counted like any other failure");
}
