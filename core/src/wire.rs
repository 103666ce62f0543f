//! Which encoding a frame travels in, and which encodings a WebSocket link speaks (spec §27).
//!
//! Every implementation speaks the JSON envelope (spec §4). A WebSocket link may also agree on
//! the binary envelope ([`crate::binary_envelope`]) in its upgrade, per hop: the client offers
//! the subprotocol [`BINARY_SUBPROTOCOL`] in `Sec-WebSocket-Protocol`, and the server selects it
//! or answers without a subprotocol (the link then speaks JSON alone, as with a peer that never
//! heard of the offer). On a binary link each WebSocket binary message is one binary envelope and
//! each text message one JSON envelope; either side may send either. On a JSON link only text
//! messages are allowed.
//!
//! The first byte tells the two encodings apart: a binary envelope starts with its layout
//! version ([`LAYOUT_VERSION`], `0x01`), which no JSON text can start with. So frames stay plain
//! bytes everywhere in the node, and are translated only where they must be:
//! a binary frame bound for a JSON link, an HTTP body, a mailbox or the cluster broker
//! becomes JSON ([`to_json`]). Translation keeps the envelope, hence its signing input and
//! associated data, byte for byte.
//!
//! HTTP bodies of `/v1/messages` (spec §27.7) negotiate per hop too, with media types: a client
//! whose `binary_links` is on sends `Accept:` [`accept_header`] on its polls and posts; a server
//! whose `binary_links` is on answers a request that accepts [`BINARY_MEDIA_TYPE`] with a binary
//! body ([`crate::http_body`]) and that `Content-Type`, any other with NDJSON. A client posts
//! binary bodies to a hop only once an answer from it was binary ([`hop_speaks_binary`]); a
//! server that does not speak binary refuses a binary body with `415`
//! ([`accepts_post_body`]), after which the client posts JSON again.

use std::sync::Arc;

use crate::binary_envelope::{self, LAYOUT_VERSION};
use crate::envelope::Envelope;
use crate::error::ProtocolError;

/// The WebSocket subprotocol that selects the binary envelope on a link.
pub const BINARY_SUBPROTOCOL: &str = "peerlink.binary.v1";

/// The media type of an HTTP body of binary envelopes, each behind its length (spec §27.7).
pub const BINARY_MEDIA_TYPE: &str = "application/vnd.peerlink.binary.v1";

/// The media type of an NDJSON body: one JSON envelope per line (spec §21, §23.3).
pub const NDJSON_MEDIA_TYPE: &str = "application/x-ndjson";

/// The `Accept` header of a client that speaks both body encodings, binary preferred.
const ACCEPT_BOTH: &str = "application/vnd.peerlink.binary.v1, application/x-ndjson";

/// An envelope encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    /// The JSON envelope (spec §4): text messages, NDJSON bodies. Every link speaks it.
    #[default]
    Json,
    /// The binary envelope (spec §27): binary messages on a link that agreed on it.
    Binary,
}

impl Encoding {
    /// The encoding `frame` is in, from its first byte.
    pub fn of(frame: &[u8]) -> Self {
        if frame.first() == Some(&LAYOUT_VERSION) { Encoding::Binary } else { Encoding::Json }
    }

    /// The subprotocol a server answers with when it selects this encoding (`None`: answer
    /// without one).
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            Encoding::Json => None,
            Encoding::Binary => Some(BINARY_SUBPROTOCOL),
        }
    }

    /// The media type of an HTTP body in this encoding: [`NDJSON_MEDIA_TYPE`] or
    /// [`BINARY_MEDIA_TYPE`].
    pub fn media_type(self) -> &'static str {
        match self {
            Encoding::Json => NDJSON_MEDIA_TYPE,
            Encoding::Binary => BINARY_MEDIA_TYPE,
        }
    }
}

