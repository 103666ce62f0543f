//! Fuzz target bodies (feature `fuzzing`).
//!
//! The `fuzz/` crate's cargo-fuzz targets are one-line wrappers around these functions, and
//! `tests/fuzz_corpus.rs` replays every seed and corpus file through them on stable Rust, so the
//! bodies are compiled and exercised by ordinary builds and never rot. Each body must never
//! panic on any input; where it can, it also checks a property (round trips, no mismatched keys,
//! nothing accepted twice) and panics when the property fails, which the fuzzer reports.

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use rand_core::{SeedableRng, TryCryptoRng, TryRng};

use crate::chunking::{Chunk, Reassembler, ReassemblyLimits};
use crate::envelope::Envelope;
use crate::handshake::{HandshakeConfig, HandshakeOutput, Initiator, Responder};
use crate::identity::{Identity, TrustPolicy, TrustStore};
use crate::ids::{EntityId, MessageId};
use crate::message_type::MessageType;
use crate::node::{HttpCall, LinkKind, Node, NodeConfig, Output, SendOptions};
use crate::session::Session;
use crate::time::Timestamp;
use crate::wire::Encoding;

const NOW: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

/// A deterministic RNG for fuzzing: a counter through SplitMix64, so every run replays exactly.
#[derive(Debug, Clone)]
pub struct FuzzRng(u64);

impl TryRng for FuzzRng {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((self.try_next_u64()? >> 32) as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(z ^ (z >> 31))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let v = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(v.get(..chunk.len()).unwrap_or_default());
        }
        Ok(())
    }
}

impl TryCryptoRng for FuzzRng {}

impl SeedableRng for FuzzRng {
    type Seed = [u8; 8];
    fn from_seed(seed: [u8; 8]) -> Self {
        Self(u64::from_le_bytes(seed))
    }
}

fn entity(name: &str) -> EntityId {
    EntityId::new(name).unwrap_or_else(|_| unreachable!("fixed ids are valid"))
}

fn identity(name: &str, byte: u8) -> Arc<Identity> {
    Arc::new(Identity::from_secret_bytes(entity(name), &[byte; 32]))
}

fn trust(ids: &[&Identity]) -> TrustStore {
    let mut t = TrustStore::new(TrustPolicy::Allowlist);
    for i in ids {
        t.insert(i.id().clone(), i.public_key());
    }
    t
}

/// Envelope decoding: never panics; whatever decodes re-encodes to bytes that decode to the same
/// envelope (the canonical form is a fixed point).
pub fn envelope(data: &[u8]) {
    if let Ok(env) = Envelope::decode(data, 1 << 16) {
        let wire = env.encode();
        let again = Envelope::decode(&wire, usize::MAX);
        assert!(again.as_ref().is_ok_and(|e| *e == env), "canonical form did not round-trip");
        let _ = (env.signing_input(), env.associated_data());
    }
}

