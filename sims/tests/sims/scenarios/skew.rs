//! Clock skew and drift against deduplication: every host's clock runs up
//! to 20 % fast or slow; clients retry one request ID for their whole
//! deadline. Within the bound of docs/simulation.md (retention at least
//! `(W / (1 - ρ) + L) · (1 + ρ)`) no request is applied twice; with a
//! retention equal to the retry window — outside the bound — the checker
//! reports the double apply the bound predicts.

use std::collections::BTreeMap;

use abacus::{store::dedup::EvictReason, trace::Event};
use abacus_sims::{
    catalogue::{Retention, SKEW_RATE_MAX, clock_skew},
    history::Entry,
    sweep::{expect_violation_with, is_event, run_checked, sweep},
};

#[test]
fn clock_skew_within_the_bound_never_double_applies() {
    let s = clock_skew(
        "clock_skew_within_the_bound_never_double_applies",
        Retention::WithinBound,
    );
    let sweep = sweep(&s);
    sweep.reached("a retry answered from its record", |e| {
        is_event(e, |ev| matches!(ev, Event::DedupHit { .. }))
    });
    // The bound earns its margin: some retry was answered from a record
    // older than the naive retention (W) lasts on a clock 20 % fast.
    let naive_life = s.deadline.div_f64(1.0 + SKEW_RATE_MAX);
    sweep.reached_by(
        "a retry answered from a record the naive retention could have expired",
        move |run| {
            let mut applied = BTreeMap::new();
            run.records.iter().any(|r| match &r.entry {
                Entry::Event(Event::Applied { request_id, .. }) => {
                    applied.insert(request_id.clone(), r.at);
                    false
                }
                Entry::Event(Event::DedupHit { request_id, .. }) => applied
                    .get(request_id)
                    .is_some_and(|&at| r.at - at > naive_life),
                _ => false,
            })
        },
    );
    sweep.reached("a record expired by its TTL", |e| {
        is_event(e, |ev| {
            matches!(
                ev,
                Event::DedupEvicted {
                    reason: EvictReason::Ttl,
                    ..
                }
            )
        })
    });
}

/// NEGATIVE CONTROL: the retention equals the clients' retry window, as if
/// clocks were true and messages instant. A slow client clock stretches
/// the window, a fast server clock shortens the record's life: a late
/// retry meets an expired record and is applied again.
///
/// The same seed with the retention the bound gives passes: the double
/// apply is the retention's, not the scenario's.
#[test]
fn control_naive_retention_double_applies_under_skew() {
    const NAME: &str = "control_naive_retention_double_applies_under_skew";
    let Some((run, _)) = expect_violation_with(
        |_| clock_skew(NAME, Retention::Naive),
        "applied-once-per-request-id",
    ) else {
        return;
    };
    let (_, left) = run_checked(&clock_skew(NAME, Retention::WithinBound), run.seed);
    assert!(
        left.is_empty(),
        "seed {} fails within the bound too: {left:?}",
        run.seed
    );
}