/// The `Accept` header a client sends on its polls and posts: both media types when
/// `binary_links` is on, NDJSON alone when it is off.
pub fn accept_header(binary_links: bool) -> &'static str {
    if binary_links { ACCEPT_BOTH } else { NDJSON_MEDIA_TYPE }
}

/// The bare media type of a `Content-Type` or `Accept` element: parameters cut off, trimmed.
fn bare_media_type(element: &str) -> &str {
    element.split(';').next().unwrap_or("").trim()
}

/// Whether an `Accept` request header names [`BINARY_MEDIA_TYPE`] (media types compare without
/// case, RFC 9110 §8.3.1) with a quality above zero. Wildcards (`*/*`) do not count: binary is
/// only for a client that asks for it by name. A weight that is not a well-formed `qvalue`
/// (RFC 9110 §12.4.2: `0`, `1`, or one of them with up to three decimals, at most `1`) refuses
/// too: binary is never sent on a doubt.
pub fn accepts_binary(accept: Option<&str>) -> bool {
    accept.is_some_and(|h| {
        h.split(',').any(|element| {
            let refused = element.split(';').skip(1).any(|param| {
                let mut kv = param.splitn(2, '=');
                let key = kv.next().unwrap_or("").trim();
                let value = kv.next().unwrap_or("").trim();
                key.eq_ignore_ascii_case("q") && !qvalue_above_zero(value)
            });
            !refused && bare_media_type(element).eq_ignore_ascii_case(BINARY_MEDIA_TYPE)
        })
    })
}

/// Whether `value` is a well-formed RFC 9110 `qvalue` above zero.
fn qvalue_above_zero(value: &str) -> bool {
    let (whole, decimals) = match value.split_once('.') {
        Some((w, d)) => (w, d),
        None => (value, ""),
    };
    let digits = decimals.len() <= 3 && decimals.bytes().all(|b| b.is_ascii_digit());
    match whole {
        "0" => digits && decimals.bytes().any(|b| b != b'0'),
        "1" => digits && decimals.bytes().all(|b| b == b'0'),
        _ => false,
    }
}

/// The encoding of an HTTP body from its `Content-Type` header: binary for
/// [`BINARY_MEDIA_TYPE`] (parameters ignored), JSON for anything else, a missing header
/// included (NDJSON, what every node spoke before spec §27.7).
pub fn body_encoding(content_type: Option<&str>) -> Encoding {
    match content_type {
        Some(t) if bare_media_type(t).eq_ignore_ascii_case(BINARY_MEDIA_TYPE) => Encoding::Binary,
        _ => Encoding::Json,
    }
}

/// The encoding of a server's answer to a poll or post: binary when the request accepted it
/// ([`accepts_binary`]) and the server's `binary_links` is on, else NDJSON.
pub fn answer_encoding(accept_binary: bool, binary_links: bool) -> Encoding {
    if accept_binary && binary_links { Encoding::Binary } else { Encoding::Json }
}

/// Whether a server takes a `POST` body in `encoding`: NDJSON always, binary only when its
/// `binary_links` is on; the answer to one it does not take is `415 Unsupported Media Type`.
pub fn accepts_post_body(encoding: Encoding, binary_links: bool) -> bool {
    encoding == Encoding::Json || binary_links
}

/// The encoding a client reads an answer's body in: the one its `Content-Type` names
/// ([`body_encoding`]) when the client accepted binary, else NDJSON (a server cannot force
/// binary on a client that did not ask for it).
pub fn answer_body_encoding(stated: Encoding, accepted_binary: bool) -> Encoding {
    if accepted_binary { stated } else { Encoding::Json }
}

/// Whether a client posts binary bodies to a hop after an answer from it, given whether it did
/// before (`known`), the answer's status, the encoding its `Content-Type` names, and whether the
/// client accepts binary at all (its `binary_links`): a `2xx` answer tells (binary or NDJSON);
/// a `415` means the hop stopped taking binary bodies; any other status (a proxy's error page,
/// a `5xx`) leaves what was known.
pub fn hop_speaks_binary(known: bool, status: u16, stated: Encoding, binary_links: bool) -> bool {
    if !binary_links || status == 415 {
        return false;
    }
    if (200..300).contains(&status) { stated == Encoding::Binary } else { known }
}

