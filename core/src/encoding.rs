//! base64url (RFC 4648 §5, no padding) for every binary field on the wire.
//!
//! Decoding is strict: padding, characters outside the URL-safe alphabet, and non-zero trailing
//! bits are all rejected, so each byte string has exactly one encoding.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ProtocolError;

/// Encodes bytes as unpadded base64url.
pub fn b64u(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Appends the unpadded base64url encoding of `bytes` to `out`.
pub fn b64u_into(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    let len = base64::encoded_len(bytes.len(), false).unwrap_or(0);
    out.resize(start.saturating_add(len), 0);
    if let Some(tail) = out.get_mut(start..) {
        // The tail is exactly the encoded length: this cannot fail.
        let _ = URL_SAFE_NO_PAD.encode_slice(bytes, tail);
    }
}

/// Decodes unpadded base64url of any length.
pub fn decode_b64u(field: &'static str, s: &str) -> Result<Vec<u8>, ProtocolError> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| ProtocolError::InvalidField {
        field,
        reason: "not canonical unpadded base64url",
    })
}

/// Decodes unpadded base64url that must hold exactly `N` bytes.
pub fn decode_b64u_array<const N: usize>(
    field: &'static str,
    s: &str,
) -> Result<[u8; N], ProtocolError> {
    let bytes = decode_b64u(field, s)?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| ProtocolError::InvalidField { field, reason: "wrong length" })
}

/// Lowercase hex, used only in test vectors and diagnostics.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_is_strict() {
        assert_eq!(b64u(&[0xfb, 0xff]), "-_8");
        assert_eq!(decode_b64u("f", "-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(decode_b64u("f", "-_8=").is_err(), "padding");
        assert!(decode_b64u("f", "+/8").is_err(), "standard alphabet");
        assert!(decode_b64u("f", "-_9").is_err(), "non-zero trailing bits");
        assert!(decode_b64u_array::<3>("f", "-_8").is_err(), "wrong length");
        assert_eq!(hex(&[0, 0xab]), "00ab");
    }
}
