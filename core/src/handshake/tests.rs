//! Handshake tests: happy path, trust decisions, timeouts, and proptest fault injection.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::capabilities::Capabilities;
use crate::error::{ErrorCode, UsageError};
use crate::identity::{Identity, TrustPolicy, TrustStore};
use crate::ids::MessageId;
use crate::signed::error_message;

pub(crate) const T0: Timestamp = Timestamp::from_unix_millis(1_700_000_000_000);

pub(crate) struct Parties {
    pub alice: Arc<Identity>,
    pub bob: Arc<Identity>,
    pub trust: TrustStore,
}

pub(crate) fn parties(seed: u64) -> Parties {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xA11CE);
    let alice = Arc::new(Identity::generate(EntityId::new("alice").unwrap(), &mut rng));
    let bob = Arc::new(Identity::generate(EntityId::new("bob").unwrap(), &mut rng));
    let mut trust = TrustStore::new(TrustPolicy::Allowlist);
    trust.insert(alice.id().clone(), alice.public_key());
    trust.insert(bob.id().clone(), bob.public_key());
    Parties { alice, bob, trust }
}

/// Runs a whole handshake between alice (initiator) and bob; returns both sessions and the six
/// messages.
pub(crate) fn establish(seed: u64) -> (Session, Session, Vec<Envelope>) {
    let p = parties(seed);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let cfg = HandshakeConfig::default();
    let (mut i, m1) =
        Initiator::start(p.alice, p.bob.id().clone(), &p.trust, cfg.clone(), T0, &mut rng).unwrap();
    let (mut r, m2) = Responder::accept(p.bob, &p.trust, cfg, &m1, T0, &mut rng).unwrap();
    let HandshakeOutput::Send(m3) = i.handle(&m2, T0, &mut rng).unwrap() else { panic!("m3") };
    let HandshakeOutput::Send(m4) = r.handle(&m3, T0, &mut rng).unwrap() else { panic!("m4") };
    let HandshakeOutput::Send(m5) = i.handle(&m4, T0, &mut rng).unwrap() else { panic!("m5") };
    let HandshakeOutput::Complete { send: Some(m6), session: rs } =
        r.handle(&m5, T0, &mut rng).unwrap()
    else {
        panic!("m6")
    };
    let HandshakeOutput::Complete { send: None, session: is } =
        i.handle(&m6, T0, &mut rng).unwrap()
    else {
        panic!("complete")
    };
    (*is, *rs, vec![m1, m2, m3, m4, m5, m6])
}

/// Whether two sessions hold matching keys: each opens what the other seals.
pub(crate) fn sessions_match(a: &mut Session, b: &mut Session) -> bool {
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let m = a.seal(MessageType::PeerMessage, MessageId::random(&mut rng), b"ping", T0).unwrap();
    let n = b.seal(MessageType::PeerMessage, MessageId::random(&mut rng), b"pong", T0).unwrap();
    a.handshake_hash() == b.handshake_hash()
        && b.open(&m, T0).is_ok_and(|o| o.plaintext == b"ping")
        && a.open(&n, T0).is_ok_and(|o| o.plaintext == b"pong")
}

#[test]
fn handshake_completes_with_matching_keys() {
    let (mut a, mut b, msgs) = establish(1);
    assert!(sessions_match(&mut a, &mut b));
    assert_eq!(a.id(), b.id());
    assert_eq!(a.capabilities(), b.capabilities());
    assert_eq!(a.peer().as_str(), "bob");
    assert_eq!(b.peer().as_str(), "alice");
    let types: Vec<_> = msgs.iter().map(|m| (m.message_type, m.seq)).collect();
    assert_eq!(
        types,
        vec![
            (MessageType::HandshakeInit, 1),
            (MessageType::HandshakeInitAck, 2),
            (MessageType::ChallengeResponse, 3),
            (MessageType::SessionEstablished, 4),
            (MessageType::SessionConfirm, 5),
            (MessageType::Ready, 6),
        ]
    );
    assert!(msgs.iter().all(|m| m.signature.is_some()));
    assert!(
        msgs[0].session_id.is_none()
            && msgs[1..].iter().all(|m| m.session_id.as_ref() == Some(a.id()))
    );
}

