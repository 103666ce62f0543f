//! Arguments given by Python, checked and parsed into the node's types: transport
//! preferences, public keys, trusted peers, base URLs, message kinds and application types.
//! A value that does not parse is refused with `InvalidMessageError`.

use peerlink_core::transport::TransportPreference;
use peerlink_core::{AppType, MessageType, PublicKey};
use peerlink_host::TrustedPeer;
use pyo3::prelude::*;

use crate::errors;
use crate::identity::entity;

/// A peer as Python gives it: `(entity_id, public_key, url or None)`.
pub(crate) type PeerTuple = (String, String, Option<String>);

/// The parsed form of a `TransportPreference` value.
pub(crate) fn preference(py: Python<'_>, name: &str) -> PyResult<TransportPreference> {
    Ok(match name {
        "WEBSOCKET_ONLY" => TransportPreference::WebsocketOnly,
        "WEBSOCKET_FIRST" => TransportPreference::WebsocketFirst,
        "HTTP_FIRST" => TransportPreference::HttpFirst,
        "HTTP_ONLY" => TransportPreference::HttpOnly,
        other => {
            return Err(errors::invalid(py, format!("unknown transport preference {other:?}")));
        }
    })
}

/// A public key given by Python (base64url).
pub(crate) fn public_key(py: Python<'_>, what: &str, key: &str) -> PyResult<PublicKey> {
    PublicKey::from_b64u(key)
        .map_err(|e| errors::invalid(py, format!("{what}: not a public key ({e})")))
}

/// A peer given by Python as `(entity_id, public_key, url or None)`.
pub(crate) fn trusted(py: Python<'_>, (id, key, url): PeerTuple) -> PyResult<TrustedPeer> {
    let entity = entity(py, &id)?;
    let key = public_key(py, &format!("key of {id}"), &key)?;
    let url = url.map(|u| base_url(py, &u)).transpose()?;
    Ok(TrustedPeer { entity, key, url })
}

/// A node's base URL (`http(s)://host:port`), checked, without a trailing slash.
pub(crate) fn base_url(py: Python<'_>, url: &str) -> PyResult<String> {
    if peerlink_host::client::base_of(url).is_none() {
        return Err(errors::invalid(
            py,
            format!("{url:?} is not a node's base URL (http://host:port)"),
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The kind of a message sent with `send`: `PEER_MESSAGE` or `STATUS`.
pub(crate) fn message_kind(py: Python<'_>, kind: &str) -> PyResult<MessageType> {
    match kind {
        "PEER_MESSAGE" => Ok(MessageType::PeerMessage),
        "STATUS" => Ok(MessageType::Status),
        other => {
            Err(errors::invalid(py, format!("kind must be PEER_MESSAGE or STATUS, not {other:?}")))
        }
    }
}

/// An application type given by Python (`None`: none).
pub(crate) fn app_type(py: Python<'_>, app_type: Option<&str>) -> PyResult<Option<AppType>> {
    app_type
        .map(|a| AppType::new(a).map_err(|e| errors::invalid(py, format!("app_type: {e}"))))
        .transpose()
}
