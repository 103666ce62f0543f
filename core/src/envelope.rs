//! The envelope: the one JSON object every peerlink message travels in, on WebSocket and HTTP.
//!
//! ```json
//! {"message_id":"…","nonce":"…","payload":…,"recipient_id":"bob","sender_id":"alice",
//!  "seq":1,"session_id":"sess_…","signature":"…","timestamp":1700000000000,
//!  "type":"PEER_MESSAGE","version":"1.2"}
//! ```
//!
//! All eleven members are always present (`null` where a value is absent) and no other member is
//! allowed. Three byte strings are derived from an envelope by canonical JSON
//! ([`crate::canonical`]), each spelled out in spec §"Canonical bytes":
//! - the **wire form** ([`Envelope::encode`]): all members;
//! - the **signing input** ([`Envelope::signing_input`]): a context string, then all members but
//!   `signature`;
//! - the **associated data** ([`Envelope::associated_data`]): a context string, then all members
//!   but `payload` and `signature`.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::canonical::{self, StrictValue};
use crate::encoding::{b64u, b64u_into, decode_b64u, decode_b64u_array};
use crate::error::{ProtocolError, UsageError};
use crate::identity::{Identity, PublicKey, SIGNATURE_LEN};
use crate::ids::{EntityId, MessageId, SessionId};
use crate::message_type::MessageType;
use crate::time::Timestamp;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: &str = "1.2";

/// Prefix of every signing input.
pub const SIGNATURE_CONTEXT: &[u8] = b"peerlink v1 envelope signature\n";

/// Prefix of every AEAD associated data.
pub const AAD_CONTEXT: &[u8] = b"peerlink v1 envelope aad\n";

/// Length of the `nonce` field's value in bytes.
pub const NONCE_LEN: usize = 12;

/// An envelope's `payload`: a JSON value that has exactly one canonical form (integers only,
/// within ±(2^53 - 1)), or a session message's ciphertext held as raw bytes.
///
/// The two forms are one value: a ciphertext payload *is* the JSON string of its unpadded
/// base64url encoding (spec §8.2), and it writes, signs, authenticates and compares as that
/// string. Holding the bytes raw spares the base64 round trip when a frame travels in the binary
/// encoding ([`crate::binary_envelope`]), which carries them as they are.
#[derive(Clone)]
pub struct Payload(Repr);

#[derive(Clone)]
enum Repr {
    Json(Value),
    /// The bytes, and their JSON string once [`Payload::value`] asked for it.
    Ciphertext(Vec<u8>, std::sync::OnceLock<Value>),
}

impl Payload {
    /// Checks that `value` can be canonicalized.
    pub fn new(value: Value) -> Result<Self, UsageError> {
        canonical::to_vec(&value).map_err(|e| match e {
            canonical::CanonicalError::Fractional => UsageError::NotCanonical("fractional number"),
            canonical::CanonicalError::OutOfRange => {
                UsageError::NotCanonical("integer out of range")
            }
        })?;
        Ok(Self(Repr::Json(value)))
    }

    /// A value built by this crate that is canonical by construction.
    pub(crate) fn trusted(value: Value) -> Self {
        debug_assert!(canonical::to_vec(&value).is_ok(), "non-canonical internal payload");
        Self(Repr::Json(value))
    }

    /// A JSON string payload.
    pub fn string(s: String) -> Self {
        Self(Repr::Json(Value::String(s)))
    }

    /// A session message's ciphertext: the JSON string of its base64url encoding, held raw.
    pub fn ciphertext(bytes: Vec<u8>) -> Self {
        Self(Repr::Ciphertext(bytes, std::sync::OnceLock::new()))
    }

    /// The JSON value; a ciphertext payload is encoded to its base64url string the first time
    /// (frames never need it: they write, sign and decrypt from the bytes).
    pub fn value(&self) -> &Value {
        match &self.0 {
            Repr::Json(v) => v,
            Repr::Ciphertext(bytes, json) => json.get_or_init(|| Value::String(b64u(bytes))),
        }
    }

    /// The ciphertext bytes of a session message's payload: the bytes themselves, or the strict
    /// base64url decoding of a JSON string. Anything else is `INVALID_MESSAGE`.
    pub fn ciphertext_bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>, ProtocolError> {
        match &self.0 {
            Repr::Ciphertext(bytes, _) => Ok(std::borrow::Cow::Borrowed(bytes)),
            Repr::Json(Value::String(s)) => decode_b64u("payload", s).map(std::borrow::Cow::Owned),
            Repr::Json(_) => Err(ProtocolError::InvalidField {
                field: "payload",
                reason: "session payload must be a base64url string",
            }),
        }
    }

