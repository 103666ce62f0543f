//! Relays of a cluster sharing a broker (`docs/cluster.md`, spec §25): the routing decision (the
//! local link, the node holding the entity's link, or its shared mailbox) with a broker that
//! does what Redis would.

use crate::wire::Encoding;
use std::collections::VecDeque;

use super::*;
use crate::node::cluster::ClusterRoute;
use crate::node::{ClusterAction, ClusterConfig};

/// What Redis would hold for the cluster: presence records and shared mailboxes.
#[derive(Default)]
pub(super) struct Broker {
    /// Which node each entity's newest link is on.
    presence: BTreeMap<EntityId, String>,
    /// Frames parked per entity, oldest first.
    mailboxes: BTreeMap<EntityId, VecDeque<Vec<u8>>>,
    /// The cluster's nodes, which hear every presence change.
    members: Vec<String>,
    /// The nodes listening on each topic.
    listeners: BTreeMap<String, Vec<String>>,
    /// Every action, in order.
    pub log: Vec<(String, String)>,
}

impl Pump {
    pub(super) fn carry_cluster(&mut self, from: &str, action: ClusterAction) {
        self.broker.log.push((from.to_owned(), format!("{action:?}")));
        let tell = |p: &mut Pump, entity: &EntityId, node: Option<EntityId>| {
            for m in p.broker.members.clone() {
                let (entity, node) = (entity.clone(), node.clone());
                p.input(&m, Input::ClusterPresence { entity, node });
            }
        };
        match action {
            ClusterAction::Announce { entity } => {
                self.broker.presence.insert(entity.clone(), from.to_owned());
                tell(self, &entity, Some(id(from)));
            }
            ClusterAction::Withdraw { entity } => {
                if self.broker.presence.get(&entity).is_some_and(|n| n == from) {
                    self.broker.presence.remove(&entity);
                    tell(self, &entity, None);
                }
            }
            // A publication to a node that is gone is lost, as Redis loses it.
            ClusterAction::Forward { node, to, frame } => {
                assert_eq!(Encoding::of(&frame), Encoding::Json, "the broker carries JSON");
                if self.nodes.contains_key(node.as_str()) {
                    self.input(node.as_str(), Input::ClusterFrame { to, frame: &frame });
                }
            }
            // Every member hears that something was parked (the host's park script publishes it).
            ClusterAction::Park { to, frame } => {
                assert_eq!(Encoding::of(&frame), Encoding::Json, "the broker carries JSON");
                self.broker.mailboxes.entry(to.clone()).or_default().push_back(frame.to_vec());
                for m in self.broker.members.clone() {
                    self.input(&m, Input::ClusterMail { entity: to.clone() });
                }
            }
            ClusterAction::Drain { entity } => {
                let frames = self.broker.mailboxes.remove(&entity).unwrap_or_default();
                for frame in frames {
                    let to = entity.clone();
                    self.input(from, Input::ClusterFrame { to, frame: &frame });
                }
            }
            ClusterAction::Listen { topic } => {
                self.broker.listeners.entry(topic).or_default().push(from.to_owned());
            }
            ClusterAction::Unlisten { topic } => {
                if let Some(l) = self.broker.listeners.get_mut(&topic) {
                    l.retain(|n| n != from);
                }
            }
            // Every listener hears it, the publishing node too (as Redis does).
            ClusterAction::Publish { topic, frame } => {
                for to in self.broker.listeners.get(&topic).cloned().unwrap_or_default() {
                    let input = Input::ClusterPublication {
                        topic: &topic,
                        origin: id(from),
                        frame: &frame,
                    };
                    self.input(&to, input);
                }
            }
        }
    }

    fn parked(&self, entity: &str) -> usize {
        self.broker.mailboxes.get(&id(entity)).map_or(0, VecDeque::len)
    }
}

/// Two relays in one cluster; alice reaches the cluster through `relay`, bob through `relay2`.
fn two_relays(preference: TransportPreference) -> Pump {
    cluster_of(preference, &[("alice", "relay"), ("bob", "relay2")])
}

