//! Starting a node from Python's arguments: its configuration (transport preference, trusted
//! peers, trust policy, event queue, TLS), its relay (asked of the relay's node where its id
//! or key is not given), and the start of a client or a server.

use std::net::SocketAddr;
use std::path::PathBuf;

use peerlink_core::TrustPolicy;
use peerlink_core::transport::TransportPreference;
use peerlink_host::{ApiError, Config, Events, Handle, Peerlink, TrustedPeer};
use pyo3::prelude::*;

use crate::args::{PeerTuple, base_url, preference, public_key, trusted};
use crate::errors;
use crate::identity::{PyIdentity, entity};
use crate::waiting::wait;

/// A node just started, and what the Python object keeps of its start.
pub(crate) struct Started {
    pub(crate) handle: Handle,
    pub(crate) events: Events,
    /// The listener's base URL (servers only).
    pub(crate) url: Option<String>,
    /// The relay.
    pub(crate) relay: Option<TrustedPeer>,
}

/// What both kinds of node are configured with.
struct Common {
    preference: TransportPreference,
    peers: Vec<TrustedPeer>,
    open: bool,
    event_queue: usize,
    ca_file: Option<PathBuf>,
}

impl Common {
    fn apply(self, config: &mut Config) {
        config.node.preference = self.preference;
        config.peers = self.peers;
        config.trust_policy = if self.open { TrustPolicy::Open } else { TrustPolicy::Allowlist };
        config.limits.event_queue = self.event_queue.max(1);
        config.tls.ca_file = self.ca_file;
    }
}

fn common(
    py: Python<'_>,
    preference_name: &str,
    peers: Vec<PeerTuple>,
    open: bool,
    event_queue: usize,
    ca_file: Option<PathBuf>,
) -> PyResult<Common> {
    let preference = preference(py, preference_name)?;
    let peers = peers.into_iter().map(|p| trusted(py, p)).collect::<PyResult<Vec<_>>>()?;
    if event_queue == 0 || event_queue > 1 << 20 {
        return Err(errors::invalid(py, "event_queue must be between 1 and 1048576"));
    }
    Ok(Common { preference, peers, open, event_queue, ca_file })
}

/// The relay: given, or asked of the node at `url` (`GET /peers/capabilities`) where its id or
/// key is left out, and checked against what it says.
fn relay(
    py: Python<'_>,
    config: &Config,
    url: Option<&str>,
    id: Option<&str>,
    key: Option<&str>,
) -> PyResult<Option<TrustedPeer>> {
    let Some(url) = url else {
        if id.is_some() || key.is_some() {
            return Err(errors::invalid(py, "relay_id and relay_key need relay_url"));
        }
        return Ok(None);
    };
    let url = base_url(py, url)?;
    let given_id = id.map(|i| entity(py, i)).transpose()?;
    let given_key = key.map(|k| public_key(py, "relay_key", k)).transpose()?;
    if let (Some(entity), Some(key)) = (&given_id, given_key) {
        return Ok(Some(TrustedPeer { entity: entity.clone(), key, url: Some(url) }));
    }
    let tls = match &config.tls.ca_file {
        Some(ca) => Some(
            peerlink_host::tls::client_config(ca)
                .map_err(|e| errors::error(py, "NodeStartError", e.to_string()))?,
        ),
        None => None,
    };
    let rt = peerlink_host::smol_runtime::rt();
    let asked = wait(py, peerlink_host::client::capabilities(rt, &url, tls), None)?;
    let caps = match asked {
        Some(Ok(caps)) => caps,
        Some(Err(e)) => {
            return Err(errors::error(
                py,
                "NodeStartError",
                format!("cannot ask the node at {url} who it is (GET /peers/capabilities): {e}"),
            ));
        }
        None => return Err(errors::error(py, "TimeoutError", "relay lookup timed out")),
    };
    let found = entity(py, &caps.node_id)?;
    let key = public_key(py, "the relay's public_key", &caps.public_key)?;
    if given_id.as_ref().is_some_and(|g| *g != found) || given_key.is_some_and(|g| g != key) {
        return Err(errors::error(
            py,
            "AuthenticationFailedError",
            format!("the node at {url} is {found} with another id or key than the one given"),
        ));
    }
    Ok(Some(TrustedPeer { entity: found, key, url: Some(url) }))
}

/// Starts a client node (`Node.start_client`): reached through its relay, serving nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn client(
    py: Python<'_>,
    identity: &PyIdentity,
    relay_url: Option<&str>,
    relay_id: Option<&str>,
    relay_key: Option<&str>,
    preference: &str,
    peers: Vec<PeerTuple>,
    open: bool,
    event_queue: usize,
    ca_file: Option<PathBuf>,
) -> PyResult<Started> {
    let common = common(py, preference, peers, open, event_queue, ca_file)?;
    let mut config = Config::ephemeral();
    common.apply(&mut config);
    config.relay = relay(py, &config, relay_url, relay_id, relay_key)?;
    let relay = config.relay.clone();
    let identity = identity.inner.duplicate();
    let rt = peerlink_host::smol_runtime::rt();
    // As `peerlink_blocking::Client::start`: the node's endpoints are not served; a
    // client is reached over the links and long polls it opens.
    let started = async move {
        let (handle, _endpoints) = Peerlink::mount(rt, config, identity).await?;
        let events = handle.incoming().await?;
        Ok::<_, ApiError>((handle, events))
    };
    let (handle, events) = match wait(py, started, None)? {
        Some(r) => r.map_err(|e| errors::api(py, e))?,
        None => return Err(errors::error(py, "InternalError", "start timed out")),
    };
    Ok(Started { handle, events, url: None, relay })
}

/// Starts a server node (`Node.start_server`): listening on `listen`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn server(
    py: Python<'_>,
    identity: &PyIdentity,
    listen: &str,
    preference: &str,
    peers: Vec<PeerTuple>,
    open: bool,
    event_queue: usize,
    relay_url: Option<&str>,
    relay_id: Option<&str>,
    relay_key: Option<&str>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    frames_per_minute: Option<u32>,
) -> PyResult<Started> {
    let common = common(py, preference, peers, open, event_queue, ca_file)?;
    let addr: SocketAddr =
        listen.parse().map_err(|_| errors::invalid(py, format!("{listen:?} is not host:port")))?;
    let mut config = Config::ephemeral();
    common.apply(&mut config);
    config.listen = addr;
    config.tls.cert_file = cert_file;
    config.tls.key_file = key_file;
    if let Some(n) = frames_per_minute {
        config.node.link_rate = peerlink_core::rate_limit::RateLimit::per_minute(n);
        config.node.validate().map_err(|e| errors::usage(py, &e))?;
    }
    config.relay = relay(py, &config, relay_url, relay_id, relay_key)?;
    let relay = config.relay.clone();
    let identity = identity.inner.duplicate();
    let rt = peerlink_host::smol_runtime::rt();
    let started = async move {
        let handle = Peerlink::start(rt, config, identity).await?;
        let events = handle.incoming().await?;
        Ok::<_, ApiError>((handle, events))
    };
    let (handle, events) = match wait(py, started, None)? {
        Some(r) => r.map_err(|e| errors::api(py, e))?,
        None => return Err(errors::error(py, "InternalError", "start timed out")),
    };
    let url = Some(handle.base_url());
    Ok(Started { handle, events, url, relay })
}
