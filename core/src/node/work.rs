//! Public-key work handed out of the node ([`Output::Work`]), so that a driver runs it off the
//! node's task, in parallel, while the node stays deterministic: the node decides what to compute
//! and when its result counts; the driver only decides where it runs.
//!
//! Two kinds of work, both pure functions of what they carry:
//! - **accepting a `HANDSHAKE_INIT`** ([`Responder::accept_authorized`]): its signature check,
//!   the ephemeral key pair, the Diffie-Hellman and the answer's signature, the costliest step
//!   of a handshake, with randomness the node drew for it (a seed), so one seed still replays a
//!   run byte for byte;
//! - **checking a signature** with the key the node expects, on an envelope of at least
//!   [`NodeConfig::offload_verify_min_bytes`](super::NodeConfig::offload_verify_min_bytes):
//!   session messages signed under `sign_all`, signed messages, the handshake's other steps.
//!   The result is a hint: an envelope found valid
//!   for a key skips that one check later ([`Envelope::verify`]); a failure, or a key that turns
//!   out not to be the one asked for, leaves the check to be done as before, with the same
//!   error. So every rule, every error and its precedence stay where they were.
//!
//! While a sender has work out, what else arrives from it on the same link waits behind it: a
//! sender's envelopes on a link are handled in the order they arrived, as without offloading
//! (nothing orders envelopes across links or HTTP calls). Only envelopes from WebSocket links
//! are offloaded or parked; HTTP answers are built while their call is processed. What waits is
//! bounded: past the bounds the envelope is dropped and its link closed with
//! `RATE_LIMIT_EXCEEDED` (its peer reconnects, and its session re-sends what was not
//! acknowledged), counted in
//! [`TransportStats::parked_dropped`](super::TransportStats::parked_dropped). When a link closes,
//! what it delivered and still waits is handled first, in place, while the link's binding
//! (spec §2.3) stands, as it would have been without offloading.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::links::Source;
use super::{LinkId, Node, Output};
use crate::envelope::Envelope;
use crate::error::{ErrorCode, ProtocolError};
use crate::handshake::{HandshakeConfig, Responder};
use crate::identity::{Identity, PublicKey, SIGNATURE_LEN};
use crate::ids::EntityId;
use crate::message_type::{MessageClass, MessageType};
use crate::time::Timestamp;

/// Envelopes parked behind work, across all senders.
const MAX_PARKED: usize = 4096;
/// Envelopes parked behind work, per sender: a window's worth.
const MAX_PARKED_PER_SENDER: usize = 512;
/// Bytes parked behind work, across all senders: a ciphertext or string payload counts as
/// received, any other JSON payload [`JSON_EXPANSION`] times that (a decoded JSON value can be
/// many times its text: `[0,0,…]`).
const MAX_PARKED_BYTES: usize = 64 << 20;
/// How much more than its text a parked JSON payload other than a string is counted as.
const JSON_EXPANSION: usize = 16;

/// Names one piece of [`Work`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkId(u64);

/// Public-key work for the driver: call [`Work::run`] anywhere (another thread, a pool) and hand
/// its result back with [`Node::complete_work`]. Until it comes back, the envelopes of the sender
/// it is for wait; work that never comes back stalls that sender, so a driver that cannot run
/// work leaves [`NodeConfig::offload_work`](super::NodeConfig::offload_work) off.
#[derive(Clone)]
pub struct Work {
    id: WorkId,
    task: Task,
    /// When the node handed it out.
    at: Timestamp,
}

#[derive(Clone)]
enum Task {
    /// Check `env`'s signature with `key`.
    Verify { env: Arc<Envelope>, key: PublicKey },
    /// Answer a `HANDSHAKE_INIT` whose sender the trust store lets use `key`.
    Accept(Box<Accept>),
}

#[derive(Clone)]
struct Accept {
    identity: Arc<Identity>,
    key: PublicKey,
    config: HandshakeConfig,
    init: Arc<Envelope>,
    now: Timestamp,
    /// Seeds the randomness of the answer (ephemeral key, challenge, session id, nonce).
    seed: zeroize::Zeroizing<[u8; 32]>,
}

impl Work {
    /// Which work this is.
    pub fn id(&self) -> WorkId {
        self.id
    }

    /// When the node handed it out (how long it waited is a driver's metric).
    pub fn handed_out_at(&self) -> Timestamp {
        self.at
    }

