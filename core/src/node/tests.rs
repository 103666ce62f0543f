//! Node tests: hostile input on links and HTTP, relaying and mailboxes, heartbeats, topics, and
//! end-to-end exchanges through an in-memory network with zero latency.

use crate::wire::{self, Encoding};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::json;

use super::*;
use crate::envelope::{Envelope, Payload};
use crate::error::ErrorCode;
use crate::identity::{Identity, TrustPolicy};
use crate::rate_limit::RateLimit;
use crate::signed::{ErrorBody, signed_message};
use crate::transport::TransportPreference;

mod app_types;
mod binary_links;
mod cluster;
mod delivery;
mod durable;
mod failover;
mod http_answers;
mod http_bodies;
mod idle;
mod input;
mod offload;
mod open;
mod recovery;

const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

fn ident(name: &str) -> Identity {
    let seed = name.bytes().fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    Identity::from_secret_bytes(EntityId::new(name).unwrap(), &[seed; 32])
}

fn trust_all(names: &[&str]) -> TrustStore {
    let mut t = TrustStore::new(TrustPolicy::Allowlist);
    for n in names {
        let i = ident(n);
        t.insert(i.id().clone(), i.public_key());
    }
    t
}

fn node(name: &str, config: NodeConfig) -> Node {
    let names = ["relay", "relay2", "alice", "bob", "carol"];
    let rng = ChaCha20Rng::seed_from_u64(name.len() as u64);
    Node::new(config, ident(name), trust_all(&names), rng).unwrap()
}

fn id(name: &str) -> EntityId {
    EntityId::new(name).unwrap()
}

/// What a driver hands the node for `name` presenting a fresh token: the key `name` proved at
/// `/auth` (spec §2.3), valid for the default hour plus the clock skew.
fn bearer(name: &str, now: Timestamp) -> Bearer {
    Bearer::with_key(id(name), ident(name).public_key(), now.saturating_add(TOKEN_LIFE))
}

const TOKEN_LIFE: Duration = Duration::from_secs(3600 + 300);

/// A node with the open policy whose trust store holds nobody.
fn open_node(name: &str, config: NodeConfig) -> Node {
    let rng = ChaCha20Rng::seed_from_u64(name.len() as u64);
    Node::new(config, ident(name), TrustStore::new(TrustPolicy::Open), rng).unwrap()
}

/// `n`'s outputs; work it handed out is run and completed at once, as a driver would, and the
/// outputs that gives follow.
fn drain(n: &mut Node) -> Vec<Output> {
    let mut out = Vec::new();
    while let Some(o) = n.poll_output() {
        match o {
            Output::Work(work) => {
                let at = work.handed_out_at();
                n.complete_work(at, work.run());
            }
            o => out.push(o),
        }
    }
    out
}

/// The codes of the `ERROR` frames among `outputs`.
fn error_codes(outputs: &[Output]) -> Vec<ErrorCode> {
    frames(outputs)
        .iter()
        .filter_map(|f| crate::wire::decode(f, 1 << 20).ok())
        .filter(|e| e.message_type == MessageType::Error)
        .filter_map(|e| ErrorBody::parse(&e.payload).ok().map(|b| b.code))
        .collect()
}

/// Hands `frame` to `n` as a driver would: a binary envelope as a binary message.
fn deliver(n: &mut Node, now: Timestamp, link: LinkId, frame: &[u8]) {
    if Encoding::of(frame) == Encoding::Binary {
        n.handle_binary_frame(now, link, frame);
    } else {
        n.handle_frame(now, link, frame);
    }
}

fn frames(outputs: &[Output]) -> Vec<Arc<[u8]>> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Transmit { frame, .. } => Some(Arc::clone(frame)),
            _ => None,
        })
        .collect()
}

fn types(outputs: &[Output]) -> Vec<MessageType> {
    frames(outputs)
        .iter()
        .filter_map(|f| crate::wire::decode(f, 1 << 20).ok())
        .map(|e| e.message_type)
        .collect()
}

fn signed(
    from: &str,
    kind: MessageType,
    to: Option<&str>,
    payload: serde_json::Value,
    now: Timestamp,
) -> Vec<u8> {
    let mut rng = ChaCha20Rng::seed_from_u64(now.as_unix_millis() ^ kind as u64);
    signed_message(
        &ident(from),
        kind,
        to.map(id),
        None,
        Payload::new(payload).unwrap(),
        now,
        &mut rng,
    )
    .unwrap()
    .encode()
}

/// A frame from `from` for `to` that a relay forwards without opening (a `PEER_MESSAGE` header
/// with an opaque payload).
/// NDJSON of one frame.
fn ndjson_line(frame: &[u8]) -> Vec<u8> {
    let mut body = frame.to_vec();
    body.push(b'\n');
    body
}

fn opaque_for(from: &str, to: &str, n: u64) -> Vec<u8> {
    let env = Envelope {
        message_id: MessageId::new(format!("m{n}")).unwrap(),
        message_type: MessageType::PeerMessage,
        version: crate::PROTOCOL_VERSION.to_owned(),
        timestamp: T0,
        seq: n + 1,
        session_id: Some(crate::ids::SessionId::new("sess_x").unwrap()),
        sender_id: id(from),
        recipient_id: Some(id(to)),
        payload: Payload::string("AAAA".to_owned()),
        nonce: [0; 12],
        signature: None,
        verified: crate::envelope::Verified::NO,
    };
    env.encode()
}

#[test]
fn hostile_frames_get_typed_errors_and_the_node_keeps_serving() {
    let mut relay = node("relay", NodeConfig::default());
    let link = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Json).unwrap();
    drain(&mut relay);
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (b"not json".to_vec(), ErrorCode::InvalidMessage),
        (vec![0xff, 0x00, 0x13], ErrorCode::InvalidMessage),
        (vec![b' '; (1 << 20) + 1], ErrorCode::MessageTooLarge),
        (b"{\"type\":\"PING\"}".to_vec(), ErrorCode::InvalidMessage),
    ];
    for (frame, code) in cases {
        relay.handle_frame(T0, link, &frame);
        let out = drain(&mut relay);
        assert_eq!(error_codes(&out), vec![code]);
        assert!(!out.iter().any(|o| matches!(o, Output::CloseLink { .. })));
    }
    // A replayed signed message is refused; a fresh one is answered.
    let ping = signed("alice", MessageType::Ping, None, json!({}), T0);
    relay.handle_frame(T0, link, &ping);
    assert_eq!(types(&drain(&mut relay)), vec![MessageType::Pong]);
    relay.handle_frame(T0, link, &ping);
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::ReplayDetected]);
    // A message older than the allowed skew is refused too.
    let stale = signed(
        "alice",
        MessageType::Ping,
        None,
        json!({}),
        T0.saturating_sub(Duration::from_secs(301)),
    );
    relay.handle_frame(T0, link, &stale);
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::ReplayDetected]);
    assert_eq!(relay.link_count(), 1);
}

#[test]
fn a_link_cannot_send_as_another_entity() {
    let mut relay = node("relay", NodeConfig::default());
    let link = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Json).unwrap();
    relay.handle_frame(T0, link, &signed("bob", MessageType::Ping, None, json!({}), T0));
    let out = drain(&mut relay);
    assert_eq!(error_codes(&out), vec![ErrorCode::AuthenticationFailed]);
    assert!(out.iter().any(|o| matches!(o, Output::CloseLink { link: l, .. } if *l == link)));
    assert_eq!(relay.link_count(), 0);
    // Entities outside the allowlist cannot attach at all.
    assert_eq!(
        relay.accept_link(T0, LinkKind::Peers, id("mallory"), Encoding::Json),
        Err(ErrorCode::AuthenticationFailed)
    );
}

#[test]
fn links_are_rate_limited_and_heartbeats_more_so() {
    let config = NodeConfig { link_rate: RateLimit::per_minute(5), ..NodeConfig::default() };
    let mut relay = node("relay", config);
    let link = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Json).unwrap();
    let mut codes = Vec::new();
    for n in 0..8 {
        relay.handle_frame(T0, link, &opaque_for("alice", "bob", n));
        codes.extend(error_codes(&drain(&mut relay)));
    }
    assert_eq!(codes, vec![ErrorCode::RateLimitExceeded; 3]);
    assert_eq!(relay.mailbox_len(), 5);

    let mut relay = node("relay", NodeConfig::default());
    let link = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Json).unwrap();
    let mut kinds = Vec::new();
    for n in 0..3u64 {
        let t = T0.saturating_add(Duration::from_millis(n));
        relay.handle_frame(t, link, &signed("alice", MessageType::Ping, None, json!({}), t));
        let out = drain(&mut relay);
        kinds.extend(types(&out));
    }
    // Seed 002: at most 2 heartbeats a minute from a peer.
    assert_eq!(kinds, vec![MessageType::Pong, MessageType::Pong, MessageType::Error]);
}

