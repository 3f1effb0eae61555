//! What each client does: a sequence of logical calls drawn from its own
//! seeded stream (Accumulates with a delta unique in the run, register
//! reads, sums it can check, invalid divisions), optionally a liveness
//! phase once every fault has stopped. It notes what it sees as typed
//! [`Note`]s the checker reads, and lists every Accumulate and read with
//! its call and answer times for the linearizability check.
//!
//! # Replicas
//! A client host reaches the service through [`Clients`]: one client in
//! the single-server world, one per replica in the replicated world. There
//! each logical call goes to a replica picked from the host's own route
//! stream, and after a failure that leaves it safe to — the call certainly
//! was not applied, or it is pure, or it carries a request ID the store
//! deduplicates — the *same* logical call (same request ID) is tried on the
//! next replica, up to `failover_max` more: the retry that meets
//! deduplication's real problem, a duplicate at another replica. A
//! logical call's outcome merges its attempts': not-applied only when every
//! replica said so.

use std::{
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use abacus::{
    client::{CallError, Client, Delivery, IdGenerator, breaker::config::CALLER_CODES},
    trace::Outcome,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::Code;

use crate::{
    history::{Entry, History},
    scenario::{LIVENESS_BOUND, Scenario, ServerState},
    seed::derive_seed,
    world::Clients,
};

/// The register every client accumulates into when a scenario uses one.
pub const REGISTER: &str = "total";

/// What one client's workload did for one logical Accumulate.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalAccumulate {
    /// Client host.
    pub host: String,
    /// Register.
    pub register: String,
    /// Delta; unique per logical call across the run, so server `applied`
    /// events can be attributed to their logical call even without IDs.
    pub delta: f64,
    /// What the client saw.
    pub result: Result<f64, (tonic::Code, Outcome)>,
    /// When the client made the call (simulated time).
    pub called: Duration,
    /// When its answer (or its failure) came back.
    pub returned: Duration,
}

impl LogicalAccumulate {
    /// True when the call failed and the client cannot tell whether it was
    /// applied.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self.result, Err((_, Outcome::Unknown)))
    }
}

/// What one client's workload saw for one logical register read.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalRead {
    /// Client host.
    pub host: String,
    /// Register.
    pub register: String,
    /// The value, `Ok(None)` for a register that does not exist (NOT_FOUND),
    /// or the failure.
    pub result: Result<Option<f64>, tonic::Code>,
    /// When the client made the call (simulated time).
    pub called: Duration,
    /// When its answer (or its failure) came back.
    pub returned: Duration,
}

/// Every logical Accumulate and read of a run, in the order they ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcomes {
    /// Accumulates.
    pub accumulates: Vec<LogicalAccumulate>,
    /// Reads.
    pub reads: Vec<LogicalRead>,
}

/// What a client's workload noted: a wrong answer it caught, or where it
/// is.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A successful call answered something impossible.
    Wrong(Wrong),
    /// A logical call failed at one replica and goes on at another.
    Failover {
        /// The request ID (`""` for a call without one).
        request_id: String,
        /// The replica that failed.
        from: String,
        /// The replica tried next.
        to: String,
        /// How it failed there.
        code: Code,
        /// What that failure said about the request's effect.
        outcome: Outcome,
    },
    /// The client made all its workload calls.
    WorkloadDone,
    /// The client starts its liveness calls: every fault has stopped.
    LivenessPhase,
    /// Too few liveness calls succeeded within [`LIVENESS_BOUND`].
    LivenessFailed {
        /// Calls that succeeded.
        done: usize,
        /// Calls that had to.
        wanted: usize,
        /// The last failure, if any.
        last_error: Option<CallError>,
    },
}

