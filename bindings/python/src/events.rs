//! The node's events on their way to Python: the pump that moves them to the application's
//! queue (settling delivery outcomes on the way), the [`EventQueue`] Python reads them from,
//! and an event's Python form, a tuple.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use peerlink_core::Event;
use peerlink_core::stream::FailReason;
use peerlink_host::Events;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::delivery::Tracker;
use crate::errors;
use crate::waiting::wait;

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

/// The application's queue of events, `queue` long, filled by the pump. Once the node has
/// stopped and every event was taken, reading it raises `NodeStoppedError`.
pub(crate) struct EventQueue {
    rx: Receiver<Event>,
}

impl EventQueue {
    /// Starts the pump from the node's `events` to a new queue, settling outcomes in `tracker`.
    pub(crate) fn start(events: Events, queue: usize, tracker: Arc<Tracker>) -> Self {
        let (tx, rx) = async_channel::bounded(queue.max(1));
        smol::spawn(pump(events, tx, tracker)).detach();
        Self { rx }
    }

    /// The next event, waiting at most `timeout` (`None`: until one comes); `None` on timeout.
    pub(crate) fn recv(
        &self,
        py: Python<'_>,
        timeout: Option<Duration>,
    ) -> PyResult<Option<Py<PyAny>>> {
        match wait(py, self.rx.recv(), timeout)? {
            Some(Ok(e)) => event_tuple(py, e).map(Some),
            Some(Err(_)) => Err(errors::error(py, "NodeStoppedError", "the node has stopped")),
            None => Ok(None),
        }
    }

    /// Up to `max` events: waits at most `timeout` for the first (`None`: until one comes),
    /// then takes those already waiting. An empty list on timeout.
    pub(crate) fn recv_many(
        &self,
        py: Python<'_>,
        max: usize,
        timeout: Option<Duration>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let first = match wait(py, self.rx.recv(), timeout)? {
            Some(Ok(e)) => e,
            Some(Err(_)) => {
                return Err(errors::error(py, "NodeStoppedError", "the node has stopped"));
            }
            None => return Ok(Vec::new()),
        };
        let mut out = vec![event_tuple(py, first)?];
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(e) => out.push(event_tuple(py, e)?),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// The next event if one is waiting, else `None`.
    pub(crate) fn try_recv(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match self.rx.try_recv() {
            Ok(e) => event_tuple(py, e).map(Some),
            Err(async_channel::TryRecvError::Empty) => Ok(None),
            Err(async_channel::TryRecvError::Closed) => {
                Err(errors::error(py, "NodeStoppedError", "the node has stopped"))
            }
        }
    }
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
