//! Capabilities offered in the handshake and the rule that turns two offers into one agreement.
//!
//! Wire form (a member of the `HANDSHAKE_INIT` and `HANDSHAKE_INIT_ACK` payloads):
//! `{"app_types":true,"chunking":true,"max_frame_bytes":1048576,"resume":true,"sign_all":true,
//!   "transports":["http","websocket"]}` (`app_types` only when offered). Unknown members and unknown transport names are ignored,
//! so later minor versions can add capabilities; they are still covered by the signatures and the
//! transcript, so they cannot be altered in flight.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::error::ProtocolError;

/// A transport a peer can be reached over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// HTTP requests (the fallback).
    Http,
    /// A WebSocket connection (preferred).
    WebSocket,
}

impl Transport {
    /// The wire name: `"http"` or `"websocket"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::WebSocket => "websocket",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "http" => Some(Transport::Http),
            "websocket" => Some(Transport::WebSocket),
            _ => None,
        }
    }
}

/// What one side supports, or (after [`Capabilities::negotiate`]) what a session uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Transports this side accepts traffic on.
    pub transports: BTreeSet<Transport>,
    /// Whether large messages may be sent as `CHUNKED_MESSAGE` frames.
    pub chunking: bool,
    /// Whether the session may be resumed on a new link.
    pub resume: bool,
    /// Whether every session message carries an Ed25519 signature besides its AEAD tag.
    pub sign_all: bool,
    /// The largest frame this side accepts.
    pub max_frame_bytes: u64,
    /// Whether data frames may carry an application-defined type (`app_type`, spec §13.1).
    /// Absent from an offer means `false`: peers that predate it never offer it.
    pub app_types: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            transports: [Transport::Http, Transport::WebSocket].into_iter().collect(),
            chunking: true,
            resume: true,
            sign_all: true,
            max_frame_bytes: 1024 * 1024,
            app_types: true,
        }
    }
}

/// Most transports a peer may list.
const MAX_TRANSPORTS: usize = 16;

impl Capabilities {
    /// The agreement both sides compute from the initiator's and the responder's offers:
    /// transports in common, chunking and resume only if both offer them, `sign_all` if either
    /// asks for it (the stricter choice wins), and the smaller frame limit.
    pub fn negotiate(initiator: &Capabilities, responder: &Capabilities) -> Capabilities {
        Capabilities {
            transports: initiator.transports.intersection(&responder.transports).copied().collect(),
            chunking: initiator.chunking && responder.chunking,
            resume: initiator.resume && responder.resume,
            sign_all: initiator.sign_all || responder.sign_all,
            max_frame_bytes: initiator.max_frame_bytes.min(responder.max_frame_bytes),
            app_types: initiator.app_types && responder.app_types,
        }
    }

    /// The JSON wire form. `app_types` is written only when offered, so an offer without it
    /// reads as before it existed.
    pub fn to_value(&self) -> Value {
        let transports: Vec<&str> = self.transports.iter().map(|t| t.as_str()).collect();
        let mut v = json!({
            "transports": transports,
            "chunking": self.chunking,
            "resume": self.resume,
            "sign_all": self.sign_all,
            "max_frame_bytes": self.max_frame_bytes.min(crate::canonical::MAX_SAFE_INTEGER),
        });
        if self.app_types
            && let Some(map) = v.as_object_mut()
        {
            map.insert("app_types".into(), Value::Bool(true));
        }
        v
    }

    /// Parses the wire form. Known members must have the right type; unknown ones are ignored.
    pub fn from_value(value: &Value) -> Result<Self, ProtocolError> {
        let bad = |reason| ProtocolError::InvalidField { field: "capabilities", reason };
        let map: &Map<String, Value> = value.as_object().ok_or(bad("not an object"))?;
        let flag = |name: &str| -> Result<bool, ProtocolError> {
            map.get(name).and_then(Value::as_bool).ok_or(bad("missing or non-boolean flag"))
        };
        let list = map
            .get("transports")
            .and_then(Value::as_array)
            .ok_or(bad("transports is not an array"))?;
        if list.len() > MAX_TRANSPORTS {
            return Err(bad("too many transports"));
        }
        let mut transports = BTreeSet::new();
        for t in list {
            let name = t.as_str().ok_or(bad("transport is not a string"))?;
            transports.extend(Transport::parse(name));
        }
        let max_frame_bytes = map
            .get("max_frame_bytes")
            .and_then(Value::as_u64)
            .ok_or(bad("max_frame_bytes is not a non-negative integer"))?;
        let app_types = match map.get("app_types") {
            None => false,
            Some(v) => v.as_bool().ok_or(bad("missing or non-boolean flag"))?,
        };
        Ok(Capabilities {
            transports,
            chunking: flag("chunking")?,
            resume: flag("resume")?,
            sign_all: flag("sign_all")?,
            max_frame_bytes,
            app_types,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_round_trips_and_ignores_unknowns() {
        let caps = Capabilities::default();
        assert_eq!(Capabilities::from_value(&caps.to_value()).unwrap(), caps);
        let mut v = caps.to_value();
        v["future"] = json!(true);
        v["transports"] = json!(["websocket", "quic"]);
        let parsed = Capabilities::from_value(&v).unwrap();
        assert_eq!(parsed.transports, [Transport::WebSocket].into_iter().collect());
        v["app_types"] = json!(1);
        assert!(Capabilities::from_value(&v).is_err(), "a known member of the wrong type");
        v.as_object_mut().unwrap().remove("app_types");
        assert!(!Capabilities::from_value(&v).unwrap().app_types, "absent is not offered");
        v["chunking"] = json!("yes");
        assert!(Capabilities::from_value(&v).is_err());
        assert!(Capabilities::from_value(&json!([])).is_err());
    }

    #[test]
    fn negotiation_takes_the_common_and_stricter_choice() {
        let legacy = Capabilities {
            transports: [Transport::Http].into_iter().collect(),
            chunking: false,
            resume: false,
            sign_all: false,
            max_frame_bytes: 65536,
            app_types: false,
        };
        let full = Capabilities::default();
        let agreed = Capabilities::negotiate(&full, &legacy);
        assert_eq!(agreed.transports, [Transport::Http].into_iter().collect());
        assert!(!agreed.chunking && !agreed.resume && !agreed.app_types);
        assert!(agreed.sign_all, "either side asking for signatures wins");
        assert_eq!(agreed.max_frame_bytes, 65536);
        let lax = Capabilities { sign_all: false, ..Capabilities::default() };
        assert!(!Capabilities::negotiate(&lax, &lax).sign_all);
    }
}
