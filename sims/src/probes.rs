//! Named probes: the paths through the system that matter, and which of
//! them a run reached (FoundationDB's `CODE_PROBE`, Antithesis'
//! "sometimes" assertions).
//!
//! A probe is read from the typed history, never from rendered text:
//! - most are **derived** from events the code already emits, wherever that
//!   is exact (a dedup hit is a `DedupHit` event; a breaker's half-open
//!   probe that failed is a `half-open -> open` transition; commit
//!   ambiguity resolved by replay is an attempt that failed with an unknown
//!   outcome followed by a replayed answer under the same request ID);
//! - a path that leaves no event of its own emits a library
//!   [`abacus::trace::Probe`] where it is taken (a store failure answered
//!   with an unknown fate, a claim taken over, a record expired under its
//!   retry), which maps one to one onto a [`Probe`] here.
//!
//! Every sweep reports how often each probe was reached ([`Coverage`], in
//! the fixed order of [`Probe::ALL`]), and fails when a probe its scenario
//! requires ([`Scenario::probes`](crate::Scenario::probes)) was never
//! reached — on sweeps only: one seed need not reach every path. The
//! coverage-guided explorer ([`crate::explore`]) uses the same counts as
//! its signal.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    time::Duration,
};

use abacus::{
    client::{Reply, breaker::State, retry::Stop},
    store::guard,
    trace::{self, Event, Outcome},
};

use crate::{
    history::{Entry, Record},
    workload::Note,
    world::{Run, store},
};

/// A path worth reaching. The order of the variants is the order of every
/// report: client, then server, then store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Probe {
    /// The client paused and retried (not on the server's pushback).
    Retry,
    /// The client waited the pause the server asked for (pushback).
    PushbackHonoured,
    /// The retry budget ran dry and the client gave up.
    RetryBudgetExhausted,
    /// At-most-once: a failed attempt that may have been applied was not
    /// re-sent.
    AtMostOnceStopped,
    /// A client's circuit breaker opened from closed.
    BreakerOpened,
    /// An open breaker refused a call without sending it.
    BreakerRejected,
    /// A half-open breaker's probe failed, and it opened again.
    HalfOpenProbeFailed,
    /// A half-open breaker's probes succeeded, and it closed.
    BreakerClosedAfterProbe,
    /// A hedged call was answered by a hedge, not by its first attempt.
    HedgeWon,
    /// A logical call failed at one replica and went on at another.
    Failover,
    /// Commit ambiguity resolved by replay: an attempt failed with an
    /// unknown outcome, and a later attempt under the same request ID (on
    /// any replica) was answered from the record.
    ReplayAfterUnknown,
    /// The server shed a call (load shedding).
    Shed,
    /// The caller's deadline passed before the server applied a request.
    ServerDeadlineExpired,
    /// A repeat was answered from the dedup record.
    DedupHit,
    /// A duplicate reached a server while the first execution was in
    /// flight there, and waited for it.
    DuplicateJoined,
    /// A duplicate waited for the first execution's outcome until its own
    /// time ran out, and was answered "still in flight".
    StillInFlight,
    /// A duplicate that waited took the claim over: the first execution
    /// ended without applying.
    ClaimTakenOver,
    /// A retry's own lookup found its dedup record past the TTL.
    DedupExpiredUnderRetry,
    /// A duplicate from another connection (another replica, or a later
    /// attempt) waited at the store for the claim it held.
    StoreDuplicateJoined,
    /// A claim was released without a record: its connection to the store
    /// closed before commit (a rollback).
    ClaimRolledBack,
    /// The store committed and the reply was lost on the way back.
    CommitReplyLost,
    /// A replica's store guard opened its breaker from closed: the store
    /// is failing or slow, and the replica stops sending it work.
    StoreBreakerOpened,
    /// A replica answered a store failure with an unknown fate.
    StoreFateUnknown,
}

impl Probe {
    /// Every probe, in report order.
    pub const ALL: [Probe; 23] = [
        Self::Retry,
        Self::PushbackHonoured,
        Self::RetryBudgetExhausted,
        Self::AtMostOnceStopped,
        Self::BreakerOpened,
        Self::BreakerRejected,
        Self::HalfOpenProbeFailed,
        Self::BreakerClosedAfterProbe,
        Self::HedgeWon,
        Self::Failover,
        Self::ReplayAfterUnknown,
        Self::Shed,
        Self::ServerDeadlineExpired,
        Self::DedupHit,
        Self::DuplicateJoined,
        Self::StillInFlight,
        Self::ClaimTakenOver,
        Self::DedupExpiredUnderRetry,
        Self::StoreDuplicateJoined,
        Self::ClaimRolledBack,
        Self::CommitReplyLost,
        Self::StoreBreakerOpened,
        Self::StoreFateUnknown,
    ];

