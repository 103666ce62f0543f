//! `peerlink store check`: a store written with the library API, checked by the built binary,
//! and its exit codes (0 sound, 65 corrupt, 74 unreadable, 75 locked).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use peerlink_core::durable::StoreOp;
use peerlink_host::store::{self, Store};
use peerlink_host::{StorageKind, StorageSettings};

/// A fresh directory under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "peerlink-store-{what}-{}-{}",
            std::process::id(),
            nanos.as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `peerlink store check ARGS` with `PEERLINK_HOME` = `home`.
fn check(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerlink"))
        .args(["store", "check"])
        .args(args)
        .env("PEERLINK_HOME", home)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A send-stream record for `peer`.
fn stream(peer: &str, next: u64) -> StoreOp {
    let mut key = vec![b's'];
    key.extend_from_slice(peer.as_bytes());
    key.push(0);
    StoreOp::Put { key, value: format!(r#"{{"epoch":1,"next":{next}}}"#).into_bytes() }
}

/// The redb store of `home` (store.redb), open.
fn open_store(home: &Path) -> Box<dyn Store> {
    let settings = StorageSettings { kind: StorageKind::Redb, ..StorageSettings::default() };
    store::open(&settings, home).unwrap()
}

#[test]
fn a_sound_store_checks_out_with_its_counts() {
    let home = TempDir::new("sound");
    let mut store = open_store(&home.0);
    store.commit(vec![stream("alice", 2), stream("bob", 3)]).unwrap();
    store.commit(vec![stream("carol", 4)]).unwrap();
    store.close().unwrap();
    let path = home.0.join("store.redb");
    for args in [&[path.to_str().unwrap()][..], &[]] {
        let out = check(&home.0, args);
        let report = text(&out);
        assert_eq!(out.status.code(), Some(0), "{report}");
        assert!(report.contains("entries    3 ("), "{report}");
        assert!(report.contains("send streams"), "{report}");
        assert!(report.contains("integrity  ok"), "{report}");
        assert!(report.contains(&path.display().to_string()), "the default path: {report}");
    }
}

#[test]
fn a_file_of_garbage_is_corrupt_with_exit_code_65() {
    let home = TempDir::new("garbage");
    let path = home.0.join("store.redb");
    std::fs::write(&path, vec![0x5a; 16 * 1024]).unwrap();
    let out = check(&home.0, &[path.to_str().unwrap()]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(65), "{report}");
    assert!(report.contains("corrupt"), "{report}");
}

#[test]
fn a_malformed_entry_is_reported_with_exit_code_65() {
    let home = TempDir::new("entry");
    let mut store = open_store(&home.0);
    let bad = StoreOp::Put { key: b"x".to_vec(), value: b"message text".to_vec() };
    store.commit(vec![stream("alice", 2), bad]).unwrap();
    store.close().unwrap();
    let out = check(&home.0, &[]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(65), "{report}");
    assert!(report.contains("CORRUPT"), "{report}");
    assert!(!report.contains("message text"), "no value is printed: {report}");
}

#[test]
fn a_missing_store_is_exit_code_74_and_a_locked_one_75() {
    let home = TempDir::new("io");
    let out = check(&home.0, &[]);
    assert_eq!(out.status.code(), Some(74), "{}", text(&out));
    assert!(!home.0.join("store.redb").exists(), "check creates nothing");
    let store = open_store(&home.0);
    let out = check(&home.0, &[]);
    let report = text(&out);
    assert_eq!(out.status.code(), Some(75), "{report}");
    assert!(report.contains("locked"), "{report}");
    drop(store);
}
