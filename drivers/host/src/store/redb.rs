//! [`RedbStore`]: the store as one redb file.
//!
//! The file holds two tables: `entries` (the store's byte keys and values) and `meta`
//! (`format_version`: the layout of [`peerlink_core::durable`] that wrote it, a `u32`). Every
//! batch is one write transaction.
//!
//! # What each [`Fsync`] guarantees (redb 4)
//!
//! - [`Fsync::Always`] commits with `Durability::Immediate`: redb writes the new pages, updates
//!   the inactive of its two checksummed commit slots, flips the header's primary bit to it and
//!   calls `fsync` before `commit` returns. A commit that returned survives a process crash
//!   (`kill -9`) and a power loss, as far as the drive honours `fsync`; one that did not return
//!   is either wholly there or wholly absent after the restart (redb falls back to the newest
//!   commit slot with a valid checksum, then repairs its allocator state).
//! - [`Fsync::Never`] commits with `Durability::None`: the commit is visible to this process at
//!   once, but redb only records it in its in-memory header; nothing on the disk points at it
//!   until a later `Immediate` commit or a clean close. A process crash therefore loses every
//!   commit since the store was opened (or last closed), exactly as a power loss does, whatever
//!   the OS page cache holds; the file stays consistent (it opens at the last durable commit).
//!   Closing the store cleanly ([`Store::close`], or dropping it) makes them durable.
//!
//! (redb's `Durability` docs and `WriteTransaction::set_two_phase_commit`; its
//! `PageManager::non_durable_commit` writes the secondary commit slot in memory only.)

use std::path::{Path, PathBuf};

use ::redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition, TableError,
};
use peerlink_core::durable::{FORMAT_VERSION, StoreOp};

use super::{CommitStats, Entries, FullReason, Limits, Store, StoreFailure, StoreUsage};
use crate::config::Fsync;

/// The store's entries.
pub(super) const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
/// `format_version`.
pub(super) const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
/// The key of the layout version in [`META`].
pub(super) const VERSION_KEY: &str = "format_version";

