//! The HTTP and WebSocket endpoints of a node (spec §23): paths, query parameters, and the JSON
//! bodies of the authentication, discovery and error answers.
//!
//! Servers and clients of every driver share these types, so the two sides of each endpoint
//! cannot drift apart. Parsing a body received from the network never panics: every refusal is
//! an [`EndpointError`] that names the spec error code and HTTP status to answer with.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;

/// `/ws/v1/peers`: the WebSocket endpoint for peer traffic.
pub const PEERS_PATH: &str = "/ws/v1/peers";
/// `/ws/v1/events`: the WebSocket endpoint for topic subscriptions and server push.
pub const EVENTS_PATH: &str = "/ws/v1/events";
/// `GET /auth/token?entity_id=…&pubkey=…`: asks for a challenge.
pub const AUTH_TOKEN_PATH: &str = "/auth/token";
/// `POST /auth/verify`: answers a challenge, receives a token.
pub const AUTH_VERIFY_PATH: &str = "/auth/verify";
/// `POST` (send) and `GET` (long-poll) envelopes as NDJSON (spec §21).
pub const MESSAGES_PATH: &str = "/v1/messages";
/// `GET /peers/discover`: entities reachable at this node.
pub const DISCOVER_PATH: &str = "/peers/discover";
/// `GET /peers/capabilities`: this node's identity, versions and capabilities.
pub const CAPABILITIES_PATH: &str = "/peers/capabilities";
/// `GET /healthz`: liveness.
pub const HEALTH_PATH: &str = "/healthz";
/// `GET /metrics`: Prometheus text exposition.
pub const METRICS_PATH: &str = "/metrics";

/// Query parameter carrying a token where a header cannot (browsers opening a WebSocket).
pub const TOKEN_PARAM: &str = "token";
/// Query parameter naming the session a WebSocket connection means to resume.
pub const SESSION_PARAM: &str = "session_id";
/// Query parameter of a long poll: how long the caller is willing to wait, in milliseconds.
pub const WAIT_PARAM: &str = "wait_ms";
/// Largest JSON body accepted on the authentication endpoints, in bytes.
pub const MAX_AUTH_BODY: usize = 4096;

/// The answer to `GET /auth/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeBody {
    /// The node's entity id: part of the signed input (spec §23.2).
    pub node_id: String,
    /// b64u of the 32 challenge bytes.
    pub challenge: String,
    /// When the challenge stops being accepted, in milliseconds since the Unix epoch.
    pub expires_at: u64,
}

/// The body of `POST /auth/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// The entity answering.
    pub entity_id: String,
    /// The challenge, exactly as received.
    pub challenge: String,
    /// b64u of the Ed25519 signature over the challenge signing input.
    pub signature: String,
}

/// The answer to a successful `POST /auth/verify`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// The bearer token (a JWT).
    pub token: String,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at: u64,
}

impl std::fmt::Debug for TokenBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A bearer token is a credential: never in logs.
        f.debug_struct("TokenBody")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The body of every refusal: the spec error code and a fixed text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error code (spec §10), e.g. `"AUTHENTICATION_FAILED"`.
    pub error: String,
    /// A human-readable text; never carries secrets or peer input.
    pub message: String,
}

impl ErrorResponse {
    /// The body for `code`, with the spec's text for it.
    pub fn new(code: ErrorCode) -> Self {
        Self { error: code.as_str().to_owned(), message: code.description().to_owned() }
    }
}

/// One entity in the answer to `GET /peers/discover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredPeer {
    /// The entity id.
    pub entity_id: String,
    /// `"websocket"` while it holds a peers link to this node, else `"http"` (reached by
    /// polling or through its mailbox).
    pub transport: String,
    /// On a cluster node (spec §25): the name of the other node of the cluster that holds the
    /// entity's newest peers link; absent for entities linked to this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The answer to `GET /peers/discover`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoverBody {
    /// The node answering.
    pub node_id: String,
    /// Entities connected to it, sorted by entity id; at most [`MAX_DISCOVERED`].
    pub peers: Vec<DiscoveredPeer>,
}