#[test]
fn idle_links_are_pinged_and_silent_ones_closed() {
    let mut relay = node("relay", NodeConfig::default());
    let link = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Json).unwrap();
    drain(&mut relay);
    assert_eq!(relay.poll_timeout(), Some(T0.saturating_add(Duration::from_secs(30))));
    relay.handle_timeout(T0.saturating_add(Duration::from_secs(30)));
    assert_eq!(types(&drain(&mut relay)), vec![MessageType::Ping]);
    // Nothing back within the 10 s grace: the link is dead (seed 002: 30 s + 10 s).
    relay.handle_timeout(T0.saturating_add(Duration::from_secs(40)));
    let out = drain(&mut relay);
    assert!(out.iter().any(|o| matches!(o, Output::CloseLink { link: l, reason: Some(ErrorCode::Timeout) } if *l == link)));
    assert_eq!(relay.link_count(), 0);
}

#[test]
fn relay_queues_for_offline_entities_and_refuses_unknown_ones() {
    let config = NodeConfig { mailbox_messages: 3, ..NodeConfig::default() };
    let mut relay = node("relay", config);
    let alice = relay.accept_link(T0, LinkKind::Peers, id("alice"), Encoding::Json).unwrap();
    let mut codes = Vec::new();
    for n in 0..4 {
        relay.handle_frame(T0, alice, &opaque_for("alice", "bob", n));
        codes.extend(error_codes(&drain(&mut relay)));
    }
    assert_eq!(codes, vec![ErrorCode::MailboxFull]);
    relay.handle_frame(T0, alice, &opaque_for("alice", "mallory", 9));
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::UnknownRecipient]);
    // Bob polls over HTTP: the poll drains the mailbox in order.
    let poll = relay.handle_http_request(T0, id("bob"), HttpCall::poll(None));
    let out = drain(&mut relay);
    let Some(Output::HttpRespond { request, status: 200, body, .. }) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(*request, poll);
    let ids: Vec<String> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| crate::wire::decode(l, 1 << 20).unwrap().message_id.as_str().to_owned())
        .collect();
    assert_eq!(ids, vec!["m0", "m1", "m2"]);
    assert_eq!(relay.mailbox_len(), 0);
    // A held poll is answered as soon as something arrives.
    let poll = relay.handle_http_request(T0, id("bob"), HttpCall::poll(None));
    assert!(drain(&mut relay).is_empty());
    relay.handle_frame(T0, alice, &opaque_for("alice", "bob", 7));
    let out = drain(&mut relay);
    assert!(
        matches!(out.as_slice(), [Output::HttpRespond { request, status: 200, body, .. }] if *request == poll && !body.is_empty())
    );
    // Or empty once the poll wait passes.
    let poll = relay.handle_http_request(T0, id("bob"), HttpCall::poll(None));
    relay.handle_timeout(T0.saturating_add(Duration::from_secs(25)));
    let out = drain(&mut relay);
    assert!(out.iter().any(|o| matches!(o, Output::HttpRespond { request, body, .. } if *request == poll && body.is_empty())));
    // Frames for an entity that connects over WebSocket go to its link.
    relay.handle_frame(T0, alice, &opaque_for("alice", "bob", 8));
    drain(&mut relay);
    let bob = relay.accept_link(T0, LinkKind::Peers, id("bob"), Encoding::Json).unwrap();
    let out = drain(&mut relay);
    assert!(matches!(out.as_slice(), [Output::Transmit { link, .. }] if *link == bob));
}

#[test]
fn topics_send_the_same_bytes_to_every_subscriber() {
    let mut relay = node("relay", NodeConfig::default());
    let a = relay.accept_link(T0, LinkKind::Events, id("alice"), Encoding::Json).unwrap();
    let b = relay.accept_link(T0, LinkKind::Events, id("bob"), Encoding::Json).unwrap();
    let sub =
        |who: &str, t| signed(who, MessageType::Subscribe, None, json!({"topic": "training"}), t);
    relay.handle_frame(T0, a, &sub("alice", T0));
    relay.handle_frame(T0, b, &sub("bob", T0.saturating_add(Duration::from_millis(1))));
    drain(&mut relay);
    assert_eq!(relay.publish(T0, "training", json!({"progress": 42})).unwrap(), 2);
    let out = drain(&mut relay);
    let sent = frames(&out);
    assert_eq!(sent.len(), 2);
    assert!(Arc::ptr_eq(&sent[0], &sent[1]), "encoded once, shared");
    // A client publishes: every other subscriber gets its frame.
    let publish =
        signed("alice", MessageType::Publish, None, json!({"topic": "training", "data": 1}), T0);
    relay.handle_frame(T0, a, &publish);
    let out = drain(&mut relay);
    assert!(matches!(out.as_slice(), [Output::Transmit { link, .. }] if *link == b));
    // Closed links leave their topics.
    relay.link_closed(T0, b);
    assert_eq!(relay.publish(T0, "training", json!(null)).unwrap(), 1);
    assert!(relay.publish(T0, "bad topic!", json!(null)).is_err());
    // Subscribing needs a signed message with a valid topic.
    let t1 = T0.saturating_add(Duration::from_millis(5));
    relay.handle_frame(
        t1,
        a,
        &signed("alice", MessageType::Subscribe, None, json!({"topic": ""}), t1),
    );
    assert_eq!(error_codes(&drain(&mut relay)), vec![ErrorCode::InvalidMessage]);
}

/// An in-memory network with zero latency.
struct Pump {
    nodes: BTreeMap<String, Node>,
    pairs: BTreeMap<(String, LinkId), (String, LinkId)>,
    http: BTreeMap<(String, RequestId), (String, RequestId)>,
    now: Timestamp,
    events: Vec<(String, Event)>,
    /// Nodes whose HTTP server answers every request with this status instead.
    http_status: BTreeMap<String, u16>,
    /// Nodes refusing WebSocket connections.
    no_ws: Vec<String>,
    /// Nodes whose HTTP `POST`s are held (in flight, unanswered) until [`Pump::release_posts`].
    hold_posts: Vec<String>,
    held: Vec<(String, Output)>,
    /// Frames of these types written by these nodes on links are lost.
    lose: Vec<(String, MessageType)>,
    /// The URL of every link a node opened, with the node's name, in order.
    opened: Vec<(String, String)>,
    /// The cluster's broker, for nodes with a `NodeConfig::cluster`.
    broker: cluster::Broker,
    /// Each durable node's store, written as its `Persist` outputs come.
    stores: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Nodes to crash right after their next write (a crash between a write and what follows
    /// it).
    crash_after_write: BTreeMap<String, NodeConfig>,
    /// Outcomes (`Delivered`, `Failed`) a crash after a write kept from the application.
    lost_outcomes: Vec<(String, MessageId)>,
    /// Work handed out is held here (by node) until [`Pump::finish_work`], rather than run at
    /// once.
    hold_work: bool,
    held_work: Vec<(String, super::Work)>,
    /// Durable nodes whose application takes none of its events (they wait in a queue).
    slow_apps: Vec<String>,
    /// Per durable node, the payloads handed to its application that no committed receive
    /// position covers yet.
    handed: BTreeMap<String, Vec<Vec<u8>>>,
    /// Payloads a crash of their receiver allows to be handed once more each (spec §26.2: a
    /// crash between the application taking a message and the commit of its position).
    repeats_allowed: BTreeMap<Vec<u8>, usize>,
    restarts: u64,
    /// Link ends (node, link) that agreed on the binary envelope (spec §27.1).
    binary: std::collections::BTreeSet<(String, LinkId)>,
    /// Binary frames carried on links, and frames of either encoding.
    binary_frames: u64,
    link_frames: u64,
    /// Whether each HTTP call held by a server (server, its request id) accepted binary.
    accepts: BTreeMap<(String, RequestId), bool>,
    /// Binary `POST`s held by a server (server, its request id).
    binary_posts: std::collections::BTreeSet<(String, RequestId)>,
    /// (client, server) pairs where the server answered the client in binary.
    learned: std::collections::BTreeSet<(String, String)>,
    /// Binary HTTP bodies (requests and answers), and bodies of either encoding.
    binary_bodies: u64,
    http_bodies: u64,
    /// `415` answers (a binary body to a node that speaks JSON alone).
    unsupported: u64,
}

/// Every envelope of an HTTP body is in the encoding the body says (spec §27.7): JSON lines in
/// NDJSON, well-framed binary envelopes in a binary body.
fn assert_body(body: &[u8], encoding: Encoding) {
    for frame in crate::http_body::frames(body, encoding, usize::MAX) {
        let frame = frame.expect("a body the node made frames well");
        assert_eq!(Encoding::of(frame), encoding, "an envelope of the other encoding in a body");
    }
}

impl Pump {
    fn new(names: &[(&str, NodeConfig)]) -> Self {
        // Every node of a pump hands its public-key work out, as the drivers' nodes do, every
        // signature check included; the pump runs it at once unless a test holds it.
        let nodes = names
            .iter()
            .map(|(n, c)| {
                (
                    (*n).to_owned(),
                    node(
                        n,
                        NodeConfig { offload_work: true, offload_verify_min_bytes: 0, ..c.clone() },
                    ),
                )
            })
            .collect();
        Self {
            nodes,
            pairs: BTreeMap::new(),
            http: BTreeMap::new(),
            now: T0,
            events: Vec::new(),
            http_status: BTreeMap::new(),
            no_ws: Vec::new(),
            hold_posts: Vec::new(),
            held: Vec::new(),
            lose: Vec::new(),
            opened: Vec::new(),
            broker: cluster::Broker::default(),
            stores: BTreeMap::new(),
            crash_after_write: BTreeMap::new(),
            lost_outcomes: Vec::new(),
            hold_work: false,
            held_work: Vec::new(),
            slow_apps: Vec::new(),
            handed: BTreeMap::new(),
            repeats_allowed: BTreeMap::new(),
            restarts: 0,
            binary: Default::default(),
            binary_frames: 0,
            link_frames: 0,
            accepts: BTreeMap::new(),
            binary_posts: Default::default(),
            learned: Default::default(),
            binary_bodies: 0,
            http_bodies: 0,
            unsupported: 0,
        }
    }

