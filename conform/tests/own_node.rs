//! CI runs the whole conformance suite against our own smol node, started in-process on an
//! ephemeral port, under both trust policies (spec §2.3): an allowlist node holding the
//! tester's identity, and an open node holding nobody (the cases marked *open* then use
//! identities the node has never seen). Each policy is checked twice, each time on a fresh node:
//! the whole suite (WebSocket and HTTP cases), and the HTTP message cases alone, so that no
//! link or session the WebSocket cases left behind can make an HTTP case pass.
//!
//! The runs take turns (one node at a time): the cases count answers within seconds and rate
//! limits per minute, which two suites sharing a loaded 2-core machine must not blur.

use std::sync::{Arc, Mutex};

use peerlink_conform::{Options, Outcome, Report, Target, run};
use peerlink_core::{EntityId, TrustPolicy};
use peerlink_smol::{Config, Peerlink, TrustedPeer};

/// One suite at a time.
static TURN: Mutex<()> = Mutex::new(());

/// The cases over HTTP: the message endpoint, and the open policy's (spec §21, §19, §2.3).
const HTTP_CASES: &str = "C-21.,C-2.3.4,C-2.3.5,C-19.2";

/// Starts a fresh node with `policy`, runs the suite on it (`only` narrows it, as do the
/// `PEERLINK_CONFORM_ONLY` and `PEERLINK_CONFORM_SLOW` variables), stops the node.
fn suite(policy: TrustPolicy, only: Option<&str>) -> (Report, Options) {
    let _turn = TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tester = peerlink_smol::keys::generate(EntityId::new("conform-tester").unwrap()).unwrap();
    let node_identity =
        peerlink_smol::keys::generate(EntityId::new("node-under-test").unwrap()).unwrap();
    let mut config = Config::ephemeral();
    config.trust_policy = policy;
    if policy == TrustPolicy::Allowlist {
        config.peers.push(TrustedPeer {
            entity: tester.id().clone(),
            key: tester.public_key(),
            url: None,
        });
    }
    let node = smol::block_on(Peerlink::start(config, node_identity)).unwrap();
    // The application drains its events, as a real one would (backpressure otherwise, §18).
    let events = smol::block_on(node.incoming()).unwrap();
    let drain =
        std::thread::spawn(move || smol::block_on(async { while events.recv().await.is_ok() {} }));

    let target = Target::new(node.base_url(), Arc::new(tester));
    let only = std::env::var("PEERLINK_CONFORM_ONLY").ok().or(only.map(str::to_owned));
    let options = Options {
        slow: std::env::var_os("PEERLINK_CONFORM_SLOW").is_some(),
        only,
        open_node: policy == TrustPolicy::Open,
        ..Options::default()
    };
    let report = run(&target, &options);
    println!("{policy:?} node, cases {:?}:", options.only);
    for line in report.lines() {
        println!("{line}");
    }
    smol::block_on(node.shutdown()).unwrap();
    let _ = drain.join();
    (report, options)
}

/// No case failed, and at least `min` passed (unless the selection was narrowed from outside).
fn check(report: &Report, options: &Options, min: usize) {
    let failed: Vec<String> = report
        .cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fail(_)))
        .map(|c| c.line())
        .collect();
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
    if std::env::var_os("PEERLINK_CONFORM_ONLY").is_none() {
        assert!(report.passed() >= min, "{} (options {options:?})", report.summary());
    }
}

#[test]
fn an_allowlist_node_passes_every_case() {
    let (report, options) = suite(TrustPolicy::Allowlist, None);
    check(&report, &options, 80);
}

#[test]
fn an_open_node_passes_every_case() {
    let (report, options) = suite(TrustPolicy::Open, None);
    check(&report, &options, 83);
}

#[test]
fn an_allowlist_node_passes_the_http_cases_on_their_own() {
    let (report, options) = suite(TrustPolicy::Allowlist, Some(HTTP_CASES));
    check(&report, &options, 6);
}

#[test]
fn an_open_node_passes_the_http_cases_on_their_own() {
    let (report, options) = suite(TrustPolicy::Open, Some(HTTP_CASES));
    check(&report, &options, 9);
}