/// Binary envelope decoding (`crate::binary_envelope`): never panics; whatever decodes
/// re-encodes to the very same bytes (one encoding per envelope), the routing header (`head`,
/// what a relay forwards on) gives the same routing members without the payload, and the
/// envelope crosses to JSON and back unchanged, as `wire::to_json` translates it (so a relay may
/// translate between the two encodings). The same bytes read as a binary HTTP body
/// (`crate::http_body`, spec §27.7) stay within it and frame again as they were read.
pub fn binary_envelope(data: &[u8]) {
    use crate::binary_envelope as bin;
    if let Ok(env) = bin::decode(data, 1 << 16) {
        assert!(bin::encode(&env) == data, "a decoded frame did not re-encode to itself");
        let to = env.recipient_id.as_ref().map(|r| r.as_str());
        assert!(bin::recipient(data) == to, "the routing header disagrees with the frame");
        let json = env.encode();
        let back = Envelope::decode(&json, usize::MAX);
        assert!(back.is_ok_and(|e| e == env), "binary -> JSON -> envelope changed it");
        let head = bin::head(data, 1 << 16);
        assert!(head.is_ok_and(|h| h == bin::Head::of(&env)), "the header alone disagrees");
        let translated = crate::wire::to_json(std::sync::Arc::from(data), usize::MAX);
        assert!(translated.is_ok_and(|t| *t == *json), "translation is not the JSON encoding");
    }
    // The header alone never panics either: it is what a relay reads of every binary frame.
    let _ = bin::head(data, 1 << 16);
    // Read as a binary HTTP body (spec §27.7): every envelope is a slice within it, at most one
    // error ends it, and the envelopes read frame a body again as they were.
    let max = usize::from(data.first().copied().unwrap_or(0)).saturating_mul(64);
    let mut good: Vec<&[u8]> = Vec::new();
    let mut ended = false;
    for r in crate::http_body::frames(data, crate::wire::Encoding::Binary, max) {
        assert!(!ended, "a framing error did not end the body");
        match r {
            Ok(frame) => {
                assert!(!frame.is_empty() && frame.len() <= max, "an envelope out of bounds");
                good.push(frame);
            }
            Err(crate::http_body::BodyError::FrameTooLarge { .. }) => {}
            Err(_) => ended = true,
        }
    }
    let again = crate::http_body::encode(good.iter().copied(), crate::wire::Encoding::Binary);
    let back: Vec<&[u8]> = crate::http_body::frames(&again, crate::wire::Encoding::Binary, max)
        .filter_map(Result::ok)
        .collect();
    assert!(back == good, "a body of the envelopes read did not read back");
}

/// One step of the handshake fuzzer.
#[derive(Debug, Arbitrary)]
enum HandshakeStep {
    /// Deliver the next genuine message.
    Deliver,
    /// Deliver the next message with one byte changed.
    Flip { at: u16, mask: u8 },
    /// Deliver these bytes instead (to whichever side is due).
    Inject(Vec<u8>),
    /// Deliver the previous message again.
    Replay,
    /// Let time pass.
    Wait(u16),
}

/// The handshake fed an arbitrary sequence of genuine, altered, injected and replayed messages:
/// never a panic, and never two established sessions whose keys differ.
pub fn handshake(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(steps) = Vec::<HandshakeStep>::arbitrary(&mut u) else { return };
    let alice = identity("alice", 1);
    let bob = identity("bob", 2);
    let trust = trust(&[&alice, &bob]);
    let mut rng = FuzzRng(7);
    let cfg = HandshakeConfig::default();
    let Ok((mut initiator, first)) =
        Initiator::start(Arc::clone(&alice), bob.id().clone(), &trust, cfg.clone(), NOW, &mut rng)
    else {
        return;
    };
    let mut responder: Option<Responder> = None;
    let (mut a_session, mut b_session): (Option<Box<Session>>, Option<Box<Session>>) = (None, None);
    let mut next: Option<(bool, Vec<u8>)> = Some((true, first.encode()));
    let mut last: Option<(bool, Vec<u8>)> = None;
    let mut now = NOW;
    for step in steps.into_iter().take(64) {
        let delivery = match step {
            HandshakeStep::Deliver => next.take(),
            HandshakeStep::Flip { at, mask } => next.take().map(|(to_b, mut bytes)| {
                let len = bytes.len().max(1);
                if let Some(b) = bytes.get_mut(usize::from(at) % len) {
                    *b ^= mask | 1;
                }
                (to_b, bytes)
            }),
            HandshakeStep::Inject(bytes) => Some((next.as_ref().is_none_or(|n| n.0), bytes)),
            HandshakeStep::Replay => last.clone(),
            HandshakeStep::Wait(ms) => {
                now = now.saturating_add(Duration::from_millis(u64::from(ms)));
                let _ = initiator.handle_timeout(now);
                if let Some(r) = responder.as_mut() {
                    let _ = r.handle_timeout(now);
                }
                None
            }
        };
        let Some((to_b, bytes)) = delivery else { continue };
        last = Some((to_b, bytes.clone()));
        let Ok(env) = Envelope::decode(&bytes, 1 << 20) else { continue };
        let out = if to_b {
            match responder.as_mut() {
                Some(r) => r.handle(&env, now, &mut rng),
                None => match Responder::accept(
                    Arc::clone(&bob),
                    &trust,
                    cfg.clone(),
                    &env,
                    now,
                    &mut rng,
                ) {
                    Ok((r, reply)) => {
                        responder = Some(r);
                        Ok(HandshakeOutput::Send(reply))
                    }
                    Err(e) => Err(e),
                },
            }
        } else {
            initiator.handle(&env, now, &mut rng)
        };
        match out {
            Ok(HandshakeOutput::Send(reply)) => next = Some((!to_b, reply.encode())),
            Ok(HandshakeOutput::Complete { send, session }) => {
                if to_b {
                    b_session = Some(session);
                } else {
                    a_session = Some(session);
                }
                next = send.map(|m| (!to_b, m.encode()));
            }
            Err(_) => {}
        }
    }
    if let (Some(mut a), Some(mut b)) = (a_session, b_session) {
        assert_eq!(
            a.handshake_hash(),
            b.handshake_hash(),
            "established with different transcripts"
        );
        let id = MessageId::new("probe").unwrap_or_else(|_| unreachable!("valid id"));
        if let Ok(m) = a.seal(MessageType::PeerMessage, id, b"probe", now) {
            assert!(b.open(&m, now).is_ok_and(|o| o.plaintext == b"probe"), "keys differ");
        }
    }
}