    /// Kebab-case name, as reports print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::PushbackHonoured => "pushback-honoured",
            Self::RetryBudgetExhausted => "retry-budget-exhausted",
            Self::AtMostOnceStopped => "at-most-once-stopped",
            Self::BreakerOpened => "breaker-opened",
            Self::BreakerRejected => "breaker-rejected",
            Self::HalfOpenProbeFailed => "half-open-probe-failed",
            Self::BreakerClosedAfterProbe => "breaker-closed-after-probe",
            Self::HedgeWon => "hedge-won",
            Self::Failover => "failover",
            Self::ReplayAfterUnknown => "replay-after-unknown",
            Self::Shed => "shed",
            Self::ServerDeadlineExpired => "server-deadline-expired",
            Self::DedupHit => "dedup-hit",
            Self::DuplicateJoined => "duplicate-joined",
            Self::StillInFlight => "still-in-flight",
            Self::ClaimTakenOver => "claim-taken-over",
            Self::DedupExpiredUnderRetry => "dedup-expired-under-retry",
            Self::StoreDuplicateJoined => "store-duplicate-joined",
            Self::ClaimRolledBack => "claim-rolled-back",
            Self::CommitReplyLost => "commit-reply-lost",
            Self::StoreBreakerOpened => "store-breaker-opened",
            Self::StoreFateUnknown => "store-fate-unknown",
        }
    }

    /// The probe a library probe event stands for.
    pub fn of_library(p: trace::Probe) -> Self {
        match p {
            trace::Probe::StoreFateUnknown => Self::StoreFateUnknown,
            trace::Probe::StillInFlight => Self::StillInFlight,
            trace::Probe::ClaimTakenOver => Self::ClaimTakenOver,
            trace::Probe::DedupExpiredUnderRetry => Self::DedupExpiredUnderRetry,
        }
    }

    /// Position in [`Probe::ALL`].
    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|p| *p == self)
            .unwrap_or_default()
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One probe reached, where and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Simulated time.
    pub at: Duration,
    /// The host whose record shows it.
    pub host: String,
    /// Which.
    pub probe: Probe,
}

/// True for a client host's record (`client-1`, `client-1/replica-2`).
fn is_client(host: &str) -> bool {
    host.starts_with("client-")
}

/// The probe a record shows on its own, without context.
fn of_record(r: &Record) -> Option<Probe> {
    Some(match &r.entry {
        Entry::Event(e) => match e {
            Event::Probe(p) => Probe::of_library(*p),
            Event::Backoff { pushback: true, .. } => Probe::PushbackHonoured,
            Event::Backoff { .. } => Probe::Retry,
            Event::GaveUp {
                reason: Stop::BudgetExhausted,
                ..
            } => Probe::RetryBudgetExhausted,
            Event::GaveUp {
                reason: Stop::MayHaveBeenApplied,
                ..
            } => Probe::AtMostOnceStopped,
            Event::BreakerTransition { from, to, .. } if is_client(&r.host) => match (from, to) {
                (State::Closed, State::Open) => Probe::BreakerOpened,
                (State::HalfOpen, State::Open) => Probe::HalfOpenProbeFailed,
                (State::HalfOpen, State::Closed) => Probe::BreakerClosedAfterProbe,
                _ => return None,
            },
            // The guard in front of a replica's store reports its breaker
            // like a client's, from the replica's host.
            Event::BreakerTransition {
                endpoint,
                from: State::Closed,
                to: State::Open,
            } if endpoint == guard::ENDPOINT => Probe::StoreBreakerOpened,
            // Attempt 1 winning a hedged call is the hedge not needed.
            Event::HedgeWon { attempt, .. } if *attempt > 1 => Probe::HedgeWon,
            Event::BreakerRejected { .. } => Probe::BreakerRejected,
            Event::Shed { .. } => Probe::Shed,
            Event::ServerDeadlineExpired { .. } => Probe::ServerDeadlineExpired,
            Event::DedupHit { .. } => Probe::DedupHit,
            Event::DedupJoined { .. } if r.host == store::HOST => Probe::StoreDuplicateJoined,
            Event::DedupJoined { .. } => Probe::DuplicateJoined,
            _ => return None,
        },
        Entry::Note(Note::Failover { .. }) => Probe::Failover,
        Entry::Store(store::StoreNote::RolledBack { .. }) => Probe::ClaimRolledBack,
        Entry::Store(store::StoreNote::ReplyLost { .. }) => Probe::CommitReplyLost,
        _ => return None,
    })
}