    fn addr(name: &str) -> NodeAddr {
        NodeAddr { entity: id(name), base_url: format!("http://{name}.test") }
    }

    fn target(url: &str) -> String {
        url.split("//").nth(1).and_then(|s| s.split('.').next()).unwrap_or_default().to_owned()
    }

    fn node(&mut self, name: &str) -> &mut Node {
        self.nodes.get_mut(name).unwrap()
    }

    /// Feeds `name` one input now; only an accepted link or call gives an id back.
    fn input(&mut self, name: &str, input: Input<'_>) {
        let now = self.now;
        // A node taken out of the network (see the durable tests) hears nothing.
        let Some(n) = self.nodes.get_mut(name) else { return };
        assert_eq!(n.handle_input(now, input), Ok(Handled::Done));
    }

    fn run(&mut self) {
        for _ in 0..10_000 {
            let mut progressed = false;
            let names: Vec<String> = self.nodes.keys().cloned().collect();
            for name in names {
                if self.node(&name).config.durable {
                    progressed |= self.carry_group_committed(&name);
                    continue;
                }
                while let Some(out) = self.node(&name).poll_output() {
                    progressed = true;
                    self.carry(&name, out);
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("network did not settle");
    }

    /// Carries out a durable node's outputs as a driver does: events and what precedes its
    /// first write at once, then every write (one transaction), then the rest. A node in
    /// `crash_after_write` crashes after the writes instead of carrying out the rest.
    fn carry_group_committed(&mut self, name: &str) -> bool {
        // The application took the events of the last round (this network hands them over at
        // once).
        let now = self.now;
        if self.slow_apps.iter().any(|n| n == name) {
            self.node(name).set_app_backlog(1);
        } else {
            self.node(name).events_taken(now);
        }
        // A position written in this round covers what was handed before it.
        let handed_before = self.handed.get(name).map_or(0, Vec::len);
        let outputs = drain(self.node(name));
        let any = !outputs.is_empty();
        let (mut writes, mut held) = (Vec::new(), Vec::new());
        for out in outputs {
            match out {
                Output::Persist(_) => writes.push(out),
                _ if writes.is_empty() || !out.waits_for_writes() => self.carry(name, out),
                _ => held.push(out),
            }
        }
        if writes.is_empty() {
            return any;
        }
        let positions = writes.iter().any(
            |w| matches!(w, Output::Persist(crate::durable::StoreOp::Put { key, .. }) if key.first() == Some(&b'r')),
        );
        for write in writes {
            self.carry(name, write);
        }
        if positions && let Some(h) = self.handed.get_mut(name) {
            h.drain(..handed_before.min(h.len()));
        }
        if let Some(config) = self.crash_after_write.remove(name) {
            // The outcomes held behind the writes die with the process.
            for out in &held {
                if let Output::Event(Event::Delivered { id, .. } | Event::Failed { id, .. }) = out {
                    self.lost_outcomes.push((name.to_owned(), id.clone()));
                }
            }
            self.crash(name, config);
            return true;
        }
        for out in held {
            self.carry(name, out);
        }
        true
    }

    fn carry(&mut self, from: &str, out: Output) {
        let now = self.now;
        match out {
            Output::OpenLink { link, url, kind, node, offer_binary } => {
                let to = Self::target(&url);
                assert_eq!(node, Self::addr(&to), "the link names the node its URL is at");
                self.opened.push((from.to_owned(), url.clone()));
                let me = bearer(from, now);
                // Negotiated as a driver does (spec §27.1): the server selects binary if offered
                // and its `binary_links` allows; the client reads the server's answer.
                let offered = offer_binary.then_some(wire::BINARY_SUBPROTOCOL);
                let accepted = if self.no_ws.contains(&to) || !self.nodes.contains_key(&to) {
                    None
                } else {
                    let server_wants = self.node(&to).config().binary_links;
                    let encoding = wire::choose(offered, server_wants);
                    match self
                        .node(&to)
                        .handle_input(now, Input::AcceptLink { kind, who: me, encoding })
                    {
                        Ok(Handled::Link(server)) => Some((server, encoding)),
                        _ => None,
                    }
                };
                let answer = match accepted {
                    Some((server, encoding)) => {
                        self.pairs.insert((from.to_owned(), link), (to.clone(), server));
                        self.pairs.insert((to.clone(), server), (from.to_owned(), link));
                        let encoding = wire::selected(encoding.subprotocol(), offer_binary);
                        if encoding == Encoding::Binary {
                            self.binary.insert((to, server));
                            self.binary.insert((from.to_owned(), link));
                        }
                        Input::LinkUp { link, encoding }
                    }
                    None => Input::LinkFailed(link),
                };
                self.input(from, answer);
            }
            Output::Transmit { link, frame } => {
                let lost = !self.lose.is_empty()
                    && wire::decode(&frame, 1 << 20).is_ok_and(|e| {
                        self.lose.iter().any(|(n, t)| n == from && *t == e.message_type)
                    });
                if lost {
                    return;
                }
                self.link_frames += 1;
                if Encoding::of(&frame) == Encoding::Binary {
                    assert!(
                        self.binary.contains(&(from.to_owned(), link)),
                        "a binary frame on a link that did not agree on it"
                    );
                    self.binary_frames += 1;
                }
                if let Some((to, l)) = self.pairs.get(&(from.to_owned(), link)).cloned() {
                    // As a driver writes it: a binary envelope as a binary message.
                    let input = if Encoding::of(&frame) == Encoding::Binary {
                        Input::BinaryFrame { link: l, frame: &frame }
                    } else {
                        Input::Frame { link: l, frame: &frame }
                    };
                    self.input(&to, input);
                }
            }
            Output::CloseLink { link, .. } => {
                if let Some((to, l)) = self.pairs.remove(&(from.to_owned(), link)) {
                    self.pairs.remove(&(to.clone(), l));
                    self.input(&to, Input::LinkClosed(l));
                }
            }
            Output::HttpRequest { method: HttpMethod::Post, .. }
                if self.hold_posts.iter().any(|n| n == from) =>
            {
                self.held.push((from.to_owned(), out));
            }
            Output::HttpRequest {
                request,
                method,
                url,
                body,
                node,
                body_encoding,
                accept_binary,
            } => {
                // As a driver carries it: the headers, and what the other side reads in them.
                let content_type = body_encoding.media_type();
                let accept = wire::accept_header(accept_binary);
                assert_body(&body, body_encoding);
                let to = Self::target(&url);
                assert_eq!(node, Self::addr(&to), "the request names the node its URL is at");
                let binary_links =
                    |n: &str| self.nodes.get(n).is_some_and(|n| n.config.binary_links);
                assert_eq!(
                    accept_binary,
                    binary_links(from),
                    "a client offers binary per its config"
                );
                // A client posts binary only to a server that answered it binary before; a
                // server that has stopped speaking binary since (a restart) answers 415.
                let binary_post = method == HttpMethod::Post && body_encoding == Encoding::Binary;
                if binary_post {
                    assert!(
                        binary_links(from) && self.learned.contains(&(from.to_owned(), to.clone())),
                        "a binary body from {from} to {to}, which never answered it binary"
                    );
                }
                if !body.is_empty() {
                    self.http_bodies += 1;
                    self.binary_bodies += u64::from(body_encoding == Encoding::Binary);
                }
                if let Some(status) = self.http_status.get(&to).copied() {
                    let encoding = Encoding::Json;
                    self.input(from, Input::HttpResponse { request, status, body: &[], encoding });
                    return;
                }
                if !self.nodes.contains_key(&to) {
                    self.input(from, Input::HttpFailed(request));
                    return;
                }
                let accept_binary = wire::accepts_binary(Some(accept));
                let call = match method {
                    HttpMethod::Post => {
                        let encoding = wire::body_encoding(Some(content_type));
                        HttpCall::PostMessages { body, encoding, accept_binary }
                    }
                    HttpMethod::Get => {
                        let query = url.split_once('?').map(|(_, q)| q);
                        let wait = crate::endpoints::poll_wait_of(query).unwrap();
                        HttpCall::Poll { wait, accept_binary }
                    }
                };
                let me = bearer(from, now);
                let Ok(Handled::Call(server)) =
                    self.node(&to).handle_input(now, Input::HttpCall { who: me, call })
                else {
                    panic!("an HTTP call is always taken");
                };
                self.accepts.insert((to.clone(), server), accept_binary);
                if binary_post {
                    self.binary_posts.insert((to.clone(), server));
                }
                self.http.insert((to, server), (from.to_owned(), request));
            }
            Output::HttpRespond { request, status, body, encoding } => {
                assert_body(&body, encoding);
                let accepted = self.accepts.remove(&(from.to_owned(), request));
                let binary_links = self.nodes.get(from).is_some_and(|n| n.config.binary_links);
                if self.binary_posts.remove(&(from.to_owned(), request)) && !binary_links {
                    assert_eq!(status, 415, "a binary body to {from}, which speaks JSON alone");
                }
                self.unsupported += u64::from(status == 415);
                if encoding == Encoding::Binary {
                    let binary_links = self.nodes.get(from).is_some_and(|n| n.config.binary_links);
                    assert!(
                        accepted == Some(true) && binary_links,
                        "a binary answer from {from} to a call that did not agree on it"
                    );
                }
                if !body.is_empty() {
                    self.http_bodies += 1;
                    self.binary_bodies += u64::from(encoding == Encoding::Binary);
                }
                if let Some((client, r)) = self.http.remove(&(from.to_owned(), request)) {
                    if self.nodes.contains_key(&client) {
                        if encoding == Encoding::Binary {
                            self.learned.insert((client.clone(), from.to_owned()));
                        }
                        let stated = wire::body_encoding(Some(encoding.media_type()));
                        self.input(
                            &client,
                            Input::HttpResponse {
                                request: r,
                                status,
                                body: &body,
                                encoding: stated,
                            },
                        );
                    } else {
                        // The client is gone (taken out of the network): the answer cannot be
                        // written, as a driver finds.
                        self.node(from).http_answer_lost(now, &id(&client), &body, encoding);
                    }
                }
            }
            Output::Event(e) => {
                if let Event::Message { payload, .. } = &e
                    && self.nodes.get(from).is_some_and(|n| n.config.durable)
                {
                    self.handed.entry(from.to_owned()).or_default().push(payload.clone());
                }
                self.events.push((from.to_owned(), e));
            }
            Output::Cluster(action) => self.carry_cluster(from, action),
            Output::Work(work) if self.hold_work => self.held_work.push((from.to_owned(), work)),
            Output::Work(work) => {
                let done = work.run();
                self.node(from).complete_work(now, done);
            }
            Output::Persist(op) => {
                let store = self.stores.entry(from.to_owned()).or_default();
                match op {
                    crate::durable::StoreOp::Put { key, value } => {
                        store.insert(key, value);
                    }
                    crate::durable::StoreOp::Delete { key } => {
                        store.remove(&key);
                    }
                }
            }
        }
    }

    /// Kills `name` (its links close, its HTTP exchanges fail, its outputs not yet carried out
    /// are lost) and starts it again from its store with `config`.
    fn crash(&mut self, name: &str, config: NodeConfig) -> RestoreSummary {
        let now = self.now;
        let links: Vec<(String, LinkId)> =
            self.pairs.keys().filter(|(n, _)| n == name).cloned().collect();
        for key in links {
            if let Some((to, tl)) = self.pairs.remove(&key) {
                self.pairs.remove(&(to.clone(), tl));
                self.node(&to).link_closed(now, tl);
            }
        }
        let calls: Vec<_> = self.http.keys().cloned().collect();
        for key in calls {
            let (server, _) = &key;
            let client = self.http.get(&key).map(|(c, _)| c.clone()).unwrap_or_default();
            if server == name {
                self.accepts.remove(&key);
                self.binary_posts.remove(&key);
                if let Some((c, r)) = self.http.remove(&key) {
                    self.input(&c, Input::HttpFailed(r));
                }
            } else if client == name {
                self.http.remove(&key);
            }
        }
        self.held.retain(|(n, _)| n != name);
        for payload in self.handed.remove(name).unwrap_or_default() {
            *self.repeats_allowed.entry(payload).or_default() += 1;
        }
        self.restarts += 1;
        let names = ["relay", "relay2", "alice", "bob", "carol"];
        let rng = ChaCha20Rng::seed_from_u64(1_000 + self.restarts);
        let mut n = Node::new(config, ident(name), trust_all(&names), rng).unwrap();
        let entries = self.stores.get(name).cloned().unwrap_or_default();
        let summary = n.restore(now, entries).unwrap();
        self.nodes.insert(name.to_owned(), n);
        summary
    }

    fn advance(&mut self, by: Duration) {
        let until = self.now.saturating_add(by);
        // Rounds in a row without time moving on: a timer due again at once, forever, is a bug.
        let mut stuck = 0u32;
        loop {
            let next = self.nodes.values().filter_map(Node::poll_timeout).min();
            match next {
                Some(t) if t <= until => {
                    stuck = if t <= self.now { stuck + 1 } else { 0 };
                    assert!(stuck < 10_000, "a timer stays due at {t:?}");
                    self.now = self.now.max(t);
                    let now = self.now;
                    for n in self.nodes.values_mut() {
                        if n.poll_timeout().is_some_and(|t| t <= now) {
                            n.handle_timeout(now);
                        }
                    }
                    self.run();
                }
                _ => break,
            }
        }
        self.now = until;
    }

    fn cut(&mut self, a: &str) {
        let links: Vec<(String, LinkId)> =
            self.pairs.keys().filter(|(n, _)| n == a).cloned().collect();
        for (n, l) in links {
            if let Some((to, tl)) = self.pairs.remove(&(n.clone(), l)) {
                self.pairs.remove(&(to.clone(), tl));
                let now = self.now;
                self.node(&to).link_closed(now, tl);
                self.node(&n).link_closed(now, l);
            }
        }
    }

    /// Delivers the held `POST`s (no longer holding any) and runs the network.
    fn release_posts(&mut self) {
        self.hold_posts.clear();
        for (from, out) in std::mem::take(&mut self.held) {
            self.carry(&from, out);
        }
        self.run();
    }

    fn events_of(&self, name: &str) -> Vec<&Event> {
        self.events.iter().filter(|(n, _)| n == name).map(|(_, e)| e).collect()
    }

    fn messages_at(&self, name: &str) -> Vec<Vec<u8>> {
        self.events_of(name)
            .into_iter()
            .filter_map(|e| match e {
                Event::Message { payload, .. } => Some(payload.clone()),
                _ => None,
            })
            .collect()
    }
}

fn via_relay(preference: TransportPreference) -> Pump {
    let config = NodeConfig { preference, ..NodeConfig::default() };
    relayed(NodeConfig::default(), config.clone(), config)
}

/// A relay, and Alice and Bob routed through it, with these configurations.
fn relayed(relay: NodeConfig, alice: NodeConfig, bob: NodeConfig) -> Pump {
    let mut p = Pump::new(&[("relay", relay), ("alice", alice), ("bob", bob)]);
    for n in ["alice", "bob"] {
        let now = p.now;
        p.node(n).set_default_route(now, Pump::addr("relay"));
    }
    p
}

/// [`relayed`], with a session between Alice and Bob (Bob connected to her).
fn relayed_in_session(relay: NodeConfig, alice: NodeConfig, bob: NodeConfig) -> Pump {
    let mut p = relayed(relay, alice, bob);
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    p
}

#[test]
fn messages_cross_a_relay_end_to_end_under_every_preference() {
    for preference in TransportPreference::ALL {
        let mut p = via_relay(preference);
        let now = p.now;
        // Bob makes himself reachable: over WebSocket unless HTTP-only, else by polling.
        p.node("bob").connect(now, &id("alice")).unwrap();
        p.run();
        for n in 0..5u8 {
            let now = p.now;
            p.node("alice").send(now, &id("bob"), vec![b'm', n], SendOptions::default()).unwrap();
            p.run();
        }
        p.advance(Duration::from_secs(3));
        assert_eq!(
            p.messages_at("bob"),
            (0..5u8).map(|n| vec![b'm', n]).collect::<Vec<_>>(),
            "{preference:?}"
        );
        let delivered =
            p.events_of("alice").iter().filter(|e| matches!(e, Event::Delivered { .. })).count();
        assert_eq!(delivered, 5, "{preference:?}");
        let stats = p.node("alice").stats().clone();
        match preference {
            TransportPreference::WebsocketOnly => assert_eq!(stats.http_messages_sent, 0),
            TransportPreference::HttpOnly => {
                assert_eq!(stats.ws_messages_sent, 0);
                assert_eq!(p.node("alice").link_count(), 0, "HTTP_ONLY never opens a WebSocket");
            }
            TransportPreference::WebsocketFirst => {
                assert!(stats.ws_messages_sent > stats.http_messages_sent)
            }
            TransportPreference::HttpFirst => assert!(stats.http_messages_sent > 0),
        }
        assert!(!format!("{:?}", p.events).contains("AuthenticationFailed"));
    }
}

#[test]
fn frames_meeting_a_full_set_of_http_requests_wait_for_one_instead_of_a_retransmission() {
    let mut p = via_relay(TransportPreference::HttpOnly);
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    p.node("alice").send(now, &id("bob"), b"warm".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(2));
    assert_eq!(p.messages_at("bob"), vec![b"warm".to_vec()]);
    let sent_before = p.node("alice").stats().http_messages_sent;

    // Alice's POSTs stay in flight: one request per message, until 16 are out.
    p.hold_posts.push("alice".to_owned());
    let total = 24u8;
    for n in 0..total {
        let now = p.now;
        p.node("alice").send(now, &id("bob"), vec![b'm', n], SendOptions::default()).unwrap();
        p.run();
    }
    assert_eq!(p.held.len(), 16, "at most 16 requests in flight per hop");
    // The requests come back; the frames that met the full set go out in the next request at
    // once, well within the 200 ms minimum retransmission timeout.
    p.release_posts();
    p.advance(Duration::from_millis(50));
    let mut expected = vec![b"warm".to_vec()];
    expected.extend((0..total).map(|n| vec![b'm', n]));
    assert_eq!(p.messages_at("bob"), expected, "every message within 50 ms");
    p.advance(Duration::from_secs(3));
    let sent = p.node("alice").stats().http_messages_sent.saturating_sub(sent_before);
    assert_eq!(sent, u64::from(total), "no frame re-sent");
}

#[test]
fn a_cut_websocket_falls_back_to_http_and_comes_back() {
    let mut p = via_relay(TransportPreference::WebsocketFirst);
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.node("alice").send(now, &id("bob"), b"before".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    let ws_before = p.node("alice").stats().ws_messages_sent;
    // The relay refuses WebSocket for a while; alice's link is cut.
    p.no_ws.push("relay".to_owned());
    p.cut("alice");
    for n in 0..3u8 {
        let now = p.now;
        p.node("alice").send(now, &id("bob"), vec![b'h', n], SendOptions::default()).unwrap();
        p.run();
        p.advance(Duration::from_millis(300));
    }
    p.advance(Duration::from_secs(2));
    assert!(p.node("alice").stats().http_messages_sent > 0, "fell back to HTTP");
    // WebSocket is accepted again: after the reconnect backoff, traffic returns to it.
    p.no_ws.clear();
    p.advance(Duration::from_secs(70));
    let ws_mid = p.node("alice").stats().ws_messages_sent;
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"after".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(2));
    assert!(p.node("alice").stats().ws_messages_sent > ws_mid, "returned to WebSocket");
    assert!(ws_mid >= ws_before);
    let mut expected = vec![b"before".to_vec()];
    expected.extend((0..3u8).map(|n| vec![b'h', n]));
    expected.push(b"after".to_vec());
    assert_eq!(p.messages_at("bob"), expected, "nothing lost, nothing duplicated");
    let switches = p
        .events_of("alice")
        .iter()
        .filter(|e| matches!(e, Event::TransportSwitched { .. }))
        .count();
    assert!((2..=4).contains(&switches), "switched {switches} times");
}

#[test]
fn websocket_only_fails_fast_and_http_errors_follow_the_table() {
    // WEBSOCKET_ONLY, relay refusing WebSocket: the message fails at the first failed connect.
    let mut p = via_relay(TransportPreference::WebsocketOnly);
    p.no_ws.push("relay".to_owned());
    let now = p.now;
    let id1 = p.node("alice").send(now, &id("bob"), b"x".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(2));
    assert!(
        p.events_of("alice").iter().any(|e| matches!(e, Event::Failed { id, .. } if *id == id1)),
        "{:?}",
        p.events_of("alice")
    );

    // HTTP_ONLY against a relay answering 403: no retry, failed at once.
    let mut p = via_relay(TransportPreference::HttpOnly);
    p.http_status.insert("relay".to_owned(), 403);
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"x".to_vec(), SendOptions::default()).unwrap();
    p.run();
    let failed = p.events_of("alice").iter().filter(|e| matches!(e, Event::Failed { .. })).count();
    assert_eq!(failed, 1);

    // HTTP_ONLY against 503: retried with backoff, then failed.
    let mut p = via_relay(TransportPreference::HttpOnly);
    p.http_status.insert("relay".to_owned(), 503);
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"x".to_vec(), SendOptions::default()).unwrap();
    p.run();
    assert!(p.events_of("alice").iter().all(|e| !matches!(e, Event::Failed { .. })), "not at once");
    p.advance(Duration::from_secs(10));
    assert!(p.events_of("alice").iter().any(|e| matches!(e, Event::Failed { .. })));
}

#[test]
fn requests_are_answered_or_time_out() {
    let mut p = via_relay(TransportPreference::WebsocketFirst);
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    let request =
        p.node("alice").request(now, &id("bob"), b"work".to_vec(), Duration::from_secs(5)).unwrap();
    p.run();
    p.advance(Duration::from_millis(100));
    let got = p.events_of("bob").iter().find_map(|e| match e {
        Event::Request { id, payload, .. } => Some((id.clone(), payload.clone())),
        _ => None,
    });
    assert_eq!(got, Some((request.clone(), b"work".to_vec())));
    let now = p.now;
    assert!(
        p.node("bob").respond(now, &id("alice"), &MessageId::new("nope").unwrap(), vec![]).is_err()
    );
    p.node("bob").respond(now, &id("alice"), &request, b"done".to_vec()).unwrap();
    p.run();
    p.advance(Duration::from_millis(100));
    assert!(p.events_of("alice").iter().any(|e| matches!(e, Event::Response { request: r, payload, .. } if *r == request && payload == b"done")));
    // Unanswered: a timeout event.
    let now = p.now;
    let late =
        p.node("alice").request(now, &id("bob"), b"slow".to_vec(), Duration::from_secs(2)).unwrap();
    p.run();
    p.advance(Duration::from_secs(3));
    assert!(
        p.events_of("alice")
            .iter()
            .any(|e| matches!(e, Event::RequestTimedOut { request, .. } if *request == late))
    );
}

#[test]
fn broadcast_and_large_messages_reach_every_session() {
    let mut p = via_relay(TransportPreference::WebsocketFirst);
    let carol = NodeConfig::default();
    p.nodes.insert("carol".to_owned(), node("carol", carol));
    let now = p.now;
    p.node("carol").set_default_route(now, Pump::addr("relay"));
    let now = p.now;
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.node("carol").connect(now, &id("alice")).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    // A message several chunks long.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let now = p.now;
    p.node("alice").send(now, &id("bob"), big.clone(), SendOptions::default()).unwrap();
    p.node("alice").send(now, &id("carol"), b"hello".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(5));
    assert_eq!(p.messages_at("bob"), vec![big]);
    let now = p.now;
    let (ok, failed) = p.node("alice").broadcast(now, b"all");
    assert_eq!((ok.len(), failed.len()), (2, 0));
    p.run();
    p.advance(Duration::from_secs(1));
    assert_eq!(p.messages_at("bob").last().unwrap(), b"all");
    assert_eq!(p.messages_at("carol"), vec![b"hello".to_vec(), b"all".to_vec()]);
}

#[test]
fn direct_sessions_resume_after_a_reconnect_and_forged_resumes_fail() {
    // Alice talks to bob's own node directly; the link drops and comes back.
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    p.cut("alice");
    p.advance(Duration::from_secs(3));
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"two".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(3));
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec(), b"two".to_vec()]);
    assert!(p.events_of("alice").iter().any(|e| matches!(e, Event::SessionResumed { .. })));
    let established = p
        .events_of("alice")
        .iter()
        .filter(|e| matches!(e, Event::SessionEstablished { .. }))
        .count();
    assert_eq!(established, 1, "resumed without a new handshake");

    // Mallory (holding alice's identity key but not the session) cannot resume it.
    let session = p
        .node("bob")
        .peers
        .get(&id("alice"))
        .and_then(|s| s.session.as_ref())
        .unwrap()
        .id()
        .clone();
    let mut forged = Envelope {
        message_id: MessageId::new("forged").unwrap(),
        message_type: MessageType::SessionResume,
        version: crate::PROTOCOL_VERSION.to_owned(),
        timestamp: p.now,
        seq: 0,
        session_id: Some(session),
        sender_id: id("alice"),
        recipient_id: Some(id("bob")),
        payload: Payload::new(json!({"proof": crate::encoding::b64u(&[0u8; 32])})).unwrap(),
        nonce: [9; 12],
        signature: None,
        verified: crate::envelope::Verified::NO,
    };
    forged.sign(&ident("alice"));
    let now = p.now;
    let link =
        p.node("bob").accept_link(now, LinkKind::Peers, id("alice"), Encoding::Json).unwrap();
    drain(p.node("bob"));
    p.node("bob").handle_frame(now, link, &forged.encode());
    assert_eq!(error_codes(&drain(p.node("bob"))), vec![ErrorCode::AuthenticationFailed]);
}

