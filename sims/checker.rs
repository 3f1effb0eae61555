//! Invariant checks over a run's history: a passive observer that asserts
//! both what must happen and what must not. Each check returns violations
//! with enough detail to find the spot in the timeline.

use std::{collections::BTreeMap, time::Duration};

use abacus::{
    client::breaker::{State, Transition, config::CALLER_CODES},
    trace::{Event, Outcome},
};
use tonic::Code;

use crate::{
    harness::{Promise, Run, Scenario},
    history::{Entry, Note, Record, SimFault},
};

/// A broken invariant.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Short invariant name.
    pub invariant: &'static str,
    /// What exactly broke.
    pub detail: String,
}

/// Every check that applies to `scenario`.
pub fn check(scenario: &Scenario, run: &Run) -> Vec<Violation> {
    let mut v = Vec::new();
    if let Err(e) = &run.sim_result {
        v.push(Violation {
            invariant: "liveness",
            detail: format!("the simulation did not complete: {e}"),
        });
    }
    effects(scenario, run, &mut v);
    registers(scenario.state_survives_crash, &run.records, &mut v);
    calls(scenario, &run.records, &mut v);
    notes(scenario, &run.records, &mut v);
    if let Some(b) = &scenario.breaker {
        breakers(b.half_open_probes, &run.records, &mut v);
    }
    v
}

/// Breaker rules, per client: only legal transitions, each starting from
/// the state the breaker was in; no attempt leaves while it is open; at most
/// `probes_max` attempts while half-open.
fn breakers(probes_max: u32, records: &[Record], v: &mut Vec<Violation>) {
    struct Client {
        state: State,
        probes: u32,
    }
    let mut clients: BTreeMap<&str, Client> = BTreeMap::new();
    for r in records {
        let Entry::Event(e) = &r.entry else { continue };
        let c = clients.entry(r.host.as_str()).or_insert(Client {
            state: State::Closed,
            probes: 0,
        });
        match e {
            Event::BreakerTransition { from, to, .. } => {
                // The breaker's own table of legal edges, not a copy of it.
                let legal = Transition {
                    from: *from,
                    to: *to,
                }
                .is_legal();
                if !legal || *from != c.state {
                    v.push(Violation {
                        invariant: "breaker-legal-transitions",
                        detail: format!(
                            "{} at {:?}: {from} -> {to} while the breaker was {}",
                            r.host, r.at, c.state
                        ),
                    });
                }
                c.state = *to;
                c.probes = 0;
            }
            Event::AttemptStarted { call, attempt, .. } => match c.state {
                State::Open => v.push(Violation {
                    invariant: "breaker-open-sends-nothing",
                    detail: format!(
                        "{} at {:?}: attempt #{call}.{attempt} went out while the breaker was open",
                        r.host, r.at
                    ),
                }),
                State::HalfOpen => {
                    c.probes += 1;
                    if c.probes > probes_max {
                        v.push(Violation {
                            invariant: "breaker-probes-bounded",
                            detail: format!(
                                "{} at {:?}: probe {} while half-open (max {probes_max})",
                                r.host, r.at, c.probes
                            ),
                        });
                    }
                }
                State::Closed => {}
            },
            _ => {}
        }
    }
}

/// How many times the server applied each delta (deltas are unique per
/// logical call, so this attributes applies to logical calls even without
/// request IDs).
fn applies_by_delta(records: &[Record]) -> BTreeMap<(String, u64), usize> {
    let mut applied = BTreeMap::new();
    for r in records {
        if let Entry::Event(Event::Applied {
            register, delta, ..
        }) = &r.entry
        {
            *applied
                .entry((register.clone(), delta.to_bits()))
                .or_insert(0) += 1;
        }
    }
    applied
}

/// Delivery promises: at most once / exactly once / not-applied is true.
fn effects(scenario: &Scenario, run: &Run, v: &mut Vec<Violation>) {
    let applied = applies_by_delta(&run.records);
    for call in &run.accumulates {
        let n = applied
            .get(&(call.register.clone(), call.delta.to_bits()))
            .copied()
            .unwrap_or(0);
        let what = format!(
            "{} accumulate({}, {})",
            call.host, call.register, call.delta
        );
        match &call.result {
            Err((code, Outcome::NotApplied)) if n > 0 => v.push(Violation {
                invariant: "not-applied-is-true",
                detail: format!("{what} failed {code:?} reported NOT applied, but the server applied it {n} time(s)"),
            }),
            Ok(_) if n == 0 => v.push(Violation {
                invariant: "acknowledged-implies-applied",
                detail: format!("{what} succeeded but the server never applied it"),
            }),
            _ => {}
        }
        if scenario.promise == Promise::ExactlyOnceEffect && n > 1 {
            v.push(Violation {
                invariant: "applied-at-most-once",
                detail: format!("{what} was applied {n} times"),
            });
        }
    }
}

