//! # peerlink-python
//!
//! The native half of the `peerlink` Python package: `peerlink._native`, a PyO3 extension
//! module. It wraps a node of the runtime-neutral host ([`peerlink_host`]) on smol's background
//! threads, as `peerlink-blocking` does, behind calls that release the GIL while they wait. The
//! Python half (`python/peerlink/`) gives it Python's idiom: dataclasses, enums, exceptions,
//! and asyncio.
//!
//! Nothing passed from Python is trusted: ids, keys, URLs, timeouts and payloads are checked
//! and refused with an exception of `peerlink._errors`, and a panic becomes `InternalError`.

#![deny(unused_must_use)]
#![warn(missing_docs)]

mod args;
mod bench;
mod delivery;
mod errors;
mod events;
mod identity;
mod node;
mod receipt;
mod start;
mod stats;
mod waiting;

use pyo3::prelude::*;

/// Panics on purpose, to show that a Rust panic reaches Python as `InternalError`.
#[pyfunction]
fn _panic_for_test(py: Python<'_>) -> PyResult<()> {
    errors::guard(py, || panic!("panic requested by _panic_for_test"))
}

/// The native module `peerlink._native`.
#[pymodule]
#[pyo3(name = "_native")]
fn peerlink_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<identity::PyIdentity>()?;
    m.add_class::<node::PyNode>()?;
    m.add_class::<receipt::PyReceipt>()?;
    m.add_function(wrap_pyfunction!(identity::default_home, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    m.add_function(wrap_pyfunction!(bench::_bench_rust, m)?)?;
    m.add("PROTOCOL_VERSION", peerlink_core::PROTOCOL_VERSION)?;
    Ok(())
}