/// Two relays in one cluster, and `clients`, each reaching the cluster through its relay.
fn cluster_of(preference: TransportPreference, clients: &[(&str, &str)]) -> Pump {
    let relay = NodeConfig { cluster: Some(ClusterConfig::default()), ..NodeConfig::default() };
    let mut p = Pump::new(&[("relay", relay.clone()), ("relay2", relay)]);
    p.broker.members = vec!["relay".to_owned(), "relay2".to_owned()];
    for r in ["relay", "relay2"] {
        p.input(r, Input::ClusterUp);
    }
    for (name, via) in clients {
        add_client(&mut p, name, via, preference);
    }
    p.run();
    p
}

/// A client `name` that reaches the cluster through `relay` from now on.
fn add_client(p: &mut Pump, name: &str, relay: &str, preference: TransportPreference) {
    let config = NodeConfig { preference, ..NodeConfig::default() };
    p.nodes.insert(name.to_owned(), node(name, config));
    let now = p.now;
    p.node(name).set_default_route(now, Pump::addr(relay));
}

/// [`two_relays`] with alice and bob linked, each at its relay, and in session.
fn linked_on_two_relays() -> Pump {
    let mut p = two_relays(TransportPreference::WebsocketFirst);
    let now = p.now;
    p.node("alice").connect(now, &id("bob")).unwrap();
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    p
}

#[test]
fn entities_on_different_relays_reach_each_other_through_the_broker() {
    let mut p = linked_on_two_relays();
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    for n in 0..3u8 {
        let now = p.now;
        p.node("alice").send(now, &id("bob"), vec![n], SendOptions::default()).unwrap();
    }
    let now = p.now;
    p.node("alice").send(now, &id("bob"), big.clone(), SendOptions::default()).unwrap();
    p.node("bob").send(now, &id("alice"), b"back".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(3));
    assert_eq!(p.messages_at("bob"), vec![vec![0], vec![1], vec![2], big]);
    assert_eq!(p.messages_at("alice"), vec![b"back".to_vec()]);
    let forwarded = p.broker.log.iter().filter(|(_, a)| a.starts_with("Forward")).count();
    assert!(forwarded > 0, "frames crossed between relays: {:?}", p.broker.log);
    let delivered =
        p.events_of("alice").iter().filter(|e| matches!(e, Event::Delivered { .. })).count();
    assert_eq!(delivered, 4);
}

#[test]
fn an_entity_linked_nowhere_gets_its_frames_from_the_shared_mailbox_on_any_relay() {
    let pref = TransportPreference::WebsocketFirst;
    let mut p = cluster_of(pref, &[("alice", "relay")]);
    // Bob is offline: alice's handshake waits in his shared mailbox.
    let now = p.now;
    let m = p.node("alice").send(now, &id("bob"), b"later".to_vec(), SendOptions::default());
    let m = m.unwrap();
    p.run();
    assert!(p.parked("bob") > 0, "{:?}", p.broker.log);
    // Bob comes online at relay2: his mailbox drains there, the handshake completes, and the
    // message arrives exactly once.
    add_client(&mut p, "bob", "relay2", pref);
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    p.advance(Duration::from_secs(5));
    assert_eq!(p.messages_at("bob"), vec![b"later".to_vec()]);
    assert!(
        p.events_of("alice").iter().any(|e| matches!(e, Event::Delivered { id, .. } if *id == m))
    );
    assert_eq!(p.parked("bob"), 0);
}

#[test]
fn a_broker_outage_means_retry_later_and_nothing_is_lost() {
    let mut p = linked_on_two_relays();
    for r in ["relay", "relay2"] {
        p.input(r, Input::ClusterDown);
    }
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"during".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(2));
    assert!(p.messages_at("bob").is_empty());
    for r in ["relay", "relay2"] {
        p.input(r, Input::ClusterUp);
    }
    p.run();
    p.advance(Duration::from_secs(15));
    assert_eq!(p.messages_at("bob"), vec![b"during".to_vec()]);
}

