//! [`check`]: what `peerlink store check` reports about a store file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ::redb::Database;
use peerlink_core::durable::{FORMAT_VERSION, StoreError};

use super::redb::{failure, guarded, read_entries, read_version};
use super::{StoreFailure, StoreUsage};

/// What redb's integrity check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Every page's checksum and the trees are sound.
    Ok,
    /// The file had not been closed cleanly (the process crashed or was killed): redb rolled it
    /// back to its last durable commit when it opened it, and it is sound now.
    RepairedAtOpen,
    /// The check found damage and repaired it: the file is sound now, at its last commit that
    /// was intact (later commits may be lost).
    Repaired,
}

/// Entries and bytes of one record kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindUsage {
    /// Entries.
    pub entries: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// What [`check`] found in a store file. `Display` is the report `peerlink store check`
/// prints; it shows no value (values may hold message content).
#[derive(Debug)]
pub struct CheckReport {
    /// The file.
    pub path: PathBuf,
    /// Its size on the disk, in bytes.
    pub file_bytes: u64,
    /// The layout version it records (`None`: a new store that never had a commit).
    pub format_version: Option<u32>,
    /// What redb's integrity check found.
    pub integrity: Integrity,
    /// Entries and bytes by record kind (the key's first byte).
    pub kinds: BTreeMap<u8, KindUsage>,
    /// All entries and bytes.
    pub usage: StoreUsage,
    /// Whether the core could restore from the entries: the first malformed entry otherwise.
    pub validation: Result<(), StoreError>,
}

impl CheckReport {
    /// Whether a node could start from this store (its integrity may have been repaired).
    pub fn is_ok(&self) -> bool {
        self.validation.is_ok()
    }
}

/// The name of a record kind, by the key's first byte.
fn kind_name(kind: u8) -> String {
    match kind {
        b's' => "s  send streams".to_owned(),
        b'f' => "f  outbox frames".to_owned(),
        b'r' => "r  receive positions".to_owned(),
        b'a' => "a  chunks held for reassembly".to_owned(),
        b't' => "t  topic subscriptions".to_owned(),
        b'm' => "m  mailbox entries".to_owned(),
        k if k.is_ascii_graphic() => format!("{}  unknown kind (0x{k:02x})", k as char),
        k => format!("0x{k:02x} unknown kind"),
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "store      {}", self.path.display())?;
        writeln!(f, "file size  {} bytes", self.file_bytes)?;
        match self.format_version {
            Some(v) => writeln!(f, "format     {v} (this build reads up to {FORMAT_VERSION})")?,
            None => writeln!(f, "format     none yet (a new, empty store)")?,
        }
        let integrity = match self.integrity {
            Integrity::Ok => "ok",
            Integrity::RepairedAtOpen => {
                "ok after a repair at open (it had not been closed cleanly: rolled back to its \
                 last durable commit)"
            }
            Integrity::Repaired => {
                "damage found and repaired (rolled back to its last intact commit; later commits \
                 may be lost)"
            }
        };
        writeln!(f, "integrity  {integrity}")?;
        writeln!(
            f,
            "entries    {} ({} bytes of keys and values)",
            self.usage.entries, self.usage.bytes
        )?;
        for (&kind, usage) in &self.kinds {
            writeln!(
                f,
                "  {:<28} {:>10} entries {:>14} bytes",
                kind_name(kind),
                usage.entries,
                usage.bytes
            )?;
        }
        match &self.validation {
            Ok(()) => write!(f, "restore    ok: a node can restore from these entries"),
            Err(e) => write!(
                f,
                "restore    CORRUPT: {e} (a node refuses to start from this store; move the file \
                 away to start over with an empty one)"
            ),
        }
    }
}

/// Checks the store file at `path` without a node: opens it (repairing it if it was not closed
/// cleanly), runs redb's integrity check, reads its layout version and every entry, and checks
/// them as the core's restore would ([`peerlink_core::durable::validate`]). A malformed entry
/// is reported in [`CheckReport::validation`]; a file that cannot be read at all is an error
/// ([`StoreFailure::Corrupt`], [`StoreFailure::NewerVersion`], [`StoreFailure::Locked`] while a
/// node has it open, [`StoreFailure::Io`]). The file is never created.
pub fn check(path: &Path) -> Result<CheckReport, StoreFailure> {
    let io = |source| StoreFailure::Io { path: path.to_owned(), source };
    let file_bytes = std::fs::metadata(path).map_err(io)?.len();
    let repaired_at_open = Arc::new(AtomicBool::new(false));
    let mut db = guarded(path, || {
        let flag = Arc::clone(&repaired_at_open);
        Database::builder()
            .set_repair_callback(move |_| flag.store(true, Ordering::Relaxed))
            .open(path)
            .map_err(|e| failure(path, e.into()))
    })?;
    let sound = guarded(path, || db.check_integrity().map_err(|e| failure(path, e.into())))?;
    let integrity = match (sound, repaired_at_open.load(Ordering::Relaxed)) {
        (false, _) => Integrity::Repaired,
        (true, true) => Integrity::RepairedAtOpen,
        (true, false) => Integrity::Ok,
    };
    let format_version = guarded(path, || read_version(path, &db))?;
    if let Some(found) = format_version.filter(|&v| v > FORMAT_VERSION) {
        return Err(StoreFailure::NewerVersion {
            path: path.to_owned(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    let entries = guarded(path, || read_entries(path, &db))?;
    db.close().map_err(|e| failure(path, e.into()))?;
    let mut kinds: BTreeMap<u8, KindUsage> = BTreeMap::new();
    let mut usage = StoreUsage::default();
    for (k, v) in &entries {
        let bytes = (k.len() + v.len()) as u64;
        let kind = kinds.entry(k.first().copied().unwrap_or(0)).or_default();
        kind.entries += 1;
        kind.bytes += bytes;
        usage.entries += 1;
        usage.bytes += bytes;
    }
    let validation = peerlink_core::durable::validate(entries).map(|_| ());
    Ok(CheckReport {
        path: path.to_owned(),
        file_bytes,
        format_version,
        integrity,
        kinds,
        usage,
        validation,
    })
}