/// Establishes a session pair between alice and bob with fixed keys.
fn session_pair() -> Option<(Session, Session)> {
    let alice = identity("alice", 1);
    let bob = identity("bob", 2);
    let trust = trust(&[&alice, &bob]);
    let mut rng = FuzzRng(11);
    let cfg = HandshakeConfig::default();
    let (mut i, m1) =
        Initiator::start(alice, bob.id().clone(), &trust, cfg.clone(), NOW, &mut rng).ok()?;
    let (mut r, mut msg) = Responder::accept(bob, &trust, cfg, &m1, NOW, &mut rng).ok()?;
    let mut to_initiator = true;
    let (mut a, mut b) = (None, None);
    for _ in 0..6 {
        let out = if to_initiator {
            i.handle(&msg, NOW, &mut rng)
        } else {
            r.handle(&msg, NOW, &mut rng)
        };
        match out.ok()? {
            HandshakeOutput::Send(m) => msg = m,
            HandshakeOutput::Complete { send, session } => {
                if to_initiator {
                    a = Some(*session);
                } else {
                    b = Some(*session);
                }
                match send {
                    Some(m) => msg = m,
                    None => break,
                }
            }
        }
        to_initiator = !to_initiator;
    }
    Some((a?, b?))
}

/// One step of the session fuzzer.
#[derive(Debug, Arbitrary)]
enum SessionStep {
    /// Seal a message and deliver it as is.
    Genuine(Vec<u8>),
    /// Seal a message and deliver it with one byte of its wire form changed.
    Flip(Vec<u8>, u16, u8),
    /// Deliver an earlier genuine message again.
    Replay(u8),
    /// Deliver arbitrary bytes.
    Raw(Vec<u8>),
}

/// Session decryption and the replay window: genuine messages open once, to what was sealed;
/// replays, flips and raw bytes never open to anything else.
pub fn session(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(steps) = Vec::<SessionStep>::arbitrary(&mut u) else { return };
    let Some((mut a, mut b)) = session_pair() else { return };
    let mut sent: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (n, step) in steps.into_iter().take(128).enumerate() {
        let id = MessageId::new(format!("m{n}")).unwrap_or_else(|_| unreachable!("valid id"));
        match step {
            SessionStep::Genuine(plain) => {
                let Ok(env) = a.seal(MessageType::PeerMessage, id, &plain, NOW) else { continue };
                let wire = env.encode();
                let opened =
                    Envelope::decode(&wire, 1 << 20).ok().and_then(|e| b.open(&e, NOW).ok());
                assert!(
                    opened.is_some_and(|o| o.plaintext == plain),
                    "a genuine message did not open"
                );
                sent.push((wire, plain));
            }
            SessionStep::Flip(plain, at, mask) => {
                let Ok(env) = a.seal(MessageType::PeerMessage, id, &plain, NOW) else { continue };
                let mut wire = env.encode();
                let len = wire.len().max(1);
                if let Some(byte) = wire.get_mut(usize::from(at) % len) {
                    *byte ^= mask | 1;
                }
                if let Ok(altered) = Envelope::decode(&wire, 1 << 20)
                    && altered != env
                {
                    assert!(b.open(&altered, NOW).is_err(), "an altered message opened");
                }
            }
            SessionStep::Replay(k) => {
                if let Some((wire, _)) = sent.get(usize::from(k) % sent.len().max(1))
                    && let Ok(env) = Envelope::decode(wire, 1 << 20)
                {
                    assert!(b.open(&env, NOW).is_err(), "a replay was accepted");
                }
            }
            SessionStep::Raw(bytes) => {
                if let Ok(env) = Envelope::decode(&bytes, 1 << 20) {
                    let _ = b.open(&env, NOW);
                }
            }
        }
    }
}

