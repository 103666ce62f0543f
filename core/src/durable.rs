//! What a durable node writes, and how it is read back (spec §26).
//!
//! The node decides and the driver writes: a node built with
//! [`NodeConfig::durable`](crate::NodeConfig::durable) emits [`Output::Persist`] with one
//! [`StoreOp`] per change of its durable state, and every output that follows a `Persist` in
//! the output queue must wait until the store has made that write durable (a *barrier*). A
//! driver may gather the writes of many inputs into one transaction (group commit), as long as
//! it carries out nothing that came after them before the commit.
//!
//! After a restart the driver reads every entry back and hands them to
//! [`Node::restore`](crate::Node::restore) before any other input. The store is a flat, ordered
//! map of byte keys to byte values; the key's first byte names the record's kind:
//!
//! | key | value | what |
//! |---|---|---|
//! | `s` ‖ peer ‖ `0x00` | `{"epoch":E,"next":N}` | the send stream to `peer`: its epoch and next frame number |
//! | `f` ‖ peer ‖ `0x00` ‖ no (8 bytes, big-endian) | header JSON ‖ `\n` ‖ body | one accepted frame not yet acknowledged or given up |
//! | `r` ‖ peer ‖ `0x00` | `{"epochs":[[E,N],…]}` | the receive positions of `peer`'s streams: for each epoch, the next frame number to deliver |
//! | `a` ‖ peer ‖ `0x00` ‖ no (8 bytes, big-endian) | header JSON ‖ `\n` ‖ body | one chunk of a message from `peer` being reassembled, already counted in its receive position |
//! | `t` ‖ node ‖ `0x00` | `{"topics":[…]}` | the topics the application subscribed to at the next hop `node` |
//! | `m` ‖ entity ‖ `0x00` ‖ no (8 bytes, big-endian) | `{"expires":T}` ‖ `\n` ‖ envelope | one envelope held in `entity`'s mailbox (a relay's), until `T` (Unix ms); numbers give the mailbox's order |
//!
//! Entity ids never contain `0x00` (spec §3), so a key splits without ambiguity. Everything
//! read back is checked as hostile input: a malformed entry is a [`StoreError`], never a panic.
//!
//! [`Output::Persist`]: crate::Output::Persist

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{AppType, EntityId, MessageId};
use crate::message_type::MessageType;
use crate::stream::{ChunkHeader, DataHeader};

/// The version of the layout above; a store written by a newer layout is refused.
pub const FORMAT_VERSION: u32 = 1;

/// One change to the store.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` (nothing if absent).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
}

impl StoreOp {
    /// The key changed.
    pub fn key(&self) -> &[u8] {
        match self {
            StoreOp::Put { key, .. } | StoreOp::Delete { key } => key,
        }
    }
}

impl std::fmt::Debug for StoreOp {
    // Values may hold message content (a sender's own outbox): only lengths are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreOp::Put { key, value } => {
                write!(f, "Put({}, {} bytes)", describe_key(key), value.len())
            }
            StoreOp::Delete { key } => write!(f, "Delete({})", describe_key(key)),
        }
    }
}

/// A key in readable form: its kind, the entity, and the number if any.
pub fn describe_key(key: &[u8]) -> String {
    match split_key(key) {
        Some((kind, entity, number)) => match number {
            Some(n) => format!("{}/{}/{n}", kind as char, entity),
            None => format!("{}/{}", kind as char, entity),
        },
        None => format!("<{} bytes>", key.len()),
    }
}

/// Why what was read back from a store cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An entry is malformed.
    #[error("corrupt store entry {key}: {reason}")]
    Corrupt {
        /// The entry's key, readable.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store holds more than the node may keep.
    #[error("the store holds more than the node's limits allow: {0}")]
    OverLimit(&'static str),
}

/// The record kinds (a key's first byte).
pub(crate) mod kind {
    /// A send stream's epoch and next number.
    pub const STREAM: u8 = b's';
    /// An outbox frame.
    pub const FRAME: u8 = b'f';
    /// A peer's receive positions.
    pub const RECV: u8 = b'r';
    /// A chunk held for reassembly.
    pub const CHUNK: u8 = b'a';
    /// Subscriptions at a next hop.
    pub const TOPICS: u8 = b't';
    /// An envelope held in a mailbox for an entity not connected (a relay's).
    pub const MAILBOX: u8 = b'm';
}

/// `kind ‖ entity ‖ 0x00`.
pub(crate) fn key_of(kind: u8, entity: &EntityId) -> Vec<u8> {
    let mut key = Vec::with_capacity(entity.as_str().len().saturating_add(10));
    key.push(kind);
    key.extend_from_slice(entity.as_str().as_bytes());
    key.push(0);
    key
}

/// `kind ‖ entity ‖ 0x00 ‖ n` (big-endian, so keys sort by number).
pub(crate) fn numbered_key(kind: u8, entity: &EntityId, n: u64) -> Vec<u8> {
    let mut key = key_of(kind, entity);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// Splits a key into its kind, its entity text and its number (for numbered kinds).
fn split_key(key: &[u8]) -> Option<(u8, &str, Option<u64>)> {
    let (&kind, rest) = key.split_first()?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let entity = std::str::from_utf8(rest.get(..nul)?).ok()?;
    let tail = rest.get(nul.saturating_add(1)..)?;
    let number = match tail.len() {
        0 => None,
        8 => Some(u64::from_be_bytes(tail.try_into().ok()?)),
        _ => return None,
    };
    Some((kind, entity, number))
}

/// A send stream's durable state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamRecord {
    pub epoch: u64,
    pub next: u64,
}

/// A peer's receive positions: `(epoch, next)` pairs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecvRecord {
    pub epochs: Vec<(u64, u64)>,
}