/// A store in one redb file: atomic batches, durable as its [`Fsync`] says, bounded by its
/// [`Limits`]. One process (one `RedbStore`) at a time has the file open.
pub struct RedbStore {
    /// `None` only while it is reopened after an I/O failure.
    db: Option<Database>,
    path: PathBuf,
    fsync: Fsync,
    limits: Limits,
    usage: StoreUsage,
    /// A commit failed on an I/O error: redb refuses writes until the file is reopened.
    needs_reopen: bool,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("fsync", &self.fsync)
            .field("limits", &self.limits)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating it (and its directory) if absent: on unix the
    /// directory gets mode 0700 and the file 0600, like the identity's secret. The whole file
    /// is checked on open (redb's integrity check, and its repair after an unclean shutdown).
    ///
    /// Fails with [`StoreFailure::Locked`] when another process has it open,
    /// [`StoreFailure::NewerVersion`] when a newer layout wrote it, [`StoreFailure::Corrupt`]
    /// when it is not a store redb can read.
    pub fn open(path: &Path, fsync: Fsync, limits: Limits) -> Result<Self, StoreFailure> {
        prepare_file(path)?;
        let db = open_database(path)?;
        let usage = guarded(path, || initialize(path, &db))?;
        Ok(RedbStore {
            db: Some(db),
            path: path.to_owned(),
            fsync,
            limits,
            usage,
            needs_reopen: false,
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Result<&Database, StoreFailure> {
        self.db.as_ref().ok_or(StoreFailure::Stopped)
    }

    /// Closes and reopens the file, which makes redb repair it after a failed commit.
    fn reopen(&mut self) -> Result<(), StoreFailure> {
        if let Some(db) = self.db.take() {
            // Its error is the one that made the reopen necessary.
            let _ = db.close();
        }
        let db = open_database(&self.path)?;
        self.usage = guarded(&self.path, || initialize(&self.path, &db))?;
        self.db = Some(db);
        self.needs_reopen = false;
        Ok(())
    }

    fn try_commit(&mut self, ops: &[StoreOp]) -> Result<CommitStats, StoreFailure> {
        let path = self.path.as_path();
        let fail = |e: ::redb::Error| failure(path, e);
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(|e| fail(e.into()))?;
        let (durability, fsyncs) = match self.fsync {
            Fsync::Always => (Durability::Immediate, 1),
            Fsync::Never => (Durability::None, 0),
        };
        txn.set_durability(durability).map_err(|e| fail(e.into()))?;
        let planned = {
            let mut table = txn.open_table(ENTRIES).map_err(|e| fail(e.into()))?;
            let after = super::usage_after(self.usage, ops, self.limits, |key| {
                Ok::<_, ::redb::StorageError>(table.get(key)?.map(|v| v.value().len() as u64))
            })
            .map_err(|e| fail(e.into()))?;
            if after.is_ok() {
                for op in ops {
                    match op {
                        StoreOp::Put { key, value } => {
                            table.insert(key.as_slice(), value.as_slice())
                        }
                        StoreOp::Delete { key } => table.remove(key.as_slice()),
                    }
                    .map_err(|e| fail(e.into()))?;
                }
            }
            after
        };
        let usage = match planned {
            Ok(usage) => usage,
            Err(reason) => {
                // Nothing was written; the abort only drops the transaction.
                let _ = txn.abort();
                return Err(StoreFailure::Full { path: Some(self.path.clone()), reason });
            }
        };
        txn.commit().map_err(|e| fail(e.into()))?;
        self.usage = usage;
        Ok(CommitStats { ops: ops.len(), bytes_written: super::bytes_written(ops), fsyncs })
    }
}

impl Store for RedbStore {
    fn load(&mut self) -> Result<Entries, StoreFailure> {
        let path = self.path.clone();
        let db = self.db()?;
        guarded(&path, || read_entries(&path, db))
    }

    fn commit(&mut self, ops: Vec<StoreOp>) -> Result<CommitStats, StoreFailure> {
        if ops.is_empty() {
            return Ok(CommitStats::default());
        }
        if self.needs_reopen {
            self.reopen()?;
        }
        let result = self.try_commit(&ops);
        if let Err(StoreFailure::Io { .. } | StoreFailure::Full { reason: FullReason::Disk, .. }) =
            &result
        {
            self.needs_reopen = true;
        }
        result
    }

    fn usage(&self) -> StoreUsage {
        self.usage
    }

    fn close(mut self: Box<Self>) -> Result<(), StoreFailure> {
        match self.db.take() {
            Some(db) => db.close().map_err(|e| failure(&self.path, e.into())),
            None => Ok(()),
        }
    }
}

/// Creates the directory (0700) and an empty file (0600) if they are absent; redb initializes
/// an empty file.
fn prepare_file(path: &Path) -> Result<(), StoreFailure> {
    let io = |source| StoreFailure::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(io)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// Opens the file with redb, checking all of it (a file changed behind redb's back fails with
/// `Corrupted` instead of being trusted).
fn open_database(path: &Path) -> Result<Database, StoreFailure> {
    guarded(path, || {
        Database::builder()
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|e| failure(path, e.into()))
    })
}

/// Checks the layout version (writing it into a new store) and measures what the store holds.
fn initialize(path: &Path, db: &Database) -> Result<StoreUsage, StoreFailure> {
    let fail = |e: ::redb::Error| failure(path, e);
    let found = read_version(path, db)?;
    match found {
        Some(found) if found > FORMAT_VERSION => {
            return Err(StoreFailure::NewerVersion {
                path: path.to_owned(),
                found,
                supported: FORMAT_VERSION,
            });
        }
        Some(_) => {}
        None => {
            let txn = db.begin_write().map_err(|e| fail(e.into()))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| fail(e.into()))?;
                meta.insert(VERSION_KEY, FORMAT_VERSION).map_err(|e| fail(e.into()))?;
                txn.open_table(ENTRIES).map_err(|e| fail(e.into()))?;
            }
            txn.commit().map_err(|e| fail(e.into()))?;
        }
    }
    let txn = db.begin_read().map_err(|e| fail(e.into()))?;
    let table = match txn.open_table(ENTRIES) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(StoreUsage::default()),
        Err(e) => return Err(fail(e.into())),
    };
    let mut usage = StoreUsage { entries: table.len().map_err(|e| fail(e.into()))?, bytes: 0 };
    for entry in table.iter().map_err(|e| fail(e.into()))? {
        let (k, v) = entry.map_err(|e| fail(e.into()))?;
        usage.bytes += (k.value().len() + v.value().len()) as u64;
    }
    Ok(usage)
}

