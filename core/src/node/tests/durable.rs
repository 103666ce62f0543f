//! Durable nodes (spec §26): what a sender accepted, what a receiver delivered and what it held
//! for reassembly survive a crash, and a restarted node neither loses nor repeats a message.

use super::*;
use crate::durable::StoreOp;

fn durable() -> NodeConfig {
    let mut c = NodeConfig { durable: true, ..NodeConfig::default() };
    // Long enough that nothing times out in these tests; the idle bound must exceed it.
    c.stream.send_timeout = Duration::from_secs(3600);
    c.peer_idle_timeout = Duration::from_secs(7200);
    c
}

/// Alice and Bob, both durable, Alice reaching Bob directly.
fn pair(config: NodeConfig) -> Pump {
    let mut p = Pump::new(&[("alice", config.clone()), ("bob", config)]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    p
}

fn restart(p: &mut Pump, name: &str, config: NodeConfig) -> RestoreSummary {
    let summary = p.crash(name, config);
    if name == "alice" {
        p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    }
    summary
}

fn send_all(p: &mut Pump, n: usize, tag: &str) -> Vec<MessageId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let now = p.now;
        let body = format!("{tag}-{i}").into_bytes();
        ids.push(p.node("alice").send(now, &id("bob"), body, SendOptions::default()).unwrap());
        p.run();
    }
    ids
}

fn kinds_stored(p: &Pump, name: &str, kind: u8) -> usize {
    p.stores.get(name).map_or(0, |s| s.keys().filter(|k| k.first() == Some(&kind)).count())
}

