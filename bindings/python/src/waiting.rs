//! Waiting on the node from Python: every call that waits releases the GIL and wakes every
//! [`SLICE`] to let Python handle signals (Ctrl-C); and the timeouts Python gives, checked.

use std::future::Future;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::errors;

/// How long a wait holds the GIL released before checking for signals.
const SLICE: Duration = Duration::from_millis(100);

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
