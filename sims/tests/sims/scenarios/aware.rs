//! The replica-aware client: three replicas over the store model, each
//! client host calling through ONE client over all of them (p2c over
//! peak-EWMA, a breaker and a health watch per replica, retries steered to
//! untried replicas, hedging against a slow replica). One replica crashes,
//! is cut off from the clients, or turns 100× slower, on the replica and at
//! the moment the seed draws. On top of every invariant of the replicated
//! world, each seed is held to `failover-within-bound` (every call that
//! takes no claim succeeds within 300 ms; 550 ms with the slow replica,
//! whose attempts may last 400 ms), `hedges-bounded`, and, with the slow
//! replica, `tail-within-bound` (p99 of those calls ≤ 100 ms); an ejected replica
//! gets its probes only (`breaker-open-sends-nothing`, per replica, and
//! `not-serving-gets-nothing`).
//!
//! The negative controls take the same worlds with a client that does not
//! protect itself — round robin, no breaker, no health watch, no hedging —
//! and with hedged Accumulates stripped of their request IDs; each must be
//! caught on a seed of the default sweep, and the same seed with the real
//! client must pass.

use std::time::Duration;

use abacus::{client::breaker::State, trace::Event};
use abacus_sims::{
    Scenario, Topology,
    catalogue::{ReplicaFault, aware, round_robin_with_breaker, round_robin_without_ejection},
    check::call_trace::{CallTrace, calls, nearest_rank},
    faults::{Fault, Link, Node, Side},
    history::Entry,
    sweep::{expect_violation_with, failed_calls, run_checked, sweep_with},
    world::{Run, Stack, aware::ReplicaClient},
};

use crate::snapshot::{SNAPSHOT_SEED, snapshot_fixed_seed};

/// The replica the scenario troubles.
fn victim(s: &Scenario) -> String {
    let n = match (s.plan.slow, s.plan.windows.first().map(|w| w.fault)) {
        (Some(slow), _) => slow.replica,
        (_, Some(Fault::Crash(Node::Replica(n)))) => n,
        (
            _,
            Some(Fault::Partition(Link {
                side: Side::Replica(n),
                ..
            })),
        ) => n,
        other => panic!("not a replica-aware scenario's fault: {other:?}"),
    };
    format!("replica-{n}")
}

/// The finished calls of a run (the library's reading of the trace).
fn traces(run: &Run) -> Vec<CallTrace<'_>> {
    calls(&run.records)
        .into_values()
        .filter(|c| c.finished.is_some())
        .collect()
}

/// It succeeded.
fn ok(c: &CallTrace<'_>) -> bool {
    matches!(c.finished, Some((_, Ok(()))))
}

/// Some call's first attempt went to the victim and another replica
/// answered it.
fn failed_over(run: &Run, victim: &str) -> bool {
    traces(run).iter().any(|t| {
        ok(t) && t.endpoints.len() > 1 && t.endpoints[0] == victim && t.endpoints[1] != victim
    })
}

/// The victim's breaker moved `from` → `to` in some client.
fn victim_breaker(run: &Run, victim: &str, from: State, to: State) -> bool {
    run.records.iter().any(|r| {
        matches!(&r.entry, Entry::Event(Event::BreakerTransition { endpoint, from: f, to: t })
            if endpoint == victim && *f == from && *t == to)
    })
}

/// Prints, over a sweep, the slowest call of each seed that took no claim
/// and met the victim (the failover time actually seen) and each seed's
/// p99 of those calls — the figures docs/simulation.md quotes.
fn figures(name: &str, runs: &[Run], make: impl Fn(u64) -> Scenario) {
    let mut worst: Vec<Duration> = Vec::new();
    let mut p99s: Vec<Duration> = Vec::new();
    for run in runs {
        let v = victim(&make(run.seed));
        let traces = traces(run);
        if let Some(w) = traces
            .iter()
            .filter(|t| t.method.is_pure() && t.endpoints.contains(&v.as_str()))
            .filter_map(CallTrace::took)
            .max()
        {
            worst.push(w);
        }
        let mut all: Vec<Duration> = traces
            .iter()
            .filter(|t| t.method.is_pure())
            .filter_map(CallTrace::took)
            .collect();
        all.sort();
        if let Some(p) = nearest_rank(&all, 99) {
            p99s.push(*p);
        }
    }
    let spread = |mut v: Vec<Duration>| {
        v.sort();
        match (v.first(), v.get(v.len() / 2), v.last()) {
            (Some(a), Some(m), Some(b)) => format!("min {a:?}, median {m:?}, max {b:?}"),
            _ => "none".to_owned(),
        }
    };
    eprintln!(
        "{name}: {} seeds; slowest pure call meeting the victim: {}; p99 per seed: {}",
        runs.len(),
        spread(worst),
        spread(p99s)
    );
}

#[test]
fn aware_client_fails_over_a_crashed_replica() {
    const NAME: &str = "aware_client_fails_over_a_crashed_replica";
    let make = |seed| aware(NAME, ReplicaFault::Crash, seed);
    let sweep = sweep_with(make);
    sweep.reached_by("a call failed over from the crashed replica", |run| {
        failed_over(run, &victim(&make(run.seed)))
    });
    figures(NAME, sweep.runs(), make);
    snapshot_fixed_seed(&make(SNAPSHOT_SEED));
}

