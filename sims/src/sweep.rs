//! Running a scenario over seeds: the sweep (`0..SIM_SEEDS`) or the replay
//! of one seed (`SIM_SEED`), failure reports with their replay command, the
//! three kinds of assertion a scenario test makes, and negative controls.
//!
//! What a test asserts splits by what one seed can show:
//! - the **invariants** ([`crate::check`]) and a scenario's own
//!   [`Sweep::every`] properties hold on every seed, so they are checked
//!   on a replay too, and a failure names the seed and its replay command;
//! - **reach** assertions ([`Sweep::reached`], Antithesis' "sometimes":
//!   the sweep exercised a retry, a breaker opening, a crash) and
//!   **statistics** over all runs ([`Sweep::overall`]) are properties of a
//!   sweep, not of a seed: a replay skips them, so replaying a seed the
//!   sweep passed passes, and replaying a failing seed fails only with its
//!   violation.

use std::{fmt::Write as _, ops::Range};

use abacus::trace::Event;

use crate::{
    check::{self, Violation},
    faults::FaultPlan,
    history::{Entry, render},
    parallel,
    probes::{Coverage, Probe},
    scenario::Scenario,
    shrink,
    world::{self, Run},
};

/// Seeds swept by default: enough to reach the interesting paths, few
/// enough to keep `cargo test` quick in debug builds.
pub const DEFAULT_SEEDS: u64 = 32;

/// Which seeds a test runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeds {
    /// A sweep over `0..n`: every assertion applies.
    Sweep(Range<u64>),
    /// One seed replayed: invariants and per-seed properties only.
    Replay(u64),
}

impl Seeds {
    /// From the environment: `SIM_SEED=S` replays S; otherwise a sweep of
    /// `0..SIM_SEEDS` (default [`DEFAULT_SEEDS`]).
    ///
    /// # Panics
    /// When either variable is set but is not a whole number: a test asked
    /// for seeds must not quietly run others.
    pub fn from_env() -> Self {
        let number = |var: &str| {
            let text = std::env::var(var).ok()?;
            match text.trim().parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => panic!("{var}={text:?} is not a whole number"),
            }
        };
        match number("SIM_SEED") {
            Some(seed) => Self::Replay(seed),
            None => Self::Sweep(0..number("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)),
        }
    }

    /// True for a one-seed replay.
    pub fn is_replay(&self) -> bool {
        matches!(self, Self::Replay(_))
    }

    /// The seeds, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + use<> {
        match self {
            Self::Sweep(r) => r.clone(),
            Self::Replay(s) => *s..s + 1,
        }
    }
}

/// `SIM_PLAN` replaces a scenario's fault plan (to replay a shrunk plan).
///
/// # Panics
/// When `SIM_PLAN` is set but is not a plan.
pub fn plan_override() -> Option<FaultPlan> {
    let text = std::env::var("SIM_PLAN").ok()?;
    match text.parse() {
        Ok(p) => Some(p),
        Err(e) => panic!("SIM_PLAN={text:?} is not a fault plan: {e}"),
    }
}

/// The one-line command that replays the test `path` (its full path in the
/// `sims` test binary, e.g. `scenarios::swarm::swarm_exactly_once`) at
/// `seed`, with `plan` when it is not the scenario's own. README.md gives
/// the same form.
///
/// ```
/// use abacus_sims::sweep::replay_command_for;
/// assert_eq!(
///     replay_command_for("scenarios::swarm::swarm_exactly_once", 17, None),
///     "SIM_SEED=17 cargo test --test sims scenarios::swarm::swarm_exactly_once -- --exact --nocapture"
/// );
/// ```
pub fn replay_command_for(path: &str, seed: u64, plan: Option<&FaultPlan>) -> String {
    let plan = plan.map(|p| format!("SIM_PLAN='{p}' ")).unwrap_or_default();
    format!("{plan}SIM_SEED={seed} cargo test --test sims {path} -- --exact --nocapture")
}

/// The replay command of the running test: libtest names the thread a test
/// runs on by the test's full path, so `--exact` selects it alone. Outside
/// a test thread (the `sim` example), `name` serves as a filter.
pub fn replay_command(name: &str, seed: u64, plan: Option<&FaultPlan>) -> String {
    match std::thread::current().name() {
        Some(path) if path.contains("::") => replay_command_for(path, seed, plan),
        _ => {
            let plan = plan.map(|p| format!("SIM_PLAN='{p}' ")).unwrap_or_default();
            format!("{plan}SIM_SEED={seed} cargo test --test sims {name} -- --nocapture")
        }
    }
}

