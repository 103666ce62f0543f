//! The results as a markdown report and an SVG chart.

use std::fmt::Write as _;

use plotters::prelude::*;

use crate::floor::Floor;
use crate::peer::Path;
use crate::{BoxError, Kind, Results, Row};

fn size_label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// `x` with three significant digits (no exponent).
fn sig(x: f64) -> String {
    let digits = if x == 0.0 { 0 } else { (2 - x.abs().log10().floor() as i32).clamp(0, 6) };
    format!("{x:.*}", digits as usize)
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 { format!("{}×", sig(x / base)) } else { "–".to_owned() }
}

/// A row's ratio to the echo: the median of the rounds' ratios, with their range when there
/// was more than one round (falls back to `x / base` for a row without rounds).
fn paired(row: &Row, x: f64, base: f64) -> String {
    match row.vs_echo {
        Some(v) if v.rounds > 1 => {
            format!("{}× ({}–{})", sig(v.median), sig(v.min), sig(v.max))
        }
        Some(v) => format!("{}×", sig(v.median)),
        None => ratio(x, base),
    }
}

fn find(rows: &[Row], kind: Kind, size: usize) -> Option<&Row> {
    rows.iter().find(|r| r.kind == kind && r.size == size)
}

/// What a target check found.
fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// How the binary was compiled, as far as the curve and AEAD arithmetic cares.
fn build_flavour() -> &'static str {
    if cfg!(target_feature = "avx2") {
        "for this CPU (AVX2 at compile time, e.g. `-C target-cpu=native`)"
    } else {
        "for generic x86-64 (no AVX2 at compile time: Ed25519, X25519 and ChaCha20-Poly1305 \
         run about 1.5-2× slower; see docs/benchmarks.md)"
    }
}