/// Commit ambiguity resolved by replay, across the client hosts of a run:
/// request IDs (one per logical call, kept across retries and replicas)
/// that saw an attempt fail with an unknown outcome, and then a call
/// under that ID answered from the record.
#[derive(Debug, Default)]
struct Ambiguity<'a> {
    /// `(host, call)` → the call's request ID.
    ids: BTreeMap<(&'a str, u64), &'a str>,
    /// Request IDs with an unknown outcome so far.
    unknown: BTreeSet<&'a str>,
}

impl<'a> Ambiguity<'a> {
    fn resolved(&mut self, r: &'a Record) -> bool {
        let Entry::Event(e) = &r.entry else {
            return false;
        };
        match e {
            Event::CallStarted {
                call, request_id, ..
            } if !request_id.is_empty() => {
                self.ids.insert((r.host.as_str(), *call), request_id);
                false
            }
            Event::AttemptFailed { call, error, .. } if error.outcome == Outcome::Unknown => {
                if let Some(id) = self.ids.get(&(r.host.as_str(), *call)) {
                    self.unknown.insert(id);
                }
                false
            }
            Event::CallFinished {
                call,
                result: Ok(Reply::Accumulated { replayed: true, .. }),
                ..
            } => self
                .ids
                .get(&(r.host.as_str(), *call))
                .is_some_and(|id| self.unknown.contains(id)),
            _ => false,
        }
    }
}

/// Every probe `records` reached, in record order.
pub fn hits(records: &[Record]) -> Vec<Hit> {
    let mut ambiguity = Ambiguity::default();
    let mut out = Vec::new();
    for r in records {
        let mut hit = |probe| {
            out.push(Hit {
                at: r.at,
                host: r.host.clone(),
                probe,
            })
        };
        if let Some(p) = of_record(r) {
            hit(p);
        }
        if ambiguity.resolved(r) {
            hit(Probe::ReplayAfterUnknown);
        }
    }
    out
}

/// How often each probe was reached over some runs: the runs that reached
/// it and its hits in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Per probe, in [`Probe::ALL`] order: (runs, hits).
    counts: [(u64, u64); Probe::ALL.len()],
    runs: u64,
}

impl Coverage {
    /// The coverage of one run.
    pub fn of(run: &Run) -> Self {
        let mut c = Self {
            runs: 1,
            ..Self::default()
        };
        for h in hits(&run.records) {
            c.counts[h.probe.index()].1 += 1;
        }
        for (runs, hits) in &mut c.counts {
            *runs = u64::from(*hits > 0);
        }
        c
    }

    /// Adds another's counts to these.
    pub fn add(&mut self, other: &Coverage) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
        self.runs += other.runs;
    }

    /// The coverage of several runs.
    pub fn of_runs<'a>(runs: impl IntoIterator<Item = &'a Run>) -> Self {
        let mut c = Self::default();
        for run in runs {
            c.add(&Self::of(run));
        }
        c
    }

    /// Runs counted.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// Runs that reached `p`.
    pub fn runs_reaching(&self, p: Probe) -> u64 {
        self.counts[p.index()].0
    }

    /// Times `p` was reached, over every run.
    pub fn hits(&self, p: Probe) -> u64 {
        self.counts[p.index()].1
    }

    /// The probes reached at least once, in report order.
    pub fn reached(&self) -> impl Iterator<Item = Probe> + '_ {
        Probe::ALL
            .into_iter()
            .filter(|p| self.runs_reaching(*p) > 0)
    }
}

impl fmt::Display for Coverage {
    /// One line per probe, in [`Probe::ALL`] order: the runs that reached
    /// it and its hits; `-` for a probe never reached.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "  {:<28} {:>7} {:>8}", "probe", "runs", "hits")?;
        for p in Probe::ALL {
            let (runs, hits) = self.counts[p.index()];
            if runs == 0 {
                writeln!(f, "  {:<28} {:>7} {:>8}", p.name(), "-", "-")?;
            } else {
                writeln!(f, "  {:<28} {runs:>7} {hits:>8}", p.name())?;
            }
        }
        write!(
            f,
            "  {} of {} probes reached over {} runs",
            self.reached().count(),
            Probe::ALL.len(),
            self.runs
        )
    }
}

#[cfg(test)]
mod tests {
    use abacus::{
        client::{CallError, Cause},
        rpc::Method,
    };
    use tonic::Code;

    use super::*;

    fn at(ms: u64, host: &str, e: Event) -> Record {
        Record {
            at: Duration::from_millis(ms),
            host: host.into(),
            entry: Entry::Event(e),
        }
    }

    fn started(host: &str, call: u64, id: &str) -> Record {
        at(
            0,
            host,
            Event::CallStarted {
                call,
                method: Method::Accumulate,
                request_id: id.into(),
                deadline_ms: 1_000,
            },
        )
    }

