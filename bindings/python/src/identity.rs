//! `Identity`: an entity id and its Ed25519 key pair, made fresh or kept in a data directory
//! as the `peerlink` command keeps it (`identity.json` and `secret.key`, mode 0600).

use std::path::PathBuf;

use peerlink_core::EntityId;
use peerlink_host::keys;
use pyo3::prelude::*;

use crate::errors;

/// An entity id and its Ed25519 key pair. The secret key never leaves the native module: it is
/// not in `repr()`, not readable as an attribute, and not picklable. Save it with `save()` to a
/// data directory, as `peerlink keygen` does.
#[pyclass(module = "peerlink._native", frozen, name = "Identity")]
pub struct PyIdentity {
    pub(crate) inner: peerlink_core::Identity,
}

/// Parses an entity id given by Python.
pub(crate) fn entity(py: Python<'_>, id: &str) -> PyResult<EntityId> {
    EntityId::new(id).map_err(|e| errors::invalid(py, format!("entity id {id:?}: {e}")))
}

#[pymethods]
impl PyIdentity {
    /// A new identity named `entity_id`, its key from the operating system's randomness.
    #[staticmethod]
    fn generate(py: Python<'_>, entity_id: &str) -> PyResult<Self> {
        errors::guard(py, || {
            let id = entity(py, entity_id)?;
            keys::generate(id).map(|inner| Self { inner }).map_err(|e| errors::key(py, e))
        })
    }

    /// The identity saved in the data directory `path` (`identity.json` and `secret.key`).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        errors::guard(py, || {
            keys::load(&path).map(|inner| Self { inner }).map_err(|e| errors::key(py, e))
        })
    }

    /// The identity in the data directory `path`, created there on first use (named
    /// `entity_id`, or `node-<8 hex digits>`); refuses a directory holding another entity.
    /// Returns the identity and whether it was created.
    #[staticmethod]
    #[pyo3(signature = (path, entity_id=None))]
    fn load_or_create(
        py: Python<'_>,
        path: PathBuf,
        entity_id: Option<&str>,
    ) -> PyResult<(Self, bool)> {
        errors::guard(py, || {
            let id = entity_id.map(|i| entity(py, i)).transpose()?;
            keys::load_or_create(&path, id)
                .map(|(inner, created)| (Self { inner }, created))
                .map_err(|e| errors::key(py, e))
        })
    }

    /// Writes this identity into the data directory `path` (created if needed; the secret file
    /// gets mode 0600).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        errors::guard(py, || keys::save(&path, &self.inner).map_err(|e| errors::key(py, e)))
    }

    /// The entity id.
    #[getter]
    fn entity_id(&self) -> &str {
        self.inner.id().as_str()
    }

    /// The Ed25519 public key, base64url without padding (as `peerlink keygen` prints it).
    #[getter]
    fn public_key(&self) -> String {
        self.inner.public_key().to_b64u()
    }

    fn __repr__(&self) -> String {
        format!("Identity(entity_id={:?}, public_key={:?})", self.entity_id(), self.public_key())
    }
}

/// The data directory the `peerlink` command uses: `$PEERLINK_HOME`, else `./.peerlink`.
#[pyfunction]
pub fn default_home() -> PathBuf {
    keys::default_data_dir()
}
