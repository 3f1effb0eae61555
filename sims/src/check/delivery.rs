//! Delivery promises, checked against what was applied — the server's
//! `applied` events, or in the replicated world the store's: each logical
//! Accumulate's delta is unique in the run, so `applied` events attribute
//! to their logical call even without request IDs; and each request ID is
//! checked on its own, whichever replica it reached.

use std::collections::BTreeMap;

use abacus::trace::{Event, Outcome};

use crate::{
    check::Violation,
    faults::{Node, SimFault},
    history::{Entry, Record},
    scenario::{Promise, Scenario},
    world::Run,
};

/// How many times the server applied each delta (deltas are unique per
/// logical call, so this attributes applies to logical calls even without
/// request IDs).
fn applies_by_delta(records: &[Record]) -> BTreeMap<(String, u64), usize> {
    let mut applied = BTreeMap::new();
    for r in records {
        if let Entry::Event(Event::Applied {
            register, delta, ..
        }) = &r.entry
        {
            *applied
                .entry((register.clone(), delta.to_bits()))
                .or_insert(0) += 1;
        }
    }
    applied
}

/// Delivery promises: at most once / exactly once / not-applied is true.
pub fn effects(scenario: &Scenario, run: &Run, v: &mut Vec<Violation>) {
    let applied = applies_by_delta(&run.records);
    for call in &run.accumulates {
        let n = applied
            .get(&(call.register.clone(), call.delta.to_bits()))
            .copied()
            .unwrap_or(0);
        let what = format!(
            "{} accumulate({}, {})",
            call.host, call.register, call.delta
        );
        let violated = |invariant, detail| {
            Violation::new(invariant, detail).at(&call.host, call.called, call.returned)
        };
        match &call.result {
            Err((code, Outcome::NotApplied)) if n > 0 => v.push(violated(
                "not-applied-is-true",
                format!(
                    "{what} failed {code:?} reported NOT applied, but the server applied it {n} time(s)"
                ),
            )),
            Ok(_) if n == 0 => v.push(violated(
                "acknowledged-implies-applied",
                format!("{what} succeeded but the server never applied it"),
            )),
            _ => {}
        }
        if scenario.promise == Promise::ExactlyOnceEffect && n > 1 {
            v.push(violated(
                "applied-at-most-once",
                format!("{what} was applied {n} times"),
            ));
        }
    }
}

/// `applied-once-per-request-id`: no request ID is applied twice, across
/// every replica and every crash (exactly-once scenarios). Read from the
/// `applied` events alone, so it holds the store to its promise whatever
/// the workload did with the ID.
pub fn once_per_request_id(scenario: &Scenario, records: &[Record], v: &mut Vec<Violation>) {
    if scenario.promise != Promise::ExactlyOnceEffect {
        return;
    }
    let mut applies: BTreeMap<&str, Vec<(&str, std::time::Duration)>> = BTreeMap::new();
    for r in records {
        if let Entry::Event(Event::Applied { request_id, .. }) = &r.entry
            && !request_id.is_empty()
        {
            applies
                .entry(request_id)
                .or_default()
                .push((r.host.as_str(), r.at));
        }
    }
    for (id, at) in applies {
        if at.len() > 1 {
            let mut violation = Violation::new(
                "applied-once-per-request-id",
                format!("request ID {id} was applied {} times: {at:?}", at.len()),
            );
            for (host, when) in at {
                violation = violation.at(host, when, when);
            }
            v.push(violation);
        }
    }
}

/// Each register's value after every apply equals the previous value plus
/// the delta: the update and its record were committed together, nothing
/// was lost or applied out of band. `durable`: state survives every crash
/// (else a crash of the server resets every register).
pub fn registers(durable: bool, records: &[Record], v: &mut Vec<Violation>) {
    let mut values: BTreeMap<&str, f64> = BTreeMap::new();
    for r in records {
        match &r.entry {
            Entry::Event(Event::Applied {
                register,
                delta,
                value,
                ..
            }) => {
                let before = values.get(register.as_str()).copied().unwrap_or(0.0);
                if before + delta != *value {
                    v.push(
                        Violation::new(
                            "register-consistent",
                            format!(
                                "at {:?}: {register} was {before}, += {delta} gave {value}",
                                r.at
                            ),
                        )
                        .at(&r.host, r.at, r.at),
                    );
                }
                values.insert(register, *value);
            }
            // In-memory state: a crash, or a restart (which is a crash too
            // when windows overlap), resets every register.
            Entry::Fault(SimFault::Crash(Node::Server) | SimFault::Restart(Node::Server))
                if !durable =>
            {
                values.clear()
            }
            _ => {}
        }
    }
}