/// Round robin with the breaker: the breaker alone keeps calls off the
/// crashed replica (its probes aside) and readmits it once it is back.
#[test]
fn aware_client_breaker_ejects_and_readmits_a_crashed_replica() {
    const NAME: &str = "aware_client_breaker_ejects_and_readmits_a_crashed_replica";
    let make = |seed| {
        let mut s = aware(NAME, ReplicaFault::Crash, seed);
        round_robin_with_breaker(&mut s);
        s
    };
    let sweep = sweep_with(make);
    sweep.reached_by("the crashed replica ejected by a breaker", |run| {
        victim_breaker(run, &victim(&make(run.seed)), State::Closed, State::Open)
    });
    sweep.reached_by("a probe of the ejected replica", |run| {
        victim_breaker(run, &victim(&make(run.seed)), State::Open, State::HalfOpen)
    });
    sweep.reached_by(
        "the restarted replica readmitted by its breaker's probe",
        |run| {
            victim_breaker(
                run,
                &victim(&make(run.seed)),
                State::HalfOpen,
                State::Closed,
            )
        },
    );
    figures(NAME, sweep.runs(), make);
}

#[test]
fn aware_client_fails_over_a_partitioned_replica() {
    const NAME: &str = "aware_client_fails_over_a_partitioned_replica";
    let make = |seed| aware(NAME, ReplicaFault::Partition, seed);
    let sweep = sweep_with(make);
    sweep.reached_by("a call failed over from the cut-off replica", |run| {
        failed_over(run, &victim(&make(run.seed)))
    });
    figures(NAME, sweep.runs(), make);
}

#[test]
fn aware_client_hedges_around_a_slow_replica() {
    const NAME: &str = "aware_client_hedges_around_a_slow_replica";
    let make = |seed| aware(NAME, ReplicaFault::Slow, seed);
    let sweep = sweep_with(make);
    sweep.reached_by("a hedge answering for the slow replica", |run| {
        let v = victim(&make(run.seed));
        traces(run)
            .iter()
            .any(|t| ok(t) && !t.hedges.is_empty() && t.endpoints[0] == v)
    });
    sweep.reached_by("a hedged Accumulate (it carries a request ID)", |run| {
        traces(run)
            .iter()
            .any(|t| !t.method.is_pure() && !t.hedges.is_empty())
    });
    figures(NAME, sweep.runs(), make);
}

/// NEGATIVE CONTROL: round robin without ejection or hedging sends the
/// slow replica its third of the calls, and the tail is the slow
/// replica's.
#[test]
fn control_round_robin_without_ejection_sets_the_tail() {
    const NAME: &str = "control_round_robin_without_ejection_sets_the_tail";
    let make = |seed| {
        let mut s = aware(NAME, ReplicaFault::Slow, seed);
        round_robin_without_ejection(&mut s);
        s
    };
    let Some((run, _)) = expect_violation_with(make, "tail-within-bound") else {
        return;
    };
    let (_, left) = run_checked(&aware(NAME, ReplicaFault::Slow, run.seed), run.seed);
    assert!(
        left.is_empty(),
        "seed {} fails with the replica-aware client too: {left:?}",
        run.seed
    );
}

/// NEGATIVE CONTROL: round robin without ejection keeps sending a crashed
/// replica its share; every attempt there fails and costs the retry
/// throttle a token, until retries are refused and calls fail.
#[test]
fn control_round_robin_without_ejection_fails_calls() {
    const NAME: &str = "control_round_robin_without_ejection_fails_calls";
    let make = |seed| {
        let mut s = aware(NAME, ReplicaFault::Crash, seed);
        round_robin_without_ejection(&mut s);
        s
    };
    let Some((run, _)) = expect_violation_with(make, "failover-within-bound") else {
        return;
    };
    assert!(
        failed_calls(&run) > 0,
        "seed {}: the control is about errors, and no call failed",
        run.seed
    );
    let (_, left) = run_checked(&aware(NAME, ReplicaFault::Crash, run.seed), run.seed);
    assert!(
        left.is_empty(),
        "seed {} fails with the replica-aware client too: {left:?}",
        run.seed
    );
}

/// NEGATIVE CONTROL: hedged Accumulates whose request ID is taken off
/// below the hedging layer reach two replicas as two plain writes, and
/// both apply — the double apply `applied-at-most-once` must catch. The
/// same seed with IDs passes: hedging a write is safe because the store
/// deduplicates it.
#[test]
fn control_hedged_accumulate_without_request_ids_double_applies() {
    const NAME: &str = "control_hedged_accumulate_without_request_ids_double_applies";
    let make = |seed| {
        let mut s = aware(NAME, ReplicaFault::Slow, seed);
        s.accumulate_share = 0.6;
        s.stack = Stack::HedgeWithoutIds;
        // A hedge after 5 ms, while the first attempt is still on its way
        // through its replica to the store: with the default 20 ms most
        // Accumulates answer first, and a hedge that wins against the slow
        // replica cancels an attempt that has not applied yet.
        if let Topology::Replicated(r) = &mut s.topology
            && let ReplicaClient::Aware(a) = &mut r.client
            && let Some(h) = &mut a.hedge
        {
            h.delay = Duration::from_millis(5);
        }
        s
    };
    let Some((run, _)) = expect_violation_with(make, "applied-at-most-once") else {
        return;
    };
    let mut fixed = make(run.seed);
    fixed.stack = Stack::Standard;
    let (_, left) = run_checked(&fixed, run.seed);
    assert!(
        left.is_empty(),
        "seed {} fails with request IDs too: {left:?}",
        run.seed
    );
}
