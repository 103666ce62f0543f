//! `binary.json`: envelopes of the other vector files in the binary encoding (spec §27), field by
//! field, and binary frames a receiver MUST reject, with their codes.

use peerlink_core::binary_envelope::{self, type_code};
use peerlink_core::encoding::hex;
use peerlink_core::http_body;
use peerlink_core::wire::Encoding;
use peerlink_core::{Envelope, MessageType, wire};
use serde_json::{Value, json};

use super::MIB;

/// The JSON frames whose binary forms are listed: every class of type, every flag.
fn sources(files: &std::collections::BTreeMap<&'static str, Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let text = |v: &Value| v.as_str().expect("a frame").to_owned();
    for e in files["envelopes.json"]["envelopes"].as_array().expect("envelopes") {
        out.push((format!("envelopes.json: {}", text(&e["description"])), text(&e["wire"])));
    }
    for (i, m) in
        files["handshake.json"]["messages"].as_array().expect("messages").iter().enumerate()
    {
        out.push((format!("handshake.json: step {}", i + 1), text(m)));
    }
    for m in files["session.json"]["messages"].as_array().expect("messages") {
        out.push((
            format!("session.json: {} seq {}", text(&m["type"]), m["seq"]),
            text(&m["wire"]),
        ));
    }
    out
}

/// The frame cut into its fields, in order (spec §27.5): what each byte is.
fn fields(env: &Envelope, frame: &[u8]) -> Vec<Value> {
    let mut sizes: Vec<(&str, usize)> = vec![
        ("layout_version", 1),
        ("type", 1),
        ("timestamp", 8),
        ("seq", 8),
        ("nonce", 12),
        ("flags", 1),
    ];
    let id = |s: &str| 1 + s.len();
    sizes.push(("message_id", id(env.message_id.as_str())));
    if let Some(s) = &env.session_id {
        sizes.push(("session_id", id(s.as_str())));
    }
    sizes.push(("sender_id", id(env.sender_id.as_str())));
    if let Some(r) = &env.recipient_id {
        sizes.push(("recipient_id", id(r.as_str())));
    }
    if env.signature.is_some() {
        sizes.push(("signature", 64));
    }
    sizes.push(("payload_length", 4));
    let mut at = 0;
    let mut out = Vec::new();
    for (name, len) in sizes {
        out.push(json!({"field": name, "hex": hex(&frame[at..at + len])}));
        at += len;
    }
    out.push(json!({"field": "payload", "hex": hex(&frame[at..])}));
    out
}

/// Session messages whose payload is a string that is not canonical base64url: they travel with
/// flag bit 3 clear, the string as JSON (an encoder with a lenient base64 decoder would get these
/// wrong).
fn json_string_sessions(
    files: &std::collections::BTreeMap<&'static str, Value>,
) -> Vec<(String, String)> {
    let wire = files["session.json"]["messages"][0]["wire"].as_str().expect("a frame");
    let base = Envelope::decode(wire.as_bytes(), MIB).expect("valid");
    [("not base64url at all", "not base64!"), ("base64url with non-zero trailing bits", "QR")]
        .into_iter()
        .map(|(what, text)| {
            let mut env = base.clone();
            env.payload = peerlink_core::Payload::string(text.to_owned());
            env.signature = None;
            let description = format!("a session message whose payload string is {what}");
            (description, String::from_utf8(env.encode()).expect("UTF-8"))
        })
        .collect()
}

fn envelopes(files: &std::collections::BTreeMap<&'static str, Value>) -> Vec<Value> {
    sources(files)
        .into_iter()
        .chain(json_string_sessions(files))
        .map(|(description, json_frame)| {
            let env = Envelope::decode(json_frame.as_bytes(), MIB).expect(&description);
            let frame = binary_envelope::encode(&env);
            // Both ways: the binary frame decodes to the same envelope, whose JSON is the source.
            assert_eq!(
                wire::decode(&frame, MIB).expect(&description).encode(),
                json_frame.as_bytes()
            );
            json!({
                "description": description,
                "wire": json_frame,
                "binary": hex(&frame),
                "fields": fields(&env, &frame),
            })
        })
        .collect()
}