/// Most entities listed by `GET /peers/discover`.
pub const MAX_DISCOVERED: usize = 1000;

/// The answer to `GET /peers/capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilitiesBody {
    /// The node's entity id.
    pub node_id: String,
    /// b64u of its Ed25519 public key.
    pub public_key: String,
    /// Protocol versions it speaks, preferred first.
    pub versions: Vec<String>,
    /// Its capabilities, in the form of the handshake's `capabilities` member (spec §7).
    pub capabilities: serde_json::Value,
}

/// Why a body received on an endpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Larger than the endpoint accepts.
    #[error("body too large")]
    TooLarge,
    /// Not JSON of the expected shape.
    #[error("malformed body")]
    Malformed,
}

impl EndpointError {
    /// The spec error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            EndpointError::TooLarge => ErrorCode::MessageTooLarge,
            EndpointError::Malformed => ErrorCode::InvalidMessage,
        }
    }

    /// The HTTP status to answer with: 413 or 400.
    pub fn http_status(&self) -> u16 {
        match self {
            EndpointError::TooLarge => 413,
            EndpointError::Malformed => 400,
        }
    }
}

/// Parses a JSON body of at most `max` bytes, refusing anything else with a typed error.
pub fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    max: usize,
) -> Result<T, EndpointError> {
    if body.len() > max {
        return Err(EndpointError::TooLarge);
    }
    serde_json::from_slice(body).map_err(|_| EndpointError::Malformed)
}

/// The value of query parameter `name` in `query` (the part after `?`), percent-decoded, if it
/// occurs exactly once. Entity ids, b64u keys, tokens and session ids never need escaping, but
/// a client may escape them anyway.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == name {
            if found.is_some() {
                return None;
            }
            found = Some(percent_decode(value)?);
        }
    }
    found
}

/// A long poll's `wait_ms` that is not one decimal number of at most 10 digits, or appears twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadWait;

impl std::fmt::Display for BadWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wait_ms must be one decimal number of milliseconds (at most 10 digits)")
    }
}

impl std::error::Error for BadWait {}

/// The `wait_ms` of a long poll's query string (spec §21): `None` when absent. The node holds
/// the poll for the lesser of it and its own poll wait.
pub fn poll_wait_of(query: Option<&str>) -> Result<Option<std::time::Duration>, BadWait> {
    let Some(query) = query else { return Ok(None) };
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != WAIT_PARAM {
            continue;
        }
        let digits =
            !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit());
        let ms: u64 =
            if digits { value.parse().map_err(|_| BadWait)? } else { return Err(BadWait) };
        if found.replace(std::time::Duration::from_millis(ms)).is_some() {
            return Err(BadWait);
        }
    }
    Ok(found)
}

