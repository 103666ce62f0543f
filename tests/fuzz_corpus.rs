//! Replays the fuzz seeds (`fuzz/seeds/<target>/`) and any local corpus (`fuzz/corpus/<target>/`,
//! grown by `cargo fuzz run`) through the same bodies the cargo-fuzz targets call, on stable Rust,
//! so CI covers every input the fuzzers found without nightly.

use std::path::{Path, PathBuf};

use peerlink_core::fuzzing;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file()
                && let Ok(bytes) = std::fs::read(&path)
            {
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

fn replay(target: &str, body: fn(&[u8])) {
    let cases = inputs(target);
    assert!(cases.len() >= 4, "{target}: only {} seeds found", cases.len());
    for (path, bytes) in &cases {
        let result = std::panic::catch_unwind(|| body(bytes));
        assert!(result.is_ok(), "{target}: {} makes the target fail", path.display());
    }
    eprintln!("{target}: {} inputs replayed", cases.len());
}

#[test]
fn envelope_corpus() {
    replay("envelope", fuzzing::envelope);
}

#[test]
fn binary_envelope_corpus() {
    replay("binary_envelope", fuzzing::binary_envelope);
}

#[test]
fn handshake_corpus() {
    replay("handshake", fuzzing::handshake);
}

#[test]
fn session_corpus() {
    replay("session", fuzzing::session);
}

#[test]
fn reassembly_corpus() {
    replay("reassembly", fuzzing::reassembly);
}

#[test]
fn node_corpus() {
    replay("node", fuzzing::node);
}

#[test]
fn endpoints_corpus() {
    replay("endpoints", fuzzing::endpoints);
}
