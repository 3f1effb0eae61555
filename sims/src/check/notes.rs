//! What the workload itself caught: wrong answers, and whether every client
//! got through its liveness phase.

use crate::{
    check::Violation,
    history::{Entry, Record},
    scenario::Scenario,
    workload::Note,
};

/// What the workload itself noticed: wrong answers, and whether every
/// client got through its liveness phase.
pub fn check(scenario: &Scenario, records: &[Record], v: &mut Vec<Violation>) {
    let mut phases = 0;
    for r in records {
        let Entry::Note(n) = &r.entry else { continue };
        match n {
            Note::Wrong(_) => v.push(
                Violation::new("correct-results", format!("{}: {n}", r.host))
                    .at(&r.host, r.at, r.at),
            ),
            Note::LivenessFailed { .. } => v.push(
                Violation::new(
                    "liveness",
                    format!("{} at {:?}, after every fault stopped: {n}", r.host, r.at),
                )
                .at(&r.host, r.at, r.at),
            ),
            Note::LivenessPhase => phases += 1,
            Note::WorkloadDone | Note::Failover { .. } => {}
        }
    }
    if scenario.liveness_calls > 0 && phases != scenario.clients {
        v.push(Violation::new(
            "liveness",
            format!(
                "{phases} of {} clients reached the liveness phase",
                scenario.clients
            ),
        ));
    }
}
