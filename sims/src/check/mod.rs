//! Invariant checks over a run's history: a passive observer that asserts
//! both what must happen and what must not. Each check returns violations
//! with enough detail to find the spot in the timeline.
//!
//! The checks read typed records only, and take their rules from the
//! library where the library has them (the breaker's legal transitions,
//! the caller-error codes): a reworded log line or a changed rule cannot
//! leave a check testing a stale copy.
//!
//! # Layout
//! - [`delivery`]: delivery promises (`applied-at-most-once`,
//!   `applied-once-per-request-id`, `acknowledged-implies-applied`,
//!   `not-applied-is-true`) and `register-consistent`.
//! - [`calls`]: per call: `within-deadline`, `attempts-bounded`,
//!   `no-retry-on-non-retryable`, `liveness`.
//! - [`breaker`]: `breaker-legal-transitions`, `breaker-open-sends-nothing`,
//!   `breaker-probes-bounded` (clients' breakers, and the replicas' store
//!   guards' transitions).
//! - [`cascade`]: `pure-calls-unaffected`, `store-work-bounded`, in the
//!   store cascade scenarios.
//! - [`linearizable`]: `linearizable`, from what the clients saw alone.
//! - [`disk`]: `durable-state`, what the durable server loads from its
//!   simulated disk against the history (and commits of unknown fate that
//!   reached the disk, credited as applied for the other checks).
//! - [`replicas`]: the replica-aware client: `not-serving-gets-nothing`,
//!   `hedges-bounded`, `hedge-only-repeatable`, `failover-within-bound`,
//!   `tail-within-bound`.
//! - [`notes`]: what the workload caught (`correct-results`, `liveness`).
//! - `no-panic` (here): no panic during the run, not even in a task a host
//!   spawned, which tokio swallows ([`crate::panics`]).
//! - [`call_trace`]: logical calls read from the clients' trace, what
//!   counts as an answer, the nearest-rank percentile — shared by the
//!   checks above and the scenario tests' figures.

pub mod breaker;
pub mod call_trace;
pub mod calls;
pub mod cascade;
pub mod delivery;
pub mod disk;
pub mod linearizable;
pub mod notes;
pub mod replicas;

use std::time::Duration;

use crate::{scenario::Scenario, world::Run};

/// A broken invariant.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Short invariant name.
    pub invariant: &'static str,
    /// What exactly broke.
    pub detail: String,
    /// Where in the timeline, when the check can say: the calls or events
    /// involved (the picture of a history highlights them).
    pub spots: Vec<Spot>,
}

/// A stretch of one host's timeline a violation involves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spot {
    /// The host (`client-1`, `client-1/replica-2`, `store`, …).
    pub host: String,
    /// From (simulated time).
    pub from: Duration,
    /// To (equal to `from` for an instant).
    pub to: Duration,
}

impl Violation {
    /// A violation of `invariant`, `detail` saying what broke.
    pub fn new(invariant: &'static str, detail: String) -> Self {
        Self {
            invariant,
            detail,
            spots: Vec::new(),
        }
    }

    /// The same, involving `host` from `from` to `to`.
    pub fn at(mut self, host: &str, from: Duration, to: Duration) -> Self {
        self.spots.push(Spot {
            host: host.to_owned(),
            from,
            to,
        });
        self
    }
}

/// Every check that applies to `scenario`.
pub fn check(scenario: &Scenario, run: &Run) -> Vec<Violation> {
    let mut v = Vec::new();
    if let Err(e) = &run.sim_result {
        v.push(Violation::new(
            "liveness",
            format!("the simulation did not complete: {e}"),
        ));
    }
    for p in &run.panics {
        v.push(Violation::new(
            "no-panic",
            format!("a panic during the run (tokio swallows a spawned task's, and its host goes on without the task): {p}"),
        ));
    }
    let reconciled;
    let run = match disk::reconcile(run, &mut v) {
        Some(records) => {
            reconciled = Run {
                records,
                ..run.clone()
            };
            &reconciled
        }
        None => run,
    };
    delivery::effects(scenario, run, &mut v);
    delivery::once_per_request_id(scenario, &run.records, &mut v);
    delivery::registers(scenario.state_is_durable(), &run.records, &mut v);
    linearizable::check(scenario, run, &mut v);
    calls::check(scenario, &run.records, &mut v);
    notes::check(scenario, &run.records, &mut v);
    replicas::check(scenario, &run.records, &mut v);
    let guarded = scenario.replicated().is_some_and(|r| r.guard.is_some());
    if scenario.breaker.is_some() || guarded {
        // Replicas send no attempts of their own: for their guards' breakers
        // only the transitions are checked, and the probe bound is the
        // client's.
        let probes = scenario.breaker.as_ref().map_or(1, |b| b.half_open_probes);
        breaker::check(probes, &run.records, &mut v);
    }
    if let Some(bounds) = &scenario.cascade {
        cascade::check(bounds, run, &mut v);
    }
    v
}

