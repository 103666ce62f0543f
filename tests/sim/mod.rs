//! A deterministic network simulator for peerlink nodes.
//!
//! Several peers and one relay run over a simulated network and clock, all driven from one seed:
//! WebSocket links with latency (in order, as TCP), HTTP exchanges that can fail (5xx, a lost
//! request, a lost response), link cuts, partitions of a peer, and restarts of the relay that lose
//! all its state. The application on each peer sends messages (some large enough to be chunked,
//! with random transport preferences) and answers requests. After the run the invariants of spec
//! §"Delivery" are checked. In two runs of three the relay is one of a cluster of two or three
//! relays that share a simulated broker, with faults of their own (`cluster.rs`, `broker.rs`).
//! In half the runs the peers are durable: each writes a store, as the driver contract says,
//! and crashes (cleanly, between a commit and its answer, or tearing its last write) and is
//! rebuilt from it (`durable.rs`).

mod broker;
mod cluster;
mod durable;

pub use broker::BrokerStats;
pub use durable::DurableStats;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use peerlink_core::node::{
    Bearer, Handled, HttpCall, HttpMethod, Input, LinkId, LinkKind, RequestId,
};
use peerlink_core::transport::TransportPreference;
use peerlink_core::wire::{self, Encoding};
use peerlink_core::{
    AppType, EntityId, Event, Identity, MessageId, Node, NodeAddr, NodeConfig, Output, SendOptions,
    Timestamp, TrustPolicy, TrustStore,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// Fault rates and sizes of one run.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Per-mille chance, per second of simulated time, that some link is cut.
    pub cut_per_mille: u32,
    /// Per-mille chance an HTTP request gets a 503 without reaching the server.
    pub http_5xx_per_mille: u32,
    /// Per-mille chance an HTTP request is lost (the client sees a failure).
    pub http_lost_request_per_mille: u32,
    /// Per-mille chance an HTTP response is lost after the server processed the request.
    pub http_lost_response_per_mille: u32,
    /// Whether the relay restarts (losing its state) once during the run.
    pub relay_restart: bool,
    /// Whether one peer is partitioned away for a long stretch.
    pub partition: bool,
    /// Latency range of one hop, in milliseconds.
    pub latency_ms: (u64, u64),
}

impl Faults {
    /// Faults drawn from the seed.
    pub fn from_rng(rng: &mut ChaCha20Rng) -> Self {
        Self {
            cut_per_mille: rng.next_u32() % 80,
            http_5xx_per_mille: rng.next_u32() % 150,
            http_lost_request_per_mille: rng.next_u32() % 80,
            http_lost_response_per_mille: rng.next_u32() % 80,
            relay_restart: rng.next_u32().is_multiple_of(3),
            partition: rng.next_u32().is_multiple_of(4),
            latency_ms: (1, 1 + u64::from(rng.next_u32() % 120)),
        }
    }
}

/// A message accepted by `send`: its id and payload.
pub type Sent = (MessageId, Vec<u8>);

/// What happened, for the invariant checks.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Messages accepted by `send`, per (sender, receiver), in send order, with their payloads.
    pub sent: BTreeMap<(usize, usize), Vec<Sent>>,
    /// Messages handed to each receiving application, per sender, in delivery order.
    pub delivered: BTreeMap<(usize, usize), Vec<MessageId>>,
    /// When each message was first handed to the receiving application.
    pub delivered_at: BTreeMap<MessageId, Timestamp>,
    /// Messages the sender was told were delivered (`Event::Delivered`), and when.
    pub acked: BTreeMap<MessageId, Timestamp>,
    /// Messages the sender was told failed (`Event::Failed`): when, and whether the report said
    /// they may still be delivered.
    pub failed: BTreeMap<MessageId, (Timestamp, bool)>,
    /// Messages reported failed (`maybe_delivered`) and handed to the application afterwards,
    /// as spec §13.6 allows.
    pub late: usize,
    /// Requests answered, and requests timed out.
    pub responses: usize,
    /// Requests that timed out.
    pub timeouts: usize,
    /// Frames and HTTP bodies that carried plaintext (must stay empty).
    pub leaks: Vec<String>,
    /// The application type each typed message was sent with.
    pub app_types: BTreeMap<MessageId, AppType>,
    /// Messages that arrived with another application type than they were sent with, and
    /// deliveries reported without the transport that carried them (must stay empty).
    pub mislabelled: Vec<String>,
    /// Largest relay mailbox seen, in bytes.
    pub max_mailbox_bytes: usize,
    /// Largest outbox seen (messages waiting for one peer).
    pub max_outbox: usize,
    /// Number of frames that crossed the network.
    pub frames: u64,
    /// Binary envelopes written on links (spec §27).
    pub binary_frames: u64,
    /// Public-key work handed out and completed (`NodeConfig::offload_work`).
    pub work_done: u64,
    /// HTTP bodies (requests and answers) in the binary encoding (spec §27.7).
    pub binary_bodies: u64,
    /// Binary envelopes written on a link that did not agree on them, HTTP bodies in binary
    /// between ends that did not both agree on it, and envelopes of the other encoding than
    /// their body's (must stay empty).
    pub misframed: Vec<String>,
    /// Transport switches reported.
    pub switches: u64,
    /// Sessions resumed and established.
    pub resumes: u64,
    /// Full handshakes.
    pub handshakes: u64,
    /// Messages handed to the application whose receive position was not committed when their
    /// receiver crashed: how many more times each may be handed (at least once at that
    /// boundary, `durable.rs`).
    pub repeats_allowed: BTreeMap<MessageId, usize>,
    /// Messages whose outcome (`Delivered`, `Failed`) was held behind a commit and lost with a
    /// crash after it: they may end with no outcome at their sender.
    pub outcomes_lost: BTreeSet<MessageId>,
    /// Outcomes reported more than once (must stay empty).
    pub reported_twice: Vec<String>,
    /// Stores a restarted node refused (must stay empty).
    pub restore_errors: Vec<String>,
}

