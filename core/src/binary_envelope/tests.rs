//! Tests of the binary layout: round trips, every rejection, hostile bytes.
use super::*;
use crate::encoding::b64u;
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
        verified: crate::envelope::Verified::NO,
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
        verified: crate::envelope::Verified::NO,
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
            payload: raw.map_or_else(
                || canonical::to_vec(env.payload.value()).unwrap(),
                |r| r.into_owned(),
            ),
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
fn a_first_byte_other_than_the_layout_version_is_not_a_binary_envelope() {
    assert_eq!(code(&[]), ErrorCode::InvalidMessage, "empty frame");
    for layout in [0x00, 0x02, b'{', 0xff] {
        let mut raw = Raw::of(&session_sample());
        raw.layout = layout;
        assert_eq!(code(&raw.build()), ErrorCode::InvalidMessage, "{layout:#04x}");
        assert_eq!(recipient(&raw.build()), None);
        assert_eq!(head(&raw.build(), MAX).unwrap_err().code(), ErrorCode::InvalidMessage);
    }
    // A JSON frame handed to the binary decoder (a binary message holding JSON, spec §27.2).
    assert_eq!(code(&session_sample().encode()), ErrorCode::InvalidMessage);
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
    for payload in [&b"{\"a\":2,\"z\":1}"[..], b"{}", b"1", b"\"a\"", b"\"/\"", b"\"\\u001f\""] {
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
    (prop::sample::select(MessageType::ALL.to_vec()), ids, (safe_u64(), safe_u64()), bytes, payload)
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
            verified: crate::envelope::Verified::NO,
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
            Err(e) => prop_assert_eq!(e.code(), ErrorCode::InvalidMessage),
        }
    }
}