#[derive(Debug, Clone)]
enum Fuzzed {
    Accept(u8),
    Frame(u8, Vec<u8>),
    Mutated(u8, u16, u8),
    Close(u8),
    Post(u8, Vec<u8>),
    Poll(u8),
    Advance(u16),
    Send(u8),
}

fn input() -> impl Strategy<Value = Fuzzed> {
    prop_oneof![
        any::<u8>().prop_map(Fuzzed::Accept),
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(l, b)| Fuzzed::Frame(l, b)),
        (any::<u8>(), any::<u16>(), any::<u8>()).prop_map(|(l, i, b)| Fuzzed::Mutated(l, i, b)),
        any::<u8>().prop_map(Fuzzed::Close),
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(e, b)| Fuzzed::Post(e, b)),
        any::<u8>().prop_map(Fuzzed::Poll),
        any::<u16>().prop_map(Fuzzed::Advance),
        any::<u8>().prop_map(Fuzzed::Send),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary inputs never panic, and every peer-fed structure stays within its bound.
    #[test]
    fn arbitrary_inputs_never_panic_and_stay_bounded(inputs in prop::collection::vec(input(), 1..60)) {
        let config = NodeConfig { mailbox_messages: 4, mailbox_bytes: 4096, max_links: 6, ..NodeConfig::default() };
        let mut relay = node("relay", config);
        let names = ["alice", "bob", "carol", "mallory"];
        let mut links: Vec<LinkId> = Vec::new();
        let mut now = T0;
        let valid = [
            signed("alice", MessageType::Ping, None, json!({}), T0),
            opaque_for("alice", "bob", 1),
            signed("bob", MessageType::Subscribe, None, json!({"topic": "t"}), T0),
        ];
        for i in inputs {
            match i {
                Fuzzed::Accept(n) => {
                    let who = names[usize::from(n) % names.len()];
                    let kind = if n % 2 == 0 { LinkKind::Peers } else { LinkKind::Events };
                    if let Ok(l) = relay.accept_link(now, kind, id(who), Encoding::Json) { links.push(l) }
                }
                Fuzzed::Frame(l, bytes) => if let Some(link) = links.get(usize::from(l) % links.len().max(1)) {
                    relay.handle_frame(now, *link, &bytes);
                },
                Fuzzed::Mutated(l, at, b) => if let Some(link) = links.get(usize::from(l) % links.len().max(1)) {
                    let mut f = valid[usize::from(b) % valid.len()].clone();
                    let len = f.len();
                    f[usize::from(at) % len] ^= b | 1;
                    relay.handle_frame(now, *link, &f);
                },
                Fuzzed::Close(l) => if let Some(link) = links.get(usize::from(l) % links.len().max(1)) {
                    relay.link_closed(now, *link);
                },
                Fuzzed::Post(e, body) => {
                    let who = names[usize::from(e) % names.len()];
                    let mut b = body;
                    b.extend_from_slice(b"\n");
                    b.extend_from_slice(&valid[usize::from(e) % valid.len()]);
                    relay.handle_http_request(now, id(who), HttpCall::post(b));
                }
                Fuzzed::Poll(e) => {
                    relay.handle_http_request(now, id(names[usize::from(e) % names.len()]), HttpCall::poll(None));
                }
                Fuzzed::Advance(ms) => {
                    now = now.saturating_add(Duration::from_millis(u64::from(ms) * 50));
                    relay.handle_timeout(now);
                }
                Fuzzed::Send(n) => {
                    let _ = relay.send(now, &id(names[usize::from(n) % names.len()]), vec![n], SendOptions::default());
                }
            }
            while relay.poll_output().is_some() {}
            prop_assert!(relay.mailbox_bytes() <= 4096 * 4);
            prop_assert!(relay.link_count() <= 6 + 4);
            prop_assert!(relay.poll_timeout().is_none_or(|t| t >= now) || relay.poll_timeout() <= Some(now));
        }
    }
}

