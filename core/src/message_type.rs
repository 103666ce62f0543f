//! The `type` field: every message type and the class that decides how it is protected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a message type is protected and routed (spec §"Message types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageClass {
    /// One of the six handshake steps: signed, plaintext, `session_id` set from step 2 on.
    Handshake,
    /// End-to-end session data: encrypted with the session's keys; signed when `sign_all` was
    /// negotiated.
    Session,
    /// Between a node and the next hop (or a session-less notice): signed with the sender's
    /// identity key, plaintext, replay-checked by `(sender_id, nonce)` and timestamp.
    Signed,
}

/// Every message type of protocol v1.2.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MessageType {
    /// Handshake step 1 (initiator): identity, X25519 ephemeral key, versions, capabilities.
    HandshakeInit,
    /// Handshake step 2 (responder): identity, ephemeral key, challenge, chosen version.
    HandshakeInitAck,
    /// Handshake step 3 (initiator): the signed challenge.
    ChallengeResponse,
    /// Handshake step 4 (responder): keys derived, responder's key confirmation.
    SessionEstablished,
    /// Handshake step 5 (initiator): initiator's key confirmation.
    SessionConfirm,
    /// Handshake step 6 (responder): encryption active.
    Ready,
    /// Heartbeat request.
    Ping,
    /// Heartbeat answer.
    Pong,
    /// A message for one peer.
    PeerMessage,
    /// One copy of a message sent to every peer the sender has a session with.
    Broadcast,
    /// A request for work, answered by `TASK_RESPONSE`.
    TaskRequest,
    /// The answer to a `TASK_REQUEST`.
    TaskResponse,
    /// One chunk of a large message.
    ChunkedMessage,
    /// Acknowledges delivery of a message, end to end.
    Ack,
    /// Reports an error code.
    Error,
    /// Status update.
    Status,
    /// Capability update after the handshake.
    CapabilityExchange,
    /// Orderly close.
    Bye,
    /// Asks to resume a session on a new link, proving possession of its resumption secret.
    SessionResume,
    /// Confirms a resumed session.
    SessionResumed,
    /// Subscribes the sending link to a topic.
    Subscribe,
    /// Ends a subscription.
    Unsubscribe,
    /// Publishes data on a topic; the node sends the same bytes to every subscriber.
    Publish,
}

impl MessageType {
    /// The class of this type.
    pub const fn class(self) -> MessageClass {
        match self {
            MessageType::HandshakeInit
            | MessageType::HandshakeInitAck
            | MessageType::ChallengeResponse
            | MessageType::SessionEstablished
            | MessageType::SessionConfirm
            | MessageType::Ready => MessageClass::Handshake,
            MessageType::PeerMessage
            | MessageType::Broadcast
            | MessageType::TaskRequest
            | MessageType::TaskResponse
            | MessageType::ChunkedMessage
            | MessageType::Ack
            | MessageType::Status
            | MessageType::CapabilityExchange => MessageClass::Session,
            MessageType::Ping
            | MessageType::Pong
            | MessageType::Error
            | MessageType::Bye
            | MessageType::SessionResume
            | MessageType::SessionResumed
            | MessageType::Subscribe
            | MessageType::Unsubscribe
            | MessageType::Publish => MessageClass::Signed,
        }
    }

    /// The handshake step (1 to 6) this type is, if it is one. It is also the envelope's `seq`.
    pub const fn handshake_step(self) -> Option<u64> {
        match self {
            MessageType::HandshakeInit => Some(1),
            MessageType::HandshakeInitAck => Some(2),
            MessageType::ChallengeResponse => Some(3),
            MessageType::SessionEstablished => Some(4),
            MessageType::SessionConfirm => Some(5),
            MessageType::Ready => Some(6),
            _ => None,
        }
    }

    /// The wire spelling, e.g. `"PEER_MESSAGE"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::HandshakeInit => "HANDSHAKE_INIT",
            MessageType::HandshakeInitAck => "HANDSHAKE_INIT_ACK",
            MessageType::ChallengeResponse => "CHALLENGE_RESPONSE",
            MessageType::SessionEstablished => "SESSION_ESTABLISHED",
            MessageType::SessionConfirm => "SESSION_CONFIRM",
            MessageType::Ready => "READY",
            MessageType::Ping => "PING",
            MessageType::Pong => "PONG",
            MessageType::PeerMessage => "PEER_MESSAGE",
            MessageType::Broadcast => "BROADCAST",
            MessageType::TaskRequest => "TASK_REQUEST",
            MessageType::TaskResponse => "TASK_RESPONSE",
            MessageType::ChunkedMessage => "CHUNKED_MESSAGE",
            MessageType::Ack => "ACK",
            MessageType::Error => "ERROR",
            MessageType::Status => "STATUS",
            MessageType::CapabilityExchange => "CAPABILITY_EXCHANGE",
            MessageType::Bye => "BYE",
            MessageType::SessionResume => "SESSION_RESUME",
            MessageType::SessionResumed => "SESSION_RESUMED",
            MessageType::Subscribe => "SUBSCRIBE",
            MessageType::Unsubscribe => "UNSUBSCRIBE",
            MessageType::Publish => "PUBLISH",
        }
    }

    /// Every type, in spec order.
    pub const ALL: [MessageType; 23] = [
        MessageType::HandshakeInit,
        MessageType::HandshakeInitAck,
        MessageType::ChallengeResponse,
        MessageType::SessionEstablished,
        MessageType::SessionConfirm,
        MessageType::Ready,
        MessageType::Ping,
        MessageType::Pong,
        MessageType::PeerMessage,
        MessageType::Broadcast,
        MessageType::TaskRequest,
        MessageType::TaskResponse,
        MessageType::ChunkedMessage,
        MessageType::Ack,
        MessageType::Error,
        MessageType::Status,
        MessageType::CapabilityExchange,
        MessageType::Bye,
        MessageType::SessionResume,
        MessageType::SessionResumed,
        MessageType::Subscribe,
        MessageType::Unsubscribe,
        MessageType::Publish,
    ];
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_match_as_str() {
        for t in MessageType::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<MessageType>(&json).unwrap(), t);
        }
        assert!(serde_json::from_str::<MessageType>("\"HELLO\"").is_err());
        let steps: Vec<u64> = MessageType::ALL.iter().filter_map(|t| t.handshake_step()).collect();
        assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    }
}