/// Each register's value after every apply equals the previous value plus
/// the delta: the update and its record were committed together, nothing
/// was lost or applied out of band.
fn registers(state_survives_crash: bool, records: &[Record], v: &mut Vec<Violation>) {
    let mut values: BTreeMap<&str, f64> = BTreeMap::new();
    for r in records {
        match &r.entry {
            Entry::Event(Event::Applied {
                register,
                delta,
                value,
                ..
            }) => {
                let before = values.get(register.as_str()).copied().unwrap_or(0.0);
                if before + delta != *value {
                    v.push(Violation {
                        invariant: "register-consistent",
                        detail: format!(
                            "at {:?}: {register} was {before}, += {delta} gave {value}",
                            r.at
                        ),
                    });
                }
                values.insert(register, *value);
            }
            // In-memory state: a crash, or a restart (which is a crash too
            // when windows overlap), resets every register.
            Entry::Fault(SimFault::Crash | SimFault::Restart) if !state_survives_crash => {
                values.clear()
            }
            _ => {}
        }
    }
}

#[derive(Debug, Default)]
struct CallInfo {
    started: Option<Duration>,
    deadline_ms: u64,
    finished: Option<Duration>,
    attempts: u32,
    non_retryable_at: Option<Duration>,
    attempt_after_non_retryable: bool,
}

/// Per-call rules: deadline, attempt bound, no retry on a non-retryable code.
fn calls(scenario: &Scenario, records: &[Record], v: &mut Vec<Violation>) {
    let retryable = &scenario.retry.retryable_codes;
    let mut calls: BTreeMap<(&str, u64), CallInfo> = BTreeMap::new();
    for r in records {
        let Entry::Event(e) = &r.entry else { continue };
        let host = r.host.as_str();
        match e {
            Event::CallStarted {
                call, deadline_ms, ..
            } => {
                let c = calls.entry((host, *call)).or_default();
                c.started = Some(r.at);
                c.deadline_ms = *deadline_ms;
            }
            Event::AttemptStarted { call, .. } => {
                let c = calls.entry((host, *call)).or_default();
                c.attempts += 1;
                if c.non_retryable_at.is_some() {
                    c.attempt_after_non_retryable = true;
                }
            }
            Event::AttemptFailed { call, error, .. } => {
                let c = calls.entry((host, *call)).or_default();
                // Caller errors (the library's one table of them) are never
                // worth retrying, whatever the client was configured with;
                // other codes follow the policy. DEADLINE_EXCEEDED is the
                // attempt timeout, retried when repeating is harmless.
                let code = error.code;
                if CALLER_CODES.contains(&code)
                    || (code != Code::DeadlineExceeded && !retryable.contains(&code))
                {
                    c.non_retryable_at = Some(r.at);
                }
            }
            Event::CallFinished { call, .. } => {
                calls.entry((host, *call)).or_default().finished = Some(r.at);
            }
            _ => {}
        }
    }
    for ((host, id), c) in &calls {
        let name = format!("{host} call #{id}");
        match (c.started, c.finished) {
            (Some(s), Some(f)) => {
                let took = f - s;
                if took > Duration::from_millis(c.deadline_ms) {
                    v.push(Violation {
                        invariant: "within-deadline",
                        detail: format!("{name} took {took:?}, deadline {} ms", c.deadline_ms),
                    });
                }
            }
            (Some(_), None) => v.push(Violation {
                invariant: "liveness",
                detail: format!("{name} never finished"),
            }),
            _ => {}
        }
        if c.attempts > scenario.retry.attempts_max {
            v.push(Violation {
                invariant: "attempts-bounded",
                detail: format!(
                    "{name} made {} attempts, max {}",
                    c.attempts, scenario.retry.attempts_max
                ),
            });
        }
        if c.attempt_after_non_retryable {
            v.push(Violation {
                invariant: "no-retry-on-non-retryable",
                detail: format!("{name} retried after a non-retryable status"),
            });
        }
    }
}

/// What the workload itself noticed: wrong answers, and whether every
/// client got through its liveness phase.
fn notes(scenario: &Scenario, records: &[Record], v: &mut Vec<Violation>) {
    let mut phases = 0;
    for r in records {
        let Entry::Note(n) = &r.entry else { continue };
        match n {
            Note::Wrong(_) => v.push(Violation {
                invariant: "correct-results",
                detail: format!("{}: {n}", r.host),
            }),
            Note::LivenessFailed { .. } => v.push(Violation {
                invariant: "liveness",
                detail: format!("{} at {:?}, after every fault stopped: {n}", r.host, r.at),
            }),
            Note::LivenessPhase => phases += 1,
            Note::WorkloadDone => {}
        }
    }
    if scenario.liveness_calls > 0 && phases != scenario.clients {
        v.push(Violation {
            invariant: "liveness",
            detail: format!(
                "{phases} of {} clients reached the liveness phase",
                scenario.clients
            ),
        });
    }
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
        harness::{LogicalAccumulate, Run, Scenario},
        history::{Entry, Note, Record, Wrong},
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
        LogicalAccumulate {
            host: "client-1".into(),
            register: "total".into(),
            delta,
            result,
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
        let run = Run {
            seed: 0,
            records,
            accumulates,
            sim_result: Ok(()),
        };
        check(s, &run).into_iter().map(|v| v.invariant).collect()
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
            let got = found(&scenario, records, accumulates);
            assert!(
                got.contains(&invariant),
                "{invariant}: checker reported {got:?}"
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
