//! The `workers` measurement (issue 17): one `peerlink serve --cluster … --workers W` process,
//! run with W = 1 and then W = 2 in every round, and K client pairs in this process connecting
//! to its one port. With two workers the kernel spreads the links over both (`SO_REUSEPORT`),
//! and a pair whose ends landed on different workers crosses Redis. Measured: the aggregate
//! msg/s of the K pairs, the relay process's CPU per message (`/proc/PID/stat`), this
//! process's and Redis's, and where the links landed (Redis's `peerlink:presence:<entity>`
//! names each client's worker).
//!
//! The relay is the real `peerlink` binary, built in release (`cargo build --release -p
//! peerlink`), found next to this executable or at `$PEERLINK_BIN`. It runs with the CLI's own
//! executor defaults (`SMOL_THREADS` is removed from its environment, so `--workers N` gives it
//! N threads, as it would a deployment) and a config file raising the per-link frame limit.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use peerlink_core::transport::TransportPreference;
use peerlink_core::{EntityId, Event, Identity, PublicKey};
use peerlink_host::broker::redis::cmd;
use peerlink_host::broker::{Broker, BrokerUrl};
use peerlink_smol::{Config, Handle, Peerlink, TrustedPeer};

use crate::BoxError;
use crate::load::Sink;
use crate::redis::RedisServer;
use crate::rounds::Spread;
use crate::stats::{Clock, Percentiles, Recorder, cpu_time, process_cpu_time};

/// How long the relay may take to start, and the clients to link and be announced (a failure
/// bound, not a pause).
const DEADLINE: Duration = Duration::from_secs(60);

/// The message size of every run.
pub const SIZE: usize = 64;

/// What one run (one relay process, W workers) measured.
#[derive(Debug, Clone, Default)]
pub struct WorkersRun {
    /// Workers of the relay process (`--workers`).
    pub workers: u16,
    /// Messages that arrived in the window, every pair together.
    pub messages: u64,
    /// Their rate.
    pub msgs_per_s: f64,
    /// One-way latency of the messages sent in the window.
    pub latency: Percentiles,
    /// CPU time of the relay process per message, µs (10 ms ticks).
    pub relay_cpu_us: f64,
    /// CPU time of this process (the client nodes) per message, µs.
    pub clients_cpu_us: f64,
    /// CPU time of `redis-server` per message, µs (10 ms ticks).
    pub redis_cpu_us: f64,
    /// Clients per worker, as Redis's presence records name them.
    pub spread: BTreeMap<String, usize>,
    /// Pairs whose sender and receiver are linked to different workers (their messages and
    /// acknowledgements cross Redis).
    pub crossing_pairs: usize,
}

/// The whole measurement: every round's W = 1 and W = 2 runs.
#[derive(Debug, Clone, Default)]
pub struct Workers {
    /// Client pairs.
    pub pairs: usize,
    /// Messages in flight at most, per pair.
    pub window: usize,
    /// Seconds each run measures.
    pub seconds: f64,
    /// W = 1's median run (by msg/s).
    pub one: WorkersRun,
    /// W = 2's median run (by msg/s).
    pub two: WorkersRun,
    /// W = 2's msg/s over W = 1's, round by round.
    pub ratio: Option<Spread>,
    /// Every run, in order (W = 1, W = 2, W = 1, …).
    pub runs: Vec<WorkersRun>,
}

/// The `peerlink` binary: `$PEERLINK_BIN`, else next to this executable.
pub fn peerlink_binary() -> Result<PathBuf, BoxError> {
    if let Some(p) = std::env::var_os("PEERLINK_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("peerlink");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "no peerlink binary at {} (the workers measurement runs the real one): build it \
             with `cargo build --release -p peerlink` (the same --target-dir and profile as \
             this bench), or set PEERLINK_BIN",
            bin.display()
        )
        .into())
    }
}

/// The relay process; killed when dropped, its home folder removed.
struct Relay {
    child: Child,
    home: PathBuf,
}

