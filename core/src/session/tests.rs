//! Session tests: round trips, tampering, replay, skew, sign_all.

use crate::encoding::b64u;
use std::time::Duration;

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use super::*;
use crate::error::ErrorCode;
use crate::handshake::tests::{T0, establish};
use crate::replay::ReplayRejection;

fn mid(n: u64) -> MessageId {
    MessageId::new(format!("m{n}")).unwrap()
}

#[test]
fn seal_open_round_trip_and_sequence() {
    let (mut a, mut b, _) = establish(11);
    for n in 1..=3u64 {
        let env =
            a.seal(MessageType::PeerMessage, mid(n), format!("hello {n}").as_bytes(), T0).unwrap();
        assert_eq!(env.seq, n);
        assert_eq!(env.nonce, nonce_for(n));
        assert_eq!(env.encode().len(), frame_len(env.associated_data().len(), 7 + TAG_LEN, true));
        let opened = b.open(&env, T0).unwrap();
        assert_eq!(opened.plaintext, format!("hello {n}").as_bytes());
        assert_eq!(opened.message_id, mid(n));
        assert_eq!(opened.seq, n);
    }
    assert_eq!(a.last_sent_seq(), 3);
    assert_eq!(b.highest_received_seq(), 3);
}

#[test]
fn replays_and_old_messages_are_refused() {
    let (mut a, mut b, _) = establish(12);
    let first = a.seal(MessageType::PeerMessage, mid(1), b"x", T0).unwrap();
    let second = a.seal(MessageType::PeerMessage, mid(2), b"y", T0).unwrap();
    // Reordering within the window is fine.
    assert!(b.open(&second, T0).is_ok());
    assert!(b.open(&first, T0).is_ok());
    assert_eq!(b.open(&first, T0).unwrap_err(), ProtocolError::Replay(ReplayRejection::Duplicate));
    // Jump far ahead: the first messages fall out of the 2048-wide window.
    let mut last = None;
    for n in 0..2100u64 {
        last = Some(a.seal(MessageType::Ack, mid(n), b"", T0).unwrap());
    }
    assert!(b.open(&last.unwrap(), T0).is_ok());
    let stale = a.seal(MessageType::PeerMessage, mid(9), b"z", T0).unwrap();
    let mut stale_copy = stale.clone();
    assert!(b.open(&stale, T0).is_ok());
    stale_copy.seq = 3;
    assert_eq!(
        b.open(&stale_copy, T0).unwrap_err().code(),
        ErrorCode::InvalidMessage,
        "nonce must match seq"
    );
}

#[test]
fn timestamps_outside_the_skew_are_refused() {
    let (mut a, mut b, _) = establish(13);
    let old = a.seal(MessageType::PeerMessage, mid(1), b"x", T0).unwrap();
    let later = T0.saturating_add(Duration::from_secs(301));
    assert_eq!(b.open(&old, later).unwrap_err().code(), ErrorCode::ReplayDetected);
    // Refused messages do not consume the sequence number.
    assert!(b.open(&old, T0.saturating_add(Duration::from_secs(300))).is_ok());
}

#[test]
fn misrouted_and_misdirected_messages_are_refused() {
    let (mut a, mut b, _) = establish(14);
    let (_, mut other_b, _) = establish(15);
    let env = a.seal(MessageType::PeerMessage, mid(1), b"x", T0).unwrap();
    assert_eq!(other_b.open(&env, T0).unwrap_err(), ProtocolError::WrongSession);
    // A message sealed by alice is not accepted back by alice (reflection).
    assert_eq!(a.open(&env, T0).unwrap_err(), ProtocolError::Misaddressed);
    assert!(a.seal(MessageType::HandshakeInit, mid(2), b"", T0).is_err());
    assert!(a.seal(MessageType::Ping, mid(2), b"", T0).is_err());
    let ping = crate::signed::signed_message(
        &a.local,
        MessageType::Ping,
        None,
        None,
        Payload::string(String::new()),
        T0,
        &mut ChaCha20Rng::seed_from_u64(1),
    )
    .unwrap();
    assert!(matches!(b.open(&ping, T0), Err(ProtocolError::UnexpectedMessage { .. })));
}

#[test]
fn frame_limit_is_enforced_on_seal() {
    let (mut a, _, _) = establish(16);
    let max = a.max_frame_bytes;
    let err = a.seal(MessageType::PeerMessage, mid(1), &vec![0u8; max], T0).unwrap_err();
    assert!(matches!(err, UsageError::TooLarge { .. }));
    assert_eq!(a.last_sent_seq(), 0, "a refused seal does not consume a sequence number");
    // The largest plaintext that fits produces a frame of at most the limit.
    let fits = (max - 600) * 3 / 4 - TAG_LEN;
    let env = a.seal(MessageType::PeerMessage, mid(2), &vec![7u8; fits], T0).unwrap();
    assert!(env.encode().len() <= max);
}

