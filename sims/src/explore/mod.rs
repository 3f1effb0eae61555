//! Coverage-guided fault search: keep the fault plans that reach probes
//! (or probe counts) no run had reached before, mutate them, and run the
//! mutants — AFL's loop, with the named probes ([`crate::probes`]) as the
//! coverage signal and fault plans as the inputs — against plain random
//! swarm, on the same budget of runs.
//!
//! Everything the search chooses (which plan to mutate, how, when to draw
//! a fresh swarm plan instead) comes from one RNG seeded by the explorer's
//! seed, and runs go in batches whose results are folded in run order, so
//! a search replays exactly, on any number of threads.
//!
//! # Layout
//! - [`mutate`]: the edits (the shrinker's, the generator's draws, shifts,
//!   splices).
//! - [`corpus`]: the plans kept in the repository, `sims/corpus/<scenario>/`.
//! - [`measure`]: random and guided side by side over several trials,
//!   with the spread of every figure.

pub mod corpus;
pub mod measure;
pub mod mutate;

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{
    parallel,
    probes::{Coverage, Probe},
    scenario::Scenario,
    seed::derive_seed,
    sweep::run_checked,
};
pub use corpus::Seed;
pub use mutate::World;

/// Runs a guided search starts together, then folds in order: enough to
/// keep every core busy, few enough that what it learns soon steers it.
const BATCH: usize = 32;

/// Share of guided runs that draw a fresh swarm plan instead of mutating
/// a kept one: the search keeps exploring what the corpus has not seen.
const FRESH_SHARE: f64 = 0.25;

/// Share of mutants that run with their parent's seed rather than a
/// fresh one.
const SAME_SEED_SHARE: f64 = 0.5;

/// How a search picks each run's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain swarm: run `i` is seed `i` with the plan the seed draws.
    Random,
    /// Coverage-guided, from the explorer's seed.
    Guided {
        /// Seeds every choice of the search.
        seed: u64,
    },
}

/// A piece of coverage: a probe reached about so many times in one run
/// (AFL's hit-count buckets: 1, 2, 3–4, 5–8, 9–16, more), or an invariant
/// violated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    /// A probe and the bucket of its hits.
    Probe(Probe, u8),
    /// An invariant violated.
    Violated(&'static str),
}

fn bucket(hits: u64) -> u8 {
    match hits {
        0 => 0,
        1 => 1,
        2 => 2,
        3..=4 => 3,
        5..=8 => 4,
        9..=16 => 5,
        _ => 6,
    }
}

/// A plan the guided search kept, with what its run showed.
#[derive(Debug, Clone)]
pub struct Kept {
    /// The run's seed and plan.
    pub seed: Seed,
    /// Its features.
    pub features: BTreeSet<Feature>,
}

impl Kept {
    /// The probes its run reached, for a corpus file's note.
    pub fn note(&self) -> String {
        let probes: BTreeSet<Probe> = self
            .features
            .iter()
            .filter_map(|f| match f {
                Feature::Probe(p, _) => Some(*p),
                Feature::Violated(_) => None,
            })
            .collect();
        let names: Vec<&str> = probes.iter().map(|p| p.name()).collect();
        format!("reached: {}", names.join(", "))
    }
}

/// How often an invariant was violated in a search, and first when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violated {
    /// Runs that violated it.
    pub runs: usize,
    /// The first such run's index.
    pub first: usize,
}

/// What a search found.
#[derive(Debug, Clone)]
pub struct Report {
    /// How it chose plans.
    pub mode: Mode,
    /// Runs made (the corpus replayed included).
    pub runs: usize,
    /// Probe coverage over every run.
    pub coverage: Coverage,
    /// Per probe (in [`Probe::ALL`] order), the run that first reached it.
    pub first_reached: Vec<Option<usize>>,
    /// Every invariant violated, by name.
    pub violated: BTreeMap<&'static str, Violated>,
    /// The invariant counted as a violation (`None`: any).
    pub invariant: Option<&'static str>,
    /// Runs that violated it.
    pub violating_runs: usize,
    /// The first such run: its index, seed and plan.
    pub first_violation: Option<(usize, Seed)>,
    /// The plans a guided search kept (empty for random).
    pub kept: Vec<Kept>,
}

impl Report {
    /// The probes reached by run `n` (exclusive): the coverage curve.
    pub fn reached_within(&self, n: usize) -> usize {
        self.first_reached
            .iter()
            .filter(|f| f.is_some_and(|i| i < n))
            .count()
    }