#[test]
fn messages_for_a_replaced_session_get_session_expired() {
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    let old = p
        .node("bob")
        .peers
        .get(&id("alice"))
        .and_then(|s| s.session.as_ref())
        .unwrap()
        .id()
        .clone();
    // Bob loses the session (as after SESSION_NOT_FOUND); a message for it is now "expired".
    p.node("bob").lose_session(now, &id("alice"), ErrorCode::SessionNotFound);
    drain(p.node("bob"));
    let bob = p.node("bob");
    assert_eq!(
        bob.peers.get(&id("alice")).unwrap().missing_session_code(Some(&old)),
        ErrorCode::SessionExpired
    );
    let other = crate::ids::SessionId::new("sess_other").unwrap();
    assert_eq!(
        bob.peers.get(&id("alice")).unwrap().missing_session_code(Some(&other)),
        ErrorCode::SessionNotFound
    );
    // Alice's next message hits the expired session, re-handshakes, and still arrives once.
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"two".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(2));
    assert!(
        p.events_of("alice")
            .iter()
            .any(|e| matches!(e, Event::SessionLost { reason: ErrorCode::SessionExpired, .. }))
    );
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec(), b"two".to_vec()]);
}

#[test]
fn a_legacy_http_only_peer_is_reached_over_http() {
    let legacy = NodeConfig {
        capabilities: crate::capabilities::Capabilities {
            transports: [crate::capabilities::Transport::Http].into_iter().collect(),
            ..Default::default()
        },
        ..NodeConfig::default()
    };
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", legacy)]);
    // Bob's server speaks only HTTP.
    p.no_ws.push("bob".to_owned());
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    let opened_before = p.node("alice").stats().reconnects;
    let ws_before = p.node("alice").stats().ws_messages_sent;
    for n in 0..3u8 {
        let now = p.now;
        p.node("alice")
            .send(
                now,
                &id("bob"),
                vec![n],
                SendOptions { prefer_websocket: Some(true), ..SendOptions::default() },
            )
            .unwrap();
        p.run();
        p.advance(Duration::from_secs(70));
    }
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec(), vec![0], vec![1], vec![2]]);
    assert_eq!(p.node("alice").stats().ws_messages_sent, ws_before, "never over WebSocket");
    assert_eq!(p.node("alice").stats().reconnects, opened_before, "no more WebSocket attempts");
    assert!(p.node("alice").stats().http_messages_sent > 0);
}

