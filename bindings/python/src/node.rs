//! `Node`: a running peerlink node (the host's [`Handle`] on smol's background threads), and
//! its calls: starting one, sending (with a `Receipt` per message), requests and responses,
//! links and sessions, trusted peers, topics, transport counters, receiving events, and
//! shutting it down. Every call that waits releases the GIL ([`crate::waiting`]).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use peerlink_core::node::SendOptions;
use peerlink_core::{EntityId, MessageId};
use peerlink_host::{ApiError, Handle};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::args::{self, PeerTuple, trusted};
use crate::delivery::Tracker;
use crate::errors;
use crate::events::EventQueue;
use crate::identity::{PyIdentity, entity};
use crate::receipt::PyReceipt;
use crate::start::{self, Started};
use crate::stats::stats_dict;
use crate::waiting::{seconds, wait};

/// A running node: a client (reached through its relay, serving nothing) or a server (with a
/// listener). Closing it (or dropping it) shuts it down: `BYE` on every link.
#[pyclass(module = "peerlink._native", frozen, name = "Node")]
pub struct PyNode {
    handle: Handle,
    events: EventQueue,
    tracker: Arc<Tracker>,
    /// The listener's base URL (servers only).
    url: Option<String>,
    /// The relay: id, key, URL.
    relay: Option<PeerTuple>,
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

impl PyNode {
    /// Wraps a started node: its events go through the pump to a queue `queue` long.
    fn new(started: Started, queue: usize) -> Self {
        let Started { handle, events, url, relay } = started;
        let tracker = Arc::new(Tracker::default());
        let events = EventQueue::start(events, queue, Arc::clone(&tracker));
        let relay = relay.map(|r| (r.entity.as_str().to_owned(), r.key.to_b64u(), r.url));
        Self { handle, events, tracker, url, relay, closed: AtomicBool::new(false) }
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
        peers: Vec<PeerTuple>,
        open: bool,
        event_queue: usize,
        ca_file: Option<PathBuf>,
    ) -> PyResult<Self> {
        errors::guard(py, || {
            let started = start::client(
                py,
                identity,
                relay_url,
                relay_id,
                relay_key,
                preference,
                peers,
                open,
                event_queue,
                ca_file,
            )?;
            Ok(Self::new(started, event_queue))
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
    ) -> PyResult<Self> {
        errors::guard(py, || {
            let started = start::server(
                py,
                identity,
                listen,
                preference,
                peers,
                open,
                event_queue,
                relay_url,
                relay_id,
                relay_key,
                cert_file,
                key_file,
                ca_file,
                frames_per_minute,
            )?;
            Ok(Self::new(started, event_queue))
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
            let kind = args::message_kind(py, kind)?;
            let app_type = args::app_type(py, app_type)?;
            let options = SendOptions { prefer_websocket, app_type };
            let payload = payload.to_vec();
            let since = Instant::now();
            let id = self.call(py, self.handle.send_message(&target, kind, payload, options))?;
            let rx = self.tracker.register(&id);
            Ok(PyReceipt::new(to.to_owned(), id.as_str().to_owned(), since, rx))
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
            self.events.recv(py, timeout)
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
            self.events.recv_many(py, max, timeout)
        })
    }

    /// The next event if one is waiting, else `None`.
    fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        errors::guard(py, || self.events.try_recv(py))
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
