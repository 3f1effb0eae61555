//! The corpus in the repository: fault plans the guided search kept
//! because they reached probes others did not, one file per plan in
//! `sims/corpus/<scenario>/`, in the plan's text form with the seed it ran
//! with:
//!
//! ```text
//! # seed 4127
//! # reached: retry, breaker-opened, half-open-probe-failed, dedup-hit
//! latency=1..80 link=0 fail=0.2 delay=0..300 drop=0.2 windows=crash:all@900+700
//! ```
//!
//! Lines starting with `#` are comments, except `# seed N`; the first
//! other line is the plan.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::faults::FaultPlan;

/// One plan of the corpus and the seed it ran with.
#[derive(Debug, Clone, PartialEq)]
pub struct Seed {
    /// The run's seed.
    pub seed: u64,
    /// Its fault plan.
    pub plan: FaultPlan,
}

impl Seed {
    /// The file's text; `note` is a comment (what it reached).
    pub fn to_text(&self, note: &str) -> String {
        let mut out = format!("# seed {}\n", self.seed);
        for line in note.lines() {
            let _ = writeln!(out, "# {line}");
        }
        let _ = writeln!(out, "{}", self.plan);
        out
    }

    /// Reads a corpus file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut seed = None;
        let mut plan = None;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix('#') {
                if let Some(n) = rest.trim().strip_prefix("seed ") {
                    seed = Some(
                        n.trim()
                            .parse::<u64>()
                            .map_err(|_| format!("`# seed {n}`: not a whole number"))?,
                    );
                }
            } else if plan.is_none() {
                plan = Some(line.parse::<FaultPlan>()?);
            } else {
                return Err(format!("a second plan line: {line:?}"));
            }
        }
        Ok(Self {
            seed: seed.ok_or("no `# seed N` line")?,
            plan: plan.ok_or("no plan line")?,
        })
    }
}

/// The corpus directory of scenario `name`: `sims/corpus/<name>` in this
/// repository.
pub fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

/// Every `*.plan` in `dir`, in file-name order; an absent directory is an
/// empty corpus.
pub fn load(dir: &Path) -> Result<Vec<Seed>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "plan"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Seed::parse(&text).map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect()
}

/// Replaces the `*.plan` files of `dir` with `seeds` (each with its note),
/// named by their order: `000.plan`, `001.plan`, ….
pub fn save(dir: &Path, seeds: &[(Seed, String)]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    for entry in std::fs::read_dir(dir).map_err(fail)?.filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|x| x == "plan") {
            std::fs::remove_file(entry.path()).map_err(fail)?;
        }
    }
    for (i, (seed, note)) in seeds.iter().enumerate() {
        let path = dir.join(format!("{i:03}.plan"));
        std::fs::write(&path, seed.to_text(note))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corpus_file_round_trips_and_bad_ones_say_why() {
        let seed = Seed {
            seed: 42,
            plan: FaultPlan::generate(3, 2),
        };
        let text = seed.to_text("reached: retry, dedup-hit");
        assert_eq!(Seed::parse(&text), Ok(seed));
        for (bad, why) in [
            ("latency=1..5", "no `# seed N`"),
            ("# seed x\nlatency=1..5", "not a whole number"),
            ("# seed 1\n", "no plan"),
            ("# seed 1\nlatency=1..5\nlatency=1..5", "a second plan"),
            ("# seed 1\nspeed=3", "unknown plan key"),
        ] {
            let e = Seed::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