    /// The raw bytes, if this payload is held as ciphertext.
    pub(crate) fn raw(&self) -> Option<&[u8]> {
        match &self.0 {
            Repr::Ciphertext(bytes, _) => Some(bytes),
            Repr::Json(_) => None,
        }
    }

    /// The JSON value, if this payload is held as JSON.
    pub(crate) fn json(&self) -> Option<&Value> {
        match &self.0 {
            Repr::Json(v) => Some(v),
            Repr::Ciphertext(..) => None,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match &self.0 {
            // Checked at construction; cannot fail.
            Repr::Json(v) => {
                let _ = canonical::write_value(out, v);
            }
            // The base64url alphabet needs no escaping in a JSON string.
            Repr::Ciphertext(bytes, _) => {
                out.push(b'"');
                b64u_into(out, bytes);
                out.push(b'"');
            }
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Json(a), Repr::Json(b)) => a == b,
            (Repr::Ciphertext(a, _), Repr::Ciphertext(b, _)) => a == b,
            (Repr::Ciphertext(bytes, _), Repr::Json(v))
            | (Repr::Json(v), Repr::Ciphertext(bytes, _)) => {
                v.as_str().is_some_and(|s| decode_b64u("payload", s).is_ok_and(|d| d == *bytes))
            }
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Payloads may be large; show the size of their JSON, not the content.
        let len = match &self.0 {
            Repr::Ciphertext(bytes, _) => {
                base64::encoded_len(bytes.len(), false).unwrap_or(usize::MAX).saturating_add(2)
            }
            Repr::Json(_) => {
                let mut out = Vec::new();
                self.write(&mut out);
                out.len()
            }
        };
        write!(f, "Payload({len} bytes)")
    }
}

/// One peerlink message (spec §"Envelope").
#[derive(Clone, PartialEq)]
pub struct Envelope {
    /// Names the message across re-sends.
    pub message_id: MessageId,
    /// What the message is.
    pub message_type: MessageType,
    /// Protocol version, `"1.2"`.
    pub version: String,
    /// Sender's time of sending.
    pub timestamp: Timestamp,
    /// Handshake step, session sequence number, or 0 for signed session-less messages.
    pub seq: u64,
    /// The session this message belongs to, if any.
    pub session_id: Option<SessionId>,
    /// Who sent it.
    pub sender_id: EntityId,
    /// Who it is for; `None` for messages to the next hop itself.
    pub recipient_id: Option<EntityId>,
    /// The content; for session messages, the base64url ciphertext as a JSON string.
    pub payload: Payload,
    /// 12 bytes: random for handshake and signed messages, the AEAD nonce for session messages.
    pub nonce: [u8; NONCE_LEN],
    /// Ed25519 signature over the signing input, if signed.
    pub signature: Option<[u8; SIGNATURE_LEN]>,
    /// The key this envelope's signature was found valid for, off the node's task
    /// ([`crate::node::Work`]); never on the wire, never compared.
    pub(crate) verified: Verified,
}

/// The key an envelope's signature was already verified with, so that [`Envelope::verify`] with
/// that key does not verify again: set only by the node, from the result of a
/// [`crate::node::Work`] that verified this very envelope. Equal to every other value: it is a
/// cache, not part of the message.
#[derive(Clone, Copy, Default)]
pub(crate) struct Verified(Option<PublicKey>);

impl Verified {
    /// Nothing verified yet.
    pub(crate) const NO: Verified = Verified(None);
}

impl PartialEq for Verified {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("type", &self.message_type)
            .field("message_id", &self.message_id)
            .field("seq", &self.seq)
            .field("session_id", &self.session_id)
            .field("sender_id", &self.sender_id)
            .field("recipient_id", &self.recipient_id)
            .field("timestamp", &self.timestamp)
            .field("payload", &self.payload)
            .field("signed", &self.signature.is_some())
            .finish()
    }
}

fn nullable<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// The envelope exactly as it may appear on the wire, before semantic checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEnvelope {
    message_id: MessageId,
    #[serde(rename = "type")]
    message_type: MessageType,
    version: String,
    timestamp: u64,
    seq: u64,
    #[serde(deserialize_with = "nullable")]
    session_id: Option<SessionId>,
    sender_id: EntityId,
    #[serde(deserialize_with = "nullable")]
    recipient_id: Option<EntityId>,
    payload: StrictValue,
    nonce: String,
    #[serde(deserialize_with = "nullable")]
    signature: Option<String>,
}

