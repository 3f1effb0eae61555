//! What a failing store may cost the rest of a replicated service
//! (scenarios with [`CascadeBounds`]), read from the clients' trace and
//! the replicas' store connections:
//!
//! - `pure-calls-unaffected`: every arithmetic call — which never touches
//!   the store — was answered (a result, or the caller's own error), and
//!   within `pure_latency_max` of its start. A replica whose register calls
//!   pile up on a slow store fails this: they fill its in-flight cap and the
//!   pure calls are shed or queued.
//! - `store-work-bounded`: no replica ever had more than `store_calls_max`
//!   store connections open at once (a claim holds one until its commit).

use std::{collections::BTreeMap, time::Duration};

use abacus::trace::Event;

use crate::{
    check::{Violation, call_trace::answered},
    history::{Entry, Record},
    scenario::CascadeBounds,
    world::Run,
};

/// Both rules; see the module documentation.
pub fn check(bounds: &CascadeBounds, run: &Run, v: &mut Vec<Violation>) {
    pure_calls(bounds.pure_latency_max, &run.records, v);
    for (replica, peak) in &run.store_calls_peak {
        if *peak > bounds.store_calls_max {
            // A peak over the whole run has no one place in the timeline.
            v.push(Violation::new(
                "store-work-bounded",
                format!(
                    "{replica} had {peak} store calls in flight at once (bound {})",
                    bounds.store_calls_max
                ),
            ));
        }
    }
}

fn pure_calls(latency_max: Duration, records: &[Record], v: &mut Vec<Violation>) {
    let mut started: BTreeMap<(&str, u64), Duration> = BTreeMap::new();
    for r in records {
        let Entry::Event(e) = &r.entry else { continue };
        match e {
            Event::CallStarted { call, method, .. } if method.binary_op().is_some() => {
                started.insert((r.host.as_str(), *call), r.at);
            }
            Event::CallFinished { call, result, .. } => {
                let Some(at) = started.remove(&(r.host.as_str(), *call)) else {
                    continue;
                };
                let took = r.at - at;
                if !answered(result) || took > latency_max {
                    v.push(
                        Violation::new(
                            "pure-calls-unaffected",
                            format!(
                            "{} call #{call} at {at:?}: {} after {took:?} (bound {latency_max:?})",
                            r.host,
                            match result {
                                Ok(_) => "answered",
                                Err(code) => abacus::error::code_name(*code),
                            },
                            ),
                        )
                        .at(&r.host, at, r.at),
                    );
                }
            }
            _ => {}
        }
    }
}