#[test]
fn a_relay_that_died_silently_is_forgotten_after_three_refreshes() {
    let mut p = two_relays(TransportPreference::WebsocketFirst);
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    // relay2 dies without a word: its presence records are left to expire.
    p.cut("relay2");
    p.nodes.remove("relay2");
    p.broker.members.retain(|m| m != "relay2");
    let before = p.broker.log.len();
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"x".to_vec(), SendOptions::default()).unwrap();
    p.run();
    let forwarded = |p: &Pump| p.broker.log[before..].iter().any(|(_, a)| a.starts_with("Forward"));
    assert!(forwarded(&p), "at first relay still believes bob is on relay2");
    p.advance(ClusterConfig::default().refresh_every * 3 + Duration::from_secs(60));
    // Now frames for bob (alice's retransmissions) wait in his shared mailbox instead.
    assert!(p.parked("bob") > 0, "{:?}", &p.broker.log[before..]);
}

#[test]
fn frames_from_the_broker_that_are_not_for_their_entity_are_refused() {
    let mut p = two_relays(TransportPreference::WebsocketFirst);
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    let before = p.broker.log.len();
    for junk in [&b"not json"[..], b"{}", &[0xff; 64]] {
        p.input("relay2", Input::ClusterFrame { to: id("bob"), frame: junk });
    }
    p.run();
    assert_eq!(p.broker.log.len(), before, "nothing parked or forwarded");
    assert!(p.messages_at("bob").is_empty());
}

#[derive(Debug, Clone)]
enum BrokerSays {
    Up,
    Down,
    Presence(u8, Option<bool>),
    Frame(u8, Vec<u8>),
    Publication(Vec<u8>),
}

fn broker_says() -> impl Strategy<Value = BrokerSays> {
    prop_oneof![
        Just(BrokerSays::Up),
        Just(BrokerSays::Down),
        (any::<u8>(), proptest::option::of(any::<bool>()))
            .prop_map(|(e, n)| BrokerSays::Presence(e, n)),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..200))
            .prop_map(|(e, f)| BrokerSays::Frame(e, f)),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(BrokerSays::Publication),
    ]
}

proptest! {
    /// Whatever the broker says, in any order, a cluster node never panics, keeps its presence
    /// map within `max_presence`, and asks the broker for nothing about frames it refused.
    #[test]
    fn a_cluster_node_survives_anything_its_broker_says(says in proptest::collection::vec(broker_says(), 1..80)) {
        let config = ClusterConfig { max_presence: 8, ..ClusterConfig::default() };
        let mut n = node("relay", NodeConfig { cluster: Some(config), ..NodeConfig::default() });
        let mut refused = 0;
        for s in says {
            let input = match &s {
                BrokerSays::Up => Input::ClusterUp,
                BrokerSays::Down => Input::ClusterDown,
                BrokerSays::Presence(e, node) => Input::ClusterPresence {
                    entity: id(&format!("e{e}")),
                    node: node.map(|other| id(if other { "relay2" } else { "relay" })),
                },
                BrokerSays::Frame(e, f) => Input::ClusterFrame { to: id(&format!("e{e}")), frame: f },
                BrokerSays::Publication(f) => {
                    Input::ClusterPublication { topic: "t", origin: id("relay2"), frame: f }
                }
            };
            n.handle_input(T0, input).unwrap();
            if matches!(s, BrokerSays::Frame(..) | BrokerSays::Publication(..)) {
                refused += 1;
            }
            let out = drain(&mut n);
            let routed = out.iter().any(|o| {
                matches!(o, Output::Cluster(ClusterAction::Park { .. } | ClusterAction::Forward { .. }))
                    || matches!(o, Output::Transmit { .. })
            });
            prop_assert!(!routed, "{:?}", out);
            let stats = n.cluster_stats().unwrap();
            prop_assert!(stats.presence <= 8);
            prop_assert_eq!(stats.frames_refused, refused);
        }
    }
}

