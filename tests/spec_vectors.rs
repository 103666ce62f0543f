//! Checks every file in `spec/vectors/` against `spec/protocol.md`, using only the text of the
//! spec and generic crypto crates. Nothing here uses `peerlink-core`: the canonical JSON writer,
//! strict JSON parser, strict base64url codec, frame validator, transcript hash, key schedule,
//! confirmation tags and session sealing are all re-implemented from the spec.
//!
//! Every check compares a value computed here with a value recorded in a vector, so a wrong
//! vector (or a wrong reading of the spec) makes a test fail.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chacha20poly1305::aead::{Aead, KeyInit as AeadKeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey as XPublicKey, StaticSecret};

#[path = "spec_vectors/binary.rs"]
mod binary;

type HmacSha256 = Hmac<Sha256>;
type Envelope = Map<String, Value>;

/// 2^53 − 1, the bound of §3.1 and §4.1.
const MAX_SAFE: u64 = 9_007_199_254_740_991;
/// §4.2 / §11: default frame limit.
const DEFAULT_FRAME_LIMIT: usize = 1_048_576;
/// §3.1 / §11: JSON nesting allowed inside `payload`.
const MAX_PAYLOAD_DEPTH: usize = 32;
/// §7.9 step 7 / §11: default clock skew in ms.
const CLOCK_SKEW_MS: u64 = 300_000;
/// §4.1: the only version this document defines.
const VERSION: &str = "1.2";

// ---------------------------------------------------------------------------------------------
// Vector files and small accessors
// ---------------------------------------------------------------------------------------------

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("spec")
        .join("vectors")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

fn get<'a>(v: &'a Value, key: &str, ctx: &str) -> &'a Value {
    v.get(key).unwrap_or_else(|| panic!("{ctx}: vector lacks member `{key}`"))
}

fn get_str<'a>(v: &'a Value, key: &str, ctx: &str) -> &'a str {
    get(v, key, ctx)
        .as_str()
        .unwrap_or_else(|| panic!("{ctx}: vector member `{key}` is not a string"))
}

fn get_u64(v: &Value, key: &str, ctx: &str) -> u64 {
    get(v, key, ctx)
        .as_u64()
        .unwrap_or_else(|| panic!("{ctx}: vector member `{key}` is not an unsigned integer"))
}

fn get_array<'a>(v: &'a Value, key: &str, ctx: &str) -> &'a Vec<Value> {
    get(v, key, ctx)
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: vector member `{key}` is not an array"))
}

/// §12: binary values in the vectors are lowercase hex.
fn hex_decode(s: &str, ctx: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "{ctx}: odd-length hex {s:?}");
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |c: u8| match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => panic!("{ctx}: not lowercase hex: {s:?}"),
            };
            digit(pair[0]) << 4 | digit(pair[1])
        })
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to32(bytes: &[u8], ctx: &str) -> [u8; 32] {
    bytes.try_into().unwrap_or_else(|_| panic!("{ctx}: expected 32 bytes, got {}", bytes.len()))
}

fn hex32_field(v: &Value, key: &str, ctx: &str) -> [u8; 32] {
    to32(&hex_decode(get_str(v, key, ctx), ctx), &format!("{ctx}.{key}"))
}

// ---------------------------------------------------------------------------------------------
// §1.1 strict base64url (no padding, URL-safe alphabet only, zero trailing bits)
// ---------------------------------------------------------------------------------------------

const B64U_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64u_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut n = [0u8; 3];
        n[..chunk.len()].copy_from_slice(chunk);
        let word = u32::from(n[0]) << 16 | u32::from(n[1]) << 8 | u32::from(n[2]);
        for i in 0..=chunk.len() {
            let index = (word >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(B64U_ALPHABET[index as usize]));
        }
    }
    out
}

fn b64u_decode(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 4 == 1 {
        return Err(format!("impossible b64u length {}", s.len()));
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in s.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return Err(format!("byte {c:#04x} outside the b64u alphabet (or padding)")),
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if acc != 0 {
        return Err("non-zero unused trailing bits".to_owned());
    }
    Ok(out)
}

fn b64u_decode_len(s: &str, len: usize, what: &str) -> Result<Vec<u8>, String> {
    let bytes = b64u_decode(s).map_err(|e| format!("{what}: {e}"))?;
    if bytes.len() != len {
        return Err(format!("{what}: {} bytes, expected {len}", bytes.len()));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// §3.1 strict JSON parser (duplicates, numbers, surrogates, trailing data)
// ---------------------------------------------------------------------------------------------

/// Recursion guard of this parser only (not a protocol limit): far above anything a valid frame
/// can contain (1 level of envelope + 32 inside `payload`), it just keeps the stack bounded.
const PARSER_STACK_GUARD: usize = 256;

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

fn parse_strict_json(text: &str) -> Result<Value, String> {
    let mut p = Parser { text, bytes: text.as_bytes(), pos: 0, depth: 0 };
    p.skip_ws();
    let value = p.value()?;
    p.skip_ws();
    if p.pos != p.bytes.len() {
        return Err(format!("trailing data at byte {}", p.pos));
    }
    Ok(value)
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect_byte(&mut self, b: u8) -> Result<(), String> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", char::from(b), self.pos))
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.peek() {
            None => Err("unexpected end of text".to_owned()),
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(c) => Err(format!("unexpected byte {c:#04x} at {}", self.pos)),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, String> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(format!("bad literal at byte {}", self.pos))
        }
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > PARSER_STACK_GUARD {
            return Err("nesting beyond the parser's guard".to_owned());
        }
        Ok(())
    }

    fn object(&mut self) -> Result<Value, String> {
        self.enter()?;
        self.expect_byte(b'{')?;
        let mut map = Map::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.skip_ws();
            self.expect_byte(b':')?;
            self.skip_ws();
            let value = self.value()?;
            if map.contains_key(&key) {
                return Err(format!("duplicate member {key:?}"));
            }
            map.insert(key, value);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.pos)),
            }
        }
        self.depth -= 1;
        Ok(Value::Object(map))
    }

    fn array(&mut self) -> Result<Value, String> {
        self.enter()?;
        self.expect_byte(b'[')?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(format!("expected ',' or ']' at byte {}", self.pos)),
            }
        }
        self.depth -= 1;
        Ok(Value::Array(items))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.text.get(self.pos..self.pos + 4).ok_or("truncated \\u escape")?;
        let code = u32::from_str_radix(digits, 16).map_err(|_| "bad \\u escape".to_owned())?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("bad \\u escape".to_owned());
        }
        self.pos += 4;
        Ok(code)
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect_byte(b'"')?;
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            match c {
                b'"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.pos += 1;
                    let e = self.peek().ok_or("unterminated escape")?;
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err(format!("bad escape \\{}", char::from(e))),
                    }
                }
                0x00..=0x1f => return Err("unescaped control character in string".to_owned()),
                _ => {
                    // The input is a &str, so this is the start of a valid UTF-8 sequence.
                    let ch = self.text[self.pos..].chars().next().ok_or("unterminated string")?;
                    out.push(ch);
                    self.pos += ch.len_utf8();
                }
            }
        }
    }

    /// After `\u`: one code point, pairing surrogates; unpaired surrogates are errors (§3.1).
    fn unicode_escape(&mut self) -> Result<char, String> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err("unpaired high surrogate".to_owned());
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err("high surrogate not followed by a low surrogate".to_owned());
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err("unpaired low surrogate".to_owned()),
            _ => first,
        };
        char::from_u32(code).ok_or_else(|| "invalid code point".to_owned())
    }

    fn number(&mut self) -> Result<Value, String> {
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let start = self.pos;
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err("leading zero".to_owned());
                }
            }
            Some(b'1'..=b'9') => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.pos += 1;
                }
            }
            _ => return Err(format!("bad number at byte {}", self.pos)),
        }
        let digits = &self.text[start..self.pos];
        match self.peek() {
            Some(b'.') => return Err("number with a fraction".to_owned()),
            Some(b'e' | b'E') => return Err("number with an exponent".to_owned()),
            _ => {}
        }
        let magnitude: u64 = match digits.parse() {
            Ok(n) if n <= MAX_SAFE => n,
            _ => return Err(format!("integer {digits} outside ±(2^53 − 1)")),
        };
        if negative && magnitude == 0 {
            return Err("the number -0".to_owned());
        }
        let n = i64::try_from(magnitude).map_err(|_| "integer overflow".to_owned())?;
        Ok(Value::from(if negative { -n } else { n }))
    }
}

/// Nesting depth of arrays and objects: a scalar is 0, `[]` is 1, `[[1]]` is 2.
fn nesting_depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(nesting_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(nesting_depth).max().unwrap_or(0),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// §3.2 canonical JSON
// ---------------------------------------------------------------------------------------------

fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let i = n
                .as_i64()
                .filter(|i| i.unsigned_abs() <= MAX_SAFE)
                .unwrap_or_else(|| panic!("{n} is outside the value space of §3.1"));
            out.push_str(&i.to_string());
        }
        Value::String(s) => write_canonical_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Sort names as sequences of UTF-16 code units.
            entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, (name, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical_string(name, out);
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
    }
}

fn write_canonical_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u00{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------------------------
// §4, §5: the envelope and frame validation (§4.2 steps 1 and 2)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Handshake,
    Session,
    Signed,
}

const MESSAGE_TYPES: [(&str, Class); 23] = [
    ("HANDSHAKE_INIT", Class::Handshake),
    ("HANDSHAKE_INIT_ACK", Class::Handshake),
    ("CHALLENGE_RESPONSE", Class::Handshake),
    ("SESSION_ESTABLISHED", Class::Handshake),
    ("SESSION_CONFIRM", Class::Handshake),
    ("READY", Class::Handshake),
    ("PEER_MESSAGE", Class::Session),
    ("BROADCAST", Class::Session),
    ("TASK_REQUEST", Class::Session),
    ("TASK_RESPONSE", Class::Session),
    ("CHUNKED_MESSAGE", Class::Session),
    ("ACK", Class::Session),
    ("STATUS", Class::Session),
    ("CAPABILITY_EXCHANGE", Class::Session),
    ("PING", Class::Signed),
    ("PONG", Class::Signed),
    ("ERROR", Class::Signed),
    ("BYE", Class::Signed),
    ("SESSION_RESUME", Class::Signed),
    ("SESSION_RESUMED", Class::Signed),
    ("SUBSCRIBE", Class::Signed),
    ("UNSUBSCRIBE", Class::Signed),
    ("PUBLISH", Class::Signed),
];

fn class_of(message_type: &str) -> Option<Class> {
    MESSAGE_TYPES.iter().find(|(name, _)| *name == message_type).map(|(_, class)| *class)
}

/// §10 error codes.
const ERROR_CODES: [&str; 13] = [
    "SESSION_NOT_FOUND",
    "SESSION_EXPIRED",
    "INVALID_MESSAGE",
    "AUTHENTICATION_FAILED",
    "RATE_LIMIT_EXCEEDED",
    "MESSAGE_TOO_LARGE",
    "INVALID_STATE",
    "REPLAY_DETECTED",
    "UNSUPPORTED_VERSION",
    "UNKNOWN_RECIPIENT",
    "MAILBOX_FULL",
    "TIMEOUT",
    "INTERNAL_ERROR",
];

/// §4.1 member names (in canonical order, §6).
const ENVELOPE_MEMBERS: [&str; 11] = [
    "message_id",
    "nonce",
    "payload",
    "recipient_id",
    "sender_id",
    "seq",
    "session_id",
    "signature",
    "timestamp",
    "type",
    "version",
];

#[derive(Debug)]
struct Rejection {
    code: &'static str,
    reason: String,
}

fn invalid(reason: impl Into<String>) -> Rejection {
    Rejection { code: "INVALID_MESSAGE", reason: reason.into() }
}

/// §2.1: 1 to 64 bytes of `A-Z a-z 0-9 . _ -`.
fn is_entity_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// §4.1 `message_id` / `session_id` syntax: 1 to 64 bytes of `A-Z a-z 0-9 _ -`.
fn is_message_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

fn member_str<'a>(env: &'a Envelope, name: &str) -> Result<&'a str, Rejection> {
    env[name].as_str().ok_or_else(|| invalid(format!("`{name}` is not a string")))
}

fn member_opt_str<'a>(env: &'a Envelope, name: &str) -> Result<Option<&'a str>, Rejection> {
    match &env[name] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(invalid(format!("`{name}` is neither a string nor null"))),
    }
}