#[derive(Debug, Clone)]
enum Net {
    Connect {
        client: usize,
        link: LinkId,
        server: usize,
        kind: LinkKind,
        generation: u64,
        /// The client offers the binary envelope (spec §27.1).
        offer_binary: bool,
    },
    Connected {
        client: usize,
        link: LinkId,
        /// What the server's `101` selected, as the client reads it.
        encoding: Encoding,
    },
    ConnectFailed {
        client: usize,
        link: LinkId,
    },
    Frame {
        to: usize,
        link: LinkId,
        frame: Arc<[u8]>,
    },
    Closed {
        node: usize,
        link: LinkId,
    },
    HttpRequest {
        client: usize,
        request: RequestId,
        server: usize,
        call: HttpCall,
        lose_response: bool,
        generation: u64,
    },
    HttpResponse {
        client: usize,
        request: RequestId,
        status: u16,
        body: Vec<u8>,
        /// What the answer's `Content-Type` names.
        encoding: Encoding,
    },
    HttpFailure {
        client: usize,
        request: RequestId,
    },
    Send {
        from: usize,
    },
    /// The node crashes now, losing what it holds but its store.
    Restart {
        node: usize,
    },
    /// A crash of a durable node comes due: at once, or at its next group's commit.
    Crash {
        node: usize,
        kind: durable::CrashKind,
    },
    /// A crash armed for the node's next commit that has not come: the node crashes cleanly.
    CrashIfArmed {
        node: usize,
    },
    /// The node runs again after a crash.
    Up {
        node: usize,
    },
    Cluster(cluster::Event),
    /// Public-key work a node handed out comes back, run (`NodeConfig::offload_work`).
    WorkDone {
        node: usize,
        work: peerlink_core::node::Work,
    },
    Partition {
        node: usize,
        on: bool,
    },
}

struct SimNode {
    node: Node,
    base_url: String,
    /// Bumped on restart: in-flight work addressed to an older generation is lost.
    generation: u64,
    down: bool,
    partitioned: bool,
}

/// The simulated world.
pub struct World {
    seed: u64,
    now: Timestamp,
    rng: ChaCha20Rng,
    faults: Faults,
    nodes: Vec<SimNode>,
    /// Events by time, each with the generation of the node it is addressed to (an event for
    /// an earlier incarnation is dropped).
    queue: BTreeMap<(Timestamp, u64), (Net, u64)>,
    counter: u64,
    /// Link pairs: (node, link) → (other node, other link).
    pairs: BTreeMap<(usize, LinkId), (usize, LinkId)>,
    /// Link ends (node, link) that agreed on the binary envelope.
    binary_links: std::collections::BTreeSet<(usize, LinkId)>,
    /// Per-link time of the last scheduled delivery, to keep links in order.
    link_clock: BTreeMap<(usize, LinkId), Timestamp>,
    /// Server-side HTTP requests: (server, server request) → (client, client request, lose,
    /// the client's generation when it made the request).
    http: BTreeMap<(usize, RequestId), (usize, RequestId, bool, u64)>,
    /// Whether each HTTP request a client made (client, its request id) accepted binary.
    accepts: BTreeMap<(usize, RequestId), bool>,
    outcome: Outcome,
    config: NodeConfig,
    identities: Vec<[u8; 32]>,
    names: Vec<EntityId>,
    trust: TrustStore,
    /// Messages still to send, per peer.
    budget: Vec<usize>,
    /// Messages each peer sends in all.
    messages: usize,
    send_until: Timestamp,
    pub trace: bool,
    /// Whether p1 reaches p2 directly.
    direct: bool,
    /// Peers (nodes `1..=peers`; relays of a cluster come after them).
    peers: usize,
    /// The cluster, in runs with more than one relay.
    cluster: Option<cluster::ClusterSim>,
    /// Durable nodes, their stores and crashes.
    durable: durable::DurableSim,
}