#[test]
fn failing_a_full_outbox_does_not_recurse() {
    // Run on a small stack: failing 1000 messages one after another must not nest calls.
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let mut p = via_relay(TransportPreference::WebsocketOnly);
            let now = p.now;
            p.node("bob").connect(now, &id("alice")).unwrap();
            p.node("alice")
                .send(now, &id("bob"), b"first".to_vec(), SendOptions::default())
                .unwrap();
            p.run();
            p.advance(Duration::from_secs(1));
            p.no_ws.push("relay".to_owned());
            let now = p.now;
            let alice = p.node("alice");
            for n in 0..1000u32 {
                alice
                    .send(now, &id("bob"), n.to_be_bytes().to_vec(), SendOptions::default())
                    .unwrap();
            }
            p.cut("alice");
            p.run();
            p.advance(Duration::from_secs(5));
            p.events_of("alice").iter().filter(|e| matches!(e, Event::Failed { .. })).count()
        })
        .unwrap();
    assert_eq!(handle.join().unwrap(), 1000, "WEBSOCKET_ONLY with the link down: all fail");
}

#[test]
fn disconnect_stays_disconnected_until_the_application_acts() {
    let mut p = via_relay(TransportPreference::WebsocketFirst);
    let now = p.now;
    p.node("alice").connect(now, &id("bob")).unwrap();
    p.node("bob").connect(now, &id("alice")).unwrap();
    p.run();
    p.advance(Duration::from_secs(1));
    assert_eq!(p.node("alice").link_count(), 1);
    let now = p.now;
    p.node("alice").disconnect(now, &id("bob"));
    p.run();
    p.advance(Duration::from_secs(120));
    assert_eq!(p.node("alice").link_count(), 0, "no reconnect after disconnect");
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"again".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(2));
    assert_eq!(p.node("alice").link_count(), 1, "a send reconnects");
    assert_eq!(p.messages_at("bob"), vec![b"again".to_vec()]);
}

#[test]
fn http_garbage_costs_a_bounded_number_of_signatures() {
    let mut relay = node("relay", NodeConfig::default());
    let body: Vec<u8> = b"x\n".repeat(5000);
    let request = relay.handle_http_request(T0, id("alice"), HttpCall::post(body));
    let out = drain(&mut relay);
    let Some(Output::HttpRespond { body, .. }) =
        out.iter().find(|o| matches!(o, Output::HttpRespond { request: r, .. } if *r == request))
    else {
        panic!("{out:?}")
    };
    let errors = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    assert!(errors <= 60, "{errors} ERRORs signed for one request");
    // An ERROR is never answered, even a malformed one.
    let link = relay.accept_link(T0, LinkKind::Peers, id("bob"), Encoding::Json).unwrap();
    drain(&mut relay);
    let bad_error = signed(
        "bob",
        MessageType::Error,
        None,
        json!({"code": "TIMEOUT", "message": "x", "in_reply_to": null}),
        T0,
    );
    let bad_error = String::from_utf8(bad_error).unwrap().replace("\"1.2\"", "\"9.9\"");
    relay.handle_frame(T0, link, bad_error.as_bytes());
    assert!(error_codes(&drain(&mut relay)).is_empty());
}

#[test]
fn an_untrusted_init_through_a_relay_creates_no_state() {
    let mut alice = node("alice", NodeConfig::default());
    alice.set_default_route(T0, Pump::addr("relay"));
    let now = T0;
    alice.connect(now, &id("bob")).unwrap();
    let link = drain(&mut alice)
        .iter()
        .find_map(|o| match o {
            Output::OpenLink { link, .. } => Some(*link),
            _ => None,
        })
        .unwrap();
    alice.link_up(now, link, Encoding::Json);
    drain(&mut alice);
    let peers_before = alice.peers.len();
    let mallory = Identity::from_secret_bytes(id("mallory"), &[42; 32]);
    let mut trust = TrustStore::new(TrustPolicy::Open);
    trust.insert(id("alice"), ident("alice").public_key());
    let (_, init) = crate::handshake::Initiator::start(
        Arc::new(mallory),
        id("alice"),
        &trust,
        crate::handshake::HandshakeConfig::default(),
        now,
        &mut ChaCha20Rng::seed_from_u64(5),
    )
    .unwrap();
    alice.handle_frame(now, link, &init.encode());
    assert_eq!(error_codes(&drain(&mut alice)), vec![ErrorCode::AuthenticationFailed]);
    assert_eq!(alice.peers.len(), peers_before);
}

