//! The replicated world: three replicas (the real server each) over the
//! store model, clients that pick a replica per logical call and fail over
//! under the same request ID. Every seed is held to exactly-once across
//! replicas (`applied-once-per-request-id`, `applied-at-most-once`,
//! `acknowledged-implies-applied`, `not-applied-is-true`), to
//! linearizable registers as the clients saw them, writes and reads, and
//! to liveness — pure calls, writes and reads — once faults stop. The
//! negative controls break the store or a replica in the three ways the
//! checks exist for, and each must be caught on a seed of the default
//! sweep; the same seed without the bug passes.

use std::collections::BTreeSet;

use abacus::{
    client::{Reply, breaker::State},
    trace::Event,
};
use abacus_sims::{
    Scenario, Topology,
    catalogue::{
        lost_reply_not_applied, replicated_control, replicated_failover, replicated_swarm,
    },
    check::Violation,
    faults::{Node, SimFault},
    history::Entry,
    shrink,
    sweep::{expect_violation_with, is_event, run_checked, sweep, sweep_with},
    workload::Note,
    world::{
        Run,
        store::{ReplicaBug, StoreModel, StoreNote},
    },
};

use crate::snapshot::snapshot_fixed_seed;

fn at_store(run: &Run, f: impl Fn(&Entry) -> bool) -> bool {
    run.records.iter().any(|r| r.host == "store" && f(&r.entry))
}

/// Some logical call failed over to another replica under its request ID
/// and was answered there from the record the store kept: the cross-replica
/// retry that deduplication exists for.
fn replayed_after_failover(run: &Run) -> bool {
    let failed_over: BTreeSet<(String, &str)> = run
        .records
        .iter()
        .filter_map(|r| match &r.entry {
            Entry::Note(Note::Failover { request_id, to, .. }) if !request_id.is_empty() => {
                Some((format!("{}/{to}", r.host), request_id.as_str()))
            }
            _ => None,
        })
        .collect();
    let mut calls = BTreeSet::new();
    run.records.iter().any(|r| match &r.entry {
        Entry::Event(Event::CallStarted {
            call, request_id, ..
        }) if failed_over.contains(&(r.host.clone(), request_id.as_str())) => {
            calls.insert((r.host.as_str(), *call));
            false
        }
        Entry::Event(Event::CallFinished {
            call,
            result: Ok(Reply::Accumulated { replayed: true, .. }),
            ..
        }) => calls.contains(&(r.host.as_str(), *call)),
        _ => false,
    })
}

#[test]
fn replicated_swarm_exactly_once() {
    // Failover, duplicates at the store, rollbacks, lost commit replies:
    // the scenario's probes (`catalogue::replicated_swarm`); and beyond them:
    let sweep = sweep_with(|seed| replicated_swarm("replicated_swarm_exactly_once", seed));
    sweep.reached_by(
        "a failover answered from the record another replica's attempt committed",
        replayed_after_failover,
    );
    sweep.reached_by(
        "a claim orphaned by a silent connection, released by the store's idle bound",
        |run| {
            at_store(run, |e| {
                matches!(e, Entry::Store(StoreNote::IdleReleased { .. }))
            })
        },
    );
    sweep.reached(
        "a replica's store guard opening its breaker, then closing it",
        |e| {
            is_event(e, |ev| {
                matches!(ev, Event::BreakerTransition { endpoint, from: State::HalfOpen, to: State::Closed }
                    if endpoint == abacus::store::guard::ENDPOINT)
            })
        },
    );
    sweep.reached("a store crash", |e| {
        matches!(e, Entry::Fault(SimFault::Crash(Node::Store)))
    });
    sweep.reached("a replica crash", |e| {
        matches!(e, Entry::Fault(SimFault::Crash(Node::Replica(_))))
    });
    sweep.reached_by(
        "a read seeing a register written by another client",
        |run| {
            run.reads.iter().any(|r| {
                r.result.ok().flatten().is_some_and(|v| {
                    run.accumulates
                        .iter()
                        .any(|a| a.host != r.host && a.register == r.register && a.result == Ok(v))
                })
            })
        },
    );
    sweep.reached_by("an unknown outcome", |run| {
        run.accumulates.iter().any(|a| a.outcome_unknown())
    });
}

