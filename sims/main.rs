//! Deterministic simulation of abacus: the real tonic server and the real
//! resilient client run on turmoil's simulated network, with faults injected
//! from a seed; every run's history is checked against invariants, and fixed
//! seeds' timelines are snapshot-tested in `snapshots/`.
//!
//! Seeds: `SIM_SEED=S` runs exactly seed S; `SIM_SEEDS=N` sweeps seeds
//! `0..N` (default [`DEFAULT_SEEDS`]). Every failure prints the seed, the
//! violated invariant, the trace's tail and the one-line replay command.
//!
//! Scenarios (one `#[test]` each):
//! - `happy_path`: no faults; every call succeeds, registers add up.
//! - `plain_tonic_under_latency_and_link_failures`: no retries at all, to
//!   record what bare tonic does when links break.
//! - `at_least_once_without_dedup_double_applies`: NEGATIVE CONTROL — the
//!   apply-then-drop fault plus blind retries must double-apply, and the
//!   checker must catch it.
//! - `at_most_once_never_double_applies`: the same fault, at-most-once: no
//!   duplicate, unknown outcomes reported as such.
//! - `pure_calls_survive_partition_and_heal`, `pure_calls_survive_crash_and_restart`.
//! - `pure_calls_survive_hold_and_release`.
//! - `at_least_once_applies_every_acknowledged_call`: duplicates allowed, losses not.
//! - `retry_budget_bounds_attempts_in_an_outage`.
//! - `same_seed_same_trace`: determinism self-check.

#![allow(unreachable_pub)] // a test binary: `pub` marks what scenarios may use.

mod checker;
mod harness;
mod history;
mod net;

use std::time::Duration;

use abacus::{client::Delivery, server::FaultConfig, trace::Event};
use checker::Violation;
use harness::{NetFault, Promise, Run, Scenario, Window};
use history::{Entry, render};

/// Seeds swept by default: enough to reach the interesting paths, few
/// enough to keep `cargo test` quick in debug builds.
const DEFAULT_SEEDS: u64 = 32;

/// The seeds to run: `SIM_SEED` alone, or `0..SIM_SEEDS`.
fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![s];
    }
    let n = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    (0..n).collect()
}

fn replay_command(test: &str, seed: u64) -> String {
    format!("SIM_SEED={seed} cargo test --test sims {test} -- --exact --nocapture")
}

/// A failure report a developer can act on without reading the harness.
fn report(test: &str, run: &Run, violations: &[Violation]) -> String {
    let trace = render(&run.records);
    let lines: Vec<&str> = trace.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    let mut out = format!(
        "scenario {test}, seed {}: {} violation(s)\n",
        run.seed,
        violations.len()
    );
    for v in violations.iter().take(10) {
        out += &format!("  [{}] {}\n", v.invariant, v.detail);
    }
    out += &format!(
        "trace tail:\n{tail}\nreplay: {}\n",
        replay_command(test, run.seed)
    );
    out
}

/// Runs the scenario over the sweep's seeds; panics on the first seed that
/// violates an invariant. Returns every run for "was it reached" checks.
fn sweep(scenario: &Scenario) -> Vec<Run> {
    let mut runs = Vec::new();
    let single = std::env::var("SIM_SEED").is_ok();
    for seed in seeds() {
        let run = harness::run(scenario, seed);
        if single {
            // Replaying one seed: show the whole timeline (with --nocapture).
            eprintln!("{} seed {seed}:\n{}", scenario.name, render(&run.records));
        }
        let violations = checker::check(scenario, &run);
        if !violations.is_empty() {
            panic!("{}", report(scenario.name, &run, &violations));
        }
        runs.push(run);
    }
    runs
}

/// Negative control: the sweep must find a seed that violates `invariant`.
fn expect_violation(scenario: &Scenario, invariant: &str) -> (Run, Vec<Violation>) {
    for seed in seeds() {
        let run = harness::run(scenario, seed);
        let violations = checker::check(scenario, &run);
        if violations.iter().any(|v| v.invariant == invariant) {
            eprintln!(
                "negative control caught as expected:\n{}",
                report(scenario.name, &run, &violations)
            );
            return (run, violations);
        }
    }
    panic!(
        "negative control {}: no seed in {:?} violated {invariant}; the checker cannot see this bug",
        scenario.name,
        seeds()
    );
}

fn snapshot(name: &str, run: &Run) {
    insta::with_settings!({
        snapshot_path => "../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
        description => format!("seed {}; replay: {}", run.seed, replay_command(name, run.seed)),
    }, {
        insta::assert_snapshot!(name, render(&run.records));
    });
}

/// Seed used for snapshots, unless `SIM_SEED` overrides it (then the
/// snapshot is skipped: it belongs to the fixed seed).
const SNAPSHOT_SEED: u64 = 7;

