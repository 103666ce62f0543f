//! `peerlink-bench`: loopback benchmarks of peerlink against a plain async-tungstenite baseline
//! measured in the same run. `docs/benchmarks.md` explains how to run it and read it.

mod baseline;
mod child;
mod durable;
mod floor;
mod load;
mod memory;
mod peer;
mod redis;
mod report;
mod rounds;
mod stats;
mod workers;

use std::path::PathBuf;

/// The allocator the `peerlink` binary uses (feature `mimalloc` of the `peerlink` crate), so the
/// figures are the ones a deployment sees; the baselines run under it too.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

use crate::child::Server;
use crate::load::{Measured, Mode, Pipe};
use crate::memory::Footprint;
use crate::peer::{NodePlace, Path};
use crate::rounds::By;
use crate::stats::Clock;

/// The binary's error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "peerlink-bench",
    about = "Loopback benchmarks of peerlink against a raw WebSocket baseline"
)]
struct Args {
    /// Seconds each throughput or latency run measures.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds of the throughput and latency runs: each round runs every path once, in turn,
    /// and a path keeps its median run; its ratio to the echo is the median of each round's.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Message sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,1024,65536,4194304")]
    sizes: Vec<usize>,
    /// Messages in flight at most (fewer for large sizes: at most 32 MiB in flight).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Offered load of the fixed-rate latency runs (64 B messages), messages per second;
    /// lowered to 80 % of a path's saturation when that is below it.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Idle connection counts for the memory measurement (ascending).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    conns: Vec<usize>,
    /// Concurrent workers for handshakes and baseline connects (throughput there rises with
    /// concurrency up to about 64 on 2 CPUs, docs/benchmarks.md).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Workers opening the idle connections of the memory measurement.
    #[arg(long, default_value_t = 64)]
    setup_workers: usize,
    /// Results folder (`<date>.md`, `<date>.svg`, `latest.md`, `latest.svg`); `-` writes nothing.
    #[arg(long, default_value = "bench/results")]
    out: String,
    /// Client pairs of the `workers` measurement (each pair's window: `--window` / pairs, at
    /// least 2, so that as many messages are in flight in all as on one pair elsewhere).
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Run only these paths (`echo`, `forward`, `ws`, `ws-signed`, `ws-json`, `http`, `ws-tokio`,
    /// `cluster`)
    /// and skip the floor, connection and memory measurements (for profiling one path);
    /// `cluster` brings `ws` along (the single relay it is compared with); `memory` also runs
    /// the memory measurement (`--only memory` alone: just that), `handshakes` the connection
    /// measurements (baseline connects and full handshakes), and `floor` the protocol's CPU
    /// floor (public-key operations and the core's work, one thread, no I/O); `workers` the
    /// `peerlink serve --workers 1` / `--workers 2` measurement (it needs the release `peerlink`
    /// binary next to this one: `cargo build --release -p peerlink`); `durable` both endpoints
    /// in memory against both on redb (fsync always, and once never), relayed and direct,
    /// 64 B and 64 KiB (those of `--sizes`, or both if it names neither).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Threads of smol's global executor, which runs every node and baseline task (sets
    /// `SMOL_THREADS`; default: the CPUs online).
    #[arg(long)]
    threads: Option<usize>,
    /// Internal: run as the child server of the memory measurement (`node` or `echo`).
    #[arg(long, hide = true)]
    child: Option<String>,
    /// Internal: the largest connection count the child must accept.
    #[arg(long, hide = true, default_value_t = 10_000)]
    child_max: usize,
}

/// One scenario of the relayed-message table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The one-hop echo baseline.
    Echo,
    /// The two-hop forwarding baseline.
    Forward,
    /// A peerlink path.
    Peer(Path),
}

impl Kind {
    /// Every scenario, baselines first.
    pub const ALL: [Kind; 8] = [
        Kind::Echo,
        Kind::Forward,
        Kind::Peer(Path::Ws { sign_all: false }),
        Kind::Peer(Path::WsJson),
        Kind::Peer(Path::Ws { sign_all: true }),
        Kind::Peer(Path::Http),
        Kind::Peer(Path::WsTokio),
        Kind::Peer(Path::Cluster),
    ];

    /// The single relay the cluster path is compared with: peerlink ws, `sign_all` off.
    pub const SINGLE_RELAY: Kind = Kind::Peer(Path::Ws { sign_all: false });

