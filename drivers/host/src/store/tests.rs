//! Tests of the stores, the writer and the check.

use std::path::{Path, PathBuf};

use ::redb::{Database, ReadableDatabase as _};
use peerlink_core::durable::{FORMAT_VERSION, StoreOp};

use super::*;
use crate::config::Fsync;

fn put(key: &[u8], value: &[u8]) -> StoreOp {
    StoreOp::Put { key: key.to_vec(), value: value.to_vec() }
}

fn delete(key: &[u8]) -> StoreOp {
    StoreOp::Delete { key: key.to_vec() }
}

/// A send-stream record, valid in every layout version so far.
fn stream(peer: &str, next: u64) -> StoreOp {
    let mut key = vec![b's'];
    key.extend_from_slice(peer.as_bytes());
    key.push(0);
    put(&key, format!(r#"{{"epoch":1,"next":{next}}}"#).as_bytes())
}

fn redb_at(path: &Path) -> RedbStore {
    RedbStore::open(path, Fsync::Always, Limits::NONE).unwrap()
}

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    (dir, path)
}

/// Both stores, the same bounds.
fn both(limits: Limits) -> (tempfile::TempDir, Vec<Box<dyn Store>>) {
    let (dir, path) = temp();
    let redb = RedbStore::open(&path, Fsync::Always, limits).unwrap();
    (dir, vec![Box::new(MemoryStore::with_limits(limits)), Box::new(redb)])
}

fn owned(entries: &[(&[u8], &[u8])]) -> Entries {
    entries.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

#[test]
fn both_stores_commit_and_load_back_in_key_order() {
    let (_dir, stores) = both(Limits::NONE);
    for mut store in stores {
        assert_eq!(store.load().unwrap(), Vec::new());
        let stats = store.commit(vec![put(b"b", b"22"), put(b"a", b"1"), put(b"c", b"333")]);
        assert_eq!(stats.unwrap().ops, 3);
        let stats = store.commit(vec![delete(b"c"), put(b"a", b"11"), delete(b"nothing")]).unwrap();
        assert_eq!(stats.bytes_written, 1 + 3 + 7);
        assert_eq!(store.load().unwrap(), owned(&[(b"a", b"11"), (b"b", b"22")]));
        assert_eq!(store.usage(), StoreUsage { entries: 2, bytes: 6 });
        assert_eq!(store.commit(Vec::new()).unwrap(), CommitStats::default());
    }
}

#[test]
fn redb_commits_are_fsynced_unless_told_not_to() {
    let (_dir, path) = temp();
    let mut store = redb_at(&path);
    assert_eq!(store.commit(vec![put(b"k", b"v")]).unwrap().fsyncs, 1);
    drop(store);
    let mut store = RedbStore::open(&path, Fsync::Never, Limits::NONE).unwrap();
    assert_eq!(store.commit(vec![put(b"k2", b"v")]).unwrap().fsyncs, 0);
    // A clean close makes the unflushed commits durable.
    Box::new(store).close().unwrap();
    assert_eq!(redb_at(&path).load().unwrap().len(), 2);
}

#[test]
fn a_batch_over_a_bound_is_refused_whole_before_anything_is_written() {
    let limits = Limits { max_bytes: 20, max_entries: 2 };
    let (_dir, stores) = both(limits);
    for mut store in stores {
        store.commit(vec![put(b"a", b"1")]).unwrap();
        let before = (store.load().unwrap(), store.usage());
        // Three entries: refused, though its first put alone would fit.
        let err = store.commit(vec![put(b"b", b"SECRET"), put(b"c", b"3")]).unwrap_err();
        let StoreFailure::Full { reason: FullReason::Entries { would_hold: 3, max: 2 }, .. } = err
        else {
            panic!("{err:?}")
        };
        assert!(!format!("{err} {err:?}").contains("SECRET"), "no value in a failure: {err}");
        // 2 + 21 bytes: over max_bytes.
        let err = store.commit(vec![put(b"b", &[7; 20])]).unwrap_err();
        assert!(matches!(err, StoreFailure::Full { reason: FullReason::Bytes { .. }, .. }));
        assert!(err.to_string().contains("max_bytes"), "{err}");
        assert_eq!((store.load().unwrap(), store.usage()), before, "nothing written");
        // Deletes make room within the same batch.
        store.commit(vec![delete(b"a"), put(b"b", b"2"), put(b"c", b"3")]).unwrap();
        assert_eq!(store.usage(), StoreUsage { entries: 2, bytes: 4 });
    }
}

#[test]
fn usage_follows_a_key_touched_twice_in_a_batch() {
    let ops = [put(b"k", b"12345"), delete(b"k"), put(b"k", b"1"), put(b"j", b"")];
    let after = usage_after(StoreUsage::default(), &ops, Limits::NONE, |_| {
        Ok::<_, std::convert::Infallible>(None)
    });
    assert_eq!(after, Ok(Ok(StoreUsage { entries: 2, bytes: 3 })));
    // A store already over a lowered bound may still shrink.
    let over = StoreUsage { entries: 10, bytes: 100 };
    let limits = Limits { max_bytes: 10, max_entries: 1 };
    let after =
        usage_after(over, &[delete(b"k")], limits, |_| Ok::<_, std::convert::Infallible>(Some(9)));
    assert_eq!(after, Ok(Ok(StoreUsage { entries: 9, bytes: 90 })));
}

#[test]
fn a_reopened_store_has_what_was_committed() {
    let (dir, path) = temp();
    let path = path.parent().unwrap().join("sub/dir/store.redb");
    let mut store = redb_at(&path);
    store.commit(vec![put(b"a", b"1"), put(b"b", b"2")]).unwrap();
    store.commit(vec![delete(b"a")]).unwrap();
    let usage = store.usage();
    drop(store);
    let mut store = redb_at(&path);
    assert_eq!(store.load().unwrap(), owned(&[(b"b", b"2")]));
    assert_eq!(store.usage(), usage);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("sub")), 0o700);
        assert_eq!(mode(&dir.path().join("sub/dir")), 0o700);
    }
}

