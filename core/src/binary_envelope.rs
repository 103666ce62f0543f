//! A binary encoding of the envelope (issue 19, first step): the same eleven members as the JSON
//! wire form (spec §4), laid out as fixed-size fields and length-prefixed byte strings. It is not
//! wired to any transport or negotiation yet.
//!
//! An envelope decoded from either encoding is the same [`Envelope`] value, so its
//! [`signing_input`](Envelope::signing_input) and
//! [`associated_data`](Envelope::associated_data) (spec §6) are byte-identical whichever encoding
//! carried it: signatures and AEAD tags still cover canonical JSON, and a relay may translate a
//! frame from one encoding to the other without breaking either.
//!
//! # Layout (layout version 1)
//!
//! All integers are big-endian. Fields follow each other with no padding:
//!
//! | field | size | content |
//! |---|---|---|
//! | layout version | 1 | `0x01` ([`LAYOUT_VERSION`]); implies `version` = `"1.2"` |
//! | type | 1 | the message type's code (table below) |
//! | timestamp | 8 | u64, ms since the epoch, ≤ 2^53 − 1 |
//! | seq | 8 | u64, ≤ 2^53 − 1 |
//! | nonce | 12 | the 12 nonce bytes |
//! | flags | 1 | bit 0 [`FLAG_SESSION_ID`], bit 1 [`FLAG_RECIPIENT_ID`], bit 2 [`FLAG_SIGNATURE`], bit 3 [`FLAG_RAW_PAYLOAD`]; bits 4–7 are 0 |
//! | message_id | 1 + n | u8 length n, then the id's bytes |
//! | session_id | 1 + n | only if bit 0 is set: u8 length n, then the id's bytes |
//! | sender_id | 1 + n | u8 length n, then the id's bytes |
//! | recipient_id | 1 + n | only if bit 1 is set: u8 length n, then the id's bytes |
//! | signature | 64 | only if bit 2 is set: the Ed25519 signature |
//! | payload | 4 + n | u32 length n, then n bytes; the frame ends here |
//!
//! A flag that is clear means the member is `null`. The payload bytes are:
//! - with bit 3 set, the **raw ciphertext**: the envelope's payload is the JSON string whose
//!   (strict, unpadded) base64url decoding these bytes are. Bit 3 is set exactly when the type
//!   is a session message (spec §5, class "session") and its payload is a string that is
//!   canonical base64url (spec §8.2); it is refused on any other type;
//! - with bit 3 clear, the **canonical JSON** ([`crate::canonical`]) of the payload, byte for
//!   byte. A session message whose payload is a base64url string must use bit 3, so every
//!   envelope has exactly one binary encoding: `encode(decode(f)) == f` for every accepted `f`.
//!
//! Ids get the same syntax checks as in JSON (through [`MessageId::new`], [`SessionId::new`],
//! [`EntityId::new`]).
//!
//! # Type codes
//!
//! The high nibble is the class (spec §5): `0x0_` handshake, `0x1_` session, `0x2_` signed.
//! Every other byte is refused with `INVALID_MESSAGE`, as an unknown `type` string is.
//!
//! | code | type | code | type | code | type |
//! |---|---|---|---|---|---|
//! | `0x01` | `HANDSHAKE_INIT` | `0x10` | `PEER_MESSAGE` | `0x20` | `PING` |
//! | `0x02` | `HANDSHAKE_INIT_ACK` | `0x11` | `BROADCAST` | `0x21` | `PONG` |
//! | `0x03` | `CHALLENGE_RESPONSE` | `0x12` | `TASK_REQUEST` | `0x22` | `ERROR` |
//! | `0x04` | `SESSION_ESTABLISHED` | `0x13` | `TASK_RESPONSE` | `0x23` | `BYE` |
//! | `0x05` | `SESSION_CONFIRM` | `0x14` | `CHUNKED_MESSAGE` | `0x24` | `SESSION_RESUME` |
//! | `0x06` | `READY` | `0x15` | `ACK` | `0x25` | `SESSION_RESUMED` |
//! | | | `0x16` | `STATUS` | `0x26` | `SUBSCRIBE` |
//! | | | `0x17` | `CAPABILITY_EXCHANGE` | `0x27` | `UNSUBSCRIBE` |
//! | | | | | `0x28` | `PUBLISH` |
//!
//! # Errors
//!
//! [`decode`] fails like [`Envelope::decode`]: `MESSAGE_TOO_LARGE` for a frame over the limit
//! (checked before anything is read), `UNSUPPORTED_VERSION` when the first byte is present but
//! is not [`LAYOUT_VERSION`] (the layout version stands for the protocol version, the way
//! `version` does in JSON), and `INVALID_MESSAGE` for everything else: an empty or truncated frame,
//! bytes after the payload, reserved flag bits, bit 3 on a type that is not a session message, an
//! unknown type code, an id of the wrong syntax, a timestamp or seq above 2^53 − 1, a payload that
//! is not exactly canonical JSON of the values §3.1 allows, or a base64url session payload sent
//! as JSON.

use serde_json::Value;