/// A copy of `frame` with `at..at + len` replaced by `with`.
fn splice(frame: &[u8], at: usize, len: usize, with: &[u8]) -> Vec<u8> {
    [&frame[..at], with, &frame[at + len..]].concat()
}

fn invalid(files: &std::collections::BTreeMap<&'static str, Value>) -> Vec<Value> {
    let frame_of = |wire: &Value| {
        let env = Envelope::decode(wire.as_str().expect("a frame").as_bytes(), MIB).expect("valid");
        (binary_envelope::encode(&env), env)
    };
    // A signed PING to the next hop (no session, no recipient) and a signed session message.
    let (ping, ping_env) = frame_of(&files["envelopes.json"]["envelopes"][0]["wire"]);
    // The session message goes to the next hop itself (no recipient): a relay may forward a
    // frame for another entity on its header alone, leaving its payload to the recipient (§27.4).
    let (_, mut sealed_env) = frame_of(&files["session.json"]["messages"][0]["wire"]);
    sealed_env.recipient_id = None;
    let sealed = binary_envelope::encode(&sealed_env);
    assert_eq!(ping_env.message_type, MessageType::Ping);
    // Offsets in the PING (spec §27.5): fixed part 31 bytes, then message_id, sender_id, the
    // signature, the payload's length and the payload `{}`.
    let flags = 30;
    let mid = 31;
    let sender = mid + 1 + ping_env.message_id.as_str().len();
    let sig = sender + 1 + ping_env.sender_id.as_str().len();
    let len_at = sig + 64;
    let payload = len_at + 4;
    assert_eq!(&ping[payload..], b"{}");
    let sealed_len_at = sealed.len() - 4 - sealed_env.payload.ciphertext_bytes().unwrap().len();
    let with_payload = |p: &[u8]| {
        let mut f = splice(&ping, len_at, 4 + 2, &(p.len() as u32).to_be_bytes());
        f.extend_from_slice(p);
        f
    };
    let mut above = [0u8; 8];
    above.copy_from_slice(&(1u64 << 53).to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("frame over the limit", ping.clone(), 64),
        ("first byte 0x02", splice(&ping, 0, 1, &[0x02]), MIB),
        ("a JSON envelope in a binary message", ping_env.encode(), MIB),
        (
            "session_id with a space",
            {
                let at = 31 + 1 + sealed_env.message_id.as_str().len() + 1;
                splice(&sealed, at, 1, b" ")
            },
            MIB,
        ),
        (
            "session_id flag set, frame ends before it",
            {
                let end = 31 + 1 + sealed_env.message_id.as_str().len();
                sealed[..end].to_vec()
            },
            MIB,
        ),
        ("unknown type code", splice(&ping, 1, 1, &[0x07]), MIB),
        ("type code 0xff", splice(&ping, 1, 1, &[0xff]), MIB),
        ("timestamp above 2^53-1", splice(&ping, 2, 8, &above), MIB),
        ("seq above 2^53-1", splice(&ping, 10, 8, &above), MIB),
        ("truncated in the fixed part", ping[..20].to_vec(), MIB),
        ("reserved flag bit 4", splice(&ping, flags, 1, &[ping[flags] | 0x10]), MIB),
        (
            "raw payload flag on a signed message",
            splice(&ping, flags, 1, &[ping[flags] | 0x08]),
            MIB,
        ),
        ("message_id of length 0", splice(&ping, mid, 1, &[0]), MIB),
        ("message_id longer than the frame", splice(&ping, mid, 1, &[0xff]), MIB),
        ("sender_id with a space", splice(&ping, sender + 1, 1, b" "), MIB),
        ("truncated in the signature", ping[..sig + 10].to_vec(), MIB),
        ("payload length past the end", splice(&ping, len_at, 4, &3u32.to_be_bytes()), MIB),
        ("bytes after the payload", [&ping[..], b" "].concat(), MIB),
        ("payload not canonical JSON (a space)", with_payload(b"{ }"), MIB),
        ("payload not JSON", with_payload(b"{"), MIB),
        ("payload with a fractional number", with_payload(b"{\"a\":1.5}"), MIB),
        (
            "session payload sent as a JSON string instead of raw",
            {
                let ct = sealed_env.payload.ciphertext_bytes().unwrap();
                let text = format!("\"{}\"", peerlink_core::encoding::b64u(&ct));
                let f = splice(
                    &sealed,
                    sealed_len_at,
                    sealed.len() - sealed_len_at,
                    &(text.len() as u32).to_be_bytes(),
                );
                let flags_at = 30;
                let mut f = splice(&f, flags_at, 1, &[sealed[flags_at] & !0x08]);
                f.extend_from_slice(text.as_bytes());
                f
            },
            MIB,
        ),
    ];
    assert_eq!(type_code(MessageType::Ping), ping[1]);
    cases
        .into_iter()
        .map(|(description, frame, max)| {
            // Each is a binary message: decoded as a binary envelope whatever its first byte.
            let code = binary_envelope::decode(&frame, max).expect_err(description).code();
            json!({
                "description": description,
                "binary": hex(&frame),
                "max_frame_bytes": max,
                "code": code.as_str(),
            })
        })
        .collect()
}

