//! What each client does: a sequence of logical calls drawn from its own
//! seeded stream (Accumulates with a delta unique in the run, sums it can
//! check, invalid divisions), optionally a liveness phase once every fault
//! has stopped. It notes what it sees as typed [`Note`]s the checker reads.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use abacus::{
    client::{CallError, Client, IdGenerator},
    trace::Outcome,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{
    history::{Entry, History},
    scenario::{LIVENESS_BOUND, Scenario},
    seed::derive_seed,
};

/// The register every client accumulates into.
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

/// What a client's workload noted: a wrong answer it caught, or where it
/// is.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A successful call answered something impossible.
    Wrong(Wrong),
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

/// One client's sequence of logical calls, drawn from its own seeded RNG.
#[derive(Debug)]
pub struct Workload {
    host: String,
    index: usize,
    calls: usize,
    accumulate_share: f64,
    think_ms: (u64, u64),
    invalid_share: f64,
    hedge: bool,
    ids: IdGenerator,
    liveness_calls: usize,
    heal_at: Duration,
    rng: ChaCha8Rng,
    history: History,
    accumulates: Arc<Mutex<Vec<LogicalAccumulate>>>,
}

impl Workload {
    /// The workload of client `host` (the `index`th, from 0) in the run of
    /// `seed`: it notes into `history` and lists its Accumulates in
    /// `accumulates`.
    pub fn new(
        scenario: &Scenario,
        seed: u64,
        host: &str,
        index: usize,
        history: History,
        accumulates: Arc<Mutex<Vec<LogicalAccumulate>>>,
    ) -> Self {
        Self {
            host: host.to_owned(),
            index,
            calls: scenario.calls_per_client,
            accumulate_share: scenario.accumulate_share,
            think_ms: scenario.think_ms,
            hedge: scenario.hedge,
            ids: IdGenerator::seeded(derive_seed(seed, &format!("hedge-ids-{host}"))),
            invalid_share: scenario.invalid_share,
            liveness_calls: scenario.liveness_calls,
            heal_at: scenario.heal_at(),
            rng: ChaCha8Rng::seed_from_u64(derive_seed(seed, &format!("workload-{host}"))),
            history,
            accumulates,
        }
    }

    fn note(&self, note: Note) {
        self.history.push(&self.host, Entry::Note(note));
    }

    /// Sends the same Accumulate twice at once under one request ID (a
    /// hedged request racing the original): the server must apply it once,
    /// and both copies must see the same value, at most one of them fresh
    /// (both may be replays when both first attempts timed out).
    async fn hedged(&mut self, client: &Client, delta: f64) -> Result<(f64, bool), CallError> {
        let id = self.ids.next_id();
        let (a, b) = tokio::join!(
            client.accumulate_with_id(REGISTER, delta, &id),
            client.accumulate_with_id(REGISTER, delta, &id)
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
    pub async fn run(mut self, client: &Client) {
        for k in 0..self.calls {
            // Think time between calls (simulated), so that faults land in
            // the middle of the workload rather than after it.
            let think = self.rng.random_range(self.think_ms.0..=self.think_ms.1);
            tokio::time::sleep(Duration::from_millis(think)).await;
            if self.rng.random_bool(self.accumulate_share) {
                let delta = (self.index * 1000 + k + 1) as f64;
                let called = sim_now();
                let result = if self.hedge {
                    self.hedged(client, delta).await
                } else {
                    client.accumulate(REGISTER, delta).await
                };
                let result = result
                    .map(|(v, _)| v)
                    .map_err(|e: CallError| (e.code, e.outcome));
                self.accumulates
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(LogicalAccumulate {
                        host: self.host.clone(),
                        register: REGISTER.into(),
                        delta,
                        result,
                        called,
                        returned: sim_now(),
                    });
            } else if self.rng.random_bool(self.invalid_share) {
                // Never valid: must fail INVALID_ARGUMENT without a retry.
                if client.divide(1.0, 0.0).await.is_ok() {
                    self.note(Note::Wrong(Wrong::DivisionByZeroSucceeded));
                }
            } else {
                let a = self.rng.random_range(0..100) as f64;
                let b = self.rng.random_range(0..100) as f64;
                if let Ok(got) = client.add(a, b).await
                    && got != a + b
                {
                    self.note(Note::Wrong(Wrong::Add { a, b, got }));
                }
            }
        }
        self.note(Note::WorkloadDone);
        if self.liveness_calls > 0 {
            self.liveness(client).await;
        }
    }

    /// Once every fault has stopped and the network settled: progress, not
    /// perfection. Calls may still fail while the client recovers (an empty
    /// retry budget, a breaker waiting to probe), but `liveness_calls` must
    /// succeed within [`LIVENESS_BOUND`].
    async fn liveness(&self, client: &Client) {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        tokio::time::sleep(self.heal_at.saturating_sub(now)).await;
        self.note(Note::LivenessPhase);
        let start = tokio::time::Instant::now();
        let (mut done, mut last_error) = (0, None);
        while done < self.liveness_calls && start.elapsed() < LIVENESS_BOUND {
            match client.add(done as f64, 1.0).await {
                Ok(_) => done += 1,
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