    /// Does the work. Pure: the same work gives the same result, wherever and whenever it runs.
    pub fn run(self) -> WorkDone {
        let signature = match &self.task {
            Task::Verify { env, .. } => env.signature,
            Task::Accept(a) => a.init.signature,
        };
        let outcome = match self.task {
            Task::Verify { env, key } => Outcome::Verified(env.verify(&key).ok().map(|()| key)),
            Task::Accept(a) => {
                let mut rng = ChaCha20Rng::from_seed(*a.seed);
                let answer = Responder::accept_authorized(
                    a.identity, a.key, a.config, &a.init, a.now, &mut rng,
                );
                Outcome::Accepted(Box::new(Accepted { key: a.key, answer }))
            }
        };
        WorkDone { id: self.id, signature, outcome }
    }
}

impl PartialEq for Work {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Work {}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.task {
            Task::Verify { .. } => "verify",
            Task::Accept(_) => "accept",
        };
        f.debug_struct("Work").field("id", &self.id).field("kind", &kind).finish()
    }
}

/// The result of [`Work::run`], for [`Node::complete_work`].
pub struct WorkDone {
    id: WorkId,
    /// The signature of the envelope the work was about: a result is only taken for the
    /// envelope it was computed for (not one another node gave the same id).
    signature: Option<[u8; SIGNATURE_LEN]>,
    outcome: Outcome,
}

impl WorkDone {
    /// Which work it is the result of.
    pub fn id(&self) -> WorkId {
        self.id
    }

    /// What a driver hands back for work `id` that could not run (it panicked, its thread was
    /// lost): the node then does that work in place, so its sender does not wait for ever.
    pub fn undone(id: WorkId) -> Self {
        WorkDone { id, signature: None, outcome: Outcome::Undone }
    }
}

impl std::fmt::Debug for WorkDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.outcome {
            Outcome::Verified(Some(_)) => "verified",
            Outcome::Verified(None) => "not verified",
            Outcome::Accepted(a) if a.answer.is_ok() => "accepted",
            Outcome::Accepted(_) => "refused",
            Outcome::Undone => "undone",
        };
        f.debug_struct("WorkDone").field("id", &self.id).field("outcome", &kind).finish()
    }
}

enum Outcome {
    /// The key the signature is valid for, if it is.
    Verified(Option<PublicKey>),
    Accepted(Box<Accepted>),
    /// The work did not run: the node does it in place.
    Undone,
}

/// A `HANDSHAKE_INIT` answered off the task, and the key it was answered for.
pub(super) struct Accepted {
    key: PublicKey,
    answer: Result<(Responder, Envelope), ProtocolError>,
}

impl Accepted {
    /// The answer, if the trust store still lets `init`'s sender use the key it was computed
    /// for (the store may have changed while the work ran): else `None`, and the node answers
    /// the `HANDSHAKE_INIT` itself.
    pub(super) fn answer_for(
        self,
        trust: &crate::identity::TrustStore,
        init: &Envelope,
    ) -> Option<Result<(Responder, Envelope), ProtocolError>> {
        (Responder::authorize(trust, init).ok() == Some(self.key)).then_some(self.answer)
    }
}

/// A sender on a link: whose envelopes are kept in order.
type QueueKey = (EntityId, LinkId);

/// The envelopes waiting for work, per sender and link, in arrival order.
#[derive(Default)]
pub(super) struct Parking {
    next: u64,
    /// Work out, and the queue that waits for it.
    out: BTreeMap<WorkId, QueueKey>,
    queues: BTreeMap<QueueKey, VecDeque<Parked>>,
    count: usize,
    bytes: usize,
}

impl std::fmt::Debug for Parking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parking")
            .field("work_out", &self.out.len())
            .field("parked", &self.count)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Parking {
    /// Envelopes parked now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Bytes charged for what is parked now.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Work handed out so far.
    #[cfg(test)]
    pub(super) fn handed_out(&self) -> u64 {
        self.next
    }
}

struct Parked {
    env: Arc<Envelope>,
    /// What it is charged against [`MAX_PARKED_BYTES`].
    bytes: usize,
    state: State,
}

enum State {
    /// Its work is out.
    Waiting(WorkId),
    /// Nothing to wait for: it arrived while earlier envelopes of its sender waited.
    Plain,
    Verified(Option<PublicKey>),
    Accepted(Box<Accepted>),
}