/// Each checker fed a hand-made history with exactly its bug: proves every
/// invariant can fail, including those no broken stack reaches in a sweep.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use abacus::{
        client::{CallError, Cause, Reply, breaker::State},
        rpc::Method,
        trace::{Event, Outcome},
    };
    use tonic::Code;

    use super::check;
    use crate::{
        history::{Entry, Record},
        scenario::Scenario,
        workload::{LogicalAccumulate, LogicalRead, Note, Wrong},
        world::Run,
    };

    fn at(ms: u64, host: &str, entry: Entry) -> Record {
        Record {
            at: Duration::from_millis(ms),
            host: host.into(),
            entry,
        }
    }

    fn applied(ms: u64, delta: f64, value: f64) -> Record {
        at(
            ms,
            "server",
            Entry::Event(Event::Applied {
                request_id: String::new(),
                register: "total".into(),
                delta,
                value,
            }),
        )
    }

    fn logical(delta: f64, result: Result<f64, (Code, Outcome)>) -> LogicalAccumulate {
        timed(delta, result, (0, 1))
    }

    /// A logical Accumulate called and answered at the given milliseconds.
    fn timed(
        delta: f64,
        result: Result<f64, (Code, Outcome)>,
        (called, returned): (u64, u64),
    ) -> LogicalAccumulate {
        LogicalAccumulate {
            host: "client-1".into(),
            register: "total".into(),
            delta,
            result,
            called: Duration::from_millis(called),
            returned: Duration::from_millis(returned),
        }
    }

    fn call(ms: u64, id: u64, deadline_ms: u64) -> Record {
        at(
            ms,
            "client-1",
            Entry::Event(Event::CallStarted {
                call: id,
                method: Method::Add,
                request_id: String::new(),
                deadline_ms,
            }),
        )
    }

    fn finished(ms: u64, id: u64) -> Record {
        at(
            ms,
            "client-1",
            Entry::Event(Event::CallFinished {
                call: id,
                attempts: 0,
                result: Ok(Reply::Calc(1.0)),
                outcome: Outcome::Applied,
            }),
        )
    }

    fn attempt(ms: u64, id: u64, n: u32) -> Record {
        at(
            ms,
            "client-1",
            Entry::Event(Event::AttemptStarted {
                call: id,
                attempt: n,
                endpoint: "server".into(),
                timeout_ms: 100,
            }),
        )
    }

    fn transition(ms: u64, from: State, to: State) -> Record {
        at(
            ms,
            "client-1",
            Entry::Event(Event::BreakerTransition {
                endpoint: "server".into(),
                from,
                to,
            }),
        )
    }

    /// The invariants `check` reports for this history.
    fn found(
        s: &Scenario,
        records: Vec<Record>,
        accumulates: Vec<LogicalAccumulate>,
    ) -> Vec<&'static str> {
        violations(s, records, accumulates)
            .into_iter()
            .map(|v| v.invariant)
            .collect()
    }

    fn violations(
        s: &Scenario,
        records: Vec<Record>,
        accumulates: Vec<LogicalAccumulate>,
    ) -> Vec<super::Violation> {
        let run = Run {
            seed: 0,
            records,
            accumulates,
            reads: Vec::new(),
            sim_result: Ok(()),
            panics: Vec::new(),
            store_calls_peak: Vec::new(),
        };
        check(s, &run)
    }

    fn read(result: Result<Option<f64>, Code>, (called, returned): (u64, u64)) -> LogicalRead {
        LogicalRead {
            host: "client-2".into(),
            register: "total".into(),
            result,
            called: Duration::from_millis(called),
            returned: Duration::from_millis(returned),
        }
    }

    fn applied_with_id(ms: u64, id: &str, delta: f64, value: f64) -> Record {
        at(
            ms,
            "store",
            Entry::Event(Event::Applied {
                request_id: id.into(),
                register: "total".into(),
                delta,
                value,
            }),
        )
    }

    /// The checks the replicated world relies on, fed their bugs: a request
    /// ID applied twice (whatever the deltas say), a read that misses an
    /// acknowledged write; and their clean counterparts.
    #[test]
    fn replicated_invariants_can_fail() {
        let s = Scenario::new("synthetic");
        let run = |records, accumulates, reads| Run {
            seed: 0,
            records,
            accumulates,
            reads,
            sim_result: Ok(()),
            panics: Vec::new(),
            store_calls_peak: Vec::new(),
        };
        let invariants = |run: &Run| -> Vec<&'static str> {
            check(&s, run).into_iter().map(|v| v.invariant).collect()
        };
        let twice = run(
            vec![
                applied_with_id(1, "id-1", 5.0, 5.0),
                applied_with_id(2, "id-1", 5.0, 10.0),
            ],
            vec![],
            vec![],
        );
        assert!(invariants(&twice).contains(&"applied-once-per-request-id"));
        let once = run(vec![applied_with_id(1, "id-1", 5.0, 5.0)], vec![], vec![]);
        assert_eq!(invariants(&once), Vec::<&str>::new());
        // Acknowledged at 1 ms; a read from 2 to 3 ms says "absent".
        let write = || vec![timed(5.0, Ok(5.0), (0, 1))];
        let stale = run(
            vec![applied(1, 5.0, 5.0)],
            write(),
            vec![read(Ok(None), (2, 3))],
        );
        assert!(invariants(&stale).contains(&"linearizable"));
        // The same read seeing the write, or failing, is fine.
        for result in [Ok(Some(5.0)), Err(Code::Unavailable)] {
            let fine = run(
                vec![applied(1, 5.0, 5.0)],
                write(),
                vec![read(result, (2, 3))],
            );
            assert_eq!(invariants(&fine), Vec::<&str>::new(), "{result:?}");
        }
    }

    fn with_breaker() -> Scenario {
        let mut s = Scenario::new("synthetic");
        s.breaker = Some(Default::default());
        s
    }

    #[test]
    fn every_invariant_can_fail() {
        let s = Scenario::new("synthetic");
        let cases: Vec<(&str, Scenario, Vec<Record>, Vec<LogicalAccumulate>)> = vec![
            (
                // A lost update, as only the clients saw it: the second
                // acknowledgement does not include the first, which had
                // been acknowledged before it was sent.
                "linearizable",
                s.clone(),
                vec![applied(1, 5.0, 5.0), applied(3, 2.0, 7.0)],
                vec![timed(5.0, Ok(5.0), (0, 1)), timed(2.0, Ok(2.0), (2, 3))],
            ),
            (
                "applied-at-most-once",
                s.clone(),
                vec![applied(1, 5.0, 5.0), applied(2, 5.0, 10.0)],
                vec![logical(5.0, Ok(5.0))],
            ),
            (
                "acknowledged-implies-applied",
                s.clone(),
                vec![],
                vec![logical(5.0, Ok(5.0))],
            ),
            (
                "not-applied-is-true",
                s.clone(),
                vec![applied(1, 5.0, 5.0)],
                vec![logical(5.0, Err((Code::Unavailable, Outcome::NotApplied)))],
            ),
            (
                "register-consistent",
                s.clone(),
                vec![applied(1, 5.0, 5.0), applied(2, 1.0, 7.0)],
                vec![],
            ),
            (
                "within-deadline",
                s.clone(),
                vec![call(0, 1, 100), finished(101, 1)],
                vec![],
            ),
            ("liveness", s.clone(), vec![call(0, 1, 100)], vec![]),
            (
                "attempts-bounded",
                s.clone(),
                (1..=5).map(|n| attempt(n.into(), 1, n)).collect(),
                vec![],
            ),
            (
                "no-retry-on-non-retryable",
                s.clone(),
                vec![
                    attempt(1, 1, 1),
                    at(
                        2,
                        "client-1",
                        Entry::Event(Event::AttemptFailed {
                            call: 1,
                            attempt: 1,
                            error: CallError::new(
                                Code::InvalidArgument,
                                "x",
                                Cause::Status,
                                Outcome::NotApplied,
                            ),
                        }),
                    ),
                    attempt(3, 1, 2),
                ],
                vec![],
            ),
            (
                "breaker-legal-transitions",
                with_breaker(),
                vec![transition(1, State::Closed, State::HalfOpen)],
                vec![],
            ),
            (
                "breaker-open-sends-nothing",
                with_breaker(),
                vec![transition(1, State::Closed, State::Open), attempt(2, 1, 1)],
                vec![],
            ),
            (
                "breaker-probes-bounded",
                with_breaker(),
                vec![
                    transition(1, State::Closed, State::Open),
                    transition(2, State::Open, State::HalfOpen),
                    attempt(3, 1, 1),
                    attempt(4, 2, 1),
                ],
                vec![],
            ),
            (
                "correct-results",
                s.clone(),
                vec![at(
                    1,
                    "client-1",
                    Entry::Note(Note::Wrong(Wrong::Add {
                        a: 1.0,
                        b: 1.0,
                        got: 3.0,
                    })),
                )],
                vec![],
            ),
        ];
        for (invariant, scenario, records, accumulates) in cases {
            let got = violations(&scenario, records, accumulates);
            let v = got.iter().find(|v| v.invariant == invariant);
            assert!(v.is_some(), "{invariant}: checker reported {got:?}");
            // Each says where in the timeline, for the picture to highlight.
            assert!(
                v.is_some_and(|v| !v.spots.is_empty()),
                "{invariant}: no spot in {v:?}"
            );
        }
        // And a clean history reports nothing.
        let clean = vec![
            call(0, 1, 100),
            attempt(1, 1, 1),
            applied(2, 5.0, 5.0),
            finished(3, 1),
        ];
        assert_eq!(
            found(&s, clean, vec![logical(5.0, Ok(5.0))]),
            Vec::<&str>::new()
        );
    }
}
