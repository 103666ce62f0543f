//! Signed session-less messages (`PING`, `PONG`, `ERROR`, `BYE`, `SESSION_RESUME`,
//! `SESSION_RESUMED`): building them, and checking them against replay.
//!
//! Such a message is plaintext, signed with the sender's identity key, has `seq` 0 and a random
//! 12-byte `nonce`. A receiver accepts it only if the timestamp is within the allowed skew, the
//! signature verifies, and `(sender_id, nonce)` was not seen in the last `2 × skew` (a bounded
//! [`NonceCache`]).

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::envelope::{Envelope, NONCE_LEN, PROTOCOL_VERSION, Payload};
use crate::error::{ErrorCode, ProtocolError, UsageError};
use crate::identity::{Identity, PublicKey};
use crate::ids::{EntityId, MessageId, SessionId};
use crate::limits::Limits;
use crate::message_type::{MessageClass, MessageType};
use crate::replay::{NonceCache, NonceRejection, ReplayRejection};
use crate::time::{Timestamp, duration_millis};

/// Builds and signs a plaintext envelope of any handshake or signed type.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_signed(
    identity: &Identity,
    message_type: MessageType,
    seq: u64,
    recipient: Option<EntityId>,
    session_id: Option<SessionId>,
    payload: Payload,
    now: Timestamp,
    rng: &mut (impl CryptoRng + ?Sized),
) -> Envelope {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let mut env = Envelope {
        message_id: MessageId::random(rng),
        message_type,
        version: PROTOCOL_VERSION.to_owned(),
        timestamp: now,
        seq,
        session_id,
        sender_id: identity.id().clone(),
        recipient_id: recipient,
        payload,
        nonce,
        signature: None,
        verified: crate::envelope::Verified::NO,
    };
    env.sign(identity);
    env
}

/// A new signed session-less message (class [`MessageClass::Signed`]).
pub fn signed_message(
    identity: &Identity,
    message_type: MessageType,
    recipient: Option<EntityId>,
    session_id: Option<SessionId>,
    payload: Payload,
    now: Timestamp,
    rng: &mut (impl CryptoRng + ?Sized),
) -> Result<Envelope, UsageError> {
    if message_type.class() != MessageClass::Signed {
        return Err(UsageError::WrongMessageType(message_type));
    }
    Ok(build_signed(identity, message_type, 0, recipient, session_id, payload, now, rng))
}

/// The payload of an `ERROR` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable text; peerlink sends [`ErrorCode::description`].
    pub message: String,
    /// The `message_id` of the message that caused the error, if known.
    pub in_reply_to: Option<MessageId>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorWire {
    code: String,
    message: String,
    in_reply_to: Option<MessageId>,
}

/// Longest `message` accepted in an `ERROR` payload, in bytes.
const MAX_ERROR_TEXT: usize = 256;

impl ErrorBody {
    /// The body peerlink sends for `code`.
    pub fn new(code: ErrorCode, in_reply_to: Option<MessageId>) -> Self {
        Self { code, message: code.description().to_owned(), in_reply_to }
    }

    /// The JSON payload.
    pub fn to_payload(&self) -> Payload {
        Payload::trusted(json!({
            "code": self.code.as_str(),
            "message": self.message,
            "in_reply_to": self.in_reply_to.as_ref().map(MessageId::as_str),
        }))
    }

    /// Parses an `ERROR` payload. An unknown code (from a later minor version) reads as
    /// `INTERNAL_ERROR`.
    pub fn parse(payload: &Payload) -> Result<Self, ProtocolError> {
        let wire = ErrorWire::deserialize(payload.value())
            .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if wire.message.len() > MAX_ERROR_TEXT {
            return Err(ProtocolError::InvalidField { field: "message", reason: "too long" });
        }
        Ok(Self {
            code: wire.code.parse().unwrap_or(ErrorCode::InternalError),
            message: wire.message,
            in_reply_to: wire.in_reply_to,
        })
    }
}

/// A signed `ERROR` message carrying `code`.
pub fn error_message(
    identity: &Identity,
    recipient: Option<EntityId>,
    session_id: Option<SessionId>,
    code: ErrorCode,
    in_reply_to: Option<MessageId>,
    now: Timestamp,
    rng: &mut (impl CryptoRng + ?Sized),
) -> Envelope {
    let body = ErrorBody::new(code, in_reply_to).to_payload();
    build_signed(identity, MessageType::Error, 0, recipient, session_id, body, now, rng)
}

/// Checks signed session-less messages: skew, signature, and `(sender_id, nonce)` replay.
#[derive(Debug, Clone)]
pub struct SignedMessageGuard {
    cache: NonceCache,
    max_skew: std::time::Duration,
}

