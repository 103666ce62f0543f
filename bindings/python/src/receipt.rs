//! `Receipt`: a sent message's id, and its way to the delivery's outcome.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use async_channel::Receiver;
use pyo3::prelude::*;

use crate::delivery::Outcome;
use crate::errors;
use crate::waiting::{seconds, wait};

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
    /// The receipt of the message `id` to `to`, sent at `since`, its outcome to come on `rx`.
    pub(crate) fn new(to: String, id: String, since: Instant, rx: Receiver<Outcome>) -> Self {
        Self { to, id, since, rx, result: Mutex::new(None) }
    }

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