#[test]
fn same_seed_same_bytes() {
    let (_, _, one) = establish(5);
    let (_, _, two) = establish(5);
    let (_, _, other) = establish(6);
    let bytes = |v: &[Envelope]| v.iter().map(Envelope::encode).collect::<Vec<_>>();
    assert_eq!(bytes(&one), bytes(&two));
    assert_ne!(bytes(&one), bytes(&other));
}

#[test]
fn untrusted_or_impersonating_initiators_are_refused() {
    let p = parties(2);
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mallory = Arc::new(Identity::generate(EntityId::new("mallory").unwrap(), &mut rng));
    let mut open = TrustStore::new(TrustPolicy::Open);
    open.insert(p.bob.id().clone(), p.bob.public_key());
    let (_, m1) = Initiator::start(
        mallory.clone(),
        p.bob.id().clone(),
        &open,
        HandshakeConfig::default(),
        T0,
        &mut rng,
    )
    .unwrap();
    let err =
        Responder::accept(p.bob.clone(), &p.trust, HandshakeConfig::default(), &m1, T0, &mut rng)
            .unwrap_err();
    assert_eq!(err, ProtocolError::UntrustedIdentity(mallory.id().clone()));
    assert_eq!(err.code(), ErrorCode::AuthenticationFailed);
    // Under an open policy, the unknown initiator is accepted with the key it presents.
    assert!(
        Responder::accept(p.bob.clone(), &open, HandshakeConfig::default(), &m1, T0, &mut rng)
            .is_ok()
    );

    // A different key claiming to be alice is refused even under an open policy.
    let fake_alice = Arc::new(Identity::generate(p.alice.id().clone(), &mut rng));
    let (_, m1) = Initiator::start(
        fake_alice,
        p.bob.id().clone(),
        &open,
        HandshakeConfig::default(),
        T0,
        &mut rng,
    )
    .unwrap();
    let mut open_with_alice = open.clone();
    open_with_alice.insert(p.alice.id().clone(), p.alice.public_key());
    let err = Responder::accept(
        p.bob.clone(),
        &open_with_alice,
        HandshakeConfig::default(),
        &m1,
        T0,
        &mut rng,
    )
    .unwrap_err();
    assert_eq!(err, ProtocolError::IdentityKeyMismatch(p.alice.id().clone()));

    // Dialling an entity outside an allowlist is refused locally.
    let empty = TrustStore::new(TrustPolicy::Allowlist);
    let err = Initiator::start(
        p.alice.clone(),
        p.bob.id().clone(),
        &empty,
        HandshakeConfig::default(),
        T0,
        &mut rng,
    )
    .unwrap_err();
    assert_eq!(err, UsageError::UntrustedPeer(p.bob.id().clone()));
}

#[test]
fn initiator_refuses_an_impostor_responder() {
    let p = parties(3);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let fake_bob = Arc::new(Identity::generate(p.bob.id().clone(), &mut rng));
    let mut lax = TrustStore::new(TrustPolicy::Open);
    lax.insert(p.alice.id().clone(), p.alice.public_key());
    let (mut i, m1) = Initiator::start(
        p.alice.clone(),
        p.bob.id().clone(),
        &p.trust,
        HandshakeConfig::default(),
        T0,
        &mut rng,
    )
    .unwrap();
    let (_, m2) =
        Responder::accept(fake_bob, &lax, HandshakeConfig::default(), &m1, T0, &mut rng).unwrap();
    // The pinned key does not verify the impostor's signature.
    let err = i.handle(&m2, T0, &mut rng).unwrap_err();
    assert_eq!(err, ProtocolError::BadSignature);
    assert_eq!(err.code(), ErrorCode::AuthenticationFailed);
    assert!(i.is_ended());
    assert_eq!(i.handle(&m2, T0, &mut rng).unwrap_err(), ProtocolError::HandshakeEnded);
}