fn member_int(env: &Envelope, name: &str) -> Result<u64, Rejection> {
    env[name]
        .as_u64()
        .filter(|n| *n <= MAX_SAFE)
        .ok_or_else(|| invalid(format!("`{name}` is not an integer in 0..=2^53-1")))
}

/// §4.2 steps 1 and 2: frame limit, strict JSON (§3.1) and the members of §4.1.
/// Returns the envelope object on success.
fn decode_frame(frame: &str, max_frame_bytes: usize) -> Result<Envelope, Rejection> {
    // Step 1: size, before parsing.
    if frame.len() > max_frame_bytes {
        return Err(Rejection {
            code: "MESSAGE_TOO_LARGE",
            reason: format!("{} bytes > limit {max_frame_bytes}", frame.len()),
        });
    }
    // Step 2: §3.1.
    let value = parse_strict_json(frame).map_err(invalid)?;
    let Value::Object(env) = value else {
        return Err(invalid("frame is not a JSON object"));
    };
    // §4.1: exactly the eleven members.
    for name in env.keys() {
        if !ENVELOPE_MEMBERS.contains(&name.as_str()) {
            return Err(invalid(format!("unknown member `{name}`")));
        }
    }
    for name in ENVELOPE_MEMBERS {
        if !env.contains_key(name) {
            return Err(invalid(format!("missing member `{name}`")));
        }
    }
    // §3.1: nesting inside payload (the payload's own array/object is level 1).
    let depth = nesting_depth(&env["payload"]);
    if depth > MAX_PAYLOAD_DEPTH {
        return Err(invalid(format!("payload nesting {depth} > {MAX_PAYLOAD_DEPTH}")));
    }
    // §4.1 members, in the order of the table.
    if !is_message_id(member_str(&env, "message_id")?) {
        return Err(invalid("bad `message_id` syntax"));
    }
    let message_type = member_str(&env, "type")?;
    if class_of(message_type).is_none() {
        return Err(invalid(format!("unknown type {message_type:?}")));
    }
    if member_str(&env, "version")? != VERSION {
        return Err(Rejection {
            code: "UNSUPPORTED_VERSION",
            reason: format!("version {}", env["version"]),
        });
    }
    member_int(&env, "timestamp")?;
    member_int(&env, "seq")?;
    if let Some(session_id) = member_opt_str(&env, "session_id")?
        && !is_message_id(session_id)
    {
        return Err(invalid("bad `session_id` syntax"));
    }
    if !is_entity_id(member_str(&env, "sender_id")?) {
        return Err(invalid("bad `sender_id` (§2.1)"));
    }
    if let Some(recipient) = member_opt_str(&env, "recipient_id")?
        && !is_entity_id(recipient)
    {
        return Err(invalid("bad `recipient_id` (§2.1)"));
    }
    b64u_decode_len(member_str(&env, "nonce")?, 12, "nonce").map_err(invalid)?;
    if let Some(signature) = member_opt_str(&env, "signature")? {
        b64u_decode_len(signature, 64, "signature").map_err(invalid)?;
    }
    Ok(env)
}

fn decode_valid(frame: &str, ctx: &str) -> Envelope {
    decode_frame(frame, DEFAULT_FRAME_LIMIT)
        .unwrap_or_else(|r| panic!("{ctx}: my validator rejected a valid frame: {r:?}"))
}

fn env_str<'a>(env: &'a Envelope, name: &str, ctx: &str) -> &'a str {
    env[name].as_str().unwrap_or_else(|| panic!("{ctx}: `{name}` is not a string"))
}

fn env_u64(env: &Envelope, name: &str, ctx: &str) -> u64 {
    env[name].as_u64().unwrap_or_else(|| panic!("{ctx}: `{name}` is not an integer"))
}

// ---------------------------------------------------------------------------------------------
// §6 canonical bytes
// ---------------------------------------------------------------------------------------------

fn canonical_without(env: &Envelope, omit: &[&str]) -> String {
    let mut copy = env.clone();
    for name in omit {
        copy.remove(*name);
    }
    canonical(&Value::Object(copy))
}

/// §6.1
fn wire(env: &Envelope) -> String {
    canonical_without(env, &[])
}

/// §6.2
fn signing_input(env: &Envelope) -> String {
    format!("peerlink v1 envelope signature\n{}", canonical_without(env, &["signature"]))
}

/// §6.3
fn associated_data(env: &Envelope) -> String {
    format!("peerlink v1 envelope aad\n{}", canonical_without(env, &["payload", "signature"]))
}

// ---------------------------------------------------------------------------------------------
// Crypto helpers
// ---------------------------------------------------------------------------------------------

struct Identity {
    entity_id: String,
    signing: SigningKey,
    verifying: VerifyingKey,
}

/// Reads `{entity_id, public_key_b64u, secret_key}` and checks that the public key derives from
/// the secret key (RFC 8032 §5.1.5, the 32-byte secret key as recorded in hex).
fn identity(v: &Value, ctx: &str) -> Identity {
    let entity_id = get_str(v, "entity_id", ctx).to_owned();
    assert!(is_entity_id(&entity_id), "{ctx}: entity id {entity_id:?} violates §2.1");
    let secret = hex32_field(v, "secret_key", ctx);
    let signing = SigningKey::from_bytes(&secret);
    let derived = signing.verifying_key();
    let recorded = b64u_decode_len(get_str(v, "public_key_b64u", ctx), 32, "public key")
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(
        b64u_encode(derived.as_bytes()),
        b64u_encode(&recorded),
        "{ctx}: public key does not derive from the secret key"
    );
    let verifying = VerifyingKey::from_bytes(&to32(&recorded, ctx))
        .unwrap_or_else(|e| panic!("{ctx}: public key does not decode: {e}"));
    Identity { entity_id, signing, verifying }
}

/// §2.4: strict verification of the envelope's signature over §6.2, plus a deterministic
/// re-signature (Ed25519 is deterministic) with the secret key compared to the recorded one.
fn check_envelope_signature(env: &Envelope, signer: &Identity, ctx: &str) {
    let sig_b64u = env_str(env, "signature", ctx);
    let sig_bytes =
        b64u_decode_len(sig_b64u, 64, "signature").unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let signature = Signature::from_bytes(&sig_bytes.try_into().expect("64 bytes checked"));
    let input = signing_input(env);
    signer.verifying.verify_strict(input.as_bytes(), &signature).unwrap_or_else(|e| {
        panic!("{ctx}: signature does not verify (strict) with {}'s key: {e}", signer.entity_id)
    });
    let resigned = signer.signing.sign(input.as_bytes());
    assert_eq!(
        b64u_encode(&resigned.to_bytes()),
        sig_b64u,
        "{ctx}: re-signing the signing input with {}'s secret key gives another signature",
        signer.entity_id
    );
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    to32(&h.finalize(), "SHA-256 output")
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    to32(&mac.finalize().into_bytes(), "HMAC-SHA256 output")
}

/// §7.2: TH0..THn over the wire form of each message (recomputed canonically here).
fn transcript_hashes(messages: &[Envelope]) -> Vec<[u8; 32]> {
    let mut th = sha256(&[b"peerlink v1 transcript"]);
    let mut out = vec![th];
    for m in messages {
        let w = wire(m);
        let len = u32::try_from(w.len()).expect("message fits u32");
        th = sha256(&[&th, &len.to_be_bytes(), w.as_bytes()]);
        out.push(th);
    }
    out
}

struct SessionKeys {
    k_i2r: [u8; 32],
    k_r2i: [u8; 32],
    k_confirm_i: [u8; 32],
    k_confirm_r: [u8; 32],
    k_resumption: [u8; 32],
}

/// §7.7
fn key_schedule(th3: &[u8; 32], dh: &[u8; 32]) -> SessionKeys {
    let (prk, _) = Hkdf::<Sha256>::extract(Some(th3), dh);
    // RFC 5869: PRK = HMAC-Hash(salt, IKM); cross-check the library against the definition.
    assert_eq!(
        prk.as_slice(),
        hmac_sha256(th3, &[dh]),
        "HKDF-Extract disagrees with HMAC(salt, IKM)"
    );
    let hk = Hkdf::<Sha256>::from_prk(&prk).expect("PRK has the hash length");
    let expand = |label: &str| {
        let mut okm = [0u8; 32];
        hk.expand(label.as_bytes(), &mut okm).expect("32 bytes is a valid HKDF output length");
        okm
    };
    SessionKeys {
        k_i2r: expand("peerlink v1 key initiator to responder"),
        k_r2i: expand("peerlink v1 key responder to initiator"),
        k_confirm_i: expand("peerlink v1 confirm initiator"),
        k_confirm_r: expand("peerlink v1 confirm responder"),
        k_resumption: expand("peerlink v1 resumption"),
    }
}

/// §8.2 step 2: `0x00000000 || u64be(seq)`.
fn session_nonce(seq: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_be_bytes());
    nonce
}

fn aead_seal(key: &[u8; 32], nonce: &[u8; 12], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new(&Key::from(*key))
        .encrypt(&Nonce::from(*nonce), Payload { msg: plaintext, aad })
        .expect("ChaCha20-Poly1305 encryption cannot fail for small inputs")
}

fn aead_open(key: &[u8; 32], nonce: &[u8; 12], ciphertext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    ChaCha20Poly1305::new(&Key::from(*key))
        .decrypt(&Nonce::from(*nonce), Payload { msg: ciphertext, aad })
        .ok()
}

// ---------------------------------------------------------------------------------------------
// §7.8 capabilities
// ---------------------------------------------------------------------------------------------

const KNOWN_TRANSPORTS: [&str; 2] = ["websocket", "http"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Capabilities {
    /// Known transport names, in the order listed (unknown names ignored, §7.8).
    transports: Vec<String>,
    chunking: bool,
    resume: bool,
    sign_all: bool,
    max_frame_bytes: u64,
    /// Optional; absent means `false` (§7.8).
    app_types: bool,
}

fn parse_capabilities(v: &Value, ctx: &str) -> Capabilities {
    let obj = v.as_object().unwrap_or_else(|| panic!("{ctx}: capabilities are not an object"));
    let flag = |name: &str| {
        obj.get(name)
            .unwrap_or_else(|| panic!("{ctx}: required capability `{name}` missing"))
            .as_bool()
            .unwrap_or_else(|| panic!("{ctx}: capability `{name}` is not a boolean"))
    };
    let listed = obj
        .get("transports")
        .unwrap_or_else(|| panic!("{ctx}: required capability `transports` missing"))
        .as_array()
        .unwrap_or_else(|| panic!("{ctx}: `transports` is not an array"));
    assert!(listed.len() <= 16, "{ctx}: more than 16 transports listed");
    let mut transports = Vec::new();
    for t in listed {
        let name = t.as_str().unwrap_or_else(|| panic!("{ctx}: a transport is not a string"));
        if KNOWN_TRANSPORTS.contains(&name) && !transports.iter().any(|x| x == name) {
            transports.push(name.to_owned());
        }
    }
    Capabilities {
        transports,
        chunking: flag("chunking"),
        resume: flag("resume"),
        sign_all: flag("sign_all"),
        max_frame_bytes: obj
            .get("max_frame_bytes")
            .unwrap_or_else(|| panic!("{ctx}: required capability `max_frame_bytes` missing"))
            .as_u64()
            .unwrap_or_else(|| panic!("{ctx}: `max_frame_bytes` is not a non-negative integer")),
        app_types: obj.get("app_types").is_some_and(|v| {
            v.as_bool().unwrap_or_else(|| panic!("{ctx}: capability `app_types` is not a boolean"))
        }),
    }
}

/// §7.8: agreement from I's offer `a` and R's offer `b`.
fn negotiate(a: &Capabilities, b: &Capabilities) -> Capabilities {
    Capabilities {
        transports: a.transports.iter().filter(|t| b.transports.contains(t)).cloned().collect(),
        chunking: a.chunking && b.chunking,
        resume: a.resume && b.resume,
        sign_all: a.sign_all || b.sign_all,
        max_frame_bytes: a.max_frame_bytes.min(b.max_frame_bytes),
        app_types: a.app_types && b.app_types,
    }
}

fn transport_set(c: &Capabilities) -> BTreeSet<&str> {
    c.transports.iter().map(String::as_str).collect()
}

// ---------------------------------------------------------------------------------------------
// Payload shape checks
// ---------------------------------------------------------------------------------------------

fn payload_object<'a>(env: &'a Envelope, ctx: &str) -> &'a Map<String, Value> {
    env["payload"].as_object().unwrap_or_else(|| panic!("{ctx}: payload is not an object"))
}