/// The header of a stored outbox frame (`f`): what the frame needs besides its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FrameRecord {
    #[serde(rename = "type")]
    pub message_type: MessageType,
    pub id: MessageId,
    pub logical: MessageId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_type: Option<AppType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<ChunkHeader>,
    /// The message's send timeout, Unix milliseconds.
    pub deadline: u64,
    /// The message's transport preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<bool>,
}

/// The header of a stored chunk (`a`): the frame's envelope type and id and its data header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChunkRecord {
    #[serde(rename = "type")]
    pub message_type: MessageType,
    pub id: MessageId,
    pub header: DataHeader,
}

/// The header of a stored mailbox entry (`m`): when it expires. The body is the envelope as
/// it arrived, whose payload a relay cannot read (end-to-end ciphertext, or a handshake's
/// public values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MailboxRecord {
    /// Unix milliseconds.
    pub expires: u64,
}

/// `header JSON ‖ \n ‖ body`.
pub(crate) fn encode_with_body<T: Serialize>(header: &T, body: &[u8]) -> Vec<u8> {
    // Serializing ids, integers and options of them cannot fail.
    let mut out = serde_json::to_vec(header).unwrap_or_default();
    out.reserve(body.len().saturating_add(1));
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// Splits `header JSON ‖ \n ‖ body`.
pub(crate) fn decode_with_body<T: for<'de> Deserialize<'de>>(
    value: &[u8],
) -> Result<(T, Vec<u8>), String> {
    let search = value.get(..value.len().min(MAX_RECORD_HEADER.saturating_add(1))).unwrap_or(value);
    let split = search.iter().position(|&b| b == b'\n').ok_or("no header line")?;
    let header = serde_json::from_slice(value.get(..split).ok_or("truncated")?)
        .map_err(|e| e.to_string())?;
    let body = value.get(split.saturating_add(1)..).ok_or("truncated")?.to_vec();
    Ok((header, body))
}

/// Largest record header read back, in bytes.
const MAX_RECORD_HEADER: usize = 2048;

/// The topics subscribed to at one next hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicsRecord {
    pub topics: Vec<String>,
}

/// Most topics one subscription record may hold.
const MAX_STORED_TOPICS: usize = 10_000;

/// One peer's stored state, read back.
#[derive(Debug, Default)]
pub(crate) struct PeerRecords {
    pub stream: Option<StreamRecord>,
    pub frames: BTreeMap<u64, (FrameRecord, Vec<u8>)>,
    pub recv: Option<RecvRecord>,
    pub chunks: BTreeMap<u64, (ChunkRecord, Vec<u8>)>,
    pub topics: Vec<String>,
    /// Entries of the entity's mailbox, by number.
    pub mailbox: BTreeMap<u64, (MailboxRecord, Vec<u8>)>,
}

impl PeerRecords {
    /// Whether there is state of a peer of this node's own (a stream, frames, positions,
    /// chunks), beyond subscriptions and a mailbox.
    pub fn has_peer_state(&self) -> bool {
        self.stream.is_some()
            || !self.frames.is_empty()
            || self.recv.is_some()
            || !self.chunks.is_empty()
    }
}

/// Everything read back, by peer: what [`Node::restore`](crate::Node::restore) rebuilds the
/// node from.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    pub peers: BTreeMap<EntityId, PeerRecords>,
}

fn in_range(n: u64) -> bool {
    (1..=crate::canonical::MAX_SAFE_INTEGER).contains(&n)
}

