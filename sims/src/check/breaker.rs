//! The breaker's rules, read from the client's trace.

use std::collections::BTreeMap;

use abacus::{
    client::breaker::{State, Transition},
    trace::Event,
};

use crate::{
    check::Violation,
    history::{Entry, Record},
};

/// Breaker rules, per host (a client's breaker, or a replica's store
/// guard): only legal transitions, each starting from the state the
/// breaker was in; no attempt leaves while it is open; at most `probes_max`
/// attempts while half-open. A server that (re)starts starts with a closed
/// breaker: its guard is new.
pub fn check(probes_max: u32, records: &[Record], v: &mut Vec<Violation>) {
    struct Client {
        state: State,
        probes: u32,
    }
    let mut clients: BTreeMap<&str, Client> = BTreeMap::new();
    for r in records {
        let Entry::Event(e) = &r.entry else { continue };
        let c = clients.entry(r.host.as_str()).or_insert(Client {
            state: State::Closed,
            probes: 0,
        });
        match e {
            Event::ServerStarted => {
                c.state = State::Closed;
                c.probes = 0;
            }
            Event::BreakerTransition { from, to, .. } => {
                // The breaker's own table of legal edges, not a copy of it.
                let legal = Transition {
                    from: *from,
                    to: *to,
                }
                .is_legal();
                if !legal || *from != c.state {
                    v.push(Violation::new(
                        "breaker-legal-transitions",
                        format!(
                            "{} at {:?}: {from} -> {to} while the breaker was {}",
                            r.host, r.at, c.state
                        ),
                    ).at(&r.host, r.at, r.at));
                }
                c.state = *to;
                c.probes = 0;
            }
            Event::AttemptStarted { call, attempt, .. } => match c.state {
                State::Open => v.push(Violation::new(
                    "breaker-open-sends-nothing",
                    format!(
                        "{} at {:?}: attempt #{call}.{attempt} went out while the breaker was open",
                        r.host, r.at
                    ),
                ).at(&r.host, r.at, r.at)),
                State::HalfOpen => {
                    c.probes += 1;
                    if c.probes > probes_max {
                        v.push(Violation::new(
                            "breaker-probes-bounded",
                            format!(
                                "{} at {:?}: probe {} while half-open (max {probes_max})",
                                r.host, r.at, c.probes
                            ),
                        ).at(&r.host, r.at, r.at));
                    }
                }
                State::Closed => {}
            },
            _ => {}
        }
    }
}