fn assert_members(obj: &Map<String, Value>, expected: &[&str], ctx: &str) {
    let got: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    assert_eq!(got, want, "{ctx}: payload members differ from the spec's list");
}

fn payload_str<'a>(obj: &'a Map<String, Value>, name: &str, ctx: &str) -> &'a str {
    obj.get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{ctx}: payload `{name}` is missing or not a string"))
}

fn payload_b64u32(obj: &Map<String, Value>, name: &str, ctx: &str) -> [u8; 32] {
    let bytes = b64u_decode_len(payload_str(obj, name, ctx), 32, name)
        .unwrap_or_else(|e| panic!("{ctx}: payload {e}"));
    to32(&bytes, ctx)
}

/// §5 table and §9 for signed messages: seq 0, session_id rule and payload shape.
fn check_signed_message_shape(env: &Envelope) -> Result<(), String> {
    if env["seq"].as_u64() != Some(0) {
        return Err("seq of a signed message is not 0 (§5, §9.1)".into());
    }
    let message_type = env["type"].as_str().unwrap_or_default();
    let session_null = env["session_id"].is_null();
    let payload = &env["payload"];
    let empty = Value::Object(Map::new());
    match message_type {
        "PING" if !session_null => Err("PING session_id must be null (§5)".into()),
        "PING" if *payload != empty => {
            Err(format!("{message_type} payload must be {{}} (§5), got {payload}"))
        }
        "BYE" => {
            let o = payload.as_object().ok_or("BYE payload is not an object (§5)")?;
            let reason_ok = match o.get("reason") {
                None => true,
                Some(r) => r.as_str().is_some_and(|t| t.len() <= 256),
            };
            if o.keys().any(|k| k != "reason") || !reason_ok {
                return Err(format!("BYE payload differs from §5: {payload}"));
            }
            Ok(())
        }
        "PONG" => {
            let ok = payload.as_object().is_some_and(|o| {
                o.len() == 1 && o.get("in_reply_to").is_some_and(Value::is_string)
            });
            if !session_null || !ok {
                return Err("PONG shape differs from §5".into());
            }
            Ok(())
        }
        "ERROR" => {
            let o = payload.as_object().ok_or("ERROR payload is not an object")?;
            let names: BTreeSet<&str> = o.keys().map(String::as_str).collect();
            if names != BTreeSet::from(["code", "in_reply_to", "message"]) {
                return Err(format!("ERROR payload members {names:?} differ from §9.2"));
            }
            let code = o["code"].as_str().ok_or("ERROR code is not a string")?;
            if !ERROR_CODES.contains(&code) {
                return Err(format!("ERROR code {code} not in §10"));
            }
            if !(o["in_reply_to"].is_null() || o["in_reply_to"].is_string()) {
                return Err("ERROR in_reply_to is neither string nor null".into());
            }
            let text = o["message"].as_str().ok_or("ERROR message is not a string")?;
            if text.len() > 256 {
                return Err("ERROR message longer than 256 bytes".into());
            }
            let fixed = ERROR_TEXTS.iter().find(|(c, _)| *c == code).map(|(_, t)| *t);
            if fixed != Some(text) {
                return Err(format!("ERROR text {text:?} is not §10's text for {code}"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Self-tests of the from-scratch building blocks
// ---------------------------------------------------------------------------------------------

#[test]
fn strict_base64url_codec() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // Round trips agree with an independent encoder.
    for len in 0..40usize {
        let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(151) ^ 0xa5).collect();
        let mine = b64u_encode(&bytes);
        assert_eq!(mine, URL_SAFE_NO_PAD.encode(&bytes), "b64u encode of {len} bytes");
        assert_eq!(b64u_decode(&mine).expect("own encoding decodes"), bytes);
    }
    // §1.1: padding, foreign alphabet and non-zero trailing bits are rejected.
    for bad in ["AA==", "AAA=", "+AAA", "/AAA", "AB", "AAB", "A", "AA A", "AA\n"] {
        assert!(b64u_decode(bad).is_err(), "strict b64u accepted {bad:?}");
    }
    assert_eq!(b64u_decode("AA").expect("AA is canonical"), vec![0]);
    assert_eq!(b64u_decode("AAE").expect("AAE is canonical"), vec![0, 1]);
}

#[test]
fn strict_json_parser_boundaries() {
    // Accepted at the edges of §3.1.
    for ok in ["9007199254740991", "-9007199254740991", "0", " [ ] \n", "\"\\ud83d\\ude00\""] {
        parse_strict_json(ok).unwrap_or_else(|e| panic!("rejected {ok:?}: {e}"));
    }
    // Rejected by §3.1 (and RFC 8259).
    for bad in [
        "9007199254740992",
        "-9007199254740992",
        "-0",
        "1.5",
        "1e2",
        "01",
        "\"\\ud83d\"",
        "\"\\ude00\"",
        "{\"a\":1,\"a\":2}",
        "[{\"x\":{\"a\":1,\"a\":1}}]",
        "1 2",
        "",
        "\"\u{1}\"",
    ] {
        assert!(parse_strict_json(bad).is_err(), "strict parser accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// canonical.json
// ---------------------------------------------------------------------------------------------

#[test]
fn canonical_vectors() {
    let v = load("canonical.json");
    let cases = get_array(&v, "cases", "canonical.json");
    assert!(!cases.is_empty(), "canonical.json has no cases");
    for (i, case) in cases.iter().enumerate() {
        let ctx = format!("canonical.json case {i}");
        let input = get_str(case, "input", &ctx);
        let expected = get_str(case, "canonical", &ctx);
        let parsed = parse_strict_json(input)
            .unwrap_or_else(|e| panic!("{ctx}: input rejected by the §3.1 parser: {e}"));
        assert_eq!(canonical(&parsed), expected, "{ctx}: canonical form differs");
        // Canonicalization is idempotent: the canonical text is itself canonical.
        let reparsed = parse_strict_json(expected)
            .unwrap_or_else(|e| panic!("{ctx}: canonical text rejected by the parser: {e}"));
        assert_eq!(canonical(&reparsed), expected, "{ctx}: canonical form not stable");
    }
}

// ---------------------------------------------------------------------------------------------
// envelopes.json
// ---------------------------------------------------------------------------------------------

/// Vectors whose payload differs from the §5 table: none.
const KNOWN_SECTION5_DISCREPANCIES: [&str; 0] = [];

/// The "text peerlink sends" column of §10.
const ERROR_TEXTS: [(&str, &str); 13] = [
    ("SESSION_NOT_FOUND", "no such session"),
    ("SESSION_EXPIRED", "session expired; start a new handshake"),
    ("INVALID_MESSAGE", "malformed message"),
    ("AUTHENTICATION_FAILED", "authentication failed"),
    ("RATE_LIMIT_EXCEEDED", "rate limit exceeded"),
    ("MESSAGE_TOO_LARGE", "message too large"),
    ("INVALID_STATE", "message not allowed in the current state"),
    ("REPLAY_DETECTED", "replayed or stale message"),
    ("UNSUPPORTED_VERSION", "unsupported protocol version"),
    ("UNKNOWN_RECIPIENT", "unknown recipient"),
    ("MAILBOX_FULL", "recipient mailbox full"),
    ("TIMEOUT", "timed out"),
    ("INTERNAL_ERROR", "internal error"),
];

#[test]
fn envelope_vectors() {
    let v = load("envelopes.json");
    let alice = identity(get(&v, "identity", "envelopes.json"), "envelopes.json identity");
    let envelopes = get_array(&v, "envelopes", "envelopes.json");
    assert!(!envelopes.is_empty(), "envelopes.json has no envelopes");
    let mut discrepancies = Vec::new();
    for (i, e) in envelopes.iter().enumerate() {
        let description = get_str(e, "description", "envelopes.json");
        let ctx = format!("envelopes.json #{i} ({description})");
        let wire_text = get_str(e, "wire", &ctx);
        let env = decode_valid(wire_text, &ctx);
        assert_eq!(wire(&env), wire_text, "{ctx}: wire string is not canonical (§6.1)");
        assert_eq!(
            signing_input(&env),
            get_str(e, "signing_input", &ctx),
            "{ctx}: signing input (§6.2)"
        );
        assert_eq!(
            associated_data(&env),
            get_str(e, "associated_data", &ctx),
            "{ctx}: associated data (§6.3)"
        );
        assert_eq!(
            env_str(&env, "signature", &ctx),
            get_str(e, "signature_b64u", &ctx),
            "{ctx}: `signature` member differs from signature_b64u"
        );
        assert_eq!(
            env_str(&env, "sender_id", &ctx),
            alice.entity_id,
            "{ctx}: sender is not the vector identity"
        );
        check_envelope_signature(&env, &alice, &ctx);
        let message_type = env_str(&env, "type", &ctx);
        assert_eq!(
            class_of(message_type),
            Some(Class::Signed),
            "{ctx}: envelopes.json samples are signed messages"
        );
        if let Err(why) = check_signed_message_shape(&env) {
            eprintln!("SPEC/VECTOR DISCREPANCY in {ctx}: {why}");
            discrepancies.push(description.to_owned());
        }
    }
    assert_eq!(
        discrepancies, KNOWN_SECTION5_DISCREPANCIES,
        "envelopes.json: set of vectors that disagree with §5 changed"
    );
}

// ---------------------------------------------------------------------------------------------
// handshake.json
// ---------------------------------------------------------------------------------------------

const HANDSHAKE_TYPES: [&str; 6] = [
    "HANDSHAKE_INIT",
    "HANDSHAKE_INIT_ACK",
    "CHALLENGE_RESPONSE",
    "SESSION_ESTABLISHED",
    "SESSION_CONFIRM",
    "READY",
];

/// Everything handshake.json establishes, for use by the session test.
struct HandshakeResult {
    initiator: Identity,
    responder: Identity,
    session_id: String,
    keys: SessionKeys,
    agreed: Capabilities,
}

/// Verifies handshake.json completely and returns the session it establishes.
fn verify_handshake() -> HandshakeResult {
    let v = load("handshake.json");
    let ctx = "handshake.json";
    let now = get_u64(&v, "now", ctx);
    let init_v = get(&v, "initiator", ctx);
    let resp_v = get(&v, "responder", ctx);
    let alice = identity(get(init_v, "identity", ctx), "handshake.json initiator identity");
    let bob = identity(get(resp_v, "identity", ctx), "handshake.json responder identity");
    assert_ne!(alice.entity_id, bob.entity_id, "{ctx}: both sides have the same id");

    // Ephemeral keys.
    let i_eph = StaticSecret::from(hex32_field(init_v, "ephemeral_secret", ctx));
    let r_eph = StaticSecret::from(hex32_field(resp_v, "ephemeral_secret", ctx));
    let i_eph_pub = XPublicKey::from(&i_eph);
    let r_eph_pub = XPublicKey::from(&r_eph);
    let challenge = hex32_field(resp_v, "challenge", ctx);
    let session_id = get_str(resp_v, "session_id", ctx).to_owned();

    // Messages: valid frames, recorded in canonical form.
    let raw = get_array(&v, "messages", ctx);
    assert_eq!(raw.len(), 6, "{ctx}: a handshake has six messages");
    let msgs: Vec<Envelope> = raw
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mctx = format!("{ctx} M{}", i + 1);
            let text = m.as_str().unwrap_or_else(|| panic!("{mctx}: not a string"));
            let env = decode_valid(text, &mctx);
            assert_eq!(wire(&env), text, "{mctx}: recorded message is not its wire form");
            env
        })
        .collect();

    // §7.2 transcript hashes.
    let th = transcript_hashes(&msgs);
    let recorded_th = get_array(&v, "transcript_hashes", ctx);
    assert_eq!(recorded_th.len(), 7, "{ctx}: TH0..TH6 expected");
    for (n, (mine, rec)) in th.iter().zip(recorded_th).enumerate() {
        let rec = rec.as_str().expect("transcript hash is a string");
        assert_eq!(hex_encode(mine), rec, "{ctx}: TH{n} differs");
    }

    // §7.1 / §7.9 envelope checks on each step.
    for (i, env) in msgs.iter().enumerate() {
        let step = i + 1;
        let mctx = format!("{ctx} M{step}");
        let (sender, recipient) = if step % 2 == 1 { (&alice, &bob) } else { (&bob, &alice) };
        assert_eq!(env_str(env, "type", &mctx), HANDSHAKE_TYPES[i], "{mctx}: type");
        assert_eq!(env_u64(env, "seq", &mctx), step as u64, "{mctx}: seq = step");
        assert_eq!(env_str(env, "version", &mctx), VERSION, "{mctx}: version");
        assert_eq!(env_str(env, "sender_id", &mctx), sender.entity_id, "{mctx}: sender_id");
        assert_eq!(
            env_str(env, "recipient_id", &mctx),
            recipient.entity_id,
            "{mctx}: recipient_id = the other side"
        );
        if step == 1 {
            assert!(env["session_id"].is_null(), "{mctx}: session_id must be null");
        } else {
            assert_eq!(
                env_str(env, "session_id", &mctx),
                session_id,
                "{mctx}: session_id = the assigned id"
            );
        }
        let ts = env_u64(env, "timestamp", &mctx);
        assert!(ts.abs_diff(now) <= CLOCK_SKEW_MS, "{mctx}: timestamp outside skew");
        check_envelope_signature(env, sender, &mctx);
        // The other side's key must not verify it (the check can tell keys apart).
        let sig = b64u_decode_len(env_str(env, "signature", &mctx), 64, "signature")
            .expect("signature checked");
        let sig = Signature::from_bytes(&sig.try_into().expect("64 bytes"));
        assert!(
            recipient.verifying.verify_strict(signing_input(env).as_bytes(), &sig).is_err(),
            "{mctx}: signature also verifies with the recipient's key"
        );
    }

    // §4.1: session_id generated as `sess_` + b64u of 16 bytes.
    let suffix = session_id
        .strip_prefix("sess_")
        .unwrap_or_else(|| panic!("{ctx}: session id {session_id:?} lacks `sess_`"));
    b64u_decode_len(suffix, 16, "session id suffix").unwrap_or_else(|e| panic!("{ctx}: {e}"));

    // §7.3 M1 payload.
    let p1 = payload_object(&msgs[0], "M1");
    assert_members(p1, &["capabilities", "ephemeral_key", "identity_key", "versions"], "M1");
    assert_eq!(
        payload_b64u32(p1, "identity_key", "M1"),
        *alice.verifying.as_bytes(),
        "M1: identity_key is not the initiator's key"
    );
    assert_eq!(
        payload_b64u32(p1, "ephemeral_key", "M1"),
        *i_eph_pub.as_bytes(),
        "M1: ephemeral_key does not derive from the initiator's ephemeral secret"
    );
    let versions: Vec<&str> = p1["versions"]
        .as_array()
        .expect("M1: versions is an array")
        .iter()
        .map(|x| x.as_str().expect("M1: a version is a string"))
        .collect();
    assert!((1..=8).contains(&versions.len()), "M1: 1 to 8 versions");
    assert_eq!(
        &p1["capabilities"],
        get(init_v, "capabilities", ctx),
        "M1: capabilities differ from initiator.capabilities"
    );
    let offer_i = parse_capabilities(&p1["capabilities"], "M1 capabilities");

    // §7.4 M2 payload.
    let p2 = payload_object(&msgs[1], "M2");
    assert_members(
        p2,
        &["capabilities", "challenge", "ephemeral_key", "identity_key", "transcript", "version"],
        "M2",
    );
    assert_eq!(
        payload_b64u32(p2, "identity_key", "M2"),
        *bob.verifying.as_bytes(),
        "M2: identity_key is not the responder's key"
    );
    assert_eq!(
        payload_b64u32(p2, "ephemeral_key", "M2"),
        *r_eph_pub.as_bytes(),
        "M2: ephemeral_key does not derive from the responder's ephemeral secret"
    );
    assert_eq!(
        payload_b64u32(p2, "challenge", "M2"),
        challenge,
        "M2: challenge differs from responder.challenge"
    );
    assert_eq!(payload_b64u32(p2, "transcript", "M2"), th[1], "M2: transcript is not TH1");
    // R picks the first of I's versions it supports; this implementation supports "1.2".
    let chosen = versions.iter().find(|x| **x == VERSION).expect("M1 offers no supported version");
    assert_eq!(payload_str(p2, "version", "M2"), *chosen, "M2: chosen version");
    assert_eq!(
        payload_str(p2, "version", "M2"),
        env_str(&msgs[1], "version", "M2"),
        "M2: payload version differs from envelope version"
    );
    assert_eq!(
        &p2["capabilities"],
        get(resp_v, "capabilities", ctx),
        "M2: capabilities differ from responder.capabilities"
    );
    let offer_r = parse_capabilities(&p2["capabilities"], "M2 capabilities");

    // §7.5 M3 payload.
    let p3 = payload_object(&msgs[2], "M3");
    assert_members(p3, &["challenge", "transcript"], "M3");
    assert_eq!(payload_b64u32(p3, "challenge", "M3"), challenge, "M3: challenge not echoed");
    assert_eq!(payload_b64u32(p3, "transcript", "M3"), th[2], "M3: transcript is not TH2");

    // §7.3 step 4 / §7.4 step 5: dh, from both sides.
    let dh_i = i_eph.diffie_hellman(&r_eph_pub).to_bytes();
    let dh_r = r_eph.diffie_hellman(&i_eph_pub).to_bytes();
    assert_eq!(dh_i, dh_r, "{ctx}: the two sides compute different dh");
    assert_ne!(dh_i, [0u8; 32], "{ctx}: dh is all zeros");
    assert_eq!(hex_encode(&dh_i), get_str(&v, "dh", ctx), "{ctx}: dh differs");

    // §7.7 key schedule.
    let keys = key_schedule(&th[3], &dh_i);
    let kv = get(&v, "keys", ctx);
    for (name, mine) in [
        ("k_i2r", &keys.k_i2r),
        ("k_r2i", &keys.k_r2i),
        ("k_confirm_i", &keys.k_confirm_i),
        ("k_confirm_r", &keys.k_confirm_r),
        ("k_resumption", &keys.k_resumption),
    ] {
        assert_eq!(hex_encode(mine), get_str(kv, name, ctx), "{ctx}: key {name} differs");
    }

    // §7.6 confirmation tags.
    let tags = [
        hmac_sha256(&keys.k_confirm_r, &[b"peerlink v1 established", &th[3]]),
        hmac_sha256(&keys.k_confirm_i, &[b"peerlink v1 confirm", &th[4]]),
        hmac_sha256(&keys.k_confirm_r, &[b"peerlink v1 ready", &th[5]]),
    ];
    let recorded_tags = get_array(&v, "confirm_tags", ctx);
    assert_eq!(recorded_tags.len(), 3, "{ctx}: three confirm tags expected");
    for (k, tag) in tags.iter().enumerate() {
        let step = k + 4;
        let mctx = format!("M{step}");
        assert_eq!(
            hex_encode(tag),
            recorded_tags[k].as_str().expect("confirm tag is a string"),
            "{ctx}: confirm_tags[{k}] (step {step}) differs"
        );
        let p = payload_object(&msgs[step - 1], &mctx);
        assert_members(p, &["confirm"], &mctx);
        assert_eq!(
            payload_b64u32(p, "confirm", &mctx),
            *tag,
            "{mctx}: confirm differs from the recomputed tag"
        );
    }

    // §7.8 negotiation.
    let agreed = negotiate(&offer_i, &offer_r);
    let recorded_agreed = parse_capabilities(
        get(&v, "agreed_capabilities", ctx),
        "handshake.json agreed_capabilities",
    );
    assert_eq!(
        transport_set(&agreed),
        transport_set(&recorded_agreed),
        "{ctx}: agreed transports (a ∩ b)"
    );
    assert_eq!(agreed.chunking, recorded_agreed.chunking, "{ctx}: chunking = a ∧ b");
    assert_eq!(agreed.resume, recorded_agreed.resume, "{ctx}: resume = a ∧ b");
    assert_eq!(agreed.sign_all, recorded_agreed.sign_all, "{ctx}: sign_all = a ∨ b");
    assert_eq!(agreed.app_types, recorded_agreed.app_types, "{ctx}: app_types = a ∧ b");
    assert_eq!(
        agreed.max_frame_bytes, recorded_agreed.max_frame_bytes,
        "{ctx}: max_frame_bytes = min(a, b)"
    );

    // §7.7 resumption proof over the given context bytes (hex, per §12).
    let rp = get(&v, "resumption_proof", ctx);
    let context = hex_decode(get_str(rp, "context", ctx), ctx);
    let proof = hmac_sha256(&keys.k_resumption, &[b"peerlink v1 resume", &context]);
    assert_eq!(hex_encode(&proof), get_str(rp, "proof", ctx), "{ctx}: resumption proof differs");

    HandshakeResult { initiator: alice, responder: bob, session_id, keys, agreed }
}

#[test]
fn handshake_vectors() {
    let hs = verify_handshake();
    assert!(hs.agreed.sign_all, "handshake.json agrees sign_all");
}

// ---------------------------------------------------------------------------------------------
// session.json
// ---------------------------------------------------------------------------------------------

#[test]
fn session_vectors() {
    let hs = verify_handshake();
    let v = load("session.json");
    let ctx = "session.json";
    assert_eq!(
        get_str(&v, "session_id", ctx),
        hs.session_id,
        "{ctx}: session id differs from handshake.json"
    );
    assert!(hs.agreed.sign_all, "{ctx}: says sign_all is on; handshake must agree");
    let messages = get_array(&v, "messages", ctx);
    assert!(!messages.is_empty(), "{ctx}: no messages");
    let mut last_sent = [0u64; 2]; // [I → R, R → I], §8.1: starts at 0
    for (i, m) in messages.iter().enumerate() {
        let mctx = format!("{ctx} message {i}");
        let wire_text = get_str(m, "wire", &mctx);
        let env = decode_valid(wire_text, &mctx);
        assert_eq!(wire(&env), wire_text, "{mctx}: wire string is not canonical");

        let message_type = env_str(&env, "type", &mctx);
        assert_eq!(message_type, get_str(m, "type", &mctx), "{mctx}: type");
        assert_eq!(class_of(message_type), Some(Class::Session), "{mctx}: not a session type");
        let seq = env_u64(&env, "seq", &mctx);
        assert_eq!(seq, get_u64(m, "seq", &mctx), "{mctx}: seq");
        assert_eq!(env_str(&env, "session_id", &mctx), hs.session_id, "{mctx}: session_id");
        assert_eq!(env_str(&env, "version", &mctx), VERSION, "{mctx}: version");

        let (dir, send_key, recv_other_key, sender, recipient) =
            match get_str(m, "direction", &mctx) {
                "initiator_to_responder" => {
                    (0, &hs.keys.k_i2r, &hs.keys.k_r2i, &hs.initiator, &hs.responder)
                }
                "responder_to_initiator" => {
                    (1, &hs.keys.k_r2i, &hs.keys.k_i2r, &hs.responder, &hs.initiator)
                }
                other => panic!("{mctx}: unknown direction {other:?}"),
            };
        assert_eq!(env_str(&env, "sender_id", &mctx), sender.entity_id, "{mctx}: sender_id");
        assert_eq!(
            env_str(&env, "recipient_id", &mctx),
            recipient.entity_id,
            "{mctx}: recipient_id"
        );

        // §8.2 step 1: seq = last sent + 1 in this direction.
        assert_eq!(seq, last_sent[dir] + 1, "{mctx}: seq is not last sent + 1");
        last_sent[dir] = seq;

        // §8.2 step 2 / §8.3 step 3: the nonce rule.
        let nonce = session_nonce(seq);
        let nonce_member = b64u_decode_len(env_str(&env, "nonce", &mctx), 12, "nonce")
            .unwrap_or_else(|e| panic!("{mctx}: {e}"));
        assert_eq!(nonce_member, nonce, "{mctx}: nonce member is not 0^4 || u64be(seq)");
        assert_eq!(
            hex_encode(&nonce),
            get_str(m, "nonce", &mctx),
            "{mctx}: recorded nonce differs from 0^4 || u64be(seq)"
        );

        // §6.3 associated data.
        let aad = associated_data(&env);
        assert_eq!(aad, get_str(m, "associated_data", &mctx), "{mctx}: associated data");

        // §8.2 step 4 / §8.3 step 6: payload is b64u(ciphertext || tag).
        let payload =
            env["payload"].as_str().unwrap_or_else(|| panic!("{mctx}: payload is not a string"));
        assert_eq!(
            payload,
            get_str(m, "ciphertext_b64u", &mctx),
            "{mctx}: payload differs from ciphertext_b64u"
        );
        let ciphertext = b64u_decode(payload).unwrap_or_else(|e| panic!("{mctx}: payload: {e}"));
        let plaintext = aead_open(send_key, &nonce, &ciphertext, aad.as_bytes())
            .unwrap_or_else(|| panic!("{mctx}: does not decrypt with the direction's key"));
        assert_eq!(
            hex_encode(&plaintext),
            get_str(m, "plaintext", &mctx),
            "{mctx}: plaintext differs"
        );
        let expected_plaintext = hex_decode(get_str(m, "plaintext", &mctx), &mctx);
        assert_eq!(
            aead_seal(send_key, &nonce, &expected_plaintext, aad.as_bytes()),
            ciphertext,
            "{mctx}: re-encrypting the plaintext gives another ciphertext"
        );
        assert!(
            aead_open(recv_other_key, &nonce, &ciphertext, aad.as_bytes()).is_none(),
            "{mctx}: also decrypts with the other direction's key"
        );

        // §8.2 step 5 (sign_all): signature over §6.2 with the sender's identity key.
        assert_eq!(
            signing_input(&env),
            get_str(m, "signing_input", &mctx),
            "{mctx}: signing input"
        );
        check_envelope_signature(&env, sender, &mctx);
    }
}

// ---------------------------------------------------------------------------------------------
// §13.1 data frames, §13.2 stream control, §14 reassembly: parsers written from the spec
// ---------------------------------------------------------------------------------------------

/// §13.1 / §11: the longest data-frame header, in bytes, the terminating `\n` excluded.
const MAX_HEADER_BYTES: usize = 1024;
/// §13.2 / §11: selective acknowledgements per `ACK`.
const MAX_SELECTIVE: usize = 64;
/// §14 / §11: the longest reassembled message.
const MAX_REASSEMBLED_BYTES: u64 = 16 * 1024 * 1024;
/// §14 / §11: chunks per message.
const MAX_CHUNKS: u64 = 65_536;
/// §14 / §11: partial messages held per peer.
const MAX_PARTIALS: usize = 4;

/// §5: the session types whose plaintext is a data frame (§13.1).
const DATA_FRAME_TYPES: [&str; 6] =
    ["PEER_MESSAGE", "BROADCAST", "TASK_REQUEST", "TASK_RESPONSE", "STATUS", "CHUNKED_MESSAGE"];
/// §14: the logical types a chunked message may have.
const CHUNK_LOGICAL_TYPES: [&str; 5] =
    ["PEER_MESSAGE", "BROADCAST", "TASK_REQUEST", "TASK_RESPONSE", "STATUS"];

/// §14: the `chunk` member of a data-frame header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChunkInfo {
    id: String,
    seq: u64,
    last: bool,
    total: u64,
    logical_type: String,
}

/// §13.1: a parsed data frame.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DataFrame {
    epoch: u64,
    no: u64,
    base: u64,
    reply_to: Option<String>,
    /// §13.1 `app_type`: an entity id's syntax.
    app_type: Option<String>,
    chunk: Option<ChunkInfo>,
    body: Vec<u8>,
}

/// §13.2 `ack`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AckInfo {
    epoch: u64,
    cumulative: u64,
    selective: Vec<u64>,
}

/// §13.2 `forward`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ForwardInfo {
    epoch: u64,
    base: u64,
}

/// §13.2: the plaintext of an `ACK`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamControl {
    ack: Option<AckInfo>,
    forward: Option<ForwardInfo>,
}

