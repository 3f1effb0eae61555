//! Negative controls: deliberately broken client stacks that the default
//! sweep must catch, one per checker, proving each checker can see its bug
//! (and a server whose spawned task panics, for `no-panic`).

use std::time::Duration;

use abacus::client::Delivery;
use abacus_sims::{
    Scenario,
    faults::{NetFault, Window},
    sweep::{expect_violation, report, sweep},
    world::{
        Stack,
        panicky::{self, ServerBug},
    },
};
use tonic::Code;

fn pure_under_partition(name: &'static str) -> Scenario {
    let mut s = Scenario::new(name);
    s.accumulate_share = 0.0;
    s.plan.windows = vec![Window::all(NetFault::Partition, 100, 1500)];
    s.retry.throttle = None;
    s
}

#[test]
fn control_double_retry_layer_exceeds_attempts() {
    let mut s = pure_under_partition("control_double_retry_layer_exceeds_attempts");
    s.stack = Stack::DoubleRetry;
    s.deadline = Duration::from_secs(20);
    s.attempt_timeout = Duration::from_millis(100);
    expect_violation(&s, "attempts-bounded");
}

#[test]
fn control_deadline_not_enforced_runs_past_it() {
    let mut s = pure_under_partition("control_deadline_not_enforced_runs_past_it");
    s.stack = Stack::DeadlineNotEnforced;
    s.deadline = Duration::from_millis(300);
    s.attempt_timeout = Duration::from_millis(250);
    s.retry.attempts_max = 6;
    expect_violation(&s, "within-deadline");
}

#[test]
fn control_retrying_caller_errors_is_caught() {
    let mut s = Scenario::new("control_retrying_caller_errors_is_caught");
    s.accumulate_share = 0.0;
    s.invalid_share = 0.5;
    // `RetryConfig::validate` refuses this; the scenario builds the config
    // directly, as a client with a hand-rolled policy would.
    s.retry.retryable_codes = vec![Code::Unavailable, Code::InvalidArgument];
    expect_violation(&s, "no-retry-on-non-retryable");
}

/// The same broken-looking setups with the real stack pass: the controls
/// fail because of the bug they inject, not because of the scenario.
#[test]
fn controls_pass_with_the_real_stack() {
    let mut s = pure_under_partition("controls_pass_with_the_real_stack");
    s.deadline = Duration::from_millis(300);
    s.attempt_timeout = Duration::from_millis(250);
    s.invalid_share = 0.3;
    s.mode = Delivery::ExactlyOnce;
    sweep(&s);
}

/// NEGATIVE CONTROL for `no-panic`: the server's first register read
/// panics in the task tonic spawned for its connection. tokio swallows
/// it, the client retries on a new connection and gets its answer, so
/// every other invariant holds: only the panic check fails the run, and
/// it names the panic's message and place.
#[test]
fn control_a_panic_in_a_server_task_fails_the_run() {
    let mut s = Scenario::new("control_a_panic_in_a_server_task_fails_the_run");
    s.read_share = 0.5;
    s.server_bug = Some(ServerBug::PanicOnFirstRead);
    let Some((run, violations)) = expect_violation(&s, "no-panic") else {
        return;
    };
    let panics: Vec<_> = violations
        .iter()
        .filter(|v| v.invariant == "no-panic")
        .collect();
    assert_eq!(panics.len(), 1, "{violations:?}");
    assert!(
        panics[0].detail.contains(panicky::MESSAGE)
            && panics[0].detail.contains("sims/src/world/panicky.rs:"),
        "the violation names the panic and where: {}",
        panics[0].detail
    );
    assert!(
        violations.iter().all(|v| v.invariant == "no-panic"),
        "nothing else failed, so without the check the run passed: {violations:?}"
    );
    let report = report(s.name, &run, &violations, None);
    assert!(report.contains("replay: SIM_SEED="), "{report}");
}
