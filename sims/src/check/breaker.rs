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

/// Breaker rules, per host and endpoint (a client over several replicas
/// has one breaker each; a replica's store guard is its host's breaker of
/// the store): only legal transitions, each starting from the state the
/// breaker was in; no attempt leaves for an endpoint while its breaker is
/// open — an ejected replica gets its probes and nothing else; at most
/// `probes_max` attempts while half-open. A server that (re)starts starts
/// with closed breakers: its guard is new.
pub fn check(probes_max: u32, records: &[Record], v: &mut Vec<Violation>) {
    struct Client {
        state: State,
        probes: u32,
    }
    let mut clients: BTreeMap<(&str, &str), Client> = BTreeMap::new();
    for r in records {
        let Entry::Event(e) = &r.entry else { continue };
        let endpoint = match e {
            Event::BreakerTransition { endpoint, .. } | Event::AttemptStarted { endpoint, .. } => {
                endpoint.as_str()
            }
            Event::ServerStarted => {
                let host = r.host.as_str();
                for ((_, _), c) in clients.iter_mut().filter(|((h, _), _)| *h == host) {
                    c.state = State::Closed;
                    c.probes = 0;
                }
                continue;
            }
            _ => continue,
        };
        let c = clients
            .entry((r.host.as_str(), endpoint))
            .or_insert(Client {
                state: State::Closed,
                probes: 0,
            });
        match e {
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
                            "{} at {:?}: {endpoint}: {from} -> {to} while the breaker was {}",
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
                        "{} at {:?}: attempt #{call}.{attempt} went to {endpoint} while its breaker was open",
                        r.host, r.at
                    ),
                ).at(&r.host, r.at, r.at)),
                State::HalfOpen => {
                    c.probes += 1;
                    if c.probes > probes_max {
                        v.push(Violation::new(
                                "breaker-probes-bounded",
                            format!(
                                "{} at {:?}: probe {} to {endpoint} while half-open (max {probes_max})",
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
