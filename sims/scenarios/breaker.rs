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

use crate::{
    harness::{Run, Scenario},
    history::Entry,
    plan::{NetFault, Window},
    sweep::{count, is_event, snapshot_fixed_seed, sweep},
};

/// Recovery bound stated in docs/resilience.md: once the fault heals, the breaker
/// closes within two open periods at their longest (`2 × open_ms_max`: the
/// first probe after the heal may still ride a connection the fault killed,
/// fail, and re-open the breaker once more), plus one call deadline (the
/// probe itself), plus 2 s for HTTP/2 keepalive to notice and replace a dead
/// connection.
fn recovery_bound(b: &BreakerConfig, deadline: Duration) -> Duration {
    2 * Duration::from_millis(b.open_ms_max) + deadline + Duration::from_secs(2)
}

fn breaker_config() -> BreakerConfig {
    BreakerConfig {
        open_ms: 300,
        open_ms_max: 1_200,
        ..BreakerConfig::default()
    }
}

pub fn scenario(name: &'static str, windows: Vec<Window>) -> Scenario {
    let mut s = Scenario::new(name);
    s.clients = 1;
    // Steady traffic through and well past the fault (about 8 s), so the
    // recovery time measures the breaker, not a lull in the workload.
    s.calls_per_client = 80;
    s.think_ms = (80, 120);
    s.accumulate_share = 0.0;
    s.deadline = Duration::from_millis(800);
    s.attempt_timeout = Duration::from_millis(250);
    s.breaker = Some(breaker_config());
    s.plan.windows = windows;
    s.liveness_calls = 3;
    s
}

/// Time of the first record matching `f` at or after `from`.
fn first_after(run: &Run, from: Duration, f: impl Fn(&Entry) -> bool) -> Option<Duration> {
    run.records
        .iter()
        .find(|r| r.at >= from && f(&r.entry))
        .map(|r| r.at)
}

fn opened(e: &Entry) -> bool {
    is_event(e, |ev| {
        matches!(
            ev,
            Event::BreakerTransition {
                to: State::Open,
                ..
            }
        )
    })
}

fn closed(e: &Entry) -> bool {
    is_event(e, |ev| {
        matches!(
            ev,
            Event::BreakerTransition {
                to: State::Closed,
                ..
            }
        )
    })
}

/// Opens during the fault, closes within the bound after it heals.
fn opens_and_recovers(s: &Scenario) {
    let w = s.plan.windows[0];
    let bound = recovery_bound(s.breaker.as_ref().expect("breaker scenario"), s.deadline);
    for run in sweep(s) {
        let open = first_after(&run, w.from, opened).unwrap_or_else(|| {
            panic!(
                "seed {}: the breaker never opened during the fault",
                run.seed
            )
        });
        assert!(
            open < w.until(),
            "seed {}: opened only at {open:?}, after the heal",
            run.seed
        );
        let close = first_after(&run, w.until(), closed).unwrap_or_else(|| {
            panic!("seed {}: the breaker never closed after the heal", run.seed)
        });
        assert!(
            close - w.until() <= bound,
            "seed {}: closed {:?} after the heal, bound {bound:?}",
            run.seed,
            close - w.until()
        );
    }
    snapshot_fixed_seed(s);
}

#[test]
fn breaker_opens_under_partition_and_recovers() {
    opens_and_recovers(&scenario(
        "breaker_opens_under_partition_and_recovers",
        vec![Window::all(NetFault::Partition, 300, 2500)],
    ));
}

#[test]
fn breaker_opens_on_crash_and_recovers_after_restart() {
    opens_and_recovers(&scenario(
        "breaker_opens_on_crash_and_recovers_after_restart",
        vec![Window::all(NetFault::Crash, 300, 2500)],
    ));
}

/// The server is up but refuses everything for 3 s: from the *server's*
/// side, no request arrives while the client's breaker is open.
#[test]
fn breaker_open_means_the_server_sees_nothing() {
    let mut s = scenario("breaker_open_means_the_server_sees_nothing", vec![]);
    s.plan.fail_rate = 1.0;
    s.quiet_after = Duration::from_secs(3);
    for run in sweep(&s) {
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
        assert!(
            !intervals.is_empty(),
            "seed {}: the breaker never opened",
            run.seed
        );
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
        assert!(
            server_saw.is_empty(),
            "seed {}: the server handled requests while the breaker was open: {server_saw:?}",
            run.seed
        );
    }
}

/// A slow server (1.5–2 s per request, deadlines of 300 ms) and eight
/// callers. Work the server does for a caller that already gave up is
/// wasted; requests it admits are what piles up.
pub fn cascade(name: &'static str, protected: bool) -> Scenario {
    let mut s = Scenario::new(name);
    s.clients = 8;
    s.calls_per_client = 10;
    s.accumulate_share = 0.0;
    s.deadline = Duration::from_millis(300);
    s.attempt_timeout = Duration::from_millis(300);
    s.plan.delay_ms = (1_500, 2_000);
    if protected {
        s.breaker = Some(BreakerConfig {
            open_ms: 1_000,
            open_ms_max: 5_000,
            ..BreakerConfig::default()
        });
        s.in_flight_max = 4;
    }
    s
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
    let protected = sweep(&cascade("cascade_protected", true));
    // Negative control: the same load with both protections off.
    let unprotected = sweep(&cascade("cascade_unprotected", false));
    for (p, u) in protected.iter().zip(&unprotected) {
        let (pa, pw) = server_work(p);
        let (ua, uw) = server_work(u);
        assert!(
            pa * 2 <= ua && pw * 2 <= uw,
            "seed {}: protected admitted {pa} / wasted {pw}, unprotected {ua} / {uw}: protection must at least halve server work",
            p.seed
        );
        let shed = count(std::slice::from_ref(p), |e| {
            is_event(e, |ev| matches!(ev, Event::Shed { .. }))
        });
        let rejected = count(std::slice::from_ref(p), |e| {
            is_event(e, |ev| matches!(ev, Event::BreakerRejected { .. }))
        });
        assert!(
            shed + rejected > 0,
            "seed {}: neither shedding nor the breaker acted",
            p.seed
        );
    }
}