/// What §5 says a session message's plaintext is.
#[derive(Debug)]
enum SessionPlaintext {
    Data(DataFrame),
    Control(StreamControl),
    Capabilities,
}

/// Exactly the `required` members, plus any of `optional`; anything else is `INVALID_MESSAGE`.
fn check_member_names(
    obj: &Map<String, Value>,
    required: &[&str],
    optional: &[&str],
    what: &str,
) -> Result<(), Rejection> {
    if let Some(name) =
        obj.keys().find(|k| !required.contains(&k.as_str()) && !optional.contains(&k.as_str()))
    {
        return Err(invalid(format!("{what}: unknown member `{name}`")));
    }
    if let Some(name) = required.iter().find(|k| !obj.contains_key(**k)) {
        return Err(invalid(format!("{what}: missing member `{name}`")));
    }
    Ok(())
}

/// A required integer member in 0..=2^53 − 1 (negative values are out of every range here).
fn int_member(obj: &Map<String, Value>, name: &str, what: &str) -> Result<u64, Rejection> {
    obj.get(name)
        .ok_or_else(|| invalid(format!("{what}: missing member `{name}`")))?
        .as_u64()
        .filter(|n| *n <= MAX_SAFE)
        .ok_or_else(|| invalid(format!("{what}: `{name}` is not an integer in 0..=2^53-1")))
}