/// Whether a `Sec-WebSocket-Protocol` request header (its comma-separated tokens) offers
/// [`BINARY_SUBPROTOCOL`]. Tokens are compared exactly, as RFC 6455 §4.1 has it.
pub fn offers_binary(header: Option<&str>) -> bool {
    header.is_some_and(|h| h.split(',').any(|t| t.trim() == BINARY_SUBPROTOCOL))
}

/// The encoding a server selects for an upgrade whose `Sec-WebSocket-Protocol` header is
/// `offered`: binary when the client offers it and `accept_binary` (the node's
/// `binary_links`), else JSON.
pub fn choose(offered: Option<&str>, accept_binary: bool) -> Encoding {
    if accept_binary && offers_binary(offered) { Encoding::Binary } else { Encoding::Json }
}

/// The encoding a client's link speaks, from the subprotocol the server's `101` answer selected
/// (`None` when it selected none) and whether the client offered binary.
pub fn selected(subprotocol: Option<&str>, offered_binary: bool) -> Encoding {
    if offered_binary && subprotocol == Some(BINARY_SUBPROTOCOL) {
        Encoding::Binary
    } else {
        Encoding::Json
    }
}

/// Decodes a frame in either encoding, told apart by its first byte.
pub fn decode(frame: &[u8], max_frame_bytes: usize) -> Result<Envelope, ProtocolError> {
    match Encoding::of(frame) {
        Encoding::Json => Envelope::decode(frame, max_frame_bytes),
        Encoding::Binary => binary_envelope::decode(frame, max_frame_bytes),
    }
}

/// Encodes an envelope in `encoding`.
pub fn encode(env: &Envelope, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Json => env.encode(),
        Encoding::Binary => binary_envelope::encode(env),
    }
}

/// The frame in `encoding`: the same bytes (the same allocation) when it is in it already, else
/// decoded and encoded again. Fails for a frame that does not decode, and for one whose new
/// encoding is over `max_frame_bytes` (`MESSAGE_TOO_LARGE`).
pub fn translate(
    frame: Arc<[u8]>,
    encoding: Encoding,
    max_frame_bytes: usize,
) -> Result<Arc<[u8]>, ProtocolError> {
    if Encoding::of(&frame) == encoding {
        return Ok(frame);
    }
    let env = decode(&frame, max_frame_bytes)?;
    let out = encode(&env, encoding);
    // A binary frame is always shorter than its JSON; the JSON of one near the limit may not
    // fit, and a conforming sender never makes such a frame (spec §27.3).
    if out.len() > max_frame_bytes {
        return Err(ProtocolError::FrameTooLarge { len: out.len(), max: max_frame_bytes });
    }
    Ok(Arc::from(out))
}

