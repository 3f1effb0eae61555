//! The policy's unit tests: each rule of the state machine on its own, then
//! a seeded random run checked against the state diagram.

use super::*;
use crate::resilience::breaker::config::CodeSet;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const FAIL: Code = Code::Unavailable;
const OK: Code = Code::Ok;

fn policy(config: BreakerConfig) -> BreakerPolicy<ChaCha8Rng> {
    BreakerPolicy::new(config, ChaCha8Rng::seed_from_u64(1)).unwrap()
}

fn no_jitter() -> BreakerConfig {
    BreakerConfig {
        open_jitter_ratio: 0.0,
        ..BreakerConfig::default()
    }
}

/// Admits one call at `now` and reports `code` at once.
fn call(b: &mut BreakerPolicy<ChaCha8Rng>, code: Code, now: Instant) -> Option<Transition> {
    let ticket = b.try_acquire(now).expect("admitted").ticket;
    b.record(ticket, code, now)
}

fn t(from: State, to: State) -> Option<Transition> {
    Some(Transition { from, to })
}

/// Trips a breaker configured to open on one failure.
fn trip(b: &mut BreakerPolicy<ChaCha8Rng>, now: Instant) {
    assert_eq!(call(b, FAIL, now), t(State::Closed, State::Open));
}

#[test]
fn trips_on_failure_rate_only_after_calls_min() {
    let mut b = policy(BreakerConfig {
        window_calls: 10,
        calls_min: 5,
        failure_rate_threshold: Some(0.5),
        consecutive_failures_max: None,
        ..no_jitter()
    });
    let now = Instant::now();
    for _ in 0..4 {
        assert_eq!(call(&mut b, FAIL, now), None, "4 calls < calls_min");
    }
    assert_eq!(call(&mut b, FAIL, now), t(State::Closed, State::Open));
}

#[test]
fn rate_is_over_the_last_window_calls_only() {
    let mut b = policy(BreakerConfig {
        window_calls: 4,
        calls_min: 4,
        failure_rate_threshold: Some(0.75),
        consecutive_failures_max: None,
        ..no_jitter()
    });
    let now = Instant::now();
    // F S S F: 2/4, below 0.75. Then S pushes the first F out: S S F S.
    for code in [FAIL, OK, OK, FAIL, OK] {
        assert_eq!(call(&mut b, code, now), None);
    }
    assert_eq!(b.snapshot(now).window_failures, 1);
    assert_eq!(b.snapshot(now).window_calls, 4);
    // S F S F: 2/4. Then F S F F: 3/4 trips.
    assert_eq!(call(&mut b, FAIL, now), None);
    assert_eq!(call(&mut b, FAIL, now), t(State::Closed, State::Open));
}

#[test]
fn a_steady_minority_of_failures_never_trips() {
    let mut b = policy(BreakerConfig {
        consecutive_failures_max: None,
        ..no_jitter()
    });
    let now = Instant::now();
    for i in 0..300 {
        let code = if i % 3 == 0 { FAIL } else { OK };
        assert_eq!(call(&mut b, code, now), None);
    }
}

#[test]
fn trips_on_consecutive_failures() {
    let mut b = policy(BreakerConfig {
        failure_rate_threshold: None,
        consecutive_failures_max: Some(3),
        ..no_jitter()
    });
    let now = Instant::now();
    for code in [FAIL, FAIL, OK, FAIL, FAIL] {
        assert_eq!(call(&mut b, code, now), None, "a success resets the run");
    }
    assert_eq!(call(&mut b, FAIL, now), t(State::Closed, State::Open));
}

#[test]
fn caller_errors_never_trip() {
    let mut b = policy(BreakerConfig {
        window_calls: 5,
        calls_min: 1,
        failure_rate_threshold: Some(0.01),
        consecutive_failures_max: Some(1),
        ..no_jitter()
    });
    let now = Instant::now();
    for code in super::super::config::CALLER_CODES {
        for _ in 0..10 {
            assert_eq!(call(&mut b, code, now), None, "{code:?}");
        }
    }
    let s = b.snapshot(now);
    assert_eq!(
        (s.state, s.counters.failures, s.counters.successes),
        (State::Closed, 0, 80)
    );
}