/// Strict JSON (§3.1 applied to the plaintext too: a guess, the spec only says "JSON").
fn strict_json_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, Rejection> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| invalid(format!("{what}: not UTF-8: {e}")))?;
    match parse_strict_json(text).map_err(|e| invalid(format!("{what}: {e}")))? {
        Value::Object(obj) => Ok(obj),
        _ => Err(invalid(format!("{what}: not a JSON object"))),
    }
}

/// §13.1: `header (≤ 1024 bytes) || "\n" || body`, for a session message of `envelope_type`.
fn parse_data_frame(plaintext: &[u8], envelope_type: &str) -> Result<DataFrame, Rejection> {
    if !DATA_FRAME_TYPES.contains(&envelope_type) {
        return Err(invalid(format!("{envelope_type} does not carry a data frame (§5)")));
    }
    let window = &plaintext[..plaintext.len().min(MAX_HEADER_BYTES + 1)];
    let newline = window
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| invalid("data frame: no `\\n` within 1025 bytes"))?;
    let header = strict_json_object(&plaintext[..newline], "data-frame header")?;
    let body = plaintext[newline + 1..].to_vec();
    let what = "data-frame header";
    check_member_names(
        &header,
        &["epoch", "no", "base"],
        &["reply_to", "app_type", "chunk"],
        what,
    )?;
    let epoch = int_member(&header, "epoch", what)?;
    if epoch == 0 {
        return Err(invalid("data-frame header: `epoch` outside 1..=2^53-1"));
    }
    let no = int_member(&header, "no", what)?;
    if no == 0 {
        return Err(invalid("data-frame header: `no` < 1"));
    }
    let base = int_member(&header, "base", what)?;
    if base > no {
        return Err(invalid(format!("data-frame header: base {base} > no {no}")));
    }
    // Guess: frame numbers start at 1 and the sender holds at least this frame, so base ≥ 1.
    if base == 0 {
        return Err(invalid("data-frame header: `base` < 1"));
    }
    // Guess: `chunk` is required in a CHUNKED_MESSAGE and forbidden elsewhere.
    let chunk = header.get("chunk").map(parse_chunk_info).transpose()?;
    match (envelope_type == "CHUNKED_MESSAGE", chunk.is_some()) {
        (true, false) => return Err(invalid("CHUNKED_MESSAGE without `chunk`")),
        (false, true) => return Err(invalid(format!("`chunk` in a {envelope_type}"))),
        _ => {}
    }
    // Guess: `reply_to` has `message_id` syntax and is allowed only when the (logical) type is
    // TASK_RESPONSE, including a chunked TASK_RESPONSE.
    let logical_type = chunk.as_ref().map_or(envelope_type, |c| c.logical_type.as_str());
    let reply_to = match header.get("reply_to") {
        None => None,
        Some(Value::String(s)) if is_message_id(s) => Some(s.clone()),
        Some(other) => return Err(invalid(format!("`reply_to` {other} is not a message id"))),
    };
    if reply_to.is_some() && logical_type != "TASK_RESPONSE" {
        return Err(invalid(format!("`reply_to` in a {logical_type}")));
    }
    // §13.1: `app_type` has an entity id's syntax; a receiver ignores it on types other than
    // PEER_MESSAGE, BROADCAST and STATUS, so it is not refused there.
    let app_type = match header.get("app_type") {
        None => None,
        Some(Value::String(s)) if is_entity_id(s) => Some(s.clone()),
        Some(other) => return Err(invalid(format!("`app_type` {other} is not an entity id"))),
    };
    Ok(DataFrame { epoch, no, base, reply_to, app_type, chunk, body })
}

/// §14: `{"id", "seq", "last", "total", "type"}`, all required (a guess), nothing else (a guess).
fn parse_chunk_info(v: &Value) -> Result<ChunkInfo, Rejection> {
    let what = "chunk";
    let obj = v.as_object().ok_or_else(|| invalid("`chunk` is not an object"))?;
    check_member_names(obj, &["id", "seq", "last", "total", "type"], &[], what)?;
    let id = match &obj["id"] {
        Value::String(s) if is_message_id(s) => s.clone(),
        other => return Err(invalid(format!("chunk `id` {other} is not a message id"))),
    };
    let seq = int_member(obj, "seq", what)?;
    let last = obj["last"].as_bool().ok_or_else(|| invalid("chunk `last` is not a boolean"))?;
    let total = int_member(obj, "total", what)?;
    let logical_type = match obj["type"].as_str() {
        Some(t) if CHUNK_LOGICAL_TYPES.contains(&t) => t.to_owned(),
        _ => return Err(invalid(format!("chunk `type` {} is not one of §14's", obj["type"]))),
    };
    if total > MAX_REASSEMBLED_BYTES || seq >= MAX_CHUNKS {
        return Err(Rejection {
            code: "MESSAGE_TOO_LARGE",
            reason: format!("chunk total {total} or position {seq} beyond §14's bounds"),
        });
    }
    Ok(ChunkInfo { id, seq, last, total, logical_type })
}

/// §13.2: `{"ack": {"epoch", "cumulative", "selective"}, "forward": {"epoch", "base"}}`, both
/// optional. Guesses: the inner members are all required and no unknown member is allowed at
/// any level (§13.1's rule carried over); `selective` need not be sorted.
fn parse_stream_control(plaintext: &[u8]) -> Result<StreamControl, Rejection> {
    let obj = strict_json_object(plaintext, "stream control")?;
    check_member_names(&obj, &[], &["ack", "forward"], "stream control")?;
    let ack = match obj.get("ack") {
        None => None,
        Some(v) => {
            let what = "ack";
            let a = v.as_object().ok_or_else(|| invalid("`ack` is not an object"))?;
            check_member_names(a, &["epoch", "cumulative", "selective"], &[], what)?;
            let epoch = int_member(a, "epoch", what)?;
            if epoch == 0 {
                return Err(invalid("ack: `epoch` outside 1..=2^53-1"));
            }
            let cumulative = int_member(a, "cumulative", what)?;
            let listed =
                a["selective"].as_array().ok_or_else(|| invalid("`selective` is not an array"))?;
            if listed.len() > MAX_SELECTIVE {
                return Err(invalid(format!(
                    "{} selective entries > {MAX_SELECTIVE}",
                    listed.len()
                )));
            }
            let mut selective = Vec::with_capacity(listed.len());
            for n in listed {
                let n = n
                    .as_u64()
                    .filter(|n| *n <= MAX_SAFE)
                    .ok_or_else(|| invalid(format!("selective entry {n} is not an integer")))?;
                if n <= cumulative {
                    return Err(invalid(format!(
                        "selective {n} not above cumulative {cumulative}"
                    )));
                }
                selective.push(n);
            }
            Some(AckInfo { epoch, cumulative, selective })
        }
    };
    let forward = match obj.get("forward") {
        None => None,
        Some(v) => {
            let what = "forward";
            let f = v.as_object().ok_or_else(|| invalid("`forward` is not an object"))?;
            check_member_names(f, &["epoch", "base"], &[], what)?;
            let epoch = int_member(f, "epoch", what)?;
            let base = int_member(f, "base", what)?;
            if epoch == 0 || base == 0 {
                return Err(invalid("forward: `epoch` and `base` must be ≥ 1"));
            }
            Some(ForwardInfo { epoch, base })
        }
    };
    Ok(StreamControl { ack, forward })
}

/// §5: parses a session message's plaintext as what its type carries.
fn parse_session_plaintext(
    message_type: &str,
    plaintext: &[u8],
) -> Result<SessionPlaintext, Rejection> {
    match message_type {
        "ACK" => parse_stream_control(plaintext).map(SessionPlaintext::Control),
        "CAPABILITY_EXCHANGE" => {
            strict_json_object(plaintext, "capabilities").map(|_| SessionPlaintext::Capabilities)
        }
        t => parse_data_frame(plaintext, t).map(SessionPlaintext::Data),
    }
}

/// §14: one partial message.
struct Partial {
    total: u64,
    logical_type: String,
    last: Option<u64>,
    chunks: std::collections::BTreeMap<u64, Vec<u8>>,
}

/// §14: reassembly of the chunks of one peer (the 60 s age limit and the "another message was
/// delivered after it" rule are about time and stream order, not exercised here).
#[derive(Default)]
struct Reassembler {
    partials: std::collections::BTreeMap<String, Partial>,
}