/// The frame as JSON: what HTTP bodies, mailboxes and the cluster broker carry.
pub fn to_json(frame: Arc<[u8]>, max_frame_bytes: usize) -> Result<Arc<[u8]>, ProtocolError> {
    translate(frame, Encoding::Json, max_frame_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{NONCE_LEN, PROTOCOL_VERSION, Payload};
    use crate::ids::{EntityId, MessageId, SessionId};
    use crate::message_type::MessageType;
    use crate::time::Timestamp;

    fn session_message() -> Envelope {
        Envelope {
            message_id: MessageId::new("m1").unwrap(),
            message_type: MessageType::PeerMessage,
            version: PROTOCOL_VERSION.to_owned(),
            timestamp: Timestamp::from_unix_millis(1_700_000_000_000),
            seq: 3,
            session_id: Some(SessionId::new("sess_1").unwrap()),
            sender_id: EntityId::new("alice").unwrap(),
            recipient_id: Some(EntityId::new("bob").unwrap()),
            payload: Payload::ciphertext(vec![0xff, 0, 7, b'\n', b'"']),
            nonce: [0; NONCE_LEN],
            signature: None,
            verified: crate::envelope::Verified::NO,
        }
    }

    #[test]
    fn the_first_byte_tells_the_encoding() {
        let env = session_message();
        assert_eq!(Encoding::of(&env.encode()), Encoding::Json);
        assert_eq!(Encoding::of(&binary_envelope::encode(&env)), Encoding::Binary);
        assert_eq!(Encoding::of(b""), Encoding::Json);
        assert_eq!(Encoding::of(b" {"), Encoding::Json);
    }

    #[test]
    fn translation_keeps_the_envelope_and_its_canonical_bytes() {
        let env = session_message();
        let json: Arc<[u8]> = Arc::from(env.encode());
        let binary = translate(Arc::clone(&json), Encoding::Binary, 1 << 20).unwrap();
        assert_eq!(Encoding::of(&binary), Encoding::Binary);
        let back = to_json(Arc::clone(&binary), 1 << 20).unwrap();
        assert_eq!(&*back, &*json);
        let decoded = decode(&binary, 1 << 20).unwrap();
        assert_eq!(decoded, env);
        assert_eq!(decoded.signing_input(), env.signing_input());
        assert_eq!(decoded.associated_data(), env.associated_data());
        // Already in the wanted encoding: the same allocation, not a copy.
        assert!(Arc::ptr_eq(
            &translate(Arc::clone(&json), Encoding::Json, 1 << 20).unwrap(),
            &json
        ));
    }

    #[test]
    fn a_translation_over_the_frame_limit_is_refused() {
        let env = session_message();
        let binary: Arc<[u8]> = Arc::from(binary_envelope::encode(&env));
        let json_len = env.encode().len();
        assert!(binary.len() < json_len, "binary is the shorter encoding");
        assert!(to_json(Arc::clone(&binary), json_len).is_ok());
        let err = to_json(binary, json_len - 1).unwrap_err();
        assert_eq!(err.code(), crate::error::ErrorCode::MessageTooLarge);
    }

    #[test]
    fn a_frame_that_does_not_decode_is_not_translated() {
        let junk: Arc<[u8]> = Arc::from(&[LAYOUT_VERSION, 0xee][..]);
        assert!(to_json(junk, 1 << 20).is_err());
        let over: Arc<[u8]> = Arc::from(session_message().encode());
        let len = over.len();
        assert!(translate(over, Encoding::Binary, len - 1).is_err());
    }

    #[test]
    fn negotiation_selects_binary_only_when_both_sides_want_it() {
        let offer = Some("chat, peerlink.binary.v1");
        assert_eq!(choose(offer, true), Encoding::Binary);
        assert_eq!(choose(offer, false), Encoding::Json);
        assert_eq!(choose(Some("peerlink.binary.v2"), true), Encoding::Json);
        assert_eq!(choose(Some("PEERLINK.BINARY.V1"), true), Encoding::Json);
        assert_eq!(choose(None, true), Encoding::Json);
        assert_eq!(selected(Some(BINARY_SUBPROTOCOL), true), Encoding::Binary);
        assert_eq!(selected(None, true), Encoding::Json);
        // A server cannot force binary on a client that did not offer it.
        assert_eq!(selected(Some(BINARY_SUBPROTOCOL), false), Encoding::Json);
        assert_eq!(Encoding::Binary.subprotocol(), Some(BINARY_SUBPROTOCOL));
        assert_eq!(Encoding::Json.subprotocol(), None);
    }

    #[test]
    fn an_accept_header_asks_for_binary_only_by_name() {
        assert!(accepts_binary(Some(accept_header(true))));
        assert!(!accepts_binary(Some(accept_header(false))));
        assert!(accepts_binary(Some("application/VND.peerlink.binary.v1;q=0.9")));
        assert!(accepts_binary(Some("text/html , application/vnd.peerlink.binary.v1 ")));
        assert!(!accepts_binary(Some("application/vnd.peerlink.binary.v1;q=0")));
        assert!(!accepts_binary(Some("application/vnd.peerlink.binary.v1; q=0.000")));
        // Weights are RFC 9110 qvalues; a malformed one refuses.
        assert!(accepts_binary(Some("application/vnd.peerlink.binary.v1;q=1.000")));
        assert!(accepts_binary(Some("application/vnd.peerlink.binary.v1;q=0.001")));
        assert!(accepts_binary(Some("application/vnd.peerlink.binary.v1;Q=1")));
        for bad in ["NaN", "abc", "2", "1.5", "0.0001", "-1", "", "1.", "+1", "0.5x"] {
            let h = format!("application/vnd.peerlink.binary.v1;q={bad}");
            let expect = bad == "1.";
            assert_eq!(accepts_binary(Some(&h)), expect, "q={bad}");
        }
        assert!(!accepts_binary(Some("*/*")));
        assert!(!accepts_binary(Some("application/*")));
        assert!(!accepts_binary(Some("application/vnd.peerlink.binary.v2")));
        assert!(!accepts_binary(Some("")));
        assert!(!accepts_binary(None));
    }

    #[test]
    fn a_content_type_names_the_body_encoding() {
        assert_eq!(body_encoding(Some(BINARY_MEDIA_TYPE)), Encoding::Binary);
        assert_eq!(
            body_encoding(Some("Application/Vnd.Peerlink.Binary.V1; x=y")),
            Encoding::Binary
        );
        assert_eq!(body_encoding(Some(NDJSON_MEDIA_TYPE)), Encoding::Json);
        assert_eq!(body_encoding(Some("application/json")), Encoding::Json);
        assert_eq!(body_encoding(None), Encoding::Json);
        assert_eq!(Encoding::Binary.media_type(), BINARY_MEDIA_TYPE);
        assert_eq!(Encoding::Json.media_type(), NDJSON_MEDIA_TYPE);
    }

    #[test]
    fn a_server_answers_binary_only_when_both_sides_want_it() {
        assert_eq!(answer_encoding(true, true), Encoding::Binary);
        assert_eq!(answer_encoding(true, false), Encoding::Json);
        assert_eq!(answer_encoding(false, true), Encoding::Json);
        assert_eq!(answer_encoding(false, false), Encoding::Json);
        assert!(accepts_post_body(Encoding::Json, false));
        assert!(accepts_post_body(Encoding::Binary, true));
        assert!(!accepts_post_body(Encoding::Binary, false));
        // A binary answer to a client that did not ask is read as NDJSON.
        assert_eq!(answer_body_encoding(Encoding::Binary, false), Encoding::Json);
        assert_eq!(answer_body_encoding(Encoding::Binary, true), Encoding::Binary);
        assert_eq!(answer_body_encoding(Encoding::Json, true), Encoding::Json);
    }

    #[test]
    fn a_client_learns_per_hop_from_its_answers() {
        let (b, j) = (Encoding::Binary, Encoding::Json);
        assert!(hop_speaks_binary(false, 200, b, true));
        assert!(hop_speaks_binary(false, 204, b, true));
        assert!(!hop_speaks_binary(true, 200, j, true), "a 2xx in NDJSON unlearns");
        assert!(!hop_speaks_binary(true, 415, j, true), "415 unlearns");
        assert!(hop_speaks_binary(true, 503, j, true), "a 5xx tells nothing");
        assert!(!hop_speaks_binary(false, 503, b, true));
        assert!(hop_speaks_binary(true, 429, j, true));
        assert!(!hop_speaks_binary(true, 200, b, false), "never without binary_links");
    }
}
