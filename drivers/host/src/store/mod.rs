//! The durable store: where a node built with `NodeConfig::durable` keeps what it must not
//! forget across a restart (`docs/storage.md`).
//!
//! The core decides what to keep and emits it as [`StoreOp`]s
//! ([`peerlink_core::durable`]); a [`Store`] applies a batch of them in one atomic transaction
//! and reads everything back after a restart. Two stores: [`MemoryStore`] (a map, nothing
//! survives the process; what `Config::default()` uses and what tests use) and [`RedbStore`]
//! (one file). [`StoreWriter`] runs a store on a thread of its own so that the node task can
//! await a commit on any executor, and [`check`] is what `peerlink store check` reports.
//!
//! # Why redb
//!
//! The file store is [redb](https://www.redb.org) rather than sled or fjall. sled has been an
//! unmaintained beta for years, with an unstable file format. fjall is an LSM tree: excellent
//! write throughput, but more moving parts (a journal, segment files, background flush and
//! compaction threads) than a node that keeps a few thousand small records needs. redb is one
//! file of copy-on-write B-trees with ACID transactions, which map exactly onto our group commit
//! (one write transaction per batch: all of it or nothing); its durability is chosen per
//! transaction (`Durability::Immediate` or `None`, our [`Fsync`](crate::config::Fsync)); it checksums its pages,
//! repairs itself after a crash, has an explicit integrity check (`Database::check_integrity`,
//! what [`check`] runs), locks its file against a second writer, and its file format is stable
//! within a major version. It is pure Rust, with no C library and no threads of its own.

use std::path::Path;

use peerlink_core::durable::StoreOp;

use crate::config::{StorageKind, StorageSettings};

mod check;
mod memory;
mod redb;
mod writer;

pub use check::{CheckReport, Integrity, KindUsage, check};
pub use memory::MemoryStore;
pub use redb::RedbStore;
pub use writer::{CommitAnswer, StoreWriter};

/// Everything a store holds: `(key, value)` pairs in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A flat, ordered map of byte keys to byte values that applies batches atomically.
///
/// Implementations are used from one thread at a time (the [`StoreWriter`]'s), so a method may
/// block on the disk for as long as it takes.
pub trait Store: Send + 'static {
    /// Every entry, in key order: what the core restores from after a restart.
    fn load(&mut self) -> Result<Entries, StoreFailure>;

    /// Applies `ops` in order, in one transaction: all of them or, on an error, none. Returns
    /// once they are as durable as the store's [`Fsync`](crate::config::Fsync) policy makes
    /// them. A batch that would
    /// take the store past its [`Limits`] is refused with [`StoreFailure::Full`] before anything
    /// is written.
    fn commit(&mut self, ops: Vec<StoreOp>) -> Result<CommitStats, StoreFailure>;

    /// What the store holds now.
    fn usage(&self) -> StoreUsage;

    /// Closes the store, flushing whatever is not yet on the disk and releasing the file, and
    /// reports an error doing so (dropping a store closes it too, silently).
    fn close(self: Box<Self>) -> Result<(), StoreFailure> {
        Ok(())
    }
}

/// What one commit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Operations applied.
    pub ops: usize,
    /// Bytes of keys and values written (a delete counts its key).
    pub bytes_written: u64,
    /// Flushes to the disk the commit waited for (0 in memory or with
    /// [`Fsync::Never`](crate::config::Fsync::Never)).
    pub fsyncs: u32,
}

/// What a store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Entries.
    pub entries: u64,
    /// Bytes of keys and values (the file is larger: pages, tree nodes, free space).
    pub bytes: u64,
}

/// The bounds a store enforces ([`StorageSettings::max_bytes`] and `max_entries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of keys and values at most.
    pub max_bytes: u64,
    /// Entries at most.
    pub max_entries: u64,
}

impl Limits {
    /// No bounds.
    pub const NONE: Limits = Limits { max_bytes: u64::MAX, max_entries: u64::MAX };

    /// The bounds of `settings`.
    pub fn of(settings: &StorageSettings) -> Limits {
        Limits { max_bytes: settings.max_bytes, max_entries: settings.max_entries }
    }
}

/// Which bound a refused commit would have passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullReason {
    /// [`Limits::max_bytes`].
    Bytes {
        /// Bytes the store would have held.
        would_hold: u64,
        /// The bound.
        max: u64,
    },
    /// [`Limits::max_entries`].
    Entries {
        /// Entries the store would have held.
        would_hold: u64,
        /// The bound.
        max: u64,
    },
    /// The file system has no space left.
    Disk,
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullReason::Bytes { would_hold, max } => write!(
                f,
                "the commit would hold {would_hold} bytes, over max_bytes = {max}: raise \
                 [storage] max_bytes"
            ),
            FullReason::Entries { would_hold, max } => write!(
                f,
                "the commit would hold {would_hold} entries, over max_entries = {max}: raise \
                 [storage] max_entries"
            ),
            FullReason::Disk => write!(f, "no space left on the device: free some disk space"),
        }
    }
}

