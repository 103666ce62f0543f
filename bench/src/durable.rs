//! The `durable` measurement: the same pipe with both endpoints keeping their state in memory
//! (the baseline) and with both durable (a redb file each, in a temporary directory, `fsync`
//! always; once also `fsync` never), side by side in every round. Two routes (alice → relay →
//! bob, the relay with the same store as the endpoints; and alice → bob directly) and two sizes (64 B, 64 KiB). Measured:
//! msg/s delivered at the receiver, one-way latency, the process's CPU time per message, and the
//! store counters of the sender and the receiver (`Snapshot::store`: commits, fsyncs, writes,
//! bytes written) over the measuring window, per message.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, Identity};
use peerlink_host::metrics::StoreSnapshot;
use peerlink_host::{Fsync, StorageKind, StorageSettings};
use peerlink_smol::{Config, Handle, Peerlink, TrustedPeer};

use crate::BoxError;
use crate::load::Sink;
use crate::rounds::Spread;
use crate::stats::{Clock, Percentiles, Recorder, cpu_time};

/// The message sizes measured.
pub const SIZES: [usize; 2] = [64, 64 << 10];

/// How a message goes from alice to bob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// alice → relay → bob over WebSocket; the relay has a store as the endpoints do.
    Relayed,
    /// alice → bob over WebSocket: alice knows bob's URL, and there is no relay.
    Direct,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Relayed => "relayed",
            Route::Direct => "direct",
        }
    }
}

/// Where alice and bob keep their state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// In memory (the baseline).
    Memory,
    /// A redb file each, flushed as [`Fsync`] says.
    Redb(Fsync),
}

impl Store {
    fn label(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Redb(Fsync::Always) => "redb, fsync always",
            Store::Redb(Fsync::Never) => "redb, fsync never",
        }
    }
}

/// One measured configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// The route.
    pub route: Route,
    /// Payload bytes.
    pub size: usize,
    /// The endpoints' store.
    pub store: Store,
}

/// Every case of one round, in the order they run: per route and size (those of [`SIZES`] in
/// `sizes`, or all of them if none is), memory first, then durable (and, for 64 B relayed,
/// durable without fsync).
pub fn cases(sizes: &[usize]) -> Vec<Case> {
    let mut chosen: Vec<usize> = SIZES.into_iter().filter(|s| sizes.contains(s)).collect();
    if chosen.is_empty() {
        chosen = SIZES.to_vec();
    }
    let mut v = Vec::new();
    for route in [Route::Relayed, Route::Direct] {
        for &size in &chosen {
            let mut stores = vec![Store::Memory, Store::Redb(Fsync::Always)];
            if route == Route::Relayed && size == 64 {
                stores.push(Store::Redb(Fsync::Never));
            }
            v.extend(stores.into_iter().map(|store| Case { route, size, store }));
        }
    }
    v
}

/// Store counters of the sender and the receiver over the measuring window, per message
/// delivered in it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerMsg {
    /// Transactions committed (sender, receiver).
    pub commits: (f64, f64),
    /// Flushes waited for (sender, receiver).
    pub fsyncs: (f64, f64),
    /// Puts and deletes (sender, receiver).
    pub writes: (f64, f64),
    /// Bytes of keys and values written, both together.
    pub bytes_written: f64,
}

/// One run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// What ran.
    pub case: Case,
    /// Messages delivered in the window.
    pub messages: u64,
    /// Their rate.
    pub msgs_per_s: f64,
    /// One-way latency of the messages sent in the window.
    pub latency: Percentiles,
    /// CPU time of the whole process (nodes, store threads, load) per message, µs.
    pub cpu_us: f64,
    /// The store counters per message (durable runs).
    pub store: Option<PerMsg>,
}

/// A case's median run (by msg/s) and its msg/s and CPU over the memory run of the same route,
/// size and round.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The median run.
    pub run: Run,
    /// msg/s over the memory run's, round by round (`None` for the memory row).
    pub vs_memory: Option<Spread>,
    /// CPU per message over the memory run's, round by round.
    pub cpu_vs_memory: Option<Spread>,
}

/// The whole measurement.
#[derive(Debug, Clone)]
pub struct Durable {
    /// Seconds each run measures.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// Messages in flight at most.
    pub window: usize,
    /// Where the store files were.
    pub dir: PathBuf,
    /// One row per case.
    pub rows: Vec<Row>,
}

