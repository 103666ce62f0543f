//! A transport's counters in their Python form.

use peerlink_core::node::TransportStats;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// A transport's counters as a dict of the `TransportStats` dataclass's fields.
pub(crate) fn stats_dict<'py>(py: Python<'py>, s: &TransportStats) -> PyResult<Bound<'py, PyDict>> {
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