    /// The short name `--only` takes.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::Forward => "forward",
            Kind::Peer(Path::Ws { sign_all: false }) => "ws",
            Kind::Peer(Path::Ws { sign_all: true }) => "ws-signed",
            Kind::Peer(Path::WsJson) => "ws-json",
            Kind::Peer(Path::Http) => "http",
            Kind::Peer(Path::WsTokio) => "ws-tokio",
            Kind::Peer(Path::Cluster) => "cluster",
        }
    }

    /// The label in tables and charts.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Echo => "baseline echo (1 hop)",
            Kind::Forward => "baseline forward (2 hops)",
            Kind::Peer(Path::Ws { sign_all: false }) => "peerlink ws, sign_all off",
            Kind::Peer(Path::Ws { sign_all: true }) => "peerlink ws, sign_all on",
            Kind::Peer(Path::WsJson) => "peerlink ws, JSON links",
            Kind::Peer(Path::Http) => "peerlink http",
            Kind::Peer(Path::WsTokio) => "peerlink ws on tokio",
            Kind::Peer(Path::Cluster) => "peerlink cluster (2 nodes, Redis)",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The scenario.
    pub kind: Kind,
    /// Message size in bytes.
    pub size: usize,
    /// What it measured.
    pub m: Measured,
    /// peerlink: frames the sender sent per message delivered (chunks, re-sends, acks).
    pub frames_per_msg: Option<f64>,
    /// Its msg/s (saturation) or p99 (fixed rate) over the echo's, round by round.
    pub vs_echo: Option<rounds::Spread>,
    /// The cluster path: its msg/s (saturation) or p99 (fixed rate) over the single relay's
    /// ([`Kind::SINGLE_RELAY`]), round by round.
    pub vs_relay: Option<rounds::Spread>,
    /// The cluster path: frames its nodes handed to one another through Redis per message
    /// delivered (the message one way, its acknowledgement the other).
    pub broker_frames_per_msg: Option<f64>,
}

/// Everything one run of the tool measured.
#[derive(Debug, Clone)]
pub struct Results {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Seconds per run.
    pub seconds: f64,
    /// Rounds of the throughput and latency runs.
    pub rounds: usize,
    /// Saturation runs.
    pub saturation: Vec<Row>,
    /// Fixed-rate runs (64 B).
    pub fixed: Vec<Row>,
    /// Baseline: WebSocket connections (connect, upgrade, one echo, close) per second.
    pub ws_connects_per_s: f64,
    /// Baseline: CPU time of the process per connection, µs.
    pub ws_connect_cpu_us: f64,
    /// Full peerlink handshakes, the client nodes started beforehand.
    pub handshakes: peer::Handshakes,
    /// The same with the node and its client nodes on tokio.
    pub handshakes_tokio: peer::Handshakes,
    /// The same with every node's public-key work on its own task (`offload_work` off).
    pub handshakes_serial: peer::Handshakes,
    /// The same against a node in a child process, whose own CPU time is measured.
    pub handshakes_child_node: peer::Handshakes,
    /// Full peerlink handshakes including the start-up (and shutdown) of a new client node each.
    pub handshakes_with_startup: peer::Handshakes,
    /// Idle authenticated peerlink connections.
    pub mem_node: Vec<Footprint>,
    /// Idle baseline echo connections.
    pub mem_echo: Vec<Footprint>,
    /// The protocol's CPU floor on one thread (no I/O), when measured.
    pub floor: Option<floor::Floor>,
    /// Handshakes and baseline connects run at a time.
    pub concurrency: usize,
    /// `peerlink serve --workers 1` against `--workers 2`, when measured.
    pub workers: Option<workers::Workers>,
    /// Why the workers measurement was skipped in a full run (no `peerlink` binary).
    pub workers_skipped: Option<String>,
    /// Durable endpoints (redb) against endpoints in memory, when measured.
    pub durable: Option<durable::Durable>,
    /// CPUs online.
    pub cpus: usize,
    /// Threads of smol's global executor.
    pub threads: usize,
}

