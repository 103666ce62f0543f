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
//! | `r` ‖ peer ‖ `0x00` ‖ epoch (8 bytes, big-endian) | `{"next":N}` | the receive position of `peer`'s stream `epoch` |
//!
//! Entity ids never contain `0x00` (spec §3), so a key splits without ambiguity. Everything
//! read back is checked as hostile input: a malformed entry is a [`StoreError`], never a panic.
//!
//! [`Output::Persist`]: crate::Output::Persist

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::EntityId;

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
    /// A receive position.
    pub const RECV: u8 = b'r';
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

/// A receive position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecvRecord {
    pub next: u64,
}

/// Everything read back, sorted by kind and peer: what [`Node::restore`](crate::Node::restore)
/// rebuilds the node from.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    pub streams: BTreeMap<EntityId, StreamRecord>,
    pub frames: BTreeMap<EntityId, BTreeMap<u64, Vec<u8>>>,
    pub recv: BTreeMap<EntityId, BTreeMap<u64, RecvRecord>>,
}

impl Restored {
    /// Sorts and checks the entries' keys and small values; frame values are checked later,
    /// when they are decoded.
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
            match (k, number) {
                (kind::STREAM, None) => {
                    let r: StreamRecord =
                        serde_json::from_slice(&value).map_err(|e| corrupt(&e.to_string()))?;
                    if r.epoch == 0
                        || r.epoch > crate::canonical::MAX_SAFE_INTEGER
                        || r.next == 0
                        || r.next > crate::canonical::MAX_SAFE_INTEGER
                    {
                        return Err(corrupt("epoch and next must be in 1..=2^53-1"));
                    }
                    out.streams.insert(entity, r);
                }
                (kind::FRAME, Some(no)) => {
                    if no == 0 || no > crate::canonical::MAX_SAFE_INTEGER {
                        return Err(corrupt("frame number out of range"));
                    }
                    out.frames.entry(entity).or_default().insert(no, value);
                }
                (kind::RECV, Some(epoch)) => {
                    let r: RecvRecord =
                        serde_json::from_slice(&value).map_err(|e| corrupt(&e.to_string()))?;
                    if epoch == 0 || r.next == 0 || r.next > crate::canonical::MAX_SAFE_INTEGER {
                        return Err(corrupt("epoch and next must be in 1..=2^53-1"));
                    }
                    out.recv.entry(entity).or_default().insert(epoch, r);
                }
                _ => return Err(corrupt("unknown record kind")),
            }
        }
        Ok(out)
    }

    /// Decodes every frame, as restoring would.
    pub fn check_frames(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

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
            let kind = k.first().map_or('?', |&b| b as char);
            *counts.entry(kind).or_insert(0usize) += 1;
        })
        .collect();
    Restored::parse(entries)?.check_frames()?;
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
        assert_eq!(split_key(b"falice\0123"), None);
    }

    #[test]
    fn malformed_entries_are_errors_not_panics() {
        for (k, v) in [
            (b"x".to_vec(), b"".to_vec()),
            (b"salice\0".to_vec(), b"{".to_vec()),
            (b"salice\0".to_vec(), br#"{"epoch":0,"next":1}"#.to_vec()),
            (b"q\0".to_vec(), b"".to_vec()),
        ] {
            assert!(matches!(Restored::parse([(k, v)]), Err(StoreError::Corrupt { .. })));
        }
    }
}