/// One chunk as the fuzzer describes it.
#[derive(Debug, Arbitrary)]
struct FuzzChunk {
    id: u8,
    seq: u16,
    last: bool,
    total: u16,
    data: Vec<u8>,
    advance_ms: u16,
}

/// Chunk reassembly fed arbitrary chunks: never panics and never holds more than its bounds.
pub fn reassembly(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(chunks) = Vec::<FuzzChunk>::arbitrary(&mut u) else { return };
    let limits = ReassemblyLimits {
        max_message_bytes: 4096,
        max_partials: 3,
        max_chunks: 64,
        max_age: Duration::from_secs(5),
    };
    let mut r = Reassembler::new(limits);
    let mut now = NOW;
    for c in chunks.into_iter().take(256) {
        now = now.saturating_add(Duration::from_millis(u64::from(c.advance_ms)));
        let id =
            MessageId::new(format!("c{}", c.id % 5)).unwrap_or_else(|_| unreachable!("valid id"));
        let chunk = Chunk {
            chunk_id: id,
            sequence_number: u32::from(c.seq),
            is_last: c.last,
            total_len: u64::from(c.total),
            data: c.data,
        };
        let total = chunk.total_len;
        if let Ok(Some(message)) = r.insert(chunk, now) {
            assert_eq!(
                u64::try_from(message.len()).ok(),
                Some(total),
                "completed with a wrong length"
            );
        }
        assert!(r.partials() <= 3 && r.held_bytes() <= 3 * 4096, "reassembly exceeded its bounds");
    }
}

/// One input to a relay node.
#[derive(Debug, Arbitrary)]
enum NodeInput {
    Accept(u8, bool),
    Frame(u8, Vec<u8>),
    Close(u8),
    Post(u8, Vec<u8>),
    Poll(u8),
    Advance(u16),
    Send(u8, Vec<u8>),
    /// From now on, answers to HTTP calls are (or are no longer) lost and handed back.
    LoseAnswers(bool),
    /// An arbitrary body handed back as a lost answer to an entity.
    Lost(u8, Vec<u8>),
}