/// The layout version in `meta`; `None` for a file without one that holds no table (a new
/// store). A file with tables but no version is not a peerlink store.
pub(super) fn read_version(path: &Path, db: &Database) -> Result<Option<u32>, StoreFailure> {
    let fail = |e: ::redb::Error| failure(path, e);
    let txn = db.begin_read().map_err(|e| fail(e.into()))?;
    match txn.open_table(META) {
        Ok(meta) => match meta.get(VERSION_KEY).map_err(|e| fail(e.into()))? {
            Some(v) => Ok(Some(v.value())),
            None => Err(not_a_store(path)),
        },
        Err(TableError::TableDoesNotExist(_)) => {
            if txn.list_tables().map_err(|e| fail(e.into()))?.next().is_some() {
                Err(not_a_store(path))
            } else {
                Ok(None)
            }
        }
        Err(e) => Err(fail(e.into())),
    }
}

fn not_a_store(path: &Path) -> StoreFailure {
    StoreFailure::Corrupt {
        path: path.to_owned(),
        reason: "a redb file without a format_version: not a peerlink store".to_owned(),
    }
}

/// Every entry, in key order.
pub(super) fn read_entries(path: &Path, db: &Database) -> Result<Entries, StoreFailure> {
    let fail = |e: ::redb::Error| failure(path, e);
    let txn = db.begin_read().map_err(|e| fail(e.into()))?;
    let table = match txn.open_table(ENTRIES) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(fail(e.into())),
    };
    let mut entries = Vec::new();
    for entry in table.iter().map_err(|e| fail(e.into()))? {
        let (k, v) = entry.map_err(|e| fail(e.into()))?;
        entries.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(entries)
}

/// Runs `f`, turning a panic inside redb (which a damaged file may still cause) into
/// [`StoreFailure::Corrupt`].
pub(super) fn guarded<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, StoreFailure>,
) -> Result<T, StoreFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        Err(StoreFailure::Corrupt {
            path: path.to_owned(),
            reason: format!("redb failed reading it: {what}"),
        })
    })
}

/// What a redb error means for the operator.
pub(super) fn failure(path: &Path, e: ::redb::Error) -> StoreFailure {
    use ::redb::Error as E;
    let path = path.to_owned();
    match e {
        E::DatabaseAlreadyOpen | E::LockProtocolMismatch => StoreFailure::Locked { path },
        E::Corrupted(reason) => StoreFailure::Corrupt { path, reason },
        E::RepairAborted => {
            StoreFailure::Corrupt { path, reason: "it needs a repair that was not done".to_owned() }
        }
        E::UpgradeRequired(v) => StoreFailure::Corrupt {
            path,
            reason: format!("redb file format {v} is older than this build reads"),
        },
        E::TableTypeMismatch { .. } | E::TableIsMultimap(_) => {
            StoreFailure::Corrupt { path, reason: format!("not a peerlink store: {e}") }
        }
        E::Io(source) => io_failure(path, source),
        other => StoreFailure::Io { path, source: std::io::Error::other(other.to_string()) },
    }
}

/// An I/O error: a file that is not a redb database is corrupt, a full disk is `Full`.
fn io_failure(path: PathBuf, source: std::io::Error) -> StoreFailure {
    const ENOSPC: i32 = 28;
    match source.kind() {
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
            StoreFailure::Corrupt { path, reason: source.to_string() }
        }
        std::io::ErrorKind::StorageFull => {
            StoreFailure::Full { path: Some(path), reason: FullReason::Disk }
        }
        _ if source.raw_os_error() == Some(ENOSPC) => {
            StoreFailure::Full { path: Some(path), reason: FullReason::Disk }
        }
        _ => StoreFailure::Io { path, source },
    }
}
