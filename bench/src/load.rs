//! The load loop every scenario shares: a bounded window of messages in flight, either as fast
//! as acknowledgements come back (saturation) or at a fixed offered rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketSender;
use async_tungstenite::tungstenite::Message;
use peerlink_core::node::SendOptions;
use peerlink_core::{EntityId, MessageType};
use peerlink_smol::Handle;
use smol::channel::{Receiver, Sender};
use smol::future::FutureExt as _;
use smol::net::TcpStream;

use crate::BoxError;
use crate::stats::{Clock, Percentiles, Recorder, cpu_time};

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// As fast as the window allows.
    Saturate,
    /// This many messages per second (still bounded by the window).
    Rate(f64),
}

/// Where the sender writes.
pub enum Sink {
    /// A raw WebSocket (the baselines).
    Ws(WebSocketSender<TcpStream>),
    /// A peerlink node sending to `to`. Each `send_message` is a request to the node task, so
    /// sends are issued as concurrent tasks (as an application with many senders would) rather
    /// than one round trip after another; a refused send frees its window slot and is counted.
    Peer {
        /// The sending node.
        handle: Handle,
        /// The receiving peer.
        to: Arc<EntityId>,
        /// The window's other end, to free a slot when a send is refused.
        release: Receiver<()>,
        /// Sends refused so far.
        refused: Arc<AtomicU64>,
    },
}

impl Sink {
    /// Sends `payload` (for a peerlink node: spawns the send, see [`Sink::Peer`]).
    pub async fn send(&mut self, payload: Vec<u8>) -> Result<(), BoxError> {
        match self {
            Sink::Ws(ws) => ws.send(Message::Binary(payload.into())).await?,
            Sink::Peer { handle, to, release, refused } => {
                let (handle, to) = (handle.clone(), to.clone());
                let (release, refused) = (release.clone(), Arc::clone(refused));
                smol::spawn(async move {
                    let opts = SendOptions::default();
                    if handle
                        .send_message(&to, MessageType::PeerMessage, payload, opts)
                        .await
                        .is_err()
                    {
                        refused.fetch_add(1, Ordering::Relaxed);
                        let _ = release.try_recv();
                    }
                })
                .detach();
            }
        }
        Ok(())
    }
}

/// A sender, its window and the receiving side's recorder. The scenario's own tasks record
/// arrivals and take one item off `slots`' receiver for every acknowledgement.
pub struct Pipe {
    /// Where messages go.
    pub sink: Sink,
    /// One item per message in flight; bounded by the window.
    pub slots: Sender<()>,
    /// What the receiver saw.
    pub recorder: Arc<Recorder>,
    /// The bench clock the payloads are stamped with.
    pub clock: Clock,
    /// Another process the path runs through (the cluster's Redis), whose CPU time per message
    /// is measured too.
    pub other_cpu: Option<u32>,
}

/// What one run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    /// Messages that arrived in the window.
    pub messages: u64,
    /// Their rate.
    pub msgs_per_s: f64,
    /// Payload MiB per second.
    pub mib_per_s: f64,
    /// One-way latency of the messages sent in the window.
    pub latency: Percentiles,
    /// CPU time of the whole process per message arrived, in microseconds.
    pub cpu_us_per_msg: f64,
    /// CPU time of the pipe's other process ([`Pipe::other_cpu`]) per message arrived, in
    /// microseconds (from 10 ms clock ticks).
    pub other_cpu_us_per_msg: Option<f64>,
    /// The offered rate (`None`: saturation).
    pub offered: Option<f64>,
}

/// Waits for `f` until `deadline`; `None` if it passed first.
pub(crate) async fn until<T>(deadline: Instant, f: impl Future<Output = T>) -> Option<T> {
    let left = deadline.saturating_duration_since(Instant::now());
    async { Some(f.await) }
        .or(async {
            smol::Timer::after(left).await;
            None
        })
        .await
}

/// Runs `pipe` with `size`-byte messages for `secs` seconds (longer, up to 30 s, until at least
/// two messages arrived, for the largest sizes).
pub async fn run(
    pipe: &mut Pipe,
    size: usize,
    mode: Mode,
    secs: f64,
) -> Result<Measured, BoxError> {
    // Warm up: one message through (sessions, buffers), and its acknowledgement back.
    pipe.recorder.reset();
    let warm = Instant::now() + Duration::from_secs(30);
    pipe.slots.send(()).await?;
    pipe.sink.send(pipe.clock.stamp(size)).await?;
    while pipe.recorder.arrived.load(Ordering::SeqCst) == 0 || !pipe.slots.is_empty() {
        if Instant::now() > warm {
            return Err("the warm-up message got no acknowledgement within 30 s".into());
        }
        smol::Timer::after(Duration::from_millis(2)).await;
    }

    let other_cpu = |pid: Option<u32>| pid.and_then(|p| crate::stats::process_cpu_time(p).ok());
    let other0 = other_cpu(pipe.other_cpu);
    let cpu0 = cpu_time();
    let started = Instant::now();
    let start_ns = pipe.recorder.open();
    let min_end = started + Duration::from_secs_f64(secs);
    let max_end = started + Duration::from_secs(30).max(Duration::from_secs_f64(secs));
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        let arrived = pipe.recorder.arrived.load(Ordering::Relaxed);
        if now >= max_end || (now >= min_end && arrived >= 3) {
            break;
        }
        let end = if now >= min_end { max_end } else { min_end };
        if let Mode::Rate(r) = mode {
            let due = (started.elapsed().as_secs_f64() * r) as u64;
            if sent >= due {
                let wait = Duration::from_secs_f64(((sent + 1) as f64 / r).max(0.0));
                let at = (started + wait).min(end);
                smol::Timer::at(at).await;
                continue;
            }
        }
        if until(end, pipe.slots.send(())).await.is_none() {
            continue;
        }
        pipe.sink.send(pipe.clock.stamp(size)).await?;
        sent += 1;
    }
    let end_ns = pipe.recorder.close();
    if let Sink::Peer { refused, .. } = &pipe.sink
        && refused.load(Ordering::Relaxed) > 0
    {
        return Err(format!("{} sends were refused", refused.load(Ordering::Relaxed)).into());
    }
    let cpu = cpu_time().saturating_sub(cpu0);
    let other = other0.zip(other_cpu(pipe.other_cpu)).map(|(a, b)| b.saturating_sub(a));
    let (messages, bytes, lat) = pipe.recorder.take();
    // Let what is in flight drain so the next run starts clean.
    let drain = Instant::now() + Duration::from_secs(20);
    while !pipe.slots.is_empty() && Instant::now() < drain {
        smol::Timer::after(Duration::from_millis(5)).await;
    }
    let secs = (end_ns.saturating_sub(start_ns)) as f64 / 1e9;
    let per_msg = if messages > 0 { cpu.as_secs_f64() * 1e6 / messages as f64 } else { 0.0 };
    Ok(Measured {
        messages,
        msgs_per_s: messages as f64 / secs,
        mib_per_s: bytes as f64 / secs / (1024.0 * 1024.0),
        latency: Percentiles::of(&lat),
        cpu_us_per_msg: per_msg,
        other_cpu_us_per_msg: other.map(|d| d.as_secs_f64() * 1e6 / messages.max(1) as f64),
        offered: match mode {
            Mode::Saturate => None,
            Mode::Rate(r) => Some(r),
        },
    })
}
