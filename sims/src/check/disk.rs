//! `durable-state`: what the durable server loads from its simulated disk
//! at every start (and what the harness reads back after the run) is
//! exactly what the history says was made durable — every `applied` event
//! (emitted once its commit is durable), plus commits whose fate was
//! unknown and that turn out to have reached the disk.
//!
//! Those last ones are real: a power cut just before a commit's fsync may
//! let all of its sectors through, or an fsync may fail after the data
//! landed. No event says so (the commit failed, its caller was told the
//! fate is unknown), so they are inferred here: when a register loads with
//! more than its applies explain, the difference must be the sum of some
//! Accumulates on it that have no apply yet and were called before the
//! load; each is then credited as applied at the load (a synthetic
//! `applied` record), so `applied-at-most-once`, `register-consistent` and
//! `not-applied-is-true` hold it to the same promises as any other apply.
//! Deltas are distinct positive integers, so the sum is exact.
//!
//! A load that no such subset explains — a register *below* its applies
//! (an acknowledged write lost), or above them by no combination of
//! unresolved calls — is a `durable-state` violation. A database that will
//! not open at all after the run is a `durable-opens` violation.

use std::collections::{BTreeMap, BTreeSet};

use abacus::trace::Event;

use crate::{
    check::Violation,
    history::{Entry, Record},
    world::{Run, disk::DiskNote},
};

/// Most unresolved calls the subset search looks at (2^N subsets).
const CANDIDATES_MAX: usize = 16;

/// The run's records with recovered commits credited, or `None` when no
/// server loaded from a disk (the check does not apply).
pub fn reconcile(run: &Run, v: &mut Vec<Violation>) -> Option<Vec<Record>> {
    let loads = run
        .records
        .iter()
        .any(|r| matches!(r.entry, Entry::Disk(DiskNote::Loaded { .. })));
    if !loads {
        return None;
    }
    let mut out = Vec::with_capacity(run.records.len());
    let mut values: BTreeMap<String, f64> = BTreeMap::new();
    let mut applied: BTreeSet<(String, u64)> = BTreeSet::new();
    for (i, r) in run.records.iter().enumerate() {
        match &r.entry {
            Entry::Event(Event::Applied {
                register,
                delta,
                value,
                ..
            }) => {
                applied.insert((register.clone(), delta.to_bits()));
                values.insert(register.clone(), *value);
            }
            Entry::Disk(DiskNote::Loaded { registers }) => {
                for (name, loaded) in registers {
                    let expected = values.get(name).copied().unwrap_or(0.0);
                    let loaded = loaded.unwrap_or(0.0);
                    if loaded == expected {
                        continue;
                    }
                    let candidates: Vec<f64> = run
                        .accumulates
                        .iter()
                        .filter(|a| {
                            a.register == *name
                                && a.called <= r.at
                                && !applied.contains(&(name.clone(), a.delta.to_bits()))
                        })
                        .map(|a| a.delta)
                        .collect();
                    match subset_summing_to(&candidates, loaded - expected) {
                        Some(recovered) => {
                            let mut value = expected;
                            for delta in recovered {
                                value += delta;
                                applied.insert((name.clone(), delta.to_bits()));
                                out.push(Record {
                                    at: r.at,
                                    host: r.host.clone(),
                                    entry: Entry::Event(Event::Applied {
                                        request_id: String::new(),
                                        register: name.clone(),
                                        delta,
                                        value,
                                    }),
                                });
                            }
                        }
                        None => v.push(
                            Violation::new(
                                "durable-state",
                                format!(
                                    "at {:?} (record {i}) {} loaded {name} = {loaded}, but its \
                                     durable applies give {expected} and no unresolved \
                                     Accumulate explains the difference {}{}",
                                    r.at,
                                    r.host,
                                    loaded - expected,
                                    // A checker limit, not the system's fault: say so.
                                    if candidates.len() > CANDIDATES_MAX {
                                        format!(
                                            " (searched only the first {CANDIDATES_MAX} of {} \
                                             unresolved Accumulates)",
                                            candidates.len()
                                        )
                                    } else {
                                        String::new()
                                    }
                                ),
                            )
                            .at(&r.host, r.at, r.at),
                        ),
                    }
                    values.insert(name.clone(), loaded);
                }
            }
            _ => {}
        }
        out.push(r.clone());
    }
    if let Some(last) = run.records.last()
        && let Entry::Disk(DiskNote::OpenFailed { why }) = &last.entry
    {
        v.push(
            Violation::new(
                "durable-opens",
                format!("after the run the database does not open: {why}"),
            )
            .at(&last.host, last.at, last.at),
        );
    }
    Some(out)
}

/// A subset of `candidates` (in their order) summing exactly to `target`,
/// smallest first; `None` if there is none among the first
/// [`CANDIDATES_MAX`].
fn subset_summing_to(candidates: &[f64], target: f64) -> Option<Vec<f64>> {
    let c = &candidates[..candidates.len().min(CANDIDATES_MAX)];
    let mut masks: Vec<u32> = (1..(1u32 << c.len())).collect();
    masks.sort_by_key(|m| (m.count_ones(), *m));
    masks.into_iter().find_map(|mask| {
        let picked: Vec<f64> = (0..c.len())
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| c[i])
            .collect();
        (picked.iter().sum::<f64>() == target).then_some(picked)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_found_smallest_first() {
        assert_eq!(subset_summing_to(&[3.0, 5.0, 8.0], 8.0), Some(vec![8.0]));
        assert_eq!(subset_summing_to(&[3.0, 5.0], 8.0), Some(vec![3.0, 5.0]));
        assert_eq!(subset_summing_to(&[3.0, 5.0], -3.0), None);
        assert_eq!(subset_summing_to(&[], 1.0), None);
    }
}
