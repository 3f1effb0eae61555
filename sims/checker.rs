//! Invariant checks over a run's history: a passive observer that asserts
//! both what must happen and what must not. Each check returns violations
//! with enough detail to find the spot in the timeline.

use std::{collections::BTreeMap, time::Duration};

use abacus::trace::{Event, Outcome};

use crate::{
    harness::{Promise, Run, Scenario},
    history::{Entry, Record},
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
    #[derive(Default)]
    struct Client {
        state: &'static str,
        probes: u32,
    }
    let mut clients: BTreeMap<&str, Client> = BTreeMap::new();
    for r in records {
        let Entry::Event(e) = &r.entry else { continue };
        let c = clients.entry(r.host.as_str()).or_insert(Client {
            state: "closed",
            probes: 0,
        });
        match e {
            Event::BreakerTransition { from, to, .. } => {
                let legal = matches!(
                    (*from, *to),
                    ("closed", "open")
                        | ("open", "half-open")
                        | ("half-open", "closed")
                        | ("half-open", "open")
                );
                if !legal || *from != c.state {
                    v.push(Violation {
                        invariant: "breaker-legal-transitions",
                        detail: format!(
                            "{} at {:?}: {from} -> {to} while the breaker was {}",
                            r.host, r.at, c.state
                        ),
                    });
                }
                c.state = to;
                c.probes = 0;
            }
            Event::AttemptStarted { call, attempt, .. } => match c.state {
                "open" => v.push(Violation {
                    invariant: "breaker-open-sends-nothing",
                    detail: format!(
                        "{} at {:?}: attempt #{call}.{attempt} went out while the breaker was open",
                        r.host, r.at
                    ),
                }),
                "half-open" => {
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
                _ => {}
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
            Entry::Fault(f)
                if !state_survives_crash && (f == "crash server" || f == "restart server") =>
            {
                values.clear()
            }
            _ => {}
        }
    }
}

/// Codes that say the request itself is wrong: repeating it unchanged can
/// never succeed, so no correct client retries them.
const NEVER_RETRY: [&str; 7] = [
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "FailedPrecondition",
    "OutOfRange",
    "Unauthenticated",
];

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
    let retryable: Vec<String> = scenario
        .retry
        .retryable_codes
        .iter()
        .map(|c| format!("{c:?}"))
        .collect();
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
            Event::AttemptFailed { call, code, .. } => {
                let c = calls.entry((host, *call)).or_default();
                // Caller errors are never worth retrying, whatever the
                // client was configured with; other codes follow the policy.
                if NEVER_RETRY.contains(&code.as_str())
                    || (code != "DeadlineExceeded" && !retryable.contains(code))
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
        if n.starts_with("WRONG") {
            v.push(Violation {
                invariant: "correct-results",
                detail: format!("{}: {n}", r.host),
            });
        } else if n.starts_with("LIVENESS FAILED") {
            v.push(Violation {
                invariant: "liveness",
                detail: format!("{} at {:?}, after every fault stopped: {n}", r.host, r.at),
            });
        } else if n.starts_with("liveness phase") {
            phases += 1;
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
