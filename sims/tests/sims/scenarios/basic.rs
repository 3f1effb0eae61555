//! The service works, and bare tonic's behaviour under faults is recorded.

use abacus::{error::CalcError, trace::Event};
use abacus_sims::{
    catalogue::{happy, plain_tonic},
    history::Entry,
    sweep::{count, ensure, failed_calls, is_event, sweep},
};

use crate::snapshot::snapshot_fixed_seed;

fn retried(e: &Entry) -> bool {
    is_event(e, |ev| matches!(ev, Event::Backoff { .. }))
}

#[test]
fn happy_path() {
    let s = happy();
    let sweep = sweep(&s);
    sweep.every("no-faults-no-failures", |run| {
        ensure(run.accumulates.iter().all(|a| a.result.is_ok()), || {
            "an Accumulate failed without faults".into()
        })?;
        let expected: f64 = run.accumulates.iter().map(|a| a.delta).sum();
        let last = run.records.iter().rev().find_map(|r| match &r.entry {
            Entry::Event(Event::Applied { value, .. }) => Some(*value),
            _ => None,
        });
        ensure(last.unwrap_or(0.0) == expected, || {
            format!("final register {last:?}, expected {expected}")
        })?;
        let retries = count(std::slice::from_ref(run), retried);
        ensure(retries == 0, || format!("{retries} retries without faults"))
    });
    sweep.reached("an invalid request refused", |e| {
        is_event(e, |ev| {
            matches!(
                ev,
                Event::Evaluated {
                    result: Err(CalcError::DivisionByZero),
                    ..
                }
            )
        })
    });
    snapshot_fixed_seed(&s);
}

#[test]
fn plain_tonic_under_latency_and_link_failures() {
    let s = plain_tonic();
    let sweep = sweep(&s);
    sweep.every("one-attempt-per-call", |run| {
        let retries = count(std::slice::from_ref(run), retried);
        ensure(retries == 0, || {
            format!("{retries} retries with attempts_max = 1")
        })
    });
    // Without retries, link failures surface as failed calls: the sweep
    // must actually have exercised that path.
    sweep.overall("faults-bite", |runs| {
        let failed: usize = runs.iter().map(failed_calls).sum();
        ensure(failed > 0, || {
            "no call failed: the fault injection did nothing".into()
        })
    });
    snapshot_fixed_seed(&s);
}
