//! The crate's top-level modules form layers: no `crate::` path (in code, tests or doc links)
//! makes a cycle between two of them. A module is `src/X.rs` or `src/X/` (its children count as
//! `X`); `crate::Name` for an item lib.rs re-exports (`pub use x::{Name}`) counts as a path to
//! `x`. This test fails with the cycle it finds, so a new import that closes one is caught here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        out.extend(rust_files(&entry.unwrap().path()));
    }
    out.retain(|p| p.extension().is_some_and(|e| e == "rs"));
    out
}

/// Identifier characters at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// Every name a line reaches through `crate::`, including each of `crate::{a::B, c}`.
fn crate_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(group.split(',').map(|p| ident(p.trim()).to_owned()));
        } else {
            out.push(ident(rest).to_owned());
        }
    }
    out
}

#[test]
fn the_host_modules_form_layers_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name != "lib" && (path.is_dir() || path.extension().is_some_and(|e| e == "rs")) {
            modules.insert(name, path);
        }
    }
    // `pub use x::{A, B};` and `pub use x::A;` in lib.rs.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut reexports = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else { continue };
        let Some((module, names)) = rest.split_once("::") else { continue };
        for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
            reexports.insert(ident(name.trim()).to_owned(), module.to_owned());
        }
    }
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &modules {
        for file in rust_files(path) {
            for line in std::fs::read_to_string(&file).unwrap().lines() {
                for target in crate_paths(line) {
                    let to = if modules.contains_key(&target) {
                        Some(target)
                    } else {
                        reexports.get(&target).cloned()
                    };
                    if let Some(to) = to.filter(|t| t != module) {
                        uses.entry(module.clone()).or_default().insert(to);
                    }
                }
            }
        }
    }
    // Depth-first search; a module met again while still on the path closes a cycle.
    fn visit(
        m: &str,
        uses: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_owned());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in uses.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, uses, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in modules.keys() {
        let cycle = visit(m, &uses, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "modules of peerlink-host in a cycle: {}",
            cycle.unwrap().join(" -> ")
        );
    }
    assert!(uses.len() > 10, "the scan found too few uses to be looking at the crate: {uses:?}");
}

#[test]
fn the_scan_sees_paths_and_groups() {
    assert_eq!(crate_paths("use crate::state::{Core, Input};"), vec!["state"]);
    assert_eq!(crate_paths("use crate::{client, error::ApiError};"), vec!["client", "error"]);
    assert_eq!(crate_paths("/// [`Handle`](crate::Handle)"), vec!["Handle"]);
}