#[test]
fn handshake_times_out() {
    let p = parties(4);
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let cfg = HandshakeConfig::default();
    let (mut i, m1) =
        Initiator::start(p.alice.clone(), p.bob.id().clone(), &p.trust, cfg.clone(), T0, &mut rng)
            .unwrap();
    let deadline = T0.saturating_add(Duration::from_secs(5));
    assert_eq!(i.poll_timeout(), Some(deadline));
    assert!(i.handle_timeout(deadline.saturating_sub(Duration::from_millis(1))).is_ok());
    let (mut r, m2) = Responder::accept(p.bob.clone(), &p.trust, cfg, &m1, T0, &mut rng).unwrap();
    // The initiator receives step 2 too late.
    assert_eq!(i.handle(&m2, deadline, &mut rng).unwrap_err(), ProtocolError::HandshakeTimeout);
    assert_eq!(i.poll_timeout(), None);
    assert_eq!(r.handle_timeout(deadline).unwrap_err().code(), ErrorCode::Timeout);
    assert!(r.is_ended());
}

#[test]
fn a_peer_error_ends_the_handshake() {
    let p = parties(5);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (mut i, m1) = Initiator::start(
        p.alice.clone(),
        p.bob.id().clone(),
        &p.trust,
        HandshakeConfig::default(),
        T0,
        &mut rng,
    )
    .unwrap();
    let err = error_message(
        &p.bob,
        Some(p.alice.id().clone()),
        None,
        ErrorCode::UnsupportedVersion,
        Some(m1.message_id.clone()),
        T0,
        &mut rng,
    );
    assert_eq!(
        i.handle(&err, T0, &mut rng).unwrap_err(),
        ProtocolError::PeerReported { code: ErrorCode::UnsupportedVersion }
    );
    // A forged ERROR (not signed by bob) is an authentication failure instead.
    let (mut i, _) = Initiator::start(
        p.alice.clone(),
        p.bob.id().clone(),
        &p.trust,
        HandshakeConfig::default(),
        T0,
        &mut rng,
    )
    .unwrap();
    let forged = error_message(
        &p.alice,
        Some(p.alice.id().clone()),
        None,
        ErrorCode::Timeout,
        None,
        T0,
        &mut rng,
    );
    assert_eq!(i.handle(&forged, T0, &mut rng).unwrap_err(), ProtocolError::BadSignature);
}

#[test]
fn no_common_version_is_refused() {
    let p = parties(6);
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let (_, mut m1) = Initiator::start(
        p.alice.clone(),
        p.bob.id().clone(),
        &p.trust,
        HandshakeConfig::default(),
        T0,
        &mut rng,
    )
    .unwrap();
    let mut value = m1.payload.value().clone();
    value["versions"] = serde_json::json!(["9.0"]);
    m1.payload = crate::envelope::Payload::new(value).unwrap();
    m1.sign(&p.alice);
    let err =
        Responder::accept(p.bob.clone(), &p.trust, HandshakeConfig::default(), &m1, T0, &mut rng)
            .unwrap_err();
    assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
}