/// A fresh directory for one run's store files.
fn run_dir(base: &Path) -> Result<PathBuf, BoxError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = base.join(format!(
        "peerlink-bench-durable-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn storage(store: Store, file: PathBuf) -> StorageSettings {
    match store {
        Store::Memory => StorageSettings::default(),
        Store::Redb(fsync) => StorageSettings {
            kind: StorageKind::Redb,
            path: Some(file),
            fsync,
            ..StorageSettings::default()
        },
    }
}

fn trusted(i: &Identity, url: Option<String>) -> TrustedPeer {
    TrustedPeer { entity: i.id().clone(), key: i.public_key(), url }
}

fn identity(name: &str) -> Result<Identity, BoxError> {
    Ok(peerlink_smol::keys::generate(EntityId::new(name)?)?)
}

async fn store_of(h: &Handle) -> Result<StoreSnapshot, BoxError> {
    Ok(h.snapshot().await?.store.unwrap_or_default())
}

/// Both endpoints' store counters, asked for at the same time.
async fn stores(a: &Handle, b: &Handle) -> Result<(StoreSnapshot, StoreSnapshot), BoxError> {
    let (sa, sb) = smol::future::zip(store_of(a), store_of(b)).await;
    Ok((sa?, sb?))
}

/// The nodes of one run and where their files are.
struct Nodes {
    relay: Option<Handle>,
    a: Handle,
    b: Handle,
    dir: PathBuf,
}

impl Nodes {
    async fn start(case: Case, base: &Path) -> Result<(Self, Identity), BoxError> {
        let dir = run_dir(base)?;
        let (r, a, b) = (identity("relay")?, identity("alice")?, identity("bob")?);
        let pref = TransportPreference::WebsocketOnly;
        let relay = match case.route {
            Route::Relayed => {
                let mut cfg = Config::ephemeral();
                cfg.node = crate::peer::node_config(TransportPreference::WebsocketFirst, false);
                cfg.peers = vec![trusted(&a, None), trusted(&b, None)];
                // The relay is durable with the endpoints: it writes only what waits in a
                // mailbox, so nothing while bob is linked.
                cfg.storage = storage(case.store, dir.join("relay.redb"));
                Some(Peerlink::start(cfg, r.duplicate()).await?)
            }
            Route::Direct => None,
        };
        let via = relay.as_ref().map(|h| trusted(&r, Some(h.base_url())));
        let mut cb = Config::ephemeral();
        cb.node = crate::peer::node_config(pref, false);
        cb.peers = vec![trusted(&a, None)];
        cb.relay = via.clone();
        cb.storage = storage(case.store, dir.join("bob.redb"));
        let hb = Peerlink::start(cb, b.duplicate()).await?;
        let mut ca = Config::ephemeral();
        ca.node = crate::peer::node_config(pref, false);
        let b_url = if via.is_some() { None } else { Some(hb.base_url()) };
        ca.peers = vec![trusted(&b, b_url)];
        ca.relay = via;
        ca.storage = storage(case.store, dir.join("alice.redb"));
        let ha = Peerlink::start(ca, a.duplicate()).await?;
        Ok((Nodes { relay, a: ha, b: hb, dir }, b))
    }

    async fn shutdown(self) {
        for h in [self.a, self.b].into_iter().chain(self.relay) {
            let _ = h.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One run of `case`: start the nodes, one message through (warm-up), then `window` messages
/// in flight for `secs`, each send a task of its own (`send_message` returns after the
/// sender's commit), a slot freed by `Event::Delivered`; arrivals counted at bob.
async fn run(case: Case, window: usize, secs: f64, base: &Path) -> Result<Run, BoxError> {
    let (nodes, b) = Nodes::start(case, base).await?;
    let result = measure(&nodes, b.id(), case, window, secs).await;
    nodes.shutdown().await;
    let run = result?;
    let store = run.store.map_or(String::new(), |p| {
        format!(
            "  commits/msg {:.3}+{:.3}  fsyncs/msg {:.3}+{:.3}  writes/msg {:.2}+{:.2}  {:.0} B written/msg",
            p.commits.0,
            p.commits.1,
            p.fsyncs.0,
            p.fsyncs.1,
            p.writes.0,
            p.writes.1,
            p.bytes_written
        )
    });
    eprintln!(
        "  {:<8} {:>6} B {:<19} {:>9.0} msg/s  p99 {:>9.1} µs  CPU {:>7.1} µs/msg{store}",
        case.route.label(),
        case.size,
        case.store.label(),
        run.msgs_per_s,
        run.latency.p99,
        run.cpu_us,
    );
    Ok(run)
}

async fn measure(
    nodes: &Nodes,
    to: &EntityId,
    case: Case,
    window: usize,
    secs: f64,
) -> Result<Run, BoxError> {
    let clock = Clock::new();
    let recorder = Arc::new(Recorder::new(clock));
    let (slots, taken) = smol::channel::bounded::<()>(window.max(1));
    let a_events = nodes.a.incoming().await?;
    let release = taken.clone();
    let acks = smol::spawn(async move {
        while let Ok(e) = a_events.recv().await {
            if matches!(e, Event::Delivered { .. } | Event::Failed { .. }) {
                let _ = taken.try_recv();
            }
        }
    });
    let b_events = nodes.b.incoming().await?;
    let rec = Arc::clone(&recorder);
    let arrivals = smol::spawn(async move {
        while let Ok(e) = b_events.recv().await {
            if let Event::Message { payload, .. } = e {
                rec.arrive(&payload);
            }
        }
    });
    let refused = Arc::new(AtomicU64::new(0));
    let mut sink = Sink::Peer {
        handle: nodes.a.clone(),
        to: Arc::new(to.clone()),
        release,
        refused: Arc::clone(&refused),
    };

    // Warm up: one message through (link, session) and its acknowledgement back.
    let warm = Instant::now() + Duration::from_secs(30);
    slots.send(()).await?;
    sink.send(clock.stamp(case.size)).await?;
    while recorder.arrived.load(Ordering::SeqCst) == 0 || !slots.is_empty() {
        if Instant::now() > warm {
            return Err("the warm-up message got no acknowledgement within 30 s".into());
        }
        smol::Timer::after(Duration::from_millis(2)).await;
    }

    let (a0, b0) = stores(&nodes.a, &nodes.b).await?;
    let cpu0 = cpu_time();
    let start_ns = recorder.open();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        if crate::load::until(end, slots.send(())).await.is_none() {
            break;
        }
        sink.send(clock.stamp(case.size)).await?;
    }
    let end_ns = recorder.close();
    let cpu = cpu_time().saturating_sub(cpu0);
    let (a1, b1) = stores(&nodes.a, &nodes.b).await?;
    let (messages, _, lat) = recorder.take();
    // Let what is in flight drain before the nodes stop.
    let drain = Instant::now() + Duration::from_secs(30);
    while !slots.is_empty() && Instant::now() < drain {
        smol::Timer::after(Duration::from_millis(5)).await;
    }
    drop((acks, arrivals));
    if refused.load(Ordering::Relaxed) > 0 {
        return Err(format!("{} sends were refused", refused.load(Ordering::Relaxed)).into());
    }
    if messages == 0 {
        return Err(format!("no message arrived in {secs} s").into());
    }
    let n = messages as f64;
    let per = |x1: u64, x0: u64| x1.saturating_sub(x0) as f64 / n;
    let store = matches!(case.store, Store::Redb(_)).then(|| PerMsg {
        commits: (per(a1.commits, a0.commits), per(b1.commits, b0.commits)),
        fsyncs: (per(a1.fsyncs, a0.fsyncs), per(b1.fsyncs, b0.fsyncs)),
        writes: (per(a1.writes, a0.writes), per(b1.writes, b0.writes)),
        bytes_written: per(a1.bytes_written, a0.bytes_written)
            + per(b1.bytes_written, b0.bytes_written),
    });
    Ok(Run {
        case,
        messages,
        msgs_per_s: n / ((end_ns.saturating_sub(start_ns)) as f64 / 1e9).max(1e-9),
        latency: Percentiles::of(&lat),
        cpu_us: cpu.as_secs_f64() * 1e6 / n,
        store,
    })
}

/// Runs every case (of `sizes`, see [`cases`]) once per round, `rounds` times; keeps each case's median run by msg/s and
/// its per-round ratios to the memory run of the same route and size.
pub async fn measure_all(
    sizes: &[usize],
    window: usize,
    secs: f64,
    rounds: usize,
) -> Result<Durable, BoxError> {
    let base = std::env::temp_dir();
    let cases = cases(sizes);
    eprintln!(
        "durable: {} cases × {rounds} rounds, {secs} s each, window {window}, store files in {}",
        cases.len(),
        base.display()
    );
    let mut runs: Vec<Vec<Run>> = Vec::new();
    for _ in 0..rounds.max(1) {
        let mut round = Vec::new();
        for &case in &cases {
            let w = crate::window_for(window, case.size);
            round.push(run(case, w, secs, &base).await?);
        }
        runs.push(round);
    }
    let rows = cases
        .iter()
        .enumerate()
        .filter_map(|(i, case)| {
            let mut mine: Vec<Run> = runs.iter().map(|r| r[i]).collect();
            mine.sort_by(|x, y| x.msgs_per_s.total_cmp(&y.msgs_per_s));
            let run = *mine.get(mine.len().checked_sub(1)? / 2)?;
            let ratio = |f: fn(&Run) -> f64| {
                if case.store == Store::Memory {
                    return None;
                }
                let v: Vec<f64> = runs
                    .iter()
                    .filter_map(|round| {
                        let base = round
                            .iter()
                            .find(|r| r.case == Case { store: Store::Memory, ..*case })?;
                        (f(base) > 0.0).then(|| f(&round[i]) / f(base))
                    })
                    .collect();
                Spread::of(&v)
            };
            Some(Row {
                run,
                vs_memory: ratio(|r| r.msgs_per_s),
                cpu_vs_memory: ratio(|r| r.cpu_us),
            })
        })
        .collect();
    Ok(Durable { seconds: secs, rounds: rounds.max(1), window, dir: base, rows })
}

/// `x` with three significant digits.
fn sig(x: f64) -> String {
    let digits = if x == 0.0 { 0 } else { (2 - x.abs().log10().floor() as i32).clamp(0, 6) };
    format!("{x:.*}", digits as usize)
}

fn spread(s: Option<Spread>) -> String {
    match s {
        Some(v) if v.rounds > 1 => format!("{}× ({}–{})", sig(v.median), sig(v.min), sig(v.max)),
        Some(v) => format!("{}×", sig(v.median)),
        None => "1.00×".to_owned(),
    }
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

/// The report's section.
pub fn section(s: &mut String, d: &Durable, cpus: usize) {
    let _ = writeln!(s, "\n## Durable storage\n");
    let _ = writeln!(
        s,
        "alice sends to bob through a relay (durable as the endpoints are) or directly, over WebSocket; \
         both endpoints keep their state in memory (the baseline) or each in a redb file of its \
         own (`StorageKind::Redb`, in {}), with `fsync` always (and once never). Every case \
         runs once per round, {} rounds, {} s each, {} messages in flight at most (each \
         `send_message` a task of its own: it returns after the sender's commit), counted as \
         they arrive at bob; {} CPUs. Each row is the case's median run by msg/s; `× memory` is \
         the median of the ratios to the memory run of the same route, size and round, with \
         their range. CPU is the whole process (nodes, store threads, load) per message. The \
         store counters are the sender's and the receiver's over the measuring window, per \
         message delivered: total (sender + receiver).\n",
        d.dir.display(),
        d.rounds,
        d.seconds,
        d.window,
        cpus,
    );
    let _ = writeln!(
        s,
        "| route | size | store | msg/s | × memory | p50 µs | p99 µs | CPU µs/msg | CPU × memory | commits/msg | fsyncs/msg | writes/msg | bytes written/msg |"
    );
    let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|");
    for row in &d.rows {
        let r = &row.run;
        let pair = |p: (f64, f64)| format!("{} ({} + {})", sig(p.0 + p.1), sig(p.0), sig(p.1));
        let (commits, fsyncs, writes, bytes) = match r.store {
            Some(p) => {
                (pair(p.commits), pair(p.fsyncs), pair(p.writes), format!("{:.0}", p.bytes_written))
            }
            None => ("–".into(), "–".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.2} | {} | {commits} | {fsyncs} | {writes} | {bytes} |",
            r.case.route.label(),
            size_label(r.case.size),
            r.case.store.label(),
            r.msgs_per_s,
            spread(row.vs_memory),
            r.latency.p50,
            r.latency.p99,
            r.cpu_us,
            spread(row.cpu_vs_memory),
        );
    }
    let target = d.rows.iter().find(|r| {
        r.run.case == Case { route: Route::Relayed, size: 64, store: Store::Redb(Fsync::Always) }
    });
    if let Some(t) = target {
        let q = t.vs_memory.map_or(0.0, |v| v.median);
        let _ = writeln!(s, "\n| target | measured | status |\n|---|---|---|");
        let _ = writeln!(
            s,
            "| durable relayed 64 B ≥ 0.5× the in-memory path's msg/s (same run) | {:.0} msg/s, {} | {} |",
            t.run.msgs_per_s,
            spread(t.vs_memory),
            if q >= 0.5 { "met" } else { "**not met**" }
        );
    }
}