/// A written run: a replica crash, a store crash, lost commit replies;
/// its timeline is snapshot-tested.
#[test]
fn replicated_failover_across_replicas() {
    let s = replicated_failover("replicated_failover_across_replicas");
    sweep(&s).reached("a failover to another replica", |e| {
        matches!(e, Entry::Note(Note::Failover { .. }))
    });
    snapshot_fixed_seed(&s);
}

/// The first violation of `invariant` a control finds; then the same seed
/// without the bug (`fixed`) must pass: the control fails because of its
/// bug, not because of its scenario.
fn caught(
    make: impl Fn(u64) -> Scenario + Sync,
    fixed: impl Fn(&mut Scenario),
    invariant: &str,
) -> Option<Caught> {
    let (run, violations) = expect_violation_with(&make, invariant)?;
    let mut without = make(run.seed);
    fixed(&mut without);
    let (_, left) = run_checked(&without, run.seed);
    assert!(
        left.is_empty(),
        "seed {} fails even without the bug: {left:?}",
        run.seed
    );
    let violation = violations.into_iter().find(|v| v.invariant == invariant)?;
    Some(Caught {
        seed: run.seed,
        violation,
    })
}

/// A control's first failing seed and its violation.
struct Caught {
    seed: u64,
    violation: Violation,
}

fn without_bug(s: &mut Scenario) {
    if let Topology::Replicated(r) = &mut s.topology {
        r.store = StoreModel::Atomic;
        r.bug = None;
    }
}

/// NEGATIVE CONTROL (a): the store commits the update and the record in
/// two transactions; a fault between them (the store crashing, the
/// replica's connection closing) leaves an update without its record, and
/// the retry applies it again.
///
/// The failure also shrinks, through the replicated faults, to a smaller
/// plan that still fails when replayed from its text form.
#[test]
fn control_split_store_transactions_double_apply() {
    const INVARIANT: &str = "applied-once-per-request-id";
    let make = |seed| {
        replicated_control(
            "control_split_store_transactions_double_apply",
            seed,
            StoreModel::SplitTransactions,
            None,
        )
    };
    let Some(v) = caught(make, without_bug, INVARIANT) else {
        return;
    };
    let seed = v.seed;
    let scenario = make(seed);
    let (small, steps) = shrink::shrink(&scenario, seed, INVARIANT);
    eprintln!(
        "seed {seed} shrunk in {steps} runs:\n  from {}\n  to   {small}",
        scenario.plan
    );
    let mut replay = scenario.clone();
    replay.plan = small.to_string().parse().expect("plans round-trip");
    let (_, violations) = run_checked(&replay, seed);
    assert!(violations.iter().any(|v| v.invariant == INVARIANT));
}

/// NEGATIVE CONTROL (b): replicas serve reads from a cache only their own
/// writes refresh; the linearizability check, from the clients' answers
/// alone, must catch a stale read with a witness of a few operations.
#[test]
fn control_stale_reads_are_not_linearizable() {
    let Some(Caught { violation: v, .. }) = caught(
        |seed| {
            replicated_control(
                "control_stale_reads_are_not_linearizable",
                seed,
                StoreModel::Atomic,
                Some(ReplicaBug::StaleReads),
            )
        },
        without_bug,
        "linearizable",
    ) else {
        return;
    };
    let ops = v.detail.matches(" accumulate(").count() + v.detail.matches(" get(").count();
    assert!(
        (2..=4).contains(&ops) && v.detail.contains(" get("),
        "a minimal witness names the stale read and the write it missed: {}",
        v.detail
    );
}

/// NEGATIVE CONTROL (c): a replica answers a commit whose reply the store
/// lost as certainly not applied; a client that believes it (one attempt,
/// no failover) is told not-applied for a write the store made.
#[test]
fn control_lost_reply_answered_not_applied_is_caught() {
    caught(
        |seed| lost_reply_not_applied("control_lost_reply_answered_not_applied_is_caught", seed),
        without_bug,
        "not-applied-is-true",
    );
}