impl Reassembler {
    /// Adds one chunk; returns `(logical type, message)` once positions 0..=last are present.
    fn add(
        &mut self,
        chunk: &ChunkInfo,
        body: &[u8],
    ) -> Result<Option<(String, Vec<u8>)>, Rejection> {
        if !self.partials.contains_key(&chunk.id) {
            if self.partials.len() >= MAX_PARTIALS {
                return Err(Rejection {
                    code: "MESSAGE_TOO_LARGE",
                    reason: format!("a partial message beyond {MAX_PARTIALS}"),
                });
            }
            let partial = Partial {
                total: chunk.total,
                logical_type: chunk.logical_type.clone(),
                last: None,
                chunks: std::collections::BTreeMap::new(),
            };
            self.partials.insert(chunk.id.clone(), partial);
        }
        let partial = self.partials.get_mut(&chunk.id).expect("inserted above");
        match Self::absorb(partial, chunk, body) {
            Ok(done) => {
                if done {
                    let partial = self.partials.remove(&chunk.id).expect("present");
                    let message = partial.chunks.into_values().flatten().collect();
                    return Ok(Some((partial.logical_type, message)));
                }
                Ok(None)
            }
            Err(e) => {
                // §14: an inconsistent chunk discards the partial.
                self.partials.remove(&chunk.id);
                Err(e)
            }
        }
    }