#[test]
fn failure_codes_are_configurable() {
    let mut b = policy(BreakerConfig {
        failure_codes: CodeSet::of(&[Code::Internal]),
        consecutive_failures_max: Some(1),
        ..no_jitter()
    });
    let now = Instant::now();
    assert_eq!(call(&mut b, Code::Unavailable, now), None);
    assert_eq!(
        call(&mut b, Code::Internal, now),
        t(State::Closed, State::Open)
    );
}

#[test]
fn slow_calls_count_as_failures() {
    let mut b = policy(BreakerConfig {
        slow_call_ms: Some(100),
        failure_rate_threshold: None,
        consecutive_failures_max: Some(2),
        ..no_jitter()
    });
    let t0 = Instant::now();
    let exactly = b.try_acquire(t0).unwrap().ticket;
    assert_eq!(b.record(exactly, OK, t0 + ms(100)), None);
    assert_eq!(
        b.snapshot(t0).consecutive_failures,
        0,
        "100 ms is not above 100 ms"
    );
    let slow = b.try_acquire(t0).unwrap().ticket;
    assert_eq!(b.record(slow, OK, t0 + ms(101)), None);
    let slow = b.try_acquire(t0).unwrap().ticket;
    assert_eq!(
        b.record(slow, OK, t0 + ms(150)),
        t(State::Closed, State::Open)
    );
    let s = b.snapshot(t0);
    assert_eq!(
        (
            s.counters.failures,
            s.counters.slow_calls,
            s.counters.successes
        ),
        (2, 2, 1)
    );
}

#[test]
fn open_rejects_until_the_jittered_duration() {
    let mut durations = Vec::new();
    for seed in 0..32 {
        let config = BreakerConfig {
            consecutive_failures_max: Some(1),
            open_ms: 1_000,
            open_jitter_ratio: 0.2,
            ..BreakerConfig::default()
        };
        let mut b = BreakerPolicy::new(config, ChaCha8Rng::seed_from_u64(seed)).unwrap();
        let t0 = Instant::now();
        trip(&mut b, t0);
        let open_ms = b.snapshot(t0).open_ms;
        assert!((800..=1_000).contains(&open_ms), "{open_ms}");
        assert_eq!(b.try_acquire(t0).unwrap_err().probe_in_ms, open_ms);
        let last = b.try_acquire(t0 + ms(open_ms) - Duration::from_micros(1));
        assert_eq!(
            last.unwrap_err(),
            Rejected {
                state: State::Open,
                probe_in_ms: 1
            }
        );
        let probe = b.try_acquire(t0 + ms(open_ms)).unwrap();
        assert_eq!(probe.transition, t(State::Open, State::HalfOpen));
        assert!(probe.ticket.is_probe());
        assert_eq!(b.snapshot(t0).counters.rejected, 2);
        durations.push(open_ms);
    }
    durations.sort_unstable();
    durations.dedup();
    assert!(
        durations.len() > 16,
        "seeds spread the probes: {durations:?}"
    );
}

#[test]
fn same_seed_same_durations() {
    let run = || {
        let mut b = policy(BreakerConfig {
            consecutive_failures_max: Some(1),
            ..BreakerConfig::default()
        });
        let t0 = Instant::now();
        trip(&mut b, t0);
        b.snapshot(t0).open_ms
    };
    assert_eq!(run(), run());
}

#[test]
fn open_duration_doubles_on_failed_probes_caps_and_resets_on_close() {
    let mut b = policy(BreakerConfig {
        consecutive_failures_max: Some(1),
        open_ms: 100,
        open_ms_max: 350,
        ..no_jitter()
    });
    let mut now = Instant::now();
    trip(&mut b, now);
    let mut seen = vec![b.snapshot(now).open_ms];
    for _ in 0..4 {
        now += ms(b.snapshot(now).open_ms);
        let probe = b.try_acquire(now).unwrap();
        assert_eq!(
            b.record(probe.ticket, FAIL, now),
            t(State::HalfOpen, State::Open)
        );
        seen.push(b.snapshot(now).open_ms);
    }
    assert_eq!(seen, [100, 200, 350, 350, 350]);
    now += ms(350);
    let probe = b.try_acquire(now).unwrap();
    assert_eq!(
        b.record(probe.ticket, OK, now),
        t(State::HalfOpen, State::Closed)
    );
    trip(&mut b, now);
    assert_eq!(b.snapshot(now).open_ms, 100, "a close resets the growth");
}

