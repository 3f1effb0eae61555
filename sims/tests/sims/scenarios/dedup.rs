//! Exactly-once effect: at-least-once delivery plus request IDs plus the
//! server's dedup store, under the partial failure that makes retries
//! dangerous, with duplicates racing the original, and across crashes where
//! state survives. With dedup switched off, the same scenario must fail.

use std::time::Duration;

use abacus::trace::Event;
use abacus_sims::{
    catalogue::exactly_once,
    faults::{NetFault, Window},
    history::Entry,
    probes::Probe,
    scenario::Promise,
    sweep::{expect_violation, is_event, sweep},
};

use crate::snapshot::snapshot_fixed_seed;

fn dedup_hit(e: &Entry) -> bool {
    is_event(e, |ev| matches!(ev, Event::DedupHit { .. }))
}

#[test]
fn exactly_once_under_apply_then_drop() {
    let s = exactly_once("exactly_once_under_apply_then_drop");
    sweep(&s).reached("a retry answered from the dedup store", dedup_hit);
    snapshot_fixed_seed(&s);
}

/// NEGATIVE CONTROL: the same scenario with the server's dedup switched
/// off must double-apply, and the checker must report it.
#[test]
fn dedup_off_double_applies() {
    let mut s = exactly_once("dedup_off_double_applies");
    s.dedup = false;
    expect_violation(&s, "applied-at-most-once");
}

/// A retry racing the original: a slow server (up to 400 ms) and 150 ms
/// attempts, so retries arrive while the first attempt still executes; and
/// hedged requests, two copies sent at once under one ID. Neither may apply
/// twice; the late copies join the first execution.
#[test]
fn concurrent_duplicates_join_the_first_execution() {
    let mut s = exactly_once("concurrent_duplicates_join_the_first_execution");
    s.plan.drop_rate = 0.0;
    s.plan.delay_ms = (0, 400);
    s.attempt_timeout = Duration::from_millis(150);
    s.retry.throttle = None;
    s.retry.attempts_max = 6;
    s.hedge = true;
    // A duplicate arriving while the first was in flight joins it; when
    // the first gives up before applying, the duplicate takes it over.
    s.probes = vec![Probe::DuplicateJoined, Probe::ClaimTakenOver];
    sweep(&s);
    snapshot_fixed_seed(&s);
}

/// Crash and restart with durable state (modelled: the state outlives the
/// host): records survive with the registers, so a retry that lands after
/// the restart is still recognised.
#[test]
fn exactly_once_across_crash_with_durable_state() {
    let mut s = exactly_once("exactly_once_across_crash_with_durable_state");
    s.plan.drop_rate = 0.2;
    s.plan.windows = vec![Window::all(NetFault::Crash, 200, 600)];
    s.deadline = Duration::from_secs(4);
    s.attempt_timeout = Duration::from_millis(300);
    s.retry.attempts_max = 8;
    s.retry.throttle = None;
    sweep(&s).reached("a retry answered from the dedup store", dedup_hit);
}

/// In-memory state: the crash loses the dedup records with the registers
/// (documented: "a retry after restart applies again"), and the checker
/// follows the reset rather than flagging it. So this world promises only
/// at-least-once across the crash: a request applied just before it, whose
/// answer the crash lost, is applied again by its retry — and the sweep must
/// see that happen, or the documented loss would be untested.
#[test]
fn in_memory_state_is_lost_on_crash_and_the_checker_knows() {
    let mut s = exactly_once("in_memory_state_is_lost_on_crash_and_the_checker_knows");
    s.server_state = abacus_sims::ServerState::Lost;
    s.promise = Promise::AtLeastOnce;
    s.plan.drop_rate = 0.0;
    s.plan.windows = vec![Window::all(NetFault::Crash, 200, 600)];
    s.deadline = Duration::from_secs(4);
    s.retry.throttle = None;
    sweep(&s).reached_by(
        "a request ID applied again after the crash lost its record",
        |run| {
            let mut seen = std::collections::BTreeSet::new();
            run.records.iter().any(|r| match &r.entry {
                Entry::Event(Event::Applied { request_id, .. }) if !request_id.is_empty() => {
                    !seen.insert(request_id.clone())
                }
                _ => false,
            })
        },
    );
}
