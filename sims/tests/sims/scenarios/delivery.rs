//! Delivery semantics under the partial failure that makes retries
//! dangerous: the server applies `Accumulate`, then the response is lost.

use abacus::client::Delivery;
use abacus_sims::{
    Promise,
    catalogue::apply_then_drop,
    history::render,
    sweep::{expect_violation, report, sweep},
    workload::LogicalAccumulate,
    world,
};

use crate::snapshot::snapshot_fixed_seed;

/// NEGATIVE CONTROL for the exactly-once checker: blind retries without
/// request IDs must double-apply, and the checker must say so.
#[test]
fn at_least_once_without_dedup_double_applies() {
    let s = apply_then_drop(
        "at_least_once_without_dedup_double_applies",
        Delivery::AtLeastOnce,
    );
    // On a replay of a seed that does not double-apply there is nothing
    // more to check: the control's claim is about the sweep.
    let Some((run, violations)) = expect_violation(&s, "applied-at-most-once") else {
        return;
    };
    let v = violations
        .iter()
        .find(|v| v.invariant == "applied-at-most-once")
        .expect("found above");
    let times: u32 = v
        .detail
        .rsplit("applied ")
        .next()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        times >= 2,
        "a double apply must be reported with its count: {v:?}"
    );
    // The report names the seed and a replay command that reproduces it.
    let text = report(s.name, &run, &violations, None);
    assert!(text.contains(&format!("SIM_SEED={} cargo test --test sims", run.seed)));
    let again = world::run(&s, run.seed);
    assert_eq!(
        render(&again.records),
        render(&run.records),
        "replay must be identical"
    );
}

#[test]
fn at_least_once_applies_every_acknowledged_call() {
    let mut s = apply_then_drop(
        "at_least_once_applies_every_acknowledged_call",
        Delivery::AtLeastOnce,
    );
    // Held to its own promise: duplicates allowed, losses not.
    s.promise = Promise::AtLeastOnce;
    sweep(&s).reached_by("an acknowledged Accumulate", |run| {
        run.accumulates.iter().any(|a| a.result.is_ok())
    });
}

#[test]
fn at_most_once_never_double_applies() {
    let s = apply_then_drop("at_most_once_never_double_applies", Delivery::AtMostOnce);
    sweep(&s).reached_by("an unknown outcome (a response lost after apply)", |run| {
        run.accumulates
            .iter()
            .any(LogicalAccumulate::outcome_unknown)
    });
    snapshot_fixed_seed(&s);
}