#[test]
fn events_never_show_payloads() {
    let e = Event::Message {
        from: id("alice"),
        id: MessageId::new("m").unwrap(),
        kind: MessageType::PeerMessage,
        app_type: None,
        payload: b"SECRET".to_vec(),
    };
    let shown = format!("{e:?}");
    assert!(!shown.contains("SECRET") && shown.contains("6 bytes"), "{shown}");
}

#[derive(Debug, Clone)]
enum ClientInput {
    Send(u8, u16),
    Connect(u8),
    Disconnect(u8),
    LinkUp(u8),
    LinkFailed(u8),
    LinkClosed(u8),
    Frame(u8, Vec<u8>),
    Mutated(u8, u16, u8),
    HttpResponse(u8, u16, Vec<u8>),
    HttpFailure(u8),
    Advance(u16),
}

fn client_input() -> impl Strategy<Value = ClientInput> {
    prop_oneof![
        (any::<u8>(), any::<u16>()).prop_map(|(p, n)| ClientInput::Send(p, n)),
        any::<u8>().prop_map(ClientInput::Connect),
        any::<u8>().prop_map(ClientInput::Disconnect),
        any::<u8>().prop_map(ClientInput::LinkUp),
        any::<u8>().prop_map(ClientInput::LinkFailed),
        any::<u8>().prop_map(ClientInput::LinkClosed),
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..48))
            .prop_map(|(l, b)| ClientInput::Frame(l, b)),
        (any::<u8>(), any::<u16>(), any::<u8>())
            .prop_map(|(l, i, b)| ClientInput::Mutated(l, i, b)),
        (any::<u8>(), any::<u16>(), prop::collection::vec(any::<u8>(), 0..48))
            .prop_map(|(r, s, b)| ClientInput::HttpResponse(r, s, b)),
        any::<u8>().prop_map(ClientInput::HttpFailure),
        any::<u16>().prop_map(ClientInput::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A client node fed arbitrary link events, frames and HTTP answers in any order never panics,
    /// never schedules a deadline in the past twice in a row, and keeps its outbox bounded.
    #[test]
    fn a_client_survives_arbitrary_network_behaviour(inputs in prop::collection::vec(client_input(), 1..80)) {
        let config = NodeConfig {
            stream: crate::stream::StreamConfig { max_outbox_messages: 8, ..Default::default() },
            ..NodeConfig::default()
        };
        let mut alice = node("alice", config);
        alice.set_default_route(T0, Pump::addr("relay"));
        let peers = ["bob", "carol", "relay"];
        let mut links: Vec<LinkId> = Vec::new();
        let mut requests: Vec<RequestId> = Vec::new();
        let mut now = T0;
        let valid = [
            signed("relay", MessageType::Pong, None, json!({"in_reply_to": "x"}), T0),
            signed("bob", MessageType::Error, Some("alice"), json!({"code": "SESSION_NOT_FOUND", "message": "no such session", "in_reply_to": null}), T0),
            signed("relay", MessageType::Error, Some("alice"), json!({"code": "UNKNOWN_RECIPIENT", "message": "unknown recipient", "in_reply_to": null}), T0),
            opaque_for("bob", "alice", 3),
        ];
        for i in inputs {
            let pick = |v: &Vec<LinkId>, n: u8| v.get(usize::from(n) % v.len().max(1)).copied();
            match i {
                ClientInput::Send(p, n) => {
                    let _ = alice.send(now, &id(peers[usize::from(p) % 2]), n.to_be_bytes().to_vec(), SendOptions::default());
                }
                ClientInput::Connect(p) => { let _ = alice.connect(now, &id(peers[usize::from(p) % 2])); }
                ClientInput::Disconnect(p) => alice.disconnect(now, &id(peers[usize::from(p) % 2])),
                ClientInput::LinkUp(l) => if let Some(l) = pick(&links, l) { alice.link_up(now, l, Encoding::Json) },
                ClientInput::LinkFailed(l) => if let Some(l) = pick(&links, l) { alice.link_failed(now, l) },
                ClientInput::LinkClosed(l) => if let Some(l) = pick(&links, l) { alice.link_closed(now, l) },
                ClientInput::Frame(l, bytes) => if let Some(l) = pick(&links, l) { alice.handle_frame(now, l, &bytes) },
                ClientInput::Mutated(l, at, b) => if let Some(l) = pick(&links, l) {
                    let mut f = valid[usize::from(b) % valid.len()].clone();
                    if b % 3 != 0 {
                        let len = f.len();
                        f[usize::from(at) % len] ^= b | 1;
                    }
                    alice.handle_frame(now, l, &f);
                },
                ClientInput::HttpResponse(r, status, body) => {
                    if let Some(r) = requests.get(usize::from(r) % requests.len().max(1)).copied() {
                        let mut body = body;
                        body.push(b'\n');
                        body.extend_from_slice(&valid[usize::from(status) % valid.len()]);
                        alice.handle_http_response(now, r, 100 + status % 500, &body, Encoding::Json);
                    }
                }
                ClientInput::HttpFailure(r) => {
                    if let Some(r) = requests.get(usize::from(r) % requests.len().max(1)).copied() {
                        alice.handle_http_failure(now, r);
                    }
                }
                ClientInput::Advance(ms) => {
                    now = now.saturating_add(Duration::from_millis(u64::from(ms) * 20));
                    alice.handle_timeout(now);
                }
            }
            while let Some(out) = alice.poll_output() {
                match out {
                    Output::OpenLink { link, .. } => links.push(link),
                    Output::HttpRequest { request, .. } => requests.push(request),
                    _ => {}
                }
            }
            // After handling everything due, nothing is left due at `now`.
            alice.handle_timeout(now);
            while alice.poll_output().is_some() {}
            prop_assert!(alice.poll_timeout().is_none_or(|t| t > now), "a deadline stuck at or before now");
            prop_assert!(alice.outbox_len(&id("bob")) <= 8 && alice.outbox_len(&id("carol")) <= 8);
        }
    }
}

#[test]
fn a_message_over_the_receivers_limit_fails_at_once() {
    let small = NodeConfig {
        reassembly: crate::chunking::ReassemblyLimits {
            max_message_bytes: 300_000,
            ..Default::default()
        },
        ..NodeConfig::default()
    };
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", small)]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    let big =
        p.node("alice").send(now, &id("bob"), vec![1; 600_000], SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(2));
    assert!(p.messages_at("bob").is_empty());
    let failed =
        p.events_of("alice").iter().any(|e| matches!(e, Event::Failed { id, .. } if *id == big));
    assert!(failed, "{:?}", p.events_of("alice"));
    assert!(!p.events_of("alice").iter().any(|e| matches!(e, Event::Delivered { .. })));
}

#[test]
fn a_polling_client_still_answers_session_not_found_to_the_remote_peer() {
    let config = NodeConfig { preference: TransportPreference::HttpOnly, ..NodeConfig::default() };
    let mut alice = node("alice", config);
    alice.set_default_route(T0, Pump::addr("relay"));
    alice.send(T0, &id("bob"), b"hi".to_vec(), SendOptions::default()).unwrap();
    let poll = drain(&mut alice)
        .into_iter()
        .find_map(|o| match o {
            Output::HttpRequest { request, method: HttpMethod::Get, .. } => Some(request),
            _ => None,
        })
        .expect("a long-poll to the relay");
    // The relay's poll answer carries a message from bob for a session alice does not hold.
    let mut body = opaque_for("bob", "alice", 3);
    body.push(b'\n');
    alice.handle_http_response(T0, poll, 200, &body, Encoding::Json);
    let posted: Vec<u8> = drain(&mut alice)
        .into_iter()
        .filter_map(|o| match o {
            Output::HttpRequest { method: HttpMethod::Post, body, .. } => Some(body),
            _ => None,
        })
        .flatten()
        .collect();
    let codes: Vec<ErrorCode> = posted
        .split(|b| *b == b'\n')
        .filter_map(|l| crate::wire::decode(l, 1 << 20).ok())
        .filter(|e| e.message_type == MessageType::Error && e.recipient_id == Some(id("bob")))
        .filter_map(|e| ErrorBody::parse(&e.payload).ok().map(|b| b.code))
        .collect();
    assert_eq!(codes, vec![ErrorCode::SessionNotFound], "recovery depends on this answer");
}