impl Restored {
    /// Decodes and checks every entry.
    pub fn parse(
        entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<Self, StoreError> {
        let mut out = Restored::default();
        for (key, value) in entries {
            let corrupt = |reason: &str| StoreError::Corrupt {
                key: describe_key(&key),
                reason: reason.to_owned(),
            };
            let (k, entity, number) = split_key(&key).ok_or_else(|| corrupt("malformed key"))?;
            let entity = EntityId::new(entity).map_err(|_| corrupt("invalid entity id"))?;
            let peer = out.peers.entry(entity).or_default();
            match (k, number) {
                (kind::STREAM, None) => {
                    let r: StreamRecord =
                        serde_json::from_slice(&value).map_err(|e| corrupt(&e.to_string()))?;
                    if !in_range(r.epoch) || !in_range(r.next) {
                        return Err(corrupt("epoch and next must be in 1..=2^53-1"));
                    }
                    peer.stream = Some(r);
                }
                (kind::FRAME, Some(no)) => {
                    if !in_range(no) {
                        return Err(corrupt("frame number out of range"));
                    }
                    let frame = decode_with_body::<FrameRecord>(&value).map_err(|e| corrupt(&e))?;
                    peer.frames.insert(no, frame);
                }
                (kind::RECV, None) => {
                    let r: RecvRecord =
                        serde_json::from_slice(&value).map_err(|e| corrupt(&e.to_string()))?;
                    if r.epochs.iter().any(|&(e, n)| !in_range(e) || !in_range(n)) {
                        return Err(corrupt("epochs and positions must be in 1..=2^53-1"));
                    }
                    if r.epochs.len() > MAX_STORED_EPOCHS {
                        return Err(corrupt("too many epochs"));
                    }
                    peer.recv = Some(r);
                }
                (kind::CHUNK, Some(no)) => {
                    let chunk = decode_with_body::<ChunkRecord>(&value).map_err(|e| corrupt(&e))?;
                    if chunk.0.header.chunk.is_none() || chunk.0.header.no != no {
                        return Err(corrupt("not a chunk of the number in its key"));
                    }
                    peer.chunks.insert(no, chunk);
                }
                (kind::TOPICS, None) => {
                    let r: TopicsRecord =
                        serde_json::from_slice(&value).map_err(|e| corrupt(&e.to_string()))?;
                    if r.topics.len() > MAX_STORED_TOPICS
                        || !r.topics.iter().all(|t| crate::node::valid_topic(t))
                    {
                        return Err(corrupt("too many topics, or an invalid topic name"));
                    }
                    peer.topics = r.topics;
                }
                (kind::MAILBOX, Some(no)) => {
                    let entry =
                        decode_with_body::<MailboxRecord>(&value).map_err(|e| corrupt(&e))?;
                    if entry.1.is_empty() {
                        return Err(corrupt("an empty mailbox entry"));
                    }
                    peer.mailbox.insert(no, entry);
                }
                _ => return Err(corrupt("unknown record kind")),
            }
        }
        Ok(out)
    }
}

/// Most epochs one receive-position record may hold.
const MAX_STORED_EPOCHS: usize = 1024;

/// Checks entries read back from a store as [`Node::restore`](crate::Node::restore) would,
/// without a node: what `peerlink store check` reports. Returns how many entries of each kind
/// (by the key's first byte) it read.
pub fn validate(
    entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
) -> Result<BTreeMap<char, usize>, StoreError> {
    let mut counts = BTreeMap::new();
    let entries: Vec<_> = entries
        .into_iter()
        .inspect(|(k, _)| {
            let kind = k.first().map_or('?', |&b| char::from(b));
            let n = counts.entry(kind).or_insert(0usize);
            *n = n.saturating_add(1);
        })
        .collect();
    Restored::parse(entries)?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_into_their_parts() {
        let e = EntityId::new("alice").unwrap();
        let k = numbered_key(kind::FRAME, &e, 7);
        assert_eq!(split_key(&k), Some((b'f', "alice", Some(7))));
        assert_eq!(describe_key(&key_of(kind::STREAM, &e)), "s/alice");
        assert_eq!(split_key(b"f"), None);
        assert_eq!(split_key(b"falice\x00\x01\x02\x03"), None);
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        for (k, v) in [
            (b"x".to_vec(), b"".to_vec()),
            (b"salice\0".to_vec(), b"{".to_vec()),
            (b"salice\0".to_vec(), br#"{"epoch":0,"next":1}"#.to_vec()),
            (b"falice\0\0\0\0\0\0\0\0\x01".to_vec(), b"{}".to_vec()),
            (b"ralice\0".to_vec(), br#"{"epochs":[[1,0]]}"#.to_vec()),
            (b"q\0".to_vec(), b"".to_vec()),
        ] {
            assert!(matches!(Restored::parse([(k, v)]), Err(StoreError::Corrupt { .. })));
        }
    }
}