    /// A small corpus that keeps every feature the kept plans reached:
    /// the plan covering most features not yet covered, again and again
    /// (greedy set cover), at most `max` plans.
    pub fn minimal_corpus(&self, max: usize) -> Vec<&Kept> {
        let mut left: BTreeSet<Feature> = self
            .kept
            .iter()
            .flat_map(|k| k.features.iter().copied())
            .collect();
        let mut out: Vec<&Kept> = Vec::new();
        while !left.is_empty() && out.len() < max {
            let Some(best) = self.kept.iter().max_by_key(|k| {
                (
                    k.features.intersection(&left).count(),
                    std::cmp::Reverse(k.seed.seed),
                )
            }) else {
                break;
            };
            if best.features.intersection(&left).count() == 0 {
                break;
            }
            for f in &best.features {
                left.remove(f);
            }
            out.push(best);
        }
        out
    }
}

/// The world the generator draws plans for, from a scenario.
pub fn world(scenario: &Scenario) -> World {
    World {
        clients: 3,
        replicas: scenario.replicated().map(|r| r.replicas),
    }
}

/// The features of one run, from its coverage and the invariants it
/// violated.
fn features(c: &Coverage, violated: &[&'static str]) -> BTreeSet<Feature> {
    let mut out: BTreeSet<Feature> = Probe::ALL
        .iter()
        .filter(|p| c.hits(**p) > 0)
        .map(|p| Feature::Probe(*p, bucket(c.hits(*p))))
        .collect();
    out.extend(violated.iter().map(|v| Feature::Violated(v)));
    out
}

/// The guided search's state: the kept plans and how often each feature
/// has been seen (rarer features make their plans likelier parents).
#[derive(Debug, Default)]
struct Guide {
    kept: Vec<Kept>,
    seen: BTreeMap<Feature, u64>,
}

impl Guide {
    /// Folds one run in; keeps its plan when it shows a feature never seen.
    fn learn(&mut self, seed: Seed, features: BTreeSet<Feature>) {
        let new = features.iter().any(|f| !self.seen.contains_key(f));
        for f in &features {
            *self.seen.entry(*f).or_default() += 1;
        }
        if new {
            self.kept.push(Kept { seed, features });
        }
    }

    /// A parent, likelier the rarer its features.
    fn pick(&self, rng: &mut ChaCha8Rng) -> Option<&Kept> {
        let weight = |k: &Kept| -> f64 {
            k.features
                .iter()
                .map(|f| 1.0 / self.seen.get(f).copied().unwrap_or(1) as f64)
                .sum::<f64>()
                + 1e-3
        };
        let total: f64 = self.kept.iter().map(weight).sum();
        let mut at = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
        for k in &self.kept {
            at -= weight(k);
            if at <= 0.0 {
                return Some(k);
            }
        }
        self.kept.last()
    }
}

/// What a search runs and counts.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Runs at most, a guided search's corpus replays included.
    pub runs: usize,
    /// The first fresh seed: plain swarm runs seeds `first_seed..`, and
    /// a guided search draws its fresh plans from the same seeds.
    pub first_seed: u64,
    /// The violation counted (`None`: any invariant).
    pub invariant: Option<&'static str>,
    /// Stop after the batch in which that violation is first seen (runs
    /// to first violation, without paying for the rest of the budget).
    pub stop_at_violation: bool,
    /// Threads the runs of a batch spread over; the report does not
    /// depend on it.
    pub threads: usize,
}

impl Budget {
    /// `runs` runs from seed 0, any violation counted, every core.
    pub fn new(runs: usize) -> Self {
        Self {
            runs,
            first_seed: 0,
            invariant: None,
            stop_at_violation: false,
            threads: parallel::threads(),
        }
    }
}

