//! Error codes on the wire and the typed errors behind them.
//!
//! Two families are kept apart (as rustls does):
//! - [`ProtocolError`]: the *peer* sent something the protocol forbids. Every variant maps to an
//!   [`ErrorCode`] that may be sent back in an `ERROR` message.
//! - [`UsageError`]: the *embedder* called the API wrongly (a bad id string, a plaintext over the
//!   limit, a session used after its sequence space ran out). Never caused by peer bytes.
//!
//! What a peer learns from an `ERROR` message is only the code and the fixed text of
//! [`ErrorCode::description`]: the detailed [`ProtocolError`] (which signature failed, which field
//! was wrong) stays in local logs, so an attacker probing a node learns nothing it did not send.

use std::fmt;
use std::str::FromStr;

use crate::ids::EntityId;
use crate::message_type::MessageType;
use crate::replay::ReplayRejection;

/// An error code as carried in the `code` field of an `ERROR` payload (spec §"Error codes").
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    /// The `session_id` names no session the receiver holds.
    SessionNotFound,
    /// The session existed but has expired or was closed; a new handshake is needed.
    SessionExpired,
    /// The frame is not a well-formed peerlink envelope (JSON, fields, encodings).
    InvalidMessage,
    /// A signature, MAC, AEAD tag, identity or token did not verify.
    AuthenticationFailed,
    /// The sender exceeded a rate limit; the message was dropped.
    RateLimitExceeded,
    /// The frame or the reassembled message exceeds the receiver's size limit.
    MessageTooLarge,
    /// The message is well formed but not allowed in the receiver's current state.
    InvalidState,
    /// The message was seen before, or its timestamp is outside the accepted window.
    ReplayDetected,
    /// No protocol version in common.
    UnsupportedVersion,
    /// The relay knows no route to `recipient_id`.
    UnknownRecipient,
    /// The recipient's mailbox on the relay is full; retry later.
    MailboxFull,
    /// A handshake or request did not complete in time.
    Timeout,
    /// The receiver failed for a reason of its own, not the sender's.
    InternalError,
}

/// What the receiver of an offending message does (spec §"Error codes", column "receiver does").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Drop the message without answering.
    Drop,
    /// Drop the message and answer with an `ERROR` carrying the code; the link stays open.
    Answer,
    /// Answer with an `ERROR`, then close the link (or abandon the handshake).
    AnswerAndClose,
}