/// A wrong answer the workload caught.
#[derive(Debug, Clone, PartialEq)]
pub enum Wrong {
    /// Two hedged copies of one Accumulate (same request ID) saw different
    /// values, or both saw a fresh execution.
    Hedged {
        /// The shared request ID.
        id: String,
        /// Value and replayed flag seen by the first copy.
        first: (f64, bool),
        /// Value and replayed flag seen by the second copy.
        second: (f64, bool),
    },
    /// `divide(1, 0)` succeeded.
    DivisionByZeroSucceeded,
    /// `add(a, b)` answered another number.
    Add {
        /// First operand.
        a: f64,
        /// Second operand.
        b: f64,
        /// What came back.
        got: f64,
    },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wrong(Wrong::Hedged { id, first, second }) => write!(
                f,
                "WRONG: hedged id={id}: ({}, replayed={}) vs ({}, replayed={}); both copies must see one execution",
                first.0, first.1, second.0, second.1
            ),
            Self::Wrong(Wrong::DivisionByZeroSucceeded) => {
                f.write_str("WRONG: divide(1, 0) succeeded")
            }
            Self::Wrong(Wrong::Add { a, b, got }) => write!(f, "WRONG: add({a}, {b}) = {got}"),
            Self::Failover {
                request_id,
                from,
                to,
                code,
                outcome,
            } => write!(
                f,
                "failover id={}: {from} failed {} [{outcome}], trying {to}",
                if request_id.is_empty() {
                    "-"
                } else {
                    request_id
                },
                abacus::error::code_name(*code)
            ),
            Self::WorkloadDone => f.write_str("workload done"),
            Self::LivenessPhase => f.write_str("liveness phase: faults stopped"),
            Self::LivenessFailed {
                done,
                wanted,
                last_error,
            } => {
                write!(
                    f,
                    "LIVENESS FAILED: {done} of {wanted} calls succeeded within {LIVENESS_BOUND:?} after faults stopped; last error: "
                )?;
                match last_error {
                    Some(e) => write!(f, "{e}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Simulated time since the start of the run.
fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// True when a logical call that failed with `e` may be sent to another
/// replica: not a caller error (the answer would be the same), and either
/// harmless to repeat (pure, certainly not applied, or deduplicated by its
/// request ID) or allowed to apply twice (at-least-once).
fn may_fail_over(e: &CallError, pure: bool, keyed: bool, mode: Delivery) -> bool {
    !CALLER_CODES.contains(&e.code)
        && (pure || keyed || e.outcome == Outcome::NotApplied || mode == Delivery::AtLeastOnce)
}

/// One client's sequence of logical calls, drawn from its own seeded RNG.
#[derive(Debug)]
pub struct Workload {
    host: String,
    index: usize,
    calls: usize,
    accumulate_share: f64,
    read_share: f64,
    registers: Vec<String>,
    think_ms: (u64, u64),
    invalid_share: f64,
    hedge: bool,
    mode: Delivery,
    ids: IdGenerator,
    liveness_calls: usize,
    /// Liveness calls go to the store too (replicated world, durable
    /// mode): writes and reads must recover, not only pure calls.
    liveness_uses_store: bool,
    heal_at: Duration,
    rng: ChaCha8Rng,
    /// Replica choice, a stream of its own so that it draws nothing when
    /// there is one server: the single-server scenarios replay as before.
    route: ChaCha8Rng,
    failover_max: usize,
    history: History,
    outcomes: Arc<Mutex<Outcomes>>,
}

impl Workload {
    /// The workload of client `host` (the `index`th, from 0) in the run of
    /// `seed`: it notes into `history` and lists its Accumulates and reads
    /// in `outcomes`.
    pub fn new(
        scenario: &Scenario,
        seed: u64,
        host: &str,
        index: usize,
        history: History,
        outcomes: Arc<Mutex<Outcomes>>,
    ) -> Self {
        let replicated = scenario.replicated();
        Self {
            host: host.to_owned(),
            index,
            calls: scenario.calls_per_client,
            accumulate_share: scenario.accumulate_share,
            read_share: scenario.read_share,
            registers: scenario.register_names(),
            think_ms: scenario.think_ms,
            hedge: scenario.hedge,
            mode: scenario.mode,
            ids: IdGenerator::seeded(derive_seed(seed, &format!("hedge-ids-{host}"))),
            invalid_share: scenario.invalid_share,
            liveness_calls: scenario.liveness_calls,
            liveness_uses_store: replicated.is_some()
                || matches!(scenario.server_state, ServerState::Disk { .. }),
            heal_at: scenario.heal_at(),
            rng: ChaCha8Rng::seed_from_u64(derive_seed(seed, &format!("workload-{host}"))),
            route: ChaCha8Rng::seed_from_u64(derive_seed(seed, &format!("route-{host}"))),
            failover_max: replicated.map_or(0, |r| r.failover_max),
            history,
            outcomes,
        }
    }

    fn note(&self, note: Note) {
        self.history.push(&self.host, Entry::Note(note));
    }

    fn outcomes(&self) -> std::sync::MutexGuard<'_, Outcomes> {
        self.outcomes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A register for the next call: drawn only when there are several.
    fn register(&mut self) -> String {
        let i = if self.registers.len() > 1 {
            self.rng.random_range(0..self.registers.len())
        } else {
            0
        };
        self.registers[i].clone()
    }

    /// Runs one logical call on the replica the route stream picks, then on
    /// the next ones while [`may_fail_over`] allows; returns the answer, or
    /// the last failure with the outcome merged over every attempt.
    async fn routed<T, Fut>(
        &mut self,
        clients: &Clients,
        pure: bool,
        request_id: &str,
        call: impl Fn(Client) -> Fut,
    ) -> Result<T, CallError>
    where
        Fut: Future<Output = Result<T, CallError>>,
    {
        let n = clients.len();
        let first = if n > 1 {
            self.route.random_range(0..n)
        } else {
            0
        };
        let tries = 1 + self.failover_max.min(n - 1);
        let mut outcome = Outcome::NotApplied;
        let mut k = 0;
        loop {
            let (endpoint, client) = clients.at(first + k);
            let mut e = match call(client.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            outcome = outcome.merge(e.outcome);
            k += 1;
            if k >= tries || !may_fail_over(&e, pure, !request_id.is_empty(), self.mode) {
                e.outcome = outcome;
                return Err(e);
            }
            self.note(Note::Failover {
                request_id: request_id.to_owned(),
                from: endpoint.to_owned(),
                to: clients.at(first + k).0.to_owned(),
                code: e.code,
                outcome: e.outcome,
            });
        }
    }

    /// One logical Accumulate, listed with its times and answer.
    async fn accumulate(
        &mut self,
        clients: &Clients,
        register: String,
        delta: f64,
    ) -> Result<(), CallError> {
        let called = sim_now();
        let result = if self.hedge {
            self.hedged(clients, &register, delta).await
        } else if clients.len() > 1 {
            // One request ID for the logical call, whichever replicas it
            // reaches (at-least-once and at-most-once send none).
            let id = if self.mode.attaches_request_ids() {
                self.ids.next_id()
            } else {
                String::new()
            };
            let (r, i) = (&register, &id);
            self.routed(clients, false, &id, move |c| async move {
                c.accumulate_with_id(r, delta, i).await
            })
            .await
        } else {
            let r = &register;
            self.routed(clients, false, "", move |c| async move {
                c.accumulate(r, delta).await
            })
            .await
        };
        let seen = match &result {
            Ok((v, _)) => Ok(*v),
            Err(e) => Err((e.code, e.outcome)),
        };
        let host = self.host.clone();
        self.outcomes().accumulates.push(LogicalAccumulate {
            host,
            register,
            delta,
            result: seen,
            called,
            returned: sim_now(),
        });
        result.map(drop)
    }

    /// One logical read, listed with its times and answer.
    async fn read(&mut self, clients: &Clients, register: String) -> Result<(), CallError> {
        let called = sim_now();
        let r = &register;
        let read = self
            .routed(clients, true, "", move |c| async move { c.get(r).await })
            .await;
        let (seen, result) = match read {
            Ok(v) => (Ok(Some(v)), Ok(())),
            Err(e) if e.code == Code::NotFound => (Ok(None), Ok(())),
            Err(e) => (Err(e.code), Err(e)),
        };
        let host = self.host.clone();
        self.outcomes().reads.push(LogicalRead {
            host,
            register,
            result: seen,
            called,
            returned: sim_now(),
        });
        result
    }

    /// Sends the same Accumulate twice at once under one request ID (a
    /// hedged request racing the original), to the first server: it must
    /// apply it once, and both copies must see the same value, at most one
    /// of them fresh (both may be replays when both first attempts timed
    /// out).
    async fn hedged(
        &mut self,
        clients: &Clients,
        register: &str,
        delta: f64,
    ) -> Result<(f64, bool), CallError> {
        let (_, client) = clients.at(0);
        let id = self.ids.next_id();
        let (a, b) = tokio::join!(
            client.accumulate_with_id(register, delta, &id),
            client.accumulate_with_id(register, delta, &id)
        );
        if let (Ok(first), Ok(second)) = (&a, &b)
            && (first.0 != second.0 || (!first.1 && !second.1))
        {
            self.note(Note::Wrong(Wrong::Hedged {
                id: id.clone(),
                first: *first,
                second: *second,
            }));
        }
        a.or(b)
    }

    /// Runs the workload, then the liveness phase if the scenario has one.
    pub async fn run(mut self, clients: &Clients) {
        for k in 0..self.calls {
            // Think time between calls (simulated), so that faults land in
            // the middle of the workload rather than after it.
            let think = self.rng.random_range(self.think_ms.0..=self.think_ms.1);
            tokio::time::sleep(Duration::from_millis(think)).await;
            if self.rng.random_bool(self.accumulate_share) {
                let register = self.register();
                let delta = (self.index * 1000 + k + 1) as f64;
                // Failures are listed with their outcome; the checks judge.
                let _ = self.accumulate(clients, register, delta).await;
            } else if self.read_share > 0.0 && self.rng.random_bool(self.read_share) {
                let register = self.register();
                let _ = self.read(clients, register).await;
            } else if self.rng.random_bool(self.invalid_share) {
                // Never valid: must fail INVALID_ARGUMENT without a retry.
                if self
                    .routed(
                        clients,
                        true,
                        "",
                        |c| async move { c.divide(1.0, 0.0).await },
                    )
                    .await
                    .is_ok()
                {
                    self.note(Note::Wrong(Wrong::DivisionByZeroSucceeded));
                }
            } else {
                let a = self.rng.random_range(0..100) as f64;
                let b = self.rng.random_range(0..100) as f64;
                if let Ok(got) = self
                    .routed(clients, true, "", |c| async move { c.add(a, b).await })
                    .await
                    && got != a + b
                {
                    self.note(Note::Wrong(Wrong::Add { a, b, got }));
                }
            }
        }
        self.note(Note::WorkloadDone);
        if self.liveness_calls > 0 {
            self.liveness(clients).await;
        }
    }

    /// Once every fault has stopped and the network settled: progress, not
    /// perfection. Calls may still fail while the client recovers (an empty
    /// retry budget, a breaker waiting to probe), but `liveness_calls` must
    /// succeed within [`LIVENESS_BOUND`]. In the replicated world they
    /// cycle through a pure call, an Accumulate and a read, so the store
    /// path must recover too (each Accumulate tried is a logical call of
    /// its own, with a delta of its own; deltas stay unique while a client
    /// makes fewer than 1,000 calls in all).
    async fn liveness(&mut self, clients: &Clients) {
        let now = sim_now();
        tokio::time::sleep(self.heal_at.saturating_sub(now)).await;
        self.note(Note::LivenessPhase);
        let start = tokio::time::Instant::now();
        let (mut done, mut tried, mut last_error) = (0, 0, None);
        while done < self.liveness_calls && start.elapsed() < LIVENESS_BOUND {
            tried += 1;
            let register = self.registers[done % self.registers.len()].clone();
            let result = match (self.liveness_uses_store, done % 3) {
                (true, 1) => {
                    // After every workload delta of this client (1..=calls).
                    let delta = (self.index * 1000 + self.calls + tried) as f64;
                    self.accumulate(clients, register, delta).await
                }
                (true, 2) => self.read(clients, register).await,
                _ => self
                    .routed(clients, true, "", |c| async move {
                        c.add(done as f64, 1.0).await
                    })
                    .await
                    .map(drop),
            };
            match result {
                Ok(()) => done += 1,
                Err(e) => {
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if done < self.liveness_calls {
            self.note(Note::LivenessFailed {
                done,
                wanted: self.liveness_calls,
                last_error,
            });
        }
    }
}
