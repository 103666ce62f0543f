//! `Node`: a running peerlink node (the host's [`Handle`] on smol's background threads) and
//! `Receipt`, a sent message's way to its delivery. Every call that waits releases the GIL and
//! wakes every [`SLICE`] to let Python handle signals (Ctrl-C).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use peerlink_core::node::{SendOptions, TransportStats};
use peerlink_core::stream::FailReason;
use peerlink_core::transport::TransportPreference;
use peerlink_core::{AppType, EntityId, Event, MessageId, MessageType, PublicKey, TrustPolicy};
use peerlink_host::{ApiError, Config, Events, Handle, Peerlink, TrustedPeer};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors;
use crate::identity::{PyIdentity, entity};

/// How long a wait holds the GIL released before checking for signals.
const SLICE: Duration = Duration::from_millis(100);

/// Outcomes no `Receipt` waits for yet: those of sends whose receipt is registered just after
/// the outcome came (the send call and the outcome race), and those of messages no receipt
/// will ever ask about (broadcasts, responses). The newest this many are kept.
const MAX_EARLY: usize = 1 << 14;

/// Runs `fut` with the GIL released, at most `timeout` (`None`: until it ends); `Ok(None)` on
/// timeout. Wakes every [`SLICE`] to run Python's signal handlers, so Ctrl-C interrupts a wait
/// (the exception they raise is returned).
pub(crate) fn wait<F>(
    py: Python<'_>,
    fut: F,
    timeout: Option<Duration>,
) -> PyResult<Option<F::Output>>
where
    F: Future + Send,
    F::Output: Send,
{
    let deadline = timeout.map(|t| Instant::now().checked_add(t));
    let mut fut = std::pin::pin!(fut);
    loop {
        let slice = match deadline {
            Some(Some(d)) => d.saturating_duration_since(Instant::now()).min(SLICE),
            _ => SLICE,
        };
        let done = py.detach(|| {
            smol::block_on(smol::future::or(async { Some(fut.as_mut().await) }, async {
                smol::Timer::after(slice).await;
                None
            }))
        });
        if done.is_some() {
            return Ok(done);
        }
        py.check_signals()?;
        if let Some(Some(d)) = deadline
            && Instant::now() >= d
        {
            return Ok(None);
        }
    }
}

/// A timeout given by Python, in seconds: finite and not negative (`None`: no timeout).
pub(crate) fn seconds(py: Python<'_>, what: &str, secs: Option<f64>) -> PyResult<Option<Duration>> {
    secs.map(|s| {
        Duration::try_from_secs_f64(s).map_err(|_| {
            errors::invalid(py, format!("{what} must be a finite number >= 0, not {s}"))
        })
    })
    .transpose()
}