/// A failure report a developer can act on without reading the harness:
/// the scenario, the seed, what broke, the trace's tail and the replay
/// command.
pub fn report(name: &str, run: &Run, violations: &[Violation], plan: Option<&FaultPlan>) -> String {
    let trace = render(&run.records);
    let lines: Vec<&str> = trace.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    let mut out = format!(
        "scenario {name}, seed {}: {} violation(s)\n",
        run.seed,
        violations.len()
    );
    for v in violations.iter().take(10) {
        let _ = writeln!(out, "  [{}] {}", v.invariant, v.detail);
    }
    let _ = write!(
        out,
        "trace tail:\n{tail}\nreplay: {}\n",
        replay_command(name, run.seed, plan)
    );
    out
}

/// Runs one seed and checks it.
pub fn run_checked(scenario: &Scenario, seed: u64) -> (Run, Vec<Violation>) {
    let run = world::run(scenario, seed);
    let violations = check::check(scenario, &run);
    (run, violations)
}

/// Applies `SIM_PLAN` if set.
fn with_override(mut scenario: Scenario, plan: Option<&FaultPlan>) -> Scenario {
    if let Some(p) = plan {
        scenario.plan = p.clone();
    }
    scenario
}

/// The runs of one scenario over the seeds of the environment, every
/// invariant checked on each.
#[derive(Debug)]
pub struct Sweep {
    name: &'static str,
    seeds: Seeds,
    plan: Option<FaultPlan>,
    runs: Vec<Run>,
    coverage: Coverage,
}

/// Runs `scenario` over [`Seeds::from_env`]. Panics on the first seed that
/// violates an invariant, with its report; in a sweep, the report ends with
/// the smallest fault plan that still fails (shrinking).
pub fn sweep(scenario: &Scenario) -> Sweep {
    sweep_with(|_| scenario.clone())
}

/// Like [`sweep`], for scenarios that depend on the seed (swarm plans).
pub fn sweep_with(make: impl Fn(u64) -> Scenario + Sync) -> Sweep {
    sweep_seeds(Seeds::from_env(), make)
}

/// Like [`sweep_with`], over `seeds`. Seeds run on [`parallel::threads`]
/// threads; what is reported is what a sequential sweep would report (see
/// [`parallel`]).
pub fn sweep_seeds(seeds: Seeds, make: impl Fn(u64) -> Scenario + Sync) -> Sweep {
    let plan = plan_override();
    let list: Vec<u64> = seeds.iter().collect();
    let first = make(list.first().copied().unwrap_or_default());
    let (name, required) = (first.name, first.probes);
    let results = parallel::in_seed_order(
        &list,
        parallel::threads(),
        |seed| run_checked(&with_override(make(seed), plan.as_ref()), seed),
        |(_, violations)| !violations.is_empty(),
    );
    let mut runs = Vec::with_capacity(results.len());
    for (seed, (run, violations)) in results {
        if seeds.is_replay() {
            // Replaying one seed: show the whole timeline (with --nocapture).
            eprintln!("{name} seed {seed}:\n{}", render(&run.records));
        }
        if !violations.is_empty() {
            let mut text = report(name, &run, &violations, plan.as_ref());
            if !seeds.is_replay() {
                let scenario = with_override(make(seed), plan.as_ref());
                let invariant = violations[0].invariant;
                let (small, steps) = shrink::shrink(&scenario, seed, invariant);
                let _ = write!(
                    text,
                    "shrunk in {steps} runs to the smallest plan that still violates {invariant}:\n  {small}\nreplay: {}\n",
                    replay_command(name, seed, Some(&small))
                );
            }
            panic!("{text}");
        }
        runs.push(run);
    }
    let coverage = Coverage::of_runs(&runs);
    eprintln!("{name}: probes reached over seeds {seeds:?}:\n{coverage}");
    let sweep = Sweep {
        name,
        seeds,
        plan,
        runs,
        coverage,
    };
    sweep.require(&required);
    sweep
}

impl Sweep {
    /// Every run, in seed order.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// True when one seed was replayed rather than swept.
    pub fn is_replay(&self) -> bool {
        self.seeds.is_replay()
    }

    /// A property of the scenario that must hold on every seed, checked on
    /// sweeps and replays alike: `holds` returns why it does not. A failure
    /// is reported like a violated invariant named `property`, with the
    /// seed's replay command.
    pub fn every(&self, property: &'static str, holds: impl Fn(&Run) -> Result<(), String>) {
        for run in &self.runs {
            if let Err(detail) = holds(run) {
                let violation = Violation::new(property, detail);
                panic!(
                    "{}",
                    report(self.name, run, &[violation], self.plan.as_ref())
                );
            }
        }
    }

    /// A reach ("sometimes") assertion: some record of some run matches
    /// `pred`, so the sweep exercised `what`. Skipped on a replay: one seed
    /// need not reach every path.
    pub fn reached(&self, what: &str, pred: impl Fn(&Entry) -> bool) {
        self.reached_by(what, |run| run.records.iter().any(|r| pred(&r.entry)));
    }