impl SignedMessageGuard {
    /// A guard with the cache capacity and skew of `limits`. Entries live for twice the skew: a
    /// message can be accepted at most `skew` after or before its timestamp.
    pub fn new(limits: &Limits) -> Self {
        let max_age = duration_millis(limits.max_clock_skew).saturating_mul(2);
        Self {
            cache: NonceCache::new(limits.nonce_cache_capacity, max_age),
            max_skew: limits.max_clock_skew,
        }
    }

    /// Accepts `env` if it is a fresh, correctly signed message of the signed class from the holder
    /// of `key`.
    pub fn accept(
        &mut self,
        env: &Envelope,
        key: &PublicKey,
        now: Timestamp,
    ) -> Result<(), ProtocolError> {
        if env.message_type.class() != MessageClass::Signed {
            return Err(ProtocolError::UnexpectedMessage {
                expected: "a signed message",
                got: env.message_type,
            });
        }
        if env.seq != 0 {
            return Err(ProtocolError::InvalidField { field: "seq", reason: "must be 0" });
        }
        // The cheap clock check first, then the signature, then the cache.
        env.check_timestamp(now, self.max_skew)?;
        env.verify(key)?;
        self.check_fresh(env, now)
    }

    /// Replay-checks an envelope whose signature the caller verified (a `HANDSHAKE_INIT`, or the
    /// last step of [`SignedMessageGuard::accept`]): skew, then `(sender_id, nonce)` freshness.
    pub fn check_fresh(&mut self, env: &Envelope, now: Timestamp) -> Result<(), ProtocolError> {
        env.check_timestamp(now, self.max_skew)?;
        self.cache
            .check_and_insert(
                env.sender_id.as_str(),
                env.nonce,
                env.timestamp.as_unix_millis(),
                now.as_unix_millis(),
            )
            .map_err(|r| {
                ProtocolError::Replay(match r {
                    NonceRejection::TooOld => ReplayRejection::TooOld,
                    NonceRejection::Duplicate => ReplayRejection::Duplicate,
                })
            })
    }

    /// Entries currently held.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use std::time::Duration;

    #[test]
    fn signed_messages_are_checked_for_replay_skew_and_signature() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let alice = Identity::generate(EntityId::new("alice").unwrap(), &mut rng);
        let mallory = Identity::generate(EntityId::new("alice").unwrap(), &mut rng);
        let now = Timestamp::from_unix_millis(1_000_000_000);
        let mut guard = SignedMessageGuard::new(&Limits::default());
        let ping = signed_message(
            &alice,
            MessageType::Ping,
            None,
            None,
            Payload::trusted(json!({})),
            now,
            &mut rng,
        )
        .unwrap();
        assert!(guard.accept(&ping, &alice.public_key(), now).is_ok());
        let again = guard.accept(&ping, &alice.public_key(), now).unwrap_err();
        assert_eq!(again.code(), ErrorCode::ReplayDetected);
        let forged = signed_message(
            &mallory,
            MessageType::Ping,
            None,
            None,
            Payload::trusted(json!({})),
            now,
            &mut rng,
        )
        .unwrap();
        assert_eq!(
            guard.accept(&forged, &alice.public_key(), now),
            Err(ProtocolError::BadSignature)
        );
        let late = now.saturating_add(Duration::from_secs(301));
        let fresh = signed_message(
            &alice,
            MessageType::Pong,
            None,
            None,
            Payload::trusted(json!({})),
            now,
            &mut rng,
        )
        .unwrap();
        assert_eq!(
            guard.accept(&fresh, &alice.public_key(), late).unwrap_err().code(),
            ErrorCode::ReplayDetected
        );
        assert!(
            signed_message(
                &alice,
                MessageType::PeerMessage,
                None,
                None,
                Payload::trusted(json!({})),
                now,
                &mut rng
            )
            .is_err()
        );
    }

    #[test]
    fn error_bodies_round_trip() {
        let body = ErrorBody::new(ErrorCode::MailboxFull, Some(MessageId::new("m-1").unwrap()));
        assert_eq!(ErrorBody::parse(&body.to_payload()).unwrap(), body);
        let unknown =
            Payload::trusted(json!({"code": "NEW_CODE", "message": "x", "in_reply_to": null}));
        assert_eq!(ErrorBody::parse(&unknown).unwrap().code, ErrorCode::InternalError);
        let long = Payload::trusted(
            json!({"code": "TIMEOUT", "message": "x".repeat(300), "in_reply_to": null}),
        );
        assert!(ErrorBody::parse(&long).is_err());
    }
}
