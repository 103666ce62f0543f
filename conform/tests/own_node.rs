//! CI runs the whole conformance suite against each of our own nodes, started in-process on an
//! ephemeral port: the smol node, the tokio node, and the tokio node mounted into an axum
//! application under `/peerlink` (its base URL has that path). Each runs under both trust
//! policies (spec §2.3): an allowlist node holding the
//! tester's identity, and an open node holding nobody (the cases marked *open* then use
//! identities the node has never seen). Each policy is checked twice, each time on a fresh node:
//! the whole suite (WebSocket and HTTP cases), and the HTTP message cases alone, so that no
//! link or session the WebSocket cases left behind can make an HTTP case pass.
//!
//! The runs take turns (one node at a time): the cases count answers within seconds and rate
//! limits per minute, which two suites sharing a loaded 2-core machine must not blur.

use std::sync::{Arc, Mutex};

use peerlink_conform::{Options, Outcome, Report, Target, run};
use peerlink_core::Identity;
use peerlink_core::{EntityId, TrustPolicy};
use peerlink_smol::{Config, Handle, Peerlink, TrustedPeer};
use tokio::runtime::Runtime;

/// One suite at a time.
static TURN: Mutex<()> = Mutex::new(());

/// The cases over HTTP: the message endpoint, and the open policy's (spec §21, §19, §2.3).
const HTTP_CASES: &str = "C-21.,C-2.3.4,C-2.3.5,C-19.2,C-27.5";

/// Which of our nodes is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// `peerlink_smol::Peerlink::start`.
    Smol,
    /// `peerlink_tokio::Peerlink::start`.
    Tokio,
    /// `peerlink_tokio::Peerlink::router`, nested under `/peerlink` in an axum application.
    Axum,
}

/// A node of `driver` and its base URL; the tokio runtime it runs on, if any.
fn start(driver: Driver, config: Config, identity: Identity) -> (Handle, String, Option<Runtime>) {
    match driver {
        Driver::Smol => {
            let node = smol::block_on(Peerlink::start(config, identity)).unwrap();
            let base = node.base_url();
            (node, base, None)
        }
        Driver::Tokio => {
            let rt = Runtime::new().unwrap();
            let node = rt.block_on(peerlink_tokio::Peerlink::start(config, identity)).unwrap();
            let base = node.base_url();
            (node, base, Some(rt))
        }
        Driver::Axum => {
            let rt = Runtime::new().unwrap();
            let (node, base) = rt.block_on(async {
                let (node, router) =
                    peerlink_tokio::Peerlink::router(config, identity).await.unwrap();
                let app = axum::Router::new().nest("/peerlink", router);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(async move { axum::serve(listener, app).await });
                (node, format!("http://{addr}/peerlink"))
            });
            (node, base, Some(rt))
        }
    }
}

/// Starts a fresh node of `driver` with `policy`, runs the suite on it (`only` narrows it, as
/// do the `PEERLINK_CONFORM_ONLY` and `PEERLINK_CONFORM_SLOW` variables), stops the node.
fn suite(driver: Driver, policy: TrustPolicy, only: Option<&str>) -> (Report, Options) {
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
    let (node, base, runtime) = start(driver, config, node_identity);
    // The application drains its events, as a real one would (backpressure otherwise, §18).
    let events = smol::block_on(node.incoming()).unwrap();
    let drain =
        std::thread::spawn(move || smol::block_on(async { while events.recv().await.is_ok() {} }));

    let target = Target::new(base, Arc::new(tester));
    let only = std::env::var("PEERLINK_CONFORM_ONLY").ok().or(only.map(str::to_owned));
    let options = Options {
        slow: std::env::var_os("PEERLINK_CONFORM_SLOW").is_some(),
        only,
        open_node: policy == TrustPolicy::Open,
        ..Options::default()
    };
    let report = run(&target, &options);
    println!("{driver:?} {policy:?} node, cases {:?}:", options.only);
    for line in report.lines() {
        println!("{line}");
    }
    smol::block_on(node.shutdown()).unwrap();
    let _ = drain.join();
    drop(runtime);
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
    // peerlink's node offers every optional capability: nothing is skipped for want of one.
    let typed = report.cases.iter().find(|c| c.id == "C-13.1.1");
    assert!(
        typed.is_none_or(|c| matches!(c.outcome, Outcome::Pass)),
        "{:?}",
        typed.map(|c| c.line())
    );
    // It speaks binary HTTP bodies too (spec §27.7): C-27.5 is not skipped.
    let body = report.cases.iter().find(|c| c.id == "C-27.5");
    assert!(
        body.is_none_or(|c| matches!(c.outcome, Outcome::Pass)),
        "{:?}",
        body.map(|c| c.line())
    );
    if std::env::var_os("PEERLINK_CONFORM_ONLY").is_none() {
        assert!(report.passed() >= min, "{} (options {options:?})", report.summary());
    }
}

/// The four suites of spec §2.3's two policies, on one driver's node.
macro_rules! suites {
    ($module:ident, $driver:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn an_allowlist_node_passes_every_case() {
                let (report, options) = suite($driver, TrustPolicy::Allowlist, None);
                check(&report, &options, 80);
            }

            #[test]
            fn an_open_node_passes_every_case() {
                let (report, options) = suite($driver, TrustPolicy::Open, None);
                check(&report, &options, 83);
            }

            #[test]
            fn an_allowlist_node_passes_the_http_cases_on_their_own() {
                let (report, options) = suite($driver, TrustPolicy::Allowlist, Some(HTTP_CASES));
                check(&report, &options, 6);
            }

            #[test]
            fn an_open_node_passes_the_http_cases_on_their_own() {
                let (report, options) = suite($driver, TrustPolicy::Open, Some(HTTP_CASES));
                check(&report, &options, 9);
            }
        }
    };
}

suites!(smol_node, Driver::Smol);
suites!(tokio_node, Driver::Tokio);
suites!(axum_mounted_node, Driver::Axum);
