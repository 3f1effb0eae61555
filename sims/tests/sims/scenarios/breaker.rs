//! The circuit breaker under a partition, a failing server and a crash:
//! it opens, sends nothing while open (checked from the client's attempts
//! and from the server's side), probes with at most N calls, and closes by
//! itself once the fault heals. And the cascade: a slow server with many
//! callers stays bounded with breaker + load shedding, and does not
//! without them.

use std::time::Duration;

use abacus::{
    client::{BreakerConfig, breaker::State},
    trace::{Event, InjectedFault},
};
use abacus_sims::{
    catalogue::{breaker, cascade},
    faults::{NetFault, Window},
    history::Entry,
    sweep::{count, ensure, is_event, sweep},
    world::Run,
};

use crate::snapshot::snapshot_fixed_seed;

/// Recovery bound stated in docs/resilience.md: once the fault heals, the breaker
/// closes within two open periods at their longest (`2 × open_ms_max`: the
/// first probe after the heal may still ride a connection the fault killed,
/// fail, and re-open the breaker once more), plus one call deadline (the
/// probe itself), plus 2 s for HTTP/2 keepalive to notice and replace a dead
/// connection.
fn recovery_bound(b: &BreakerConfig, deadline: Duration) -> Duration {
    2 * Duration::from_millis(b.open_ms_max) + deadline + Duration::from_secs(2)
}

/// Time of the first record matching `f` at or after `from`.
fn first_after(run: &Run, from: Duration, f: impl Fn(&Entry) -> bool) -> Option<Duration> {
    run.records
        .iter()
        .find(|r| r.at >= from && f(&r.entry))
        .map(|r| r.at)
}

fn moved_to(state: State) -> impl Fn(&Entry) -> bool {
    move |e| {
        is_event(
            e,
            |ev| matches!(ev, Event::BreakerTransition { to, .. } if *to == state),
        )
    }
}

/// Opens during the fault, closes within the bound after it heals.
fn opens_and_recovers(s: &abacus_sims::Scenario) {
    let w = s.plan.windows[0];
    let bound = recovery_bound(s.breaker.as_ref().expect("breaker scenario"), s.deadline);
    sweep(s).every("opens-and-recovers", |run| {
        let open = first_after(run, w.from, moved_to(State::Open))
            .ok_or("the breaker never opened during the fault")?;
        ensure(open < w.until(), || {
            format!("opened only at {open:?}, after the heal")
        })?;
        let close = first_after(run, w.until(), moved_to(State::Closed))
            .ok_or("the breaker never closed after the heal")?;
        ensure(close - w.until() <= bound, || {
            format!(
                "closed {:?} after the heal, bound {bound:?}",
                close - w.until()
            )
        })
    });
    snapshot_fixed_seed(s);
}

#[test]
fn breaker_opens_under_partition_and_recovers() {
    opens_and_recovers(&breaker(
        "breaker_opens_under_partition_and_recovers",
        vec![Window::all(NetFault::Partition, 300, 2500)],
    ));
}

#[test]
fn breaker_opens_on_crash_and_recovers_after_restart() {
    opens_and_recovers(&breaker(
        "breaker_opens_on_crash_and_recovers_after_restart",
        vec![Window::all(NetFault::Crash, 300, 2500)],
    ));
}

/// The server is up but refuses everything for 3 s: from the *server's*
/// side, no request arrives while the client's breaker is open.
#[test]
fn breaker_open_means_the_server_sees_nothing() {
    let mut s = breaker("breaker_open_means_the_server_sees_nothing", vec![]);
    s.plan.fail_rate = 1.0;
    s.quiet_after = Duration::from_secs(3);
    sweep(&s).every("open-breaker-silences-the-server", |run| {
        let mut open_since: Option<Duration> = None;
        let mut intervals = Vec::new();
        for r in &run.records {
            match &r.entry {
                Entry::Event(Event::BreakerTransition {
                    to: State::Open, ..
                }) => open_since = Some(r.at),
                Entry::Event(Event::BreakerTransition {
                    from: State::Open, ..
                }) => {
                    if let Some(from) = open_since.take() {
                        intervals.push((from, r.at));
                    }
                }
                _ => {}
            }
        }
        ensure(!intervals.is_empty(), || "the breaker never opened".into())?;
        // A request already on the wire when the breaker opened may still
        // land: allow one network latency (max 5 ms here) after opening.
        let grace = Duration::from_millis(5);
        let server_saw: Vec<_> = run
            .records
            .iter()
            .filter(|r| {
                r.host == "server"
                    && matches!(
                        r.entry,
                        Entry::Event(Event::FaultInjected { .. } | Event::Evaluated { .. })
                    )
            })
            .filter(|r| {
                intervals
                    .iter()
                    .any(|(a, b)| r.at > *a + grace && r.at < *b)
            })
            .map(|r| format!("{:?} {:?}", r.at, r.entry))
            .collect();
        ensure(server_saw.is_empty(), || {
            format!("the server handled requests while the breaker was open: {server_saw:?}")
        })
    });
}

/// Requests the server admitted (each draws a delay) and requests whose
/// deadline expired while the server held them (pure waste).
fn server_work(run: &Run) -> (usize, usize) {
    let runs = std::slice::from_ref(run);
    let admitted = count(runs, |e| {
        is_event(e, |ev| {
            matches!(
                ev,
                Event::FaultInjected {
                    fault: InjectedFault::Delay { .. },
                    ..
                }
            )
        })
    });
    let wasted = count(runs, |e| {
        is_event(e, |ev| matches!(ev, Event::ServerDeadlineExpired { .. }))
    });
    (admitted, wasted)
}

#[test]
fn cascade_is_bounded_by_breaker_and_shedding() {
    // Negative control first: the same load with both protections off,
    // seed by seed beside the protected run.
    let unprotected = sweep(&cascade("cascade_unprotected", false));
    sweep(&cascade("cascade_protected", true)).every("protection-halves-the-work", |p| {
        let u = unprotected
            .runs()
            .iter()
            .find(|u| u.seed == p.seed)
            .ok_or("no unprotected run of this seed")?;
        let (pa, pw) = server_work(p);
        let (ua, uw) = server_work(u);
        ensure(pa * 2 <= ua && pw * 2 <= uw, || {
            format!(
                "protected admitted {pa} / wasted {pw}, unprotected {ua} / {uw}: protection must at least halve server work"
            )
        })?;
        let runs = std::slice::from_ref(p);
        let shed = count(runs, |e| {
            is_event(e, |ev| matches!(ev, Event::Shed { .. }))
        });
        let rejected = count(runs, |e| {
            is_event(e, |ev| matches!(ev, Event::BreakerRejected { .. }))
        });
        ensure(shed + rejected > 0, || {
            "neither shedding nor the breaker acted".into()
        })
    });
}