fn delivered_ids(p: &Pump) -> Vec<MessageId> {
    p.events_of("alice")
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivered { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

fn expect_in_order(p: &Pump, tags: &[(&str, usize)]) {
    let want: Vec<Vec<u8>> = tags
        .iter()
        .flat_map(|(tag, n)| (0..*n).map(move |i| format!("{tag}-{i}").into_bytes()))
        .collect();
    assert_eq!(p.messages_at("bob"), want, "every message once, in order");
}

#[test]
fn a_node_that_is_not_durable_writes_nothing() {
    let mut p = pair(NodeConfig::default());
    send_all(&mut p, 3, "m");
    assert!(p.stores.is_empty());
    assert_eq!(p.messages_at("bob").len(), 3);
}

#[test]
fn a_restarted_sender_delivers_what_it_had_accepted() {
    let mut p = pair(durable());
    // Bob cannot be reached: nothing leaves Alice.
    p.no_ws.push("bob".into());
    p.http_status.insert("bob".into(), 503);
    let ids = send_all(&mut p, 50, "m");
    assert_eq!(kinds_stored(&p, "alice", b'f'), 50);
    let summary = restart(&mut p, "alice", durable());
    assert_eq!((summary.peers, summary.messages, summary.expired), (1, 50, 0));
    p.no_ws.clear();
    p.http_status.clear();
    p.advance(Duration::from_secs(30));
    expect_in_order(&p, &[("m", 50)]);
    assert_eq!(delivered_ids(&p), ids, "each accepted id is reported delivered once");
    assert_eq!(kinds_stored(&p, "alice", b'f'), 0, "acknowledged frames leave the store");
    // New messages continue the stream after the restart.
    send_all(&mut p, 5, "n");
    expect_in_order(&p, &[("m", 50), ("n", 5)]);
}

#[test]
fn frames_delivered_before_the_sender_crashed_are_not_delivered_again() {
    let mut p = pair(durable());
    // Bob gets everything but his acknowledgements are lost.
    p.lose.push(("bob".into(), MessageType::Ack));
    send_all(&mut p, 40, "m");
    expect_in_order(&p, &[("m", 40)]);
    assert_eq!(kinds_stored(&p, "alice", b'f'), 40);
    restart(&mut p, "alice", durable());
    p.lose.clear();
    p.advance(Duration::from_secs(30));
    expect_in_order(&p, &[("m", 40)]);
    assert_eq!(delivered_ids(&p).len(), 40);
    assert_eq!(kinds_stored(&p, "alice", b'f'), 0);
}

#[test]
fn a_restarted_receiver_remembers_what_it_delivered() {
    let mut p = pair(durable());
    p.lose.push(("bob".into(), MessageType::Ack));
    send_all(&mut p, 40, "m");
    expect_in_order(&p, &[("m", 40)]);
    assert_eq!(kinds_stored(&p, "bob", b'r'), 1);
    restart(&mut p, "bob", durable());
    p.lose.clear();
    // Alice's session is gone on Bob's side: she handshakes again and re-sends all 40.
    p.advance(Duration::from_secs(60));
    expect_in_order(&p, &[("m", 40)]);
    assert_eq!(delivered_ids(&p).len(), 40);
}

#[test]
fn a_receiver_that_forgets_everything_delivers_twice_which_is_what_the_store_prevents() {
    // The same run as above with Bob's store wiped: proof the test above can fail.
    let mut p = pair(durable());
    p.lose.push(("bob".into(), MessageType::Ack));
    send_all(&mut p, 10, "m");
    p.stores.remove("bob");
    restart(&mut p, "bob", durable());
    p.lose.clear();
    p.advance(Duration::from_secs(60));
    assert_eq!(p.messages_at("bob").len(), 20);
}

#[test]
fn chunks_held_for_reassembly_survive_the_receivers_crash() {
    let mut config = durable();
    config.chunk_threshold = 1024;
    config.chunk_size = 1024;
    config.stream.send_window = 4;
    let mut p = pair(config.clone());
    p.lose.push(("bob".into(), MessageType::Ack));
    let payload: Vec<u8> = (0..10 * 1024u32).map(|i| (i % 251) as u8).collect();
    let now = p.now;
    p.node("alice").send(now, &id("bob"), payload.clone(), SendOptions::default()).unwrap();
    p.run();
    // The window let four chunks through; Bob holds them, stored, and counts them received.
    assert_eq!(kinds_stored(&p, "bob", b'a'), 4);
    assert!(p.messages_at("bob").is_empty());
    let summary = restart(&mut p, "bob", config);
    assert_eq!(summary.chunks, 4);
    p.lose.clear();
    p.advance(Duration::from_secs(60));
    assert_eq!(p.messages_at("bob"), vec![payload]);
    assert_eq!(kinds_stored(&p, "bob", b'a'), 0, "a completed message's chunks leave the store");
    assert_eq!(delivered_ids(&p).len(), 1);
}

#[test]
fn a_crash_right_after_a_write_loses_nothing() {
    let mut p = pair(durable());
    p.lose.push(("bob".into(), MessageType::Ack));
    send_all(&mut p, 5, "m");
    // Bob dies right after his next write: the position of the next message delivered, with
    // the acknowledgement behind it never sent.
    p.crash_after_write.insert("bob".into(), durable());
    send_all(&mut p, 1, "x");
    // The acknowledgement waits for `ack_delay`.
    p.advance(Duration::from_millis(50));
    assert_eq!(p.restarts, 1);
    p.lose.clear();
    // Alice dies right after her next write: the message accepted, not yet sent.
    p.crash_after_write.insert("alice".into(), durable());
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"y-0".to_vec(), SendOptions::default()).unwrap();
    p.run();
    assert_eq!(p.restarts, 2);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    p.advance(Duration::from_secs(60));
    expect_in_order(&p, &[("m", 5), ("x", 1), ("y", 1)]);
}

#[test]
fn an_expired_message_is_reported_failed_at_restore() {
    let mut config = durable();
    config.stream.send_timeout = Duration::from_secs(60);
    config.peer_idle_timeout = Duration::from_secs(600);
    let mut p = pair(config.clone());
    p.no_ws.push("bob".into());
    p.http_status.insert("bob".into(), 503);
    let ids = send_all(&mut p, 2, "m");
    p.now = p.now.saturating_add(Duration::from_secs(120));
    let summary = restart(&mut p, "alice", config);
    assert_eq!(summary.expired, 2);
    p.run();
    let failed: Vec<_> = p
        .events_of("alice")
        .into_iter()
        .filter_map(|e| match e {
            Event::Failed { id, reason: FailReason::Timeout, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failed, ids);
    assert_eq!(kinds_stored(&p, "alice", b'f'), 0);
}

#[test]
fn restore_refuses_a_corrupt_store_and_a_node_in_use() {
    let mut n = node("alice", durable());
    let bad = vec![(b"falice\0\0\0\0\0\0\0\0\x01".to_vec(), b"not json\n".to_vec())];
    assert!(matches!(
        n.restore(T0, bad),
        Err(RestoreError::Store(crate::durable::StoreError::Corrupt { .. }))
    ));
    let mut plain = node("alice", NodeConfig::default());
    assert!(matches!(plain.restore(T0, Vec::new()), Err(RestoreError::Usage(_))));
    // Frames without their stream record.
    let mut p = pair(durable());
    p.no_ws.push("bob".into());
    p.http_status.insert("bob".into(), 503);
    send_all(&mut p, 1, "m");
    let orphan: Vec<_> =
        p.stores["alice"].clone().into_iter().filter(|(k, _)| k[0] == b'f').collect();
    let mut fresh = node("alice", durable());
    assert!(fresh.restore(T0, orphan).is_err());
}

#[test]
fn writes_come_before_what_depends_on_them() {
    let mut p = pair(durable());
    let now = p.now;
    p.node("alice").connect(now, &id("bob")).unwrap();
    p.run();
    p.node("alice").send(now, &id("bob"), b"hi".to_vec(), SendOptions::default()).unwrap();
    let out = drain(p.node("alice"));
    let write = out.iter().position(|o| matches!(o, Output::Persist(StoreOp::Put { .. })));
    let transmit = out.iter().position(|o| matches!(o, Output::Transmit { .. }));
    assert!(write.unwrap() < transmit.unwrap(), "the frame is stored before it is sent");
    // Debug output shows keys and lengths, never the stored content.
    let shown = format!("{out:?}");
    assert!(shown.contains("f/bob/1") && !shown.contains("\"hi\""), "{shown}");
}

#[derive(Debug, Clone)]
enum Step {
    Send(u8),
    CrashAlice,
    CrashBob,
    CrashAfterWrite(bool),
    LoseAcks(bool),
    Cut,
    Wait(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..6).prop_map(Step::Send),
        1 => Just(Step::CrashAlice),
        1 => Just(Step::CrashBob),
        1 => any::<bool>().prop_map(Step::CrashAfterWrite),
        1 => any::<bool>().prop_map(Step::LoseAcks),
        1 => Just(Step::Cut),
        2 => (1u16..5000).prop_map(Step::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever crashes and losses come, every message accepted reaches Bob once and in order,
    /// and Alice hears of its delivery once.
    #[test]
    fn crashes_anywhere_lose_and_repeat_nothing(steps in prop::collection::vec(step(), 1..40)) {
        let mut p = pair(durable());
        let mut sent = 0usize;
        for s in steps {
            match s {
                Step::Send(n) => {
                    for _ in 0..n {
                        let now = p.now;
                        let body = format!("m-{sent}").into_bytes();
                        p.node("alice").send(now, &id("bob"), body, SendOptions::default()).unwrap();
                        sent += 1;
                    }
                    p.run();
                }
                Step::CrashAlice => { restart(&mut p, "alice", durable()); }
                Step::CrashBob => { restart(&mut p, "bob", durable()); }
                Step::CrashAfterWrite(alice) => {
                    let who = if alice { "alice" } else { "bob" };
                    p.crash_after_write.insert(who.into(), durable());
                }
                Step::LoseAcks(on) => {
                    p.lose.clear();
                    if on {
                        p.lose.push(("bob".into(), MessageType::Ack));
                    }
                }
                Step::Cut => p.cut("alice"),
                Step::Wait(ms) => p.advance(Duration::from_millis(u64::from(ms))),
            }
            // A crash after a write restarts Alice without her route.
            p.node("alice").add_route(id("bob"), Pump::addr("bob"));
        }
        p.lose.clear();
        p.crash_after_write.clear();
        p.advance(Duration::from_secs(300));
        // Every message once and in order, but for the repeats a crash of Bob allows (a message
        // his application took whose position was not committed yet, spec §26.2).
        let mut allowed = p.repeats_allowed.clone();
        let mut seen = std::collections::BTreeSet::new();
        let mut firsts = Vec::new();
        for m in p.messages_at("bob") {
            if seen.insert(m.clone()) {
                firsts.push(m);
            } else {
                let left = allowed.get_mut(&m).filter(|n| **n > 0);
                prop_assert!(left.is_some(), "{} handed again without a crash to allow it", String::from_utf8_lossy(&m));
                if let Some(n) = left {
                    *n -= 1;
                }
            }
        }
        let want: Vec<Vec<u8>> = (0..sent).map(|i| format!("m-{i}").into_bytes()).collect();
        prop_assert_eq!(firsts, want, "every message, in order");
        // Each message's outcome is reported once, or was held behind the write that settled it
        // when a crash came between that write and the report (spec §26.2); never twice, never
        // contradicted.
        let delivered = delivered_ids(&p);
        let unique: std::collections::BTreeSet<_> = delivered.iter().collect();
        prop_assert_eq!(unique.len(), delivered.len(), "no outcome twice");
        let lost: std::collections::BTreeSet<_> = p.lost_outcomes.iter().map(|(_, id)| id).collect();
        prop_assert!(unique.is_disjoint(&lost));
        prop_assert_eq!(unique.len() + lost.len(), sent);
        let failed = p.events_of("alice").iter().filter(|e| matches!(e, Event::Failed { .. })).count();
        prop_assert_eq!(failed, 0);
        prop_assert_eq!(kinds_stored(&p, "alice", b'f'), 0);
    }
}

/// A recipient offline for ten minutes, through a relay, while its sender crashes and comes
/// back: with a message lifetime of an hour, everything arrives once, in order, when the
/// recipient returns (a deterministic clock: ten simulated minutes).
#[test]
fn a_recipient_offline_for_ten_minutes_gets_everything_when_it_returns() {
    let mut config = durable();
    config.preference = TransportPreference::WebsocketFirst;
    let mut p = Pump::new(&[
        ("relay", NodeConfig::default()),
        ("alice", config.clone()),
        ("bob", config.clone()),
    ]);
    let relay = |p: &mut Pump, n: &str| {
        let now = p.now;
        p.node(n).set_default_route(now, Pump::addr("relay"));
    };
    relay(&mut p, "alice");
    relay(&mut p, "bob");
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    send_all(&mut p, 5, "before");
    expect_in_order(&p, &[("before", 5)]);
    p.advance(Duration::from_secs(1));
    assert_eq!(kinds_stored(&p, "alice", b'f'), 0, "{:?}", p.events_of("alice"));
    // Bob goes away (a laptop closed): his link drops and his node stops running.
    p.cut("bob");
    let bob = p.nodes.remove("bob").unwrap();
    send_all(&mut p, 100, "away");
    p.advance(Duration::from_secs(240));
    // Alice crashes half-way and comes back from her store.
    let summary = p.crash("alice", config.clone());
    assert_eq!(summary.messages, 100);
    relay(&mut p, "alice");
    p.advance(Duration::from_secs(360));
    assert_eq!(p.messages_at("bob").len(), 5, "nothing reached Bob while he was away");
    p.nodes.insert("bob".into(), bob);
    p.advance(Duration::from_secs(120));
    expect_in_order(&p, &[("before", 5), ("away", 100)]);
    assert_eq!(delivered_ids(&p).len(), 105);
    assert_eq!(kinds_stored(&p, "alice", b'f'), 0);
}

/// The topics the application subscribed to at its relay are renewed by the node restarted from
/// its store, and an unsubscribe is remembered too.
#[test]
fn subscriptions_at_the_relay_survive_a_restart() {
    let mut p = Pump::new(&[("relay", NodeConfig::default()), ("alice", durable())]);
    let now = p.now;
    p.node("alice").set_default_route(now, Pump::addr("relay"));
    p.node("alice").subscribe(now, &id("relay"), "news").unwrap();
    p.node("alice").subscribe(now, &id("relay"), "sport").unwrap();
    p.node("alice").unsubscribe(now, &id("relay"), "sport").unwrap();
    p.run();
    assert_eq!(kinds_stored(&p, "alice", b't'), 1);
    let reached = |p: &mut Pump| {
        let now = p.now;
        p.node("relay").publish(now, "news", serde_json::json!(1)).unwrap()
    };
    assert_eq!(reached(&mut p), 1);
    // Alice's process dies: the relay loses her link, and with it her subscription.
    p.cut("alice");
    assert_eq!(reached(&mut p), 0);
    let entries = p.stores["alice"].clone();
    let rng = ChaCha20Rng::seed_from_u64(77);
    let names = ["relay", "alice"];
    let mut alice = Node::new(durable(), ident("alice"), trust_all(&names), rng).unwrap();
    alice.set_default_route(p.now, Pump::addr("relay"));
    let summary = alice.restore(p.now, entries).unwrap();
    assert_eq!(summary.subscriptions, 1);
    p.nodes.insert("alice".into(), alice);
    p.run();
    assert_eq!(reached(&mut p), 1, "news is subscribed again, sport is not");
    let now = p.now;
    let sport = p.node("relay").publish(now, "sport", serde_json::json!(1)).unwrap();
    assert_eq!(sport, 0);
}

/// A relay that does not answer for longer than the HTTP retries last fails a message on an
/// ordinary node (seed 001's HTTP outcomes) but not on a durable one: its stream re-sends the
/// message until the relay answers again.
#[test]
fn a_next_hop_that_does_not_answer_for_a_while_fails_nothing_on_a_durable_node() {
    for durable_node in [false, true] {
        let mut config = if durable_node { durable() } else { NodeConfig::default() };
        config.preference = TransportPreference::HttpOnly;
        let mut p = Pump::new(&[
            ("relay", NodeConfig::default()),
            ("alice", config.clone()),
            ("bob", config.clone()),
        ]);
        for n in ["alice", "bob"] {
            let now = p.now;
            p.node(n).set_default_route(now, Pump::addr("relay"));
        }
        send_all(&mut p, 3, "m");
        p.advance(Duration::from_secs(5));
        expect_in_order(&p, &[("m", 3)]);
        // The relay stops answering for 30 s.
        p.http_status.insert("relay".into(), 503);
        send_all(&mut p, 3, "n");
        p.advance(Duration::from_secs(30));
        p.http_status.clear();
        p.advance(Duration::from_secs(60));
        let failed =
            p.events_of("alice").iter().filter(|e| matches!(e, Event::Failed { .. })).count();
        if durable_node {
            assert_eq!(failed, 0);
            expect_in_order(&p, &[("m", 3), ("n", 3)]);
        } else {
            assert_eq!(failed, 3, "the ordinary node gives up after its HTTP retries");
        }
    }
}

/// Messages handed to an application that had not taken them yet (they wait in a queue of the
/// driver's, which dies with the process) are received again after a crash, a chunked one
/// included: the receive position and the chunks' deletion wait until the application has them.
#[test]
fn messages_the_application_had_not_taken_are_received_again_after_a_crash() {
    let mut config = durable();
    config.chunk_threshold = 1024;
    config.chunk_size = 1024;
    let mut p = pair(config.clone());
    p.slow_apps.push("bob".into());
    send_all(&mut p, 3, "m");
    let big: Vec<u8> = (0..5 * 1024u32).map(|i| (i % 253) as u8).collect();
    let now = p.now;
    p.node("alice").send(now, &id("bob"), big.clone(), SendOptions::default()).unwrap();
    p.advance(Duration::from_secs(1));
    assert_eq!(p.messages_at("bob").len(), 4, "handed to the driver's queue");
    assert_eq!(kinds_stored(&p, "bob", b'r'), 0, "no position: the application took nothing");
    assert_eq!(kinds_stored(&p, "bob", b'a'), 4, "the chunks stay until it does");
    assert!(delivered_ids(&p).is_empty(), "nothing acknowledged");
    // Bob's process dies with the four messages in its queue; his application is quick now.
    p.slow_apps.clear();
    p.events.retain(|(n, _)| n != "bob");
    restart(&mut p, "bob", config);
    p.advance(Duration::from_secs(60));
    let mut want: Vec<Vec<u8>> = (0..3).map(|i| format!("m-{i}").into_bytes()).collect();
    want.push(big);
    assert_eq!(p.messages_at("bob"), want, "all four again, in order, once");
    assert_eq!(delivered_ids(&p).len(), 4);
    assert_eq!(kinds_stored(&p, "bob", b'a'), 0);
}

/// Alice and Bob (not durable, WebSocket first) at a relay with `relay` as its configuration;
/// Bob has a session with Alice and has received 5 messages, then goes away; Alice sends 20
/// more, which wait in the relay's mailbox for Bob, and then goes away for good, her outbox
/// with her: from then on only the relay holds them.
fn mailboxed_at_relay(relay: NodeConfig) -> (Pump, Node) {
    let config =
        NodeConfig { preference: TransportPreference::WebsocketFirst, ..NodeConfig::default() };
    let mut p = relayed_in_session(relay, config.clone(), config);
    send_all(&mut p, 5, "before");
    expect_in_order(&p, &[("before", 5)]);
    let bob = take_out(&mut p, "bob");
    send_all(&mut p, 20, "away");
    assert_eq!(p.node("relay").mailbox_len(), 20);
    take_out(&mut p, "alice");
    (p, bob)
}

/// Takes a node out of the network: the other ends of its links see them close, and so does
/// the node itself, which does not run until it is put back.
fn take_out(p: &mut Pump, name: &str) -> Node {
    let mut node = p.nodes.remove(name).unwrap();
    let now = p.now;
    let links: Vec<(String, LinkId)> = p.pairs.keys().filter(|(n, _)| n == name).cloned().collect();
    for key in links {
        if let Some((to, tl)) = p.pairs.remove(&key) {
            p.pairs.remove(&(to.clone(), tl));
            p.node(&to).link_closed(now, tl);
            node.link_closed(now, key.1);
        }
    }
    p.run();
    node
}

fn relay_config() -> NodeConfig {
    NodeConfig { durable: true, ..NodeConfig::default() }
}

/// A relay restarted from its store still holds what waited in its mailboxes, in order, and
/// what it stored is the envelopes as they came (the end-to-end ciphertext), nothing readable.
#[test]
fn a_restarted_relay_still_holds_its_mailboxes() {
    let (mut p, bob) = mailboxed_at_relay(relay_config());
    assert_eq!(kinds_stored(&p, "relay", b'm'), 20);
    for value in p.stores["relay"].values() {
        let plain = b"away-";
        assert!(!value.windows(plain.len()).any(|w| w == plain), "plaintext at rest on a relay");
    }
    p.advance(Duration::from_secs(10));
    let summary = p.crash("relay", relay_config());
    assert_eq!((summary.mailboxed, summary.mailbox_dropped, summary.peers), (20, 0, 0));
    assert_eq!(p.node("relay").mailbox_len(), 20);
    p.nodes.insert("bob".into(), bob);
    p.advance(Duration::from_secs(60));
    expect_in_order(&p, &[("before", 5), ("away", 20)]);
    // Handed to Bob's link: gone from the mailbox and from the store. What waits now is Bob's
    // acknowledgements, for Alice.
    assert!(p.stores["relay"].keys().all(|k| !k.starts_with(b"mbob\0")));
}

/// The same run with the relay's store wiped: proof the test above can fail.
#[test]
fn a_relay_that_forgets_its_mailboxes_loses_what_only_it_held() {
    let (mut p, bob) = mailboxed_at_relay(relay_config());
    p.stores.remove("relay");
    let summary = p.crash("relay", relay_config());
    assert_eq!(summary.mailboxed, 0);
    p.nodes.insert("bob".into(), bob);
    p.advance(Duration::from_secs(60));
    expect_in_order(&p, &[("before", 5)]);
}

/// Mailbox entries whose time ran out while the relay was down are deleted at its restart, and
/// bad ones refuse the restore.
#[test]
fn expired_and_malformed_mailbox_entries_at_restore() {
    let (p, _bob) = mailboxed_at_relay(relay_config());
    let entries = p.stores["relay"].clone();
    let names = ["relay", "alice", "bob"];
    let fresh = || {
        let rng = ChaCha20Rng::seed_from_u64(5);
        Node::new(relay_config(), ident("relay"), trust_all(&names), rng).unwrap()
    };
    // Mailboxes hold envelopes as long as a receiver would accept them (max_clock_skew).
    let later = p.now.saturating_add(Duration::from_secs(301));
    let mut relay = fresh();
    let summary = relay.restore(later, entries.clone()).unwrap();
    assert_eq!((summary.mailboxed, summary.mailbox_dropped), (0, 20));
    let deleted = drain(&mut relay)
        .into_iter()
        .filter(|o| matches!(o, Output::Persist(StoreOp::Delete { key }) if key[0] == b'm'))
        .count();
    assert_eq!(deleted, 20);
    assert_eq!(relay.mailbox_len(), 0);
    // A forged far-future expiry is cut to a new entry's, and an entry that is not one line is
    // dropped.
    let mut forged = entries.clone();
    let keys: Vec<Vec<u8>> = forged.keys().filter(|k| k[0] == b'm').cloned().collect();
    for k in &keys {
        let v = forged.get_mut(k).unwrap();
        let body = v.split(|&b| b == b'\n').nth(1).unwrap().to_vec();
        *v = [&b"{\"expires\":18446744073709551615}\n"[..], &body].concat();
    }
    forged.get_mut(&keys[0]).unwrap().extend_from_slice(b"\n{}");
    let mut relay = fresh();
    let summary = relay.restore(p.now, forged.clone()).unwrap();
    assert_eq!((summary.mailboxed, summary.mailbox_dropped), (19, 1));
    let mut relay = fresh();
    let summary = relay.restore(later, forged).unwrap();
    assert_eq!((summary.mailboxed, summary.mailbox_dropped), (19, 1), "within the skew of now");
    relay.handle_timeout(later.saturating_add(Duration::from_secs(301)));
    assert_eq!(relay.mailbox_len(), 0, "expired at most max_clock_skew after the restore");
    // An entry with no envelope, or no header, is corrupt.
    for bad in [b"{\"expires\":1}\n".to_vec(), b"no header".to_vec()] {
        let mut e = entries.clone();
        let key = e.keys().find(|k| k[0] == b'm').unwrap().clone();
        e.insert(key, bad);
        assert!(matches!(fresh().restore(p.now, e), Err(RestoreError::Store(_))));
    }
}