fn snapshot_fixed_seed(scenario: &Scenario) {
    if std::env::var("SIM_SEED").is_ok() {
        return;
    }
    let run = harness::run(scenario, SNAPSHOT_SEED);
    snapshot(scenario.name, &run);
}

fn count(runs: &[Run], pred: impl Fn(&Entry) -> bool) -> usize {
    runs.iter()
        .flat_map(|r| r.records.iter())
        .filter(|r| pred(&r.entry))
        .count()
}

fn is_event(e: &Entry, f: impl Fn(&Event) -> bool) -> bool {
    matches!(e, Entry::Event(ev) if f(ev))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn happy() -> Scenario {
    let mut s = Scenario::new("happy_path");
    s.calls_per_client = 12;
    s
}

#[test]
fn happy_path() {
    let s = happy();
    let runs = sweep(&s);
    for run in &runs {
        assert!(
            run.accumulates.iter().all(|a| a.result.is_ok()),
            "seed {}: every call must succeed without faults",
            run.seed
        );
        let expected: f64 = run.accumulates.iter().map(|a| a.delta).sum();
        let last = run.records.iter().rev().find_map(|r| match &r.entry {
            Entry::Event(Event::Applied { value, .. }) => Some(*value),
            _ => None,
        });
        assert_eq!(
            last.unwrap_or(0.0),
            expected,
            "seed {}: final register",
            run.seed
        );
    }
    assert_eq!(
        count(&runs, |e| is_event(e, |ev| matches!(
            ev,
            Event::Backoff { .. }
        ))),
        0
    );
    snapshot_fixed_seed(&s);
}

fn plain_tonic() -> Scenario {
    let mut s = Scenario::new("plain_tonic_under_latency_and_link_failures");
    s.retry.attempts_max = 1;
    s.mode = Delivery::AtLeastOnce;
    s.latency = (ms(1), ms(80));
    s.link_fail_rate = 0.02;
    s
}

#[test]
fn plain_tonic_under_latency_and_link_failures() {
    let s = plain_tonic();
    let runs = sweep(&s);
    // Without retries, link failures surface as failed calls: the sweep must
    // actually have exercised that path.
    let failed = count(&runs, |e| {
        is_event(
            e,
            |ev| matches!(ev, Event::CallFinished { result, .. } if result.starts_with("err")),
        )
    });
    assert!(
        failed > 0,
        "no call failed: the fault injection did nothing"
    );
    assert_eq!(
        count(&runs, |e| is_event(e, |ev| matches!(
            ev,
            Event::Backoff { .. }
        ))),
        0
    );
    snapshot_fixed_seed(&s);
}

fn apply_then_drop(name: &'static str, mode: Delivery) -> Scenario {
    let mut s = Scenario::new(name);
    s.mode = mode;
    s.accumulate_share = 1.0;
    s.server_faults = FaultConfig {
        drop_after_apply_rate: 0.3,
        ..FaultConfig::default()
    };
    s
}

#[test]
fn at_least_once_without_dedup_double_applies() {
    let s = apply_then_drop(
        "at_least_once_without_dedup_double_applies",
        Delivery::AtLeastOnce,
    );
    let (run, violations) = expect_violation(&s, "applied-at-most-once");
    let v = violations
        .iter()
        .find(|v| v.invariant == "applied-at-most-once")
        .unwrap();
    let times: u32 = v
        .detail
        .rsplit("applied ")
        .next()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        times >= 2,
        "a double apply must be reported with its count: {v:?}"
    );
    // The report names the seed and a replay command that reproduces it.
    let text = report(s.name, &run, &violations);
    assert!(text.contains(&format!("SIM_SEED={} cargo test --test sims", run.seed)));
    let again = harness::run(&s, run.seed);
    assert_eq!(
        render(&again.records),
        render(&run.records),
        "replay must be identical"
    );
}

#[test]
fn at_least_once_applies_every_acknowledged_call() {
    let mut s = apply_then_drop(
        "at_least_once_applies_every_acknowledged_call",
        Delivery::AtLeastOnce,
    );
    // Held to its own promise: duplicates allowed, losses not.
    s.promise = Promise::AtLeastOnce;
    let runs = sweep(&s);
    let acked = runs
        .iter()
        .flat_map(|r| &r.accumulates)
        .filter(|a| a.result.is_ok())
        .count();
    assert!(acked > 0, "no Accumulate ever succeeded");
}