/// The markdown report.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# peerlink-bench results, {}\n", r.date);
    let _ = writeln!(
        s,
        "Loopback, {} CPUs, {} executor threads, {} s per run, release build {}, mimalloc. Ratios are against the baseline measured \
         in the same run (`× echo`: the one-hop echo; `× fwd`: the two-hop forwarder). Latency is \
         one-way send → arrival in µs (for the echo: the round trip, which also crosses two hops). \
         CPU is the whole process (clients, relay and nodes) per message. Every path ran {} \
         times, the paths in turn (rounds); each row is the path's median run (by msg/s, or by \
         p99 at a fixed load), and `× echo` is the median of the ratios to the echo of the same \
         round, with their range.\n",
        r.cpus,
        r.threads,
        r.seconds,
        build_flavour(),
        r.rounds
    );
    let _ = writeln!(s, "## Saturation\n");
    let _ = writeln!(
        s,
        "| path | size | msg/s | MiB/s | × echo | × fwd | p50 µs | p99 µs | p99.9 µs | p99 × echo | CPU µs/msg | CPU × echo | frames/msg |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.saturation {
        let echo = find(&r.saturation, Kind::Echo, row.size).map(|e| e.m).unwrap_or_default();
        let fwd = find(&r.saturation, Kind::Forward, row.size).map(|e| e.m).unwrap_or_default();
        let m = &row.m;
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {} | {} |",
            row.kind.label(),
            size_label(row.size),
            m.msgs_per_s,
            sig(m.mib_per_s),
            paired(row, m.msgs_per_s, echo.msgs_per_s),
            ratio(m.msgs_per_s, fwd.msgs_per_s),
            m.latency.p50,
            m.latency.p99,
            m.latency.p999,
            ratio(m.latency.p99, echo.latency.p99),
            m.cpu_us_per_msg,
            ratio(m.cpu_us_per_msg, echo.cpu_us_per_msg),
            row.frames_per_msg.map_or("–".to_owned(), |f| format!("{f:.2}")),
        );
    }
    let _ = writeln!(s, "\n## Latency at a fixed offered load (64 B)\n");
    let _ = writeln!(
        s,
        "| path | offered msg/s | achieved msg/s | p50 µs | p99 µs | p99.9 µs | p99 × echo | CPU µs/msg |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let echo_fixed = find(&r.fixed, Kind::Echo, 64).map(|e| e.m).unwrap_or_default();
    for row in &r.fixed {
        let m = &row.m;
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.2} |",
            row.kind.label(),
            m.offered.unwrap_or(0.0),
            m.msgs_per_s,
            m.latency.p50,
            m.latency.p99,
            m.latency.p999,
            paired(row, m.latency.p99, echo_fixed.latency.p99),
            m.cpu_us_per_msg,
        );
    }
    cluster_section(&mut s, r);
    workers_section(&mut s, r);
    if let Some(d) = &r.durable {
        crate::durable::section(&mut s, d, r.cpus);
    }
    let _ = writeln!(s, "\n## Connections\n");
    let _ = writeln!(
        s,
        "A full handshake: a client identity the server has never seen gets a token \
         (`/auth/token` challenge, Ed25519 signature, `/auth/verify`), upgrades `/ws/v1/peers` \
         on the same connection and runs the 6-step E2E handshake until `SessionEstablished`, \
         {} at a time. CPU is the whole process (client and server sides) per connection or \
         handshake.\n",
        r.concurrency
    );
    let _ = writeln!(
        s,
        "| what | per second | × baseline | CPU µs each | the node's CPU µs each |\n|---|---:|---:|---:|---:|"
    );
    let _ = writeln!(
        s,
        "| baseline: WebSocket connect + upgrade + one echo + close | {:.0} | 1.00× | {:.0} | – |",
        r.ws_connects_per_s, r.ws_connect_cpu_us
    );
    let hs = [
        ("peerlink full handshake (client node already running)", r.handshakes),
        ("the same, the node and its clients on tokio", r.handshakes_tokio),
        (
            "the same, public-key work on each node's task (`offload_work` off, spec §7.12)",
            r.handshakes_serial,
        ),
        (
            "peerlink full handshake, the node in a child process (CPU: both processes)",
            r.handshakes_child_node,
        ),
        (
            "peerlink full handshake including client start-up (a new client node each)",
            r.handshakes_with_startup,
        ),
    ];
    for (what, h) in hs {
        let _ = writeln!(
            s,
            "| {what} | {:.0} | {} | {:.0} | {} |",
            h.per_s,
            ratio(h.per_s, r.ws_connects_per_s),
            h.cpu_us,
            h.node_cpu_us.map_or("–".to_owned(), |c| format!("{c:.0}")),
        );
    }
    if let Some(c) = r.handshakes_child_node.node_cpu_us.filter(|c| *c > 0.0) {
        let _ = writeln!(
            s,
            "\nThe node alone spent {c:.0} µs of CPU per handshake (its own process, clients \
             elsewhere), including its share of the clients leaving (closing links): with {} \
             CPUs of its own, its CPU time alone would allow at most {:.0} handshakes/s. A bound \
             from CPU time only: the node's single task, which runs every handshake step, may \
             bind first (docs/benchmarks.md, \"Full handshakes\").",
            r.cpus,
            r.cpus as f64 * 1e6 / c
        );
    }
    let _ = writeln!(s, "\n## Resident memory per idle connection\n");
    let _ = writeln!(
        s,
        "Server in a child process; its VmRSS growth over N connections, divided by N. peerlink: \
         authenticated `/ws/v1/peers` upgrades (a fresh identity and token each), no traffic.\n"
    );
    let _ = writeln!(
        s,
        "| connections | peerlink KiB/conn | links the node reports | echo KiB/conn | × echo |\n|---:|---:|---:|---:|---:|"
    );
    for (n, e) in r.mem_node.iter().zip(&r.mem_echo) {
        let _ = writeln!(
            s,
            "| {} | {:.2} | {} | {:.2} | {} |",
            n.connections,
            n.kib_per_conn(),
            n.links_seen.map_or("–".to_owned(), |l| l.to_string()),
            e.kib_per_conn(),
            ratio(n.kib_per_conn(), e.kib_per_conn())
        );
    }
    s.push_str(&targets(r));
    s
}

/// A row's ratio to the single relay, round by round (see [`paired`]).
fn paired_relay(row: &Row, x: f64, base: f64) -> String {
    paired(&Row { vs_echo: row.vs_relay, ..*row }, x, base)
}

