//! What the replica-aware client is held to, read from its trace (the
//! breaker's per-endpoint rules are in [`super::breaker`]):
//!
//! - `not-serving-gets-nothing`: no attempt goes to an endpoint whose
//!   health watch last said NOT_SERVING for the scope the RPC needs —
//!   with the breaker's `breaker-open-sends-nothing` and
//!   `breaker-probes-bounded`, an ejected replica gets its probes and
//!   nothing else;
//! - `hedges-bounded`: a hedged call sends at most `maxAttempts` attempts
//!   in all, each hedge numbered within it;
//! - `hedge-only-repeatable`: only calls that may be repeated are hedged
//!   (idempotent RPCs, `Accumulate` with a request ID: the library's own
//!   rule, [`Method::is_idempotent`]);
//! - `failover-within-bound`: every call that takes no claim at the store
//!   succeeds (or is refused as a caller error) within the scenario's
//!   failover bound ([`Bounds::failover`]);
//! - `tail-within-bound`: the 99th percentile of the latency of the calls
//!   that take no claim is within [`Bounds::p99`].

use std::{collections::BTreeMap, time::Duration};

use abacus::{
    rpc::{HealthScope, Method, Serving},
    trace::Event,
};

use crate::{
    check::{
        Violation,
        call_trace::{CallTrace, answered, calls, nearest_rank},
    },
    history::{Entry, Record},
    scenario::Scenario,
    world::aware::{Bounds, ReplicaClient},
};

/// Every check of this module that applies to `scenario`.
pub fn check(scenario: &Scenario, records: &[Record], v: &mut Vec<Violation>) {
    not_serving_gets_nothing(records, v);
    let Some(ReplicaClient::Aware(aware)) = scenario.replicated().map(|r| &r.client) else {
        return;
    };
    let calls = calls(records);
    if let Some(h) = &aware.hedge {
        hedges(h.attempts_max, &calls, v);
    }
    bounds(aware.bounds, &calls, v);
}

/// `not-serving-gets-nothing`, per client host and endpoint.
fn not_serving_gets_nothing(records: &[Record], v: &mut Vec<Violation>) {
    let mut health: BTreeMap<(&str, &str, HealthScope), Serving> = BTreeMap::new();
    let mut methods: BTreeMap<(&str, u64), Method> = BTreeMap::new();
    for r in records {
        let Entry::Event(e) = &r.entry else { continue };
        let host = r.host.as_str();
        match e {
            Event::EndpointHealth {
                endpoint,
                scope,
                status,
            } => {
                health.insert((host, endpoint, *scope), *status);
            }
            Event::CallStarted { call, method, .. } => {
                methods.insert((host, *call), *method);
            }
            Event::AttemptStarted {
                call,
                attempt,
                endpoint,
                ..
            } => {
                let Some(method) = methods.get(&(host, *call)) else {
                    continue;
                };
                let scope = method.health_scope();
                if health.get(&(host, endpoint.as_str(), scope)) == Some(&Serving::NotServing) {
                    v.push(Violation::new("not-serving-gets-nothing",format!(
                            "{host} at {:?}: attempt #{call}.{attempt} ({method}) went to {endpoint}, which reported {scope} NOT_SERVING",
                            r.at
                        )).at(host, r.at, r.at));
                }
            }
            _ => {}
        }
    }
}

/// `violation`, spotted on call `c` of `host`: from its start to its end
/// (or its start, if it never ended).
fn spotted(host: &str, c: &CallTrace<'_>, violation: Violation) -> Violation {
    let end = c.finished.map_or(c.started, |(at, _)| at);
    violation.at(host, c.started, end)
}

/// `hedges-bounded` and `hedge-only-repeatable`.
fn hedges(attempts_max: u32, calls: &BTreeMap<(&str, u64), CallTrace<'_>>, v: &mut Vec<Violation>) {
    for ((host, id), c) in calls {
        if c.hedges.is_empty() {
            continue;
        }
        let attempts = c.endpoints.len();
        let numbers_ok = c.hedges.iter().all(|n| (2..=attempts_max).contains(n));
        if attempts > attempts_max as usize || !numbers_ok {
            v.push(spotted(host, c, Violation::new("hedges-bounded",format!(
                    "{host} call #{id}: {attempts} attempts, hedges numbered {:?}; maxAttempts {attempts_max}",
                    c.hedges
                ))));
        }
        if !c.method.is_idempotent() && c.request_id.is_empty() {
            v.push(spotted(
                host,
                c,
                Violation::new(
                    "hedge-only-repeatable",
                    format!(
                        "{host} call #{id}: {} without a request ID was hedged",
                        c.method
                    ),
                ),
            ));
        }
    }
}