use crate::canonical::{self, StrictValue};
use crate::encoding::{b64u, decode_b64u};
use crate::envelope::{Envelope, NONCE_LEN, PROTOCOL_VERSION, Payload};
use crate::error::ProtocolError;
use crate::identity::SIGNATURE_LEN;
use crate::ids::{EntityId, MessageId, SessionId};
use crate::message_type::{MessageClass, MessageType};
use crate::time::Timestamp;

/// The first byte of every frame of this layout. It implies protocol version `"1.2"`.
pub const LAYOUT_VERSION: u8 = 0x01;

/// Flags bit 0: `session_id` is present.
pub const FLAG_SESSION_ID: u8 = 0x01;
/// Flags bit 1: `recipient_id` is present.
pub const FLAG_RECIPIENT_ID: u8 = 0x02;
/// Flags bit 2: `signature` is present.
pub const FLAG_SIGNATURE: u8 = 0x04;
/// Flags bit 3: the payload bytes are the raw ciphertext of a session message, not JSON.
pub const FLAG_RAW_PAYLOAD: u8 = 0x08;

const KNOWN_FLAGS: u8 = FLAG_SESSION_ID | FLAG_RECIPIENT_ID | FLAG_SIGNATURE | FLAG_RAW_PAYLOAD;

/// Bytes of the fixed part: layout version, type, timestamp, seq, nonce, flags.
const FIXED_LEN: usize = 1 + 1 + 8 + 8 + NONCE_LEN + 1;

/// The one-byte code of a message type (the table in the module documentation).
pub const fn type_code(t: MessageType) -> u8 {
    match t {
        MessageType::HandshakeInit => 0x01,
        MessageType::HandshakeInitAck => 0x02,
        MessageType::ChallengeResponse => 0x03,
        MessageType::SessionEstablished => 0x04,
        MessageType::SessionConfirm => 0x05,
        MessageType::Ready => 0x06,
        MessageType::PeerMessage => 0x10,
        MessageType::Broadcast => 0x11,
        MessageType::TaskRequest => 0x12,
        MessageType::TaskResponse => 0x13,
        MessageType::ChunkedMessage => 0x14,
        MessageType::Ack => 0x15,
        MessageType::Status => 0x16,
        MessageType::CapabilityExchange => 0x17,
        MessageType::Ping => 0x20,
        MessageType::Pong => 0x21,
        MessageType::Error => 0x22,
        MessageType::Bye => 0x23,
        MessageType::SessionResume => 0x24,
        MessageType::SessionResumed => 0x25,
        MessageType::Subscribe => 0x26,
        MessageType::Unsubscribe => 0x27,
        MessageType::Publish => 0x28,
    }
}

/// The message type a code stands for, or `None` for a byte the table does not list.
pub const fn type_from_code(code: u8) -> Option<MessageType> {
    Some(match code {
        0x01 => MessageType::HandshakeInit,
        0x02 => MessageType::HandshakeInitAck,
        0x03 => MessageType::ChallengeResponse,
        0x04 => MessageType::SessionEstablished,
        0x05 => MessageType::SessionConfirm,
        0x06 => MessageType::Ready,
        0x10 => MessageType::PeerMessage,
        0x11 => MessageType::Broadcast,
        0x12 => MessageType::TaskRequest,
        0x13 => MessageType::TaskResponse,
        0x14 => MessageType::ChunkedMessage,
        0x15 => MessageType::Ack,
        0x16 => MessageType::Status,
        0x17 => MessageType::CapabilityExchange,
        0x20 => MessageType::Ping,
        0x21 => MessageType::Pong,
        0x22 => MessageType::Error,
        0x23 => MessageType::Bye,
        0x24 => MessageType::SessionResume,
        0x25 => MessageType::SessionResumed,
        0x26 => MessageType::Subscribe,
        0x27 => MessageType::Unsubscribe,
        0x28 => MessageType::Publish,
        _ => return None,
    })
}

/// The raw ciphertext bytes, when the payload travels raw (flags bit 3): a session message whose
/// payload is a canonical base64url string.
fn raw_payload(env: &Envelope) -> Option<Vec<u8>> {
    if env.message_type.class() != MessageClass::Session {
        return None;
    }
    match env.payload.value() {
        Value::String(s) => decode_b64u("payload", s).ok(),
        _ => None,
    }
}

fn write_id(out: &mut Vec<u8>, id: &str) {
    // Every id is 1 to 64 bytes (checked by its constructor), so the length always fits.
    out.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(id.as_bytes());
}

