//! Identity files in a data directory: `identity.json` (entity id and public key, public) and
//! `secret.key` (the 32-byte Ed25519 secret, b64u, mode 0600). Secrets are never logged or
//! printed.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use peerlink_core::encoding::{b64u, decode_b64u_array};
use peerlink_core::{EntityId, Identity};
use zeroize::Zeroizing;

/// Why an identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// File system error.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A file does not hold what it should (the content is not shown).
    #[error("{0}: malformed identity file")]
    Malformed(PathBuf),
    /// OS randomness failed.
    #[error("OS randomness unavailable")]
    Random,
    /// The entity id is invalid.
    #[error(transparent)]
    Id(#[from] peerlink_core::UsageError),
    /// An identity with another entity id already exists in the directory.
    #[error(
        "{dir}: holds the identity of `{existing}`, not `{wanted}` (use another data directory)"
    )]
    OtherIdentity {
        /// The data directory.
        dir: PathBuf,
        /// The entity id found there.
        existing: Box<EntityId>,
        /// The entity id asked for.
        wanted: Box<EntityId>,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Public {
    entity_id: String,
    public_key: String,
}

/// A fresh identity from OS randomness.
pub fn generate(id: EntityId) -> Result<Identity, KeyError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::fill(secret.as_mut()).map_err(|_| KeyError::Random)?;
    Ok(Identity::from_secret_bytes(id, &secret))
}

/// The data directory: `$PEERLINK_HOME`, else `./.peerlink`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("PEERLINK_HOME").map_or_else(|| PathBuf::from(".peerlink"), PathBuf::from)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |e| KeyError::Io(path.to_owned(), e)
}

/// Writes `identity` into `dir` (created if needed); the secret file gets mode 0600.
pub fn save(dir: &Path, identity: &Identity) -> Result<(), KeyError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let secret_path = dir.join("secret.key");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&secret_path).map_err(io(&secret_path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io(&secret_path))?;
    }
    let encoded = Zeroizing::new(b64u(identity.secret_bytes().as_ref()));
    f.write_all(encoded.as_bytes()).map_err(io(&secret_path))?;
    let public = Public {
        entity_id: identity.id().as_str().to_owned(),
        public_key: identity.public_key().to_b64u(),
    };
    let public_path = dir.join("identity.json");
    let text = serde_json::to_string_pretty(&public)
        .map_err(|_| KeyError::Malformed(public_path.clone()))?;
    fs::write(&public_path, text + "\n").map_err(io(&public_path))?;
    Ok(())
}

/// Loads the identity in `dir`.
pub fn load(dir: &Path) -> Result<Identity, KeyError> {
    let public_path = dir.join("identity.json");
    let text = fs::read_to_string(&public_path).map_err(io(&public_path))?;
    let public: Public =
        serde_json::from_str(&text).map_err(|_| KeyError::Malformed(public_path.clone()))?;
    let id = EntityId::new(public.entity_id)?;
    let secret_path = dir.join("secret.key");
    let text = Zeroizing::new(fs::read_to_string(&secret_path).map_err(io(&secret_path))?);
    let secret = Zeroizing::new(
        decode_b64u_array::<32>("secret", text.trim())
            .map_err(|_| KeyError::Malformed(secret_path.clone()))?,
    );
    let identity = Identity::from_secret_bytes(id, &secret);
    if identity.public_key().to_b64u() != public.public_key {
        return Err(KeyError::Malformed(public_path));
    }
    Ok(identity)
}

/// Loads the identity in `dir`, creating one named `id` (default `node-<8 random hex>`) on
/// first run. Returns it and whether it was created; refuses a directory holding another
/// entity than `id`.
pub fn load_or_create(dir: &Path, id: Option<EntityId>) -> Result<(Identity, bool), KeyError> {
    if dir.join("identity.json").exists() {
        let identity = load(dir)?;
        if let Some(wanted) = id
            && wanted != *identity.id()
        {
            let existing = identity.id().clone();
            return Err(KeyError::OtherIdentity {
                dir: dir.to_owned(),
                existing: Box::new(existing),
                wanted: Box::new(wanted),
            });
        }
        return Ok((identity, false));
    }
    let id = match id {
        Some(id) => id,
        None => {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).map_err(|_| KeyError::Random)?;
            EntityId::new(format!("node-{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3]))?
        }
    };
    let identity = generate(id)?;
    save(dir, &identity)?;
    Ok((identity, true))
}
