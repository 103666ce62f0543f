//! The Rust side of the binding's benchmark (`bench/relay_throughput.py`): the same scenario as
//! the Python side, two client nodes through a relay, with Rust calling the node's `Handle`
//! directly, so that one run puts both next to each other and their ratio is what the binding
//! costs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use peerlink_core::{EntityId, Event, MessageType};
use peerlink_host::{ApiError, Config, Peerlink, TrustedPeer};
use pyo3::prelude::*;

use crate::errors;
use crate::waiting::{seconds, wait};

/// Alice sends `size`-byte messages to Bob through the relay for `secs` seconds, at most
/// `window` of them sent and not yet received by Bob's application; returns the messages Bob
/// received in the measured time and that time in seconds.
async fn run(
    relay: TrustedPeer,
    size: usize,
    secs: Duration,
    window: usize,
) -> Result<(u64, f64), ApiError> {
    // Keys first: each trusts the other.
    let alice_id = peerlink_host::keys::generate(EntityId::new("bench-alice")?)
        .map_err(|_| ApiError::Stopped)?;
    let bob_id = peerlink_host::keys::generate(EntityId::new("bench-bob")?)
        .map_err(|_| ApiError::Stopped)?;
    let peer = |i: &peerlink_core::Identity| TrustedPeer {
        entity: i.id().clone(),
        key: i.public_key(),
        url: None,
    };
    let rt = peerlink_host::smol_runtime::rt();
    let mut bob_config = Config::ephemeral();
    bob_config.relay = Some(relay.clone());
    bob_config.peers = vec![peer(&alice_id)];
    let mut alice_config = bob_config.clone();
    alice_config.peers = vec![peer(&bob_id)];
    let (bob, _) = Peerlink::mount(Arc::clone(&rt), bob_config, bob_id.duplicate()).await?;
    let (alice, _) = Peerlink::mount(rt, alice_config, alice_id.duplicate()).await?;
    let bob_events = bob.incoming().await?;
    let alice_events = alice.incoming().await?;
    bob.init_websocket_connection(&relay.entity).await?;
    while !bob.is_websocket_connected(&relay.entity).await? {
        smol::Timer::after(Duration::from_millis(5)).await;
    }
    let (credits, taken) = async_channel::bounded::<()>(window.max(1));
    for _ in 0..window.max(1) {
        let _ = credits.try_send(());
    }
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (received, credits) = (Arc::clone(&received), credits.clone());
        smol::spawn(async move {
            while let Ok(e) = bob_events.recv().await {
                if let Event::Message { .. } = e {
                    received.fetch_add(1, Ordering::Relaxed);
                    let _ = credits.try_send(());
                }
            }
        })
    };
    // Alice's own events (deliveries) are taken and dropped, as the Python side's pump does.
    let drain = smol::spawn(async move { while alice_events.recv().await.is_ok() {} });
    let to = bob.id().clone();
    let sender = {
        let stop = Arc::clone(&stop);
        let alice = alice.clone();
        smol::spawn(async move {
            let payload = vec![7u8; size];
            while !stop.load(Ordering::Relaxed) {
                if taken.recv().await.is_err() {
                    break;
                }
                let sent = alice
                    .send_message(
                        &to,
                        MessageType::PeerMessage,
                        payload.clone(),
                        Default::default(),
                    )
                    .await;
                if sent.is_err() {
                    break;
                }
            }
        })
    };
    // Warm-up: a second, then the measured time.
    smol::Timer::after(Duration::from_secs(1)).await;
    let (start, before) = (Instant::now(), received.load(Ordering::Relaxed));
    smol::Timer::after(secs).await;
    let (elapsed, after) = (start.elapsed(), received.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    credits.close();
    let _ = alice.shutdown().await;
    let _ = bob.shutdown().await;
    sender.await;
    counter.await;
    drain.await;
    Ok((after - before, elapsed.as_secs_f64()))
}

/// Runs the Rust side of the benchmark against the relay at `relay_url` (id and key given):
/// `(messages received, seconds)`.
#[pyfunction]
pub fn _bench_rust(
    py: Python<'_>,
    relay_url: String,
    relay_id: &str,
    relay_key: &str,
    size: usize,
    secs: f64,
    window: usize,
) -> PyResult<(u64, f64)> {
    errors::guard(py, || {
        let entity = crate::identity::entity(py, relay_id)?;
        let key = peerlink_core::PublicKey::from_b64u(relay_key)
            .map_err(|e| errors::invalid(py, format!("relay_key: {e}")))?;
        let secs = seconds(py, "seconds", Some(secs))?.unwrap_or_default();
        let relay = TrustedPeer { entity, key, url: Some(relay_url) };
        match wait(py, run(relay, size, secs, window), None)? {
            Some(r) => r.map_err(|e| errors::api(py, e)),
            None => Err(errors::error(py, "InternalError", "benchmark did not end")),
        }
    })
}