/// Encodes `env` in the binary layout.
///
/// The layout has no `version` field: layout version 1 stands for `"1.2"`, the only version an
/// [`Envelope`] from [`Envelope::decode`], from [`decode`] or from this crate's constructors
/// carries. An envelope with any other `version` string would decode as `"1.2"`; debug builds
/// assert against it. Likewise a timestamp or seq above 2^53 − 1, or a payload of more than
/// `u32::MAX` bytes (its length is then written as `u32::MAX`), gives a frame [`decode`]
/// refuses, as [`Envelope::decode`] would refuse its JSON. This function never panics in release
/// builds.
pub fn encode(env: &Envelope) -> Vec<u8> {
    debug_assert_eq!(env.version, PROTOCOL_VERSION, "binary layout 1 carries only version 1.2");
    let raw = raw_payload(env);
    let is_raw = raw.is_some();
    let payload = match raw {
        Some(bytes) => bytes,
        None => {
            let mut json = Vec::new();
            // A `Payload` is canonical by construction: this cannot fail.
            let _ = canonical::write_value(&mut json, env.payload.value());
            json
        }
    };
    // Fixed part, four ids of at most 1 + 64 bytes, signature, payload length and bytes.
    let mut out =
        Vec::with_capacity((FIXED_LEN + 4 * 65 + SIGNATURE_LEN + 4).saturating_add(payload.len()));
    out.push(LAYOUT_VERSION);
    out.push(type_code(env.message_type));
    out.extend_from_slice(&env.timestamp.as_unix_millis().to_be_bytes());
    out.extend_from_slice(&env.seq.to_be_bytes());
    out.extend_from_slice(&env.nonce);
    let mut flags = 0u8;
    if env.session_id.is_some() {
        flags |= FLAG_SESSION_ID;
    }
    if env.recipient_id.is_some() {
        flags |= FLAG_RECIPIENT_ID;
    }
    if env.signature.is_some() {
        flags |= FLAG_SIGNATURE;
    }
    if is_raw {
        flags |= FLAG_RAW_PAYLOAD;
    }
    out.push(flags);
    write_id(&mut out, env.message_id.as_str());
    if let Some(id) = &env.session_id {
        write_id(&mut out, id.as_str());
    }
    write_id(&mut out, env.sender_id.as_str());
    if let Some(id) = &env.recipient_id {
        write_id(&mut out, id.as_str());
    }
    if let Some(sig) = &env.signature {
        out.extend_from_slice(sig);
    }
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes one binary frame. The size limit is checked before anything is read; every failure is
/// a typed error carrying its code (see the module documentation for which), and no input can
/// make this panic.
pub fn decode(frame: &[u8], max_frame_bytes: usize) -> Result<Envelope, ProtocolError> {
    if frame.len() > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge { len: frame.len(), max: max_frame_bytes });
    }
    let (header, mut rest) = parse_header(frame)?;
    let len = usize::try_from(rest.u32("payload")?).map_err(|_| truncated("payload"))?;
    let bytes = rest.take(len, "payload")?;
    if !rest.0.is_empty() {
        return Err(ProtocolError::Malformed("bytes after the payload".to_owned()));
    }
    let payload = if header.raw_payload {
        Payload::string(b64u(bytes))
    } else {
        json_payload(header.message_type, bytes)?
    };
    Ok(Envelope {
        message_id: header.message_id,
        message_type: header.message_type,
        version: PROTOCOL_VERSION.to_owned(),
        timestamp: Timestamp::from_unix_millis(header.timestamp),
        seq: header.seq,
        session_id: header.session_id,
        sender_id: header.sender_id,
        recipient_id: header.recipient_id.map(|(id, _)| id),
        payload,
        nonce: header.nonce,
        signature: header.signature,
    })
}

/// The `recipient_id` of a binary frame, read from the routing header alone: the payload is
/// neither read nor checked, so this costs the same for any payload size. What a relay needs
/// to pick the next hop before (or instead of) decoding the whole frame.
///
/// Everything before the payload is checked as [`decode`] checks it (layout version, type code,
/// timestamp, seq, flags, every id's syntax, the signature's length), so `Some` is always a
/// syntactically valid entity id, and whenever [`decode`] accepts a frame this returns its
/// `recipient_id`. `None` means either no recipient (`null`: the frame is for the next hop
/// itself) or a malformed header; a relay that sees `None` decodes the frame to tell which. The
/// frame size limit is not checked here.
pub fn recipient(frame: &[u8]) -> Option<&str> {
    let (header, _) = parse_header(frame).ok()?;
    header.recipient_id.map(|(_, s)| s)
}

/// Everything before the payload, checked.
struct Header<'a> {
    message_type: MessageType,
    timestamp: u64,
    seq: u64,
    nonce: [u8; NONCE_LEN],
    raw_payload: bool,
    message_id: MessageId,
    session_id: Option<SessionId>,
    sender_id: EntityId,
    /// The id, and its text as it sits in the frame.
    recipient_id: Option<(EntityId, &'a str)>,
    signature: Option<[u8; SIGNATURE_LEN]>,
}

fn truncated(field: &'static str) -> ProtocolError {
    ProtocolError::InvalidField { field, reason: "truncated" }
}

fn bad_id(field: &'static str) -> ProtocolError {
    ProtocolError::InvalidField { field, reason: "not a valid id" }
}

