//! Reliable, ordered, exactly-once delivery between two entities (spec §"Delivery").
//!
//! Every application message travels in one or more **data frames**, each the plaintext of one
//! session message. A frame is a small JSON header, a newline, then the body bytes:
//!
//! ```text
//! {"base":3,"epoch":1234,"no":7}\n<body>
//! ```
//!
//! - `epoch` names the sender's stream (a random integer chosen when the sender's state is
//!   created; a restarted sender starts a new epoch);
//! - `no` numbers frames 1, 2, 3 … in sending order within the epoch;
//! - `base` is the lowest `no` the sender has neither had acknowledged nor given up on;
//! - `reply_to` (in a `TASK_RESPONSE`) names the request's message id;
//! - `app_type` (optional) is the application-defined type of a message;
//! - `chunk` (in a `CHUNKED_MESSAGE`) is `{"id","seq","last","total","type"}`.
//!
//! The receiver delivers frames of an epoch in `no` order, each once, and acknowledges with an
//! `ACK` whose plaintext is `{"ack":{"cumulative":N,"epoch":E,"selective":[…]}}`: every `no ≤ N`
//! and every listed `no` was received. The same message may carry `"forward":{"epoch","base"}`,
//! the sender's own `base`, when no data frame is left to carry it. The sender keeps unacknowledged frames in a bounded outbox
//! and re-sends them (sealed anew, so with a new `seq`) after a timeout or when a link or session
//! comes back. Frames are re-sent until acknowledged or until the message's send timeout, when
//! the application is told the message failed; `base` then moves past it so the receiver does not
//! wait for it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::canonical::MAX_SAFE_INTEGER;
use crate::error::ProtocolError;
use crate::ids::{AppType, MessageId};
use crate::message_type::MessageType;

/// Largest data-frame header accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 1024;

/// Most selective acknowledgements in one `ACK`.
pub const MAX_SELECTIVE: usize = 64;

/// Chunk fields of a `CHUNKED_MESSAGE` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkHeader {
    /// The logical message's id.
    pub id: MessageId,
    /// 0-based position of this chunk.
    pub seq: u32,
    /// Whether this is the final chunk.
    pub last: bool,
    /// Length of the whole message in bytes.
    pub total: u64,
    /// The logical message's type.
    #[serde(rename = "type")]
    pub message_type: MessageType,
}

/// The header of a data frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataHeader {
    /// The sender's stream.
    pub epoch: u64,
    /// This frame's number in the stream.
    pub no: u64,
    /// Lowest frame number still outstanding at the sender.
    pub base: u64,
    /// For `TASK_RESPONSE`: the request's message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// The application-defined type of a `PEER_MESSAGE`, `BROADCAST` or `STATUS` (or of every
    /// chunk of one), sent only in sessions that agreed on `app_types`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_type: Option<AppType>,
    /// For `CHUNKED_MESSAGE`: the chunk fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkHeader>,
}

/// Encodes a data frame: header JSON, `\n`, body.
pub fn encode_data(header: &DataHeader, body: &[u8]) -> Vec<u8> {
    // Serializing a struct of integers, ids and booleans cannot fail.
    let mut out = serde_json::to_vec(header).unwrap_or_default();
    out.reserve(body.len().saturating_add(1));
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// Splits and checks a data frame.
pub fn decode_data(plaintext: &[u8]) -> Result<(DataHeader, &[u8]), ProtocolError> {
    let bad = |reason| ProtocolError::InvalidField { field: "data header", reason };
    let search = plaintext.get(..plaintext.len().min(MAX_HEADER_BYTES.saturating_add(1)));
    let split = search
        .and_then(|s| s.iter().position(|&b| b == b'\n'))
        .ok_or(bad("no header line within 1024 bytes"))?;
    let header_bytes = plaintext.get(..split).ok_or(bad("truncated"))?;
    let body = plaintext.get(split.saturating_add(1)..).ok_or(bad("truncated"))?;
    let header: DataHeader = serde_json::from_slice(header_bytes)
        .map_err(|e| ProtocolError::Malformed(format!("data header: {e}")))?;
    if header.no == 0 || header.no > MAX_SAFE_INTEGER || header.base > header.no {
        return Err(bad("no must be >= 1 and base <= no"));
    }
    if header.epoch == 0 || header.epoch > MAX_SAFE_INTEGER {
        return Err(bad("epoch must be in 1..=2^53-1"));
    }
    Ok((header, body))
}

/// Acknowledgement of the frames received on one of the peer's streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The acknowledged stream.
    pub epoch: u64,
    /// Every frame number up to and including this one was received (or given up by the sender).
    pub cumulative: u64,
    /// Further frame numbers received, above `cumulative` (at most 64).
    pub selective: Vec<u64>,
}

