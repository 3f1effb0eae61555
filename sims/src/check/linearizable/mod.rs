//! `linearizable`: the registers' histories, as the clients saw them, are
//! those of one register per name — some order of the operations,
//! consistent with real time, explains every answer. An Accumulate with an
//! unknown outcome may have taken effect once, at any point after its
//! call, or never (Jepsen's `:info`); one reported not-applied did not.
//!
//! Where the delivery checks compare the server's own record of applies
//! with what the clients were told, this one uses only what clients saw, so
//! it also catches what a server could get wrong without lying in its
//! trace: a stale answer, an acknowledgement of a write that later
//! vanished, a value from a replica that missed a write.
//!
//! It holds only where the scenario promises a single register: exactly-
//! once effect, over state that survives crashes (in-memory state resets on
//! a crash, which no single register does).
//!
//! # Layout
//! - [`search`]: the search itself (Wing & Gong with Lowe's memoisation),
//!   its cost bound and its minimal witnesses.

pub mod search;

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use abacus::trace::Outcome;

use crate::{
    check::Violation,
    scenario::{Promise, Scenario},
    workload::LogicalAccumulate,
    world::Run,
};

use search::{Kind, Op, Verdict};

/// True when `scenario` promises single-register semantics.
pub fn applies_to(scenario: &Scenario) -> bool {
    scenario.promise == Promise::ExactlyOnceEffect && scenario.state_survives_crash
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The operation the client saw, or `None` when it certainly did not take
/// effect.
fn op(call: &LogicalAccumulate) -> Option<Op> {
    let kind = match call.result {
        Ok(value) => Kind::Add {
            delta: call.delta,
            ret: nanos(call.returned),
            value,
        },
        Err((_, Outcome::NotApplied)) => return None,
        Err(_) => Kind::AddUnknown { delta: call.delta },
    };
    Some(Op {
        call: nanos(call.called),
        kind,
    })
}

/// Checks `run` when the scenario promises single registers; returns the
/// search's effort (zero when it does not apply).
pub fn check(scenario: &Scenario, run: &Run, v: &mut Vec<Violation>) -> search::Effort {
    if !applies_to(scenario) {
        return search::Effort::default();
    }
    // Per register: the operations, and the calls they came from (for the
    // witness).
    let mut histories: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    let mut sources: BTreeMap<String, Vec<&LogicalAccumulate>> = BTreeMap::new();
    for call in &run.accumulates {
        if let Some(op) = op(call) {
            histories.entry(call.register.clone()).or_default().push(op);
            sources.entry(call.register.clone()).or_default().push(call);
        }
    }
    let (verdict, effort) = search::check(&histories);
    match verdict {
        Verdict::Linearizable => {}
        Verdict::Violation { register, witness } => {
            let calls = &sources[&register];
            let mut detail = format!(
                "register {register}: no order of the operations explains these answers together \
                 (every other operation may or may not have happened):"
            );
            for i in witness {
                let c = calls[i];
                let _ = write!(
                    detail,
                    "\n      {} accumulate({}) called at {:?}, answered {} at {:?}",
                    c.host,
                    c.delta,
                    c.called,
                    match c.result {
                        Ok(value) => value.to_string(),
                        Err((code, outcome)) => format!("{code:?} [{outcome}]"),
                    },
                    c.returned
                );
            }
            v.push(Violation {
                invariant: "linearizable",
                detail,
            });
        }
        Verdict::Undecided { register } => v.push(Violation {
            invariant: "linearizable",
            detail: format!(
                "register {register}: undecided within {} search steps (too many unknown \
                 outcomes to rule out every subset); shorten the workload",
                search::STEPS_MAX
            ),
        }),
    }
    effort
}