/// Decodes `%XX` escapes and `+` (a space in form encoding); `None` for a broken escape or a
/// result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = hex(bytes.next()?)?;
                let lo = hex(bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The URL of `GET /auth/token` at the node whose base URL is `base_url` (`http://host:port`).
pub fn token_url(base_url: &str, entity_id: &str, pubkey_b64u: &str) -> String {
    format!(
        "{}{AUTH_TOKEN_PATH}?entity_id={entity_id}&pubkey={pubkey_b64u}",
        base_url.trim_end_matches('/')
    )
}

/// The URL of `POST /auth/verify` at `base_url`.
pub fn verify_url(base_url: &str) -> String {
    format!("{}{AUTH_VERIFY_PATH}", base_url.trim_end_matches('/'))
}

/// The HTTP base URL (`http://host:port[/prefix]`) of a node, from the URL of one of its
/// endpoints (a WebSocket URL from `Output::OpenLink`, a messages URL from
/// `Output::HttpRequest`): `ws` becomes `http`, `wss` becomes `https`, and the endpoint path and
/// query are cut. `None` if the URL names no known endpoint.
pub fn base_url_of(url: &str) -> Option<String> {
    let url = url.split(['?', '#']).next().unwrap_or(url);
    let cut = [PEERS_PATH, EVENTS_PATH, MESSAGES_PATH]
        .iter()
        .filter_map(|p| url.strip_suffix(p))
        .next()?;
    let base = if let Some(rest) = cut.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = cut.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        cut.to_owned()
    };
    Some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_come_back_from_endpoint_urls() {
        assert_eq!(base_url_of("ws://h:1/ws/v1/peers").as_deref(), Some("http://h:1"));
        assert_eq!(base_url_of("wss://h/p/ws/v1/events").as_deref(), Some("https://h/p"));
        assert_eq!(base_url_of("http://h/v1/messages?wait_ms=5").as_deref(), Some("http://h"));
        assert_eq!(base_url_of("http://h/other"), None);
    }

    #[test]
    fn a_polls_wait_is_one_decimal_number_or_absent() {
        let ms = |n| Ok(Some(std::time::Duration::from_millis(n)));
        assert_eq!(poll_wait_of(None), Ok(None));
        assert_eq!(poll_wait_of(Some("token=x")), Ok(None));
        assert_eq!(poll_wait_of(Some("wait_ms=3000")), ms(3000));
        assert_eq!(poll_wait_of(Some("a=1&wait_ms=0")), ms(0));
        assert_eq!(poll_wait_of(Some("wait_ms=9999999999")), ms(9_999_999_999));
        for bad in ["wait_ms=", "wait_ms", "wait_ms=-1", "wait_ms=1.5", "wait_ms=+3", "wait_ms=%33"]
        {
            assert_eq!(poll_wait_of(Some(bad)), Err(BadWait), "{bad}");
        }
        assert_eq!(poll_wait_of(Some("wait_ms=12345678901")), Err(BadWait), "11 digits");
        assert_eq!(poll_wait_of(Some("wait_ms=1&wait_ms=1")), Err(BadWait), "twice");
    }

    #[test]
    fn query_params_are_found_once_and_decoded() {
        assert_eq!(query_param("a=1&token=x%2Ey&b", "token").as_deref(), Some("x.y"));
        assert_eq!(query_param("b", "b").as_deref(), Some(""));
        assert_eq!(query_param("token=a&token=b", "token"), None, "ambiguous");
        assert_eq!(query_param("token=%zz", "token"), None, "broken escape");
        assert_eq!(query_param("token=%ff", "token"), None, "not UTF-8");
        assert_eq!(query_param("token=%4", "token"), None, "truncated escape");
        assert_eq!(query_param("", "token"), None);
    }

    #[test]
    fn bodies_are_bounded_and_strict() {
        let ok = br#"{"entity_id":"a","challenge":"c","signature":"s"}"#;
        assert!(parse_body::<VerifyBody>(ok, MAX_AUTH_BODY).is_ok());
        assert_eq!(parse_body::<VerifyBody>(ok, 10), Err(EndpointError::TooLarge));
        let extra = br#"{"entity_id":"a","challenge":"c","signature":"s","x":1}"#;
        assert_eq!(parse_body::<VerifyBody>(extra, MAX_AUTH_BODY), Err(EndpointError::Malformed));
        assert_eq!(
            parse_body::<VerifyBody>(b"\xff{", MAX_AUTH_BODY),
            Err(EndpointError::Malformed)
        );
        assert_eq!(EndpointError::TooLarge.http_status(), 413);
        assert_eq!(EndpointError::Malformed.code(), ErrorCode::InvalidMessage);
    }

    #[test]
    fn tokens_never_show_in_debug() {
        let t = TokenBody { token: "eyJsecret".into(), expires_at: 1 };
        assert!(!format!("{t:?}").contains("eyJsecret"));
    }

    #[test]
    fn urls_are_built_from_a_base() {
        assert_eq!(
            token_url("http://h:1/", "alice", "KEY"),
            "http://h:1/auth/token?entity_id=alice&pubkey=KEY"
        );
        assert_eq!(verify_url("https://h"), "https://h/auth/verify");
    }

    proptest::proptest! {
        #[test]
        fn query_parsing_never_panics(q in ".{0,64}", n in "[a-z_]{0,8}") {
            let _ = query_param(&q, &n);
        }
    }
}