#[test]
fn capabilities_are_negotiated_inside_the_handshake() {
    let p = parties(7);
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let legacy = Capabilities {
        transports: [crate::capabilities::Transport::Http].into_iter().collect(),
        sign_all: false,
        ..Capabilities::default()
    };
    let lax = HandshakeConfig::new(
        crate::limits::Limits::default(),
        Capabilities { sign_all: false, ..Capabilities::default() },
    )
    .unwrap();
    let http_only = HandshakeConfig::new(crate::limits::Limits::default(), legacy).unwrap();
    let (mut i, m1) =
        Initiator::start(p.alice.clone(), p.bob.id().clone(), &p.trust, lax, T0, &mut rng).unwrap();
    let (mut r, m2) =
        Responder::accept(p.bob.clone(), &p.trust, http_only, &m1, T0, &mut rng).unwrap();
    let HandshakeOutput::Send(m3) = i.handle(&m2, T0, &mut rng).unwrap() else { panic!() };
    let HandshakeOutput::Send(m4) = r.handle(&m3, T0, &mut rng).unwrap() else { panic!() };
    let HandshakeOutput::Send(m5) = i.handle(&m4, T0, &mut rng).unwrap() else { panic!() };
    let HandshakeOutput::Complete { send: Some(m6), session: mut rs } =
        r.handle(&m5, T0, &mut rng).unwrap()
    else {
        panic!()
    };
    let HandshakeOutput::Complete { session: mut is, .. } = i.handle(&m6, T0, &mut rng).unwrap()
    else {
        panic!()
    };
    assert_eq!(is.capabilities(), rs.capabilities());
    assert!(!is.capabilities().sign_all);
    assert!(!is.capabilities().transports.contains(&crate::capabilities::Transport::WebSocket));
    assert!(sessions_match(&mut is, &mut rs));
}

/// A fault injected into the message stream at one step.
#[derive(Debug, Clone)]
enum Fault {
    /// XOR one byte of the wire form with a non-zero mask.
    Tamper { index: prop::sample::Index, mask: u8 },
    /// Never deliver the message; time runs out.
    Drop,
    /// Deliver the message twice.
    Duplicate,
    /// Deliver an earlier message of the same direction instead.
    Reorder { back: prop::sample::Index },
    /// Deliver the same step of another handshake between the same parties.
    Splice,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(index, mask)| Fault::Tamper { index, mask }),
        1 => Just(Fault::Drop),
        1 => Just(Fault::Duplicate),
        1 => any::<prop::sample::Index>().prop_map(|back| Fault::Reorder { back }),
        1 => Just(Fault::Splice),
    ]
}

enum Side {
    I(Initiator),
    R(Option<Responder>),
}