/// The parsed form of a `TransportPreference` value.
fn preference(py: Python<'_>, name: &str) -> PyResult<TransportPreference> {
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
fn public_key(py: Python<'_>, what: &str, key: &str) -> PyResult<PublicKey> {
    PublicKey::from_b64u(key)
        .map_err(|e| errors::invalid(py, format!("{what}: not a public key ({e})")))
}

/// A peer given by Python as `(entity_id, public_key, url or None)`.
fn trusted(
    py: Python<'_>,
    (id, key, url): (String, String, Option<String>),
) -> PyResult<TrustedPeer> {
    let entity = entity(py, &id)?;
    let key = public_key(py, &format!("key of {id}"), &key)?;
    let url = url.map(|u| base_url(py, &u)).transpose()?;
    Ok(TrustedPeer { entity, key, url })
}

/// A node's base URL (`http(s)://host:port`), checked, without a trailing slash.
fn base_url(py: Python<'_>, url: &str) -> PyResult<String> {
    if peerlink_host::client::base_of(url).is_none() {
        return Err(errors::invalid(
            py,
            format!("{url:?} is not a node's base URL (http://host:port)"),
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// How a delivery ended, as the pump saw it.
type Outcome = Result<(Option<&'static str>, Instant), (FailReason, bool)>;

/// Sends waiting for their outcome, and outcomes waiting for their send's receipt.
#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
}

#[derive(Default)]
struct TrackerState {
    waiting: HashMap<MessageId, Sender<Outcome>>,
    early: HashMap<MessageId, Outcome>,
    /// `early`'s ids, oldest first (an id taken from `early` since stays here until evicted).
    early_order: VecDeque<MessageId>,
    stopped: bool,
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pump saw `id`'s outcome.
    fn settle(&self, id: &MessageId, outcome: Outcome) {
        let mut s = self.lock();
        match s.waiting.remove(id) {
            Some(tx) => {
                let _ = tx.try_send(outcome);
            }
            None => {
                if s.early_order.len() >= MAX_EARLY
                    && let Some(oldest) = s.early_order.pop_front()
                {
                    s.early.remove(&oldest);
                }
                s.early.insert(id.clone(), outcome);
                s.early_order.push_back(id.clone());
            }
        }
    }

    /// A receipt for `id`: its outcome's channel.
    fn register(&self, id: &MessageId) -> Receiver<Outcome> {
        let (tx, rx) = async_channel::bounded(1);
        let mut s = self.lock();
        if let Some(outcome) = s.early.remove(id) {
            let _ = tx.try_send(outcome);
        } else if !s.stopped {
            s.waiting.insert(id.clone(), tx);
        }
        rx
    }

    /// The node stopped: waiting receipts learn it (their channel closes).
    fn stop(&self) {
        let mut s = self.lock();
        s.stopped = true;
        s.waiting.clear();
    }
}

/// Moves the node's events to the application's queue, and delivery outcomes to their
/// receipts. A full queue holds the pump, and so the node (backpressure, nothing dropped).
async fn pump(events: Events, out: Sender<Event>, tracker: Arc<Tracker>) {
    while let Ok(e) = events.recv().await {
        match &e {
            Event::Delivered { id, transport, .. } => {
                tracker.settle(id, Ok((transport.map(|t| t.as_str()), Instant::now())));
                continue;
            }
            Event::Failed { id, reason, maybe_delivered, .. } => {
                tracker.settle(id, Err((*reason, *maybe_delivered)));
            }
            _ => {}
        }
        // Closed: the application closed the node; keep settling receipts until it stops.
        let _ = out.send(e).await;
    }
    tracker.stop();
}

/// A running node: a client (reached through its relay, serving nothing) or a server (with a
/// listener). Closing it (or dropping it) shuts it down: `BYE` on every link.
#[pyclass(module = "peerlink._native", frozen, name = "Node")]
pub struct PyNode {
    handle: Handle,
    events: Receiver<Event>,
    tracker: Arc<Tracker>,
    /// The listener's base URL (servers only).
    url: Option<String>,
    /// The relay: id, key, URL.
    relay: Option<(String, String, Option<String>)>,
    closed: AtomicBool,
}

impl Drop for PyNode {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            // No waiting here (the GIL may be held): the node shuts down in the background.
            let handle = self.handle.clone();
            smol::spawn(async move {
                let _ = handle.shutdown().await;
            })
            .detach();
        }
    }
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

#[allow(clippy::too_many_arguments)]
fn common(
    py: Python<'_>,
    preference_name: &str,
    peers: Vec<(String, String, Option<String>)>,
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

impl PyNode {
    /// Wraps a started node: its events go through the pump.
    fn new(
        handle: Handle,
        events: Events,
        url: Option<String>,
        relay: Option<TrustedPeer>,
        queue: usize,
    ) -> Self {
        let (tx, rx) = async_channel::bounded(queue.max(1));
        let tracker = Arc::new(Tracker::default());
        smol::spawn(pump(events, tx, Arc::clone(&tracker))).detach();
        let relay = relay.map(|r| (r.entity.as_str().to_owned(), r.key.to_b64u(), r.url));
        Self { handle, events: rx, tracker, url, relay, closed: AtomicBool::new(false) }
    }

    /// Runs a call of the node's handle with the GIL released; its error as an exception.
    fn call<T: Send, F>(&self, py: Python<'_>, fut: F) -> PyResult<T>
    where
        F: Future<Output = Result<T, ApiError>> + Send,
    {
        match wait(py, fut, None)? {
            Some(r) => r.map_err(|e| errors::api(py, e)),
            None => Err(errors::error(py, "InternalError", "a call without timeout timed out")),
        }
    }
}

/// A transport's counters as a dict of the `TransportStats` dataclass's fields.
fn stats_dict<'py>(py: Python<'py>, s: &TransportStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("ws_messages_sent", s.ws_messages_sent)?;
    d.set_item("ws_bytes_sent", s.ws_bytes_sent)?;
    d.set_item("http_messages_sent", s.http_messages_sent)?;
    d.set_item("http_bytes_sent", s.http_bytes_sent)?;
    d.set_item("ws_messages_received", s.ws_messages_received)?;
    d.set_item("ws_bytes_received", s.ws_bytes_received)?;
    d.set_item("http_messages_received", s.http_messages_received)?;
    d.set_item("http_bytes_received", s.http_bytes_received)?;
    d.set_item("fallbacks", s.fallbacks)?;
    d.set_item("failures", s.failures)?;
    d.set_item("reconnects", s.reconnects)?;
    d.set_item("failovers", s.failovers)?;
    d.set_item("resumes", s.resumes)?;
    d.set_item("handshakes", s.handshakes)?;
    d.set_item("rejected", s.rejected)?;
    d.set_item("peers_forgotten", s.peers_forgotten)?;
    d.set_item("last_rtt", s.last_rtt.map(|d| d.as_secs_f64()))?;
    Ok(d)
}

/// An event as a tuple whose first item names its kind (the Python layer makes dataclasses).
fn event_tuple(py: Python<'_>, e: Event) -> PyResult<Py<PyAny>> {
    let t = match e {
        Event::Message { from, id, kind, app_type, payload } => (
            "message",
            from.as_str(),
            id.as_str(),
            kind.as_str(),
            app_type.as_ref().map(|a| a.as_str().to_owned()),
            PyBytes::new(py, &payload),
        )
            .into_pyobject(py)?
            .into_any(),
        Event::Request { from, id, payload } => {
            ("request", from.as_str(), id.as_str(), PyBytes::new(py, &payload))
                .into_pyobject(py)?
                .into_any()
        }
        Event::Response { from, request, payload } => {
            ("response", from.as_str(), request.as_str(), PyBytes::new(py, &payload))
                .into_pyobject(py)?
                .into_any()
        }
        Event::Topic { topic, from, data } => {
            ("topic", topic, from.as_str(), data.to_string()).into_pyobject(py)?.into_any()
        }
        Event::Failed { to, id, reason, maybe_delivered } => {
            let why = match reason {
                FailReason::Timeout => "TIMEOUT",
                FailReason::Rejected => "REJECTED",
                FailReason::Unreachable => "UNREACHABLE",
                FailReason::Closed => "CLOSED",
            };
            ("failed", to.as_str(), id.as_str(), why, maybe_delivered).into_pyobject(py)?.into_any()
        }
        Event::Delivered { to, id, transport } => {
            ("delivered", to.as_str(), id.as_str(), transport.map(|t| t.as_str()))
                .into_pyobject(py)?
                .into_any()
        }
        Event::RequestTimedOut { to, request } => {
            ("request_timed_out", to.as_str(), request.as_str()).into_pyobject(py)?.into_any()
        }
        Event::SessionEstablished { peer, .. } => {
            ("session_established", peer.as_str(), "").into_pyobject(py)?.into_any()
        }
        Event::SessionResumed { peer, .. } => {
            ("session_resumed", peer.as_str(), "").into_pyobject(py)?.into_any()
        }
        Event::SessionLost { peer, reason } => {
            ("session_lost", peer.as_str(), reason.as_str()).into_pyobject(py)?.into_any()
        }
        Event::TransportSwitched { node, from: _, to } => {
            ("transport_switched", node.as_str(), to.as_str()).into_pyobject(py)?.into_any()
        }
        Event::Error { peer, code } => {
            let peer = peer.as_ref().map_or("", |p| p.as_str()).to_owned();
            ("error", peer, code.as_str()).into_pyobject(py)?.into_any()
        }
        Event::EventsDropped { count } => {
            ("events_dropped", "", count.to_string()).into_pyobject(py)?.into_any()
        }
        #[allow(unreachable_patterns)]
        other => ("other", "", format!("{other:?}")).into_pyobject(py)?.into_any(),
    };
    Ok(t.unbind())
}

#[pymethods]
impl PyNode {
    /// Starts a client node for `identity`, reaching peers through the relay at `relay_url`
    /// (its id and key asked of it unless given) and those of `peers` with a URL directly.
    #[staticmethod]
    #[pyo3(signature = (identity, relay_url=None, relay_id=None, relay_key=None, preference="WEBSOCKET_FIRST", peers=Vec::new(), open=false, event_queue=1024, ca_file=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_client(
        py: Python<'_>,
        identity: &PyIdentity,
        relay_url: Option<&str>,
        relay_id: Option<&str>,
        relay_key: Option<&str>,
        preference: &str,
        peers: Vec<(String, String, Option<String>)>,
        open: bool,
        event_queue: usize,
        ca_file: Option<PathBuf>,
    ) -> PyResult<Self> {
        errors::guard(py, || {
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
            Ok(Self::new(handle, events, None, relay, event_queue))
        })
    }

    /// Starts a node listening on `listen` (`host:port`, port 0 for a free one): a relay for
    /// clients, and an endpoint of its own. TLS files make it serve `https`/`wss`; without them
    /// it listens on loopback only.
    #[staticmethod]
    #[pyo3(signature = (identity, listen="127.0.0.1:0", preference="WEBSOCKET_FIRST", peers=Vec::new(), open=false, event_queue=1024, relay_url=None, relay_id=None, relay_key=None, cert_file=None, key_file=None, ca_file=None, frames_per_minute=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_server(
        py: Python<'_>,
        identity: &PyIdentity,
        listen: &str,
        preference: &str,
        peers: Vec<(String, String, Option<String>)>,
        open: bool,
        event_queue: usize,
        relay_url: Option<&str>,
        relay_id: Option<&str>,
        relay_key: Option<&str>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        frames_per_minute: Option<u32>,
    ) -> PyResult<Self> {
        errors::guard(py, || {
            let common = common(py, preference, peers, open, event_queue, ca_file)?;
            let addr: SocketAddr = listen
                .parse()
                .map_err(|_| errors::invalid(py, format!("{listen:?} is not host:port")))?;
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
            Ok(Self::new(handle, events, url, relay, event_queue))
        })
    }

    /// This node's entity id.
    #[getter]
    fn entity_id(&self) -> &str {
        self.handle.id().as_str()
    }

    /// A server's base URL (`http://127.0.0.1:PORT`); `None` for a client.
    #[getter]
    fn url(&self) -> Option<String> {
        self.url.clone()
    }

    /// The relay as `(entity_id, public_key, url)`, or `None`.
    #[getter]
    fn relay(&self) -> Option<(String, String, Option<String>)> {
        self.relay.clone()
    }

    /// Sends `payload` to `to` (`PEER_MESSAGE` or `STATUS`); returns a `Receipt` once the node
    /// accepted it into the peer's outbox.
    #[pyo3(signature = (to, payload, kind="PEER_MESSAGE", prefer_websocket=None, app_type=None))]
    fn send(
        &self,
        py: Python<'_>,
        to: &str,
        payload: &[u8],
        kind: &str,
        prefer_websocket: Option<bool>,
        app_type: Option<&str>,
    ) -> PyResult<PyReceipt> {
        errors::guard(py, || {
            let target = entity(py, to)?;
            let kind = match kind {
                "PEER_MESSAGE" => MessageType::PeerMessage,
                "STATUS" => MessageType::Status,
                other => {
                    return Err(errors::invalid(
                        py,
                        format!("kind must be PEER_MESSAGE or STATUS, not {other:?}"),
                    ));
                }
            };
            let app_type = app_type
                .map(|a| AppType::new(a).map_err(|e| errors::invalid(py, format!("app_type: {e}"))))
                .transpose()?;
            let options = SendOptions { prefer_websocket, app_type };
            let payload = payload.to_vec();
            let since = Instant::now();
            let id = self.call(py, self.handle.send_message(&target, kind, payload, options))?;
            let rx = self.tracker.register(&id);
            Ok(PyReceipt {
                to: to.to_owned(),
                id: id.as_str().to_owned(),
                since,
                rx,
                result: Mutex::new(None),
            })
        })
    }

    /// Sends a `BROADCAST` to every peer with a session; returns `(peer, message id)` pairs.
    fn broadcast(&self, py: Python<'_>, payload: &[u8]) -> PyResult<Vec<(String, String)>> {
        errors::guard(py, || {
            let sent = self.call(py, self.handle.broadcast(payload.to_vec()))?;
            Ok(sent
                .into_iter()
                .map(|(p, id)| (p.as_str().to_owned(), id.as_str().to_owned()))
                .collect())
        })
    }

    /// Sends a `TASK_REQUEST` and returns its `TASK_RESPONSE` payload, waiting at most
    /// `timeout` seconds.
    fn request<'py>(
        &self,
        py: Python<'py>,
        to: &str,
        payload: &[u8],
        timeout: f64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        errors::guard(py, || {
            let target = entity(py, to)?;
            let timeout = seconds(py, "timeout", Some(timeout))?.unwrap_or_default();
            let answer = self.call(py, self.handle.request(&target, payload.to_vec(), timeout))?;
            Ok(PyBytes::new(py, &answer))
        })
    }

    /// Answers the request `request_id` received from `to`.
    fn respond(
        &self,
        py: Python<'_>,
        to: &str,
        request_id: &str,
        payload: &[u8],
    ) -> PyResult<String> {
        errors::guard(py, || {
            let peer = entity(py, to)?;
            let request = MessageId::new(request_id)
                .map_err(|e| errors::invalid(py, format!("request id: {e}")))?;
            let id = self.call(py, self.handle.respond(&peer, &request, payload.to_vec()))?;
            Ok(id.as_str().to_owned())
        })
    }

    /// Opens the WebSocket toward `peer` (its relay, or its own node) and starts the handshake.
    fn connect(&self, py: Python<'_>, peer: &str) -> PyResult<()> {
        errors::guard(py, || {
            let peer = entity(py, peer)?;
            self.call(py, self.handle.init_websocket_connection(&peer))
        })
    }

    /// Closes the WebSocket toward `peer` and stops reconnecting it.
    fn disconnect(&self, py: Python<'_>, peer: &str) -> PyResult<()> {
        errors::guard(py, || {
            let peer = entity(py, peer)?;
            self.call(py, self.handle.close_websocket_connection(&peer))
        })
    }

    /// Whether a WebSocket link carries frames for `peer` now.
    fn is_websocket_connected(&self, py: Python<'_>, peer: &str) -> PyResult<bool> {
        errors::guard(py, || {
            let peer = entity(py, peer)?;
            self.call(py, self.handle.is_websocket_connected(&peer))
        })
    }

    /// Whether a session with `peer` is established.
    fn has_session(&self, py: Python<'_>, peer: &str) -> PyResult<bool> {
        errors::guard(py, || {
            let peer = entity(py, peer)?;
            self.call(py, self.handle.has_session(&peer))
        })
    }

    /// Trusts `entity_id` with `public_key`; with `url`, reaches it there directly.
    #[pyo3(signature = (entity_id, public_key, url=None))]
    fn add_peer(
        &self,
        py: Python<'_>,
        entity_id: String,
        public_key: String,
        url: Option<String>,
    ) -> PyResult<()> {
        errors::guard(py, || {
            let peer = trusted(py, (entity_id, public_key, url))?;
            self.call(py, self.handle.add_peer(peer))
        })
    }

    /// Subscribes to `topic` at the node `hop`.
    fn subscribe(&self, py: Python<'_>, hop: &str, topic: &str) -> PyResult<()> {
        errors::guard(py, || {
            let hop = entity(py, hop)?;
            self.call(py, self.handle.subscribe(&hop, topic))
        })
    }

    /// Ends a subscription.
    fn unsubscribe(&self, py: Python<'_>, hop: &str, topic: &str) -> PyResult<()> {
        errors::guard(py, || {
            let hop = entity(py, hop)?;
            self.call(py, self.handle.unsubscribe(&hop, topic))
        })
    }

    /// Publishes the JSON text `data` on `topic`: through the node `hop`, or (`None`) to this
    /// node's own subscribers. Returns how many links it reached (own subscribers), else 0.
    #[pyo3(signature = (hop, topic, data))]
    fn publish(
        &self,
        py: Python<'_>,
        hop: Option<&str>,
        topic: &str,
        data: &str,
    ) -> PyResult<usize> {
        errors::guard(py, || {
            let value: serde_json::Value = serde_json::from_str(data)
                .map_err(|e| errors::invalid(py, format!("data is not JSON: {e}")))?;
            match hop {
                Some(hop) => {
                    let hop = entity(py, hop)?;
                    self.call(py, self.handle.publish_via(&hop, topic, value)).map(|()| 0)
                }
                None => self.call(py, self.handle.publish(topic, value)),
            }
        })
    }

    /// Transport counters over all peers, or for `peer` (`None` before any traffic with it).
    #[pyo3(signature = (peer=None))]
    fn transport_stats<'py>(
        &self,
        py: Python<'py>,
        peer: Option<&str>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        errors::guard(py, || {
            let stats = match peer {
                Some(p) => {
                    let p: EntityId = entity(py, p)?;
                    self.call(py, self.handle.peer_stats(&p))?
                }
                None => Some(self.call(py, self.handle.transport_stats())?),
            };
            stats.map(|s| stats_dict(py, &s)).transpose()
        })
    }

    /// The next event, waiting at most `timeout` seconds (`None`: until one comes); `None` on
    /// timeout. Raises `NodeStoppedError` once the node has stopped and every event was taken.
    #[pyo3(signature = (timeout=None))]
    fn recv(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        errors::guard(py, || {
            let timeout = seconds(py, "timeout", timeout)?;
            match wait(py, self.events.recv(), timeout)? {
                Some(Ok(e)) => event_tuple(py, e).map(Some),
                Some(Err(_)) => Err(errors::error(py, "NodeStoppedError", "the node has stopped")),
                None => Ok(None),
            }
        })
    }

    /// Up to `max` events: waits at most `timeout` seconds for the first (`None`: until one
    /// comes), then takes those already waiting. An empty list on timeout; `NodeStoppedError`
    /// once the node has stopped and every event was taken.
    #[pyo3(signature = (max, timeout=None))]
    fn recv_many(
        &self,
        py: Python<'_>,
        max: usize,
        timeout: Option<f64>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        errors::guard(py, || {
            let timeout = seconds(py, "timeout", timeout)?;
            let first = match wait(py, self.events.recv(), timeout)? {
                Some(Ok(e)) => e,
                Some(Err(_)) => {
                    return Err(errors::error(py, "NodeStoppedError", "the node has stopped"));
                }
                None => return Ok(Vec::new()),
            };
            let mut out = vec![event_tuple(py, first)?];
            while out.len() < max {
                match self.events.try_recv() {
                    Ok(e) => out.push(event_tuple(py, e)?),
                    Err(_) => break,
                }
            }
            Ok(out)
        })
    }

    /// The next event if one is waiting, else `None`.
    fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        errors::guard(py, || match self.events.try_recv() {
            Ok(e) => event_tuple(py, e).map(Some),
            Err(async_channel::TryRecvError::Empty) => Ok(None),
            Err(async_channel::TryRecvError::Closed) => {
                Err(errors::error(py, "NodeStoppedError", "the node has stopped"))
            }
        })
    }

    /// Shuts the node down: `BYE` on every link, held HTTP calls answered, the node task
    /// stopped. Calling it again does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        errors::guard(py, || {
            if self.closed.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
            match wait(py, self.handle.shutdown(), Some(Duration::from_secs(30)))? {
                Some(Ok(())) | Some(Err(ApiError::Stopped)) => Ok(()),
                Some(Err(e)) => Err(errors::api(py, e)),
                None => Err(errors::error(py, "TimeoutError", "shutdown took over 30 s")),
            }
        })
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn __repr__(&self) -> String {
        match &self.url {
            Some(url) => format!("Node(entity_id={:?}, url={url:?})", self.entity_id()),
            None => format!("Node(entity_id={:?})", self.entity_id()),
        }
    }
}

