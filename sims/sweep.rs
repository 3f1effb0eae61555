//! Running scenarios over seeds: the sweep, failure reports with replay
//! commands, negative controls, and snapshots of fixed seeds.

use abacus::trace::Event;

use crate::{
    checker::{self, Violation},
    harness::{self, Run, Scenario},
    history::{Entry, render},
    plan::FaultPlan,
    shrink,
};

/// Seeds swept by default: enough to reach the interesting paths, few
/// enough to keep `cargo test` quick in debug builds.
pub const DEFAULT_SEEDS: u64 = 32;

/// Seed used for snapshots.
pub const SNAPSHOT_SEED: u64 = 7;

/// The seeds to run: `SIM_SEED` alone, or `0..SIM_SEEDS`.
pub fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![s];
    }
    let n = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    (0..n).collect()
}

/// `SIM_PLAN` replaces a scenario's fault plan (to replay a shrunk plan).
pub fn plan_override() -> Option<FaultPlan> {
    let text = std::env::var("SIM_PLAN").ok()?;
    match text.parse() {
        Ok(p) => Some(p),
        Err(e) => panic!("SIM_PLAN={text:?} is not a fault plan: {e}"),
    }
}

/// The one-line command that replays `test` with `seed` (and `plan`, when it
/// is not the scenario's own).
///
/// The test is named by its full path, which libtest gives the thread it
/// runs a test on (`scenarios::swarm::swarm_exactly_once`), so `--exact`
/// selects it alone; outside a test thread the scenario's name serves as a
/// filter.
pub fn replay_command(test: &str, seed: u64, plan: Option<&FaultPlan>) -> String {
    let plan = plan.map(|p| format!("SIM_PLAN='{p}' ")).unwrap_or_default();
    let thread = std::thread::current();
    let filter = match thread.name() {
        Some(path) if path.contains("::") => format!("{path} -- --exact"),
        _ => format!("{test} --"),
    };
    format!("{plan}SIM_SEED={seed} cargo test --test sims {filter} --nocapture")
}

/// A failure report a developer can act on without reading the harness.
pub fn report(test: &str, run: &Run, violations: &[Violation], plan: Option<&FaultPlan>) -> String {
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
        replay_command(test, run.seed, plan)
    );
    out
}

/// Runs one seed and checks it.
pub fn run_checked(scenario: &Scenario, seed: u64) -> (Run, Vec<Violation>) {
    let run = harness::run(scenario, seed);
    let violations = checker::check(scenario, &run);
    (run, violations)
}

/// Applies `SIM_PLAN` if set.
fn with_override(scenario: &Scenario) -> Scenario {
    let mut s = scenario.clone();
    if let Some(p) = plan_override() {
        s.plan = p;
    }
    s
}

/// Runs the scenario over the sweep's seeds; panics on the first seed that
/// violates an invariant. Returns every run, for "was it reached" checks.
pub fn sweep(scenario: &Scenario) -> Vec<Run> {
    sweep_with(|_| scenario.clone())
}

/// Like [`sweep`], for scenarios that depend on the seed (swarm plans).
pub fn sweep_with(make: impl Fn(u64) -> Scenario) -> Vec<Run> {
    let single = std::env::var("SIM_SEED").is_ok();
    let mut runs = Vec::new();
    for seed in seeds() {
        let scenario = &with_override(&make(seed));
        let (run, violations) = run_checked(scenario, seed);
        if single {
            // Replaying one seed: show the whole timeline (with --nocapture).
            eprintln!("{} seed {seed}:\n{}", scenario.name, render(&run.records));
        }
        if !violations.is_empty() {
            let mut text = report(scenario.name, &run, &violations, plan_override().as_ref());
            if !single {
                let invariant = violations[0].invariant;
                let (plan, steps) = shrink::shrink(scenario, seed, invariant);
                text += &format!(
                    "shrunk in {steps} runs to the smallest plan that still violates {invariant}:\n  {plan}\nreplay: {}\n",
                    replay_command(scenario.name, seed, Some(&plan))
                );
            }
            panic!("{text}");
        }
        runs.push(run);
    }
    runs
}

/// Negative control: the sweep must find a seed that violates `invariant`.
/// Returns the first such run and its violations.
pub fn expect_violation(scenario: &Scenario, invariant: &str) -> (Run, Vec<Violation>) {
    expect_violation_with(|_| scenario.clone(), invariant)
}

/// Like [`expect_violation`], for scenarios that depend on the seed.
pub fn expect_violation_with(
    make: impl Fn(u64) -> Scenario,
    invariant: &str,
) -> (Run, Vec<Violation>) {
    let name = make(0).name;
    let single = std::env::var("SIM_SEED").is_ok();
    for seed in seeds() {
        let scenario = &with_override(&make(seed));
        let (run, violations) = run_checked(scenario, seed);
        if single {
            eprintln!("{} seed {seed}:\n{}", scenario.name, render(&run.records));
        }
        if violations.iter().any(|v| v.invariant == invariant) {
            eprintln!(
                "negative control caught as expected:\n{}",
                report(scenario.name, &run, &violations, None)
            );
            return (run, violations);
        }
    }
    panic!(
        "negative control {name}: no seed in {:?} violated {invariant}; the checker cannot see this bug",
        seeds()
    );
}

/// Snapshots `scenario`'s timeline at [`SNAPSHOT_SEED`] into `snapshots/`.
/// Skipped when `SIM_SEED`/`SIM_PLAN` select something else.
pub fn snapshot_fixed_seed(scenario: &Scenario) {
    if std::env::var("SIM_SEED").is_ok() || std::env::var("SIM_PLAN").is_ok() {
        return;
    }
    let run = harness::run(scenario, SNAPSHOT_SEED);
    insta::with_settings!({
        snapshot_path => "../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
        description => format!(
            "seed {}; replay: {}",
            run.seed,
            replay_command(scenario.name, run.seed, None)
        ),
    }, {
        insta::assert_snapshot!(scenario.name, render(&run.records));
    });
}

/// Records across `runs` matching `pred`.
pub fn count(runs: &[Run], pred: impl Fn(&Entry) -> bool) -> usize {
    runs.iter()
        .flat_map(|r| r.records.iter())
        .filter(|r| pred(&r.entry))
        .count()
}

/// True when `e` is an event matching `f`.
pub fn is_event(e: &Entry, f: impl Fn(&Event) -> bool) -> bool {
    matches!(e, Entry::Event(ev) if f(ev))
}

/// Calls that finished with an error, in one run.
pub fn failed_calls(run: &Run) -> usize {
    count(std::slice::from_ref(run), |e| {
        is_event(e, |ev| {
            matches!(ev, Event::CallFinished { result: Err(_), .. })
        })
    })
}