/// What a receiver reads in `body` (spec §27.7), in order: each envelope, or the code of each
/// framing error.
fn reads(body: &[u8], max: usize) -> Vec<Value> {
    http_body::frames(body, Encoding::Binary, max)
        .map(|r| match r {
            Ok(frame) => json!({"binary": hex(frame)}),
            Err(e) => json!({"error": e.code().as_str()}),
        })
        .collect()
}

/// Binary HTTP bodies (spec §27.7): two made of envelopes of this file, and bodies whose framing
/// fails, each with what a receiver reads in it.
fn bodies(files: &std::collections::BTreeMap<&'static str, Value>) -> Value {
    let frames: Vec<Vec<u8>> = sources(files)
        .into_iter()
        .take(2)
        .map(|(d, json_frame)| {
            binary_envelope::encode(&Envelope::decode(json_frame.as_bytes(), MIB).expect(&d))
        })
        .collect();
    let (a, b) = (&frames[0][..], &frames[1][..]);
    let two = http_body::encode([a, b], Encoding::Binary);
    let (long, short) = if a.len() > b.len() { (a, b) } else { (b, a) };
    let mut cut = http_body::encode([a], Encoding::Binary);
    cut.extend_from_slice(&[0, 0]);
    let mut zero = http_body::encode([a], Encoding::Binary);
    zero.extend_from_slice(&[0, 0, 0, 0]);
    zero.extend_from_slice(&http_body::encode([b], Encoding::Binary));
    let mut past = http_body::encode([a], Encoding::Binary);
    past.extend_from_slice(&[0, 0, 0, 200, 1, 2, 3]);
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("two envelopes", two, MIB),
        ("an empty body: no envelope", Vec::new(), MIB),
        ("an envelope, then a length prefix cut short: INVALID_MESSAGE, the body ends", cut, MIB),
        ("an envelope, then a length of 0: INVALID_MESSAGE, nothing after it is read", zero, MIB),
        ("an envelope, then a length past the end of the body: INVALID_MESSAGE", past, MIB),
        (
            "an envelope over the frame limit (MESSAGE_TOO_LARGE, skipped unread), then one within it",
            http_body::encode([long, short], Encoding::Binary),
            long.len() - 1,
        ),
    ];
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|(description, body, max)| {
            json!({
                "description": description,
                "body": hex(&body),
                "max_frame_bytes": max,
                "reads": reads(&body, max),
            })
        })
        .collect();
    json!({
        "media_type": wire::BINARY_MEDIA_TYPE,
        "bodies": cases,
    })
}

/// The whole file.
pub(super) fn vectors(files: &std::collections::BTreeMap<&'static str, Value>) -> Value {
    json!({
        "description": "Envelopes of envelopes.json, handshake.json and session.json in the binary encoding (spec §27.5), each cut into its fields; binary frames a receiver MUST reject, with the limit to apply and the error code (spec §27.6); and binary HTTP bodies with what a receiver reads in each, envelope by envelope or the code of a framing error (spec §27.7)",
        "subprotocol": wire::BINARY_SUBPROTOCOL,
        "envelopes": envelopes(files),
        "invalid": invalid(files),
        "http_bodies": bodies(files),
    })
}