/// What an envelope would have done off the task.
enum Want {
    Verify(PublicKey),
    Accept(PublicKey),
}

impl Node {
    /// An envelope for this node, decoded (`bytes`: its size as received): handled now, or
    /// parked behind its sender's work.
    pub(super) fn take_local(
        &mut self,
        now: Timestamp,
        source: Source,
        env: Envelope,
        bytes: usize,
    ) {
        let link = match source {
            Source::Link(link) if self.config.offload_work => link,
            _ => return self.handle_local(now, &source, env, None),
        };
        let want = self.want(&source, &env, bytes);
        if want.is_none() && self.parking.queues.is_empty() {
            // The common case: nothing to hand out, nothing waiting (no id cloned for a key).
            return self.handle_local(now, &source, env, None);
        }
        let key = (env.sender_id.clone(), link);
        let queued = self.parking.queues.get(&key).map_or(0, VecDeque::len);
        if queued == 0 && want.is_none() {
            return self.handle_local(now, &source, env, None);
        }
        let charge = match (env.payload.raw(), env.payload.json()) {
            (Some(_), _) | (_, Some(serde_json::Value::String(_))) => bytes,
            _ => bytes.saturating_mul(JSON_EXPANSION),
        };
        let p = &self.parking;
        if queued >= MAX_PARKED_PER_SENDER
            || p.count >= MAX_PARKED
            || charge > MAX_PARKED_BYTES.saturating_sub(p.bytes)
        {
            if queued == 0 {
                // Nothing of its sender waits on this link: handled here, in order.
                return self.handle_local(now, &source, env, None);
            }
            // The link sends faster than its work comes back: it is closed, as a full input
            // queue closes it; what it sent and was not acknowledged comes again.
            self.stats.parked_dropped = self.stats.parked_dropped.saturating_add(1);
            self.close_link(now, link, Some(ErrorCode::RateLimitExceeded));
            return;
        }
        let env = Arc::new(env);
        let state = match want {
            None => State::Plain,
            Some(want) => {
                let id = WorkId(self.parking.next);
                self.parking.next = self.parking.next.wrapping_add(1);
                let task = match want {
                    Want::Verify(key) => Task::Verify { env: Arc::clone(&env), key },
                    Want::Accept(key) => {
                        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
                        self.rng.fill_bytes(seed.as_mut_slice());
                        Task::Accept(Box::new(Accept {
                            identity: Arc::clone(&self.identity),
                            key,
                            config: self.handshake.clone(),
                            init: Arc::clone(&env),
                            now,
                            seed,
                        }))
                    }
                };
                self.parking.out.insert(id, key.clone());
                self.outputs.push_back(Output::Work(Work { id, task, at: now }));
                State::Waiting(id)
            }
        };
        self.parking.count = self.parking.count.saturating_add(1);
        self.parking.bytes = self.parking.bytes.saturating_add(charge);
        self.parking.queues.entry(key).or_default().push_back(Parked { env, bytes: charge, state });
    }

    /// Takes back [`Work`] the node handed out ([`Output::Work`]), run: the envelopes of its
    /// sender that waited for it are handled now, in the order they arrived. Work the node no
    /// longer waits for is ignored.
    pub fn complete_work(&mut self, now: Timestamp, done: WorkDone) {
        self.settle_positions(now);
        let Some(key) = self.parking.out.remove(&done.id) else { return };
        let waiting = self.parking.queues.get_mut(&key).and_then(|q| {
            q.iter_mut().find(|p| matches!(p.state, State::Waiting(id) if id == done.id))
        });
        if let Some(parked) = waiting {
            parked.state = match done.outcome {
                // A result about another envelope than this one is no result.
                _ if done.signature != parked.env.signature => State::Plain,
                Outcome::Verified(key) => State::Verified(key),
                Outcome::Accepted(a) => State::Accepted(a),
                Outcome::Undone => State::Plain,
            };
        }
        self.release_parked(now, &key);
        self.finish(now);
    }