/// The cluster path next to the single relay and the baseline forwarder, and issue 17's
/// targets; nothing when the cluster did not run.
fn cluster_section(s: &mut String, r: &Results) {
    let cluster = Kind::Peer(Path::Cluster);
    if !r.saturation.iter().any(|x| x.kind == cluster) {
        return;
    }
    let _ = writeln!(s, "\n## Cluster (issue 17)\n");
    let _ = writeln!(
        s,
        "alice linked to cluster node n1, bob to n2, both nodes sharing one relay identity and \
         one `redis-server` started for the run, so every message crosses Redis (n1 `PUBLISH`es \
         it on n2's channel, n2 hands it to bob) and so does its acknowledgement. Compared with \
         the single relay (peerlink ws, sign_all off: alice → relay → bob) and the baseline \
         forwarder of the same run; `× relay` is the median of the ratios to the single relay \
         of the same round, with their range. CPU is this process (clients and nodes) per \
         message; Redis's own CPU per message (10 ms ticks) is given apart. `broker frames/msg` \
         counts the frames the two nodes handed to each other through Redis per message.\n"
    );
    let _ = writeln!(
        s,
        "| size | forward msg/s | single relay msg/s | cluster msg/s | cluster × relay | cluster × fwd | relay CPU µs/msg | cluster CPU µs/msg | + Redis CPU µs/msg | broker frames/msg |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rate = |k: Kind, size: usize| find(&r.saturation, k, size).map(|x| x.m.msgs_per_s);
    let cell = |x: Option<f64>| x.map_or("–".to_owned(), |v| format!("{v:.0}"));
    for c in r.saturation.iter().filter(|x| x.kind == cluster) {
        let (fwd, relay) = (rate(Kind::Forward, c.size), rate(Kind::SINGLE_RELAY, c.size));
        let relay_cpu = find(&r.saturation, Kind::SINGLE_RELAY, c.size).map(|x| x.m.cpu_us_per_msg);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {:.2} | {} | {} |",
            size_label(c.size),
            cell(fwd),
            cell(relay),
            c.m.msgs_per_s,
            paired_relay(c, c.m.msgs_per_s, relay.unwrap_or(0.0)),
            ratio(c.m.msgs_per_s, fwd.unwrap_or(0.0)),
            relay_cpu.map_or("–".to_owned(), |v| format!("{v:.2}")),
            c.m.cpu_us_per_msg,
            c.m.other_cpu_us_per_msg.map_or("–".to_owned(), |v| format!("{v:.2}")),
            c.broker_frames_per_msg.map_or("–".to_owned(), |f| format!("{f:.2}")),
        );
    }
    let _ = writeln!(
        s,
        "\n| 64 B at a fixed load | offered msg/s | achieved msg/s | p50 µs | p99 µs | p99.9 µs | p99 × relay | CPU µs/msg | + Redis CPU µs/msg |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let relay_fixed = find(&r.fixed, Kind::SINGLE_RELAY, 64).map(|x| x.m).unwrap_or_default();
    for k in [Kind::Forward, Kind::SINGLE_RELAY, cluster] {
        let Some(row) = find(&r.fixed, k, 64) else { continue };
        let m = &row.m;
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {} |",
            k.label(),
            m.offered.unwrap_or(0.0),
            m.msgs_per_s,
            m.latency.p50,
            m.latency.p99,
            m.latency.p999,
            if k == cluster {
                paired_relay(row, m.latency.p99, relay_fixed.latency.p99)
            } else {
                "–".to_owned()
            },
            m.cpu_us_per_msg,
            m.other_cpu_us_per_msg.map_or("–".to_owned(), |v| format!("{v:.2}")),
        );
    }
    let _ = writeln!(s, "\nIssue 17's targets (reported, not asserted):\n");
    let _ = writeln!(s, "| target | measured | status |\n|---|---|---|");
    if let (Some(c), Some(relay)) =
        (find(&r.saturation, cluster, 64), find(&r.saturation, Kind::SINGLE_RELAY, 64))
    {
        let q = c.vs_relay.map_or(c.m.msgs_per_s / relay.m.msgs_per_s.max(1e-9), |v| v.median);
        let _ = writeln!(
            s,
            "| cross-node relayed 64 B ≥ 0.5× the single relay's msg/s | {:.0} vs {:.0} (median runs); {} per round | {} |",
            c.m.msgs_per_s,
            relay.m.msgs_per_s,
            paired_relay(c, c.m.msgs_per_s, relay.m.msgs_per_s),
            verdict(q >= 0.5)
        );
    }
    if let Some(c) = find(&r.fixed, cluster, 64) {
        let offered = c.m.offered.unwrap_or(0.0);
        let note =
            if offered < 9_999.0 { " (offered below 10,000: saturation is lower)" } else { "" };
        let _ = writeln!(
            s,
            "| p99 ≤ 2 ms at 10,000 msg/s offered (cluster) | {:.0} µs (p50 {:.0}) at {offered:.0} msg/s{note} | {} |",
            c.m.latency.p99,
            c.m.latency.p50,
            verdict(c.m.latency.p99 <= 2000.0 && offered >= 9_999.0)
        );
    }
}