impl ErrorCode {
    /// Every code, in spec order.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::SessionNotFound,
        ErrorCode::SessionExpired,
        ErrorCode::InvalidMessage,
        ErrorCode::AuthenticationFailed,
        ErrorCode::RateLimitExceeded,
        ErrorCode::MessageTooLarge,
        ErrorCode::InvalidState,
        ErrorCode::ReplayDetected,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownRecipient,
        ErrorCode::MailboxFull,
        ErrorCode::Timeout,
        ErrorCode::InternalError,
    ];

    /// The wire spelling, e.g. `"REPLAY_DETECTED"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::SessionNotFound => "SESSION_NOT_FOUND",
            ErrorCode::SessionExpired => "SESSION_EXPIRED",
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::AuthenticationFailed => "AUTHENTICATION_FAILED",
            ErrorCode::RateLimitExceeded => "RATE_LIMIT_EXCEEDED",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::InvalidState => "INVALID_STATE",
            ErrorCode::ReplayDetected => "REPLAY_DETECTED",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::UnknownRecipient => "UNKNOWN_RECIPIENT",
            ErrorCode::MailboxFull => "MAILBOX_FULL",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::InternalError => "INTERNAL_ERROR",
        }
    }

    /// The fixed, non-revealing text sent to a peer alongside the code.
    pub const fn description(self) -> &'static str {
        match self {
            ErrorCode::SessionNotFound => "no such session",
            ErrorCode::SessionExpired => "session expired; start a new handshake",
            ErrorCode::InvalidMessage => "malformed message",
            ErrorCode::AuthenticationFailed => "authentication failed",
            ErrorCode::RateLimitExceeded => "rate limit exceeded",
            ErrorCode::MessageTooLarge => "message too large",
            ErrorCode::InvalidState => "message not allowed in the current state",
            ErrorCode::ReplayDetected => "replayed or stale message",
            ErrorCode::UnsupportedVersion => "unsupported protocol version",
            ErrorCode::UnknownRecipient => "unknown recipient",
            ErrorCode::MailboxFull => "recipient mailbox full",
            ErrorCode::Timeout => "timed out",
            ErrorCode::InternalError => "internal error",
        }
    }

    /// What the receiver of an offending message does by default.
    pub const fn disposition(self) -> Disposition {
        match self {
            ErrorCode::AuthenticationFailed
            | ErrorCode::UnsupportedVersion
            | ErrorCode::Timeout => Disposition::AnswerAndClose,
            ErrorCode::SessionNotFound
            | ErrorCode::SessionExpired
            | ErrorCode::InvalidMessage
            | ErrorCode::RateLimitExceeded
            | ErrorCode::MessageTooLarge
            | ErrorCode::InvalidState
            | ErrorCode::ReplayDetected
            | ErrorCode::UnknownRecipient
            | ErrorCode::MailboxFull
            | ErrorCode::InternalError => Disposition::Answer,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error code is also an error: the reason a link was refused ([`crate::Node::handle_input`]).
impl std::error::Error for ErrorCode {}

/// The string is not a known error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code")]
pub struct UnknownErrorCode;

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s).ok_or(UnknownErrorCode)
    }
}

/// The peer sent something the protocol forbids. [`ProtocolError::code`] is what goes on the wire.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame is larger than the configured limit; it was not parsed.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Size of the frame received.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The frame is not valid JSON or does not have the envelope's shape.
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// A field has a value the spec does not allow.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The envelope's `version`, or every version offered in a handshake, is unsupported.
    #[error("unsupported protocol version")]
    UnsupportedVersion,
    /// A message arrived that the receiver's state does not expect.
    #[error("unexpected {got} (expected {expected})")]
    UnexpectedMessage {
        /// What the state machine was waiting for.
        expected: &'static str,
        /// What arrived.
        got: MessageType,
    },
    /// The sender is not in the trust store and the policy is an allowlist.
    #[error("identity {0} is not trusted")]
    UntrustedIdentity(EntityId),
    /// The identity key presented differs from the one the trust store holds for that id.
    #[error("identity key presented for {0} does not match the trust store")]
    IdentityKeyMismatch(EntityId),
    /// A required signature is missing.
    #[error("missing signature")]
    MissingSignature,
    /// A signature did not verify.
    #[error("bad signature")]
    BadSignature,
    /// A handshake key-confirmation MAC did not verify.
    #[error("key confirmation failed")]
    KeyConfirmationFailed,
    /// A challenge or transcript hash echoed by the peer differs from this side's.
    #[error("transcript mismatch")]
    TranscriptMismatch,
    /// The X25519 exchange produced the all-zero secret (a small-order public key).
    #[error("non-contributory key exchange")]
    WeakKeyExchange,
    /// The AEAD tag did not verify: the header or ciphertext was altered, or the key is wrong.
    #[error("decryption failed")]
    DecryptionFailed,
    /// The message names a session other than the one it was given to.
    #[error("message belongs to another session")]
    WrongSession,
    /// The sender or recipient of the message is not the one the session or handshake expects.
    #[error("message is not addressed to this session's endpoints")]
    Misaddressed,
    /// The message's timestamp is further from the receiver's clock than the allowed skew.
    #[error("timestamp {skew_ms} ms away from local time")]
    StaleTimestamp {
        /// Distance from local time in milliseconds.
        skew_ms: u64,
    },
    /// The sequence number (or nonce) was seen before or fell out of the replay window.
    #[error("replay: {0}")]
    Replay(ReplayRejection),
    /// The handshake did not finish before its deadline.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The handshake already ended (failed or completed); no further input is accepted.
    #[error("handshake already ended")]
    HandshakeEnded,
    /// The peer answered with an `ERROR` message.
    #[error("peer reported {code}")]
    PeerReported {
        /// The code the peer sent.
        code: ErrorCode,
    },
}