/// Runs `budget.runs` runs of the scenario `make` builds, choosing each
/// run's seed and plan by `mode`; a guided search first replays `corpus`.
pub fn search(
    make: &(dyn Fn(u64) -> Scenario + Sync),
    mode: Mode,
    budget: Budget,
    corpus: &[Seed],
) -> Report {
    let Budget {
        runs,
        first_seed,
        invariant,
        stop_at_violation,
        threads,
    } = budget;
    let mut report = Report {
        mode,
        runs: 0,
        coverage: Coverage::default(),
        first_reached: vec![None; Probe::ALL.len()],
        violated: BTreeMap::new(),
        invariant,
        violating_runs: 0,
        first_violation: None,
        kept: Vec::new(),
    };
    let mut guide = Guide::default();
    let mut rng = ChaCha8Rng::seed_from_u64(match mode {
        Mode::Random => 0,
        Mode::Guided { seed } => derive_seed(seed, "explore"),
    });
    let world = world(&make(0));
    let mut next_seed = first_seed;
    let replay: Vec<Seed> = match mode {
        Mode::Random => Vec::new(),
        Mode::Guided { .. } => corpus.iter().take(runs).cloned().collect(),
    };
    let mut replayed = 0;
    while report.runs < runs && !(stop_at_violation && report.first_violation.is_some()) {
        let n = BATCH.min(runs - report.runs);
        // This batch's plans, chosen from what the search knew before it.
        let mut batch: Vec<Seed> = Vec::with_capacity(n);
        for _ in 0..n {
            if replayed < replay.len() {
                batch.push(replay[replayed].clone());
                replayed += 1;
                continue;
            }
            let fresh = next_seed;
            next_seed += 1;
            let next = match mode {
                Mode::Guided { .. } if !guide.kept.is_empty() && !rng.random_bool(FRESH_SHARE) => {
                    let other = &guide.kept[rng.random_range(0..guide.kept.len())].seed;
                    let parent = guide.pick(&mut rng).map_or(other, |k| &k.seed);
                    // Half the mutants keep their parent's seed (its
                    // network, workload and jitter), so a small edit of
                    // the plan stays a small change of the run.
                    let seed = if rng.random_bool(SAME_SEED_SHARE) {
                        parent.seed
                    } else {
                        fresh
                    };
                    let plan = mutate::mutate(&mut rng, world, &parent.plan, Some(&other.plan));
                    Seed { seed, plan }
                }
                _ => Seed {
                    seed: fresh,
                    plan: make(fresh).plan,
                },
            };
            batch.push(next);
        }
        let index: Vec<u64> = (0..batch.len() as u64).collect();
        let results = parallel::in_seed_order(
            &index,
            threads,
            |i| {
                let s = &batch[i as usize];
                let mut scenario = make(s.seed);
                scenario.plan = s.plan.clone();
                let (run, violations) = run_checked(&scenario, s.seed);
                // One entry per invariant, in name order.
                let violated: Vec<&'static str> = violations
                    .iter()
                    .map(|v| v.invariant)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let coverage = Coverage::of(&run);
                let features = features(&coverage, &violated);
                (coverage, violated, features)
            },
            |_| false,
        );
        for ((_, (coverage, violated, features)), seed) in results.into_iter().zip(batch) {
            let i = report.runs;
            report.runs += 1;
            for (k, p) in Probe::ALL.iter().enumerate() {
                if coverage.runs_reaching(*p) > 0 && report.first_reached[k].is_none() {
                    report.first_reached[k] = Some(i);
                }
            }
            report.coverage.add(&coverage);
            for v in &violated {
                report
                    .violated
                    .entry(v)
                    .and_modify(|s| s.runs += 1)
                    .or_insert(Violated { runs: 1, first: i });
            }
            let hit = match invariant {
                Some(inv) => violated.contains(&inv),
                None => !violated.is_empty(),
            };
            if hit {
                report.violating_runs += 1;
                if report.first_violation.is_none() {
                    report.first_violation = Some((i, seed.clone()));
                }
            }
            if matches!(mode, Mode::Guided { .. }) {
                guide.learn(seed, features);
            }
        }
    }
    report.kept = guide.kept;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultPlan;

    #[test]
    fn hit_counts_fall_in_afl_buckets() {
        let b: Vec<u8> = [0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 1_000]
            .into_iter()
            .map(bucket)
            .collect();
        assert_eq!(b, [0, 1, 2, 3, 3, 4, 4, 5, 5, 6, 6]);
    }

    #[test]
    fn the_minimal_corpus_covers_every_feature_with_few_plans() {
        let kept = |seed, fs: &[Feature]| Kept {
            seed: Seed {
                seed,
                plan: FaultPlan::default(),
            },
            features: fs.iter().copied().collect(),
        };
        let (a, b, c) = (
            Feature::Probe(Probe::Retry, 1),
            Feature::Probe(Probe::DedupHit, 1),
            Feature::Violated("liveness"),
        );
        let report = Report {
            mode: Mode::Guided { seed: 1 },
            runs: 3,
            coverage: Coverage::default(),
            first_reached: vec![None; Probe::ALL.len()],
            violated: BTreeMap::new(),
            invariant: None,
            violating_runs: 0,
            first_violation: None,
            kept: vec![kept(1, &[a]), kept(2, &[a, b]), kept(3, &[c])],
        };
        let seeds: Vec<u64> = report
            .minimal_corpus(10)
            .iter()
            .map(|k| k.seed.seed)
            .collect();
        assert_eq!(seeds, [2, 3]);
        assert_eq!(report.minimal_corpus(1).len(), 1);
    }
}
