//! Runs the 6-step handshake between two identities in memory, then exchanges encrypted messages.
//!
//! `cargo run -p peerlink-core --example handshake [SEED]` — the same seed prints the same bytes.

use std::sync::Arc;

use peerlink_core::{
    EntityId, Envelope, HandshakeConfig, HandshakeOutput, Identity, Initiator, MessageId,
    MessageType, Responder, Timestamp, TrustPolicy, TrustStore,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn show(direction: &str, env: &Envelope) {
    let wire = env.encode();
    println!(
        "{direction} {:<20} seq={} {:>4} bytes  session={}",
        env.message_type.as_str(),
        env.seq,
        wire.len(),
        env.session_id.as_ref().map_or("-", |s| s.as_str()),
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seed = match std::env::args().nth(1) {
        Some(s) => s.parse::<u64>().map_err(|_| format!("SEED must be a number, not {s:?}"))?,
        None => 2026,
    };
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let alice = Arc::new(Identity::generate(EntityId::new("alice")?, &mut rng));
    let bob = Arc::new(Identity::generate(EntityId::new("bob")?, &mut rng));
    println!("alice  {}", alice.public_key());
    println!("bob    {}", bob.public_key());

    let mut trust = TrustStore::new(TrustPolicy::Allowlist);
    trust.insert(alice.id().clone(), alice.public_key());
    trust.insert(bob.id().clone(), bob.public_key());
    let now = Timestamp::from_unix_millis(1_700_000_000_000);
    let config = HandshakeConfig::default();

    println!("\nhandshake:");
    let (mut initiator, m1) =
        Initiator::start(alice, bob.id().clone(), &trust, config.clone(), now, &mut rng)?;
    show("alice -> bob  ", &m1);
    let (mut responder, m2) = Responder::accept(bob, &trust, config, &m1, now, &mut rng)?;
    show("bob   -> alice", &m2);

    let mut to_bob = None;
    let mut to_alice = Some(m2);
    let (mut alice_session, mut bob_session) = (None, None);
    while alice_session.is_none() || bob_session.is_none() {
        if let Some(m) = to_alice.take() {
            match initiator.handle(&m, now, &mut rng)? {
                HandshakeOutput::Send(reply) => {
                    show("alice -> bob  ", &reply);
                    to_bob = Some(reply);
                }
                HandshakeOutput::Complete { session, .. } => alice_session = Some(session),
            }
        }
        if let Some(m) = to_bob.take() {
            match responder.handle(&m, now, &mut rng)? {
                HandshakeOutput::Send(reply) => {
                    show("bob   -> alice", &reply);
                    to_alice = Some(reply);
                }
                HandshakeOutput::Complete { send, session } => {
                    if let Some(ready) = send {
                        show("bob   -> alice", &ready);
                        to_alice = Some(ready);
                    }
                    bob_session = Some(session);
                }
            }
        }
    }
    let (Some(mut a), Some(mut b)) = (alice_session, bob_session) else {
        return Err("handshake did not complete".into());
    };
    println!(
        "\nestablished {} (handshake hash {})",
        a.id(),
        peerlink_core::encoding::hex(a.handshake_hash())
    );
    println!("agreed: {:?}", a.capabilities());

    println!("\nencrypted traffic:");
    let hello =
        a.seal(MessageType::PeerMessage, MessageId::random(&mut rng), b"hello, bob", now)?;
    show("alice -> bob  ", &hello);
    let opened = b.open(&Envelope::decode(&hello.encode(), 1 << 20)?, now)?;
    println!("bob read: {:?}", String::from_utf8_lossy(&opened.plaintext));
    let reply = b.seal(MessageType::PeerMessage, MessageId::random(&mut rng), b"hi, alice", now)?;
    show("bob   -> alice", &reply);
    let opened = a.open(&reply, now)?;
    println!("alice read: {:?}", String::from_utf8_lossy(&opened.plaintext));
    match b.open(&hello, now) {
        Err(e) => println!("replaying alice's message to bob: refused, {} ({e})", e.code()),
        Ok(_) => return Err("a replay was accepted".into()),
    }
    Ok(())
}