/// `peerlink serve --workers 1` against `--workers 2`; a note when a full run skipped it,
/// nothing when it was not asked for.
fn workers_section(s: &mut String, r: &Results) {
    if let Some(why) = &r.workers_skipped {
        let _ = writeln!(s, "\n## Workers (issue 17)\n\nNot measured: {why}.");
    }
    let Some(w) = &r.workers else { return };
    let _ = writeln!(s, "\n## Workers (issue 17)\n");
    let _ = writeln!(
        s,
        "One `peerlink serve --open --cluster … --cluster-name w --workers W` process (the \
         release binary, a Redis of its own, `[limits] frames_per_minute = 1000000`, the CLI's \
         own executor: W threads), run with W = 1 and then W = 2 in each of {} rounds; {} \
         client pairs in this process linked to its one port, each sending {} B messages \
         with {} in flight at most, for {} s. msg/s is every pair's together. CPU per message: \
         the relay process's (`/proc/PID/stat`, 10 ms ticks), this process's (the {} client \
         nodes) and `redis-server`'s. The links' spread is read from Redis \
         (`GET peerlink:presence:<entity>`); a pair across workers crosses Redis. The clients, \
         the relay and Redis share this machine's {} CPUs: W = 2 may not beat W = 1 here.\n",
        w.runs.len() / 2,
        w.pairs,
        crate::workers::SIZE,
        w.window,
        w.seconds,
        2 * w.pairs,
        r.cpus,
    );
    let _ = writeln!(
        s,
        "| workers | msg/s | × W=1 | p50 µs | p99 µs | relay CPU µs/msg | relay cores busy | clients CPU µs/msg | Redis CPU µs/msg | links per worker | pairs across workers |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for run in [&w.one, &w.two] {
        let vs = if run.workers == 1 {
            "1.00×".to_owned()
        } else {
            match w.ratio {
                Some(v) if v.rounds > 1 => {
                    format!("{}× ({}–{})", sig(v.median), sig(v.min), sig(v.max))
                }
                Some(v) => format!("{}×", sig(v.median)),
                None => "–".to_owned(),
            }
        };
        let spread: Vec<String> = run.spread.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let _ = writeln!(
            s,
            "| {} | {:.0} | {vs} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} of {} |",
            run.workers,
            run.msgs_per_s,
            run.latency.p50,
            run.latency.p99,
            run.relay_cpu_us,
            run.relay_cpu_us * run.msgs_per_s / 1e6,
            run.clients_cpu_us,
            run.redis_cpu_us,
            spread.join(", "),
            run.crossing_pairs,
            w.pairs,
        );
    }
    let _ = writeln!(
        s,
        "\nEach W's median run by msg/s; `× W=1` is the median of the rounds' W2 / W1 ratios, \
         with their range; `relay cores busy` is the relay's CPU per message times msg/s (how \
         much of a core, or of two, the relay process used). Every run: {}.",
        w.runs
            .iter()
            .map(|x| format!("W={} {:.0} msg/s", x.workers, x.msgs_per_s))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn targets(r: &Results) -> String {
    let mut s = String::new();
    if let Some(f) = &r.floor {
        floor_section(&mut s, r, f);
    }
    let _ = writeln!(s, "\n## Targets (issue 6)\n\n| target | measured | status |\n|---|---|---|");
    let off = Kind::Peer(Path::Ws { sign_all: false });
    let on = Kind::Peer(Path::Ws { sign_all: true });
    if let (Some(p), Some(e)) = (find(&r.saturation, off, 64), find(&r.saturation, Kind::Echo, 64))
    {
        let q = p.vs_echo.map_or(p.m.msgs_per_s / e.m.msgs_per_s.max(1e-9), |v| v.median);
        let _ = writeln!(
            s,
            "| sign_all off, 64 B relayed ≥ 0.5× echo msg/s | {:.0} vs {:.0} (median runs); {} per round | {} |",
            p.m.msgs_per_s,
            e.m.msgs_per_s,
            paired(p, p.m.msgs_per_s, e.m.msgs_per_s),
            verdict(q >= 0.5)
        );
    }
    if let Some(p) = find(&r.saturation, on, 64) {
        let _ = writeln!(
            s,
            "| sign_all on, 64 B relayed ≥ 20,000 msg/s | {:.0} msg/s | {} |",
            p.m.msgs_per_s,
            verdict(p.m.msgs_per_s >= 20_000.0)
        );
    }
    if let Some(p) = find(&r.fixed, off, 64) {
        let offered = p.m.offered.unwrap_or(0.0);
        let note =
            if offered < 9_999.0 { " (offered below 10,000: saturation is lower)" } else { "" };
        let _ = writeln!(
            s,
            "| p99 ≤ 1 ms at 10,000 msg/s offered (ws, sign_all off) | {:.0} µs at {offered:.0} msg/s{note} | {} |",
            p.m.latency.p99,
            verdict(p.m.latency.p99 <= 1000.0 && offered >= 9_999.0)
        );
    }
    if let Some(n) = r.mem_node.last() {
        let _ = writeln!(
            s,
            "| ≤ 8 KiB per idle authenticated connection | {:.2} KiB at {} | {} |",
            n.kib_per_conn(),
            n.connections,
            verdict(n.kib_per_conn() <= 8.0)
        );
        let seen = n.links_seen.unwrap_or(0);
        let _ = writeln!(
            s,
            "| 10,000 connections on one node | {seen} links held | {} |",
            verdict(seen >= 10_000)
        );
    }
    if r.handshakes.count > 0 {
        let _ = writeln!(
            s,
            "| ≥ 3,000 full handshakes/s | {:.0}/s ({:.0}/s including client start-up; the node alone: {} on {} CPUs of its own) | {} |",
            r.handshakes.per_s,
            r.handshakes_with_startup.per_s,
            r.handshakes_child_node.node_cpu_us.filter(|c| *c > 0.0).map_or(
                "not measured".to_owned(),
                |c| format!(
                    "{c:.0} µs of CPU each, a CPU-time bound of {:.0}/s",
                    r.cpus as f64 * 1e6 / c
                )
            ),
            r.cpus,
            verdict(r.handshakes.per_s >= 3_000.0)
        );
    }
    issue19_targets(&mut s, r);
    s
}

/// Issue 19's targets (large messages, handshakes, latency), as far as this run measured them:
/// a path or size the run left out gives no row.
fn issue19_targets(s: &mut String, r: &Results) {
    let _ = writeln!(s, "\n## Targets (issue 19)\n\n| target | measured | status |\n|---|---|---|");
    let ratio = |kind: Kind, size: usize| {
        let (p, e) = (find(&r.saturation, kind, size)?, find(&r.saturation, Kind::Echo, size)?);
        let q = p.vs_echo.map_or(p.m.msgs_per_s / e.m.msgs_per_s.max(1e-9), |v| v.median);
        Some((q, paired(p, p.m.msgs_per_s, e.m.msgs_per_s)))
    };
    let off = Kind::Peer(Path::Ws { sign_all: false });
    let on = Kind::Peer(Path::Ws { sign_all: true });
    let rows = [
        ("relayed, sign_all off", off, 0.6),
        ("relayed, sign_all on", on, 0.3),
        ("HTTP fallback", Kind::Peer(Path::Http), 0.5),
    ];
    for (what, kind, want) in rows {
        for (size, label) in [(64 << 10, "64 KiB"), (4 << 20, "4 MiB")] {
            if let Some((q, shown)) = ratio(kind, size) {
                let _ = writeln!(
                    s,
                    "| {what}, {label} ≥ {want}× echo MiB/s | {shown} | {} |",
                    verdict(q >= want)
                );
            }
        }
    }
    if r.handshakes.count > 0 {
        let _ = writeln!(
            s,
            "| ≥ 3,500 full handshakes/s | {:.0}/s | {} |",
            r.handshakes.per_s,
            verdict(r.handshakes.per_s >= 3_500.0)
        );
    }
    if let Some(p) = find(&r.fixed, off, 64) {
        let offered = p.m.offered.unwrap_or(0.0);
        let _ = writeln!(
            s,
            "| p99 ≤ 500 µs at 10,000 msg/s offered, 64 B relayed | {:.0} µs at {offered:.0} msg/s | {} |",
            p.m.latency.p99,
            verdict(p.m.latency.p99 <= 500.0 && offered >= 9_999.0)
        );
    }
    if let Some((q, shown)) = ratio(off, 64) {
        let _ = writeln!(s, "| relayed 64 B ≥ 0.6× echo msg/s | {shown} | {} |", verdict(q >= 0.6));
    }
}

/// The protocol's CPU floor and the ceilings it puts on the targets.
fn floor_section(s: &mut String, r: &Results, f: &Floor) {
    let cores = r.cpus as f64 * 1e6;
    let _ = writeln!(
        s,
        "\n## The protocol's CPU floor\n\nOne thread, no I/O, measured in this run: what the \
         protocol itself costs before any driver, socket or allocation of ours. A process using \
         all {} CPUs cannot go faster than the CPUs divided by these costs.\n",
        r.cpus
    );
    let _ = writeln!(s, "| operation | µs | ceiling on {} CPUs |\n|---|---:|---|", r.cpus);
    let _ = writeln!(s, "| Ed25519 signature (300 B) | {:.1} | – |", f.sign_us);
    let _ = writeln!(s, "| Ed25519 strict verification (300 B) | {:.1} | – |", f.verify_us);
    // A full handshake adds the token exchange to the six steps: the client signs the
    // challenge, the server verifies it, signs the JWT and verifies it at the upgrade.
    let full = f.handshake_us + 2.0 * (f.sign_us + f.verify_us);
    let _ = writeln!(
        s,
        "| 6-step handshake, both sides (keys, DH, signatures, JSON) | {:.0} | – |",
        f.handshake_us
    );
    let _ = writeln!(
        s,
        "| full handshake: the above + token (2 signatures, 2 verifications) | {full:.0} | {:.0} handshakes/s with clients and server in one process |",
        cores / full.max(1e-9)
    );
    let _ = writeln!(
        s,
        "| 64 B session message: seal, encode, decode, open (sign_all off) | {:.2} | – |",
        f.message_us
    );
    let extra = (f.signed_message_us - f.message_us).max(0.0);
    let signed_ceiling = find(&r.saturation, Kind::Peer(Path::Ws { sign_all: false }), 64)
        .map(|p| {
            let per = p.m.cpu_us_per_msg + extra;
            format!(
                "{:.0} msg/s: this run's CPU per relayed message with sign_all off ({:.1} µs) + {extra:.1} µs",
                cores / per.max(1e-9),
                p.m.cpu_us_per_msg
            )
        })
        .unwrap_or_else(|| format!("{:.0} msg/s for the signatures alone", cores / extra.max(1e-9)));
    let _ = writeln!(
        s,
        "| the same with sign_all on | {:.2} | {signed_ceiling} |",
        f.signed_message_us
    );
    if let (Some(fw), Some(e)) =
        (find(&r.saturation, Kind::Forward, 64), find(&r.saturation, Kind::Echo, 64))
    {
        let _ = writeln!(
            s,
            "\nA forwarder with no protocol at all, over the same two hops, reached {}× the echo's 64 B msg/s in this run: \
             the ceiling of any relayed path in this process.",
            sig(fw.m.msgs_per_s / e.m.msgs_per_s.max(1e-9))
        );
    }
}

/// The chart: messages/s of every path as a ratio to the one-hop echo, per size.
pub fn svg(r: &Results) -> Result<String, BoxError> {
    let sizes: Vec<usize> = {
        let mut v: Vec<usize> = r.saturation.iter().map(|x| x.size).collect();
        v.dedup();
        v
    };
    let kinds = &Kind::ALL[1..];
    let ratios: Vec<Vec<f64>> = sizes
        .iter()
        .map(|&size| {
            let echo = find(&r.saturation, Kind::Echo, size).map_or(0.0, |e| e.m.msgs_per_s);
            kinds
                .iter()
                .map(|&k| {
                    find(&r.saturation, k, size)
                        .map_or(0.0, |x| if echo > 0.0 { x.m.msgs_per_s / echo } else { 0.0 })
                })
                .collect()
        })
        .collect();
    let top = ratios.iter().flatten().copied().fold(1.2f64, f64::max) * 1.1;
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
    ];
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let n = sizes.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("messages/s relative to the one-hop echo, same run ({})", r.date),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n, 0f64..top)
            .map_err(|e| e.to_string())?;
        let labels: Vec<String> = sizes.iter().map(|&s| size_label(s)).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(sizes.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 {
                    labels.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("× echo msg/s")
            .draw()
            .map_err(|e| e.to_string())?;
        let width = 0.8 / kinds.len() as f64;
        for (k, kind) in kinds.iter().enumerate() {
            let color = colors[k % colors.len()];
            let bars: Vec<_> = ratios
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    let x0 = i as f64 + 0.1 + k as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.9, row[k])], color.filled())
                })
                .collect();
            chart.draw_series(bars).map_err(|e| e.to_string())?.label(kind.label()).legend(
                move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()),
            );
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 1.0), (n, 1.0)],
                BLACK.stroke_width(1),
            )))
            .map_err(|e| e.to_string())?
            .label("echo = 1")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 10, y)], BLACK));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}
