//! Plain random swarm against the guided search, on the same budget of
//! runs, over several trials: trial `t` gives both the fresh seeds
//! `first_seed + t·runs ..` (disjoint from every other trial's) and the
//! guided search the explorer seed `explorer_seed + t`. One trial is one
//! sample; the spread over trials is what says whether a difference is
//! the search's or the seeds'.

use std::fmt;

use super::{Budget, Mode, Report, Seed, search};
use crate::{probes::Probe, scenario::Scenario};

/// One trial: random and guided on the same seeds and budget.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Plain swarm.
    pub random: Report,
    /// Coverage-guided.
    pub guided: Report,
}

/// What [`trials`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    /// Each search's budget; `first_seed` is trial 0's.
    pub budget: Budget,
    /// Trial 0's explorer seed.
    pub explorer_seed: u64,
    /// Plans a guided search replays first (every trial).
    pub corpus: &'a [Seed],
    /// How many trials.
    pub trials: usize,
}

/// Runs `setup.trials` trials of the scenario `make` builds.
pub fn trials(make: &(dyn Fn(u64) -> Scenario + Sync), setup: Setup<'_>) -> Vec<Trial> {
    (0..setup.trials)
        .map(|t| {
            let budget = Budget {
                first_seed: setup.budget.first_seed + (t * setup.budget.runs) as u64,
                ..setup.budget
            };
            Trial {
                random: search(make, Mode::Random, budget, &[]),
                guided: search(
                    make,
                    Mode::Guided {
                        seed: setup.explorer_seed + t as u64,
                    },
                    budget,
                    setup.corpus,
                ),
            }
        })
        .collect()
}

/// Per 1,000 runs, rounded.
fn per_mille(count: u64, runs: usize) -> u64 {
    (count * 1000 + runs as u64 / 2) / (runs as u64).max(1)
}

/// `median [min–max]` of `values` (the lower median for an even count);
/// the median alone for one value.
fn spread(mut values: Vec<usize>) -> String {
    values.sort_unstable();
    match values.as_slice() {
        [] => "-".to_owned(),
        [one] => one.to_string(),
        [lo, .., hi] => format!("{} [{lo}–{hi}]", values[(values.len() - 1) / 2]),
    }
}

/// [`spread`] of what some trials found; says how many found nothing.
fn spread_of_found(values: Vec<Option<usize>>, prefix: &str) -> String {
    let n = values.len();
    let found: Vec<usize> = values.into_iter().flatten().collect();
    let none = n - found.len();
    let text = if found.is_empty() {
        "-".to_owned()
    } else {
        format!("{prefix}{}", spread(found))
    };
    if none > 0 && none < n {
        format!("{text}, none in {none}")
    } else {
        text
    }
}

/// Random and guided side by side over the trials: per probe, the runs
/// per 1,000 that reached it (all trials pooled) and the run that first
/// did; probes reached within 100 runs and within the budget; violations,
/// per invariant and the counted one's first run.
#[derive(Debug)]
pub struct Comparison<'a> {
    /// The scenario's name.
    pub name: &'a str,
    /// Probes the scenario requires.
    pub required: &'a [Probe],
    /// The trials.
    pub trials: &'a [Trial],
}

impl Comparison<'_> {
    /// The two sides' reports, trial by trial.
    fn sides(&self) -> [Vec<&Report>; 2] {
        [
            self.trials.iter().map(|t| &t.random).collect(),
            self.trials.iter().map(|t| &t.guided).collect(),
        ]
    }
}

impl fmt::Display for Comparison<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sides = self.sides();
        let budget = sides[0].iter().map(|r| r.runs).max().unwrap_or_default();
        let n = self.trials.len();
        writeln!(
            f,
            "{}: {n} trial(s) of up to {budget} runs per side; median [min–max] over trials",
            self.name
        )?;
        let row = |f: &mut fmt::Formatter<'_>, label: &str, cells: [String; 2]| {
            writeln!(f, "  {label:<36} {:>24} {:>24}", cells[0], cells[1])
        };
        row(
            f,
            "probe: runs per 1,000 (first run)",
            ["random".to_owned(), "guided".to_owned()],
        )?;
        for (k, p) in Probe::ALL.iter().enumerate() {
            let cells = sides.clone().map(|reports| {
                let runs: usize = reports.iter().map(|r| r.runs).sum();
                let reaching: u64 = reports.iter().map(|r| r.coverage.runs_reaching(*p)).sum();
                let firsts: Vec<Option<usize>> =
                    reports.iter().map(|r| r.first_reached[k]).collect();
                if reaching == 0 {
                    "-".to_owned()
                } else {
                    format!(
                        "{} ({})",
                        per_mille(reaching, runs),
                        spread_of_found(firsts, "#")
                    )
                }
            });
            let required = if self.required.contains(p) { " *" } else { "" };
            row(f, &format!("{}{required}", p.name()), cells)?;
        }
        let marks: Vec<usize> = if budget > 100 {
            vec![100, budget]
        } else {
            vec![budget]
        };
        for mark in marks {
            let cells = sides.clone().map(|reports| {
                spread(
                    reports
                        .iter()
                        .map(|r| r.reached_within(mark.min(r.runs)))
                        .collect(),
                )
            });
            row(f, &format!("probes reached in {mark} runs"), cells)?;
        }
        let invariants: std::collections::BTreeSet<&'static str> = self
            .trials
            .iter()
            .flat_map(|t| [&t.random, &t.guided])
            .flat_map(|r| r.violated.keys().copied())
            .collect();
        for inv in invariants {
            let cells = sides.clone().map(|reports| {
                let runs: usize = reports.iter().map(|r| r.runs).sum();
                let violating: usize = reports
                    .iter()
                    .filter_map(|r| r.violated.get(inv))
                    .map(|v| v.runs)
                    .sum();
                let firsts = reports
                    .iter()
                    .map(|r| r.violated.get(inv).map(|v| v.first))
                    .collect();
                format!(
                    "{} ({})",
                    per_mille(violating as u64, runs),
                    spread_of_found(firsts, "#")
                )
            });
            row(f, &format!("violated {inv}: per 1,000 (first)"), cells)?;
        }
        let what = sides[0]
            .first()
            .and_then(|r| r.invariant)
            .unwrap_or("any invariant");
        let cells = sides.clone().map(|reports| {
            spread_of_found(
                reports
                    .iter()
                    .map(|r| r.first_violation.as_ref().map(|(i, _)| i + 1))
                    .collect(),
                "",
            )
        });
        row(f, &format!("runs to first violation of {what}"), cells)?;
        let kept = spread(sides[1].iter().map(|r| r.kept.len()).collect());
        row(f, "plans kept", ["-".to_owned(), kept])?;
        if !self.required.is_empty() {
            write!(f, "  * required by the scenario")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_say_median_range_and_misses() {
        assert_eq!(spread(vec![]), "-");
        assert_eq!(spread(vec![7]), "7");
        assert_eq!(spread(vec![9, 1, 4, 3]), "3 [1–9]");
        assert_eq!(spread(vec![9, 1, 4]), "4 [1–9]");
        assert_eq!(spread_of_found(vec![None, None], "#"), "-");
        assert_eq!(
            spread_of_found(vec![Some(5), None, Some(2)], "#"),
            "#2 [2–5], none in 1"
        );
        assert_eq!(per_mille(1, 3), 333);
        assert_eq!(per_mille(0, 0), 0);
    }
}
