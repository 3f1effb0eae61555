//! Swarm testing: every seed draws its own fault plan — a different mix of
//! latency, link failures, partitions and holds (of all clients or one),
//! crashes, server failures, slowness and apply-then-drop — and several
//! clients; then all faults stop and every client must make progress
//! (liveness phase). The checker holds every run to exactly-once effect.
//!
//! The "reached" assertions are the sweep's: a replay of one seed
//! (`SIM_SEED`) checks the invariants only, so it passes when the sweep
//! passed that seed (see `replay.rs`).

use abacus::client::Delivery;
use abacus_sims::{
    catalogue::swarm,
    faults::SimFault,
    history::{Entry, render},
    shrink,
    sweep::{Sweep, expect_violation_with, replay_command, run_checked, sweep_with},
    workload::LogicalAccumulate,
    world,
};

/// Paths every swarm sweep must reach, whatever the delivery mode, beyond
/// the probes the scenario requires (`catalogue::swarm`).
fn reached_by_every_swarm(sweep: &Sweep) {
    sweep.reached("a server crash", |e| {
        matches!(e, Entry::Fault(SimFault::Crash(_)))
    });
}

/// The main swarm: exactly-once mode (request IDs, server dedup, state that
/// survives crashes), every invariant on every seed.
#[test]
fn swarm_exactly_once() {
    let sweep = sweep_with(|seed| swarm("swarm_exactly_once", Delivery::ExactlyOnce, seed));
    reached_by_every_swarm(&sweep);
}

#[test]
fn swarm_at_most_once() {
    let sweep = sweep_with(|seed| swarm("swarm_at_most_once", Delivery::AtMostOnce, seed));
    reached_by_every_swarm(&sweep);
    sweep.reached_by("an unknown outcome", |run| {
        run.accumulates
            .iter()
            .any(LogicalAccumulate::outcome_unknown)
    });
}

/// NEGATIVE CONTROL + shrinking: the swarm with the server's dedup
/// switched off (the injected bug) must fail exactly-once on some seed of
/// the default sweep; the failure shrinks to a smaller plan that still
/// fails, and that plan replays byte for byte.
#[test]
fn swarm_dedup_off_is_caught_and_shrunk() {
    const NAME: &str = "swarm_dedup_off_is_caught_and_shrunk";
    let make = |seed| {
        let mut s = swarm(NAME, Delivery::ExactlyOnce, seed);
        s.dedup = false;
        s
    };
    let Some((run, _)) = expect_violation_with(make, "applied-at-most-once") else {
        return;
    };
    let scenario = make(run.seed);
    let (small, steps) = shrink::shrink(&scenario, run.seed, "applied-at-most-once");
    eprintln!(
        "seed {} shrunk in {steps} runs:\n  from {}\n  to   {small}\nreplay: {}",
        run.seed,
        scenario.plan,
        replay_command(NAME, run.seed, Some(&small))
    );
    assert!(!small.is_quiet(), "a double apply needs some fault");
    assert!(small.windows.len() <= scenario.plan.windows.len());
    // The shrunk plan, replayed from its text form, still shows the bug,
    // byte for byte the same each time.
    let mut replay = scenario.clone();
    replay.plan = small.to_string().parse().expect("plans round-trip");
    let (first, violations) = run_checked(&replay, run.seed);
    assert!(
        violations
            .iter()
            .any(|v| v.invariant == "applied-at-most-once")
    );
    let again = world::run(&replay, run.seed);
    assert_eq!(render(&first.records), render(&again.records));
}

/// NEGATIVE CONTROL for the linearizability checker: the same dedup-off
/// swarm, judged only by what the clients saw (no server trace): some
/// seed's answers must be impossible for one register, and the report
/// must name the few operations that contradict each other.
#[test]
fn swarm_dedup_off_is_not_linearizable() {
    let make = |seed| {
        let mut s = swarm(
            "swarm_dedup_off_is_not_linearizable",
            Delivery::ExactlyOnce,
            seed,
        );
        s.dedup = false;
        s
    };
    let Some((_, violations)) = expect_violation_with(make, "linearizable") else {
        return;
    };
    let lin = violations
        .iter()
        .find(|v| v.invariant == "linearizable")
        .expect("found above");
    // A witness, not the whole history: a handful of operations.
    let witnesses = lin.detail.matches(" accumulate(").count();
    assert!(
        (1..=4).contains(&witnesses),
        "a minimal witness names a few operations: {}",
        lin.detail
    );
}
