//! The numbered cases, grouped by spec area. `spec/protocol.md` §24 lists them.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use crate::Outcome;
use crate::ctx::Ctx;

mod auth;
mod binary;
mod chunks;
mod endpoints;
mod frames;
mod handshake;
mod http;
mod open;
mod session;
mod topics;

/// Why a case did not pass.
pub(crate) enum Verdict {
    Fail(String),
    Skip(String),
}

impl From<String> for Verdict {
    fn from(s: String) -> Self {
        Verdict::Fail(s)
    }
}

impl From<&str> for Verdict {
    fn from(s: &str) -> Self {
        Verdict::Fail(s.to_owned())
    }
}

pub(crate) type CaseResult = Result<(), Verdict>;

/// Fails the case with a formatted reason unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::cases::Verdict::Fail(format!($($arg)+)));
        }
    };
}
pub(crate) use ensure;

/// One case.
pub(crate) struct Case {
    pub id: &'static str,
    pub section: &'static str,
    pub title: &'static str,
    /// Waits for the node's timers; runs only with `--slow`.
    pub slow: bool,
    /// Needs a node that refuses identities it does not hold (skipped with `open_node`).
    pub allowlist: bool,
    /// Needs a node with the open trust policy (runs only with `open_node`).
    pub open: bool,
    pub run: fn(&Ctx) -> CaseResult,
}

/// A case as documented: id, spec section, title, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseInfo {
    /// e.g. `"C-7.3"`.
    pub id: &'static str,
    /// e.g. `"§7.9"`.
    pub spec_section: &'static str,
    /// What the case sends and expects, in a few words.
    pub title: &'static str,
    /// Runs only with `--slow`.
    pub slow: bool,
    /// Skipped against a node with the open trust policy.
    pub allowlist: bool,
    /// Run only against a node with the open trust policy (it uses identities the node has
    /// never seen).
    pub open: bool,
}

/// Every case, in run order.
pub fn catalogue() -> Vec<CaseInfo> {
    CASES
        .iter()
        .map(|c| CaseInfo {
            id: c.id,
            spec_section: c.section,
            title: c.title,
            slow: c.slow,
            allowlist: c.allowlist,
            open: c.open,
        })
        .collect()
}

pub(crate) const fn case(
    id: &'static str,
    section: &'static str,
    title: &'static str,
    run: fn(&Ctx) -> CaseResult,
) -> Case {
    Case { id, section, title, slow: false, allowlist: false, open: false, run }
}

pub(crate) const fn slow(mut c: Case) -> Case {
    c.slow = true;
    c
}

pub(crate) const fn allowlist(mut c: Case) -> Case {
    c.allowlist = true;
    c
}

pub(crate) const fn open(mut c: Case) -> Case {
    c.open = true;
    c
}

pub(crate) static CASES: std::sync::LazyLock<Vec<Case>> = std::sync::LazyLock::new(|| {
    let mut all = Vec::new();
    all.extend(endpoints::cases());
    all.extend(auth::cases());
    all.extend(open::cases());
    all.extend(frames::cases());
    all.extend(handshake::cases());
    all.extend(session::cases());
    all.extend(chunks::cases());
    all.extend(http::cases());
    all.extend(topics::cases());
    all.extend(binary::cases());
    all
});

/// Runs one case on a thread of its own, bounded by `timeout`.
pub(crate) fn run_one(case: &'static Case, ctx: &Arc<Ctx>, timeout: Duration) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let ctx = Arc::clone(ctx);
    let spawned = std::thread::Builder::new().name(case.id.to_owned()).spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(&ctx)));
        let _ = tx.send(result);
    });
    if let Err(e) = spawned {
        return Outcome::Fail(format!("cannot start the case's thread: {e}"));
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(Ok(()))) => Outcome::Pass,
        Ok(Ok(Err(Verdict::Fail(r)))) => Outcome::Fail(r),
        Ok(Ok(Err(Verdict::Skip(r)))) => Outcome::Skipped(r),
        Ok(Err(_)) => Outcome::Fail("the checker panicked (a checker bug)".into()),
        Err(_) => Outcome::Fail(format!("the case did not finish within {timeout:?}")),
    }
}
