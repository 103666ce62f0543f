//! CI runs the whole conformance suite against our own smol node, started in-process on an
//! ephemeral port with the tester's identity in its allowlist.

use std::sync::Arc;

use peerlink_conform::{Options, Outcome, Target, run};
use peerlink_core::EntityId;
use peerlink_smol::{Config, Peerlink, TrustedPeer};

#[test]
fn our_node_passes_every_case() {
    let tester = peerlink_smol::keys::generate(EntityId::new("conform-tester").unwrap()).unwrap();
    let node_identity =
        peerlink_smol::keys::generate(EntityId::new("node-under-test").unwrap()).unwrap();
    let mut config = Config::ephemeral();
    config.peers.push(TrustedPeer {
        entity: tester.id().clone(),
        key: tester.public_key(),
        url: None,
    });
    let node = smol::block_on(Peerlink::start(config, node_identity)).unwrap();
    // The application drains its events, as a real one would (backpressure otherwise, §18).
    let events = smol::block_on(node.incoming()).unwrap();
    let drain =
        std::thread::spawn(move || smol::block_on(async { while events.recv().await.is_ok() {} }));

    let target = Target::new(node.base_url(), Arc::new(tester));
    let options = Options {
        slow: std::env::var_os("PEERLINK_CONFORM_SLOW").is_some(),
        only: std::env::var("PEERLINK_CONFORM_ONLY").ok(),
        ..Options::default()
    };
    let report = run(&target, &options);
    for line in report.lines() {
        println!("{line}");
    }
    smol::block_on(node.shutdown()).unwrap();
    let _ = drain.join();
    let failed: Vec<String> = report
        .cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fail(_)))
        .map(|c| c.line())
        .collect();
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
    if options.only.is_none() {
        assert!(report.passed() > 40, "{}", report.summary());
    }
}
