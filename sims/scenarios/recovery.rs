//! Pure calls ride out partitions, holds and crashes with retries; the
//! retry budget bounds attempts in a long outage.

use std::time::Duration;

use abacus::{
    client::retry::{Stop, ThrottleConfig},
    trace::Event,
};
use tonic::Code;

use crate::{
    harness::Scenario,
    history::Entry,
    plan::{NetFault, Window},
    sweep::{count, failed_calls, is_event, snapshot_fixed_seed, sweep},
};

pub fn pure(name: &'static str, windows: Vec<Window>) -> Scenario {
    let mut s = Scenario::new(name);
    s.accumulate_share = 0.0;
    s.deadline = Duration::from_secs(5);
    s.attempt_timeout = Duration::from_millis(400);
    s.retry.attempts_max = 8;
    // A bucket big enough to ride out one partition: a dead connection is
    // only noticed by HTTP/2 keepalive (1 s + 1 s), and every attempt on it
    // costs a token. `retry_budget_bounds_attempts_in_an_outage` shows the
    // default bucket running dry instead.
    s.retry.throttle = Some(ThrottleConfig {
        max_tokens: 40.0,
        token_ratio: 0.5,
    });
    s.plan.windows = windows;
    s.liveness_calls = 3;
    s
}

fn no_call_fails(s: &Scenario) {
    let runs = sweep(s);
    for run in &runs {
        assert_eq!(
            failed_calls(run),
            0,
            "seed {}: a call failed although the fault healed within its deadline",
            run.seed
        );
    }
    assert!(
        count(&runs, |e| is_event(e, |ev| matches!(
            ev,
            Event::Backoff { .. }
        ))) > 0,
        "no retry ever happened: the fault did not bite"
    );
    snapshot_fixed_seed(s);
}

#[test]
fn pure_calls_survive_partition_and_heal() {
    no_call_fails(&pure(
        "pure_calls_survive_partition_and_heal",
        vec![Window::all(NetFault::Partition, 150, 1350)],
    ));
}

#[test]
fn pure_calls_survive_crash_and_restart() {
    no_call_fails(&pure(
        "pure_calls_survive_crash_and_restart",
        vec![Window::all(NetFault::Crash, 150, 850)],
    ));
}

#[test]
fn pure_calls_survive_hold_and_release() {
    no_call_fails(&pure(
        "pure_calls_survive_hold_and_release",
        vec![Window::all(NetFault::Hold, 150, 750)],
    ));
}

#[test]
fn latency_spikes_beyond_the_attempt_timeout_are_retried() {
    let mut s = pure(
        "latency_spikes_beyond_the_attempt_timeout_are_retried",
        vec![],
    );
    // A slow server: a third of the requests take longer than the 200 ms
    // attempt timeout (up to 300 ms); the server stops them at the deadline
    // it was sent, and the client retries.
    s.plan.delay_ms = (0, 300);
    s.attempt_timeout = Duration::from_millis(200);
    s.deadline = Duration::from_secs(3);
    s.liveness_calls = 0;
    let runs = sweep(&s);
    let timeouts = count(&runs, |e| {
        is_event(
            e,
            |ev| matches!(ev, Event::AttemptFailed { error, .. } if error.code == Code::DeadlineExceeded),
        )
    });
    let expired = count(&runs, |e| {
        is_event(e, |ev| matches!(ev, Event::ServerDeadlineExpired { .. }))
    });
    assert!(
        timeouts > 0 && expired > 0,
        "timeouts {timeouts}, server expiries {expired}"
    );
    let ok = count(&runs, |e| {
        is_event(e, |ev| {
            matches!(ev, Event::CallFinished { result: Ok(_), .. })
        })
    });
    let all = count(&runs, |e| {
        is_event(e, |ev| matches!(ev, Event::CallFinished { .. }))
    });
    assert!(
        ok * 10 >= all * 9,
        "only {ok} of {all} calls succeeded within the deadline"
    );
    snapshot_fixed_seed(&s);
}

#[test]
fn retry_budget_bounds_attempts_in_an_outage() {
    let mut s = pure(
        "retry_budget_bounds_attempts_in_an_outage",
        vec![Window::all(NetFault::Partition, 0, 200_000)],
    );
    s.clients = 1;
    s.calls_per_client = 10;
    s.deadline = Duration::from_secs(2);
    s.attempt_timeout = Duration::from_millis(200);
    s.retry.throttle = Some(ThrottleConfig::default());
    s.liveness_calls = 0;
    let throttle = ThrottleConfig::default();
    let runs = sweep(&s);
    for run in &runs {
        let attempts = run
            .records
            .iter()
            .filter(|r| matches!(&r.entry, Entry::Event(Event::AttemptStarted { .. })))
            .count();
        // Every call fails (nothing succeeds to refill the bucket): a retry
        // needs more than half the bucket, each failure costs one token, so
        // at most max/2 retries in total, plus one first attempt per call.
        let bound = s.calls_per_client + (throttle.max_tokens / 2.0) as usize;
        assert!(
            attempts <= bound,
            "seed {}: {attempts} attempts > bound {bound}",
            run.seed
        );
        let stops = run
            .records
            .iter()
            .filter(|r| {
                matches!(
                    &r.entry,
                    Entry::Event(Event::GaveUp {
                        reason: Stop::BudgetExhausted,
                        ..
                    })
                )
            })
            .count();
        assert!(
            stops > 0,
            "seed {}: the budget never stopped a retry",
            run.seed
        );
    }
    snapshot_fixed_seed(&s);
}

/// Message loss: links break at random (turmoil drops the link's messages
/// in flight; the TCP stream is wedged until HTTP/2 keepalive or a protocol
/// error replaces the connection) and retries carry the calls through.
/// Calls unlucky enough to spend their whole deadline on a wedged
/// connection fail cleanly (checked by the invariants); nearly all succeed.
#[test]
fn lost_messages_are_retried() {
    let mut s = pure("lost_messages_are_retried", vec![]);
    s.accumulate_share = 0.5;
    s.plan.link_fail_rate = 0.01;
    s.plan.latency_ms = (1, 20);
    s.liveness_calls = 0;
    let runs = sweep(&s);
    let all = count(&runs, |e| {
        is_event(e, |ev| matches!(ev, Event::CallFinished { .. }))
    });
    let failed: usize = runs.iter().map(failed_calls).sum();
    assert!(
        failed * 20 <= all,
        "{failed} of {all} calls failed despite retries"
    );
    assert!(
        count(&runs, |e| is_event(e, |ev| matches!(
            ev,
            Event::Backoff { .. }
        ))) > 0,
        "no message was ever lost"
    );
}