    fn failed(host: &str, call: u64, outcome: Outcome) -> Record {
        at(
            1,
            host,
            Event::AttemptFailed {
                call,
                attempt: 1,
                error: CallError::new(Code::Unavailable, "x", Cause::Status, outcome),
            },
        )
    }

    fn replayed(host: &str, call: u64) -> Record {
        at(
            2,
            host,
            Event::CallFinished {
                call,
                attempts: 0,
                result: Ok(Reply::Accumulated {
                    value: 1.0,
                    replayed: true,
                }),
                outcome: Outcome::Applied,
            },
        )
    }

    fn probes(records: &[Record]) -> Vec<Probe> {
        hits(records).into_iter().map(|h| h.probe).collect()
    }

    /// Commit ambiguity resolved by replay follows the request ID across
    /// client hosts (a failover to another replica's client), and needs
    /// both halves: an unknown outcome first, a replay after.
    #[test]
    fn replay_after_unknown_needs_the_unknown_and_the_replay_under_one_id() {
        let across = [
            started("client-1/replica-1", 1, "id-1"),
            failed("client-1/replica-1", 1, Outcome::Unknown),
            started("client-1/replica-2", 1, "id-1"),
            replayed("client-1/replica-2", 1),
        ];
        assert!(probes(&across).contains(&Probe::ReplayAfterUnknown));
        // Not applied, then replayed: no ambiguity was resolved.
        let known = [
            started("client-1", 1, "id-1"),
            failed("client-1", 1, Outcome::NotApplied),
            replayed("client-1", 1),
        ];
        assert!(!probes(&known).contains(&Probe::ReplayAfterUnknown));
        // An unknown outcome under another ID does not count.
        let other = [
            started("client-1", 1, "id-1"),
            failed("client-1", 1, Outcome::Unknown),
            started("client-1", 2, "id-2"),
            replayed("client-1", 2),
        ];
        assert!(!probes(&other).contains(&Probe::ReplayAfterUnknown));
    }

    /// The same event means a different probe by where it happened: a
    /// join at the store is a cross-connection duplicate; a breaker is a
    /// client's only on a client host.
    #[test]
    fn where_an_event_happened_decides_its_probe() {
        let joined = |host| {
            at(
                0,
                host,
                Event::DedupJoined {
                    request_id: "id".into(),
                },
            )
        };
        let opened = |host, endpoint: &str| {
            at(
                0,
                host,
                Event::BreakerTransition {
                    endpoint: endpoint.into(),
                    from: State::Closed,
                    to: State::Open,
                },
            )
        };
        assert_eq!(
            probes(&[
                joined("store"),
                joined("replica-1"),
                opened("client-2", "replica-1"),
                opened("replica-1", "x"),
                opened("replica-1", guard::ENDPOINT),
                at(0, "replica-2", Event::Probe(trace::Probe::StoreFateUnknown)),
            ]),
            [
                Probe::StoreDuplicateJoined,
                Probe::DuplicateJoined,
                Probe::BreakerOpened,
                Probe::StoreBreakerOpened,
                Probe::StoreFateUnknown,
            ]
        );
    }

    /// A hedge won only when an attempt after the first answered: the
    /// first attempt beating its hedges is the hedge not needed.
    #[test]
    fn hedge_won_is_a_later_attempt_answering() {
        let won = |attempt| at(0, "client-1", Event::HedgeWon { call: 1, attempt });
        assert_eq!(probes(&[won(1)]), []);
        assert_eq!(
            probes(&[won(2), won(3)]),
            [Probe::HedgeWon, Probe::HedgeWon]
        );
    }

    #[test]
    fn names_are_unique_and_coverage_lists_every_probe_in_order() {
        let names: BTreeSet<_> = Probe::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Probe::ALL.len());
        let mut sorted = Probe::ALL;
        sorted.sort();
        assert_eq!(sorted, Probe::ALL, "ALL is in declaration order");
        let run = Run {
            seed: 0,
            records: vec![
                started("client-1", 1, "a"),
                failed("client-1", 1, Outcome::Unknown),
                replayed("client-1", 1),
                replayed("client-1", 1),
            ],
            accumulates: vec![],
            reads: vec![],
            sim_result: Ok(()),
            panics: Vec::new(),
            store_calls_peak: vec![],
        };
        let mut c = Coverage::of(&run);
        c.add(&Coverage::of(&run));
        assert_eq!(c.runs(), 2);
        assert_eq!(c.runs_reaching(Probe::ReplayAfterUnknown), 2);
        assert_eq!(c.hits(Probe::ReplayAfterUnknown), 4);
        assert_eq!(c.reached().collect::<Vec<_>>(), [Probe::ReplayAfterUnknown]);
        let table = c.to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), Probe::ALL.len() + 2, "{table}");
        assert!(lines[1].starts_with("  retry "), "{table}");
    }
}