/// The sender's own stream position: "I have nothing outstanding below `base`".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// The sender's stream.
    pub epoch: u64,
    /// Lowest frame number still outstanding at the sender.
    pub base: u64,
}

/// The plaintext of an `ACK` message: stream control in both directions. `ack` acknowledges the
/// peer's stream; `forward` announces this side's `base` when no data frame is left to carry it
/// (after a message was given up), so the peer stops waiting for frames that will never come.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamControl {
    /// Acknowledgement of the peer's stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<Ack>,
    /// This side's stream position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<Forward>,
}

impl StreamControl {
    /// Encodes the `ACK` plaintext.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks an `ACK` plaintext.
    pub fn decode(plaintext: &[u8]) -> Result<Self, ProtocolError> {
        if plaintext.len() > MAX_HEADER_BYTES.saturating_mul(2) {
            return Err(ProtocolError::InvalidField { field: "ack", reason: "too long" });
        }
        let c: StreamControl = serde_json::from_slice(plaintext)
            .map_err(|e| ProtocolError::Malformed(format!("ack: {e}")))?;
        if c.ack.as_ref().is_some_and(|a| a.selective.len() > MAX_SELECTIVE) {
            return Err(ProtocolError::InvalidField { field: "ack", reason: "too many selective" });
        }
        if c.forward.is_some_and(|f| f.epoch == 0 || f.base == 0) {
            return Err(ProtocolError::InvalidField {
                field: "ack",
                reason: "forward out of range",
            });
        }
        Ok(c)
    }
}

/// Bounds and timers of the delivery layer. Defaults are those of spec §"Limits".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// Frames sent but not yet acknowledged, per peer. Default 128.
    pub send_window: u64,
    /// Body bytes of the frames the send window spans, per peer: a frame is first sent only if
    /// it and the unacknowledged frames before it, from `base`, total at most this many bytes.
    /// The frame at `base` is always allowed, however large, so a stream always makes progress.
    /// Default 4 MiB: it drains in less than the 200 ms minimum retransmission timeout at
    /// 20 MiB/s or more, so queueing alone does not trigger retransmissions (with the frame
    /// window alone, 128 chunks of 256 KiB put 32 MiB in a transport's queue). It still spans 16
    /// chunks of 256 KiB and 64 frames of 64 KiB, more than `ack_every`: a byte window that holds
    /// fewer frames than `ack_every` waits `ack_delay` for every acknowledgement (1 MiB halved the
    /// benchmark's WebSocket throughput).
    pub send_window_bytes: usize,
    /// Frames a receiver buffers ahead of the next one it can deliver, per peer. Default 256.
    pub recv_window: u64,
    /// Bytes a receiver buffers out of order, per peer. Default 16 MiB.
    pub max_recv_buffer_bytes: usize,
    /// Messages waiting for acknowledgement, per peer; `send` fails beyond. Default 1024.
    pub max_outbox_messages: usize,
    /// Bytes waiting for acknowledgement, per peer; `send` fails beyond. Default 64 MiB.
    pub max_outbox_bytes: usize,
    /// First retransmission timeout. Default 1 s.
    pub initial_rto: Duration,
    /// Smallest retransmission timeout. Default 200 ms.
    pub min_rto: Duration,
    /// Largest retransmission timeout. Default 10 s.
    pub max_rto: Duration,
    /// A message not acknowledged within this time fails. Default 60 s.
    pub send_timeout: Duration,
    /// Longest an acknowledgement is held to be combined with others. Default 5 ms.
    pub ack_delay: Duration,
    /// Frames received without an acknowledgement after which one is sent at once, without
    /// waiting for `ack_delay` (so a full send window is not held for it). Default 32, a quarter
    /// of the default `send_window`; 0 counts as 1.
    pub ack_every: u64,
    /// Epochs remembered per sender (a restarted sender starts a new one). Default 4.
    pub max_epochs: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            send_window: 128,
            send_window_bytes: 4 << 20,
            recv_window: 256,
            max_recv_buffer_bytes: 16 << 20,
            max_outbox_messages: 1024,
            max_outbox_bytes: 64 << 20,
            initial_rto: Duration::from_secs(1),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            ack_delay: Duration::from_millis(5),
            ack_every: 32,
            max_epochs: 4,
        }
    }
}

/// Application content never reaches logs: these `Debug`s show lengths, not bodies.
macro_rules! debug_without_body {
    ($t:ty, $($field:ident),*) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($field), &self.$field))*
                    .field("body_len", &self.body.len())
                    .finish_non_exhaustive()
            }
        }
    };
}

mod recv;
mod send;

pub use recv::{InFrame, Received, RecvStreams};
pub use send::{FailReason, Failure, FrameSpec, OutFrame, OutboxFull, OutgoingMessage, SendStream};

#[cfg(test)]
mod tests;
