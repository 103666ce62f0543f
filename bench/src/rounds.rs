//! Repeated, alternating runs: every path runs once per round, so each round's paths are
//! measured side by side, close in time. A path keeps its median run, and its ratio to the echo
//! is the median of the ratios of each round (paired), with their range: on a noisy machine the
//! speed moves between runs, and a ratio of two runs made minutes apart would carry that.

use crate::peer::Path;
use crate::{Kind, Row};

/// The median and range of a ratio measured once per round.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spread {
    /// The median (the lower middle value for an even count).
    pub median: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// How many rounds it comes from.
    pub rounds: usize,
}

impl Spread {
    /// The spread of `values` (`None` if there are none).
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let (min, max) = (*v.first()?, *v.last()?);
        let median = *v.get((v.len() - 1) / 2)?;
        Some(Self { median, min, max, rounds: v.len() })
    }
}

/// What a path's median run is chosen by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// Messages per second (saturation runs).
    Throughput,
    /// 99th-percentile latency (fixed-rate runs).
    P99,
}

/// Reduces `rounds` (each holding one run of every path, in the same order) to one row per
/// path: its median run by `by`, with its per-round ratio to the echo's msg/s (saturation) or
/// p99 (fixed rate) of the same round when the echo ran (and the path is not the echo), and
/// for the cluster path the same ratio to the single relay's ([`Kind::SINGLE_RELAY`]).
pub fn reduce(rounds: &[Vec<Row>], by: By) -> Vec<Row> {
    let Some(first) = rounds.first() else { return Vec::new() };
    let value = |r: &Row| match by {
        By::Throughput => r.m.msgs_per_s,
        By::P99 => r.m.latency.p99,
    };
    first
        .iter()
        .enumerate()
        .filter_map(|(i, proto)| {
            let mut runs: Vec<Row> = rounds.iter().filter_map(|r| r.get(i).copied()).collect();
            runs.sort_by(|a, b| value(a).total_cmp(&value(b)));
            let mut row = *runs.get((runs.len().checked_sub(1)?) / 2)?;
            let ratios = |base: Kind| -> Vec<f64> {
                rounds
                    .iter()
                    .filter_map(|round| {
                        let mine = round.get(i)?;
                        let base = round.iter().find(|r| r.kind == base)?;
                        (value(base) > 0.0).then(|| value(mine) / value(base))
                    })
                    .collect()
            };
            // The echo against itself says nothing.
            row.vs_echo =
                if row.kind == Kind::Echo { None } else { Spread::of(&ratios(Kind::Echo)) };
            row.vs_relay = if row.kind == Kind::Peer(Path::Cluster) {
                Spread::of(&ratios(Kind::SINGLE_RELAY))
            } else {
                None
            };
            debug_assert_eq!(row.kind, proto.kind);
            Some(row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Measured;

    fn row(kind: Kind, msgs_per_s: f64, p99: f64) -> Row {
        let mut m = Measured { msgs_per_s, ..Measured::default() };
        m.latency.p99 = p99;
        Row {
            kind,
            size: 64,
            m,
            frames_per_msg: None,
            vs_echo: None,
            vs_relay: None,
            broker_frames_per_msg: None,
        }
    }

    #[test]
    fn the_median_run_is_kept_and_ratios_are_paired_by_round() {
        let fwd = Kind::Forward;
        let rounds = vec![
            vec![row(Kind::Echo, 100.0, 10.0), row(fwd, 60.0, 30.0)],
            vec![row(Kind::Echo, 200.0, 5.0), row(fwd, 100.0, 20.0)],
            vec![row(Kind::Echo, 150.0, 8.0), row(fwd, 90.0, 40.0)],
        ];
        let rows = reduce(&rounds, By::Throughput);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].m.msgs_per_s, 150.0, "the echo's median run");
        assert_eq!(rows[1].m.msgs_per_s, 90.0, "the forwarder's median run");
        // Per round: 0.6, 0.5, 0.6 — not 90 / 150 from two different rounds.
        let s = rows[1].vs_echo.unwrap();
        assert_eq!((s.median, s.min, s.max, s.rounds), (0.6, 0.5, 0.6, 3));
        assert_eq!(rows[0].vs_echo, None, "the echo has no ratio to itself");

        let by_p99 = reduce(&rounds, By::P99);
        assert_eq!(by_p99[1].m.latency.p99, 30.0, "the median p99 run");
        assert_eq!(by_p99[1].vs_echo.unwrap().median, 4.0, "3, 4 and 5 × the echo's p99");
    }

    #[test]
    fn the_cluster_is_paired_with_the_single_relay_of_its_round() {
        let (relay, cluster) = (Kind::SINGLE_RELAY, Kind::Peer(Path::Cluster));
        let rounds = vec![
            vec![row(relay, 100.0, 10.0), row(cluster, 50.0, 30.0)],
            vec![row(relay, 40.0, 10.0), row(cluster, 30.0, 20.0)],
            vec![row(relay, 80.0, 10.0), row(cluster, 60.0, 40.0)],
        ];
        let rows = reduce(&rounds, By::Throughput);
        let s = rows[1].vs_relay.unwrap();
        // Per round: 0.5, 0.75, 0.75.
        assert_eq!((s.median, s.min, s.max, s.rounds), (0.75, 0.5, 0.75, 3));
        assert_eq!(rows[0].vs_relay, None, "only the cluster is compared with the relay");
        assert_eq!(rows[1].vs_echo, None, "no echo ran");
    }

    #[test]
    fn without_an_echo_there_is_no_ratio_and_an_even_count_takes_the_lower_middle() {
        let rounds = vec![vec![row(Kind::Forward, 4.0, 1.0)], vec![row(Kind::Forward, 2.0, 1.0)]];
        let rows = reduce(&rounds, By::Throughput);
        assert_eq!(rows[0].m.msgs_per_s, 2.0);
        assert_eq!(rows[0].vs_echo, None);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[3.0, f64::NAN, 1.0]).map(|s| s.median), Some(1.0));
        assert!(reduce(&[], By::P99).is_empty());
    }
}