    /// Handles now, in place, everything parked for `link`: its work still out is done here
    /// (its result is ignored when it comes). The link is about to close, and what it delivered
    /// is handled while its binding (spec §2.3) stands, as it would have been without
    /// offloading.
    pub(super) fn settle_parked_link(&mut self, now: Timestamp, link: LinkId) {
        if self.parking.queues.is_empty() {
            return;
        }
        let keys: Vec<QueueKey> =
            self.parking.queues.keys().filter(|(_, l)| *l == link).cloned().collect();
        for key in keys {
            let Parking { queues, out, .. } = &mut self.parking;
            for parked in queues.get_mut(&key).into_iter().flatten() {
                if let State::Waiting(id) = parked.state {
                    out.remove(&id);
                    parked.state = State::Plain;
                }
            }
            self.release_parked(now, &key);
        }
    }

    /// Handles a queue's parked envelopes from the oldest, up to the first still waiting.
    fn release_parked(&mut self, now: Timestamp, key: &QueueKey) {
        let link = key.1;
        loop {
            let Some(queue) = self.parking.queues.get_mut(key) else { return };
            if queue.front().is_none_or(|p| matches!(p.state, State::Waiting(_))) {
                if queue.is_empty() {
                    self.parking.queues.remove(key);
                }
                return;
            }
            let Some(parked) = queue.pop_front() else { return };
            if queue.is_empty() {
                self.parking.queues.remove(key);
            }
            self.parking.count = self.parking.count.saturating_sub(1);
            self.parking.bytes = self.parking.bytes.saturating_sub(parked.bytes);
            if !self.links.contains_key(&link) {
                // Its link is gone (a close settles what waits first, so this is only a
                // safety net): what bound the link to an entity and a key (spec §2.3) is gone,
                // so it is not judged without it. Never acknowledged.
                self.stats.parked_dropped = self.stats.parked_dropped.saturating_add(1);
                continue;
            }
            // The work holds no clone once it has run; a driver that kept one costs a copy.
            let mut env = Arc::try_unwrap(parked.env).unwrap_or_else(|env| (*env).clone());
            let accepted = match parked.state {
                State::Verified(Some(key)) => {
                    env.mark_verified(key);
                    None
                }
                State::Accepted(a) => Some(a),
                State::Verified(None) | State::Plain | State::Waiting(_) => None,
            };
            self.handle_local(now, &Source::Link(link), env, accepted);
        }
    }

    /// Handles an envelope for this node by its class.
    fn handle_local(
        &mut self,
        now: Timestamp,
        source: &Source,
        env: Envelope,
        accepted: Option<Box<Accepted>>,
    ) {
        match env.message_type.class() {
            MessageClass::Handshake => self.on_handshake(now, source, env, accepted),
            MessageClass::Session => self.on_session(now, source, env),
            MessageClass::Signed => self.on_signed(now, source, env),
        }
    }

    /// The work worth handing out for `env` (`bytes` as received), if any: an INIT the node
    /// would answer, or the signature of a large enough envelope it would check with a key it
    /// can name now.
    fn want(&self, source: &Source, env: &Envelope, bytes: usize) -> Option<Want> {
        env.signature?;
        let sender = &env.sender_id;
        if env.message_type == MessageType::HandshakeInit {
            // An INIT that loses a simultaneous open is ignored, one that presents another
            // key than its link's is refused (`on_handshake`): no work for either.
            let loses = self.peers.get(sender).is_some_and(|p| p.initiator.is_some())
                && self.identity.id() < sender;
            if loses || self.presents_another_key(source, env) {
                return None;
            }
            return Responder::authorize(&self.trust, env).ok().map(Want::Accept);
        }
        if bytes < self.config.offload_verify_min_bytes {
            return None;
        }
        let peer = self.peers.get(sender);
        let key = self
            .trust
            .get(sender)
            .copied()
            .or_else(|| {
                let p = peer?;
                p.session
                    .as_ref()
                    .map(|s| *s.peer_key())
                    .or_else(|| p.initiator.as_ref().and_then(|i| i.peer_key().copied()))
                    .or_else(|| p.responder.as_ref().and_then(|r| r.peer_key().copied()))
            })
            .or_else(|| {
                // The open policy's first INIT_ACK: the key it presents, checked by the
                // handshake against its own signature.
                (env.message_type == MessageType::HandshakeInitAck)
                    .then(|| env.payload.value().get("identity_key")?.as_str().map(str::to_owned))
                    .flatten()
                    .and_then(|k| PublicKey::from_b64u(&k).ok())
            })?;
        Some(Want::Verify(key))
    }
}