impl Envelope {
    /// Decodes one frame. The size limit is checked before any parsing; every failure is a typed
    /// error carrying its code, and no input can make this panic.
    pub fn decode(frame: &[u8], max_frame_bytes: usize) -> Result<Self, ProtocolError> {
        if frame.len() > max_frame_bytes {
            return Err(ProtocolError::FrameTooLarge { len: frame.len(), max: max_frame_bytes });
        }
        let wire: WireEnvelope =
            serde_json::from_slice(frame).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if wire.version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion);
        }
        for (field, n) in [("timestamp", wire.timestamp), ("seq", wire.seq)] {
            if n > canonical::MAX_SAFE_INTEGER {
                return Err(ProtocolError::InvalidField { field, reason: "above 2^53 - 1" });
            }
        }
        let signature = match wire.signature {
            Some(s) => Some(decode_b64u_array::<SIGNATURE_LEN>("signature", &s)?),
            None => None,
        };
        Ok(Self {
            message_id: wire.message_id,
            message_type: wire.message_type,
            version: wire.version,
            timestamp: Timestamp::from_unix_millis(wire.timestamp),
            seq: wire.seq,
            session_id: wire.session_id,
            sender_id: wire.sender_id,
            recipient_id: wire.recipient_id,
            payload: Payload(Repr::Json(wire.payload.0)),
            nonce: decode_b64u_array::<NONCE_LEN>("nonce", &wire.nonce)?,
            signature,
            verified: Verified::NO,
        })
    }

    /// The wire form: canonical JSON of all eleven members.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_canonical(&mut out, true, true);
        out
    }

    /// The bytes an Ed25519 signature covers: [`SIGNATURE_CONTEXT`] then the canonical JSON of
    /// every member except `signature`.
    pub fn signing_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(SIGNATURE_CONTEXT);
        self.write_canonical(&mut out, true, false);
        out
    }

    /// The AEAD associated data: [`AAD_CONTEXT`] then the canonical JSON of every member except
    /// `payload` and `signature`.
    pub fn associated_data(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(AAD_CONTEXT);
        self.write_canonical(&mut out, false, false);
        out
    }

    /// Signs the envelope with `identity`, replacing any previous signature.
    pub fn sign(&mut self, identity: &Identity) {
        self.signature = None;
        self.verified = Verified::NO;
        self.signature = Some(identity.sign(&self.signing_input()));
    }

    /// Verifies the envelope's signature with `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), ProtocolError> {
        let sig = self.signature.as_ref().ok_or(ProtocolError::MissingSignature)?;
        if self.verified.0.as_ref() == Some(key) {
            return Ok(());
        }
        key.verify(&self.signing_input(), sig)
    }

    /// Records that this envelope's signature is valid for `key` (a verification done
    /// elsewhere, [`crate::node::Work`]): [`Envelope::verify`] with `key` then succeeds at once.
    pub(crate) fn mark_verified(&mut self, key: PublicKey) {
        self.verified = Verified(Some(key));
    }

    /// Rejects a timestamp further than `max_skew` from `now`.
    pub fn check_timestamp(
        &self,
        now: Timestamp,
        max_skew: std::time::Duration,
    ) -> Result<(), ProtocolError> {
        let skew = self.timestamp.abs_diff(now);
        if skew > max_skew {
            let skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
            return Err(ProtocolError::StaleTimestamp { skew_ms });
        }
        Ok(())
    }

    /// Writes members in canonical (sorted) order. Keys are ASCII, so byte order is UTF-16 order:
    /// message_id, nonce, payload, recipient_id, sender_id, seq, session_id, signature,
    /// timestamp, type, version.
    fn write_canonical(&self, out: &mut Vec<u8>, with_payload: bool, with_signature: bool) {
        out.extend_from_slice(b"{\"message_id\":");
        canonical::write_string(out, self.message_id.as_str());
        out.extend_from_slice(b",\"nonce\":");
        canonical::write_string(out, &b64u(&self.nonce));
        if with_payload {
            out.extend_from_slice(b",\"payload\":");
            self.payload.write(out);
        }
        out.extend_from_slice(b",\"recipient_id\":");
        write_opt(out, self.recipient_id.as_ref().map(EntityId::as_str));
        out.extend_from_slice(b",\"sender_id\":");
        canonical::write_string(out, self.sender_id.as_str());
        out.extend_from_slice(b",\"seq\":");
        canonical::write_u64(out, self.seq);
        out.extend_from_slice(b",\"session_id\":");
        write_opt(out, self.session_id.as_ref().map(SessionId::as_str));
        if with_signature {
            out.extend_from_slice(b",\"signature\":");
            let sig = self.signature.as_ref().map(|s| b64u(s));
            write_opt(out, sig.as_deref());
        }
        out.extend_from_slice(b",\"timestamp\":");
        canonical::write_u64(out, self.timestamp.as_unix_millis());
        out.extend_from_slice(b",\"type\":");
        canonical::write_string(out, self.message_type.as_str());
        out.extend_from_slice(b",\"version\":");
        canonical::write_string(out, &self.version);
        out.push(b'}');
    }
}