impl Relay {
    /// Starts `peerlink serve --open --cluster URL --cluster-name w --workers N` on a port the
    /// kernel chooses, and waits for its `cluster` line; also returns the relay as its clients
    /// trust it.
    fn start(
        bin: &PathBuf,
        redis: &RedisServer,
        workers: u16,
    ) -> Result<(Self, TrustedPeer), BoxError> {
        let home = std::env::temp_dir()
            .join(format!("peerlink-bench-workers-{}-{workers}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home)?;
        let config = home.join("peerlink.toml");
        std::fs::write(&config, "[limits]\nframes_per_minute = 1000000\n")?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .args(["serve", "--open", "--listen", "127.0.0.1:0", "--cluster", &redis.url()])
            .args(["--cluster-name", "w", "--workers", &workers.to_string()])
            .env("PEERLINK_HOME", &home)
            .env_remove("SMOL_THREADS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(home.join("stderr"))?)
            .spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        // The lines arrive on a thread of their own, so that a silent relay cannot hang us.
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let relay = Relay { child, home };
        let mut fields = BTreeMap::new();
        while !fields.contains_key("cluster") {
            let line = lines.recv_timeout(DEADLINE).map_err(|_| -> BoxError {
                let log = std::fs::read_to_string(relay.home.join("stderr")).unwrap_or_default();
                format!("peerlink serve printed no cluster line; its stderr:\n{log}").into()
            })?;
            if let Some((k, v)) = line.split_once(' ') {
                fields.insert(k.to_owned(), v.trim().to_owned());
            }
        }
        let field = |k: &str| fields.get(k).cloned().ok_or(format!("no {k} line"));
        let peer = TrustedPeer {
            entity: EntityId::new(field("entity_id")?)?,
            key: PublicKey::from_b64u(&field("public_key")?)?,
            url: Some(field("url")?),
        };
        Ok((relay, peer))
    }

    fn cpu_time(&self) -> Result<Duration, BoxError> {
        process_cpu_time(self.child.id())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// One pair: the sender's node and window, the receiver's node.
struct Pair {
    sink: Sink,
    slots: smol::channel::Sender<()>,
}

/// Starts `2 * pairs` client nodes linked to `relay` (client `2i` sends to `2i + 1`), each
/// trusting the relay and its partner; every arrival is recorded in `recorder`.
async fn clients(
    relay: &TrustedPeer,
    pairs: usize,
    window: usize,
    recorder: &Arc<Recorder>,
) -> Result<(Vec<Handle>, Vec<Identity>, Vec<Pair>), BoxError> {
    let ids: Vec<Identity> = (0..2 * pairs)
        .map(|i| peerlink_smol::keys::generate(EntityId::new(format!("wk{i}"))?))
        .collect::<Result<_, _>>()?;
    let mut handles = Vec::new();
    for (i, me) in ids.iter().enumerate() {
        let partner = &ids[i ^ 1];
        let mut cfg = Config::ephemeral();
        cfg.node = crate::peer::node_config(TransportPreference::WebsocketOnly, false);
        cfg.relay = Some(relay.clone());
        cfg.peers = vec![TrustedPeer {
            entity: partner.id().clone(),
            key: partner.public_key(),
            url: None,
        }];
        let h = Peerlink::start(cfg, me.duplicate()).await?;
        h.init_websocket_connection(&relay.entity).await?;
        handles.push(h);
    }
    let mut out = Vec::new();
    for p in 0..pairs {
        let (a, b) = (&handles[2 * p], &handles[2 * p + 1]);
        let (slots, taken) = smol::channel::bounded(window.max(1));
        let release = taken.clone();
        let a_events = a.incoming().await?;
        smol::spawn(async move {
            while let Ok(e) = a_events.recv().await {
                if matches!(e, Event::Delivered { .. } | Event::Failed { .. }) {
                    let _ = taken.try_recv();
                }
            }
        })
        .detach();
        let b_events = b.incoming().await?;
        let rec = Arc::clone(recorder);
        smol::spawn(async move {
            while let Ok(e) = b_events.recv().await {
                if let Event::Message { payload, .. } = e {
                    rec.arrive(&payload);
                }
            }
        })
        .detach();
        let sink = Sink::Peer {
            handle: a.clone(),
            to: Arc::new(ids[2 * p + 1].id().clone()),
            release,
            refused: Default::default(),
        };
        out.push(Pair { sink, slots });
    }
    Ok((handles, ids, out))
}

/// Waits until Redis names a worker for every client; returns the names in client order.
async fn presence(redis: &RedisServer, ids: &[Identity]) -> Result<Vec<String>, BoxError> {
    let rt = peerlink_smol::rt();
    let broker = Broker::connect(&rt, &BrokerUrl::parse(&redis.url())?, None, DEADLINE).await?;
    let until = Instant::now() + DEADLINE;
    loop {
        let mut names = Vec::new();
        for me in ids {
            let key = format!("peerlink:presence:{}", me.id());
            let node: Option<String> = broker.query(cmd("GET").arg(&key)).await?;
            names.extend(node);
        }
        if names.len() == ids.len() {
            return Ok(names);
        }
        if Instant::now() > until {
            return Err(format!(
                "Redis named a worker for {} of {} clients within {DEADLINE:?}",
                names.len(),
                ids.len()
            )
            .into());
        }
        smol::Timer::after(Duration::from_millis(20)).await;
    }
}

/// One run: a Redis, the relay with `workers` workers, `pairs` client pairs, `secs` of load.
async fn run(
    bin: &PathBuf,
    workers: u16,
    pairs: usize,
    window: usize,
    secs: f64,
) -> Result<WorkersRun, BoxError> {
    let redis = RedisServer::start()?;
    let (relay, peer) = Relay::start(bin, &redis, workers)?;
    let clock = Clock::new();
    let recorder = Arc::new(Recorder::new(clock));
    let (handles, ids, mut pairs_v) = clients(&peer, pairs, window, &recorder).await?;
    let names = presence(&redis, &ids).await?;
    let mut spread = BTreeMap::new();
    for n in &names {
        *spread.entry(n.clone()).or_insert(0) += 1;
    }
    let crossing_pairs = (0..pairs).filter(|p| names[2 * p] != names[2 * p + 1]).count();

    // Warm up every pair: one message through and its acknowledgement back (sessions, and the
    // other worker's presence learned for a crossing pair).
    for pair in &mut pairs_v {
        pair.slots.send(()).await?;
        pair.sink.send(clock.stamp(SIZE)).await?;
    }
    let warm = Instant::now() + DEADLINE;
    while recorder.arrived.load(Ordering::SeqCst) < pairs as u64
        || pairs_v.iter().any(|p| !p.slots.is_empty())
    {
        if Instant::now() > warm {
            return Err("the warm-up messages got no acknowledgement in time".into());
        }
        smol::Timer::after(Duration::from_millis(2)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (cpu0, relay0, redis0) = (cpu_time(), relay.cpu_time()?, process_cpu_time(redis.pid())?);
    let start_ns = recorder.open();
    let senders: Vec<_> = pairs_v
        .into_iter()
        .map(|mut pair| {
            let stop = Arc::clone(&stop);
            smol::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if pair.slots.send(()).await.is_err() {
                        break;
                    }
                    pair.sink.send(clock.stamp(SIZE)).await?;
                }
                Ok::<_, BoxError>(pair)
            })
        })
        .collect();
    smol::Timer::after(Duration::from_secs_f64(secs)).await;
    let end_ns = recorder.close();
    let (cpu1, relay1, redis1) = (cpu_time(), relay.cpu_time()?, process_cpu_time(redis.pid())?);
    stop.store(true, Ordering::Relaxed);
    let mut refused = 0;
    for s in senders {
        // A sender waiting for a slot finishes once an acknowledgement frees one.
        if let Sink::Peer { refused: r, .. } = &s.await?.sink {
            refused += r.load(Ordering::Relaxed);
        }
    }
    let (messages, _, lat) = recorder.take();
    let stops: Vec<_> =
        handles.into_iter().map(|h| smol::spawn(async move { h.shutdown().await })).collect();
    for s in stops {
        let _ = s.await;
    }
    drop(relay);
    drop(redis);
    if refused > 0 {
        return Err(format!("{refused} sends were refused").into());
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / messages.max(1) as f64;
    let run = WorkersRun {
        workers,
        messages,
        msgs_per_s: messages as f64 / ((end_ns.saturating_sub(start_ns)) as f64 / 1e9).max(1e-9),
        latency: Percentiles::of(&lat),
        relay_cpu_us: per(relay1.saturating_sub(relay0)),
        clients_cpu_us: per(cpu1.saturating_sub(cpu0)),
        redis_cpu_us: per(redis1.saturating_sub(redis0)),
        spread,
        crossing_pairs,
    };
    let spread: Vec<String> = run.spread.iter().map(|(w, n)| format!("{w} {n}")).collect();
    eprintln!(
        "  workers {}: {:>8.0} msg/s  p99 {:>9.1} µs  relay CPU {:>6.1} µs/msg  clients {:>6.1}  Redis {:>5.1}  links: {} ({} of {pairs} pairs across workers)",
        workers,
        run.msgs_per_s,
        run.latency.p99,
        run.relay_cpu_us,
        run.clients_cpu_us,
        run.redis_cpu_us,
        spread.join(", "),
        run.crossing_pairs,
    );
    Ok(run)
}

/// Runs W = 1 and then W = 2 in each of `rounds` rounds; keeps each W's median run by msg/s
/// and the per-round ratio W2 / W1.
pub async fn measure(
    pairs: usize,
    window: usize,
    secs: f64,
    rounds: usize,
) -> Result<Workers, BoxError> {
    let bin = peerlink_binary()?;
    crate::redis::check_installed()?;
    let pairs = pairs.max(1);
    eprintln!(
        "workers: {bin} serve --workers 1 / 2, {pairs} pairs of {SIZE} B, window {window} per pair",
        bin = bin.display()
    );
    let mut runs = Vec::new();
    let mut ratios = Vec::new();
    for _ in 0..rounds.max(1) {
        let one = run(&bin, 1, pairs, window, secs).await?;
        let two = run(&bin, 2, pairs, window, secs).await?;
        ratios.push(two.msgs_per_s / one.msgs_per_s.max(1e-9));
        runs.push(one);
        runs.push(two);
    }
    let median = |w: u16| {
        let mut v: Vec<&WorkersRun> = runs.iter().filter(|r| r.workers == w).collect();
        v.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
        v.get(v.len().saturating_sub(1) / 2).map(|r| (*r).clone()).unwrap_or_default()
    };
    Ok(Workers {
        pairs,
        window,
        seconds: secs,
        one: median(1),
        two: median(2),
        ratio: Spread::of(&ratios),
        runs,
    })
}