#[test]
fn at_most_once_never_double_applies() {
    let s = apply_then_drop("at_most_once_never_double_applies", Delivery::AtMostOnce);
    let runs = sweep(&s);
    let unknown = runs
        .iter()
        .flat_map(|r| &r.accumulates)
        .filter(|a| matches!(a.result, Err((_, abacus::trace::Outcome::Unknown))))
        .count();
    assert!(
        unknown > 0,
        "the apply-then-drop fault never produced an unknown outcome"
    );
    snapshot_fixed_seed(&s);
}

fn pure(name: &'static str, windows: Vec<Window>) -> Scenario {
    let mut s = Scenario::new(name);
    s.accumulate_share = 0.0;
    s.deadline = Duration::from_secs(5);
    s.attempt_timeout = ms(400);
    s.retry.attempts_max = 8;
    // A bucket big enough to ride out one partition: a dead connection is
    // only noticed by HTTP/2 keepalive (1 s + 1 s), and every attempt on it
    // costs a token. `retry_budget_bounds_attempts_in_an_outage` shows the
    // default bucket running dry instead.
    s.retry.throttle = Some(abacus::client::retry::ThrottleConfig {
        max_tokens: 40.0,
        token_ratio: 0.5,
    });
    s.windows = windows;
    s
}

#[test]
fn pure_calls_survive_partition_and_heal() {
    let s = pure(
        "pure_calls_survive_partition_and_heal",
        vec![Window {
            fault: NetFault::Partition,
            from: ms(150),
            until: ms(1500),
        }],
    );
    let runs = sweep(&s);
    for run in &runs {
        let failed = run.records.iter().filter(|r| {
            matches!(&r.entry, Entry::Event(Event::CallFinished { result, .. }) if result.starts_with("err"))
        });
        assert_eq!(
            failed.count(),
            0,
            "seed {}: a call failed despite the partition healing within its deadline",
            run.seed
        );
    }
    assert!(
        count(&runs, |e| is_event(e, |ev| matches!(
            ev,
            Event::Backoff { .. }
        ))) > 0
    );
    snapshot_fixed_seed(&s);
}

#[test]
fn pure_calls_survive_crash_and_restart() {
    let s = pure(
        "pure_calls_survive_crash_and_restart",
        vec![Window {
            fault: NetFault::Crash,
            from: ms(150),
            until: ms(1000),
        }],
    );
    let runs = sweep(&s);
    for run in &runs {
        let failed = run.records.iter().filter(|r| {
            matches!(&r.entry, Entry::Event(Event::CallFinished { result, .. }) if result.starts_with("err"))
        });
        assert_eq!(
            failed.count(),
            0,
            "seed {}: a call failed despite the restart within its deadline",
            run.seed
        );
    }
    snapshot_fixed_seed(&s);
}

#[test]
fn pure_calls_survive_hold_and_release() {
    let s = pure(
        "pure_calls_survive_hold_and_release",
        vec![Window {
            fault: NetFault::Hold,
            from: ms(150),
            until: ms(900),
        }],
    );
    let runs = sweep(&s);
    // Held messages are delivered on release, so the connection survives:
    // every call succeeds, some only after a retry.
    for run in &runs {
        let failed = run.records.iter().filter(|r| {
            matches!(&r.entry, Entry::Event(Event::CallFinished { result, .. }) if result.starts_with("err"))
        });
        assert_eq!(failed.count(), 0, "seed {}", run.seed);
    }
    assert!(
        count(&runs, |e| is_event(e, |ev| matches!(
            ev,
            Event::Backoff { .. }
        ))) > 0
    );
}

#[test]
fn retry_budget_bounds_attempts_in_an_outage() {
    let mut s = pure(
        "retry_budget_bounds_attempts_in_an_outage",
        vec![Window {
            fault: NetFault::Partition,
            from: ms(0),
            until: Duration::from_secs(200),
        }],
    );
    s.clients = 1;
    s.calls_per_client = 10;
    s.deadline = Duration::from_secs(2);
    s.attempt_timeout = ms(200);
    s.retry.throttle = Some(Default::default());
    let throttle = s.retry.throttle.expect("default policy has a budget");
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
        let budget_stops = run.records.iter().filter(|r| matches!(&r.entry, Entry::Event(Event::GaveUp { reason, .. }) if reason.contains("budget"))).count();
        assert!(
            budget_stops > 0,
            "seed {}: the budget never stopped a retry",
            run.seed
        );
    }
    snapshot_fixed_seed(&s);
}

#[test]
fn same_seed_same_trace() {
    for s in [happy(), plain_tonic()] {
        for seed in [1, 2, 3] {
            let a = render(&harness::run(&s, seed).records);
            let b = render(&harness::run(&s, seed).records);
            assert!(!a.is_empty());
            if a != b {
                let first = a.lines().zip(b.lines()).position(|(x, y)| x != y);
                panic!("{} seed {seed}: traces diverge at line {first:?}", s.name);
            }
        }
    }
}