fn write_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => canonical::write_string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use serde_json::json;

    const MAX: usize = 1 << 20;

    fn sample() -> Envelope {
        Envelope {
            message_id: MessageId::new("m1").unwrap(),
            message_type: MessageType::Ping,
            version: PROTOCOL_VERSION.to_owned(),
            timestamp: Timestamp::from_unix_millis(1_700_000_000_000),
            seq: 0,
            session_id: None,
            sender_id: EntityId::new("alice").unwrap(),
            recipient_id: Some(EntityId::new("bob").unwrap()),
            payload: Payload::new(json!({"z": 1, "a": ["x"]})).unwrap(),
            nonce: [7; NONCE_LEN],
            signature: None,
            verified: crate::envelope::Verified::NO,
        }
    }

    #[test]
    fn wire_form_is_canonical_and_round_trips() {
        let mut env = sample();
        let id = Identity::generate(env.sender_id.clone(), &mut ChaCha20Rng::seed_from_u64(1));
        env.sign(&id);
        let bytes = env.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"message_id":"m1","nonce":"BwcHBwcHBwcHBwcH","payload":{"a":["x"],"z":1},"recipient_id":"bob","sender_id":"alice","seq":0,"session_id":null,"signature":""#), "{text}");
        assert!(text.ends_with(r#","timestamp":1700000000000,"type":"PING","version":"1.2"}"#));
        // The wire form equals generic JCS of the same object.
        let generic: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(canonical::to_vec(&generic).unwrap(), bytes);
        let back = Envelope::decode(&bytes, MAX).unwrap();
        assert_eq!(back, env);
        assert!(back.verify(&id.public_key()).is_ok());
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let id =
            Identity::generate(EntityId::new("alice").unwrap(), &mut ChaCha20Rng::seed_from_u64(1));
        let mut env = sample();
        env.sign(&id);
        let mut altered = env.clone();
        altered.recipient_id = Some(EntityId::new("carol").unwrap());
        assert_eq!(altered.verify(&id.public_key()), Err(ProtocolError::BadSignature));
        let mut altered = env.clone();
        altered.seq = 1;
        assert_eq!(altered.verify(&id.public_key()), Err(ProtocolError::BadSignature));
        let mut unsigned = env;
        unsigned.signature = None;
        assert_eq!(unsigned.verify(&id.public_key()), Err(ProtocolError::MissingSignature));
    }

    #[test]
    fn rejections_carry_codes() {
        use crate::error::ErrorCode::*;
        let good = String::from_utf8(sample().encode()).unwrap();
        let code = |s: &str| Envelope::decode(s.as_bytes(), MAX).unwrap_err().code();
        assert_eq!(
            Envelope::decode(&vec![b' '; MAX + 1], MAX).unwrap_err().code(),
            MessageTooLarge
        );
        assert_eq!(code("{"), InvalidMessage);
        assert_eq!(code(&good.replace("\"1.2\"", "\"2.0\"")), UnsupportedVersion);
        assert_eq!(code(&good.replace("PING", "HELLO")), InvalidMessage);
        assert_eq!(code(&good.replace("\"seq\":0", "\"seq\":9007199254740992")), InvalidMessage);
        assert_eq!(code(&good.replace("\"seq\":0", "\"seq\":-1")), InvalidMessage);
        assert_eq!(code(&good.replace(",\"session_id\":null", "")), InvalidMessage);
        assert_eq!(
            code(&good.replace("{\"message_id\"", "{\"extra\":1,\"message_id\"")),
            InvalidMessage
        );
        assert_eq!(code(&good.replace("BwcHBwcHBwcHBwcH", "BwcH")), InvalidMessage);
        assert_eq!(code(&good.replace("\"z\":1", "\"z\":1.5")), InvalidMessage);
        assert_eq!(code(&good.replace("\"z\":1", "\"z\":1,\"z\":2")), InvalidMessage);
        assert_eq!(code(&format!("{good} x")), InvalidMessage);
        assert_eq!(code(&good.replace("\"alice\"", "\"al ice\"")), InvalidMessage);
        assert!(Payload::new(json!({"f": 0.5})).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Envelope::decode(&bytes, 256);
        }

        /// Mutating one byte of a valid frame either fails to decode or decodes to an envelope
        /// whose signature no longer verifies, or to the same envelope (a no-op change).
        #[test]
        fn single_byte_mutations_are_caught(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let id = Identity::generate(EntityId::new("alice").unwrap(), &mut ChaCha20Rng::seed_from_u64(1));
            let mut env = sample();
            env.sign(&id);
            let mut bytes = env.encode();
            let i = pos.index(bytes.len());
            bytes[i] = byte;
            if let Ok(decoded) = Envelope::decode(&bytes, MAX)
                && decoded != env
            {
                prop_assert!(decoded.verify(&id.public_key()).is_err());
            }
        }
    }
}