const RELAY: usize = 0;
const START: u64 = 1_700_000_000_000;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl World {
    /// A world of `peers` peers, each sending `messages` messages, and one relay or (as the seed
    /// draws) a cluster of them.
    pub fn new(seed: u64, peers: usize, messages: usize) -> Self {
        Self::build(seed, peers, messages, true)
    }

    /// A world of one relay, whatever the seed draws (as every run was before the cluster).
    pub fn alone(seed: u64, peers: usize, messages: usize) -> Self {
        Self::build(seed, peers, messages, false)
    }

    fn build(seed: u64, peers: usize, messages: usize, clustered: bool) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let faults = Faults::from_rng(&mut rng);
        // Small chunks so chunking is exercised cheaply; a generous rate limit for the relay.
        let mut config = NodeConfig {
            chunk_threshold: 3000,
            chunk_size: 1024,
            link_rate: peerlink_core::rate_limit::RateLimit::per_minute(100_000),
            ..NodeConfig::default()
        };
        config.capabilities.sign_all = rng.next_u32().is_multiple_of(2);
        config.mailbox_messages = 64;
        config.mailbox_bytes = 256 * 1024;
        config.stream.send_timeout = Duration::from_secs(60);
        config.preference = match rng.next_u32() % 6 {
            0 => TransportPreference::HttpFirst,
            1 => TransportPreference::HttpOnly,
            _ => TransportPreference::WebsocketFirst,
        };
        let mut names: Vec<EntityId> = (0..=peers)
            .map(|i| {
                EntityId::new(if i == RELAY { "relay".to_owned() } else { format!("p{i}") })
                    .unwrap()
            })
            .collect();
        let mut identities: Vec<[u8; 32]> = (0..=peers)
            .map(|_| {
                let mut b = [0u8; 32];
                rng.fill_bytes(&mut b);
                b
            })
            .collect();
        // The cluster draws from a generator of its own: a run with one relay is as it was.
        let mut cluster =
            cluster::ClusterSim::draw(seed, peers, config.mailbox_messages, config.mailbox_bytes)
                .filter(|_| clustered);
        if let Some(c) = cluster.as_mut() {
            for k in 1..c.relays.len() {
                names.push(EntityId::new(format!("relay{}", k + 1)).unwrap());
                identities.push(c.secret());
            }
        }
        let mut trust = TrustStore::new(TrustPolicy::Allowlist);
        for (name, secret) in names.iter().zip(&identities) {
            let id = Identity::from_secret_bytes(name.clone(), secret);
            trust.insert(name.clone(), id.public_key());
        }
        let mut world = World {
            seed,
            now: Timestamp::from_unix_millis(START),
            rng,
            faults,
            nodes: Vec::new(),
            queue: BTreeMap::new(),
            counter: 0,
            pairs: BTreeMap::new(),
            binary_links: Default::default(),
            link_clock: BTreeMap::new(),
            http: BTreeMap::new(),
            accepts: BTreeMap::new(),
            outcome: Outcome::default(),
            config,
            identities,
            names: names.clone(),
            trust,
            budget: vec![messages; peers + 1],
            messages,
            send_until: Timestamp::from_unix_millis(START + 120_000),
            trace: false,
            direct: false,
            peers,
            cluster,
            durable: durable::DurableSim::draw(seed, peers),
        };
        if world.durable.relays.is_some() {
            for r in world.relays() {
                world.durable.stores.insert(r, durable::Store::new());
            }
        }
        for i in 0..names.len() {
            let node = world.new_node(i);
            world.nodes.push(SimNode {
                node,
                base_url: world.base_url(i),
                generation: 0,
                down: false,
                partitioned: false,
            });
        }
        // In a third of the runs p1 reaches p2 directly, at p2's own node, instead of through
        // the relay: the direct case of spec §15.3 and §19 under the same faults.
        if peers >= 2 && world.rng.next_u32().is_multiple_of(3) {
            world.direct = true;
        }
        for i in 0..world.nodes.len() {
            world.set_up(i);
        }
        for i in 1..=peers {
            let at = ms(world.rng.next_u64() % 2000);
            world.schedule(at, Net::Send { from: i });
        }
        if world.faults.relay_restart {
            let at = 20_000 + world.rng.next_u64() % 60_000;
            world.schedule(ms(at), Net::Restart { node: RELAY });
        }
        if world.faults.partition && peers > 0 {
            let node = 1 + (world.rng.next_u64() as usize) % peers;
            let at = 10_000 + world.rng.next_u64() % 40_000;
            let length = 5_000 + world.rng.next_u64() % 90_000;
            world.schedule(ms(at), Net::Partition { node, on: true });
            world.schedule(ms(at + length), Net::Partition { node, on: false });
        }
        world.start_cluster();
        for (node, at, kind) in std::mem::take(&mut world.durable.crashes) {
            world.schedule(ms(at), Net::Crash { node, kind });
        }
        // Peers make themselves reachable at their relay from the start.
        for i in 0..world.nodes.len() {
            world.drain(i);
        }
        world
    }

    /// A new node for index `i` (its first, or a new incarnation after a crash): not yet set up.
    fn new_node(&self, i: usize) -> Node {
        let identity = Identity::from_secret_bytes(self.names[i].clone(), &self.identities[i]);
        // Distinct for every node and incarnation: `i + counter` alone let two nodes crashed a
        // few events apart draw the same generator, and so the same message ids (seed 18087).
        // Fewer than 256 nodes; the first incarnations (counter 0) are as they were.
        let node_seed = self
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(i as u64)
            .wrapping_add(self.counter << 8);
        let mut config = self.config.clone();
        // In odd seeds the odd-numbered peers forget idle peers as early as allowed (spec
        // §15.5), well inside the run, and the others keep them: so one side of a pair may hold
        // a session the other forgot. Decided by the seed, not the RNG, so the draws stay
        // what they were.
        if self.seed % 2 == 1 && i % 2 == 1 && !self.is_relay(i) {
            config.peer_idle_timeout = Duration::from_secs(61);
        }
        if self.cluster.is_some() && self.is_relay(i) {
            config.cluster = Some(cluster::relay_config());
        }
        config.durable = self.is_durable(i);
        // A third of the seeds keep every link on JSON, a third agree on binary wherever they
        // can, and in the rest every other node is JSON-only, so relays translate (spec §27).
        // Decided by the seed, not the RNG.
        config.binary_links = match self.seed % 3 {
            0 => false,
            1 => true,
            _ => (i as u64).wrapping_add(self.seed / 3).is_multiple_of(2),
        };
        // Three seeds in four hand public-key work out, as the drivers do; it comes back after
        // a random delay (`Net::WorkDone`). Of those, every other one hands out every signature
        // check too (the default threshold keeps this run's small envelopes in place). Decided
        // by the seed.
        config.offload_work = !(self.seed / 3).is_multiple_of(4);
        if (self.seed / 12).is_multiple_of(2) {
            config.offload_verify_min_bytes = 0;
        }
        Node::new(config, identity, self.trust.clone(), ChaCha20Rng::seed_from_u64(node_seed))
            .expect("valid config")
    }

    /// What the simulator sets up on node `i` at the start, and again when it runs after a
    /// crash (after its store is restored): a peer's relay, and p1's direct route to p2.
    fn set_up(&mut self, i: usize) {
        if self.is_relay(i) {
            return;
        }
        let home = self.home_of(i);
        let relay = NodeAddr { entity: self.names[home].clone(), base_url: self.base_url(home) };
        self.nodes[i].node.set_default_route(self.now, relay);
        if self.direct && i == 1 {
            let p2 = NodeAddr { entity: self.names[2].clone(), base_url: self.base_url(2) };
            self.nodes[1].node.add_route(self.names[2].clone(), p2);
        }
    }

    fn base_url(&self, i: usize) -> String {
        format!("http://{}.sim", self.names[i])
    }

    /// The node whose incarnation an event belongs to: an event for an earlier one is lost.
    fn addressee(event: &Net) -> Option<usize> {
        match event {
            Net::Connect { client, .. }
            | Net::Connected { client, .. }
            | Net::ConnectFailed { client, .. }
            | Net::HttpRequest { client, .. }
            | Net::HttpResponse { client, .. }
            | Net::HttpFailure { client, .. } => Some(*client),
            Net::Frame { to, .. } => Some(*to),
            Net::WorkDone { node, .. } => Some(*node),
            Net::Closed { node, .. } => Some(*node),
            _ => None,
        }
    }

    fn schedule(&mut self, after: Duration, event: Net) {
        self.counter += 1;
        let generation =
            Self::addressee(&event).and_then(|n| self.nodes.get(n)).map_or(0, |n| n.generation);
        self.queue.insert((self.now.saturating_add(after), self.counter), (event, generation));
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.faults.latency_ms;
        ms(lo + self.rng.next_u64() % (hi - lo + 1))
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        self.rng.next_u32() % 1000 < per_mille
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        !self.nodes[a].down
            && !self.nodes[b].down
            && !self.nodes[a].partitioned
            && !self.nodes[b].partitioned
    }

    fn node_of_url(&self, url: &str) -> Option<usize> {
        self.nodes.iter().position(|n| {
            let host = n.base_url.trim_start_matches("http://");
            url.contains(&format!("//{host}/"))
        })
    }

    /// Runs the world until `until` simulated milliseconds after the start.
    pub fn run(&mut self, until_ms: u64) -> &Outcome {
        let end = Timestamp::from_unix_millis(START + until_ms);
        let mut last_cut_check = self.now;
        let mut steps = 0u64;
        let mut same_time = 0u64;
        let mut last_time = self.now;
        for _ in 0..5_000_000u64 {
            steps += 1;
            let next_net = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer =
                self.nodes.iter().filter(|n| !n.down).filter_map(|n| n.node.poll_timeout()).min();
            let Some(next) = [next_net, next_timer].into_iter().flatten().min() else { break };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            if self.now == last_time {
                same_time += 1;
                if same_time > 100_000 {
                    panic!(
                        "seed {}: livelock at {:?} after {steps} steps (timers {:?})",
                        self.seed,
                        self.now,
                        self.nodes.iter().map(|n| n.node.poll_timeout()).collect::<Vec<_>>()
                    );
                }
            } else {
                same_time = 0;
                last_time = self.now;
            }
            // Random link cuts, checked once per simulated second.
            while self.now.saturating_duration_since(last_cut_check) >= Duration::from_secs(1) {
                last_cut_check = last_cut_check.saturating_add(Duration::from_secs(1));
                if self.now < self.send_until && self.chance(self.faults.cut_per_mille) {
                    self.cut_random_link();
                }
            }
            if next_net == Some(next) {
                let key = *self.queue.keys().next().unwrap();
                let (event, generation) = self.queue.remove(&key).unwrap();
                self.apply(event, generation);
            } else {
                for i in 0..self.nodes.len() {
                    if !self.nodes[i].down
                        && self.nodes[i].node.poll_timeout().is_some_and(|t| t <= self.now)
                    {
                        self.feed(i, Input::Timeout);
                        self.drain(i);
                    }
                }
            }
            for relay in self.relays() {
                let mailbox = self.nodes[relay].node.mailbox_bytes();
                self.outcome.max_mailbox_bytes = self.outcome.max_mailbox_bytes.max(mailbox);
            }
            // Only peers send messages, so only their outboxes toward peers hold any.
            let peers = &self.nodes[1..=self.peers];
            for n in peers {
                for m in peers {
                    let outbox = n.node.outbox_len(m.node.id());
                    self.outcome.max_outbox = self.outcome.max_outbox.max(outbox);
                }
            }
        }
        &self.outcome
    }

    fn cut_random_link(&mut self) {
        let links: Vec<(usize, LinkId)> = self.pairs.keys().copied().collect();
        if links.is_empty() {
            return;
        }
        let pick = links[(self.rng.next_u64() as usize) % links.len()];
        self.cut(pick.0, pick.1);
    }

    fn cut(&mut self, node: usize, link: LinkId) {
        if let Some((other, other_link)) = self.pairs.remove(&(node, link)) {
            self.pairs.remove(&(other, other_link));
            let d = self.latency();
            self.schedule(d, Net::Closed { node: other, link: other_link });
            self.schedule(d, Net::Closed { node, link });
        }
    }

    /// Carries out `event`, addressed to the incarnation `addressed` of its node.
    fn apply(&mut self, event: Net, addressed: u64) {
        if self.trace {
            eprintln!("{:?} {:?}", self.now, short(&event));
        }
        // An event for a node that crashed since it was sent is lost with that incarnation,
        // except a request already on its way: it reaches the server, and its answer is lost.
        let stale = Self::addressee(&event)
            .is_some_and(|n| self.nodes[n].generation != addressed || self.nodes[n].down);
        if stale && !matches!(event, Net::HttpRequest { .. }) {
            if self.trace {
                eprintln!("{:?}   (lost: its node crashed)", self.now);
            }
            return;
        }
        match event {
            Net::Send { from } => self.app_send(from),
            Net::Connect { client, link, server, kind, generation, offer_binary } => {
                let alive =
                    self.nodes[server].generation == generation && self.reachable(client, server);
                let d = self.latency();
                if !alive {
                    self.schedule(d, Net::ConnectFailed { client, link });
                    return;
                }
                let entity = self.nodes[client].node.id().clone();
                let who = Bearer::from(entity);
                // Negotiated as a driver does: the server's rule, then the client reads its answer.
                let offered = offer_binary.then_some(wire::BINARY_SUBPROTOCOL);
                let encoding = wire::choose(offered, self.nodes[server].node.config().binary_links);
                match self.nodes[server]
                    .node
                    .handle_input(self.now, Input::AcceptLink { kind, who, encoding })
                {
                    Ok(Handled::Link(server_link)) => {
                        self.pairs.insert((client, link), (server, server_link));
                        self.pairs.insert((server, server_link), (client, link));
                        // Link ids of a restarted node start again: the set says what this one is.
                        if encoding == Encoding::Binary {
                            self.binary_links.insert((server, server_link));
                        } else {
                            self.binary_links.remove(&(server, server_link));
                        }
                        self.drain(server);
                        let encoding = wire::selected(encoding.subprotocol(), offer_binary);
                        self.schedule(d, Net::Connected { client, link, encoding });
                    }
                    _ => self.schedule(d, Net::ConnectFailed { client, link }),
                }
            }
            Net::Connected { client, link, encoding } => {
                if self.pairs.contains_key(&(client, link)) {
                    if encoding == Encoding::Binary {
                        self.binary_links.insert((client, link));
                    } else {
                        self.binary_links.remove(&(client, link));
                    }
                    self.feed(client, Input::LinkUp { link, encoding });
                } else {
                    self.feed(client, Input::LinkFailed(link));
                }
                self.drain(client);
            }
            Net::ConnectFailed { client, link } => {
                self.feed(client, Input::LinkFailed(link));
                self.drain(client);
            }
            Net::Frame { to, link, frame } => {
                if self.pairs.contains_key(&(to, link)) {
                    // As a driver writes it: a binary envelope as a binary message.
                    if Encoding::of(&frame) == Encoding::Binary {
                        self.feed(to, Input::BinaryFrame { link, frame: &frame });
                    } else {
                        self.feed(to, Input::Frame { link, frame: &frame });
                    }
                    self.drain(to);
                }
            }
            Net::Closed { node, link } => {
                if !self.nodes[node].down {
                    self.feed(node, Input::LinkClosed(link));
                    self.drain(node);
                }
            }
            Net::WorkDone { node, work } => {
                let now = self.now;
                self.outcome.work_done += 1;
                self.nodes[node].node.complete_work(now, work.run());
                self.drain(node);
            }
            Net::HttpRequest { client, request, server, call, lose_response, generation } => {
                let d = self.latency();
                let reachable = if stale {
                    let s = &self.nodes[server];
                    !s.down && !s.partitioned && !self.nodes[client].partitioned
                } else {
                    self.reachable(client, server)
                };
                if self.nodes[server].generation != generation || !reachable {
                    if !stale {
                        self.schedule(d + ms(1000), Net::HttpFailure { client, request });
                    }
                    return;
                }
                let entity = self.nodes[client].node.id().clone();
                let who = Bearer::from(entity);
                let Ok(Handled::Call(server_request)) =
                    self.nodes[server].node.handle_input(self.now, Input::HttpCall { who, call })
                else {
                    unreachable!("an HTTP call is always taken");
                };
                self.http
                    .insert((server, server_request), (client, request, lose_response, addressed));
                self.drain(server);
            }
            Net::HttpResponse { client, request, status, body, encoding } => {
                if self.nodes[client].partitioned {
                    self.feed(client, Input::HttpFailed(request));
                } else {
                    let response = Input::HttpResponse { request, status, body: &body, encoding };
                    self.feed(client, response);
                }
                self.drain(client);
            }
            Net::HttpFailure { client, request } => {
                self.feed(client, Input::HttpFailed(request));
                self.drain(client);
            }
            Net::Restart { node } => self.relay_restart(node),
            Net::Crash { node, kind } => self.crash_due(node, kind),
            Net::CrashIfArmed { node } => self.crash_if_armed(node),
            Net::Up { node } => self.node_up(node),
            Net::Cluster(event) => self.apply_cluster(event),
            Net::Partition { node, on } => {
                self.nodes[node].partitioned = on;
                if on {
                    let links: Vec<LinkId> =
                        self.pairs.keys().filter(|(n, _)| *n == node).map(|(_, l)| *l).collect();
                    for link in links {
                        self.cut(node, link);
                    }
                }
            }
        }
    }

    fn app_send(&mut self, from: usize) {
        if self.nodes[from].down {
            // The application runs again with its node.
            self.schedule(ms(500), Net::Send { from });
            return;
        }
        let peers = self.peers;
        if self.now < self.send_until && self.budget[from] > 0 && peers > 1 {
            self.budget[from] -= 1;
            let mut to = 1 + (self.rng.next_u64() as usize) % peers;
            if to == from {
                to = 1 + (to % peers);
            }
            let k = self.outcome.sent.get(&(from, to)).map_or(0, Vec::len);
            let mut payload = format!("MSG|{}|{from}->{to}|{k}|", self.seed).into_bytes();
            if self.rng.next_u32().is_multiple_of(10) {
                payload.resize(payload.len() + 2000 + (self.rng.next_u64() % 9000) as usize, b'x');
            }
            let prefer_websocket = match self.rng.next_u32() % 4 {
                0 => Some(true),
                1 => Some(false),
                _ => None,
            };
            let target = self.nodes[to].node.id().clone();
            let request = self.rng.next_u32().is_multiple_of(8);
            let result = if request {
                self.nodes[from].node.request(
                    self.now,
                    &target,
                    payload.clone(),
                    Duration::from_secs(90),
                )
            } else {
                // Every third message of a pair carries an application type (spec §13.1).
                let app_type = k
                    .is_multiple_of(3)
                    .then(|| AppType::new(format!("sim.type-{}", k % 7)))
                    .and_then(Result::ok);
                let options = SendOptions { prefer_websocket, app_type: app_type.clone() };
                self.nodes[from].node.send(self.now, &target, payload.clone(), options).inspect(
                    |id| {
                        if let Some(t) = app_type {
                            self.outcome.app_types.insert(id.clone(), t);
                        }
                    },
                )
            };
            if let Ok(id) = result {
                self.accepted(from, to, (id, payload));
            }
            self.drain(from);
        }
        if self.budget[from] > 0 {
            let mut d = ms(200 + self.rng.next_u64() % 3000);
            // Odd seeds (which forget idle peers after 61 s): halfway through its messages a
            // peer falls silent for longer than that, so it is forgotten mid-run and must find
            // its way back (SESSION_NOT_FOUND, a new handshake) for the rest.
            if self.seed % 2 == 1 && self.budget[from] == self.messages / 2 {
                d = ms(65_000 + self.rng.next_u64() % 20_000);
            }
            self.schedule(d, Net::Send { from });
        }
    }

    fn index_of(&self, id: &EntityId) -> Option<usize> {
        self.nodes.iter().position(|n| n.node.id() == id)
    }

    /// Every NDJSON line of an HTTP body is a JSON envelope (spec §27.3).
    /// An HTTP body of node `i` in `encoding`: binary only if `agreed` (both ends' config),
    /// well framed, every envelope in the body's encoding (spec §27.7).
    fn check_body(&mut self, i: usize, what: &str, body: &[u8], encoding: Encoding, agreed: bool) {
        if encoding == Encoding::Binary {
            self.outcome.binary_bodies += u64::from(!body.is_empty());
            if !agreed {
                self.outcome.misframed.push(format!("node {i}: binary {what} not agreed on"));
            }
        }
        for frame in peerlink_core::http_body::frames(body, encoding, usize::MAX) {
            match frame {
                Ok(f) if Encoding::of(f) == encoding => {}
                Ok(_) => {
                    self.outcome.misframed.push(format!("node {i}: {what} of mixed encodings"));
                }
                Err(e) => self.outcome.misframed.push(format!("node {i}: {what}: {e}")),
            }
        }
    }

    fn check_leak(&mut self, what: &str, bytes: &[u8]) {
        self.outcome.frames += 1;
        if bytes.windows(4).any(|w| w == b"MSG|") {
            self.outcome.leaks.push(format!(
                "{what}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
        }
    }

    /// Feeds node `i` one input now; only an accepted link or call gives an id back, and
    /// those are fed where the id is wanted.
    fn feed(&mut self, i: usize, input: Input<'_>) {
        let handled = self.nodes[i].node.handle_input(self.now, input);
        assert_eq!(handled, Ok(Handled::Done), "node {i}");
    }

    /// Carries out everything node `i` asked for (nothing if it is down).
    fn drain(&mut self, i: usize) {
        if self.nodes[i].down {
            return;
        }
        if self.is_durable(i) {
            return self.drain_durable(i);
        }
        while let Some(out) = self.nodes[i].node.poll_output() {
            self.carry(i, out);
        }
    }

    /// Carries out one output of node `i`.
    fn carry(&mut self, i: usize, out: Output) {
        match out {
            Output::Transmit { link, frame } => {
                self.check_leak("frame", &frame);
                if Encoding::of(&frame) == Encoding::Binary {
                    self.outcome.binary_frames += 1;
                    if !self.binary_links.contains(&(i, link)) {
                        self.outcome.misframed.push(format!("node {i}: binary frame on {link:?}"));
                    }
                }
                if let Some((to, to_link)) = self.pairs.get(&(i, link)).copied() {
                    let at = self.now.saturating_add(self.latency());
                    let last = self.link_clock.get(&(to, to_link)).copied().unwrap_or(at);
                    let at = at.max(last);
                    self.link_clock.insert((to, to_link), at);
                    let after = at.saturating_duration_since(self.now);
                    self.schedule(after, Net::Frame { to, link: to_link, frame });
                }
            }
            Output::OpenLink { link, url, kind, offer_binary, .. } => {
                let d = self.latency();
                match self.node_of_url(&url) {
                    Some(server) if self.reachable(i, server) => {
                        let generation = self.nodes[server].generation;
                        self.schedule(
                            d,
                            Net::Connect {
                                client: i,
                                link,
                                server,
                                kind,
                                generation,
                                offer_binary,
                            },
                        );
                    }
                    _ => self.schedule(d + ms(1000), Net::ConnectFailed { client: i, link }),
                }
            }
            Output::CloseLink { link, .. } => {
                if let Some((other, other_link)) = self.pairs.remove(&(i, link)) {
                    self.pairs.remove(&(other, other_link));
                    let d = self.latency();
                    self.schedule(d, Net::Closed { node: other, link: other_link });
                }
            }
            Output::HttpRequest {
                request,
                method,
                url,
                body,
                body_encoding,
                accept_binary,
                ..
            } => {
                self.check_leak("http request", &body);
                let d = self.latency();
                // Nodes keep their configuration across restarts: a client posts binary only to
                // a server whose `binary_links` is on, as both are.
                let binary_links = |n: &Self, s: usize| n.nodes[s].node.config().binary_links;
                let agreed = self
                    .node_of_url(&url)
                    .is_some_and(|s| binary_links(self, i) && binary_links(self, s));
                self.check_body(i, "http request", &body, body_encoding, agreed);
                if accept_binary != binary_links(self, i) {
                    self.outcome.misframed.push(format!("node {i}: Accept against its config"));
                }
                let Some(server) = self.node_of_url(&url).filter(|s| self.reachable(i, *s)) else {
                    self.schedule(d + ms(1000), Net::HttpFailure { client: i, request });
                    return;
                };
                if self.chance(self.faults.http_5xx_per_mille) {
                    self.schedule(
                        d,
                        Net::HttpResponse {
                            client: i,
                            request,
                            status: 503,
                            body: Vec::new(),
                            encoding: Encoding::Json,
                        },
                    );
                    return;
                }
                if self.chance(self.faults.http_lost_request_per_mille) {
                    self.schedule(d + ms(5000), Net::HttpFailure { client: i, request });
                    return;
                }
                let lose_response = self.chance(self.faults.http_lost_response_per_mille);
                // As a driver carries the headers: `Content-Type` and `Accept`, read back.
                let accept_binary = wire::accepts_binary(Some(wire::accept_header(accept_binary)));
                let call = match method {
                    HttpMethod::Post => HttpCall::PostMessages {
                        body,
                        encoding: wire::body_encoding(Some(body_encoding.media_type())),
                        accept_binary,
                    },
                    HttpMethod::Get => HttpCall::Poll { wait: poll_wait_in(&url), accept_binary },
                };
                self.accepts.insert((i, request), accept_binary);
                let generation = self.nodes[server].generation;
                self.schedule(
                    d,
                    Net::HttpRequest {
                        client: i,
                        request,
                        server,
                        call,
                        lose_response,
                        generation,
                    },
                );
            }
            Output::HttpRespond { request, status, body, encoding } => {
                self.check_leak("http response", &body);
                let asked = self
                    .http
                    .get(&(i, request))
                    .and_then(|(c, r, ..)| self.accepts.get(&(*c, *r)).copied());
                let agreed = asked != Some(false) && self.nodes[i].node.config().binary_links;
                self.check_body(i, "http response", &body, encoding, agreed);
                if let Some((client, client_request, lose, generation)) =
                    self.http.remove(&(i, request))
                    && self.nodes[client].generation == generation
                {
                    self.accepts.remove(&(client, client_request));
                    let d = self.latency();
                    if lose {
                        self.schedule(
                            d + ms(5000),
                            Net::HttpFailure { client, request: client_request },
                        );
                    } else {
                        self.schedule(
                            d,
                            Net::HttpResponse {
                                client,
                                request: client_request,
                                status,
                                body,
                                encoding: wire::body_encoding(Some(encoding.media_type())),
                            },
                        );
                    }
                }
            }
            Output::Event(e) => self.on_event(i, e),
            Output::Cluster(action) => self.cluster_command(i, action),
            Output::Persist(op) => unreachable!("node {i} is not durable but wrote {op:?}"),
            Output::Work(work) => {
                // Run elsewhere: back after 0 to 3 ms, in any order across the node's work.
                let after = ms(self.rng.next_u64() % 4);
                self.schedule(after, Net::WorkDone { node: i, work });
            }
        }
    }

    fn on_event(&mut self, i: usize, e: Event) {
        if self.trace {
            eprintln!("{:?} node {i} event {e:?}", self.now);
        }
        match e {
            Event::Message { id, app_type, .. }
                if app_type != self.outcome.app_types.get(&id).cloned() =>
            {
                self.outcome.mislabelled.push(format!("{id} arrived typed {app_type:?}"));
            }
            Event::Delivered { id, transport: None, .. } => {
                self.outcome.mislabelled.push(format!("{id} delivered by no transport"));
            }
            Event::Message { from, id, .. } | Event::Request { from, id, .. } => {
                self.handed(i, &from, &id);
                self.outcome.delivered_at.entry(id.clone()).or_insert(self.now);
                if self.outcome.failed.contains_key(&id) {
                    self.outcome.late += 1;
                }
                if let Some(f) = self.index_of(&from) {
                    self.outcome.delivered.entry((f, i)).or_default().push(id.clone());
                }
                if let Some(f) = self.index_of(&from)
                    && self
                        .outcome
                        .sent
                        .get(&(f, i))
                        .is_some_and(|s| s.iter().any(|(m, p)| *m == id && p.starts_with(b"MSG|")))
                {
                    // Answer requests (responses are not tracked as sent messages).
                    let _ = self.nodes[i].node.respond(self.now, &from, &id, b"done".to_vec());
                }
            }
            // An outcome is reported once, whatever crashes its sender (spec §26.2): the first
            // report is kept.
            Event::Delivered { id, .. } => {
                if self.outcome.acked.contains_key(&id) || self.outcome.failed.contains_key(&id) {
                    self.outcome.reported_twice.push(format!("node {i}: {id} delivered again"));
                }
                self.outcome.acked.entry(id).or_insert(self.now);
            }
            Event::Failed { id, maybe_delivered, .. } => {
                if self.outcome.acked.contains_key(&id) || self.outcome.failed.contains_key(&id) {
                    self.outcome.reported_twice.push(format!("node {i}: {id} failed again"));
                }
                self.outcome.failed.entry(id).or_insert((self.now, maybe_delivered));
            }
            Event::Response { .. } => self.outcome.responses += 1,
            Event::RequestTimedOut { .. } => self.outcome.timeouts += 1,
            Event::TransportSwitched { .. } => self.outcome.switches += 1,
            Event::SessionResumed { .. } => self.outcome.resumes += 1,
            Event::SessionEstablished { .. } => self.outcome.handshakes += 1,
            _ => {}
        }
    }

    /// HTTP bodies in the binary encoding so far (spec §27.7).
    pub fn binary_bodies(&self) -> u64 {
        self.outcome.binary_bodies
    }

    /// Binary envelopes written on links.
    pub fn binary_frames(&self) -> u64 {
        self.outcome.binary_frames
    }

    /// Public-key work completed so far.
    pub fn work_done(&self) -> u64 {
        self.outcome.work_done
    }

    /// Checks the invariants; returns a description of every violation.
    pub fn violations(&self) -> Vec<String> {
        let o = &self.outcome;
        let mut v = Vec::new();
        v.extend(o.leaks.iter().map(|l| format!("plaintext left a session: {l}")));
        v.extend(o.mislabelled.iter().cloned());
        v.extend(o.misframed.iter().map(|m| format!("misframed: {m}")));
        v.extend(self.cluster_violations());
        v.extend(o.restore_errors.iter().map(|e| format!("restore refused its store: {e}")));
        v.extend(o.reported_twice.iter().map(|e| format!("outcome reported twice: {e}")));
        for ((from, to), delivered) in &o.delivered {
            let sent: Vec<&MessageId> = o
                .sent
                .get(&(*from, *to))
                .map(|s| s.iter().map(|(m, _)| m).collect())
                .unwrap_or_default();
            let mut last = None;
            let mut seen: BTreeMap<&MessageId, usize> = BTreeMap::new();
            for id in delivered {
                let times = seen.entry(id).or_default();
                *times += 1;
                if *times > 1 {
                    // Only a message handed in a group a crash tore may come again, once more
                    // per such crash; where it comes again is not an order of its own.
                    if *times > 1 + o.repeats_allowed.get(id).copied().unwrap_or(0) {
                        v.push(format!("p{from}->p{to}: {id} delivered {times} times"));
                    }
                    continue;
                }
                match sent.iter().position(|m| *m == id) {
                    None => v.push(format!("p{from}->p{to}: {id} delivered but never sent")),
                    Some(pos) => {
                        if last.is_some_and(|l| pos <= l) {
                            v.push(format!("p{from}->p{to}: {id} delivered out of order"));
                        }
                        last = Some(pos);
                    }
                }
            }
        }
        for ((from, to), sent) in &o.sent {
            let delivered: BTreeSet<&MessageId> =
                o.delivered.get(&(*from, *to)).map(|d| d.iter().collect()).unwrap_or_default();
            for (id, _) in sent {
                let got = delivered.contains(id);
                let (acked, failed) = (o.acked.get(id), o.failed.get(id));
                let at = o.delivered_at.get(id);
                // "Delivered" means handed to the receiving application, before the report.
                match (acked, at) {
                    (Some(_), None) => {
                        v.push(format!("p{from}->p{to}: {id} reported delivered but never arrived"))
                    }
                    (Some(reported), Some(arrived)) if reported < arrived => v.push(format!(
                        "p{from}->p{to}: {id} reported delivered at {reported:?}, \
                         before it reached the application at {arrived:?}"
                    )),
                    _ => {}
                }
                if acked.is_some() && failed.is_some() {
                    v.push(format!("p{from}->p{to}: {id} reported both delivered and failed"));
                }
                // A failure that says the message never left cannot be followed by it.
                if let Some((_, false)) = failed
                    && got
                {
                    v.push(format!(
                        "p{from}->p{to}: {id} reported failed and never sent, yet delivered"
                    ));
                }
                // An outcome lost with its sender's crash after a commit is no outcome.
                let lost = o.outcomes_lost.contains(id);
                if !got && failed.is_none() && !lost {
                    v.push(format!("p{from}->p{to}: {id} neither delivered nor reported failed"));
                }
                if acked.is_none() && failed.is_none() && !lost {
                    v.push(format!("p{from}->p{to}: {id} has no outcome at its sender"));
                }
            }
        }
        let bound = self.config.mailbox_bytes.saturating_mul(self.nodes.len());
        if o.max_mailbox_bytes > bound {
            v.push(format!("relay mailboxes held {} bytes, bound {bound}", o.max_mailbox_bytes));
        }
        if o.max_outbox > self.config.stream.max_outbox_messages {
            v.push(format!(
                "an outbox held {} messages, bound {}",
                o.max_outbox, self.config.stream.max_outbox_messages
            ));
        }
        v
    }

    /// Every node's view of every other, for failure reports.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            for m in &self.nodes {
                if n.node.id() != m.node.id() {
                    out += &format!(
                        "{} about {}: {}\n",
                        n.node.id(),
                        m.node.id(),
                        n.node.debug_peer(m.node.id())
                    );
                }
            }
        }
        out
    }

    /// The durable part's counters (zero for a run without durable peers).
    pub fn durable_stats(&self) -> DurableStats {
        self.durable.stats
    }

    /// Idle peers forgotten so far, every node together.
    pub fn peers_forgotten(&self) -> u64 {
        self.nodes.iter().map(|n| n.node.stats().peers_forgotten).sum()
    }

    /// A one-line summary of the run.
    pub fn summary(&self) -> String {
        let o = &self.outcome;
        let sent: usize = o.sent.values().map(Vec::len).sum();
        let delivered: usize = o.delivered.values().map(Vec::len).sum();
        format!(
            "seed {}{}: {sent} sent, {delivered} delivered, {} failed ({} delivered late), {} frames, {} handshakes, {} resumes, {} switches, {} peers forgotten, faults {:?}{}{}",
            self.seed,
            if self.direct { " (p1->p2 direct)" } else { "" },
            o.failed.len(),
            o.late,
            o.frames,
            o.handshakes,
            o.resumes,
            o.switches,
            self.peers_forgotten(),
            self.faults,
            self.cluster_summary(),
            self.durable_summary()
        )
    }
}

