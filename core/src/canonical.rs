//! Canonical JSON (RFC 8785, JCS) restricted to peerlink's value space, and a strict parser.
//!
//! Signatures and AEAD associated data cover the *canonical* bytes of an envelope, never the bytes
//! as received, so any implementation that can parse JSON can recompute them. peerlink JSON never
//! holds fractional numbers: every number is an integer of magnitude at most 2^53 - 1
//! ([`MAX_SAFE_INTEGER`]), which makes JCS number formatting plain decimal. The rules are:
//! - no whitespace; objects' members sorted by their keys' UTF-16 code units;
//! - strings escape `"` and `\` with a backslash, U+0008/09/0A/0C/0D as `\b \t \n \f \r`, other
//!   code points below U+0020 as `\u00xx` (lowercase hex); everything else is literal UTF-8;
//! - integers in decimal, with `-` for negatives and no leading zeros; `true`, `false`, `null`.
//!
//! [`StrictValue`] parses peer JSON with the checks that keep this well defined: no duplicate keys,
//! no fractional or out-of-range numbers, and a nesting limit.

use std::cmp::Ordering;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The largest integer magnitude allowed anywhere in peerlink JSON: 2^53 - 1.
pub const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// Deepest nesting of arrays and objects accepted from a peer.
pub const MAX_DEPTH: usize = 32;

/// A value that cannot be written canonically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// A number with a fraction or exponent.
    #[error("fractional numbers are not allowed")]
    Fractional,
    /// An integer outside ±(2^53 - 1).
    #[error("integer outside the safe range")]
    OutOfRange,
}

/// Appends the canonical form of `value` to `out`.
pub fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n)?,
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| cmp_utf16(a.0, b.0));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, key);
                out.push(b':');
                write_value(out, item)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write_value(&mut out, value)?;
    Ok(out)
}

/// Appends a JSON string literal in canonical form.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Ids, base64 and most text need no escape: one branch-free pass (it vectorizes), one copy.
    let needs_escape =
        bytes.iter().fold(false, |acc, &b| acc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escape {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            0x08 => Some(b"\\b"),
            0x09 => Some(b"\\t"),
            0x0a => Some(b"\\n"),
            0x0c => Some(b"\\f"),
            0x0d => Some(b"\\r"),
            _ => None,
        };
        if escape.is_none() && b >= 0x20 {
            continue;
        }
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0x0f)]);
            }
        }
        start = i + 1;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

/// Appends an integer in canonical form (it must already be in range).
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    // Decimal digits into a stack buffer, from the last: no allocation per integer.
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at = at.saturating_sub(1);
        if let Some(d) = digits.get_mut(at) {
            // `n % 10` is below 10, so the cast cannot truncate.
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

fn write_number(out: &mut Vec<u8>, n: &Number) -> Result<(), CanonicalError> {
    check_number(n)?;
    if let Some(u) = n.as_u64() {
        write_u64(out, u);
    } else if let Some(i) = n.as_i64() {
        out.extend_from_slice(i.to_string().as_bytes());
    }
    Ok(())
}

/// Checks that a number is an integer within ±(2^53 - 1).
pub fn check_number(n: &Number) -> Result<(), CanonicalError> {
    if let Some(u) = n.as_u64() {
        if u > MAX_SAFE_INTEGER {
            return Err(CanonicalError::OutOfRange);
        }
    } else if let Some(i) = n.as_i64() {
        if i.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(CanonicalError::OutOfRange);
        }
    } else {
        return Err(CanonicalError::Fractional);
    }
    Ok(())
}

/// Orders strings by UTF-16 code units, as RFC 8785 §3.2.3 requires.
pub fn cmp_utf16(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// A JSON value parsed from peer input with peerlink's rules: duplicate object keys, fractional
/// numbers, integers beyond ±(2^53 - 1) and nesting deeper than [`MAX_DEPTH`] are rejected, so the
/// value has exactly one canonical form.
#[derive(Debug, Clone, PartialEq)]
pub struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor { depth: 0 }).map(StrictValue)
    }
}

struct StrictVisitor {
    depth: usize,
}

struct Nested(usize);

impl<'de> de::DeserializeSeed<'de> for Nested {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor { depth: self.0 })
    }
}

