//! Pure calls ride out partitions, holds and crashes with retries; the
//! retry budget bounds attempts in a long outage.

use std::time::Duration;

use abacus::{
    client::retry::{Stop, ThrottleConfig},
    trace::Event,
};
use abacus_sims::{
    Scenario,
    catalogue::pure,
    faults::{NetFault, Window},
    history::Entry,
    sweep::{count, ensure, failed_calls, is_event, sweep},
};
use tonic::Code;

use crate::snapshot::snapshot_fixed_seed;

fn retried(e: &Entry) -> bool {
    is_event(e, |ev| matches!(ev, Event::Backoff { .. }))
}

fn finished(e: &Entry) -> bool {
    is_event(e, |ev| matches!(ev, Event::CallFinished { .. }))
}

fn no_call_fails(s: &Scenario) {
    let sweep = sweep(s);
    sweep.every("no-call-fails", |run| {
        let failed = failed_calls(run);
        ensure(failed == 0, || {
            format!("{failed} call(s) failed although the fault healed within their deadline")
        })
    });
    sweep.reached("a retry (the fault bit)", retried);
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
    let sweep = sweep(&s);
    sweep.reached("an attempt timeout", |e| {
        is_event(
            e,
            |ev| matches!(ev, Event::AttemptFailed { error, .. } if error.code == Code::DeadlineExceeded),
        )
    });
    sweep.reached("a request the server stopped at its deadline", |e| {
        is_event(e, |ev| matches!(ev, Event::ServerDeadlineExpired { .. }))
    });
    sweep.overall("nine-in-ten-succeed", |runs| {
        let ok = count(runs, |e| {
            is_event(e, |ev| {
                matches!(ev, Event::CallFinished { result: Ok(_), .. })
            })
        });
        let all = count(runs, finished);
        ensure(ok * 10 >= all * 9, || {
            format!("only {ok} of {all} calls succeeded within the deadline")
        })
    });
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
    s.retry.throttle = Some(ThrottleConfig::default().into());
    s.liveness_calls = 0;
    let throttle = ThrottleConfig::default();
    sweep(&s).every("budget-bounds-attempts", |run| {
        let runs = std::slice::from_ref(run);
        let attempts = count(runs, |e| {
            is_event(e, |ev| matches!(ev, Event::AttemptStarted { .. }))
        });
        // Every call fails (nothing succeeds to refill the bucket): a retry
        // needs more than half the bucket, each failure costs one token, so
        // at most max/2 retries in total, plus one first attempt per call.
        let bound = s.calls_per_client + (throttle.max_tokens / 2.0) as usize;
        ensure(attempts <= bound, || {
            format!("{attempts} attempts > bound {bound}")
        })?;
        let stops = count(runs, |e| {
            is_event(e, |ev| {
                matches!(
                    ev,
                    Event::GaveUp {
                        reason: Stop::BudgetExhausted,
                        ..
                    }
                )
            })
        });
        ensure(stops > 0, || "the budget never stopped a retry".into())
    });
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
    let sweep = sweep(&s);
    sweep.overall("nineteen-in-twenty-succeed", |runs| {
        let all = count(runs, finished);
        let failed: usize = runs.iter().map(failed_calls).sum();
        ensure(failed * 20 <= all, || {
            format!("{failed} of {all} calls failed despite retries")
        })
    });
    sweep.reached("a lost message, retried", retried);
}
