//! The service works, bare tonic's behaviour under faults is recorded, and
//! a seed replays byte for byte.

use abacus::{client::Delivery, error::CalcError, trace::Event};

use crate::{
    harness::Scenario,
    history::Entry,
    sweep::{count, is_event, snapshot_fixed_seed, sweep},
};

pub fn happy() -> Scenario {
    let mut s = Scenario::new("happy_path");
    s.calls_per_client = 12;
    s.invalid_share = 0.2;
    s
}

#[test]
fn happy_path() {
    let s = happy();
    let runs = sweep(&s);
    for run in &runs {
        assert!(
            run.accumulates.iter().all(|a| a.result.is_ok()),
            "seed {}: every call must succeed without faults",
            run.seed
        );
        let expected: f64 = run.accumulates.iter().map(|a| a.delta).sum();
        let last = run.records.iter().rev().find_map(|r| match &r.entry {
            Entry::Event(Event::Applied { value, .. }) => Some(*value),
            _ => None,
        });
        assert_eq!(
            last.unwrap_or(0.0),
            expected,
            "seed {}: final register",
            run.seed
        );
    }
    assert_eq!(
        count(&runs, |e| is_event(e, |ev| matches!(
            ev,
            Event::Backoff { .. }
        ))),
        0
    );
    // Invalid requests were made and refused.
    assert!(
        count(&runs, |e| is_event(e, |ev| matches!(
            ev,
            Event::Evaluated {
                result: Err(CalcError::DivisionByZero),
                ..
            }
        ))) > 0
    );
    snapshot_fixed_seed(&s);
}

pub fn plain_tonic() -> Scenario {
    let mut s = Scenario::new("plain_tonic_under_latency_and_link_failures");
    s.retry.attempts_max = 1;
    s.mode = Delivery::AtLeastOnce;
    s.plan.latency_ms = (1, 80);
    s.plan.link_fail_rate = 0.02;
    s
}

#[test]
fn plain_tonic_under_latency_and_link_failures() {
    let s = plain_tonic();
    let runs = sweep(&s);
    // Without retries, link failures surface as failed calls: the sweep must
    // actually have exercised that path.
    let failed = count(&runs, |e| {
        is_event(e, |ev| {
            matches!(ev, Event::CallFinished { result: Err(_), .. })
        })
    });
    assert!(
        failed > 0,
        "no call failed: the fault injection did nothing"
    );
    assert_eq!(
        count(&runs, |e| is_event(e, |ev| matches!(
            ev,
            Event::Backoff { .. }
        ))),
        0
    );
    snapshot_fixed_seed(&s);
}