/// Reads a frame front to back; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let (head, tail) = self.0.split_at_checked(n).ok_or_else(|| truncated(field))?;
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        let bytes = self.take(N, field)?;
        <[u8; N]>::try_from(bytes).map_err(|_| truncated(field))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        let [b] = self.array::<1>(field)?;
        Ok(b)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A u64 that must be at most 2^53 − 1.
    fn safe_u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        let n = u64::from_be_bytes(self.array(field)?);
        if n > canonical::MAX_SAFE_INTEGER {
            return Err(ProtocolError::InvalidField { field, reason: "above 2^53 - 1" });
        }
        Ok(n)
    }

    /// A u8-length-prefixed id, as text; its syntax is checked by the caller's constructor.
    fn id(&mut self, field: &'static str) -> Result<&'a str, ProtocolError> {
        let len = self.u8(field)?;
        let bytes = self.take(usize::from(len), field)?;
        std::str::from_utf8(bytes).map_err(|_| bad_id(field))
    }
}

fn parse_header(frame: &[u8]) -> Result<(Header<'_>, Reader<'_>), ProtocolError> {
    let mut r = Reader(frame);
    if r.u8("layout version")? != LAYOUT_VERSION {
        return Err(ProtocolError::UnsupportedVersion);
    }
    let message_type = type_from_code(r.u8("type")?)
        .ok_or(ProtocolError::InvalidField { field: "type", reason: "unknown type code" })?;
    let timestamp = r.safe_u64("timestamp")?;
    let seq = r.safe_u64("seq")?;
    let nonce = r.array::<NONCE_LEN>("nonce")?;
    let flags = r.u8("flags")?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(ProtocolError::InvalidField { field: "flags", reason: "reserved bit set" });
    }
    let raw_payload = flags & FLAG_RAW_PAYLOAD != 0;
    if raw_payload && message_type.class() != MessageClass::Session {
        return Err(ProtocolError::InvalidField {
            field: "flags",
            reason: "raw payload on a type that is not a session message",
        });
    }
    let message_id = MessageId::new(r.id("message_id")?).map_err(|_| bad_id("message_id"))?;
    let session_id = if flags & FLAG_SESSION_ID != 0 {
        Some(SessionId::new(r.id("session_id")?).map_err(|_| bad_id("session_id"))?)
    } else {
        None
    };
    let sender_id = EntityId::new(r.id("sender_id")?).map_err(|_| bad_id("sender_id"))?;
    let recipient_id = if flags & FLAG_RECIPIENT_ID != 0 {
        let text = r.id("recipient_id")?;
        Some((EntityId::new(text).map_err(|_| bad_id("recipient_id"))?, text))
    } else {
        None
    };
    let signature = if flags & FLAG_SIGNATURE != 0 {
        Some(r.array::<SIGNATURE_LEN>("signature")?)
    } else {
        None
    };
    let header = Header {
        message_type,
        timestamp,
        seq,
        nonce,
        raw_payload,
        message_id,
        session_id,
        sender_id,
        recipient_id,
        signature,
    };
    Ok((header, r))
}

