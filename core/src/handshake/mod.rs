//! The 6-step handshake as two deterministic state machines (spec §"Handshake").
//!
//! ```text
//! Initiator                                              Responder
//!  1 HANDSHAKE_INIT      identity, ephemeral, versions, caps  ──►
//!                   ◄── identity, ephemeral, version, challenge, caps, TH1   2 HANDSHAKE_INIT_ACK
//!  3 CHALLENGE_RESPONSE  challenge, TH2 (the signature is the signed challenge) ──►
//!                   ◄── HMAC(confirm_r, "established" || TH3)           4 SESSION_ESTABLISHED
//!  5 SESSION_CONFIRM     HMAC(confirm_i, "confirm" || TH4)  ──►
//!                   ◄── HMAC(confirm_r, "ready" || TH5)                 6 READY
//! ```
//!
//! Every message is signed with its sender's Ed25519 identity key and absorbed into the
//! transcript hash. Keys are derived after step 3 from the X25519 secret and TH3. Each role is a
//! value driven by [`Initiator::handle`] / [`Responder::handle`]: a received envelope goes in, the
//! next envelope to send (or the established [`Session`]) comes out. Any failure is a
//! [`ProtocolError`] and is final: the machine refuses all further input, so a forged or
//! misordered message can end a handshake but never produce a session with mismatched keys.
//!
//! Both roles have a deadline ([`Limits::handshake_timeout`], default 5 s, counted from the first
//! message); input after it, or [`Initiator::handle_timeout`] at it, fails with
//! [`ProtocolError::HandshakeTimeout`].

mod initiator;
pub mod keys;
mod payloads;
mod responder;
mod state;

pub use initiator::Initiator;
pub use responder::Responder;
pub use state::HandshakeConfig;

use crate::envelope::Envelope;
use crate::error::ProtocolError;
use crate::identity::PublicKey;
use crate::ids::{EntityId, SessionId};
use crate::limits::Limits;
use crate::message_type::MessageType;
use crate::session::Session;
use crate::signed::ErrorBody;
use crate::time::Timestamp;

/// Versions this implementation offers and accepts, most preferred first.
pub const SUPPORTED_VERSIONS: &[&str] = &[crate::envelope::PROTOCOL_VERSION];

/// What a handshake step produced.
#[must_use]
#[derive(Debug)]
pub enum HandshakeOutput {
    /// Send this envelope to the peer; the handshake continues.
    Send(Envelope),
    /// The handshake is complete. The responder must also send `send` (its `READY`).
    Complete {
        /// A final message to send, if any.
        send: Option<Envelope>,
        /// The established session.
        session: Box<Session>,
    },
}

/// The state a role is in, shared by both machines for the sticky end states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the message of this step number.
    Awaiting(u64),
    /// Completed or failed; no further input.
    Ended,
}

/// What a received handshake envelope must match.
struct Expected<'a> {
    message_type: MessageType,
    local: &'a EntityId,
    peer: Option<&'a EntityId>,
    session_id: Option<&'a SessionId>,
    version: &'a str,
}

/// Checks the envelope fields every handshake step shares. The signature is checked by the caller
/// once it knows the key. An `ERROR` from the peer, correctly signed when the peer's key is
/// already known, ends the handshake with [`ProtocolError::PeerReported`].
fn check_envelope(
    env: &Envelope,
    want: &Expected<'_>,
    peer_key: Option<&PublicKey>,
    now: Timestamp,
    limits: &Limits,
) -> Result<(), ProtocolError> {
    if env.message_type == MessageType::Error {
        if let Some(key) = peer_key {
            env.verify(key)?;
        }
        let body = ErrorBody::parse(&env.payload)?;
        return Err(ProtocolError::PeerReported { code: body.code });
    }
    if env.message_type != want.message_type {
        return Err(ProtocolError::UnexpectedMessage {
            expected: want.message_type.as_str(),
            got: env.message_type,
        });
    }
    if Some(env.seq) != want.message_type.handshake_step() {
        return Err(ProtocolError::InvalidField {
            field: "seq",
            reason: "must equal the handshake step",
        });
    }
    if env.version != want.version {
        return Err(ProtocolError::UnsupportedVersion);
    }
    if env.recipient_id.as_ref() != Some(want.local)
        || want.peer.is_some_and(|p| *p != env.sender_id)
    {
        return Err(ProtocolError::Misaddressed);
    }
    if env.sender_id == *want.local {
        return Err(ProtocolError::Misaddressed);
    }
    match (want.message_type, &env.session_id, want.session_id) {
        (MessageType::HandshakeInit, None, _) => {}
        (MessageType::HandshakeInitAck, Some(_), _) => {}
        (_, Some(got), Some(expected)) if got == expected => {}
        _ => return Err(ProtocolError::WrongSession),
    }
    env.check_timestamp(now, limits.max_clock_skew)
}

#[cfg(test)]
pub(crate) mod tests;