#[test]
fn sequence_space_is_bounded() {
    let (mut a, _, _) = establish(17);
    a.last_sent = MAX_SAFE_INTEGER - 1;
    assert!(a.seal(MessageType::PeerMessage, mid(1), b"", T0).is_ok());
    assert_eq!(
        a.seal(MessageType::PeerMessage, mid(2), b"", T0).unwrap_err(),
        UsageError::SequenceExhausted
    );
}

#[test]
fn signatures_follow_sign_all() {
    let (mut a, mut b, _) = establish(18);
    assert!(a.capabilities().sign_all);
    let mut env = a.seal(MessageType::PeerMessage, mid(1), b"x", T0).unwrap();
    assert!(env.signature.is_some());
    env.signature = None;
    assert_eq!(b.open(&env, T0).unwrap_err(), ProtocolError::MissingSignature);
    a.capabilities.sign_all = false;
    b.capabilities.sign_all = false;
    let env = a.seal(MessageType::PeerMessage, mid(2), b"x", T0).unwrap();
    assert!(env.signature.is_none());
    assert_eq!(env.encode().len(), frame_len(env.associated_data().len(), 1 + TAG_LEN, false));
    assert!(b.open(&env, T0).is_ok());
}

#[test]
fn resumption_proofs_agree_and_are_bound_to_context() {
    let (a, b, _) = establish(19);
    let (c, _, _) = establish(20);
    assert_eq!(a.resumption_proof(b"link-1"), b.resumption_proof(b"link-1"));
    assert_ne!(a.resumption_proof(b"link-1"), a.resumption_proof(b"link-2"));
    assert_ne!(a.resumption_proof(b"link-1"), c.resumption_proof(b"link-1"));
    assert!(!format!("{a:?}").contains(&crate::encoding::b64u(a.resumption.as_slice())));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Arbitrary payloads round-trip.
    #[test]
    fn arbitrary_payloads_round_trip(payload in prop::collection::vec(any::<u8>(), 0..2048), seed in 0u64..8) {
        let (mut a, mut b, _) = establish(seed);
        let env = a.seal(MessageType::TaskRequest, mid(1), &payload, T0).unwrap();
        let wire = Envelope::decode(&env.encode(), 1 << 20).unwrap();
        prop_assert_eq!(b.open(&wire, T0).unwrap().plaintext, payload);
    }

    /// Flipping any bit of the wire form is caught: the frame fails to decode, or opening fails,
    /// or (if the flip decoded to the same envelope) the message is unchanged.
    #[test]
    fn any_flipped_bit_is_rejected(payload in prop::collection::vec(any::<u8>(), 0..64), pos in any::<prop::sample::Index>(), bit in 0u8..8, sign_all in any::<bool>()) {
        let (mut a, mut b, _) = establish(3);
        a.capabilities.sign_all = sign_all;
        b.capabilities.sign_all = sign_all;
        let env = a.seal(MessageType::PeerMessage, mid(1), &payload, T0).unwrap();
        let mut bytes = env.encode();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        if let Ok(altered) = Envelope::decode(&bytes, 1 << 20)
                && altered != env
            {
                prop_assert!(b.open(&altered, T0).is_err());
            }
        // The genuine message still opens afterwards: rejected input left no trace.
        prop_assert_eq!(b.open(&env, T0).unwrap().plaintext, payload);
    }

    /// Flipping any bit of header fields (via the typed envelope) or ciphertext is rejected.
    #[test]
    fn header_and_ciphertext_changes_are_rejected(field in 0usize..7, seed in 0u64..4) {
        let (mut a, mut b, _) = establish(seed);
        let env = a.seal(MessageType::PeerMessage, mid(1), b"secret", T0).unwrap();
        let mut bad = env.clone();
        match field {
            0 => bad.message_id = mid(2),
            1 => bad.message_type = MessageType::Broadcast,
            2 => bad.timestamp = T0.saturating_add(Duration::from_millis(1)),
            3 => { bad.seq = 2; bad.nonce = nonce_for(2); }
            4 => bad.recipient_id = Some(EntityId::new("carol").unwrap()),
            5 => {
                let mut ct = crate::encoding::decode_b64u("p", bad.payload.value().as_str().unwrap()).unwrap();
                ct[0] ^= 1;
                bad.payload = Payload::string(b64u(&ct));
            }
            _ => bad.version = "1.3".to_owned(),
        }
        prop_assert!(b.open(&bad, T0).is_err());
        prop_assert!(b.open(&env, T0).is_ok());
    }
}
