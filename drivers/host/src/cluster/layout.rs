//! What a cluster keeps in Redis and sends through it (spec §25.2): key and channel names, the
//! payloads of its channels, and the scripts that make a shared mailbox's bounds and a
//! presence record's withdrawal atomic. Everything read back from Redis is checked here: a
//! payload that does not parse is refused, never trusted.

use peerlink_core::EntityId;
use serde::{Deserialize, Serialize};

/// Longest presence publication, in bytes (two entity ids and their JSON).
pub const MAX_PRESENCE_PAYLOAD: usize = 512;

/// The names of one cluster's keys and channels, all under its prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// The layout of the cluster whose keys start with `prefix` (`peerlink` by default).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// `P:presence:E`: the name of the node holding `entity`'s newest link, with an expiry.
    pub fn presence_key(&self, entity: &EntityId) -> String {
        format!("{}:presence:{entity}", self.prefix)
    }

    /// The pattern matching every presence key, for `SCAN`.
    pub fn presence_pattern(&self) -> String {
        format!("{}:presence:*", self.prefix)
    }

    /// The entity a presence key is for, if it is one of this cluster's presence keys.
    pub fn entity_of_presence_key(&self, key: &[u8]) -> Option<EntityId> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix(":presence:")?;
        EntityId::new(rest).ok()
    }

    /// `P:presence`: the channel every presence change is published on.
    pub fn presence_channel(&self) -> String {
        format!("{}:presence", self.prefix)
    }

    /// `P:mail`: the channel on which a park says whose shared mailbox got something.
    pub fn mail_channel(&self) -> String {
        format!("{}:mail", self.prefix)
    }

    /// `P:node:N`: the channel the node named `node` receives forwarded frames on.
    pub fn node_channel(&self, node: &EntityId) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// `P:topic:T`: the channel publications on topic `T` cross between nodes on.
    pub fn topic_channel(&self, topic: &str) -> String {
        format!("{}:topic:{topic}", self.prefix)
    }

    /// The topic of a topic channel of this cluster.
    pub fn topic_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.prefix.as_str())?.strip_prefix(":topic:")
    }

    /// `P:mbox:{E}` and `P:mbox:{E}:bytes`: `entity`'s shared mailbox (a list of frames, oldest
    /// first) and its size in bytes. The braces are a Redis hash tag: both keys live together.
    pub fn mailbox_keys(&self, entity: &EntityId) -> [String; 2] {
        let list = format!("{}:mbox:{{{entity}}}", self.prefix);
        let bytes = format!("{list}:bytes");
        [list, bytes]
    }
}

/// A presence change, as published on the presence channel:
/// `{"entity": E, "node": N}`, or `"node": null` when `E` is linked to no node any more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceChange {
    /// The entity.
    pub entity: EntityId,
    /// The node holding its newest link, if any.
    pub node: Option<EntityId>,
}

impl PresenceChange {
    /// The publication's bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A publication read back; `None` if it is not one.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        if payload.len() > MAX_PRESENCE_PAYLOAD {
            return None;
        }
        serde_json::from_slice(payload).ok()
    }
}

/// A frame forwarded to a node: `TO`, a line feed, then the envelope's bytes, unopened. A
/// publication crossing between nodes has the same form, its first line the name of the node
/// it comes from.
pub fn encode_forward(to: &EntityId, frame: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(to.as_str().len().saturating_add(1).saturating_add(frame.len()));
    out.extend_from_slice(to.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(frame);
    out
}

/// A forwarded frame (or a publication) read back: its recipient (or origin) and envelope;
/// `None` if it is not one.
pub fn decode_forward(payload: &[u8]) -> Option<(EntityId, &[u8])> {
    let at = payload.iter().position(|&b| b == b'\n')?;
    let (to, rest) = payload.split_at(at);
    let to = EntityId::new(std::str::from_utf8(to).ok()?).ok()?;
    Some((to, rest.get(1..)?))
}

/// Appends a frame to a shared mailbox unless that would pass its bounds, and says so on the
/// mail channel (the node the entity is linked to, or polls, drains it at once).
/// `KEYS`: the mailbox's two keys; `ARGV`: the frame, the most frames, the most bytes, the
/// expiry in milliseconds, the mail channel, the entity. Answers 1 when kept, 0 when the
/// mailbox is full. Both keys' expiry is renewed: a mailbox nobody drains vanishes one expiry
/// after its newest frame.
pub const PARK_SCRIPT: &str = r"
local n = redis.call('LLEN', KEYS[1])
local b = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if n >= tonumber(ARGV[2]) or b + #ARGV[1] > tonumber(ARGV[3]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('INCRBY', KEYS[2], #ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
";

/// Takes every frame out of a shared mailbox, oldest first, at once (two nodes draining the
/// same mailbox each get different frames). `KEYS`: the mailbox's two keys.
pub const DRAIN_SCRIPT: &str = r"
local frames = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1], KEYS[2])
return frames
";

/// Removes a presence record if it still names this node, and publishes the withdrawal.
/// `KEYS`: the presence key; `ARGV`: this node's name, the presence channel, the publication.
pub const WITHDRAW_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EntityId {
        EntityId::new(s).unwrap()
    }

    #[test]
    fn names_are_under_the_prefix() {
        let l = Layout::new("pl");
        assert_eq!(l.presence_key(&id("alice")), "pl:presence:alice");
        assert_eq!(l.presence_channel(), "pl:presence");
        assert_eq!(l.mail_channel(), "pl:mail");
        assert_eq!(l.node_channel(&id("n-1")), "pl:node:n-1");
        assert_eq!(l.mailbox_keys(&id("bob")), ["pl:mbox:{bob}", "pl:mbox:{bob}:bytes"]);
        assert_eq!(l.topic_channel("a/b.c"), "pl:topic:a/b.c");
        assert_eq!(l.topic_of_channel("pl:topic:a/b.c"), Some("a/b.c"));
        assert_eq!(l.topic_of_channel("pl:node:n1"), None);
        assert_eq!(l.entity_of_presence_key(b"pl:presence:alice"), Some(id("alice")));
        for junk in [&b"pl:presence:"[..], b"pl:presence:a b", b"other:presence:x", &[0xff; 9]] {
            assert_eq!(l.entity_of_presence_key(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn payloads_round_trip_and_junk_is_refused() {
        let change = PresenceChange { entity: id("alice"), node: Some(id("n1")) };
        assert_eq!(PresenceChange::decode(&change.encode()), Some(change));
        let gone = PresenceChange { entity: id("alice"), node: None };
        assert_eq!(gone.encode(), br#"{"entity":"alice","node":null}"#);
        for junk in [
            &br#"{"entity":"a b","node":null}"#[..],
            br#"{"node":"n1"}"#,
            br#"{"entity":"alice","node":null,"x":1}"#,
            b"",
            &[b' '; MAX_PRESENCE_PAYLOAD + 1],
        ] {
            assert_eq!(PresenceChange::decode(junk), None, "{junk:?}");
        }
        let payload = encode_forward(&id("bob"), b"{\"x\":\"a\nb\"}");
        assert_eq!(decode_forward(&payload), Some((id("bob"), &b"{\"x\":\"a\nb\"}"[..])));
        for junk in [&b"bob"[..], b"\n{}", b"b o b\n{}", &[0xff, b'\n']] {
            assert_eq!(decode_forward(junk), None, "{junk:?}");
        }
    }
}
