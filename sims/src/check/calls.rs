//! Per-call rules, read from the client's trace: deadline, attempt bound,
//! no retry after a status that forbids it.

use std::{collections::BTreeMap, time::Duration};

use abacus::{client::breaker::config::CALLER_CODES, trace::Event};
use tonic::Code;

use crate::{
    check::Violation,
    history::{Entry, Record},
    scenario::Scenario,
};

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
pub fn check(scenario: &Scenario, records: &[Record], v: &mut Vec<Violation>) {
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
    let end = records.last().map(|r| r.at).unwrap_or_default();
    for ((host, id), c) in &calls {
        let name = format!("{host} call #{id}");
        let from = c.started.unwrap_or_default();
        let violated = |invariant, detail| {
            Violation::new(invariant, detail).at(host, from, c.finished.unwrap_or(end))
        };
        match (c.started, c.finished) {
            (Some(s), Some(f)) => {
                let took = f - s;
                if took > Duration::from_millis(c.deadline_ms) {
                    v.push(violated(
                        "within-deadline",
                        format!("{name} took {took:?}, deadline {} ms", c.deadline_ms),
                    ));
                }
            }
            (Some(_), None) => v.push(violated("liveness", format!("{name} never finished"))),
            _ => {}
        }
        if c.attempts > scenario.retry.attempts_max {
            v.push(violated(
                "attempts-bounded",
                format!(
                    "{name} made {} attempts, max {}",
                    c.attempts, scenario.retry.attempts_max
                ),
            ));
        }
        if c.attempt_after_non_retryable {
            v.push(violated(
                "no-retry-on-non-retryable",
                format!("{name} retried after a non-retryable status"),
            ));
        }
    }
}