#[test]
fn a_client_with_nothing_to_send_stays_reachable_at_its_relay() {
    // Alice never sends anything, yet bob's messages reach her: she keeps a poll open at her
    // relay from the moment it became her default route.
    let mut p = via_relay(TransportPreference::HttpOnly);
    p.run();
    let now = p.now;
    p.node("bob").send(now, &id("alice"), b"unprompted".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(3));
    assert_eq!(p.messages_at("alice"), vec![b"unprompted".to_vec()]);
    // An empty poll answer is followed by another poll, after the minimum pause.
    let mut alice = node(
        "alice",
        NodeConfig { preference: TransportPreference::HttpOnly, ..NodeConfig::default() },
    );
    alice.set_default_route(T0, Pump::addr("relay"));
    let polls = |outputs: Vec<Output>| -> Vec<RequestId> {
        outputs
            .into_iter()
            .filter_map(|o| match o {
                Output::HttpRequest { request, method: HttpMethod::Get, .. } => Some(request),
                _ => None,
            })
            .collect()
    };
    let first = polls(drain(&mut alice));
    assert_eq!(first.len(), 1, "one poll, at once");
    alice.handle_http_response(T0, first[0], 200, &[], Encoding::Json);
    assert!(polls(drain(&mut alice)).is_empty(), "no poll loop on empty answers");
    let later = alice.poll_timeout().expect("a poll is scheduled");
    assert!(later >= T0.saturating_add(Duration::from_millis(500)));
    alice.handle_timeout(later);
    assert_eq!(polls(drain(&mut alice)).len(), 1);
}

#[test]
fn a_websocket_only_client_never_polls_its_relay() {
    // A WEBSOCKET_ONLY node stays reachable at its relay over a link it opens at once, and
    // reopens after a failure; it never sends an HTTP request, not even a poll (spec §16, §21).
    let config =
        NodeConfig { preference: TransportPreference::WebsocketOnly, ..NodeConfig::default() };
    let mut alice = node("alice", config);
    alice.set_default_route(T0, Pump::addr("relay"));
    let outputs = drain(&mut alice);
    let opened = outputs.iter().find_map(|o| match o {
        Output::OpenLink { link, .. } => Some(*link),
        _ => None,
    });
    let http = |outputs: &[Output]| {
        outputs.iter().filter(|o| matches!(o, Output::HttpRequest { .. })).count()
    };
    assert_eq!(http(&outputs), 0, "no poll while the link connects");
    let link = opened.expect("the relay is reached over WebSocket");
    alice.link_failed(T0, link);
    assert_eq!(http(&drain(&mut alice)), 0, "no poll after the link failed");
    let retry = alice.poll_timeout().expect("a reconnect is scheduled");
    alice.handle_timeout(retry);
    let outputs = drain(&mut alice);
    assert_eq!(http(&outputs), 0);
    assert!(outputs.iter().any(|o| matches!(o, Output::OpenLink { .. })), "it reconnects");
}

#[test]
fn a_late_session_error_about_an_older_session_is_ignored() {
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    let sent_under_first: Vec<MessageId> =
        p.node("alice").recent.iter().map(|(id, _, _)| id.clone()).collect();
    // Both sides start over: a second session replaces the first.
    p.node("alice").lose_session(now, &id("bob"), ErrorCode::SessionNotFound);
    p.node("bob").lose_session(now, &id("alice"), ErrorCode::SessionNotFound);
    p.run();
    p.node("alice").send(now, &id("bob"), b"two".to_vec(), SendOptions::default()).unwrap();
    p.run();
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec(), b"two".to_vec()]);
    let current = p.node("alice").peers.get(&id("bob")).and_then(|x| x.session.as_ref()).unwrap();
    let current = current.id().clone();
    let sent_under_second: Vec<MessageId> = p
        .node("alice")
        .recent
        .iter()
        .filter(|(_, _, s)| s.as_ref() == Some(&current))
        .map(|(k, _, _)| k.clone())
        .collect();
    let link = p.pairs.iter().find(|((n, _), _)| n == "bob").map(|(_, (_, l))| *l).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let error_about = |about: &MessageId, rng: &mut ChaCha20Rng| {
        crate::signed::error_message(
            &ident("bob"),
            Some(id("alice")),
            None,
            ErrorCode::SessionNotFound,
            Some(about.clone()),
            now,
            rng,
        )
        .encode()
    };
    let lost = |p: &Pump| {
        p.events_of("alice").iter().filter(|e| matches!(e, Event::SessionLost { .. })).count()
    };
    let before = lost(&p);
    // An answer to a frame of the first session, delivered late: the second session stays.
    let stale = sent_under_first.iter().find(|m| !sent_under_second.contains(m)).unwrap();
    let frame = error_about(stale, &mut rng);
    p.node("alice").handle_frame(now, link, &frame);
    p.run();
    assert!(p.node("alice").has_session(&id("bob")));
    assert_eq!(lost(&p), before);
    // The same error about a frame of the current session ends it.
    let frame = error_about(&sent_under_second[0], &mut rng);
    p.node("alice").handle_frame(now, link, &frame);
    assert_eq!(
        lost(&p)
            + drain(p.node("alice"))
                .iter()
                .filter(|o| matches!(o, Output::Event(Event::SessionLost { .. })))
                .count(),
        before + 1
    );
}

#[test]
fn a_full_event_queue_pushes_back_on_the_sender_without_losing_anything() {
    // Bob's application drains at most 3 events between network rounds; alice sends 12 messages
    // in one burst. Bob refuses (does not acknowledge) what he cannot queue; alice re-sends it.
    let bob = NodeConfig { max_events: 3, ..NodeConfig::default() };
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", bob)]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").connect(now, &id("bob")).unwrap();
    p.run();
    assert!(p.node("alice").has_session(&id("bob")));
    let sent: Vec<Vec<u8>> = (0..12u8).map(|i| vec![b'm', i]).collect();
    for m in &sent {
        p.node("alice").send(now, &id("bob"), m.clone(), SendOptions::default()).unwrap();
    }
    p.run();
    let first_round = p.messages_at("bob").len();
    assert!(first_round < sent.len(), "the burst must exceed bob's queue ({first_round})");
    p.advance(Duration::from_secs(30));
    assert_eq!(p.messages_at("bob"), sent, "all of them, once each, in order");
    let delivered =
        p.events_of("alice").iter().filter(|e| matches!(e, Event::Delivered { .. })).count();
    assert_eq!(delivered, sent.len());
    assert!(!p.events_of("bob").iter().any(|e| matches!(e, Event::EventsDropped { .. })));
}

#[test]
fn events_held_by_the_driver_count_against_the_bound() {
    let bob = NodeConfig { max_events: 3, ..NodeConfig::default() };
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", bob)]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").connect(now, &id("bob")).unwrap();
    p.run();
    // Bob's driver holds 3 events the application has not taken: nothing more is accepted.
    p.node("bob").set_app_backlog(3);
    p.node("alice").send(now, &id("bob"), b"held".to_vec(), SendOptions::default()).unwrap();
    p.run();
    p.advance(Duration::from_secs(5));
    assert!(p.messages_at("bob").is_empty());
    assert_eq!(p.node("alice").outbox_len(&id("bob")), 1, "unacknowledged, kept for re-sending");
    // The application caught up: the re-sent frame is accepted.
    p.node("bob").set_app_backlog(0);
    p.advance(Duration::from_secs(30));
    assert_eq!(p.messages_at("bob"), vec![b"held".to_vec()]);
    assert_eq!(p.node("alice").outbox_len(&id("bob")), 0);
}

#[test]
fn shutdown_first_sends_the_acknowledgements_it_held() {
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    assert_eq!(p.messages_at("bob"), vec![b"one".to_vec()]);
    // Bob holds his acknowledgement for `ack_delay`: alice still has the message outstanding.
    assert_eq!(p.node("alice").outbox_len(&id("bob")), 1);
    p.node("bob").shutdown(now);
    for o in drain(p.node("bob")) {
        p.carry("bob", o);
    }
    p.run();
    // The acknowledgement went out before BYE: alice knows, without waiting for any timer.
    assert_eq!(p.node("alice").outbox_len(&id("bob")), 0, "acknowledged at shutdown");
}

#[test]
fn shutdown_says_bye_on_every_link_and_reconnects_nothing() {
    let mut p = Pump::new(&[("alice", NodeConfig::default()), ("bob", NodeConfig::default())]);
    p.node("alice").add_route(id("bob"), Pump::addr("bob"));
    let now = p.now;
    p.node("alice").send(now, &id("bob"), b"one".to_vec(), SendOptions::default()).unwrap();
    p.run();
    assert_eq!(p.node("alice").link_count(), 1);
    p.node("alice").shutdown(now);
    let out = drain(p.node("alice"));
    let bye = out.iter().position(|o| {
        matches!(o, Output::Transmit { frame, .. }
            if crate::wire::decode(frame, 1 << 20).is_ok_and(|e| e.message_type == MessageType::Bye))
    });
    let close = out.iter().position(|o| matches!(o, Output::CloseLink { reason: None, .. }));
    assert!(bye.is_some() && close.is_some() && bye < close, "BYE, then an orderly close: {out:?}");
    // Bob, told BYE, closes his side; alice dials nothing afterwards.
    for o in out {
        p.carry("alice", o);
    }
    p.run();
    assert_eq!(p.node("bob").link_count(), 0);
    p.advance(Duration::from_secs(120));
    assert_eq!(p.node("alice").link_count(), 0, "no reconnect after shutdown");
}