    /// Returns whether the message is complete.
    fn absorb(partial: &mut Partial, chunk: &ChunkInfo, body: &[u8]) -> Result<bool, Rejection> {
        if chunk.total != partial.total {
            return Err(invalid(format!("total {} after {}", chunk.total, partial.total)));
        }
        // Guess: a different logical type is as inconsistent as a different total.
        if chunk.logical_type != partial.logical_type {
            return Err(invalid("chunks of one message with different types"));
        }
        if let Some(last) = partial.last {
            if chunk.last && chunk.seq != last {
                return Err(invalid(format!("two lasts: {last} and {}", chunk.seq)));
            }
            if chunk.seq > last {
                return Err(invalid(format!("chunk {} after last {last}", chunk.seq)));
            }
        }
        if chunk.last {
            if let Some(beyond) = partial.chunks.keys().find(|s| **s > chunk.seq) {
                return Err(invalid(format!("chunk {beyond} after last {}", chunk.seq)));
            }
            partial.last = Some(chunk.seq);
        }
        match partial.chunks.get(&chunk.seq) {
            Some(held) if held.as_slice() != body => {
                return Err(invalid(format!("duplicate chunk {} with other content", chunk.seq)));
            }
            Some(_) => {} // a duplicate: tolerated
            None => {
                partial.chunks.insert(chunk.seq, body.to_vec());
            }
        }
        let held: u64 = partial.chunks.values().map(|c| c.len() as u64).sum();
        if held > partial.total {
            return Err(invalid(format!("chunk lengths {held} exceed total {}", partial.total)));
        }
        match partial.last {
            Some(last) if partial.chunks.len() as u64 == last + 1 => {
                if held != partial.total {
                    return Err(invalid(format!("chunk lengths {held} ≠ total {}", partial.total)));
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// delivery.json
// ---------------------------------------------------------------------------------------------

/// session.json seals arbitrary bytes: §5 says plaintexts are any byte string at the session
/// layer, and only a node (§12 on) puts data frames and stream control in them. These are the
/// session.json messages that are not also valid node plaintexts (informational).
const SESSION_LAYER_ONLY_PLAINTEXTS: [&str; 4] = ["msg-0001", "msg-0002", "msg-0003", "msg-0004"];

/// delivery.json TASK_RESPONSEs whose `reply_to` names no TASK_REQUEST in the vectors (§13.5):
/// msg-d002 answers `req-from-bob`, which its description says bob sent earlier, outside the files.
const KNOWN_REPLY_TO_DISCREPANCIES: [&str; 1] = ["msg-d002"];

#[test]
fn delivery_vectors() {
    let hs = verify_handshake();
    assert!(hs.agreed.sign_all, "handshake.json must agree sign_all");
    // delivery.json has no `now` (§22); its frames are checked against handshake.json's.
    let now = get_u64(&load("handshake.json"), "now", "handshake.json");
    let ctx = "delivery.json";
    let v = load(ctx);

    // session.json: where the initiator's sequence numbers stand, the message ids in use, and
    // the requests the responder sent (what a TASK_RESPONSE from the initiator may answer).
    let session = load("session.json");
    let mut last_sent_i2r = 0u64;
    let mut message_ids = BTreeSet::new();
    let mut requests_from_responder = BTreeSet::new();
    let mut session_discrepancies = Vec::new();
    for (i, m) in get_array(&session, "messages", "session.json").iter().enumerate() {
        let mctx = format!("session.json message {i}");
        let env = decode_valid(get_str(m, "wire", &mctx), &mctx);
        let id = env_str(&env, "message_id", &mctx).to_owned();
        assert!(message_ids.insert(id.clone()), "{mctx}: message_id {id} used twice");
        let message_type = env_str(&env, "type", &mctx);
        match get_str(m, "direction", &mctx) {
            "initiator_to_responder" => {
                last_sent_i2r = last_sent_i2r.max(env_u64(&env, "seq", &mctx));
            }
            _ if message_type == "TASK_REQUEST" => {
                requests_from_responder.insert(id.clone());
            }
            _ => {}
        }
        let plaintext = hex_decode(get_str(m, "plaintext", &mctx), &mctx);
        if parse_session_plaintext(message_type, &plaintext).is_err() {
            session_discrepancies.push(id);
        }
    }
    assert_eq!(
        session_discrepancies, SESSION_LAYER_ONLY_PLAINTEXTS,
        "session.json: set of session-layer-only plaintexts changed"
    );
    assert!(last_sent_i2r > 0, "session.json has initiator-to-responder messages");

    let frames = get_array(&v, "frames", ctx);
    assert!(!frames.is_empty(), "{ctx}: no frames");
    let mut last_sent = last_sent_i2r;
    let mut epoch = None;
    let mut highest_no = 0u64;
    let mut last_base = 0u64;
    let mut data_frames: Vec<DataFrame> = Vec::new();
    let mut controls = 0usize;
    let mut reply_discrepancies = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let fctx = format!("{ctx} frame {i} ({})", get_str(f, "description", ctx));
        let wire_text = get_str(f, "wire", &fctx);
        let env = decode_valid(wire_text, &fctx);
        assert_eq!(wire(&env), wire_text, "{fctx}: wire string is not canonical (§6.1)");
        assert!(
            wire_text.len() as u64 <= hs.agreed.max_frame_bytes,
            "{fctx}: longer than the agreed max_frame_bytes (§8.2)"
        );

        // Envelope: a session message of the handshake's session, initiator → responder.
        let message_type = env_str(&env, "type", &fctx);
        assert_eq!(class_of(message_type), Some(Class::Session), "{fctx}: not a session type");
        assert_eq!(env_str(&env, "session_id", &fctx), hs.session_id, "{fctx}: session_id");
        assert_eq!(env_str(&env, "version", &fctx), VERSION, "{fctx}: version");
        assert_eq!(
            env_str(&env, "sender_id", &fctx),
            hs.initiator.entity_id,
            "{fctx}: sender_id is not the initiator (§8.3 step 2)"
        );
        assert_eq!(
            env_str(&env, "recipient_id", &fctx),
            hs.responder.entity_id,
            "{fctx}: recipient_id is not the responder (§8.3 step 2)"
        );
        let message_id = env_str(&env, "message_id", &fctx).to_owned();
        assert!(
            message_ids.insert(message_id.clone()),
            "{fctx}: message_id {message_id} already names another message (§4.1)"
        );

        // §8.2 step 1: the initiator's sequence continues after session.json's I → R messages.
        let seq = env_u64(&env, "seq", &fctx);
        assert_eq!(
            seq,
            last_sent + 1,
            "{fctx}: seq is not last sent + 1 (session.json's I → R messages end at \
             {last_sent_i2r})"
        );
        last_sent = seq;

        // §8.3 step 3: nonce = 0^4 || u64be(seq).
        let nonce = session_nonce(seq);
        let nonce_member = b64u_decode_len(env_str(&env, "nonce", &fctx), 12, "nonce")
            .unwrap_or_else(|e| panic!("{fctx}: {e}"));
        assert_eq!(nonce_member, nonce, "{fctx}: nonce member is not 0^4 || u64be(seq)");

        // §8.3 step 4.
        let ts = env_u64(&env, "timestamp", &fctx);
        assert!(ts.abs_diff(now) <= CLOCK_SKEW_MS, "{fctx}: timestamp outside the skew");

        // §8.3 step 6: decrypt with K_i2r under associated_data(E).
        let aad = associated_data(&env);
        let payload =
            env["payload"].as_str().unwrap_or_else(|| panic!("{fctx}: payload is not a string"));
        let ciphertext = b64u_decode(payload).unwrap_or_else(|e| panic!("{fctx}: payload: {e}"));
        let plaintext = aead_open(&hs.keys.k_i2r, &nonce, &ciphertext, aad.as_bytes())
            .unwrap_or_else(|| panic!("{fctx}: does not decrypt with K_i2r"));
        assert_eq!(ciphertext.len(), plaintext.len() + 16, "{fctx}: 16-byte tag appended");
        assert_eq!(hex_encode(&plaintext), get_str(f, "plaintext", &fctx), "{fctx}: plaintext");
        assert_eq!(
            std::str::from_utf8(&plaintext).ok(),
            Some(get_str(f, "plaintext_text", &fctx)),
            "{fctx}: plaintext_text is not the plaintext as UTF-8"
        );
        assert_eq!(
            aead_seal(&hs.keys.k_i2r, &nonce, &plaintext, aad.as_bytes()),
            ciphertext,
            "{fctx}: re-encrypting the plaintext gives another ciphertext"
        );
        assert!(
            aead_open(&hs.keys.k_r2i, &nonce, &ciphertext, aad.as_bytes()).is_none(),
            "{fctx}: also decrypts with K_r2i"
        );

        // §8.3 step 7: sign_all is on.
        check_envelope_signature(&env, &hs.initiator, &fctx);

        // §5 / §13: the plaintext, with this side's stream state (§13.1, §13.3).
        match parse_session_plaintext(message_type, &plaintext) {
            Err(r) => panic!("{fctx}: my §13 parser rejects the plaintext: {r:?}"),
            Ok(SessionPlaintext::Capabilities) => panic!("{fctx}: unexpected CAPABILITY_EXCHANGE"),
            Ok(SessionPlaintext::Data(d)) => {
                // One sender state for this peer: one epoch, numbered 1, 2, 3 … in sending
                // order (no re-sends here: every message id is new), `base` never decreasing.
                assert_eq!(*epoch.get_or_insert(d.epoch), d.epoch, "{fctx}: epoch changed");
                assert_eq!(d.no, highest_no + 1, "{fctx}: `no` is not the next stream number");
                highest_no = d.no;
                assert!(d.base >= last_base, "{fctx}: base went back from {last_base}");
                last_base = d.base;
                let logical = d.chunk.as_ref().map_or(message_type, |c| &c.logical_type);
                if logical == "TASK_RESPONSE" {
                    let answers_a_request =
                        d.reply_to.as_ref().is_some_and(|r| requests_from_responder.contains(r));
                    if !answers_a_request {
                        eprintln!(
                            "SPEC/VECTOR DISCREPANCY in {fctx} ({message_id}): reply_to {:?} names \
                             no TASK_REQUEST that {} sent to {} (§13.5)",
                            d.reply_to, hs.responder.entity_id, hs.initiator.entity_id
                        );
                        reply_discrepancies.push(message_id.clone());
                    }
                }
                if let Some(t) = &d.app_type {
                    assert!(
                        ["PEER_MESSAGE", "BROADCAST", "STATUS"].contains(&logical),
                        "{fctx}: a sender puts `app_type` in a {logical} (§13.1)"
                    );
                    assert!(hs.agreed.app_types, "{fctx}: `app_type` {t} without app_types");
                }
                data_frames.push(d);
            }
            Ok(SessionPlaintext::Control(c)) => {
                controls += 1;
                assert!(c.ack.is_some() || c.forward.is_some(), "{fctx}: an empty ACK");
                // `forward` announces this side's own stream (§13.2): its epoch, and a base
                // that has not gone back and is at most one past the highest frame sent.
                if let Some(fwd) = &c.forward {
                    assert_eq!(Some(fwd.epoch), epoch, "{fctx}: forward names another epoch");
                    assert!(
                        (last_base..=highest_no + 1).contains(&fwd.base),
                        "{fctx}: forward base {} outside {last_base}..={}",
                        fwd.base,
                        highest_no + 1
                    );
                    last_base = fwd.base;
                }
                // `ack` acknowledges the peer's stream, of which the vectors hold no frame;
                // only its own rules (checked by the parser) apply.
            }
        }
    }
    assert_eq!(
        reply_discrepancies, KNOWN_REPLY_TO_DISCREPANCIES,
        "{ctx}: set of TASK_RESPONSEs that answer no request changed"
    );
    assert!(controls >= 1, "{ctx}: no stream control frame");
    assert!(
        data_frames.iter().any(|d| d.app_type.as_deref() == Some("MODEL_CREATED")),
        "{ctx}: no frame with an application-defined type (§13.1)"
    );

    // §14: the chunk frames reassemble into one message.
    let mut chunked: Vec<&DataFrame> = data_frames.iter().filter(|d| d.chunk.is_some()).collect();
    assert_eq!(chunked.len(), 2, "{ctx}: two chunk frames expected");
    let info = |d: &DataFrame| d.chunk.clone().expect("filtered on chunk");
    chunked.sort_by_key(|d| info(d).seq);
    let first = info(chunked[0]);
    for (k, d) in chunked.iter().enumerate() {
        let c = info(d);
        assert_eq!(c.id, first.id, "chunks of one message share `id`");
        assert_eq!(c.seq, k as u64, "chunk positions 0, 1, …");
        assert_eq!(c.last, k + 1 == chunked.len(), "only the final chunk is `last`");
        assert_eq!(c.total, first.total, "`total` is the same in every chunk");
        assert_eq!(d.no, chunked[0].no + k as u64, "chunks go on consecutive stream numbers");
    }
    let expected: Vec<u8> = chunked.iter().flat_map(|d| d.body.iter().copied()).collect();
    let mut reassembler = Reassembler::default();
    let mut delivered = None;
    for d in &chunked {
        let out = reassembler.add(&info(d), &d.body).unwrap_or_else(|r| panic!("{r:?}"));
        if let Some(message) = out {
            assert!(delivered.is_none(), "delivered twice");
            delivered = Some(message);
        }
    }
    let (logical_type, message) = delivered.expect("the chunks did not reassemble");
    assert_eq!(message.len() as u64, first.total, "reassembled length is `total`");
    assert_eq!(message, expected, "reassembled message is the bodies in chunk order");
    assert_eq!(logical_type, first.logical_type);
    // Reordered and duplicated chunks (before completion) give the same message, once. (A
    // duplicate after completion would start a new partial: §14 leaves that to the stream's
    // deduplication on `no`, §13.4.)
    let mut reassembler = Reassembler::default();
    let mut again = Vec::new();
    let last = chunked.last().expect("two chunks");
    for d in std::iter::once(last).chain(chunked.iter().rev()) {
        if let Some(m) = reassembler.add(&info(d), &d.body).unwrap_or_else(|r| panic!("{r:?}")) {
            again.push(m);
        }
    }
    assert_eq!(again, vec![(logical_type, expected)], "reordering/duplicates change the result");

    // §15.3: resume proofs from K_resumption and the raw 12-byte nonce N.
    let resume = get(&v, "resume", ctx);
    let n = hex_decode(get_str(resume, "nonce", ctx), ctx);
    assert_eq!(n.len(), 12, "{ctx}: resume nonce is 12 bytes");
    let k = &hs.keys.k_resumption;
    let request = hmac_sha256(k, &[b"peerlink v1 resume", b"request", &n]);
    let response = hmac_sha256(k, &[b"peerlink v1 resume", b"response", &n]);
    assert_eq!(hex_encode(&request), get_str(resume, "request_proof", ctx), "request proof");
    assert_eq!(hex_encode(&response), get_str(resume, "response_proof", ctx), "response proof");
}

#[test]
fn delivery_parsers_reject_what_the_spec_forbids() {
    let data = |text: &str, t: &str| parse_data_frame(text.as_bytes(), t);
    let rejects = |r: Result<DataFrame, Rejection>, code: &str, what: &str| match r {
        Ok(d) => panic!("§13.1 parser accepted {what}: {d:?}"),
        Err(e) => assert_eq!(e.code, code, "{what}: {}", e.reason),
    };

    // Accepted: the spec's own example, a body with `\n`s, an empty body, any member order,
    // reply_to in a TASK_RESPONSE, a chunk at the bounds.
    let d = data("{\"epoch\":1234,\"no\":7,\"base\":3}\nbo\ndy\n", "PEER_MESSAGE").unwrap();
    assert_eq!((d.epoch, d.no, d.base, d.body.as_slice()), (1234, 7, 3, &b"bo\ndy\n"[..]));
    data("{\"base\":1,\"no\":1,\"epoch\":9007199254740991}\n", "STATUS").unwrap();
    data("{\"epoch\":1,\"no\":2,\"base\":2,\"reply_to\":\"r-1\"}\nx", "TASK_RESPONSE").unwrap();
    let chunk = |body: &str| format!("{{\"epoch\":1,\"no\":1,\"base\":1,\"chunk\":{{{body}}}}}\n");
    let c = "\"id\":\"m\",\"seq\":65535,\"last\":true,\"total\":16777216,\"type\":\"STATUS\"";
    data(&chunk(c), "CHUNKED_MESSAGE").unwrap();
    let c = "\"id\":\"m\",\"seq\":0,\"last\":false,\"total\":9,\"type\":\"TASK_RESPONSE\"";
    let chunked_reply =
        format!("{{\"epoch\":1,\"no\":1,\"base\":1,\"reply_to\":\"q\",\"chunk\":{{{c}}}}}\n");
    data(&chunked_reply, "CHUNKED_MESSAGE").unwrap();
    // Header length: 1024 bytes accepted, 1025 refused (the `\n` must be within 1025 bytes).
    let padded = |len: usize| {
        let core = "{\"epoch\":1,\"no\":1,\"base\":1";
        format!("{core}{}}}\nbody", " ".repeat(len - core.len() - 1))
    };
    assert_eq!(padded(1024).find('\n'), Some(1024));
    data(&padded(1024), "PEER_MESSAGE").unwrap();
    rejects(data(&padded(1025), "PEER_MESSAGE"), "INVALID_MESSAGE", "a 1025-byte header");

    // Refused by §13.1 (and §14, §3.1 applied to the header).
    let i = "INVALID_MESSAGE";
    for (text, t, what) in [
        ("{\"epoch\":1,\"no\":1,\"base\":1}", "PEER_MESSAGE", "a header without newline"),
        ("", "PEER_MESSAGE", "an empty plaintext"),
        ("{\"epoch\":1,\"no\":0,\"base\":0}\n", "PEER_MESSAGE", "no = 0"),
        ("{\"epoch\":1,\"no\":3,\"base\":4}\n", "PEER_MESSAGE", "base > no"),
        ("{\"epoch\":1,\"no\":3,\"base\":0}\n", "PEER_MESSAGE", "base = 0"),
        ("{\"epoch\":1,\"no\":3,\"base\":-1}\n", "PEER_MESSAGE", "a negative base"),
        ("{\"epoch\":0,\"no\":1,\"base\":1}\n", "PEER_MESSAGE", "epoch = 0"),
        ("{\"epoch\":9007199254740992,\"no\":1,\"base\":1}\n", "PEER_MESSAGE", "epoch = 2^53"),
        ("{\"epoch\":1,\"no\":-1,\"base\":-1}\n", "PEER_MESSAGE", "a negative no"),
        ("{\"epoch\":1,\"no\":\"1\",\"base\":1}\n", "PEER_MESSAGE", "no as a string"),
        ("{\"epoch\":1,\"no\":1.0,\"base\":1}\n", "PEER_MESSAGE", "a fractional no"),
        ("{\"epoch\":1,\"no\":1,\"base\":1,\"x\":0}\n", "PEER_MESSAGE", "an unknown member"),
        ("{\"no\":1,\"base\":1}\n", "PEER_MESSAGE", "no epoch"),
        ("{\"epoch\":1,\"base\":1}\n", "PEER_MESSAGE", "no `no`"),
        ("{\"epoch\":1,\"no\":1}\n", "PEER_MESSAGE", "no base"),
        ("{\"epoch\":1,\"no\":1,\"no\":1,\"base\":1}\n", "PEER_MESSAGE", "a duplicate member"),
        ("[1]\n", "PEER_MESSAGE", "a header that is not an object"),
        ("{\"epoch\":1,\"no\":1,\"base\":1} x\n", "PEER_MESSAGE", "trailing data in the header"),
        ("{\"epoch\":1,\"no\":1,\"base\":1,\"reply_to\":\"q\"}\n", "PEER_MESSAGE", "reply_to"),
        ("{\"epoch\":1,\"no\":1,\"base\":1,\"reply_to\":\"a b\"}\n", "TASK_RESPONSE", "bad id"),
        ("{\"epoch\":1,\"no\":1,\"base\":1,\"reply_to\":7}\n", "TASK_RESPONSE", "reply_to 7"),
        (
            "{\"epoch\":1,\"no\":1,\"base\":1,\"app_type\":\"a b\"}\n",
            "PEER_MESSAGE",
            "bad app_type",
        ),
        ("{\"epoch\":1,\"no\":1,\"base\":1,\"app_type\":1}\n", "STATUS", "app_type 1"),
        ("{\"epoch\":1,\"no\":1,\"base\":1}\n", "CHUNKED_MESSAGE", "a chunk without `chunk`"),
        ("{\"epoch\":1,\"no\":1,\"base\":1}\n", "ACK", "a data frame in an ACK"),
        ("{\"epoch\":1,\"no\":1,\"base\":1}\n", "CAPABILITY_EXCHANGE", "a data frame there"),
    ] {
        rejects(data(text, t), i, what);
    }
    rejects(
        parse_data_frame(b"{\"epoch\":1,\"no\":1,\"base\":1,\"reply_to\":\"\xff\"}\nx", "STATUS"),
        i,
        "a header that is not UTF-8",
    );
    let good = "\"id\":\"m\",\"seq\":0,\"last\":true,\"total\":1,\"type\":\"PEER_MESSAGE\"";
    rejects(data(&chunk(good), "PEER_MESSAGE"), i, "`chunk` outside CHUNKED_MESSAGE");
    for (c, code, what) in [
        ("\"seq\":0,\"last\":true,\"total\":1,\"type\":\"PEER_MESSAGE\"", i, "chunk without id"),
        ("\"id\":\"m\",\"last\":true,\"total\":1,\"type\":\"STATUS\"", i, "chunk without seq"),
        ("\"id\":\"m\",\"seq\":0,\"total\":1,\"type\":\"STATUS\"", i, "chunk without last"),
        ("\"id\":\"m\",\"seq\":0,\"last\":true,\"type\":\"STATUS\"", i, "chunk without total"),
        ("\"id\":\"m\",\"seq\":0,\"last\":true,\"total\":1", i, "chunk without type"),
        (&format!("{good},\"x\":1"), i, "an unknown chunk member"),
        ("\"id\":\"m m\",\"seq\":0,\"last\":true,\"total\":1,\"type\":\"STATUS\"", i, "bad id"),
        ("\"id\":\"m\",\"seq\":-1,\"last\":true,\"total\":1,\"type\":\"STATUS\"", i, "seq -1"),
        ("\"id\":\"m\",\"seq\":0,\"last\":\"true\",\"total\":1,\"type\":\"STATUS\"", i, "last"),
        ("\"id\":\"m\",\"seq\":0,\"last\":true,\"total\":-1,\"type\":\"STATUS\"", i, "total"),
        ("\"id\":\"m\",\"seq\":0,\"last\":true,\"total\":1,\"type\":\"ACK\"", i, "type ACK"),
        (
            "\"id\":\"m\",\"seq\":0,\"last\":true,\"total\":1,\"type\":\"CHUNKED_MESSAGE\"",
            i,
            "nest",
        ),
        (
            "\"id\":\"m\",\"seq\":0,\"last\":true,\"total\":16777217,\"type\":\"STATUS\"",
            "MESSAGE_TOO_LARGE",
            "total above 16 MiB",
        ),
        (
            "\"id\":\"m\",\"seq\":65536,\"last\":true,\"total\":1,\"type\":\"STATUS\"",
            "MESSAGE_TOO_LARGE",
            "a 65 537th chunk",
        ),
    ] {
        rejects(data(&chunk(c), "CHUNKED_MESSAGE"), code, what);
    }
    rejects(
        data("{\"epoch\":1,\"no\":1,\"base\":1,\"chunk\":[]}\n", "CHUNKED_MESSAGE"),
        i,
        "a chunk that is not an object",
    );

    // §13.2: accepted.
    let control = |text: &str| parse_stream_control(text.as_bytes());
    let example = "{\"ack\": {\"epoch\": 1234, \"cumulative\": 9, \"selective\": [11, 12]}, \
                   \"forward\": {\"epoch\": 77, \"base\": 5}}";
    let c = control(example).unwrap();
    assert_eq!(c.ack, Some(AckInfo { epoch: 1234, cumulative: 9, selective: vec![11, 12] }));
    assert_eq!(c.forward, Some(ForwardInfo { epoch: 77, base: 5 }));
    assert_eq!(control("{}").unwrap(), StreamControl { ack: None, forward: None });
    control("{\"forward\":{\"epoch\":1,\"base\":1}}").unwrap();
    control("{\"ack\":{\"epoch\":1,\"cumulative\":0,\"selective\":[]}}").unwrap();
    let list = |n: u64| (1..=n).map(|k| (k + 1).to_string()).collect::<Vec<_>>().join(",");
    let sixty_four =
        format!("{{\"ack\":{{\"epoch\":1,\"cumulative\":1,\"selective\":[{}]}}}}", list(64));
    assert_eq!(control(&sixty_four).unwrap().ack.unwrap().selective.len(), 64);

    // §13.2: refused.
    let sixty_five =
        format!("{{\"ack\":{{\"epoch\":1,\"cumulative\":1,\"selective\":[{}]}}}}", list(65));
    for (text, what) in [
        (sixty_five.as_str(), "65 selective entries"),
        ("{\"ack\":{\"epoch\":1,\"cumulative\":9,\"selective\":[9]}}", "selective = cumulative"),
        ("{\"ack\":{\"epoch\":1,\"cumulative\":9,\"selective\":[12,3]}}", "selective below"),
        ("{\"ack\":{\"epoch\":1,\"cumulative\":9,\"selective\":[\"11\"]}}", "a string entry"),
        ("{\"ack\":{\"epoch\":1,\"cumulative\":9,\"selective\":11}}", "selective not an array"),
        ("{\"ack\":{\"epoch\":1,\"cumulative\":-1,\"selective\":[]}}", "cumulative -1"),
        ("{\"ack\":{\"epoch\":0,\"cumulative\":0,\"selective\":[]}}", "ack epoch 0"),
        ("{\"ack\":{\"epoch\":1,\"selective\":[]}}", "ack without cumulative"),
        ("{\"ack\":{\"epoch\":1,\"cumulative\":0}}", "ack without selective"),
        ("{\"ack\":{\"cumulative\":0,\"selective\":[]}}", "ack without epoch"),
        ("{\"ack\":{\"epoch\":1,\"cumulative\":0,\"selective\":[],\"x\":1}}", "unknown in ack"),
        ("{\"ack\":[]}", "ack not an object"),
        ("{\"forward\":{\"epoch\":1,\"base\":0}}", "forward base 0"),
        ("{\"forward\":{\"epoch\":0,\"base\":1}}", "forward epoch 0"),
        ("{\"forward\":{\"base\":1}}", "forward without epoch"),
        ("{\"forward\":{\"epoch\":1,\"base\":1,\"no\":1}}", "unknown in forward"),
        ("{\"nack\":{}}", "an unknown member"),
        ("{\"forward\":{\"epoch\":1,\"base\":1},\"forward\":{\"epoch\":1,\"base\":1}}", "dup"),
        ("", "an empty plaintext"),
        ("[]", "not an object"),
        ("{\"epoch\":1,\"no\":1,\"base\":1}\nbody", "a data frame"),
    ] {
        match control(text) {
            Ok(c) => panic!("§13.2 parser accepted {what}: {c:?}"),
            Err(e) => assert_eq!(e.code, i, "{what}: {}", e.reason),
        }
    }

    // §14 reassembly: refused inconsistencies discard the partial; bounds.
    let ch = |id: &str, seq: u64, last: bool, total: u64| ChunkInfo {
        id: id.to_owned(),
        seq,
        last,
        total,
        logical_type: "PEER_MESSAGE".to_owned(),
    };
    let mut r = Reassembler::default();
    assert_eq!(r.add(&ch("a", 1, true, 4), b"cd").unwrap(), None);
    assert_eq!(r.add(&ch("a", 1, true, 4), b"cd").unwrap(), None, "a duplicate is tolerated");
    let done = r.add(&ch("a", 0, false, 4), b"ab").unwrap();
    assert_eq!(done, Some(("PEER_MESSAGE".to_owned(), b"abcd".to_vec())));
    assert!(r.partials.is_empty());
    for (steps, what) in [
        (vec![(ch("b", 0, false, 4), "ab"), (ch("b", 1, true, 5), "cd")], "another total"),
        (vec![(ch("b", 1, true, 4), "ab"), (ch("b", 2, false, 4), "cd")], "chunk after last"),
        (vec![(ch("b", 2, false, 9), "ab"), (ch("b", 1, true, 9), "cd")], "last before one"),
        (vec![(ch("b", 1, true, 4), "ab"), (ch("b", 2, true, 4), "cd")], "two lasts"),
        (vec![(ch("b", 0, false, 4), "ab"), (ch("b", 0, false, 4), "xy")], "other content"),
        (vec![(ch("b", 0, false, 3), "ab"), (ch("b", 1, false, 3), "cd")], "over total"),
        (vec![(ch("b", 0, false, 5), "ab"), (ch("b", 1, true, 5), "cd")], "under total"),
    ] {
        let mut r = Reassembler::default();
        let (head, tail) = steps.split_at(steps.len() - 1);
        for (c, body) in head {
            assert_eq!(r.add(c, body.as_bytes()).unwrap(), None, "{what}: first chunk");
        }
        let e = r.add(&tail[0].0, tail[0].1.as_bytes()).expect_err(what);
        assert_eq!(e.code, i, "{what}: {}", e.reason);
        assert!(r.partials.is_empty(), "{what}: the partial is not discarded");
    }
    let mut typed = ch("c", 1, true, 4);
    typed.logical_type = "STATUS".to_owned();
    let mut r = Reassembler::default();
    r.add(&ch("c", 0, false, 4), b"ab").unwrap();
    assert_eq!(r.add(&typed, b"cd").expect_err("another type").code, i);
    let mut r = Reassembler::default();
    for id in ["p1", "p2", "p3", "p4"] {
        r.add(&ch(id, 0, false, 10), b"x").unwrap();
    }
    assert_eq!(r.add(&ch("p5", 0, false, 10), b"x").expect_err("fifth").code, "MESSAGE_TOO_LARGE");
    assert_eq!(r.add(&ch("p4", 1, false, 10), b"y").unwrap(), None, "a held partial goes on");
}

// ---------------------------------------------------------------------------------------------
// invalid.json
// ---------------------------------------------------------------------------------------------

/// Every valid wire message of the other vector files.
fn valid_wire_messages() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let envelopes = load("envelopes.json");
    for (i, e) in get_array(&envelopes, "envelopes", "envelopes.json").iter().enumerate() {
        let wire = get_str(e, "wire", "envelopes.json").to_owned();
        out.push((format!("envelopes.json #{i}"), wire));
    }
    let handshake = load("handshake.json");
    for (i, m) in get_array(&handshake, "messages", "handshake.json").iter().enumerate() {
        let wire = m.as_str().expect("handshake message is a string").to_owned();
        out.push((format!("handshake.json M{}", i + 1), wire));
    }
    let session = load("session.json");
    for (i, m) in get_array(&session, "messages", "session.json").iter().enumerate() {
        let wire = get_str(m, "wire", "session.json").to_owned();
        out.push((format!("session.json message {i}"), wire));
    }
    out
}

#[test]
fn invalid_vectors() {
    let v = load("invalid.json");
    let cases = get_array(&v, "cases", "invalid.json");
    assert!(!cases.is_empty(), "invalid.json has no cases");
    for (i, case) in cases.iter().enumerate() {
        let ctx = format!("invalid.json #{i} ({})", get_str(case, "description", "invalid.json"));
        let frame = get_str(case, "frame", &ctx);
        let limit = usize::try_from(get_u64(case, "max_frame_bytes", &ctx)).expect("limit fits");
        let expected = get_str(case, "code", &ctx);
        match decode_frame(frame, limit) {
            Ok(_) => panic!("{ctx}: my validator accepted the frame; expected {expected}"),
            Err(r) => {
                assert_eq!(r.code, expected, "{ctx}: my validator gives {} ({})", r.code, r.reason)
            }
        }
    }

    // The validator is not trivially rejecting: every valid wire message passes,
    // including at a limit equal to its own length.
    let valid = valid_wire_messages();
    assert!(valid.len() >= 13, "expected the valid frames of three vector files");
    for (ctx, frame) in &valid {
        decode_valid(frame, ctx);
        decode_frame(frame, frame.len())
            .unwrap_or_else(|r| panic!("{ctx}: rejected at a limit equal to its length: {r:?}"));
    }

    // The first case's frame is rejected only for its size: under the default limit it is
    // a well-formed envelope.
    let oversized = get_str(&cases[0], "frame", "invalid.json #0");
    decode_valid(oversized, "invalid.json #0 under the default limit");

    // §3.1 boundary: 32 levels inside payload are allowed, 33 are not (as in the vector).
    let with_depth = |d: usize| {
        let payload = format!("{}1{}", "[".repeat(d), "]".repeat(d));
        oversized.replacen("\"payload\":{}", &format!("\"payload\":{payload}"), 1)
    };
    decode_valid(&with_depth(32), "payload nested 32 levels");
    let deep = decode_frame(&with_depth(33), DEFAULT_FRAME_LIMIT)
        .expect_err("payload nested 33 levels must be rejected");
    assert_eq!(deep.code, "INVALID_MESSAGE", "payload nested 33 levels");
}

/// §23.2 from the text alone: the login signs `"peerlink v1 auth\n" || N || 0x00 || challenge`
/// with `N` the node_id `/auth/token` returned; the token is three b64u parts, header and claims
/// canonical JSON as the spec shows them, signed by the node's key over `header.claims`.
#[test]
fn auth_vectors() {
    let v = load("auth.json");
    let ctx = "auth.json";
    let node = identity(get(&v, "node", ctx), ctx);
    let entity = identity(get(&v, "entity", ctx), ctx);
    let response = get(&v, "token_response", ctx);
    let node_id = get_str(response, "node_id", ctx);
    assert_eq!(node_id, node.entity_id, "{ctx}: node_id is the node's entity id (§23.5)");
    let challenge = b64u_decode_len(get_str(response, "challenge", ctx), 32, "challenge").unwrap();

    let mut input = b"peerlink v1 auth\n".to_vec();
    input.extend_from_slice(node_id.as_bytes());
    input.push(0);
    input.extend_from_slice(&challenge);
    assert_eq!(hex_encode(&input), get_str(&v, "auth_input", ctx), "{ctx}: auth input");
    let signature = entity.signing.sign(&input);
    assert_eq!(b64u_encode(&signature.to_bytes()), get_str(&v, "signature", ctx), "{ctx}");

    let token = get_str(&v, "token", ctx);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{ctx}: a JWT has three parts");
    let header = String::from_utf8(b64u_decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header, r#"{"alg":"EdDSA","typ":"JWT"}"#, "{ctx}: header");
    let claims_text = String::from_utf8(b64u_decode(parts[1]).unwrap()).unwrap();
    let claims = parse_strict_json(&claims_text).unwrap();
    assert_eq!(canonical(&claims), claims_text, "{ctx}: claims are canonical JSON");
    let iat = get_u64(&v, "issued_at_ms", ctx) / 1000;
    let expected = serde_json::json!({
        "cnf": {"jwk": {"crv": "Ed25519", "kty": "OKP", "x": b64u_encode(entity.verifying.as_bytes())}},
        "exp": iat + 3600,
        "iat": iat,
        "iss": node.entity_id,
        "sub": entity.entity_id,
    });
    assert_eq!(claims, expected, "{ctx}: claims");
    let sig = b64u_decode_len(parts[2], 64, "token signature").unwrap();
    let sig = Signature::from_slice(&sig).expect("64 bytes");
    let signed = format!("{}.{}", parts[0], parts[1]);
    node.verifying.verify_strict(signed.as_bytes(), &sig).expect("the node's key signs the token");
}