fn short(e: &Net) -> String {
    match e {
        Net::Frame { to, link, frame } => {
            let text = String::from_utf8_lossy(frame);
            let kind =
                text.split("\"type\":\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("?");
            let id = text
                .split("\"message_id\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("?");
            let seq =
                text.split("\"seq\":").nth(1).and_then(|s| s.split(',').next()).unwrap_or("?");
            let sid = text
                .split("\"session_id\":")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .unwrap_or("?");
            format!("Frame to {to} {link:?} {kind} id={id} seq={seq} sid={sid} ({} B)", frame.len())
        }
        Net::HttpRequest { client, request, server, call, .. } => format!(
            "HttpRequest {client}->{server} {request:?} {}",
            match call {
                HttpCall::PostMessages { body, encoding, .. } => {
                    format!("POST {} B {encoding:?}{}", body.len(), kinds(body))
                }
                HttpCall::Poll { .. } => "GET".to_owned(),
            }
        ),
        Net::HttpResponse { client, request, status, body, encoding } => {
            let n = body.len();
            format!(
                "HttpResponse to {client} {request:?} {status} {n} B {encoding:?}{}",
                kinds(body)
            )
        }
        other => format!("{other:?}"),
    }
}

/// The envelopes in an HTTP body, for traces: ` [TYPE sender->recipient, …]`.
fn kinds(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let field = |part: &str, name: &str| {
        part.split(&format!("\"{name}\":\""))
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("-")
            .to_owned()
    };
    let found: Vec<String> = text
        .split("\"message_id\":\"")
        .skip(1)
        .map(|part| {
            let (s, r) = (field(part, "sender_id"), field(part, "recipient_id"));
            format!("{} {s}->{r}", field(part, "type"))
        })
        .collect();
    if found.is_empty() { String::new() } else { format!(" [{}]", found.join(", ")) }
}

/// The `wait_ms` a client put in a long poll's URL, as a node's HTTP server reads it (spec §21).
fn poll_wait_in(url: &str) -> Option<std::time::Duration> {
    let query = url.split_once('?').map(|(_, q)| q);
    peerlink_core::endpoints::poll_wait_of(query).ok().flatten()
}
