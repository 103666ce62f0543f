//! The protocol's CPU floor on this machine, measured in the same run: the public-key operations
//! and the core's own work for one handshake and one session message, on one thread, with no
//! I/O. Dividing the CPUs by these costs gives the ceilings no driver can beat (the report prints
//! them next to the targets they bound).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use peerlink_core::{
    Capabilities, EntityId, Envelope, HandshakeConfig, HandshakeOutput, Identity, Initiator,
    Limits, MessageId, MessageType, Responder, Session, Timestamp, TrustPolicy, TrustStore,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;

use crate::BoxError;

/// Costs of single operations, µs of one thread each.
#[derive(Debug, Clone, Copy, Default)]
pub struct Floor {
    /// One Ed25519 signature over a 300-byte message.
    pub sign_us: f64,
    /// One strict Ed25519 verification of it (spec §3).
    pub verify_us: f64,
    /// The 6-step handshake, both sides (every signature, verification, key pair and DH, and
    /// the JSON of its six messages), no I/O.
    pub handshake_us: f64,
    /// One 64 B message sealed, encoded, decoded and opened (sign_all off).
    pub message_us: f64,
    /// The same with sign_all on.
    pub signed_message_us: f64,
}

const NOW: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

/// Runs `f` repeatedly for about `budget` and returns the best of three rounds, µs per call.
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    let mut n = 1u32;
    // Find a batch size that takes about a third of the budget.
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        if t.elapsed() * 3 >= budget || n >= 1 << 20 {
            break;
        }
        n = n.saturating_mul(2);
    }
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / f64::from(n));
    }
    best
}

fn identity(name: &str, byte: u8) -> Result<Arc<Identity>, BoxError> {
    Ok(Arc::new(Identity::from_secret_bytes(EntityId::new(name)?, &[byte; 32])))
}

/// Runs one full handshake between two fresh state machines; the messages cross as bytes.
fn handshake(
    alice: &Arc<Identity>,
    bob: &Arc<Identity>,
    trust: &TrustStore,
    cfg: &HandshakeConfig,
    rng: &mut ChaCha20Rng,
) -> Result<(Session, Session), BoxError> {
    let wire = |env: &Envelope| Envelope::decode(&env.encode(), 1 << 20);
    let (mut i, m1) =
        Initiator::start(alice.clone(), bob.id().clone(), trust, cfg.clone(), NOW, rng)?;
    let (mut r, mut msg) =
        Responder::accept(bob.clone(), trust, cfg.clone(), &wire(&m1)?, NOW, rng)?;
    let (mut a, mut b) = (None, None);
    for step in 0..6 {
        let to_initiator = step % 2 == 0;
        let msg_in = wire(&msg)?;
        let out =
            if to_initiator { i.handle(&msg_in, NOW, rng)? } else { r.handle(&msg_in, NOW, rng)? };
        match out {
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
    }
    match (a, b) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err("the handshake did not complete".into()),
    }
}

/// µs per 64 B message through a session pair: seal, encode, decode, open.
fn message_cost((mut a, mut b): (Session, Session), budget: Duration) -> Result<f64, BoxError> {
    let payload = [7u8; 64];
    let id = MessageId::new("m")?;
    let mut failed = false;
    let us = time_per_call(budget, || {
        let ok = a
            .seal(MessageType::PeerMessage, id.clone(), &payload, NOW)
            .ok()
            .and_then(|env| Envelope::decode(&env.encode(), 1 << 20).ok())
            .and_then(|env| b.open(&env, NOW).ok())
            .is_some_and(|o| o.plaintext.len() == payload.len());
        failed |= !ok;
    });
    if failed {
        return Err("a session message did not open".into());
    }
    Ok(us)
}

/// Measures the floor; `budget` is the time each operation is measured for.
pub fn measure(budget: Duration) -> Result<Floor, BoxError> {
    let (alice, bob) = (identity("alice", 1)?, identity("bob", 2)?);
    let mut trust = TrustStore::new(TrustPolicy::Allowlist);
    for i in [&alice, &bob] {
        trust.insert(i.id().clone(), i.public_key());
    }
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let msg = [0x5au8; 300];
    let sig = alice.sign(&msg);
    let key = alice.public_key();
    let sign_us = time_per_call(budget, || {
        black_box(alice.sign(black_box(&msg)));
    });
    let mut bad = false;
    let verify_us = time_per_call(budget, || {
        bad |= key.verify(black_box(&msg), &sig).is_err();
    });
    if bad {
        return Err("a genuine signature did not verify".into());
    }
    let limits = Limits::default();
    let signed = HandshakeConfig::new(limits.clone(), Capabilities::default())?;
    let unsigned =
        HandshakeConfig::new(limits, Capabilities { sign_all: false, ..Capabilities::default() })?;
    let mut failed = false;
    let handshake_us = time_per_call(budget, || {
        failed |= handshake(&alice, &bob, &trust, &signed, &mut rng).is_err();
    });
    if failed {
        return Err("the in-memory handshake failed".into());
    }
    let message_us = message_cost(handshake(&alice, &bob, &trust, &unsigned, &mut rng)?, budget)?;
    let signed_message_us =
        message_cost(handshake(&alice, &bob, &trust, &signed, &mut rng)?, budget)?;
    Ok(Floor { sign_us, verify_us, handshake_us, message_us, signed_message_us })
}
