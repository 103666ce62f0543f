//! The outcome of a run: one line per case, a summary, and a JSON form.

use std::time::Duration;

use serde_json::json;

use crate::cases::Case;

/// What happened to one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node behaved as the spec says.
    Pass,
    /// It did not; the reason says what was expected and what came.
    Fail(String),
    /// The case did not run; the reason says why.
    Skipped(String),
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseReport {
    /// The case id, e.g. `"C-7.3"`.
    pub id: &'static str,
    /// The spec section it checks, e.g. `"§7.9"`.
    pub spec_section: &'static str,
    /// What it checks.
    pub title: &'static str,
    /// Pass, fail or skipped.
    pub outcome: Outcome,
    /// How long it ran.
    pub duration: Duration,
}

impl CaseReport {
    pub(crate) fn new(case: &Case, outcome: Outcome, duration: Duration) -> Self {
        Self { id: case.id, spec_section: case.section, title: case.title, outcome, duration }
    }

    /// One line: `PASS C-7.1 §7 handshake happy path`, `FAIL … — reason`, `SKIP … — reason`.
    pub fn line(&self) -> String {
        let head = format!("{} {} {}", self.id, self.spec_section, self.title);
        match &self.outcome {
            Outcome::Pass => format!("PASS {head}"),
            Outcome::Fail(r) => format!("FAIL {head} — {r}"),
            Outcome::Skipped(r) => format!("SKIP {head} — {r}"),
        }
    }
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The node's base URL.
    pub target: String,
    /// Every selected case, in order.
    pub cases: Vec<CaseReport>,
    /// Wall time of the run.
    pub duration: Duration,
}

impl Report {
    pub(crate) fn new(target: String, cases: Vec<CaseReport>, duration: Duration) -> Self {
        Self { target, cases, duration }
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.outcome)).count()
    }

    /// Cases passed.
    pub fn passed(&self) -> usize {
        self.count(|o| *o == Outcome::Pass)
    }

    /// Cases failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Fail(_)))
    }

    /// Cases skipped.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }

    /// No case failed.
    pub fn is_success(&self) -> bool {
        self.failed() == 0
    }

    /// One line per case, then the summary.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self.cases.iter().map(CaseReport::line).collect();
        out.push(self.summary());
        out
    }

    /// `N passed, N failed, N skipped in T s`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped in {:.1} s",
            self.passed(),
            self.failed(),
            self.skipped(),
            self.duration.as_secs_f64()
        )
    }

    /// The machine-readable report.
    pub fn to_json(&self) -> String {
        let cases: Vec<_> = self
            .cases
            .iter()
            .map(|c| {
                let (outcome, reason) = match &c.outcome {
                    Outcome::Pass => ("pass", None),
                    Outcome::Fail(r) => ("fail", Some(r.as_str())),
                    Outcome::Skipped(r) => ("skipped", Some(r.as_str())),
                };
                json!({
                    "id": c.id,
                    "spec_section": c.spec_section,
                    "title": c.title,
                    "outcome": outcome,
                    "reason": reason,
                    "duration_ms": u64::try_from(c.duration.as_millis()).unwrap_or(u64::MAX),
                })
            })
            .collect();
        let v = json!({
            "target": self.target,
            "passed": self.passed(),
            "failed": self.failed(),
            "skipped": self.skipped(),
            "duration_ms": u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            "cases": cases,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}