#[test]
fn a_named_node_knows_itself_by_its_name_and_lists_the_entities_on_other_nodes() {
    let config = ClusterConfig { name: Some(id("east")), ..ClusterConfig::default() };
    let mut n = node("relay", NodeConfig { cluster: Some(config), ..NodeConfig::default() });
    assert_eq!(n.cluster_name(), Some(&id("east")));
    n.handle_input(T0, Input::ClusterUp).unwrap();
    for (entity, node) in [("bob", "west"), ("carol", "east"), ("dave", "relay")] {
        let input = Input::ClusterPresence { entity: id(entity), node: Some(id(node)) };
        n.handle_input(T0, input).unwrap();
    }
    // A record naming "east" is this node's own (stale: carol is not linked here); one naming
    // "relay", its entity id but not its name, is another node's.
    assert!(matches!(n.cluster_route(T0, &id("bob")), ClusterRoute::Node(w) if w == id("west")));
    assert!(matches!(n.cluster_route(T0, &id("carol")), ClusterRoute::Mailbox));
    assert!(matches!(n.cluster_route(T0, &id("dave")), ClusterRoute::Node(r) if r == id("relay")));
    let listed: Vec<_> = n.cluster_entities(T0).map(|(e, n)| (e.clone(), n.clone())).collect();
    assert_eq!(listed, vec![(id("bob"), id("west")), (id("dave"), id("relay"))]);
    // Records not refreshed for three refreshes are no longer listed.
    let later = T0.saturating_add(ClusterConfig::default().refresh_every * 3);
    assert_eq!(n.cluster_entities(later).count(), 0);
    // A node running alone has no name and lists nobody.
    let alone = node("solo", NodeConfig::default());
    assert_eq!(alone.cluster_name(), None);
    assert_eq!(alone.cluster_entities(T0).count(), 0);
}

fn cluster_actions(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Cluster(a) => Some(format!("{a:?}")),
            _ => None,
        })
        .collect()
}

#[test]
fn publications_reach_subscribers_on_every_node_once() {
    let cluster = |name: &str| {
        let config = ClusterConfig { name: Some(id(name)), ..ClusterConfig::default() };
        let mut n = node("relay", NodeConfig { cluster: Some(config), ..NodeConfig::default() });
        n.handle_input(T0, Input::ClusterUp).unwrap();
        drain(&mut n);
        n
    };
    let (mut east, mut west) = (cluster("east"), cluster("west"));
    let sub = |who: &str, t| signed(who, MessageType::Subscribe, None, json!({"topic": "news"}), t);
    // Alice subscribes at east, bob at west: each node listens on the topic once.
    let alice = east.accept_link(T0, LinkKind::Events, id("alice"), Encoding::Json).unwrap();
    east.handle_frame(T0, alice, &sub("alice", T0));
    assert_eq!(cluster_actions(&drain(&mut east)), ["Listen(news)"]);
    let bob = west.accept_link(T0, LinkKind::Events, id("bob"), Encoding::Json).unwrap();
    west.handle_frame(T0, bob, &sub("bob", T0));
    assert_eq!(cluster_actions(&drain(&mut west)), ["Listen(news)"]);
    let carol = west.accept_link(T0, LinkKind::Peers, id("carol"), Encoding::Json).unwrap();
    let t1 = T0.saturating_add(Duration::from_millis(1));
    west.handle_frame(t1, carol, &sub("carol", t1));
    let actions = cluster_actions(&drain(&mut west));
    assert!(!actions.iter().any(|a| a.starts_with("Listen")), "already listening: {actions:?}");

    // Carol publishes at west: bob gets it there, and it goes to the cluster once.
    let t2 = T0.saturating_add(Duration::from_millis(2));
    let publish =
        signed("carol", MessageType::Publish, None, json!({"topic": "news", "data": 7}), t2);
    west.handle_frame(t2, carol, &publish);
    let out = drain(&mut west);
    assert!(matches!(frames(&out).as_slice(), [f] if **f == *publish));
    let Some(Output::Cluster(ClusterAction::Publish { topic, frame })) =
        out.into_iter().find(|o| matches!(o, Output::Cluster(_)))
    else {
        panic!("no publication for the cluster")
    };
    assert_eq!(topic, "news");
    // East fans it out to alice, the same bytes; west, hearing its own publication back from
    // the broker, does nothing.
    east.handle_input(
        t2,
        Input::ClusterPublication { topic: "news", origin: id("west"), frame: &frame },
    )
    .unwrap();
    let out = drain(&mut east);
    assert!(
        matches!(out.as_slice(), [Output::Transmit { link, frame: f }] if *link == alice && **f == *publish)
    );
    west.handle_input(
        t2,
        Input::ClusterPublication { topic: "news", origin: id("west"), frame: &frame },
    )
    .unwrap();
    assert!(drain(&mut west).is_empty(), "its own publication is not fanned out twice");

    // A publication on another topic than its channel's, or not a publication, is refused.
    for (topic, junk) in [("other", &frame[..]), ("news", b"{}"), ("news", &sub("x", t2)[..])] {
        east.handle_input(t2, Input::ClusterPublication { topic, origin: id("west"), frame: junk })
            .unwrap();
    }
    assert!(drain(&mut east).is_empty());
    assert_eq!(east.cluster_stats().map(|s| s.frames_refused), Some(3));

    // The last subscriber gone, the node stops listening; back from an outage, it listens
    // again on what it has.
    east.link_closed(t2, alice);
    assert_eq!(cluster_actions(&drain(&mut east)), ["Unlisten(news)"]);
    west.handle_input(t2, Input::ClusterDown).unwrap();
    west.handle_input(t2, Input::ClusterUp).unwrap();
    let again = cluster_actions(&drain(&mut west));
    assert!(again.contains(&"Listen(news)".to_owned()), "{again:?}");
}