/// `failover-within-bound` and `tail-within-bound`.
fn bounds(bounds: Bounds, calls: &BTreeMap<(&str, u64), CallTrace<'_>>, v: &mut Vec<Violation>) {
    if let Some(bound) = bounds.failover {
        for ((host, id), c) in calls {
            // An Accumulate may wait on a claim its first replica took
            // and never finished (see docs/simulation.md); the
            // exactly-once checks judge those.
            if !c.method.is_pure() {
                continue;
            }
            let Some((at, result)) = c.finished else {
                continue;
            };
            let took = at.saturating_sub(c.started);
            let how = match result {
                Err(code) if !answered(&result) => {
                    format!("failed {}", abacus::error::code_name(code))
                }
                _ if took > bound => "succeeded".to_owned(),
                _ => continue,
            };
            v.push(spotted(host, c, Violation::new("failover-within-bound",format!(
                    "{host} call #{id} ({}) {how} after {took:?} (bound {bound:?}), attempts to {:?}",
                    c.method, c.endpoints
                ))));
        }
    }
    if let Some(bound) = bounds.p99 {
        // A hedged Accumulate whose first attempt holds its claim at the
        // store waits for it: the claim is the store's, and hedging buys
        // a write safety, not speed (docs/client.md). The tail promised is
        // that of the calls that take no claim.
        let mut latencies: Vec<(Duration, (&str, u64))> = calls
            .iter()
            .filter(|(_, c)| c.method.is_pure())
            .map(|(k, c)| (c.latency(), *k))
            .collect();
        latencies.sort();
        if let Some((p99, (host, id))) = nearest_rank(&latencies, 99)
            && *p99 > bound
        {
            let c = &calls[&(*host, *id)];
            let p99 = if *p99 == Duration::MAX {
                "a failed call".to_owned()
            } else {
                format!("{p99:?}")
            };
            v.push(spotted(host, c, Violation::new("tail-within-bound",format!(
                    "p99 of {} calls is {p99} (bound {bound:?}); at that rank: {host} call #{id} ({}), attempts to {:?}",
                    latencies.len(),
                    c.method,
                    c.endpoints
                ))));
        }
    }
}