#[test]
fn a_file_of_garbage_is_corrupt() {
    let (_dir, path) = temp();
    // Deterministic noise (an LCG), larger than redb's header.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let garbage: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = RedbStore::open(&path, Fsync::Always, Limits::NONE).unwrap_err();
    assert!(matches!(err, StoreFailure::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("is corrupt"), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert!(matches!(check(&path), Err(StoreFailure::Corrupt { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "the file is left as it was");
}

#[test]
fn a_truncated_store_is_refused_as_corrupt() {
    let (_dir, path) = temp();
    let mut store = redb_at(&path);
    for i in 0..50u32 {
        store.commit(vec![put(&i.to_be_bytes(), &[i as u8; 1000])]).unwrap();
    }
    drop(store);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
    // What redb 4.6 really does: its header records the file's layout, and a file shorter than
    // that is refused ("File truncated below stored layout: file_len=…, layout_len=…"), not
    // repaired to an older commit. So a truncated store is Corrupt, never a shorter history.
    let err = RedbStore::open(&path, Fsync::Always, Limits::NONE).unwrap_err();
    assert!(matches!(err, StoreFailure::Corrupt { .. }), "{err:?}");
    assert!(matches!(check(&path), Err(StoreFailure::Corrupt { .. })));
}

/// Sets the store's `format_version` to `version` behind its back.
fn set_version(path: &Path, version: u32) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(redb::META).unwrap().insert(redb::VERSION_KEY, version).unwrap();
    txn.commit().unwrap();
}

#[test]
fn a_store_from_a_newer_layout_is_refused() {
    let (_dir, path) = temp();
    redb_at(&path).commit(vec![stream("alice", 2)]).unwrap();
    set_version(&path, FORMAT_VERSION + 1);
    let err = RedbStore::open(&path, Fsync::Always, Limits::NONE).unwrap_err();
    let StoreFailure::NewerVersion { found, supported, .. } = err else { panic!("{err:?}") };
    assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
    assert!(matches!(check(&path), Err(StoreFailure::NewerVersion { .. })));
    // The file was not changed: it still says the newer version.
    let db = Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let version = txn.open_table(redb::META).unwrap().get(redb::VERSION_KEY).unwrap();
    assert_eq!(version.map(|v| v.value()), Some(FORMAT_VERSION + 1));
}

#[test]
fn a_redb_file_of_something_else_is_not_a_store() {
    let (_dir, path) = temp();
    let db = Database::create(&path).unwrap();
    let txn = db.begin_write().unwrap();
    let other: ::redb::TableDefinition<u64, u64> = ::redb::TableDefinition::new("other");
    txn.open_table(other).unwrap().insert(1, 2).unwrap();
    txn.commit().unwrap();
    drop(db);
    let err = RedbStore::open(&path, Fsync::Always, Limits::NONE).unwrap_err();
    assert!(err.to_string().contains("not a peerlink store"), "{err}");
}

#[test]
fn a_store_open_twice_is_locked() {
    let (_dir, path) = temp();
    let first = redb_at(&path);
    let err = RedbStore::open(&path, Fsync::Always, Limits::NONE).unwrap_err();
    assert!(matches!(err, StoreFailure::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("is another peerlink running"), "{err}");
    assert!(matches!(check(&path), Err(StoreFailure::Locked { .. })));
    drop(first);
    redb_at(&path);
}

#[test]
fn check_counts_a_sound_store_by_kind() {
    let (_dir, path) = temp();
    let mut store = redb_at(&path);
    store.commit(vec![stream("alice", 2), stream("bob", 7)]).unwrap();
    let usage = store.usage();
    drop(store);
    let report = check(&path).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.integrity, Integrity::Ok);
    assert_eq!(report.format_version, Some(FORMAT_VERSION));
    assert_eq!(report.usage, usage);
    assert_eq!(report.kinds.get(&b's'), Some(&KindUsage { entries: 2, bytes: usage.bytes }));
    let text = report.to_string();
    assert!(text.contains("send streams"), "{text}");
    assert!(text.contains("entries    2 ("), "{text}");
    assert!(text.contains("restore    ok"), "{text}");
}

#[test]
fn check_reports_a_malformed_entry_without_its_value() {
    let (_dir, path) = temp();
    redb_at(&path).commit(vec![stream("alice", 2), put(b"x", b"SECRET")]).unwrap();
    let report = check(&path).unwrap();
    assert!(!report.is_ok());
    let text = report.to_string();
    assert!(text.contains("CORRUPT"), "{text}");
    assert!(text.contains("unknown kind (0x78)"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
}

#[test]
fn check_does_not_create_a_file() {
    let (_dir, path) = temp();
    assert!(matches!(check(&path), Err(StoreFailure::Io { .. })));
    assert!(!path.exists());
}

#[test]
fn the_writer_commits_on_its_thread_and_closes_the_file() {
    let (_dir, path) = temp();
    let writer = StoreWriter::spawn(Box::new(redb_at(&path))).unwrap();
    futures_lite::future::block_on(async {
        let stats = writer.commit(vec![put(b"a", b"1"), put(b"b", b"2")]).await.unwrap();
        assert_eq!((stats.ops, stats.fsyncs), (2, 1));
        assert_eq!(writer.usage(), StoreUsage { entries: 2, bytes: 4 });
        let err = writer.commit(vec![put(b"", &[])]).await;
        assert!(err.is_ok(), "an empty key is a key");
        writer.close().await.unwrap();
    });
    // Closed: the file opens again at once.
    assert_eq!(redb_at(&path).load().unwrap().len(), 3);
}

#[test]
fn a_writer_reports_refusals_and_serves_committers_at_once() {
    let limits = Limits { max_bytes: u64::MAX, max_entries: 100 };
    let writer = StoreWriter::spawn(Box::new(MemoryStore::with_limits(limits))).unwrap();
    futures_lite::future::block_on(async {
        for i in 0..50u8 {
            // Two committers at once, more than the queue holds in all.
            let (a, b) = futures_lite::future::zip(
                writer.commit(vec![put(&[i], b"v")]),
                writer.commit(vec![put(&[i, i], b"v")]),
            )
            .await;
            a.unwrap();
            b.unwrap();
        }
        let err = writer.commit(vec![put(b"one more", b"v")]).await.unwrap_err();
        assert!(matches!(err, StoreFailure::Full { path: None, .. }), "{err:?}");
        assert_eq!(writer.usage().entries, 100);
    });
    drop(writer);
}

#[test]
fn open_picks_the_store_the_settings_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::config::StorageSettings::default();
    let mut memory = open(&settings, dir.path()).unwrap();
    memory.commit(vec![put(b"a", b"1")]).unwrap();
    assert!(!dir.path().join("store.redb").exists(), "memory writes no file");
    settings.kind = crate::config::StorageKind::Redb;
    let mut file = open(&settings, dir.path()).unwrap();
    file.commit(vec![put(b"a", b"1")]).unwrap();
    file.close().unwrap();
    assert!(dir.path().join("store.redb").exists());
    settings.path = Some(dir.path().join("elsewhere.redb"));
    open(&settings, dir.path()).unwrap();
    assert!(dir.path().join("elsewhere.redb").exists());
}