#[test]
fn an_entity_polling_a_node_is_announced_there_while_it_polls() {
    let mut p = two_relays(TransportPreference::HttpOnly);
    // Bob reaches the cluster only by polling relay2: he is announced there.
    p.advance(Duration::from_millis(100));
    let announced =
        |p: &Pump| p.broker.log.iter().any(|(n, a)| n == "relay2" && a == "Announce(bob)");
    assert!(announced(&p), "{:?}", p.broker.log);
    let now = p.now;
    let m = p.node("alice").send(now, &id("bob"), b"to a poller".to_vec(), SendOptions::default());
    let m = m.unwrap();
    p.run();
    p.advance(Duration::from_secs(5));
    assert_eq!(p.messages_at("bob"), vec![b"to a poller".to_vec()]);
    assert!(p.broker.log.iter().any(|(n, a)| n == "relay" && a.starts_with("Forward(to bob")));
    assert!(
        p.events_of("alice").iter().any(|e| matches!(e, Event::Delivered { id, .. } if *id == m))
    );
    // Bob stops polling (relay2 answers him 503 from now on): two refreshes later relay2
    // withdraws him.
    p.http_status.insert("relay2".to_owned(), 503);
    let before = p.broker.log.len();
    p.advance(ClusterConfig::default().refresh_every * 4);
    let withdrawn =
        p.broker.log[before..].iter().any(|(n, a)| n == "relay2" && a == "Withdraw(bob)");
    assert!(withdrawn, "{:?}", &p.broker.log[before..]);
}

#[test]
fn mail_for_an_entity_linked_or_polling_here_is_drained_at_once() {
    let mut n = node(
        "relay",
        NodeConfig { cluster: Some(ClusterConfig::default()), ..NodeConfig::default() },
    );
    n.handle_input(T0, Input::ClusterUp).unwrap();
    let _bob = n.accept_link(T0, LinkKind::Peers, id("bob"), Encoding::Json).unwrap();
    drain(&mut n);
    n.handle_input(T0, Input::ClusterMail { entity: id("bob") }).unwrap();
    assert_eq!(cluster_actions(&drain(&mut n)), ["Drain(bob)"]);
    // Mail for someone neither linked nor polling here is not this node's to drain.
    n.handle_input(T0, Input::ClusterMail { entity: id("carol") }).unwrap();
    assert!(cluster_actions(&drain(&mut n)).is_empty());
}

