//! A driver in miniature: two [`Node`]s, alice and bob, joined by an in-memory network and a
//! clock that jumps to the next deadline. Alice sends bob one message; the 6-step handshake, the
//! encrypted message and bob's acknowledgement all cross this "network". Every driver (smol,
//! threads, tokio) is this loop with real sockets and a real clock.
//!
//! `cargo run -p peerlink-core --example node_loop` prints each input and output.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use peerlink_core::node::{
    Bearer, Event, Handled, Input, LinkId, LinkKind, Node, NodeAddr, Output,
};
use peerlink_core::transport::TransportPreference;
use peerlink_core::wire::Encoding;
use peerlink_core::{EntityId, Identity, NodeConfig, Timestamp, TrustPolicy, TrustStore};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// One thing in flight on the network: which node gets which input.
enum Wire {
    /// Bob's side of a link alice opened: it is accepted, then alice hears it is up.
    Dial { from_link: LinkId },
    /// A frame for a node's link.
    Frame { to: usize, link: LinkId, frame: Vec<u8> },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let alice_id = Identity::from_secret_bytes(EntityId::new("alice")?, &[1; 32]);
    let bob_id = Identity::from_secret_bytes(EntityId::new("bob")?, &[2; 32]);
    let mut trust = TrustStore::new(TrustPolicy::Allowlist);
    trust.insert(alice_id.id().clone(), alice_id.public_key());
    trust.insert(bob_id.id().clone(), bob_id.public_key());
    let alice_key = alice_id.public_key();

    // This network carries WebSocket links only: no HTTP fallback (spec §16).
    let config =
        NodeConfig { preference: TransportPreference::WebsocketOnly, ..Default::default() };
    // Randomness is injected: the same seeds replay the same bytes.
    let alice = Node::new(config.clone(), alice_id, trust.clone(), ChaCha20Rng::seed_from_u64(1))?;
    let bob = Node::new(config, bob_id, trust, ChaCha20Rng::seed_from_u64(2))?;
    let mut nodes = [alice, bob];
    let mut now = Timestamp::from_unix_millis(1_700_000_000_000);

    // Alice reaches bob's own node directly (no relay) and sends.
    let bob_addr =
        NodeAddr { entity: EntityId::new("bob")?, base_url: "http://bob.example".into() };
    nodes[0].add_route(bob_addr.entity.clone(), bob_addr);
    nodes[0].send(now, &EntityId::new("bob")?, b"hello, bob".to_vec(), Default::default())?;

    // Which link of one node is which link of the other.
    let mut pairs: BTreeMap<(usize, LinkId), (usize, LinkId)> = BTreeMap::new();
    let mut wire: VecDeque<Wire> = VecDeque::new();
    let mut delivered = false;
    let give_up = now.saturating_add(Duration::from_secs(60));
    while !delivered {
        if now > give_up {
            return Err("not delivered within a minute".into());
        }
        // 2. Drain every node's outputs and carry them out.
        for (i, node) in nodes.iter_mut().enumerate() {
            while let Some(out) = node.poll_output() {
                println!("{:>5} -> {}", ["alice", "bob"][i], out.describe());
                match out {
                    Output::OpenLink { link, .. } => wire.push_back(Wire::Dial { from_link: link }),
                    Output::Transmit { link, frame } => {
                        if let Some(&(to, link)) = pairs.get(&(i, link)) {
                            wire.push_back(Wire::Frame { to, link, frame: frame.to_vec() });
                        }
                    }
                    Output::Event(Event::Message { from, payload, .. }) => {
                        println!("bob got {:?} from {from}", String::from_utf8_lossy(&payload));
                    }
                    Output::Event(Event::Delivered { .. }) => delivered = true,
                    _ => {}
                }
            }
        }
        // 1. Feed one input with the current time: the next thing on the wire...
        if let Some(next) = wire.pop_front() {
            match next {
                Wire::Dial { from_link } => {
                    // Bob's driver authenticated alice's token (spec §23.2): this is its holder.
                    let who = Bearer::with_key(
                        EntityId::new("alice")?,
                        alice_key,
                        now.saturating_add(Duration::from_secs(3600)),
                    );
                    let Ok(Handled::Link(bob_link)) = nodes[1].handle_input(
                        now,
                        Input::AcceptLink { kind: LinkKind::Peers, who, encoding: Encoding::Json },
                    ) else {
                        return Err("bob refused the link".into());
                    };
                    pairs.insert((0, from_link), (1, bob_link));
                    pairs.insert((1, bob_link), (0, from_link));
                    nodes[0].handle_input(
                        now,
                        Input::LinkUp { link: from_link, encoding: Encoding::Json },
                    )?;
                }
                Wire::Frame { to, link, frame } => {
                    nodes[to].handle_input(now, Input::Frame { link, frame: &frame })?;
                }
            }
            continue;
        }
        // 3. ...or, with nothing in flight, sleep until the earliest deadline and fire it.
        let Some(deadline) = nodes.iter().filter_map(Node::poll_timeout).min() else { break };
        now = now.max(deadline);
        for node in &mut nodes {
            node.handle_input(now, Input::Timeout)?;
        }
    }
    println!("delivered: alice's node has bob's acknowledgement");
    Ok(())
}
