//! §27 from the document alone: a binary envelope decoder, checked against `binary.json`.
//!
//! It turns a binary frame into the JSON envelope it stands for (§27.5), then applies §4's checks
//! to that envelope, as §27.6 says; every field is read with an explicit bounds check.

use super::*;

/// §27.5: the type codes.
const TYPE_CODES: [(u8, &str); 23] = [
    (0x01, "HANDSHAKE_INIT"),
    (0x02, "HANDSHAKE_INIT_ACK"),
    (0x03, "CHALLENGE_RESPONSE"),
    (0x04, "SESSION_ESTABLISHED"),
    (0x05, "SESSION_CONFIRM"),
    (0x06, "READY"),
    (0x10, "PEER_MESSAGE"),
    (0x11, "BROADCAST"),
    (0x12, "TASK_REQUEST"),
    (0x13, "TASK_RESPONSE"),
    (0x14, "CHUNKED_MESSAGE"),
    (0x15, "ACK"),
    (0x16, "STATUS"),
    (0x17, "CAPABILITY_EXCHANGE"),
    (0x20, "PING"),
    (0x21, "PONG"),
    (0x22, "ERROR"),
    (0x23, "BYE"),
    (0x24, "SESSION_RESUME"),
    (0x25, "SESSION_RESUMED"),
    (0x26, "SUBSCRIBE"),
    (0x27, "UNSUBSCRIBE"),
    (0x28, "PUBLISH"),
];

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Rejection> {
        if self.0.len() < n {
            return Err(invalid(format!("truncated in {what}")));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u64(&mut self, what: &str) -> Result<u64, Rejection> {
        let b = self.take(8, what)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    fn id(&mut self, what: &str) -> Result<String, Rejection> {
        let len = self.take(1, what)?[0] as usize;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid(format!("{what} is not UTF-8")))
    }
}

/// §27.6: a binary message becomes the JSON envelope it stands for, checked by §4.2 as if it
/// had arrived as JSON.
fn decode_binary(frame: &[u8], max_frame_bytes: usize) -> Result<Envelope, Rejection> {
    if frame.len() > max_frame_bytes {
        return Err(Rejection { code: "MESSAGE_TOO_LARGE", reason: "over the limit".into() });
    }
    if frame.first() != Some(&0x01) {
        return Err(invalid("a binary message whose first byte is not 0x01"));
    }
    let mut r = Reader(&frame[1..]);
    let code = r.take(1, "type")?[0];
    let message_type = TYPE_CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, t)| *t)
        .ok_or_else(|| invalid(format!("unknown type code {code:#04x}")))?;
    let timestamp = r.u64("timestamp")?;
    let seq = r.u64("seq")?;
    if timestamp > MAX_SAFE || seq > MAX_SAFE {
        return Err(invalid("timestamp or seq above 2^53 - 1"));
    }
    let nonce = r.take(12, "nonce")?;
    let flags = r.take(1, "flags")?[0];
    if flags & 0xf0 != 0 {
        return Err(invalid("reserved flag bit"));
    }
    let raw = flags & 0x08 != 0;
    let session = class_of(message_type) == Some(Class::Session);
    if raw && !session {
        return Err(invalid("raw payload on a type that is not a session message"));
    }
    let message_id = r.id("message_id")?;
    let session_id = if flags & 0x01 != 0 { Some(r.id("session_id")?) } else { None };
    let sender_id = r.id("sender_id")?;
    let recipient_id = if flags & 0x02 != 0 { Some(r.id("recipient_id")?) } else { None };
    let signature = if flags & 0x04 != 0 { Some(r.take(64, "signature")?) } else { None };
    let len = u32::from_be_bytes(r.take(4, "payload length")?.try_into().expect("4 bytes"));
    let payload = r.take(len as usize, "payload")?;
    if !r.0.is_empty() {
        return Err(invalid("bytes after the payload"));
    }
    let payload = if raw {
        Value::String(b64u_encode(payload))
    } else {
        let text = std::str::from_utf8(payload).map_err(|_| invalid("payload is not UTF-8"))?;
        let value = parse_strict_json(text).map_err(invalid)?;
        if canonical(&value) != text {
            return Err(invalid("payload is not canonical JSON"));
        }
        if session && value.as_str().is_some_and(|s| b64u_decode(s).is_ok()) {
            return Err(invalid("a session message's base64url payload must travel raw"));
        }
        value
    };
    let opt = |s: Option<String>| s.map_or(Value::Null, Value::String);
    let env = serde_json::json!({
        "message_id": message_id,
        "nonce": b64u_encode(nonce),
        "payload": payload,
        "recipient_id": opt(recipient_id),
        "sender_id": sender_id,
        "seq": seq,
        "session_id": opt(session_id),
        "signature": signature.map_or(Value::Null, |s| Value::String(b64u_encode(s))),
        "timestamp": timestamp,
        "type": message_type,
        "version": VERSION,
    });
    // §4.2 on the envelope the frame stands for (ids, integer ranges, nesting).
    decode_frame(&canonical(&env), usize::MAX)
}