#[test]
fn half_open_admits_at_most_n_probes_and_needs_all_to_succeed() {
    let mut b = policy(BreakerConfig {
        consecutive_failures_max: Some(1),
        half_open_probes: 2,
        open_ms: 100,
        ..no_jitter()
    });
    let t0 = Instant::now();
    trip(&mut b, t0);
    let now = t0 + ms(100);
    let p1 = b.try_acquire(now).unwrap();
    let p2 = b.try_acquire(now).unwrap();
    assert_eq!(p2.transition, None);
    assert_eq!(
        b.try_acquire(now).unwrap_err(),
        Rejected {
            state: State::HalfOpen,
            probe_in_ms: 0
        }
    );
    assert_eq!(b.snapshot(now).probes_in_flight, 2);
    assert_eq!(b.record(p1.ticket, OK, now), None, "one success of two");
    // The finished probe's slot is free again.
    let p3 = b.try_acquire(now).unwrap();
    assert_eq!(
        b.record(p2.ticket, OK, now),
        t(State::HalfOpen, State::Closed)
    );
    // p3 belongs to the finished half-open round: stale.
    assert_eq!(b.record(p3.ticket, FAIL, now), None);
    let s = b.snapshot(now);
    assert_eq!((s.state, s.counters.stale), (State::Closed, 1));
}

#[test]
fn a_probe_failure_reopens_and_late_probes_are_stale() {
    let mut b = policy(BreakerConfig {
        consecutive_failures_max: Some(1),
        half_open_probes: 2,
        ..no_jitter()
    });
    let t0 = Instant::now();
    trip(&mut b, t0);
    let now = t0 + ms(1_000);
    let p1 = b.try_acquire(now).unwrap();
    let p2 = b.try_acquire(now).unwrap();
    assert_eq!(
        b.record(p1.ticket, FAIL, now),
        t(State::HalfOpen, State::Open)
    );
    assert_eq!(
        b.record(p2.ticket, OK, now),
        None,
        "cannot close an open breaker"
    );
    assert_eq!(b.state(), State::Open);
}

#[test]
fn closed_calls_that_end_after_a_trip_are_stale() {
    let mut b = policy(BreakerConfig {
        consecutive_failures_max: Some(1),
        ..no_jitter()
    });
    let now = Instant::now();
    let slow = b.try_acquire(now).unwrap().ticket;
    trip(&mut b, now);
    assert_eq!(b.record(slow, OK, now), None);
    assert_eq!(b.snapshot(now).counters.stale, 1);
}

#[test]
fn a_dropped_or_abandoned_ticket_frees_its_probe_slot() {
    let mut b = policy(BreakerConfig {
        consecutive_failures_max: Some(1),
        ..no_jitter()
    });
    let t0 = Instant::now();
    trip(&mut b, t0);
    let now = t0 + ms(1_000);
    let probe = b.try_acquire(now).unwrap().ticket;
    assert!(b.try_acquire(now).is_err());
    drop(probe);
    let probe = b
        .try_acquire(now)
        .expect("the dropped probe's slot is free");
    assert!(b.try_acquire(now).is_err());
    b.abandon(probe.ticket);
    let probe = b
        .try_acquire(now)
        .expect("the abandoned probe's slot is free");
    let s = b.snapshot(now);
    // Nothing recorded for the abandoned probe: the one failure is the trip.
    assert_eq!(
        (
            s.state,
            s.counters.abandoned,
            s.counters.successes,
            s.counters.failures
        ),
        (State::HalfOpen, 1, 0, 1)
    );
    assert_eq!(
        b.record(probe.ticket, OK, now),
        t(State::HalfOpen, State::Closed)
    );
}