impl ProtocolError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::MessageTooLarge,
            ProtocolError::Malformed(_) | ProtocolError::InvalidField { .. } => {
                ErrorCode::InvalidMessage
            }
            ProtocolError::Misaddressed => ErrorCode::InvalidMessage,
            ProtocolError::UnsupportedVersion => ErrorCode::UnsupportedVersion,
            ProtocolError::UnexpectedMessage { .. } | ProtocolError::HandshakeEnded => {
                ErrorCode::InvalidState
            }
            ProtocolError::UntrustedIdentity(_)
            | ProtocolError::IdentityKeyMismatch(_)
            | ProtocolError::MissingSignature
            | ProtocolError::BadSignature
            | ProtocolError::KeyConfirmationFailed
            | ProtocolError::TranscriptMismatch
            | ProtocolError::WeakKeyExchange
            | ProtocolError::DecryptionFailed => ErrorCode::AuthenticationFailed,
            ProtocolError::WrongSession => ErrorCode::SessionNotFound,
            ProtocolError::StaleTimestamp { .. } | ProtocolError::Replay(_) => {
                ErrorCode::ReplayDetected
            }
            ProtocolError::HandshakeTimeout => ErrorCode::Timeout,
            ProtocolError::PeerReported { code } => *code,
        }
    }
}

/// The embedder used the API wrongly. Never caused by bytes from a peer.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// A string given as an identifier does not follow the spec's syntax.
    #[error("invalid {kind}: {reason}")]
    InvalidId {
        /// Which kind of identifier (`entity id`, `session id`, `message id`).
        kind: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The message would exceed the configured frame size once encoded.
    #[error("message of {len} bytes exceeds the frame limit of {max}")]
    TooLarge {
        /// Encoded size.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The session's sequence space (2^53 - 1 messages) is exhausted; start a new session.
    #[error("session sequence numbers exhausted")]
    SequenceExhausted,
    /// The message type cannot be sent this way (for example a handshake type through a session).
    #[error("{0} cannot be sent this way")]
    WrongMessageType(MessageType),
    /// A JSON value given by the embedder cannot be canonicalized (a float or out-of-range integer).
    #[error("payload is not canonicalizable: {0}")]
    NotCanonical(&'static str),
    /// The peer to dial is not in the trust store, whose policy is an allowlist.
    #[error("peer {0} is not in the trust store")]
    UntrustedPeer(EntityId),
    /// A configuration value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_wire_names() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            assert!(!code.description().is_empty());
        }
        assert_eq!("SESSION_LOST".parse::<ErrorCode>(), Err(UnknownErrorCode));
        assert_eq!("replay_detected".parse::<ErrorCode>(), Err(UnknownErrorCode));
    }

    #[test]
    fn protocol_errors_map_to_codes() {
        assert_eq!(
            ProtocolError::FrameTooLarge { len: 2, max: 1 }.code(),
            ErrorCode::MessageTooLarge
        );
        assert_eq!(ProtocolError::BadSignature.code(), ErrorCode::AuthenticationFailed);
        assert_eq!(
            ProtocolError::Replay(ReplayRejection::Duplicate).code(),
            ErrorCode::ReplayDetected
        );
        assert_eq!(
            ProtocolError::PeerReported { code: ErrorCode::MailboxFull }.code(),
            ErrorCode::MailboxFull
        );
        assert_eq!(ErrorCode::AuthenticationFailed.disposition(), Disposition::AnswerAndClose);
        assert_eq!(ErrorCode::ReplayDetected.disposition(), Disposition::Answer);
    }
}