fn executor_threads() -> usize {
    std::env::var("SMOL_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1)
}

fn window_for(window: usize, size: usize) -> usize {
    window.min((32 << 20) / size.max(1)).max(2)
}

async fn one(
    kind: Kind,
    size: usize,
    window: usize,
    mode: Mode,
    secs: f64,
) -> Result<Row, BoxError> {
    let clock = Clock::new();
    let w = window_for(window, size);
    let (mut pipe, trio): (Pipe, _) = match kind {
        Kind::Echo => (baseline::echo_pipe(baseline::echo_server().await?, w, clock).await?, None),
        Kind::Forward => {
            (baseline::forward_pipe(baseline::forwarder().await?, w, clock).await?, None)
        }
        Kind::Peer(path) => {
            let (p, t) = peer::pipe(path, w, clock).await?;
            (p, Some(t))
        }
    };
    let (frames0, broker0) = match &trio {
        Some(t) => (t.frames_sent().await, t.broker_frames().await),
        None => (0, 0),
    };
    let m = load::run(&mut pipe, size, mode, secs).await?;
    let (mut frames_per_msg, mut broker_frames_per_msg) = (None, None);
    if let Some(t) = trio {
        let per_msg = |n: u64| n as f64 / m.messages.max(1) as f64;
        frames_per_msg = Some(per_msg(t.frames_sent().await.saturating_sub(frames0)));
        if t.redis.is_some() {
            broker_frames_per_msg = Some(per_msg(t.broker_frames().await.saturating_sub(broker0)));
        }
        t.shutdown().await;
    }
    let redis_cpu =
        m.other_cpu_us_per_msg.map_or(String::new(), |c| format!(" (+{c:.1} µs Redis)"));
    eprintln!(
        "  {:<34} {:>8} B  {:>10.0} msg/s  {:>8.1} MiB/s  p99 {:>9.1} µs  CPU {:>6.1} µs/msg{redis_cpu}",
        kind.label(),
        size,
        m.msgs_per_s,
        m.mib_per_s,
        m.latency.p99,
        m.cpu_us_per_msg,
    );
    Ok(Row { kind, size, m, frames_per_msg, vs_echo: None, vs_relay: None, broker_frames_per_msg })
}

async fn bench(args: &Args) -> Result<Results, BoxError> {
    let wanted = |what: &str| args.only.is_empty() || args.only.iter().any(|o| o == what);
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|&k| wanted(k.short()) || (k == Kind::SINGLE_RELAY && wanted("cluster")))
        .collect();
    if kinds.contains(&Kind::Peer(Path::Cluster)) {
        // Before anything is measured, rather than after the other paths' runs.
        redis::check_installed()?;
    }
    let mut floor = None;
    if wanted("floor") {
        let budget = std::time::Duration::from_secs_f64((args.seconds / 8.0).clamp(0.005, 0.3));
        let f = floor::measure(budget)?;
        eprintln!(
            "floor (one thread): sign {:.1} µs, verify {:.1} µs, handshake {:.0} µs, message {:.2} µs ({:.1} µs signed)",
            f.sign_us, f.verify_us, f.handshake_us, f.message_us, f.signed_message_us
        );
        floor = Some(f);
    }
    let mut saturation = Vec::new();
    let rounds = args.rounds.max(1);
    eprintln!("saturation ({} s per run, {rounds} rounds)", args.seconds);
    for &size in &args.sizes {
        let mut runs = Vec::new();
        for _ in 0..rounds {
            let mut round = Vec::new();
            for &kind in &kinds {
                round.push(one(kind, size, args.window, Mode::Saturate, args.seconds).await?);
            }
            runs.push(round);
        }
        saturation.extend(rounds::reduce(&runs, By::Throughput));
    }
    eprintln!("fixed offered load, 64 B");
    let mut runs = Vec::new();
    for _ in 0..rounds {
        let mut round = Vec::new();
        for &kind in &kinds {
            let sat =
                saturation.iter().find(|r| r.kind == kind && r.size == 64).map(|r| r.m.msgs_per_s);
            let rate = sat.map_or(args.rate, |s| args.rate.min(0.8 * s)).max(1.0);
            round.push(one(kind, 64, args.window, Mode::Rate(rate), args.seconds).await?);
        }
        runs.push(round);
    }
    let fixed = rounds::reduce(&runs, By::P99);
    // `--only` with paths alone skips the floor, connection and memory runs; `floor`,
    // `handshakes` and `memory` ask for those.
    let (mut ws_connects_per_s, mut ws_connect_cpu_us) = (0.0, 0.0);
    let (mut handshakes, mut handshakes_tokio, mut handshakes_child_node) = Default::default();
    let (mut handshakes_with_startup, mut handshakes_serial) = Default::default();
    if wanted("handshakes") {
        eprintln!("connections");
        let echo = baseline::echo_server().await?;
        let cpu0 = stats::cpu_time();
        let started = std::time::Instant::now();
        ws_connects_per_s = baseline::connects_per_s(echo, args.seconds, args.concurrency).await;
        let connects = ws_connects_per_s * started.elapsed().as_secs_f64();
        ws_connect_cpu_us =
            stats::cpu_time().saturating_sub(cpu0).as_secs_f64() * 1e6 / connects.max(1.0);
        eprintln!(
            "  baseline: {ws_connects_per_s:.0} ws connects/s, {ws_connect_cpu_us:.0} µs CPU each"
        );
        handshakes = peer::handshakes(args.seconds, args.concurrency, NodePlace::Here).await?;
        eprintln!(
            "  {:.0} handshakes/s, {:.0} µs CPU each (client nodes already running)",
            handshakes.per_s, handshakes.cpu_us
        );
        handshakes_tokio =
            peer::handshakes(args.seconds, args.concurrency, NodePlace::HereOnTokio).await?;
        eprintln!(
            "  {:.0} handshakes/s, {:.0} µs CPU each, on tokio ({:.2}x smol)",
            handshakes_tokio.per_s,
            handshakes_tokio.cpu_us,
            handshakes_tokio.per_s / handshakes.per_s.max(f64::MIN_POSITIVE)
        );
        handshakes_serial =
            peer::handshakes(args.seconds, args.concurrency, NodePlace::HereSerial).await?;
        eprintln!(
            "  {:.0} handshakes/s, public-key work on the node task ({:.2}x with it handed out)",
            handshakes_serial.per_s,
            handshakes.per_s / handshakes_serial.per_s.max(f64::MIN_POSITIVE)
        );
        handshakes_child_node =
            peer::handshakes(args.seconds, args.concurrency, NodePlace::Child).await?;
        eprintln!(
            "  {:.0} handshakes/s, the node in a child process: {:.0} µs of its CPU each",
            handshakes_child_node.per_s,
            handshakes_child_node.node_cpu_us.unwrap_or(0.0)
        );
        handshakes_with_startup =
            peer::handshakes_with_startup(args.seconds, args.concurrency).await?;
        eprintln!(
            "  {:.0} handshakes/s, {:.0} µs CPU each (including client start-up)",
            handshakes_with_startup.per_s, handshakes_with_startup.cpu_us
        );
    }
    let (mut mem_node, mut mem_echo) = (Vec::new(), Vec::new());
    if wanted("memory") {
        eprintln!("memory per idle connection");
        mem_node = memory::footprints(Server::Node, &args.conns, args.setup_workers).await?;
        mem_echo = memory::footprints(Server::Echo, &args.conns, args.setup_workers).await?;
    }
    let (mut workers, mut workers_skipped) = (None, None);
    if wanted("workers") {
        let found = workers::peerlink_binary();
        match found {
            // A full run goes on without it, and says so; `--only workers` stops.
            Err(e) if args.only.is_empty() => {
                eprintln!("workers: skipped: {e}");
                workers_skipped = Some(e.to_string());
            }
            _ => {
                let window = (args.window / args.pairs.max(1)).max(2);
                let w = workers::measure(args.pairs, window, args.seconds, rounds).await?;
                workers = Some(w);
            }
        }
    }
    let mut durable = None;
    if wanted("durable") {
        durable = Some(durable::measure_all(&args.sizes, args.window, args.seconds, rounds).await?);
    }
    Ok(Results {
        date: stats::today(),
        seconds: args.seconds,
        rounds,
        saturation,
        fixed,
        ws_connects_per_s,
        ws_connect_cpu_us,
        handshakes,
        handshakes_tokio,
        handshakes_serial,
        handshakes_child_node,
        handshakes_with_startup,
        mem_node,
        mem_echo,
        floor,
        workers,
        workers_skipped,
        durable,
        concurrency: args.concurrency,
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        threads: executor_threads(),
    })
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = args.threads.unwrap_or(cpus).max(1);
    // SAFETY: nothing else runs yet (no thread has been started, smol's executor included).
    unsafe { std::env::set_var("SMOL_THREADS", threads.to_string()) };
    if let Some(kind) = &args.child {
        return child::child(Server::from_arg(kind)?, args.child_max);
    }
    let results = smol::block_on(bench(&args))?;
    let md = report::markdown(&results);
    println!("{md}");
    if args.out != "-" {
        let dir = PathBuf::from(&args.out);
        std::fs::create_dir_all(&dir)?;
        let svg = report::svg(&results)?;
        for name in [results.date.as_str(), "latest"] {
            std::fs::write(dir.join(format!("{name}.md")), &md)?;
            std::fs::write(dir.join(format!("{name}.svg")), &svg)?;
        }
        eprintln!("wrote {}", dir.join(format!("{}.md", results.date)).display());
    }
    Ok(())
}