/// A payload sent as JSON (flags bit 3 clear): it must be exactly the canonical JSON of a value
/// spec §3.1 allows, and must not be what bit 3 is for.
fn json_payload(message_type: MessageType, bytes: &[u8]) -> Result<Payload, ProtocolError> {
    let not_canonical =
        ProtocolError::InvalidField { field: "payload", reason: "not canonical JSON" };
    let StrictValue(value) =
        serde_json::from_slice(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    match canonical::to_vec(&value) {
        Ok(canon) if canon == bytes => {}
        _ => return Err(not_canonical),
    }
    if message_type.class() == MessageClass::Session
        && let Value::String(s) = &value
        && decode_b64u("payload", s).is_ok()
    {
        return Err(ProtocolError::InvalidField {
            field: "payload",
            reason: "base64url session payload must be sent raw",
        });
    }
    Ok(Payload::trusted(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use proptest::prelude::*;
    use serde_json::json;

    const MAX: usize = 1 << 20;
    const SAFE: u64 = canonical::MAX_SAFE_INTEGER;

    fn code(frame: &[u8]) -> ErrorCode {
        decode(frame, MAX).unwrap_err().code()
    }

    /// A session message with every optional member present and a raw payload.
    fn session_sample() -> Envelope {
        Envelope {
            message_id: MessageId::new("m1").unwrap(),
            message_type: MessageType::PeerMessage,
            version: PROTOCOL_VERSION.to_owned(),
            timestamp: Timestamp::from_unix_millis(1_700_000_000_000),
            seq: 7,
            session_id: Some(SessionId::new("sess_x").unwrap()),
            sender_id: EntityId::new("alice").unwrap(),
            recipient_id: Some(EntityId::new("bob.example").unwrap()),
            payload: Payload::string(b64u(&[0xde, 0xad, 0xbe, 0xef])),
            nonce: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            signature: Some([0x5a; SIGNATURE_LEN]),
        }
    }

    /// A signed message with no optional member and a JSON payload.
    fn signed_sample() -> Envelope {
        Envelope {
            message_id: MessageId::new("ping-1").unwrap(),
            message_type: MessageType::Ping,
            version: PROTOCOL_VERSION.to_owned(),
            timestamp: Timestamp::from_unix_millis(SAFE),
            seq: 0,
            session_id: None,
            sender_id: EntityId::new("relay").unwrap(),
            recipient_id: None,
            payload: Payload::new(json!({"z": [1, -2, null], "a": "é\n"})).unwrap(),
            nonce: [9; NONCE_LEN],
            signature: None,
        }
    }

    /// Builds frames field by field, including ones [`encode`] never writes.
    #[derive(Clone)]
    struct Raw {
        layout: u8,
        code: u8,
        timestamp: u64,
        seq: u64,
        nonce: [u8; NONCE_LEN],
        extra_flags: u8,
        raw: bool,
        message_id: Vec<u8>,
        session_id: Option<Vec<u8>>,
        sender_id: Vec<u8>,
        recipient_id: Option<Vec<u8>>,
        signature: Option<Vec<u8>>,
        payload: Vec<u8>,
    }

    impl Raw {
        fn of(env: &Envelope) -> Self {
            let raw = raw_payload(env);
            Raw {
                layout: LAYOUT_VERSION,
                code: type_code(env.message_type),
                timestamp: env.timestamp.as_unix_millis(),
                seq: env.seq,
                nonce: env.nonce,
                extra_flags: 0,
                raw: raw.is_some(),
                message_id: env.message_id.as_str().into(),
                session_id: env.session_id.as_ref().map(|s| s.as_str().into()),
                sender_id: env.sender_id.as_str().into(),
                recipient_id: env.recipient_id.as_ref().map(|s| s.as_str().into()),
                signature: env.signature.map(|s| s.to_vec()),
                payload: raw.unwrap_or_else(|| canonical::to_vec(env.payload.value()).unwrap()),
            }
        }

        fn build(&self) -> Vec<u8> {
            let mut out = vec![self.layout, self.code];
            out.extend_from_slice(&self.timestamp.to_be_bytes());
            out.extend_from_slice(&self.seq.to_be_bytes());
            out.extend_from_slice(&self.nonce);
            let flags = u8::from(self.session_id.is_some())
                | (u8::from(self.recipient_id.is_some()) << 1)
                | (u8::from(self.signature.is_some()) << 2)
                | (u8::from(self.raw) << 3)
                | self.extra_flags;
            out.push(flags);
            let id = |out: &mut Vec<u8>, b: &[u8]| {
                out.push(u8::try_from(b.len()).unwrap());
                out.extend_from_slice(b);
            };
            id(&mut out, &self.message_id);
            if let Some(s) = &self.session_id {
                id(&mut out, s);
            }
            id(&mut out, &self.sender_id);
            if let Some(s) = &self.recipient_id {
                id(&mut out, s);
            }
            if let Some(s) = &self.signature {
                out.extend_from_slice(s);
            }
            out.extend_from_slice(&u32::try_from(self.payload.len()).unwrap().to_be_bytes());
            out.extend_from_slice(&self.payload);
            out
        }
    }

    #[test]
    fn type_codes_are_a_bijection_grouped_by_class() {
        let mut seen = std::collections::BTreeSet::new();
        for t in MessageType::ALL {
            let c = type_code(t);
            assert!(seen.insert(c), "{t} shares code {c:#04x}");
            assert_eq!(type_from_code(c), Some(t));
            let class = match c >> 4 {
                0 => MessageClass::Handshake,
                1 => MessageClass::Session,
                2 => MessageClass::Signed,
                _ => panic!("{t}: code {c:#04x} outside the class ranges"),
            };
            assert_eq!(t.class(), class, "{t}");
        }
        for c in 0..=u8::MAX {
            if let Some(t) = type_from_code(c) {
                assert_eq!(type_code(t), c);
            }
        }
        assert_eq!((0..=u8::MAX).filter_map(type_from_code).count(), MessageType::ALL.len());
    }

    #[test]
    fn layout_is_byte_for_byte_as_documented() {
        let env = session_sample();
        let mut expected = vec![0x01, 0x10];
        expected.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        expected.push(0b1111);
        expected.extend_from_slice(b"\x02m1\x06sess_x\x05alice\x0bbob.example");
        expected.extend_from_slice(&[0x5a; 64]);
        expected.extend_from_slice(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(encode(&env), expected);
        assert_eq!(Raw::of(&env).build(), expected);
        assert_eq!(decode(&expected, MAX).unwrap(), env);
        assert_eq!(recipient(&expected), Some("bob.example"));

        let env = signed_sample();
        let mut expected = vec![0x01, 0x20];
        expected.extend_from_slice(&SAFE.to_be_bytes());
        expected.extend_from_slice(&[0; 8]);
        expected.extend_from_slice(&[9; 12]);
        expected.push(0);
        expected.extend_from_slice(b"\x06ping-1\x05relay");
        let json = "{\"a\":\"é\\n\",\"z\":[1,-2,null]}".as_bytes();
        expected.extend_from_slice(&u32::try_from(json.len()).unwrap().to_be_bytes());
        expected.extend_from_slice(json);
        assert_eq!(encode(&env), expected);
        assert_eq!(Raw::of(&env).build(), expected);
        assert_eq!(decode(&expected, MAX).unwrap(), env);
        assert_eq!(recipient(&expected), None);
    }

    #[test]
    fn session_payloads_that_are_not_base64url_travel_as_json() {
        for payload in [json!({"k": 1}), json!("a"), json!("AB=="), json!("+/8"), json!(null)] {
            let mut env = session_sample();
            env.payload = Payload::new(payload).unwrap();
            let frame = encode(&env);
            assert_eq!(frame.get(FIXED_LEN - 1).map(|f| f & FLAG_RAW_PAYLOAD), Some(0));
            assert_eq!(decode(&frame, MAX).unwrap(), env);
        }
        // A base64url string on a type that is not a session message stays JSON too.
        let mut env = signed_sample();
        env.payload = Payload::string(b64u(b"abc"));
        let frame = encode(&env);
        assert_eq!(frame.get(FIXED_LEN - 1), Some(&0));
        assert_eq!(decode(&frame, MAX).unwrap(), env);
        // An empty ciphertext is raw, zero bytes long.
        let mut env = session_sample();
        env.payload = Payload::string(String::new());
        let frame = encode(&env);
        assert!(frame.ends_with(&[0; 4]));
        assert_eq!(frame.get(FIXED_LEN - 1), Some(&0b1111));
        assert_eq!(decode(&frame, MAX).unwrap(), env);
    }

    #[test]
    fn size_limit_is_checked_first_and_is_inclusive() {
        let frame = encode(&session_sample());
        assert!(decode(&frame, frame.len()).is_ok());
        let err = decode(&frame, frame.len() - 1).unwrap_err();
        assert_eq!(err, ProtocolError::FrameTooLarge { len: frame.len(), max: frame.len() - 1 });
        assert_eq!(err.code(), ErrorCode::MessageTooLarge);
        // Even garbage over the limit is "too large", not "invalid".
        assert_eq!(decode(&[0xff; 10], 9).unwrap_err().code(), ErrorCode::MessageTooLarge);
    }

    #[test]
    fn layout_version_other_than_1_is_unsupported_version() {
        assert_eq!(code(&[]), ErrorCode::InvalidMessage, "empty frame");
        for layout in [0x00, 0x02, b'{', 0xff] {
            let mut raw = Raw::of(&session_sample());
            raw.layout = layout;
            assert_eq!(code(&raw.build()), ErrorCode::UnsupportedVersion, "{layout:#04x}");
            assert_eq!(recipient(&raw.build()), None);
        }
        // A JSON frame handed to the binary decoder.
        assert_eq!(code(&session_sample().encode()), ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn every_truncation_is_invalid() {
        for env in [session_sample(), signed_sample()] {
            let frame = encode(&env);
            for n in 0..frame.len() {
                assert_eq!(code(&frame[..n]), ErrorCode::InvalidMessage, "cut at {n}");
            }
        }
    }

    #[test]
    fn a_trailing_byte_is_invalid() {
        for env in [session_sample(), signed_sample()] {
            let mut frame = encode(&env);
            frame.push(0);
            assert_eq!(code(&frame), ErrorCode::InvalidMessage);
            // The routing header alone is still readable.
            assert_eq!(recipient(&frame), env.recipient_id.as_ref().map(EntityId::as_str));
        }
        // A payload length one short leaves a byte after the payload too.
        let mut raw = Raw::of(&session_sample());
        raw.payload.pop();
        let mut frame = raw.build();
        frame.push(0xef);
        assert_eq!(code(&frame), ErrorCode::InvalidMessage);
    }

    #[test]
    fn reserved_flag_bits_are_invalid() {
        for bit in 4..8 {
            let mut raw = Raw::of(&session_sample());
            raw.extra_flags = 1 << bit;
            assert_eq!(code(&raw.build()), ErrorCode::InvalidMessage, "bit {bit}");
            assert_eq!(recipient(&raw.build()), None);
        }
    }

    #[test]
    fn a_flag_without_its_field_is_invalid() {
        // Flags say "signature present" but the 64 bytes are missing: the payload length is read
        // from the wrong place and the frame no longer adds up.
        let raw = Raw::of(&session_sample());
        let mut without = raw.clone();
        without.signature = None;
        without.extra_flags = FLAG_SIGNATURE;
        assert_eq!(code(&without.build()), ErrorCode::InvalidMessage);
        // Flags say "no session id" but one is there: it is read as the sender id, and the rest
        // shifts.
        let mut frame = raw.build();
        frame[FIXED_LEN - 1] &= !FLAG_SESSION_ID;
        assert_eq!(code(&frame), ErrorCode::InvalidMessage);
    }

    #[test]
    fn unknown_type_codes_are_invalid() {
        for c in (0..=u8::MAX).filter(|c| type_from_code(*c).is_none()) {
            let mut raw = Raw::of(&signed_sample());
            raw.code = c;
            assert_eq!(code(&raw.build()), ErrorCode::InvalidMessage, "{c:#04x}");
            assert_eq!(recipient(&raw.build()), None);
        }
    }

    #[test]
    fn invalid_id_syntax_is_invalid() {
        type Setter = fn(&mut Raw, Vec<u8>);
        let fields: [(&'static str, Setter); 4] = [
            ("message_id", |r, v| r.message_id = v),
            ("session_id", |r, v| r.session_id = Some(v)),
            ("sender_id", |r, v| r.sender_id = v),
            ("recipient_id", |r, v| r.recipient_id = Some(v)),
        ];
        let mut bad: Vec<Vec<u8>> =
            vec![vec![], b"a b".to_vec(), b"a/b".to_vec(), vec![b'a'; 65], vec![0xff], vec![0]];
        bad.push("é".as_bytes().to_vec());
        for (field, set) in fields {
            for value in &bad {
                let mut raw = Raw::of(&session_sample());
                set(&mut raw, value.clone());
                assert_eq!(
                    decode(&raw.build(), MAX).unwrap_err(),
                    ProtocolError::InvalidField { field, reason: "not a valid id" },
                    "{field} = {value:?}"
                );
                assert_eq!(recipient(&raw.build()), None);
            }
            // The longest valid id is accepted.
            let mut raw = Raw::of(&session_sample());
            set(&mut raw, vec![b'a'; 64]);
            assert!(decode(&raw.build(), MAX).is_ok(), "{field}");
        }
        // A dot is allowed in entity ids only.
        for (field, set) in fields {
            let mut raw = Raw::of(&session_sample());
            set(&mut raw, b"a.b".to_vec());
            let entity = field == "sender_id" || field == "recipient_id";
            assert_eq!(decode(&raw.build(), MAX).is_ok(), entity, "{field}");
        }
    }

    #[test]
    fn timestamp_and_seq_above_2_pow_53_minus_1_are_invalid() {
        for n in [SAFE + 1, u64::MAX] {
            let mut raw = Raw::of(&signed_sample());
            raw.timestamp = n;
            assert_eq!(
                decode(&raw.build(), MAX).unwrap_err(),
                ProtocolError::InvalidField { field: "timestamp", reason: "above 2^53 - 1" }
            );
            let mut raw = Raw::of(&signed_sample());
            raw.seq = n;
            assert_eq!(
                decode(&raw.build(), MAX).unwrap_err(),
                ProtocolError::InvalidField { field: "seq", reason: "above 2^53 - 1" }
            );
        }
        let mut raw = Raw::of(&signed_sample());
        (raw.timestamp, raw.seq) = (SAFE, SAFE);
        assert!(decode(&raw.build(), MAX).is_ok());
    }

    #[test]
    fn non_canonical_json_payloads_are_invalid() {
        let cases: [&[u8]; 16] = [
            b"{\"z\":1,\"a\":2}", // members out of order
            b"{ }",               // whitespace
            b"{} ",               // trailing whitespace
            b" {}",               // leading whitespace
            b"{\"a\":1,\"a\":1}", // duplicate member
            b"1.0",               // fraction
            b"1e3",               // exponent
            b"-0",                // minus zero
            b"9007199254740992",  // out of range
            b"\"\\u0061\"",       // needless escape
            b"\"\\/\"",           // escaped solidus
            b"\"\\u001F\"",       // uppercase hex
            b"\"\xff\"",          // invalid UTF-8
            b"",                  // no value
            b"{}{}",              // two values
            b"\"\\ud800\"",       // unpaired surrogate
        ];
        for payload in cases {
            let mut raw = Raw::of(&signed_sample());
            raw.payload = payload.to_vec();
            assert_eq!(
                code(&raw.build()),
                ErrorCode::InvalidMessage,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        // Nesting: 32 levels are accepted, 33 refused, as in JSON.
        for (depth, ok) in [(32, true), (33, false)] {
            let mut raw = Raw::of(&signed_sample());
            raw.payload = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
            assert_eq!(decode(&raw.build(), MAX).is_ok(), ok, "depth {depth}");
        }
        // The canonical forms of the same values are accepted.
        for payload in [&b"{\"a\":2,\"z\":1}"[..], b"{}", b"1", b"\"a\"", b"\"/\"", b"\"\\u001f\""]
        {
            let mut raw = Raw::of(&signed_sample());
            raw.payload = payload.to_vec();
            assert!(decode(&raw.build(), MAX).is_ok(), "{}", String::from_utf8_lossy(payload));
        }
    }

    #[test]
    fn raw_payload_flag_on_a_non_session_type_is_invalid() {
        for t in MessageType::ALL.into_iter().filter(|t| t.class() != MessageClass::Session) {
            let mut raw = Raw::of(&session_sample());
            raw.code = type_code(t);
            assert!(raw.raw);
            assert_eq!(
                decode(&raw.build(), MAX).unwrap_err(),
                ProtocolError::InvalidField {
                    field: "flags",
                    reason: "raw payload on a type that is not a session message"
                },
                "{t}"
            );
        }
    }

    #[test]
    fn a_base64url_session_payload_sent_as_json_is_invalid() {
        // Only one encoding per envelope: the ciphertext string must travel raw.
        let mut raw = Raw::of(&session_sample());
        raw.raw = false;
        raw.payload = format!("\"{}\"", b64u(&[0xde, 0xad, 0xbe, 0xef])).into_bytes();
        assert_eq!(
            decode(&raw.build(), MAX).unwrap_err(),
            ProtocolError::InvalidField {
                field: "payload",
                reason: "base64url session payload must be sent raw"
            }
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let safe = i64::try_from(SAFE).unwrap();
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-safe..=safe).prop_map(Value::from),
            prop_oneof![Just(-safe), Just(safe), Just(0)].prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            prop::collection::vec(any::<u8>(), 0..24).prop_map(|b| Value::String(b64u(&b))),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn safe_u64() -> impl Strategy<Value = u64> {
        prop_oneof![0..=SAFE, Just(0), Just(SAFE)]
    }

    /// Arbitrary valid envelopes, built with the crate's own constructors. Session types mostly
    /// carry a base64url ciphertext; every type may also carry any JSON value.
    fn envelope() -> impl Strategy<Value = Envelope> {
        let ids = (
            "[A-Za-z0-9_-]{1,64}",
            prop::option::of("sess_[A-Za-z0-9_-]{1,59}|[A-Za-z0-9_-]{1,64}"),
            "[A-Za-z0-9._-]{1,64}",
            prop::option::of("[A-Za-z0-9._-]{1,64}"),
        );
        let bytes =
            (any::<[u8; NONCE_LEN]>(), prop::option::of(prop::collection::vec(any::<u8>(), 64)));
        let payload = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| Payload::string(b64u(&b))),
            json_value().prop_map(|v| Payload::new(v).unwrap()),
        ];
        (
            prop::sample::select(MessageType::ALL.to_vec()),
            ids,
            (safe_u64(), safe_u64()),
            bytes,
            payload,
        )
            .prop_map(|(t, (m, s, from, to), (ts, seq), (nonce, sig), payload)| Envelope {
                message_id: MessageId::new(m).unwrap(),
                message_type: t,
                version: PROTOCOL_VERSION.to_owned(),
                timestamp: Timestamp::from_unix_millis(ts),
                seq,
                session_id: s.map(|s| SessionId::new(s).unwrap()),
                sender_id: EntityId::new(from).unwrap(),
                recipient_id: to.map(|s| EntityId::new(s).unwrap()),
                payload,
                nonce,
                signature: sig.map(|s| <[u8; SIGNATURE_LEN]>::try_from(s).unwrap()),
            })
    }

    proptest! {
        /// Binary round trip, and the bytes signatures and AEAD tags cover do not change.
        #[test]
        fn round_trip_keeps_signing_input_and_associated_data(env in envelope()) {
            let frame = encode(&env);
            let back = decode(&frame, frame.len()).unwrap();
            prop_assert_eq!(&back, &env);
            prop_assert_eq!(back.signing_input(), env.signing_input());
            prop_assert_eq!(back.associated_data(), env.associated_data());
            prop_assert_eq!(back.encode(), env.encode());
            prop_assert_eq!(encode(&back), frame.clone());
            prop_assert_eq!(recipient(&frame), env.recipient_id.as_ref().map(EntityId::as_str));
            let raw = frame.get(FIXED_LEN - 1).is_some_and(|f| f & FLAG_RAW_PAYLOAD != 0);
            prop_assert_eq!(raw, raw_payload(&env).is_some());
        }

        /// JSON → binary → JSON gives the same wire bytes, for anything the JSON decoder accepts.
        #[test]
        fn json_to_binary_to_json_is_the_identity(env in envelope()) {
            let json = env.encode();
            let from_json = Envelope::decode(&json, MAX).unwrap();
            let binary = encode(&from_json);
            let back = decode(&binary, MAX).unwrap();
            prop_assert_eq!(back.encode(), json);
            prop_assert_eq!(back.signing_input(), from_json.signing_input());
            prop_assert_eq!(back.associated_data(), from_json.associated_data());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, 256);
            let _ = recipient(&bytes);
        }

        /// Changing, cutting or extending a valid frame never panics; whatever still decodes is
        /// the one encoding of what it decodes to, and `recipient` agrees with `decode`.
        #[test]
        fn mutated_frames_never_panic_and_stay_canonical(
            env in envelope(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in prop::option::of(any::<prop::sample::Index>()),
            tail in prop::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut frame = encode(&env);
            for (pos, byte) in edits {
                let i = pos.index(frame.len());
                frame[i] = byte;
            }
            if let Some(cut) = cut {
                frame.truncate(cut.index(frame.len()));
            }
            frame.extend_from_slice(&tail);
            match decode(&frame, MAX) {
                Ok(decoded) => {
                    prop_assert_eq!(encode(&decoded), frame.clone());
                    prop_assert_eq!(
                        recipient(&frame),
                        decoded.recipient_id.as_ref().map(EntityId::as_str)
                    );
                    prop_assert!(Envelope::decode(&decoded.encode(), MAX).is_ok());
                }
                Err(e) => prop_assert!(matches!(
                    e.code(),
                    ErrorCode::InvalidMessage | ErrorCode::UnsupportedVersion
                )),
            }
        }
    }
}