impl StrictVisitor {
    fn child<E: de::Error>(&self) -> Result<Nested, E> {
        let depth = self.depth.saturating_add(1);
        if depth > MAX_DEPTH {
            return Err(E::custom("JSON nested too deeply"));
        }
        Ok(Nested(depth))
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        if v.unsigned_abs() > MAX_SAFE_INTEGER {
            return Err(E::custom("integer outside ±(2^53 - 1)"));
        }
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        if v > MAX_SAFE_INTEGER {
            return Err(E::custom("integer outside ±(2^53 - 1)"));
        }
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Value, E> {
        Err(E::custom("fractional numbers are not allowed"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child()?)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom("duplicate object key"));
            }
            let value = map.next_value_seed(self.child()?)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn canon(v: &Value) -> String {
        String::from_utf8(to_vec(v).unwrap()).unwrap()
    }

    #[test]
    fn sorts_keys_and_strips_whitespace() {
        let v = json!({"b": [1, {"z": null, "a": true}], "a": "x", "A": -5});
        assert_eq!(canon(&v), r#"{"A":-5,"a":"x","b":[1,{"a":true,"z":null}]}"#);
    }

    #[test]
    fn escapes_like_ecmascript() {
        let v = json!("q\"b\\\u{8}\t\n\u{c}\r\u{1}\u{1f} é\u{2028}\u{7f}😀/");
        assert_eq!(canon(&v), "\"q\\\"b\\\\\\b\\t\\n\\f\\r\\u0001\\u001f é\u{2028}\u{7f}😀/\"");
    }

    #[test]
    fn orders_keys_by_utf16_not_utf8() {
        // U+FF61 sorts after U+1F600 in UTF-8 bytes but before it in UTF-16 code units
        // (0xFF61 > 0xD83D), so the emoji key comes first.
        let v = json!({"\u{ff61}": 1, "😀": 2});
        assert_eq!(canon(&v), "{\"😀\":2,\"\u{ff61}\":1}");
    }

    #[test]
    fn rejects_numbers_it_cannot_write() {
        assert_eq!(to_vec(&json!(1.5)), Err(CanonicalError::Fractional));
        assert_eq!(to_vec(&json!(MAX_SAFE_INTEGER + 1)), Err(CanonicalError::OutOfRange));
        assert_eq!(to_vec(&json!(-(MAX_SAFE_INTEGER as i64) - 1)), Err(CanonicalError::OutOfRange));
        assert_eq!(canon(&json!(MAX_SAFE_INTEGER)), "9007199254740991");
        assert_eq!(canon(&json!(-(MAX_SAFE_INTEGER as i64))), "-9007199254740991");
    }

    #[test]
    fn strict_parser_rejects_ambiguity() {
        let parse = |s: &str| serde_json::from_str::<StrictValue>(s);
        assert!(parse(r#"{"a":1,"a":2}"#).is_err());
        assert!(parse(r#"{"a":1.0}"#).is_err());
        assert!(parse(r#"{"a":1e3}"#).is_err());
        assert!(parse("9007199254740992").is_err());
        assert!(parse("-0").is_err(), "-0 is refused: it has no integer reading distinct from 0");
        assert!(parse("-9007199254740992").is_err());
        assert!(parse(&format!("{}1{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH))).is_ok());
        assert!(
            parse(&format!("{}1{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1))).is_err()
        );
        assert!(parse(r#"{"a":[1,{"b":"\u00e9"}]}"#).is_ok());
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(MAX_SAFE_INTEGER as i64)..=(MAX_SAFE_INTEGER as i64)).prop_map(|n| json!(n)),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Canonical output is valid JSON that parses (strictly) back to the same value, and is a
        /// fixed point: canonicalizing it again changes nothing.
        #[test]
        fn canonical_form_round_trips(v in arb_value()) {
            let bytes = to_vec(&v).unwrap();
            let back: StrictValue = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back.0, &v);
            prop_assert_eq!(to_vec(&back.0).unwrap(), bytes);
        }

        /// Strings and integers are written exactly as serde_json writes them (the same escapes
        /// as ECMAScript's `JSON.stringify`, RFC 8785 §3.2.2.2), on the fast path and the slow.
        #[test]
        fn strings_and_integers_match_serde_json(s in any::<String>(), ascii in "[ -~\\t\\n]{0,64}", n in any::<u64>()) {
            for s in [s, ascii] {
                let mut out = Vec::new();
                write_string(&mut out, &s);
                prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
            }
            let mut out = Vec::new();
            write_u64(&mut out, n);
            prop_assert_eq!(out, n.to_string().into_bytes());
        }

        /// Strict parsing of arbitrary bytes never panics.
        #[test]
        fn strict_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = serde_json::from_slice::<StrictValue>(&bytes);
        }
    }
}