/// A sent message: its id, and a way to wait for its delivery.
#[pyclass(module = "peerlink._native", frozen, name = "Receipt")]
pub struct PyReceipt {
    to: String,
    id: String,
    since: Instant,
    rx: Receiver<Outcome>,
    result: Mutex<Option<Outcome>>,
}

impl PyReceipt {
    fn cached(&self) -> Option<Outcome> {
        *self.result.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn keep(&self, outcome: Outcome) {
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }

    /// The outcome as Python sees it: `(to, id, transport, elapsed seconds)` or the exception.
    fn answer(
        &self,
        py: Python<'_>,
        outcome: Outcome,
    ) -> PyResult<(String, String, Option<&'static str>, f64)> {
        match outcome {
            Ok((transport, at)) => Ok((
                self.to.clone(),
                self.id.clone(),
                transport,
                at.saturating_duration_since(self.since).as_secs_f64(),
            )),
            Err((reason, maybe)) => Err(errors::undelivered(py, reason, Some(maybe))),
        }
    }
}

#[pymethods]
impl PyReceipt {
    /// The recipient.
    #[getter]
    fn to(&self) -> &str {
        &self.to
    }

    /// The message id.
    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    /// Whether the outcome is known (delivered or failed), without waiting.
    fn done(&self) -> bool {
        if self.cached().is_some() {
            return true;
        }
        match self.rx.try_recv() {
            Ok(o) => {
                self.keep(o);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits at most `timeout` seconds (`None`: until the node gives up on it) for delivery:
    /// `(to, id, transport, elapsed seconds)`. Raises `DeliveryFailedError` when the node gave
    /// up, `TimeoutError` when `timeout` passed first (the message may still arrive), and
    /// `NodeStoppedError` when the node stopped first.
    #[pyo3(signature = (timeout=None))]
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
    ) -> PyResult<(String, String, Option<&'static str>, f64)> {
        errors::guard(py, || {
            if let Some(o) = self.cached() {
                return self.answer(py, o);
            }
            let timeout = seconds(py, "timeout", timeout)?;
            match wait(py, self.rx.recv(), timeout)? {
                Some(Ok(o)) => {
                    self.keep(o);
                    self.answer(py, o)
                }
                Some(Err(_)) => Err(errors::error(
                    py,
                    "NodeStoppedError",
                    "the node stopped before the message's outcome was known",
                )),
                None => Err(errors::error(
                    py,
                    "TimeoutError",
                    format!("message {} not confirmed within the timeout", self.id),
                )),
            }
        })
    }

    fn __repr__(&self) -> String {
        format!("Receipt(to={:?}, id={:?})", self.to, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> MessageId {
        MessageId::new(format!("m{n}")).unwrap()
    }

    #[test]
    fn an_outcome_before_its_receipt_is_kept_and_old_unclaimed_ones_are_evicted() {
        let t = Tracker::default();
        let delivered: Outcome = Ok((Some("websocket"), Instant::now()));
        t.settle(&id(0), delivered);
        assert_eq!(t.register(&id(0)).try_recv().ok(), Some(delivered), "the race is won");
        let rx = t.register(&id(1));
        t.settle(&id(1), Err((FailReason::Timeout, true)));
        assert_eq!(rx.try_recv().ok(), Some(Err((FailReason::Timeout, true))));
        for n in 2..MAX_EARLY + 10 {
            t.settle(&id(n), delivered);
        }
        let s = t.lock();
        assert!(s.early.len() <= MAX_EARLY && s.early_order.len() <= MAX_EARLY);
        assert!(!s.early.contains_key(&id(2)) && s.early.contains_key(&id(MAX_EARLY + 9)));
        drop(s);
        let waiting = t.register(&id(MAX_EARLY + 20));
        t.stop();
        assert!(waiting.try_recv().is_err() && waiting.is_closed(), "a stopped node closes waits");
    }
}
