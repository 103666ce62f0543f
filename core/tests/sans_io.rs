//! The core stays sans-IO: no I/O, clock, thread or OS-randomness crate in its normal dependency
//! graph, and none of those APIs in its source.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Crates that would bring sockets, runtimes or OS randomness into the core.
const FORBIDDEN_CRATES: &[&str] = &[
    "smol",
    "async-io",
    "async-net",
    "async-std",
    "async-tungstenite",
    "tungstenite",
    "ureq",
    "hyper",
    "tokio",
    "mio",
    "socket2",
    "getrandom",
    "rand",
];

/// APIs the core's source must not name.
const FORBIDDEN_APIS: &[&str] = &[
    "std::net",
    "std::thread",
    "std::fs",
    "std::process",
    "Instant::now",
    "SystemTime",
    "OsRng",
    "thread_rng",
    "HashMap",
    "HashSet",
];

#[test]
fn dependency_graph_has_no_io_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["tree", "-p", "peerlink-core", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).expect("utf-8");
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains(&"ed25519-dalek"), "unexpected cargo tree output:\n{tree}");
    for bad in FORBIDDEN_CRATES {
        assert!(!crates.contains(bad), "peerlink-core depends on {bad}:\n{tree}");
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read core/src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            // Test modules (`tests.rs`) may use anything; the library may not.
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

#[test]
fn source_names_no_io_clock_or_os_randomness() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for api in FORBIDDEN_APIS {
            assert!(!text.contains(api), "{} names {api}", file.display());
        }
    }
}
