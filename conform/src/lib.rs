//! # peerlink-conform
//!
//! A black-box conformance suite for peerlink nodes, in the spirit of h2spec and the Autobahn
//! testsuite: it drives a node only through its URL (HTTP and WebSocket) with numbered cases, each
//! tied to a section of `spec/protocol.md` (§24 lists them), and reports pass, fail (with the
//! reason) or skipped for each. `peerlink-core` is used only for wire primitives: envelopes, the
//! handshake [`Initiator`](peerlink_core::Initiator), sessions and signatures.
//!
//! The node under test must trust the tester's identity (an allowlist entry, or the open policy;
//! with the open policy the cases about untrusted identities are skipped and the cases about
//! identities the node has never seen run, see [`Options::open_node`]). Everything the node sends is treated as hostile: a misbehaving node
//! yields a failed case with a reason, never a panic.
//!
//! ```no_run
//! use std::sync::Arc;
//! use peerlink_conform::{Options, Target, run};
//! use peerlink_core::{EntityId, Identity};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = Identity::from_secret_bytes(EntityId::new("tester")?, &[7; 32]);
//! let target = Target::new("http://127.0.0.1:7420", Arc::new(identity));
//! let report = run(&target, &Options::default());
//! for line in report.lines() {
//!     println!("{line}");
//! }
//! assert!(report.is_success());
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(unused_must_use)]
#![warn(missing_docs)]

mod cases;
mod ctx;
mod http;
mod peer;
mod report;
mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use peerlink_core::{EntityId, Identity};

pub use cases::{CaseInfo, catalogue};
pub use report::{CaseReport, Outcome, Report};

/// The node under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its HTTP base URL, `http://host:port` (a path prefix is allowed).
    pub base_url: String,
    /// Its entity id; learned from `GET /peers/capabilities` when `None`.
    pub node_id: Option<EntityId>,
    /// The tester's identity, which the node must trust.
    pub identity: Arc<Identity>,
}

impl Target {
    /// A target at `base_url` whose entity id is learned from the node itself.
    pub fn new(base_url: impl Into<String>, identity: Arc<Identity>) -> Self {
        Self { base_url: base_url.into(), node_id: None, identity }
    }
}

/// How the suite runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Also run the cases flagged slow (they wait for the node's timers, e.g. the 5 s handshake
    /// timeout or the 25 s long poll).
    pub slow: bool,
    /// Run only the cases whose id starts with one of these prefixes, separated by commas (e.g.
    /// `"C-7."` or `"C-21.,C-2.3."`).
    pub only: Option<String>,
    /// The node runs the open trust policy and does not hold the tester's id: the cases that
    /// need an identity the node refuses are skipped, and those that need one it admits
    /// without holding it (fresh identities, spec §2.3) run.
    pub open_node: bool,
    /// Upper bound on one case; a case still running then fails (and its thread is abandoned).
    pub case_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { slow: false, only: None, open_node: false, case_timeout: Duration::from_secs(20) }
    }
}

/// Runs the suite against `target` and reports every case (skipped ones included).
pub fn run(target: &Target, options: &Options) -> Report {
    let started = Instant::now();
    let selected: Vec<&'static cases::Case> = cases::CASES
        .iter()
        .filter(|c| {
            options.only.as_deref().is_none_or(|only| {
                only.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .any(|p| c.id.starts_with(p))
            })
        })
        .collect();
    let mut results = Vec::with_capacity(selected.len());
    let ctx = match ctx::Ctx::connect(target) {
        Ok(ctx) => Arc::new(ctx),
        Err(reason) => {
            for case in selected {
                results.push(CaseReport::new(
                    case,
                    Outcome::Fail(format!("setup: {reason}")),
                    Duration::ZERO,
                ));
            }
            return Report::new(target.base_url.clone(), results, started.elapsed());
        }
    };
    for case in selected {
        let outcome = if case.slow && !options.slow {
            Some(Outcome::Skipped("slow case; run with --slow".into()))
        } else if case.allowlist && options.open_node {
            Some(Outcome::Skipped("needs a node that refuses unknown identities".into()))
        } else if case.open && !options.open_node {
            Some(Outcome::Skipped(
                "needs a node with the open trust policy; run with --open-node".into(),
            ))
        } else {
            None
        };
        let t0 = Instant::now();
        // Slow cases wait for the node's own timers (up to the 25 s long poll).
        let timeout = if case.slow {
            options.case_timeout.max(Duration::from_secs(45))
        } else {
            options.case_timeout
        };
        let outcome = outcome.unwrap_or_else(|| cases::run_one(case, &ctx, timeout));
        results.push(CaseReport::new(case, outcome, t0.elapsed()));
    }
    Report::new(target.base_url.clone(), results, started.elapsed())
}
