//! Swarm testing: every seed draws its own fault plan — a different mix of
//! latency, link failures, partitions and holds (of all clients or one),
//! crashes, server failures, slowness and apply-then-drop — and several
//! clients; then all faults stop and every client must make progress
//! (liveness phase). The checker holds every run to exactly-once effect.

use std::time::Duration;

use abacus::{
    client::{BreakerConfig, Delivery, breaker::State},
    trace::{Event, Outcome},
};

use crate::{
    harness::{self, Run, Scenario},
    history::{Entry, SimFault},
    plan::FaultPlan,
    sweep::{count, expect_violation_with, is_event, run_checked, sweep_with},
};

/// The swarm scenario for `seed`, in delivery `mode`.
pub fn swarm(name: &'static str, mode: Delivery, seed: u64) -> Scenario {
    let mut s = Scenario::new(name);
    s.clients = 2 + (seed % 2) as usize;
    s.calls_per_client = 12;
    s.invalid_share = 0.1;
    s.mode = mode;
    s.plan = FaultPlan::generate(seed, s.clients);
    s.deadline = Duration::from_secs(2);
    s.attempt_timeout = Duration::from_millis(300);
    s.breaker = Some(BreakerConfig {
        // Short enough that an open breaker probes within the settle time.
        open_ms: 200,
        open_ms_max: 1_500,
        ..BreakerConfig::default()
    });
    s.liveness_calls = 3;
    // 10 ms steps: every latency, timeout and pause here is a multiple of
    // 10 ms or far above it, and the run (≈ 8 s simulated, most of it the
    // settle and liveness phase) goes ~5× faster than with 1 ms steps.
    s.tick = Duration::from_millis(10);
    s.quiet_after = Duration::from_secs(3);
    s
}

/// The sweep must have reached the interesting paths, not only avoided
/// breaking anything (Antithesis' "sometimes" assertions).
fn assert_reached(runs: &[Run], what: &str, pred: impl Fn(&Entry) -> bool) {
    assert!(count(runs, pred) > 0, "the swarm never reached: {what}");
}

/// Paths every swarm sweep must reach, whatever the delivery mode.
fn assert_swarm_reached(runs: &[Run]) {
    assert_reached(runs, "a retry", |e| {
        is_event(e, |ev| matches!(ev, Event::Backoff { .. }))
    });
    assert_reached(runs, "a breaker opening", |e| {
        is_event(e, |ev| {
            matches!(
                ev,
                Event::BreakerTransition {
                    to: State::Open,
                    ..
                }
            )
        })
    });
    assert_reached(runs, "a server crash", |e| {
        matches!(e, Entry::Fault(SimFault::Crash))
    });
}

/// The benchmark's standard run: 2 clients × 20 calls under the seed's
/// swarm fault mix, exactly-once, no liveness phase.
pub fn standard(seed: u64) -> Scenario {
    let mut s = swarm("standard", Delivery::ExactlyOnce, seed);
    s.clients = 2;
    s.calls_per_client = 20;
    s.plan = FaultPlan::generate(seed, s.clients);
    s.liveness_calls = 0;
    s
}

/// The main swarm: exactly-once mode (request IDs, server dedup, state that
/// survives crashes), every invariant on every seed.
#[test]
fn swarm_exactly_once() {
    let runs = sweep_with(|seed| swarm("swarm_exactly_once", Delivery::ExactlyOnce, seed));
    assert_swarm_reached(&runs);
    assert_reached(
        &runs,
        "a dedup hit (a retry after apply, answered from the store)",
        |e| is_event(e, |ev| matches!(ev, Event::DedupHit { .. })),
    );
}

#[test]
fn swarm_at_most_once() {
    let runs = sweep_with(|seed| swarm("swarm_at_most_once", Delivery::AtMostOnce, seed));
    assert_swarm_reached(&runs);
    let unknown = runs
        .iter()
        .flat_map(|r| &r.accumulates)
        .filter(|a| matches!(a.result, Err((_, Outcome::Unknown))))
        .count();
    assert!(unknown > 0, "the swarm never reached: an unknown outcome");
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
    let (run, _) = expect_violation_with(make, "applied-at-most-once");
    let scenario = make(run.seed);
    let (small, steps) = crate::shrink::shrink(&scenario, run.seed, "applied-at-most-once");
    eprintln!(
        "seed {} shrunk in {steps} runs:\n  from {}\n  to   {small}\nreplay: {}",
        run.seed,
        scenario.plan,
        crate::sweep::replay_command(NAME, run.seed, Some(&small))
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
    let again = harness::run(&replay, run.seed);
    assert_eq!(
        crate::history::render(&first.records),
        crate::history::render(&again.records)
    );
}