/// Why a store could not be opened, read or written. Messages say what to do; they never hold
/// a value (values may hold message content), and keys only as
/// [`describe_key`](peerlink_core::durable::describe_key) shows them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreFailure {
    /// Another process (or another store in this one) has the file open.
    #[error(
        "store at {path} is locked by another process: is another peerlink running with this \
         data directory? Stop it, or give this node another data directory or [storage] path"
    )]
    Locked {
        /// The store file.
        path: std::path::PathBuf,
    },
    /// The file was written by a newer layout than this build reads.
    #[error(
        "store at {path} was written by a newer peerlink (format {found}, this build reads up to \
         {supported}): upgrade peerlink or move the file away"
    )]
    NewerVersion {
        /// The store file.
        path: std::path::PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this build reads ([`FORMAT_VERSION`](peerlink_core::durable::FORMAT_VERSION)).
        supported: u32,
    },
    /// The file is not a store this build can read: damaged, truncated, or something else.
    #[error(
        "store at {path} is corrupt ({reason}): restore it from a backup, or move it away to \
         start over with an empty store (what it held is lost)"
    )]
    Corrupt {
        /// The store file.
        path: std::path::PathBuf,
        /// What redb (or the check) found.
        reason: String,
    },
    /// A commit was refused: it would pass a bound, or the disk is full. Nothing was written.
    #[error("store{} is full: {reason}", at(path))]
    Full {
        /// The store file (none in memory).
        path: Option<std::path::PathBuf>,
        /// Which bound.
        reason: FullReason,
    },
    /// The file system failed.
    #[error("store at {path}: {source}: check the file and its directory (permissions, disk)")]
    Io {
        /// The store file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The [`StoreWriter`]'s thread has stopped (it panicked, or the writer was closed).
    #[error("the store's writer thread has stopped: see the log for why")]
    Stopped,
}

fn at(path: &Option<std::path::PathBuf>) -> String {
    path.as_ref().map_or_else(String::new, |p| format!(" at {}", p.display()))
}

/// Opens the store `settings` describe: in memory, or the redb file (default `store.redb` in
/// `data_dir`, created with its directory if absent).
pub fn open(settings: &StorageSettings, data_dir: &Path) -> Result<Box<dyn Store>, StoreFailure> {
    let limits = Limits::of(settings);
    Ok(match settings.kind {
        StorageKind::Memory => Box::new(MemoryStore::with_limits(limits)),
        StorageKind::Redb => {
            Box::new(RedbStore::open(&settings.file_in(data_dir), settings.fsync, limits)?)
        }
    })
}

/// The usage after `ops`, or why they would pass `limits`. `stored(key)` is the length of the
/// value `key` holds before the batch, if any. Keys a batch touches twice are followed through
/// the batch, so the answer is exact.
fn usage_after<E>(
    usage: StoreUsage,
    ops: &[StoreOp],
    limits: Limits,
    mut stored: impl FnMut(&[u8]) -> Result<Option<u64>, E>,
) -> Result<Result<StoreUsage, FullReason>, E> {
    let mut seen: std::collections::HashMap<&[u8], Option<u64>> = Default::default();
    // Signed sums: a batch may delete more than it adds.
    let (mut entries, mut bytes) = (i128::from(usage.entries), i128::from(usage.bytes));
    for op in ops {
        let key = op.key();
        let before = match seen.get(key) {
            Some(len) => *len,
            None => stored(key)?,
        };
        if let Some(len) = before {
            entries -= 1;
            bytes -= i128::from(len) + key.len() as i128;
        }
        let after = match op {
            StoreOp::Put { value, .. } => Some(value.len() as u64),
            StoreOp::Delete { .. } => None,
        };
        if let Some(len) = after {
            entries += 1;
            bytes += i128::from(len) + key.len() as i128;
        }
        seen.insert(key, after);
    }
    let clamp = |v: i128| u64::try_from(v.max(0)).unwrap_or(u64::MAX);
    let (entries, bytes) = (clamp(entries), clamp(bytes));
    if bytes > limits.max_bytes && bytes > usage.bytes {
        return Ok(Err(FullReason::Bytes { would_hold: bytes, max: limits.max_bytes }));
    }
    if entries > limits.max_entries && entries > usage.entries {
        return Ok(Err(FullReason::Entries { would_hold: entries, max: limits.max_entries }));
    }
    Ok(Ok(StoreUsage { entries, bytes }))
}

/// Bytes of keys and values `ops` write (a delete counts its key).
fn bytes_written(ops: &[StoreOp]) -> u64 {
    ops.iter()
        .map(|op| match op {
            StoreOp::Put { key, value } => key.len() + value.len(),
            StoreOp::Delete { key } => key.len(),
        } as u64)
        .sum()
}

#[cfg(test)]
mod tests;