    /// Like [`Sweep::reached`], for what a run shows other than in its
    /// records (e.g. the results its workload saw): some run matches
    /// `pred`.
    pub fn reached_by(&self, what: &str, pred: impl Fn(&Run) -> bool) {
        self.assert_reached(what, || self.runs.iter().any(pred));
    }

    /// Reach assertions for named probes (see [`crate::probes`]): each of
    /// `probes` was reached by some run. Skipped on a replay. A sweep
    /// checks its scenario's own [`Scenario::probes`] by itself.
    pub fn require(&self, probes: &[Probe]) {
        for p in probes {
            self.assert_reached(&format!("the probe {p}"), || {
                self.coverage.runs_reaching(*p) > 0
            });
        }
    }

    /// How often each probe was reached over the sweep's runs.
    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    fn assert_reached(&self, what: &str, reached: impl FnOnce() -> bool) {
        if !self.is_replay() {
            assert!(
                reached(),
                "{}: no seed in {:?} reached {what}; probes reached:\n{}",
                self.name,
                self.seeds,
                self.coverage
            );
        }
    }

    /// A property of the sweep as a whole (a share of successes over every
    /// run): `holds` returns why it does not. Skipped on a replay, where one
    /// seed is not a sample.
    pub fn overall(&self, property: &str, holds: impl FnOnce(&[Run]) -> Result<(), String>) {
        if !self.is_replay()
            && let Err(detail) = holds(&self.runs)
        {
            panic!(
                "{}: [{property}] over seeds {:?}: {detail}",
                self.name, self.seeds
            );
        }
    }
}

/// `Err(why())` unless `cond`: the body of a [`Sweep::every`] or
/// [`Sweep::overall`] property.
pub fn ensure(cond: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(why()) }
}

/// Negative control: a seed of the sweep must violate `invariant`.
/// Returns the first such run and its violations.
///
/// # Panics
/// In a sweep, when no seed violates it (the checker cannot see the bug
/// the control injects). On a replay, a seed that does not violate it
/// returns `None`: the control's claim is about the sweep.
pub fn expect_violation(scenario: &Scenario, invariant: &str) -> Option<(Run, Vec<Violation>)> {
    expect_violation_with(|_| scenario.clone(), invariant)
}

/// Like [`expect_violation`], for scenarios that depend on the seed.
pub fn expect_violation_with(
    make: impl Fn(u64) -> Scenario + Sync,
    invariant: &str,
) -> Option<(Run, Vec<Violation>)> {
    expect_violation_seeds(Seeds::from_env(), make, invariant)
}

/// Like [`expect_violation_with`], over `seeds` (on several threads, the
/// first violating seed in seed order reported, as in [`sweep_seeds`]).
pub fn expect_violation_seeds(
    seeds: Seeds,
    make: impl Fn(u64) -> Scenario + Sync,
    invariant: &str,
) -> Option<(Run, Vec<Violation>)> {
    let name = make(0).name;
    let plan = plan_override();
    let list: Vec<u64> = seeds.iter().collect();
    let caught = |violations: &[Violation]| violations.iter().any(|v| v.invariant == invariant);
    let results = parallel::in_seed_order(
        &list,
        parallel::threads(),
        |seed| run_checked(&with_override(make(seed), plan.as_ref()), seed),
        |(_, violations)| caught(violations),
    );
    for (seed, (run, violations)) in results {
        if seeds.is_replay() {
            eprintln!("{name} seed {seed}:\n{}", render(&run.records));
        }
        if caught(&violations) {
            eprintln!(
                "negative control caught as expected:\n{}",
                report(name, &run, &violations, plan.as_ref())
            );
            return Some((run, violations));
        }
    }
    if seeds.is_replay() {
        eprintln!(
            "negative control {name}: this seed does not violate {invariant}; the sweep finds seeds that do"
        );
        return None;
    }
    panic!(
        "negative control {name}: no seed in {seeds:?} violated {invariant}; the checker cannot see this bug"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_one_seed_and_a_sweep_a_range() {
        assert_eq!(Seeds::Replay(17).iter().collect::<Vec<_>>(), [17]);
        assert_eq!(Seeds::Sweep(0..3).iter().collect::<Vec<_>>(), [0, 1, 2]);
        assert!(Seeds::Replay(0).is_replay() && !Seeds::Sweep(0..1).is_replay());
    }

    #[test]
    fn replay_commands_carry_the_plan() {
        let plan: FaultPlan = "drop=0.3".parse().expect("a plan");
        let cmd = replay_command_for("scenarios::x::y", 4, Some(&plan));
        assert!(
            cmd.starts_with(&format!(
                "SIM_PLAN='{plan}' SIM_SEED=4 cargo test --test sims scenarios::x::y -- --exact"
            )),
            "{cmd}"
        );
    }
}