/// Drives a handshake, injecting `fault` into message `at` (1-based). Returns the sessions each side
/// ended with and whether the fault changed what was delivered.
fn run_with_fault(seed: u64, at: usize, fault: &Fault) -> (Option<Session>, Option<Session>, bool) {
    let p = parties(seed);
    let (_, _, other_run) = establish(seed.wrapping_add(1_000_003));
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let cfg = HandshakeConfig::default();
    let (init, m1) =
        Initiator::start(p.alice, p.bob.id().clone(), &p.trust, cfg.clone(), T0, &mut rng).unwrap();
    let mut sides = [Side::I(init), Side::R(None)];
    let (mut i_session, mut r_session) = (None, None);
    let mut sent: Vec<Envelope> = Vec::new();
    let mut next = Some(m1);
    let mut altered = false;
    let mut now = T0;
    while let Some(genuine) = next.take() {
        sent.push(genuine.clone());
        let step = sent.len();
        let to_responder = step % 2 == 1;
        let mut deliveries: Vec<Envelope> = vec![genuine.clone()];
        if step == at {
            match fault {
                Fault::Tamper { index, mask } => {
                    let mut bytes = genuine.encode();
                    let i = index.index(bytes.len());
                    bytes[i] ^= mask;
                    match Envelope::decode(&bytes, 1 << 20) {
                        Ok(env) => {
                            altered |= env != genuine;
                            deliveries = vec![env];
                        }
                        Err(e) => {
                            // The receiver rejects the frame before its state machine sees it;
                            // the handshake then stalls until its deadline.
                            assert!(matches!(
                                e.code(),
                                ErrorCode::InvalidMessage
                                    | ErrorCode::UnsupportedVersion
                                    | ErrorCode::MessageTooLarge
                            ));
                            altered = true;
                            deliveries = vec![];
                        }
                    }
                }
                Fault::Drop => {
                    altered = true;
                    deliveries = vec![];
                }
                Fault::Duplicate => deliveries.push(genuine.clone()),
                Fault::Reorder { back } => {
                    let same_dir: Vec<&Envelope> = sent.iter().rev().skip(1).step_by(2).collect();
                    if let Some(old) = same_dir.get(back.index(same_dir.len().max(1))) {
                        altered = true;
                        deliveries = vec![(*old).clone()];
                    }
                }
                Fault::Splice => {
                    altered = true;
                    deliveries = vec![other_run[step - 1].clone()];
                }
            }
        }
        if deliveries.is_empty() {
            now = now.saturating_add(Duration::from_secs(6));
            for side in &mut sides {
                let r = match side {
                    Side::I(i) => i.handle_timeout(now),
                    Side::R(Some(r)) => r.handle_timeout(now),
                    Side::R(None) => Ok(()),
                };
                if let Err(e) = r {
                    assert_eq!(e, ProtocolError::HandshakeTimeout);
                }
            }
            break;
        }
        for env in deliveries {
            let target = if to_responder { &mut sides[1] } else { &mut sides[0] };
            let result = match target {
                Side::I(i) => i.handle(&env, now, &mut rng),
                Side::R(slot @ None) => {
                    match Responder::accept(
                        Arc::clone(&p.bob),
                        &p.trust,
                        cfg.clone(),
                        &env,
                        now,
                        &mut rng,
                    ) {
                        Ok((r, m2)) => {
                            *slot = Some(r);
                            Ok(HandshakeOutput::Send(m2))
                        }
                        Err(e) => Err(e),
                    }
                }
                Side::R(Some(r)) => r.handle(&env, now, &mut rng),
            };
            match result {
                Ok(HandshakeOutput::Send(m)) => {
                    if next.is_none() {
                        next = Some(m);
                    }
                }
                Ok(HandshakeOutput::Complete { send, session }) => {
                    if to_responder {
                        r_session = Some(*session);
                    } else {
                        i_session = Some(*session);
                    }
                    if next.is_none() {
                        next = send;
                    }
                }
                Err(_) => {
                    // A failed machine refuses everything afterwards.
                    let again = match target {
                        Side::I(i) => i.handle(&env, now, &mut rng).err(),
                        Side::R(Some(r)) => r.handle(&env, now, &mut rng).err(),
                        Side::R(None) => Some(ProtocolError::HandshakeEnded),
                    };
                    assert!(again.is_some());
                }
            }
        }
    }
    (i_session, r_session, altered)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// For arbitrary seeds the handshake completes and both sides hold the same keys.
    #[test]
    fn any_seed_establishes_matching_sessions(seed in any::<u64>()) {
        let (mut a, mut b, _) = establish(seed);
        prop_assert!(sessions_match(&mut a, &mut b));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any tamper, drop, duplicate, reorder or splice of any handshake message ends the handshake
    /// cleanly: never a panic, never two sessions with different keys, and when the delivered
    /// content really changed, never two established sessions at all.
    #[test]
    fn faults_never_yield_mismatched_sessions(seed in 0u64..1000, at in 1usize..=6, fault in fault()) {
        let (i, r, altered) = run_with_fault(seed, at, &fault);
        match (i, r) {
            (Some(mut a), Some(mut b)) => {
                prop_assert!(!altered, "both sides established despite {:?} at step {}", fault, at);
                prop_assert!(sessions_match(&mut a, &mut b));
            }
            (None, None) | (Some(_), None) | (None, Some(_)) => {
                // A duplicate of the last message arrives after completion and is refused; every
                // other fault must leave at least one side without a session.
                let duplicate = matches!(fault, Fault::Duplicate);
                prop_assert!(altered || duplicate, "no session without a fault: {:?} at {}", fault, at);
            }
        }
    }
}
