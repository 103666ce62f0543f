//! Errors as Python exceptions: every failure becomes an instance of a class of
//! `peerlink._errors` (one per spec error code, all under `PeerlinkError`), and a Rust panic
//! becomes `InternalError` instead of unwinding into the interpreter.

use std::panic::{AssertUnwindSafe, catch_unwind};

use peerlink_core::stream::FailReason;
use peerlink_core::{SendError, UsageError};
use peerlink_host::ApiError;
use peerlink_host::keys::KeyError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

/// The Python module holding the exception classes.
const ERRORS_MODULE: &str = "peerlink._errors";

/// `peerlink._errors`, imported once.
fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    MODULE
        .get_or_try_init(py, || PyModule::import(py, ERRORS_MODULE).map(Bound::unbind))
        .map(|m| m.bind(py))
}

/// An instance of `peerlink._errors.<class>` built from `args`, as a `PyErr`. Should the module
/// be missing (the native module imported on its own), a `RuntimeError` names the class.
fn raise<'py, A>(py: Python<'py>, class: &str, message: &str, args: A) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let made = errors_module(py)
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1(args))
        .map(PyErr::from_value);
    made.unwrap_or_else(|_| PyRuntimeError::new_err(format!("{class}: {message}")))
}

/// A `peerlink._errors.<class>(message)`.
pub(crate) fn error(py: Python<'_>, class: &str, message: impl Into<String>) -> PyErr {
    let message = message.into();
    raise(py, class, &message, (message.clone(),))
}

/// A bad value passed from Python (`InvalidMessageError`, also a `ValueError`).
pub(crate) fn invalid(py: Python<'_>, message: impl Into<String>) -> PyErr {
    error(py, "InvalidMessageError", message)
}

/// The spec code a failed delivery is reported under.
fn fail_reason(reason: FailReason) -> &'static str {
    match reason {
        FailReason::Timeout => "TIMEOUT",
        FailReason::Rejected => "REJECTED",
        FailReason::Unreachable => "UNREACHABLE",
        FailReason::Closed => "CLOSED",
    }
}

/// `DeliveryFailedError(message, reason, maybe_delivered)`.
pub(crate) fn undelivered(
    py: Python<'_>,
    reason: FailReason,
    maybe_delivered: Option<bool>,
) -> PyErr {
    let why = fail_reason(reason);
    let message = match maybe_delivered {
        Some(true) => format!("not delivered ({why}); it may still have been delivered"),
        Some(false) => format!("not delivered ({why}); it was certainly not delivered"),
        None => format!("failed ({why})"),
    };
    // Also an `UnknownRecipientError` or a `TimeoutError`, for the reasons that are those.
    let class = match reason {
        FailReason::Unreachable => "PeerUnreachableError",
        FailReason::Timeout => "DeliveryTimeoutError",
        _ => "DeliveryFailedError",
    };
    raise(py, class, &message, (message.clone(), why, maybe_delivered))
}

/// A refused call of the embedder.
pub(crate) fn usage(py: Python<'_>, e: &UsageError) -> PyErr {
    let class = match e {
        UsageError::TooLarge { .. } => "MessageTooLargeError",
        UsageError::UntrustedPeer(_) => "UnknownRecipientError",
        UsageError::SequenceExhausted => "SessionExpiredError",
        _ => "InvalidMessageError",
    };
    error(py, class, e.to_string())
}

/// A message the node did not accept.
fn send(py: Python<'_>, e: &SendError) -> PyErr {
    let class = match e {
        SendError::OutboxFull(_) => "OutboxFullError",
        SendError::TooLarge { .. } => "MessageTooLargeError",
        SendError::Unreachable(_) => "UnknownRecipientError",
        SendError::LimitReached(_) => "RateLimitExceededError",
        SendError::UnknownRequest(_) => "InvalidStateError",
        SendError::Usage(u) => return usage(py, u),
        _ => "InternalError",
    };
    error(py, class, e.to_string())
}

/// Any failure of a node's API call.
pub(crate) fn api(py: Python<'_>, e: ApiError) -> PyErr {
    match &e {
        ApiError::Send(s) => send(py, s),
        ApiError::UnsupportedType(_) => invalid(py, e.to_string()),
        ApiError::Timeout => error(py, "TimeoutError", "request timed out"),
        ApiError::Failed(reason) => undelivered(py, *reason, None),
        ApiError::Undelivered(u) => undelivered(py, u.reason, Some(u.maybe_delivered)),
        ApiError::Stopped => error(py, "NodeStoppedError", "the node has stopped"),
        ApiError::Usage(u) => usage(py, u),
        ApiError::Listen(_) | ApiError::Cluster(_) | ApiError::Store(_) | ApiError::Restore(_) => {
            error(py, "NodeStartError", e.to_string())
        }
        _ => error(py, "InternalError", e.to_string()),
    }
}

/// An identity that cannot be loaded or made.
pub(crate) fn key(py: Python<'_>, e: KeyError) -> PyErr {
    match &e {
        KeyError::Id(u) => usage(py, u),
        KeyError::Random => error(py, "InternalError", e.to_string()),
        _ => error(py, "IdentityError", e.to_string()),
    }
}

/// Runs `f`, turning a panic into `InternalError` (never an abort, never a bare
/// `PanicException` that `except Exception` would miss).
pub(crate) fn guard<T>(py: Python<'_>, f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(error(py, "InternalError", format!("internal error (a Rust panic): {what}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fail_reason_has_a_name() {
        for r in [FailReason::Timeout, FailReason::Rejected, FailReason::Unreachable] {
            assert!(!fail_reason(r).is_empty());
        }
        assert_eq!(fail_reason(FailReason::Closed), "CLOSED");
    }
}
