//! `linearizable`: the registers' histories, as the clients saw them, are
//! those of one register per name — some order of the operations,
//! consistent with real time, explains every answer. An Accumulate with an
//! unknown outcome may have taken effect once, at any point after its
//! call, or never (Jepsen's `:info`); one reported not-applied did not. A
//! read that answered (a value, or NOT_FOUND for "absent") must see every
//! write acknowledged before it was called, whichever replica served it; a
//! failed read constrains nothing.
//!
//! Where the delivery checks compare the server's own record of applies
//! with what the clients were told, this one uses only what clients saw, so
//! it also catches what a server could get wrong without lying in its
//! trace: a stale answer, an acknowledgement of a write that later
//! vanished, a value from a replica that missed a write.
//!
//! It holds only where the scenario promises a single register: exactly-
//! once effect, over state that survives crashes (in-memory state resets on
//! a crash, which no single register does) — the durable single server, or
//! any replicated world.
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
    workload::{LogicalAccumulate, LogicalRead},
    world::Run,
};

use search::{Kind, Op, Verdict};

/// True when `scenario` promises single-register semantics.
pub fn applies_to(scenario: &Scenario) -> bool {
    scenario.promise == Promise::ExactlyOnceEffect && scenario.state_is_durable()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A client's operation, for the search and for the witness.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    Accumulate(&'a LogicalAccumulate),
    Read(&'a LogicalRead),
}

impl<'a> Source<'a> {
    /// Its client host, call time and answer time.
    fn span(self) -> (&'a str, Duration, Duration) {
        match self {
            Self::Accumulate(c) => (&c.host, c.called, c.returned),
            Self::Read(r) => (&r.host, r.called, r.returned),
        }
    }

    /// One witness line.
    fn describe(self) -> String {
        match self {
            Self::Accumulate(c) => format!(
                "{} accumulate({}, {}) called at {:?}, answered {} at {:?}",
                c.host,
                c.register,
                c.delta,
                c.called,
                match c.result {
                    Ok(value) => value.to_string(),
                    Err((code, outcome)) => format!("{code:?} [{outcome}]"),
                },
                c.returned
            ),
            Self::Read(r) => format!(
                "{} get({}) called at {:?}, answered {} at {:?}",
                r.host,
                r.register,
                r.called,
                match r.result {
                    Ok(Some(value)) => value.to_string(),
                    Ok(None) => "NOT_FOUND".to_owned(),
                    Err(code) => format!("{code:?}"),
                },
                r.returned
            ),
        }
    }
}

/// The read the client saw, or `None` when it failed (and so constrains
/// nothing).
fn read_op(read: &LogicalRead) -> Option<Op> {
    let value = read.result.ok()?;
    Some(Op {
        call: nanos(read.called),
        kind: Kind::Read {
            ret: nanos(read.returned),
            value,
        },
    })
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
    let mut sources: BTreeMap<String, Vec<Source<'_>>> = BTreeMap::new();
    let ops = run
        .accumulates
        .iter()
        .filter_map(|c| Some((&c.register, op(c)?, Source::Accumulate(c))))
        .chain(
            run.reads
                .iter()
                .filter_map(|r| Some((&r.register, read_op(r)?, Source::Read(r)))),
        );
    for (register, op, source) in ops {
        histories.entry(register.clone()).or_default().push(op);
        sources.entry(register.clone()).or_default().push(source);
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
            let mut violation = Violation::new("linearizable", String::new());
            for i in witness {
                let _ = write!(detail, "\n      {}", calls[i].describe());
                let (host, called, returned) = calls[i].span();
                violation = violation.at(host, called, returned);
            }
            violation.detail = detail;
            v.push(violation);
        }
        Verdict::Undecided { register } => v.push(Violation::new(
            "linearizable",
            format!(
                "register {register}: undecided within {} search steps (too many unknown \
                 outcomes to rule out every subset); shorten the workload",
                search::STEPS_MAX
            ),
        )),
    }
    effort
}