/// §27.5: the binary encoding of a JSON envelope.
fn encode_binary(env: &Envelope) -> Vec<u8> {
    let text = |name: &str| env[name].as_str().map(str::to_owned);
    let message_type = text("type").expect("type");
    let code = TYPE_CODES.iter().find(|(_, t)| *t == message_type).expect("a known type").0;
    let mut out = vec![0x01, code];
    out.extend_from_slice(&env["timestamp"].as_u64().expect("timestamp").to_be_bytes());
    out.extend_from_slice(&env["seq"].as_u64().expect("seq").to_be_bytes());
    out.extend(b64u_decode(&text("nonce").expect("nonce")).expect("nonce"));
    let session = class_of(&message_type) == Some(Class::Session);
    let raw = env["payload"]
        .as_str()
        .filter(|_| session)
        .and_then(|s| b64u_decode(s).ok().filter(|b| b64u_encode(b) == s));
    let mut flags = 0u8;
    for (bit, member) in [(0x01, "session_id"), (0x02, "recipient_id"), (0x04, "signature")] {
        if !env[member].is_null() {
            flags |= bit;
        }
    }
    if raw.is_some() {
        flags |= 0x08;
    }
    out.push(flags);
    for member in ["message_id", "session_id", "sender_id", "recipient_id"] {
        if let Some(id) = text(member) {
            out.push(id.len() as u8);
            out.extend_from_slice(id.as_bytes());
        }
    }
    if let Some(sig) = text("signature") {
        out.extend(b64u_decode(&sig).expect("signature"));
    }
    let payload = raw.unwrap_or_else(|| canonical(&env["payload"]).into_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend(payload);
    out
}

/// §27.7: what a receiver reads in a binary HTTP body, in order: `Ok` for each envelope, `Err`
/// with the code of each framing error. Nothing is allocated for a length before it is checked.
fn read_body(body: &[u8], max: usize) -> Vec<Result<Vec<u8>, &'static str>> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 4 {
            out.push(Err("INVALID_MESSAGE"));
            break;
        }
        let (prefix, after) = rest.split_at(4);
        let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len == 0 || len > after.len() {
            out.push(Err("INVALID_MESSAGE"));
            break;
        }
        let (frame, tail) = after.split_at(len);
        rest = tail;
        out.push(if len > max { Err("MESSAGE_TOO_LARGE") } else { Ok(frame.to_vec()) });
    }
    out
}

#[test]
fn binary_http_body_vectors() {
    let v = load("binary.json");
    let h = &v["http_bodies"];
    assert_eq!(get_str(h, "media_type", "binary.json"), "application/vnd.peerlink.binary.v1");
    let bodies = get_array(h, "bodies", "binary.json");
    assert!(bodies.len() >= 6);
    for c in bodies {
        let ctx = get_str(c, "description", "binary.json");
        let body = hex_decode(get_str(c, "body", ctx), ctx);
        let max = get_u64(c, "max_frame_bytes", ctx) as usize;
        let want: Vec<Result<Vec<u8>, String>> = get_array(c, "reads", ctx)
            .iter()
            .map(|r| match r.get("binary") {
                Some(_) => Ok(hex_decode(get_str(r, "binary", ctx), ctx)),
                None => Err(get_str(r, "error", ctx).to_owned()),
            })
            .collect();
        let got: Vec<Result<Vec<u8>, String>> =
            read_body(&body, max).into_iter().map(|r| r.map_err(str::to_owned)).collect();
        assert_eq!(got, want, "{ctx}");
        // Every envelope read is a valid binary envelope.
        for frame in got.into_iter().flatten() {
            decode_binary(&frame, max).unwrap_or_else(|r| panic!("{ctx}: rejected: {r:?}"));
        }
    }
}

#[test]
fn binary_vectors() {
    let v = load("binary.json");
    assert_eq!(get_str(&v, "subprotocol", "binary.json"), "peerlink.binary.v1");
    let envelopes = get_array(&v, "envelopes", "binary.json");
    assert!(envelopes.len() >= 13);
    let mut flags_seen = 0u8;
    for e in envelopes {
        let ctx = get_str(e, "description", "binary.json");
        let frame = hex_decode(get_str(e, "binary", ctx), ctx);
        let env = decode_binary(&frame, DEFAULT_FRAME_LIMIT)
            .unwrap_or_else(|r| panic!("{ctx}: rejected: {r:?}"));
        // The binary frame stands for exactly the JSON wire form (§27.3), and is what §27.5
        // makes of it.
        assert_eq!(wire(&env), get_str(e, "wire", ctx), "{ctx}");
        let json = decode_valid(get_str(e, "wire", ctx), ctx);
        assert_eq!(encode_binary(&json), frame, "{ctx}: encoding");
        // Its fields, concatenated, are the frame.
        let fields = get_array(e, "fields", ctx);
        let joined: Vec<u8> =
            fields.iter().flat_map(|f| hex_decode(get_str(f, "hex", ctx), ctx)).collect();
        assert_eq!(joined, frame, "{ctx}: fields");
        flags_seen |= frame[30];
    }
    assert_eq!(flags_seen, 0x0f, "the vectors set every flag");
    for c in get_array(&v, "invalid", "binary.json") {
        let ctx = get_str(c, "description", "binary.json");
        let frame = hex_decode(get_str(c, "binary", ctx), ctx);
        let max = get_u64(c, "max_frame_bytes", ctx) as usize;
        let code = get_str(c, "code", ctx);
        match decode_binary(&frame, max) {
            Ok(_) => panic!("{ctx}: accepted"),
            Err(r) => assert_eq!(r.code, code, "{ctx}: {}", r.reason),
        }
    }
}
