//! The binary envelope (spec §27.5): the same eleven members as the JSON wire form (spec §4),
//! laid out as fixed-size fields and length-prefixed byte strings. WebSocket links that agree on
//! it carry it in binary messages ([`crate::wire`] has the negotiation and translation).
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
//! | layout version | 1 | `0x01` ([`LAYOUT_VERSION`](crate::binary_envelope::LAYOUT_VERSION)); implies `version` = `"1.2"` |
//! | type | 1 | the message type's code (table below) |
//! | timestamp | 8 | u64, ms since the epoch, ≤ 2^53 − 1 |
//! | seq | 8 | u64, ≤ 2^53 − 1 |
//! | nonce | 12 | the 12 nonce bytes |
//! | flags | 1 | bit 0 [`FLAG_SESSION_ID`](crate::binary_envelope::FLAG_SESSION_ID), bit 1 [`FLAG_RECIPIENT_ID`](crate::binary_envelope::FLAG_RECIPIENT_ID), bit 2 [`FLAG_SIGNATURE`](crate::binary_envelope::FLAG_SIGNATURE), bit 3 [`FLAG_RAW_PAYLOAD`](crate::binary_envelope::FLAG_RAW_PAYLOAD); bits 4–7 are 0 |
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
//! [`decode`](crate::binary_envelope::decode) fails like [`Envelope::decode`]: `MESSAGE_TOO_LARGE` for a frame over the limit
//! (checked before anything is read), and `INVALID_MESSAGE` for everything else (spec §27.6): a
//! first byte other than [`LAYOUT_VERSION`](crate::binary_envelope::LAYOUT_VERSION) (another layout would come with another subprotocol,
//! so on a link of this one it is simply not a binary envelope), an empty or truncated frame,
//! bytes after the payload, reserved flag bits, bit 3 on a type that is not a session message, an
//! unknown type code, an id of the wrong syntax, a timestamp or seq above 2^53 − 1, a payload that
//! is not exactly canonical JSON of the values §3.1 allows, or a base64url session payload sent
//! as JSON.

use serde_json::Value;

use crate::canonical::{self, StrictValue};
use crate::encoding::decode_b64u;
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
fn raw_payload(env: &Envelope) -> Option<std::borrow::Cow<'_, [u8]>> {
    if env.message_type.class() != MessageClass::Session {
        return None;
    }
    if let Some(bytes) = env.payload.raw() {
        return Some(std::borrow::Cow::Borrowed(bytes));
    }
    match env.payload.json() {
        Some(Value::String(s)) => decode_b64u("payload", s).ok().map(std::borrow::Cow::Owned),
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
            std::borrow::Cow::Owned(json)
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
        Payload::ciphertext(bytes.to_vec())
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
        verified: crate::envelope::Verified::NO,
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

/// The members a relay routes by: what [`head`] reads from a binary frame, or what
/// [`Head::of`] copies from a decoded envelope of either encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The message type.
    pub message_type: MessageType,
    /// The message id.
    pub message_id: MessageId,
    /// The session, if any.
    pub session_id: Option<SessionId>,
    /// The sender.
    pub sender_id: EntityId,
    /// The recipient; `None` for the next hop itself.
    pub recipient_id: Option<EntityId>,
}

impl Head {
    /// The routing members of a decoded envelope.
    pub fn of(env: &Envelope) -> Self {
        Self {
            message_type: env.message_type,
            message_id: env.message_id.clone(),
            session_id: env.session_id.clone(),
            sender_id: env.sender_id.clone(),
            recipient_id: env.recipient_id.clone(),
        }
    }
}

/// The routing header of a binary frame, without reading the payload's bytes: the frame size
/// limit, everything before the payload (as [`decode`] checks it) and that the payload's length
/// ends the frame exactly. A relay forwards a frame for another entity on this alone (spec
/// §27.4); the recipient decodes it whole. Costs the same for any payload size.
pub fn head(frame: &[u8], max_frame_bytes: usize) -> Result<Head, ProtocolError> {
    if frame.len() > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge { len: frame.len(), max: max_frame_bytes });
    }
    let (header, mut rest) = parse_header(frame)?;
    let len = usize::try_from(rest.u32("payload")?).map_err(|_| truncated("payload"))?;
    if rest.0.len() != len {
        return Err(if rest.0.len() < len {
            truncated("payload")
        } else {
            ProtocolError::Malformed("bytes after the payload".to_owned())
        });
    }
    Ok(Head {
        message_type: header.message_type,
        message_id: header.message_id,
        session_id: header.session_id,
        sender_id: header.sender_id,
        recipient_id: header.recipient_id.map(|(id, _)| id),
    })
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
        return Err(ProtocolError::InvalidField {
            field: "layout version",
            reason: "not 0x01: not a binary envelope",
        });
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
mod tests;