/// Each check fed a hand-made history with exactly its bug, and the same
/// history without it.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use abacus::{
        client::{BalanceConfig, HedgeConfig, Reply, breaker::State, hedge::HedgeTrigger},
        rpc::{HealthScope, Method, Serving},
        trace::{Event, Outcome},
    };
    use tonic::Code;

    use crate::{
        check::check,
        history::{Entry, Record},
        scenario::{Replicated, Scenario, Topology},
        world::{
            Run,
            aware::{Aware, Bounds, ReplicaClient},
        },
    };

    const HOST: &str = "client-1";

    fn aware() -> Scenario {
        let mut s = Scenario::new("synthetic");
        let mut r = Replicated::new(3);
        r.client = ReplicaClient::Aware(Box::new(Aware {
            balance: BalanceConfig::default(),
            hedge: Some(HedgeConfig::default()),
            bounds: Bounds {
                failover: Some(Duration::from_millis(300)),
                p99: Some(Duration::from_millis(100)),
            },
        }));
        s.topology = Topology::Replicated(r);
        s.breaker = Some(Default::default());
        s
    }

    fn at(ms: u64, event: Event) -> Record {
        Record {
            at: Duration::from_millis(ms),
            host: HOST.into(),
            entry: Entry::Event(event),
        }
    }

    fn start(ms: u64, call: u64, method: Method, request_id: &str) -> Record {
        at(
            ms,
            Event::CallStarted {
                call,
                method,
                request_id: request_id.into(),
                deadline_ms: 1_000,
            },
        )
    }

    fn attempt(ms: u64, call: u64, attempt: u32, endpoint: &str) -> Record {
        at(
            ms,
            Event::AttemptStarted {
                call,
                attempt,
                endpoint: endpoint.into(),
                timeout_ms: 150,
            },
        )
    }

    fn hedge(ms: u64, call: u64, attempt: u32) -> Record {
        at(
            ms,
            Event::HedgeSent {
                call,
                attempt,
                trigger: HedgeTrigger::Delay,
            },
        )
    }

    fn finish(ms: u64, call: u64, result: Result<Reply, Code>) -> Record {
        at(
            ms,
            Event::CallFinished {
                call,
                attempts: 1,
                result,
                outcome: Outcome::Applied,
            },
        )
    }

    /// An Add answered after `took` ms, its one attempt to replica-1.
    fn add(call: u64, from: u64, took: u64) -> Vec<Record> {
        vec![
            start(from, call, Method::Add, ""),
            attempt(from, call, 1, "replica-1"),
            finish(from + took, call, Ok(Reply::Calc(1.0))),
        ]
    }

    /// The invariants `check` reports, each of which must say where in
    /// the timeline it broke (for the picture to outline).
    fn found(s: &Scenario, records: Vec<Record>) -> Vec<&'static str> {
        let run = Run {
            seed: 0,
            records,
            accumulates: Vec::new(),
            reads: Vec::new(),
            sim_result: Ok(()),
            panics: Vec::new(),
            store_calls_peak: Vec::new(),
        };
        let violations = check(s, &run);
        for v in &violations {
            assert!(!v.spots.is_empty(), "no spot in {v:?}");
        }
        violations.into_iter().map(|v| v.invariant).collect()
    }

    fn health(ms: u64, endpoint: &str, scope: HealthScope, status: Serving) -> Record {
        at(
            ms,
            Event::EndpointHealth {
                endpoint: endpoint.into(),
                scope,
                status,
            },
        )
    }

    fn breaker(ms: u64, endpoint: &str, from: State, to: State) -> Record {
        at(
            ms,
            Event::BreakerTransition {
                endpoint: endpoint.into(),
                from,
                to,
            },
        )
    }

    /// An ejected replica gets its probes and nothing else: by its breaker
    /// (per endpoint: another replica's open breaker says nothing about
    /// this one) and by its health, per scope.
    #[test]
    fn an_ejected_replica_gets_nothing_but_its_probes() {
        let s = aware();
        let open = || breaker(0, "replica-1", State::Closed, State::Open);
        let mut to_other = vec![open()];
        to_other.extend(add(1, 1, 5).into_iter().map(|mut r| {
            if let Entry::Event(Event::AttemptStarted { endpoint, .. }) = &mut r.entry {
                *endpoint = "replica-2".into();
            }
            r
        }));
        assert_eq!(found(&s, to_other), Vec::<&str>::new());
        let mut to_ejected = vec![open()];
        to_ejected.extend(add(1, 1, 5));
        assert!(found(&s, to_ejected).contains(&"breaker-open-sends-nothing"));
        let mut probes = vec![
            open(),
            breaker(1, "replica-1", State::Open, State::HalfOpen),
        ];
        probes.extend(add(1, 2, 5));
        assert_eq!(found(&s, probes.clone()), Vec::<&str>::new());
        probes.extend(add(2, 3, 5));
        assert!(found(&s, probes).contains(&"breaker-probes-bounded"));

        // Registers NOT_SERVING: an Add may still go there, a read may not.
        let down = || health(0, "replica-1", HealthScope::Registers, Serving::NotServing);
        let mut pure = vec![down()];
        pure.extend(add(1, 1, 5));
        assert_eq!(found(&s, pure), Vec::<&str>::new());
        let read = vec![
            down(),
            start(1, 1, Method::GetRegister, ""),
            attempt(1, 1, 1, "replica-1"),
            finish(5, 1, Ok(Reply::Register(1.0))),
        ];
        assert!(found(&s, read.clone()).contains(&"not-serving-gets-nothing"));
        let mut back = read;
        back.insert(
            1,
            health(0, "replica-1", HealthScope::Registers, Serving::Serving),
        );
        assert_eq!(found(&s, back), Vec::<&str>::new());
    }

    /// Hedges stay within maxAttempts (3 here), and only repeatable calls
    /// are hedged.
    #[test]
    fn hedges_are_bounded_and_only_for_repeatable_calls() {
        let s = aware();
        let hedged = |hedges: u32, method: Method, id: &str| {
            let mut r = vec![start(0, 1, method, id), attempt(0, 1, 1, "replica-1")];
            for n in 2..=hedges + 1 {
                let ms = u64::from(n) * 20;
                r.push(hedge(ms, 1, n));
                r.push(attempt(ms, 1, n, &format!("replica-{n}")));
            }
            r.push(finish(70, 1, Ok(Reply::Calc(1.0))));
            r
        };
        assert_eq!(found(&s, hedged(2, Method::Add, "")), Vec::<&str>::new());
        assert!(found(&s, hedged(3, Method::Add, "")).contains(&"hedges-bounded"));
        assert_eq!(
            found(&s, hedged(1, Method::Accumulate, "id-1")),
            Vec::<&str>::new()
        );
        assert!(found(&s, hedged(1, Method::Accumulate, "")).contains(&"hedge-only-repeatable"));
        // A delete is idempotent: repeating it is harmless without an ID.
        assert_eq!(
            found(&s, hedged(1, Method::DeleteRegister, "")),
            Vec::<&str>::new()
        );
    }

    /// Every call that takes no claim succeeds within the failover bound
    /// (300 ms here): late or failed is a violation, a caller error is an
    /// answer, an Accumulate is judged elsewhere.
    #[test]
    fn failover_within_bound_can_fail() {
        let mut s = aware();
        if let Topology::Replicated(r) = &mut s.topology
            && let ReplicaClient::Aware(a) = &mut r.client
        {
            a.bounds.p99 = None;
        }
        assert_eq!(found(&s, add(1, 0, 300)), Vec::<&str>::new());
        assert!(found(&s, add(1, 0, 301)).contains(&"failover-within-bound"));
        let failed = |method, code| {
            vec![
                start(0, 1, method, ""),
                attempt(0, 1, 1, "replica-1"),
                finish(10, 1, Err(code)),
            ]
        };
        assert!(
            found(&s, failed(Method::Add, Code::Unavailable)).contains(&"failover-within-bound")
        );
        assert_eq!(
            found(&s, failed(Method::Divide, Code::InvalidArgument)),
            Vec::<&str>::new()
        );
        assert_eq!(
            found(&s, failed(Method::Accumulate, Code::Aborted)),
            Vec::<&str>::new()
        );
    }

    /// p99 by nearest rank (bound 100 ms): one slow call in a hundred is
    /// the tail's business, two are not; a failed call counts as endless;
    /// an Accumulate (which may wait on its own claim) is not counted.
    #[test]
    fn tail_within_bound_can_fail() {
        let mut s = aware();
        if let Topology::Replicated(r) = &mut s.topology
            && let ReplicaClient::Aware(a) = &mut r.client
        {
            a.bounds.failover = None;
        }
        let calls = |slow: u64, failed: u64| -> Vec<Record> {
            (1..=100)
                .flat_map(|n| {
                    let mut c = add(n, n * 10, if n <= slow { 500 } else { 10 });
                    if n > slow && n <= slow + failed {
                        c[2] = finish(n * 10 + 10, n, Err(Code::Unavailable));
                    }
                    c
                })
                .collect()
        };
        assert_eq!(found(&s, calls(1, 0)), Vec::<&str>::new());
        assert!(found(&s, calls(2, 0)).contains(&"tail-within-bound"));
        assert!(found(&s, calls(1, 1)).contains(&"tail-within-bound"));
        let mut with_slow_write = calls(1, 0);
        with_slow_write.extend([
            start(2_000, 101, Method::Accumulate, "id-1"),
            attempt(2_000, 101, 1, "replica-1"),
            finish(2_500, 101, Ok(Reply::Calc(1.0))),
        ]);
        assert_eq!(found(&s, with_slow_write), Vec::<&str>::new());
    }
}
