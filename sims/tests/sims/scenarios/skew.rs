//! Clock skew and drift against deduplication: every host's clock runs up
//! to 20 % fast or slow; clients retry one request ID for their whole
//! deadline. Within the bound of docs/simulation.md (retention at least
//! `(W / (1 - ρ) + L) · (1 + ρ)`) no request is applied twice; with a
//! retention equal to the retry window — outside the bound — the checker
//! reports the double apply the bound predicts.

use std::collections::BTreeMap;

use abacus::{rpc::Method, store::dedup::EvictReason, trace::Event};
use abacus_sims::{
    Scenario,
    catalogue::{Retention, SKEW_RATE_MAX, clock_skew, replicated_clock_skew},
    check::call_trace::calls,
    history::Entry,
    sweep::{Sweep, expect_violation_with, is_event, run_checked, sweep},
};

#[test]
fn clock_skew_within_the_bound_never_double_applies() {
    within_the_bound(&clock_skew(
        "clock_skew_within_the_bound_never_double_applies",
        Retention::WithinBound,
    ));
}

/// The same on the replicated system: every replica, the store host and
/// every client on its own clock; records live at the store and age on
/// its clock, retries go on at other replicas.
#[test]
fn replicated_clock_skew_within_the_bound_never_double_applies() {
    let s = replicated_clock_skew(
        "replicated_clock_skew_within_the_bound_never_double_applies",
        Retention::WithinBound,
    );
    let sweep = within_the_bound(&s);
    sweep.reached_by(
        "an Accumulate whose attempts went to two replicas and succeeded",
        |run| {
            calls(&run.records).values().any(|c| {
                c.method == Method::Accumulate
                    && matches!(c.finished, Some((_, Ok(()))))
                    && c.endpoints.iter().any(|e| *e != c.endpoints[0])
            })
        },
    );
}

/// Sweeps `s` (every invariant on every seed, exactly-once among them)
/// and asserts the sweep reached what makes the bound matter: retries
/// answered from their record, one of them from a record older than the
/// naive retention lasts on the fastest clock, and records expiring.
fn within_the_bound(s: &Scenario) -> Sweep {
    let sweep = sweep(s);
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
    sweep
}

/// NEGATIVE CONTROL: the retention equals the clients' retry window, as if
/// clocks were true and messages instant. A slow client clock stretches
/// the window, a fast server clock shortens the record's life: a late
/// retry meets an expired record and is applied again.
///
/// The double apply comes from expiry: between a request's two applies a
/// record expired by its TTL (the store keeps digests, not IDs, so which
/// record is not in the trace; where the retry's own lookup expired it,
/// the `dedup-expired-under-retry` probe says so, as on the first
/// violating seed). The same seed with the retention the bound gives
/// passes: the double apply is the retention's, not the scenario's.
#[test]
fn control_naive_retention_double_applies_under_skew() {
    const NAME: &str = "control_naive_retention_double_applies_under_skew";
    let Some((run, _)) = expect_violation_with(
        |_| clock_skew(NAME, Retention::Naive),
        "applied-once-per-request-id",
    ) else {
        return;
    };
    assert!(
        expired_between_two_applies(&run.records),
        "seed {}: no record expired by its TTL between a request's two applies",
        run.seed
    );
    let (_, left) = run_checked(&clock_skew(NAME, Retention::WithinBound), run.seed);
    assert!(
        left.is_empty(),
        "seed {} fails within the bound too: {left:?}",
        run.seed
    );
}

/// NEGATIVE CONTROL on the replicated system: the store's retention is
/// the bound for true clocks — the retry window plus the two hops to the
/// store, enough were every clock true. A slow client clock stretches the
/// window, a fast store clock shortens the record's life, and a retry
/// reaching the store through any replica after that life applies again.
///
/// Between the request's two applies a record expired by its TTL. The
/// same seed passes with the bound's retention, and with true clocks: the
/// double apply is the skew's, and the bound's skew terms prevent it.
#[test]
fn control_replicated_true_clock_retention_double_applies_under_skew() {
    const NAME: &str = "control_replicated_true_clock_retention_double_applies_under_skew";
    let Some((run, _)) = expect_violation_with(
        |_| replicated_clock_skew(NAME, Retention::TrueClocks),
        "applied-once-per-request-id",
    ) else {
        return;
    };
    assert!(
        expired_between_two_applies(&run.records),
        "seed {}: no record expired by its TTL between a request's two applies",
        run.seed
    );
    let within = replicated_clock_skew(NAME, Retention::WithinBound);
    let mut true_clocks = replicated_clock_skew(NAME, Retention::TrueClocks);
    true_clocks.skew_rate_max = 0.0;
    for (what, s) in [
        ("within the bound", within),
        ("with true clocks", true_clocks),
    ] {
        let (_, left) = run_checked(&s, run.seed);
        assert!(
            left.is_empty(),
            "seed {} fails {what} too: {left:?}",
            run.seed
        );
    }
}

/// True when some request ID was applied twice with a TTL expiry in
/// between.
fn expired_between_two_applies(records: &[abacus_sims::history::Record]) -> bool {
    let mut applied = BTreeMap::new();
    let mut expiries = 0usize;
    records.iter().any(|r| match &r.entry {
        Entry::Event(Event::DedupEvicted {
            reason: EvictReason::Ttl,
            ..
        }) => {
            expiries += 1;
            false
        }
        Entry::Event(Event::Applied { request_id, .. }) if !request_id.is_empty() => {
            match applied.insert(request_id.clone(), expiries) {
                Some(before) => expiries > before,
                None => false,
            }
        }
        _ => false,
    })
}

#[test]
fn expired_between_two_applies_needs_the_expiry_in_between() {
    use std::time::Duration;
    let at = |ms: u64, event: Event| abacus_sims::history::Record {
        at: Duration::from_millis(ms),
        host: "server".into(),
        entry: Entry::Event(event),
    };
    let applied = || Event::Applied {
        request_id: "c1-0".into(),
        register: "r".into(),
        delta: 1.0,
        value: 1.0,
    };
    let expired = || Event::DedupEvicted {
        request_id: "digest".into(),
        reason: EvictReason::Ttl,
    };
    let between = [at(0, applied()), at(1, expired()), at(2, applied())];
    assert!(expired_between_two_applies(&between));
    let before = [at(0, expired()), at(1, applied()), at(2, applied())];
    assert!(!expired_between_two_applies(&before));
    let once = [at(0, applied()), at(1, expired())];
    assert!(!expired_between_two_applies(&once));
}