#[test]
fn an_unknown_recipient_is_retry_later_on_an_open_cluster_node_only() {
    let frame = || Arc::<[u8]>::from(&b"sealed"[..]);
    let cluster =
        || NodeConfig { cluster: Some(ClusterConfig::default()), ..NodeConfig::default() };
    // Open policy, one of a cluster: zed may have linked to another node a moment ago.
    let mut open = open_node("relay", cluster());
    open.handle_input(T0, Input::ClusterUp).unwrap();
    assert_eq!(open.deliver_to_entity(T0, &id("zed"), frame()), Err(ErrorCode::MailboxFull));
    // Once presence names his node, his frames go there.
    let input = Input::ClusterPresence { entity: id("zed"), node: Some(id("relay2")) };
    open.handle_input(T0, input).unwrap();
    drain(&mut open);
    assert!(open.deliver_to_entity(T0, &id("zed"), frame()).is_ok());
    assert_eq!(cluster_actions(&drain(&mut open)), ["Forward(to zed via relay2, 6 bytes)"]);
    // Alone, or under the allowlist (every node trusts the same entities), unknown is unknown.
    let mut alone = open_node("relay", NodeConfig::default());
    assert_eq!(alone.deliver_to_entity(T0, &id("zed"), frame()), Err(ErrorCode::UnknownRecipient));
    let mut listed = node("relay", cluster());
    listed.handle_input(T0, Input::ClusterUp).unwrap();
    assert_eq!(listed.deliver_to_entity(T0, &id("zed"), frame()), Err(ErrorCode::UnknownRecipient));
}

#[test]
fn frames_drained_for_a_polling_entity_wait_for_its_next_poll_there_in_order() {
    let pref = TransportPreference::HttpOnly;
    let mut p = cluster_of(pref, &[("alice", "relay")]);
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"two".to_vec(), SendOptions::default()).unwrap();
    p.run();
    // Bob is away long enough for alice to try her handshake again: two frames wait.
    p.advance(Duration::from_secs(8));
    assert!(p.parked("bob") >= 2, "{:?}", p.broker.log);
    // Bob polls relay2: the first drained frame answers his poll, the others wait on relay2 for
    // his next poll, rather than going back to the end of his shared mailbox (out of order,
    // and round again at every poll). (Found by the cluster simulator.)
    let before = p.broker.log.len();
    add_client(&mut p, "bob", "relay2", pref);
    p.run();
    let parked_again =
        p.broker.log[before..].iter().any(|(n, a)| n == "relay2" && a.starts_with("Park"));
    assert!(!parked_again, "{:?}", &p.broker.log[before..]);
    p.advance(Duration::from_secs(3));
    assert_eq!(p.messages_at("bob"), vec![b"two".to_vec()]);
}

#[test]
fn an_entity_that_posts_without_polling_gets_its_shared_mailbox_on_that_relay() {
    let mut p = cluster_of(TransportPreference::WebsocketFirst, &[("alice", "relay")]);
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"post".to_vec(), SendOptions::default()).unwrap();
    p.run();
    assert!(p.parked("bob") > 0, "{:?}", p.broker.log);
    // Bob posts to relay2 (his link is down and he holds no poll): what waits for him comes to
    // relay2, for the answer to his next call there (spec §21), as a single relay's mailbox
    // would give it him. (Found by the cluster simulator.)
    let now = p.now;
    let call = HttpCall::post(Vec::new());
    p.node("relay2").handle_http_request(now, bearer("bob", now), call);
    p.run();
    assert_eq!(p.parked("bob"), 0, "{:?}", p.broker.log);
    assert!(p.node("relay2").mailbox_bytes() > 0);
}
