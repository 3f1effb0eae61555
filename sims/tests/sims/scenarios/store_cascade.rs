//! The store cascade: the store turns slow (2 s per operation) under 18
//! callers over three replicas. With each replica's store guard, the pure
//! calls keep their latency (`pure-calls-unaffected`), each replica's store
//! work in flight stays within the guard's bound (`store-work-bounded`),
//! register calls are refused at once once the guard's breaker opens, and
//! writes come back by themselves once the store does (`liveness`). The
//! negative control is the same world without the guard: it must violate
//! `pure-calls-unaffected` — the collapse — and the same seed with the
//! guard must pass.

use abacus::{
    client::breaker::State,
    error::ServiceError,
    store::guard::{ENDPOINT, Refusal},
    trace::Event,
};
use abacus_sims::{
    catalogue::store_cascade,
    sweep::{ensure, expect_violation, is_event, run_checked, sweep},
};

fn store_breaker(to: State) -> impl Fn(&Event) -> bool {
    move |ev| {
        matches!(ev, Event::BreakerTransition { endpoint, to: t, .. }
            if endpoint == ENDPOINT && *t == to)
    }
}

#[test]
fn a_slow_store_with_the_guard_costs_the_pure_calls_nothing() {
    let s = store_cascade(
        "a_slow_store_with_the_guard_costs_the_pure_calls_nothing",
        true,
    );
    let quiet = s.quiet_from().expect("a liveness phase");
    let sweep = sweep(&s);
    // On every seed: the guards opened while the store was slow, and closed
    // once it was not, with nobody's help.
    sweep.every("the-guard-opens-and-recovers", |run| {
        let opened = run
            .records
            .iter()
            .find(|r| r.at < quiet && is_event(&r.entry, store_breaker(State::Open)));
        ensure(opened.is_some(), || {
            "no replica's guard opened while the store was slow".into()
        })?;
        let closed = run
            .records
            .iter()
            .any(|r| r.at >= quiet && is_event(&r.entry, store_breaker(State::Closed)));
        ensure(closed, || {
            "no guard closed after the store recovered".into()
        })
    });
    sweep.reached("a register call refused by an open breaker", |e| {
        is_event(e, |ev| {
            matches!(
                ev,
                Event::Rejected {
                    error: ServiceError::StoreRefused(Refusal::CircuitOpen { .. }),
                    ..
                }
            )
        })
    });
    sweep.reached("a register call refused for store work in flight", |e| {
        is_event(e, |ev| {
            matches!(
                ev,
                Event::Rejected {
                    error: ServiceError::StoreRefused(Refusal::Busy { .. }),
                    ..
                }
            )
        })
    });
}

/// Negative control: without the guard the replicas collapse; the seed
/// that shows it passes with the guard.
#[test]
fn control_a_slow_store_without_the_guard_sheds_the_pure_calls() {
    let unguarded = store_cascade(
        "control_a_slow_store_without_the_guard_sheds_the_pure_calls",
        false,
    );
    let Some((run, violations)) = expect_violation(&unguarded, "pure-calls-unaffected") else {
        return;
    };
    assert!(
        violations
            .iter()
            .any(|v| v.invariant == "store-work-bounded"),
        "store work in flight was bounded without the guard: {violations:?}"
    );
    let guarded = store_cascade(unguarded.name, true);
    let (_, violations) = run_checked(&guarded, run.seed);
    assert!(
        violations.is_empty(),
        "seed {} with the guard: {violations:?}",
        run.seed
    );
}