/// A relay node fed arbitrary link events, frames and HTTP calls: never panics, and its mailboxes
/// and links stay within their bounds.
pub fn node(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(inputs) = Vec::<NodeInput>::arbitrary(&mut u) else { return };
    let names = ["alice", "bob", "carol"];
    let ids: Vec<Arc<Identity>> = names.iter().zip(1u8..).map(|(n, b)| identity(n, b)).collect();
    let relay = Identity::from_secret_bytes(entity("relay"), &[9; 32]);
    let mut store = trust(&ids.iter().map(|i| i.as_ref()).collect::<Vec<_>>());
    store.insert(relay.id().clone(), relay.public_key());
    let config = NodeConfig {
        mailbox_messages: 4,
        mailbox_bytes: 4096,
        max_links: 4,
        ..NodeConfig::default()
    };
    let Ok(mut node) = Node::new(config, relay, store, FuzzRng(3)) else { return };
    let mut links = Vec::new();
    let mut now = NOW;
    let mut callers = std::collections::BTreeMap::new();
    let mut losing = false;
    for input in inputs.into_iter().take(128) {
        let pick = |n: u8| names.get(usize::from(n) % names.len()).map(|s| entity(s));
        match input {
            NodeInput::Accept(n, events) => {
                let kind = if events { LinkKind::Events } else { LinkKind::Peers };
                // Odd names' links agree on the binary envelope, even ones' on JSON alone.
                let encoding = if n % 2 == 1 { Encoding::Binary } else { Encoding::Json };
                if let Some(e) = pick(n)
                    && let Ok(l) = node.accept_link(now, kind, e, encoding)
                {
                    links.push(l);
                }
            }
            NodeInput::Frame(n, bytes) => {
                if let Some(l) = links.get(usize::from(n) % links.len().max(1)) {
                    node.handle_frame(now, *l, &bytes);
                }
            }
            NodeInput::Close(n) => {
                if let Some(l) = links.get(usize::from(n) % links.len().max(1)) {
                    node.link_closed(now, *l);
                }
            }
            NodeInput::Post(n, body) => {
                if let Some(e) = pick(n) {
                    // Odd names post binary bodies and accept binary answers, even ones NDJSON.
                    let call = if n % 2 == 1 {
                        HttpCall::PostMessages {
                            body,
                            encoding: Encoding::Binary,
                            accept_binary: true,
                        }
                    } else {
                        HttpCall::post(body)
                    };
                    callers.insert(node.handle_http_request(now, e.clone(), call), e);
                }
            }
            NodeInput::Poll(n) => {
                if let Some(e) = pick(n) {
                    // The caller's wait: none, zero, or up to 25.5 s (past the node's own).
                    let wait = (n % 3 != 0).then(|| Duration::from_millis(u64::from(n) * 100));
                    let call = HttpCall::Poll { wait, accept_binary: n % 2 == 1 };
                    callers.insert(node.handle_http_request(now, e.clone(), call), e);
                }
            }
            NodeInput::Advance(ms) => {
                now = now.saturating_add(Duration::from_millis(u64::from(ms) * 37));
                node.handle_timeout(now);
            }
            NodeInput::Send(n, payload) => {
                if let Some(e) = pick(n) {
                    let _ = node.send(now, &e, payload, SendOptions::default());
                }
            }
            NodeInput::LoseAnswers(on) => losing = on,
            NodeInput::Lost(n, body) => {
                if let Some(e) = pick(n) {
                    let encoding = if n % 2 == 1 { Encoding::Binary } else { Encoding::Json };
                    node.http_answer_lost(now, &e, &body, encoding);
                }
            }
        }
        while let Some(out) = node.poll_output() {
            if let Output::HttpRespond { request, body, encoding, .. } = out
                && let Some(e) = callers.remove(&request)
                && losing
            {
                node.http_answer_lost(now, &e, &body, encoding);
            }
        }
        assert!(node.mailbox_bytes() <= 4 * 4096 && node.link_count() <= 8, "a bound was exceeded");
    }
}

/// The parsing a node's HTTP server does before the core sees anything: query parameters,
/// JSON bodies of the auth endpoints, bearer headers, tokens, and endpoint URLs. Never a panic;
/// a token that checks names the entity it was minted for.
pub fn endpoints(data: &[u8]) {
    use crate::auth::{AuthConfig, Authority, bearer_token};
    use crate::endpoints::{
        ChallengeBody, MAX_AUTH_BODY, TokenBody, VerifyBody, base_url_of, parse_body, query_param,
    };

    let text = String::from_utf8_lossy(data);
    for name in ["token", "session_id", "wait_ms", "entity_id", "pubkey", ""] {
        let _ = query_param(&text, name);
    }
    let _ = base_url_of(&text);
    let _ = bearer_token(&text);
    let _ = parse_body::<VerifyBody>(data, MAX_AUTH_BODY);
    let _ = parse_body::<ChallengeBody>(data, MAX_AUTH_BODY);
    let _ = parse_body::<TokenBody>(data, MAX_AUTH_BODY);
    let node = identity("node", 9);
    let authority = Authority::new(Arc::clone(&node), AuthConfig::default());
    let now = Timestamp::from_unix_millis(1_700_000_000_000);
    if let Ok(subject) = authority.check(&text, None, now) {
        // Only the node's key can make a token that checks; no input here can forge one.
        unreachable!("forged token accepted for {subject}");
    }
    let genuine = authority.mint(&entity("alice"), now);
    assert_eq!(authority.check(&genuine, None, now).ok(), Some(entity("alice")));
}
