//! Shrinking: when a seed fails, look for a smaller fault plan that still
//! fails the same invariant with the same seed — drop a fault, weaken a
//! rate, halve a window — until no single step keeps it failing. The
//! minimal plan is far easier to read than the one the swarm drew.

use crate::{faults::FaultPlan, scenario::Scenario, sweep::run_checked};

/// Most runs one shrink may spend: shrinking is a convenience on a failure
/// path and must not turn a red test into a slow one.
const RUNS_MAX: usize = 200;

/// Greedily shrinks `scenario.plan` for `seed`, keeping `invariant`
/// violated. Returns the smallest plan found and the runs spent.
pub fn shrink(scenario: &Scenario, seed: u64, invariant: &str) -> (FaultPlan, usize) {
    let mut best = scenario.plan.clone();
    let mut runs = 0;
    'outer: loop {
        for candidate in best.smaller() {
            if runs >= RUNS_MAX {
                break 'outer;
            }
            runs += 1;
            let mut s = scenario.clone();
            s.plan = candidate.clone();
            let (_, violations) = run_checked(&s, seed);
            if violations.iter().any(|v| v.invariant == invariant) {
                best = candidate;
                continue 'outer;
            }
        }
        break;
    }
    (best, runs)
}