/// Drives a breaker with a seeded random mix of calls, outcomes, drops
/// and clock jumps, checking every transition against the diagram and
/// the counters against the transitions seen.
#[test]
fn only_legal_transitions_under_random_operation() {
    let mut ops = ChaCha8Rng::seed_from_u64(42);
    let mut b = policy(BreakerConfig {
        window_calls: 8,
        calls_min: 4,
        consecutive_failures_max: Some(3),
        slow_call_ms: Some(50),
        half_open_probes: 3,
        open_ms: 20,
        open_ms_max: 200,
        ..BreakerConfig::default()
    });
    let mut now = Instant::now();
    let mut tickets: Vec<Ticket> = Vec::new();
    let mut state = State::Closed;
    let mut seen = Transitions::default();
    let mut check = |tr: Option<Transition>, state: &mut State, b: &BreakerPolicy<_>| {
        if let Some(tr) = tr {
            assert!(tr.is_legal(), "{tr:?}");
            assert_eq!(tr.from, *state);
            *state = tr.to;
            seen.count(tr);
        }
        assert_eq!(b.state(), *state);
        seen
    };
    for _ in 0..20_000 {
        match ops.random_range(0..10) {
            0..4 => match b.try_acquire(now) {
                Ok(a) => {
                    check(a.transition, &mut state, &b);
                    tickets.push(a.ticket);
                }
                Err(r) => assert_ne!(r.state, State::Closed),
            },
            4..7 if !tickets.is_empty() => {
                let i = ops.random_range(0..tickets.len());
                let ticket = tickets.swap_remove(i);
                let code = if ops.random_bool(0.4) { FAIL } else { OK };
                let tr = b.record(ticket, code, now);
                check(tr, &mut state, &b);
            }
            7 if !tickets.is_empty() => {
                let i = ops.random_range(0..tickets.len());
                drop(tickets.swap_remove(i));
            }
            _ => now += ms(ops.random_range(0..30)),
        }
        if let Phase::HalfOpen { slots, .. } = &b.phase {
            assert!(in_flight(slots) <= 3);
        }
    }
    let totals = check(None, &mut state, &b);
    assert_eq!(b.snapshot(now).counters.transitions, totals);
    // The run must have exercised every edge, or it proves little.
    assert!(totals.closed_to_open > 0 && totals.half_open_to_open > 0);
    assert!(totals.half_open_to_closed > 0 && totals.open_to_half_open > 0);
}

#[test]
fn snapshot_renders_for_humans() {
    let mut b = policy(BreakerConfig {
        consecutive_failures_max: Some(1),
        ..no_jitter()
    });
    let t0 = Instant::now();
    trip(&mut b, t0);
    assert_eq!(
        b.snapshot(t0 + ms(250)).to_string(),
        "open for 1000 ms (trip 1): next probe in 750 ms; transitions closed->open=1 \
         open->half-open=0 half-open->closed=0 half-open->open=0; admitted=1 rejected=0 \
         successes=0 failures=1 (slow 0) abandoned=0 stale=0"
    );
}

/// `admits` answers what `try_acquire` would do, in every state, without
/// changing anything.
#[test]
fn admits_predicts_try_acquire() {
    let mut b = policy(BreakerConfig {
        consecutive_failures_max: Some(1),
        half_open_probes: 1,
        open_ms: 100,
        ..no_jitter()
    });
    let t0 = Instant::now();
    assert!(b.admits(t0));
    trip(&mut b, t0);
    let later = |ms| t0 + Duration::from_millis(ms);
    assert!(!b.admits(later(99)));
    assert_eq!(b.state(), State::Open, "asking changed nothing");
    assert!(b.try_acquire(later(99)).is_err());
    assert!(b.admits(later(100)), "the probe is due");
    let probe = b.try_acquire(later(100)).expect("the probe");
    assert!(!b.admits(later(100)), "the only probe slot is taken");
    assert!(b.try_acquire(later(100)).is_err());
    b.record(probe.ticket, OK, later(101));
    assert!(b.admits(later(101)));
}
