//! Differential testing of [`Ledger`] backends: one seeded generator of
//! operation sequences, one runner that plays a sequence against any
//! ledger and records what it observed, and one comparison that names the
//! first operation where two ledgers differ.
//!
//! The in-memory ledger is the reference: every other backend (redb,
//! PostgreSQL, the simulation's model) must observe exactly what it
//! observes. `tests/store/conformance.rs` runs memory, redb and PostgreSQL;
//! the simulation can call [`generate`], [`run`] and [`compare`] on its
//! model the same way.
//!
//! # What a sequence exercises
//! Fresh IDs, repeats (replayed), IDs reused with another payload
//! (refused), requests without an ID, invalid IDs and payloads, claims
//! abandoned before commit, duplicates arriving while the first execution
//! holds its claim (then committed, abandoned, or outlasted by the
//! duplicate's deadline), register overflow (recorded and replayed), reads
//! of missing registers, and time passing beyond the TTL and records beyond
//! `entries_max` (see [`limits`]), deletes (of registers that exist and do
//! not; a repeat of a call applied before its register was deleted must
//! replay, not re-create it) and the per-client register quota.
//!
//! # Time
//! The runner never sleeps. [`Op::Advance`] moves the ledger's retention
//! clock through a [`Clock`] the caller supplies: tokio's paused clock for
//! the in-memory ledger, a hand-moved clock for PostgreSQL. A duplicate's
//! deadline is 1 ms (the only real wait), and advances are sums of 400 and
//! 1100 ms against a 1000 ms TTL, so no record's age ever lands within a
//! few milliseconds of the TTL and real-time jitter cannot decide an
//! outcome.

use std::{fmt, future::Future, pin::pin, task::Poll, time::Duration};

use rand::{Rng, SeedableRng, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

use crate::{
    error::ServiceError,
    store::dedup::DedupConfig,
    store::{AccumulateArgs, Accumulated, Begin, BoxFuture, Ledger},
};

/// The dedup limits every backend runs with: small enough that sequences
/// reach both eviction rules, and a register quota of 2 of the 3 registers
/// sequences use, so creating the third is refused until one is deleted.
pub fn limits() -> DedupConfig {
    DedupConfig {
        entries_max: 6,
        ttl_ms: TTL_MS,
        registers_per_client_max: 2,
        ..DedupConfig::default()
    }
}

const TTL_MS: u64 = 1000;

/// One `Accumulate` call's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Register name.
    pub register: String,
    /// Amount.
    pub delta: f64,
    /// Request ID (empty for none).
    pub request_id: String,
}

impl Call {
    fn args(&self) -> AccumulateArgs {
        AccumulateArgs {
            register: self.register.clone(),
            delta: self.delta,
            request_id: self.request_id.clone(),
            caller: Default::default(),
        }
    }
}

/// How a claim held while a duplicate arrives ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The first execution commits; the duplicate then replays it.
    Commit,
    /// The first execution fails before applying; the duplicate takes over.
    Abandon,
    /// The duplicate's deadline (1 ms) passes first; then the first commits.
    DuplicateTimesOut,
}

/// One step of a sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `begin` then `commit`.
    Accumulate(Call),
    /// `begin`, then drop the claim (a failure before applying).
    Abandon(Call),
    /// `first` claims; `second` begins while the claim is held; `ending`.
    Overlap {
        /// Holds the claim.
        first: Call,
        /// Arrives meanwhile (same ID; same or another payload).
        second: Call,
        /// What happens to the claim.
        ending: Ending,
    },
    /// Read a register.
    Get(String),
    /// Delete a register.
    Delete(String),
    /// Move the retention clock.
    Advance(Duration),
    /// Read the counters.
    Stats,
}

/// What one step observed. Compared with `==`, so every backend must give
/// the same values, errors and messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A whole `Accumulate`.
    Accumulated(Result<Accumulated, ServiceError>),
    /// A `begin` whose claim was then dropped: `Ok(None)` for a claim.
    Abandoned(Result<Option<Result<Accumulated, ServiceError>>, ServiceError>),
    /// An overlap: the first call's and the duplicate's results, and
    /// whether the duplicate was still waiting when the first one ended.
    Overlap {
        /// The first call, to its end (`None`: its claim was dropped).
        first: Option<Result<Accumulated, ServiceError>>,
        /// The duplicate, to its end.
        second: Result<Accumulated, ServiceError>,
        /// True when the duplicate had to wait.
        waited: bool,
    },
    /// A read.
    Get(Result<f64, ServiceError>),
    /// A delete: the register's last value, `None` if it did not exist.
    Deleted(Result<Option<f64>, ServiceError>),
    /// The clock moved.
    Advanced,
    /// The counters every backend keeps the same way. (`dedup_entries` and
    /// `dedup_evictions` are left out: memory counts lazily, PostgreSQL's
    /// sweeper physically; lookups agree either way.)
    Stats {
        /// Updates applied.
        applied: u64,
        /// Registers held.
        registers: u64,
        /// Replays.
        hits: u64,
        /// Reused IDs refused.
        mismatches: u64,
        /// Claims held.
        in_flight: u64,
    },
    /// `stats` failed.
    StatsFailed(ServiceError),
}

/// Moves a ledger's retention clock (see the module doc).
pub trait Clock {
    /// Moves it forward by `by`.
    fn advance(&self, by: Duration) -> BoxFuture<'_, ()>;
}

/// A seeded sequence of `len` operations, without deletes: what every
/// backend answers, the simulation's model of a store included (it cannot
/// delete). The same sequences as before deletes existed.
pub fn generate(seed: u64, len: usize) -> Vec<Op> {
    generate_ops(seed, len, false)
}

/// A seeded sequence of `len` operations, deletes included (each followed,
/// half the time, by a repeat of the latest call into the register just
/// deleted): for the backends that delete (memory, redb, PostgreSQL).
pub fn generate_with_deletes(seed: u64, len: usize) -> Vec<Op> {
    generate_ops(seed, len, true)
}

fn generate_ops(seed: u64, len: usize, deletes: bool) -> Vec<Op> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ids: Vec<Call> = Vec::new();
    let mut next_id = 0u32;
    let registers = ["a", "b", "c"];
    let mut ops = Vec::with_capacity(len);
    let mut fresh = |rng: &mut ChaCha8Rng| -> Call {
        next_id += 1;
        let register = (*registers.choose(rng).unwrap_or(&"a")).to_owned();
        let delta = match rng.random_range(0..20) {
            // Near the top of f64: overflows once a register is big.
            0 | 1 => f64::MAX / 1.5,
            2 => -f64::MAX / 1.5,
            _ => f64::from(rng.random_range(-5i32..=9)),
        };
        Call {
            register,
            delta,
            request_id: format!("id-{next_id}"),
        }
    };
    // A repeat of the latest call into a register just deleted: it must
    // replay, not re-create the register.
    let mut after_delete: Option<Call> = None;
    while ops.len() < len {
        if let Some(call) = after_delete.take() {
            ops.push(Op::Accumulate(call));
            continue;
        }
        let roll = rng.random_range(0..100);
        let op = match roll {
            0..=29 => {
                let call = fresh(&mut rng);
                ids.push(call.clone());
                Op::Accumulate(call)
            }
            // A repeat of an earlier call: replayed, or applied again if
            // its record died.
            30..=44 if !ids.is_empty() => Op::Accumulate(pick(&mut rng, &ids)),
            // The same ID with another payload.
            45..=49 if !ids.is_empty() => {
                let mut call = pick(&mut rng, &ids);
                call.delta += 1.0;
                Op::Accumulate(call)
            }
            50..=53 => {
                let mut call = fresh(&mut rng);
                call.request_id.clear();
                Op::Accumulate(call)
            }
            54 => {
                let mut call = fresh(&mut rng);
                call.request_id = "bad\u{7}id".into();
                Op::Accumulate(call)
            }
            55 => {
                let mut call = fresh(&mut rng);
                if rng.random_bool(0.5) {
                    call.register.clear();
                } else {
                    // Not NaN: observations compare with ==, and NaN != NaN.
                    call.delta = f64::INFINITY;
                }
                Op::Accumulate(call)
            }
            56..=61 => {
                let call = fresh(&mut rng);
                ids.push(call.clone());
                Op::Abandon(call)
            }
            62..=73 => {
                let first = if !ids.is_empty() && rng.random_bool(0.2) {
                    pick(&mut rng, &ids)
                } else {
                    let call = fresh(&mut rng);
                    ids.push(call.clone());
                    call
                };
                let mut second = first.clone();
                if rng.random_bool(0.25) {
                    second.delta += 1.0;
                }
                let ending = *[Ending::Commit, Ending::Abandon, Ending::DuplicateTimesOut]
                    .choose(&mut rng)
                    .unwrap_or(&Ending::Commit);
                Op::Overlap {
                    first,
                    second,
                    ending,
                }
            }
            74..=83 => {
                let register = if rng.random_bool(0.2) {
                    format!("missing-{}", rng.random_range(0..3))
                } else {
                    (*registers.choose(&mut rng).unwrap_or(&"a")).to_owned()
                };
                Op::Get(register)
            }
            84..=91 => Op::Advance(Duration::from_millis(if rng.random_bool(0.7) {
                400
            } else {
                1100
            })),
            92..=95 => Op::Stats,
            96..=98 if deletes => {
                let register = if rng.random_bool(0.2) {
                    "missing-0".to_owned()
                } else {
                    (*registers.choose(&mut rng).unwrap_or(&"a")).to_owned()
                };
                if rng.random_bool(0.5) {
                    after_delete = ids.iter().rev().find(|c| c.register == register).cloned();
                }
                Op::Delete(register)
            }
            _ => continue,
        };
        ops.push(op);
    }
    ops
}

fn pick(rng: &mut ChaCha8Rng, ids: &[Call]) -> Call {
    ids.choose(rng).cloned().unwrap_or(Call {
        register: "a".into(),
        delta: 1.0,
        request_id: "id-0".into(),
    })
}

/// Plays `ops` against `ledger`, one observation per operation.
pub async fn run(ledger: &dyn Ledger, clock: &dyn Clock, ops: &[Op]) -> Vec<Seen> {
    let mut seen = Vec::with_capacity(ops.len());
    for op in ops {
        seen.push(step(ledger, clock, op).await);
    }
    seen
}

async fn finish(begin: Result<Begin<'_>, ServiceError>) -> Result<Accumulated, ServiceError> {
    match begin? {
        Begin::Replay(result) => result,
        Begin::Execute(claim) => claim.commit().await,
    }
}

async fn step(ledger: &dyn Ledger, clock: &dyn Clock, op: &Op) -> Seen {
    match op {
        Op::Accumulate(call) => {
            let args = call.args();
            Seen::Accumulated(finish(ledger.begin(&args, None).await).await)
        }
        Op::Abandon(call) => {
            let args = call.args();
            Seen::Abandoned(ledger.begin(&args, None).await.map(|begin| match begin {
                Begin::Replay(result) => Some(result),
                Begin::Execute(claim) => {
                    drop(claim);
                    None
                }
            }))
        }
        Op::Overlap {
            first,
            second,
            ending,
        } => overlap(ledger, first, second, *ending).await,
        Op::Get(register) => Seen::Get(ledger.get(register, None).await),
        Op::Delete(register) => Seen::Deleted(ledger.delete(register, None).await),
        Op::Advance(by) => {
            clock.advance(*by).await;
            Seen::Advanced
        }
        Op::Stats => match ledger.stats().await {
            Ok(s) => Seen::Stats {
                applied: s.applied,
                registers: s.registers,
                hits: s.dedup_hits,
                mismatches: s.dedup_mismatches,
                in_flight: s.dedup_in_flight,
            },
            Err(e) => Seen::StatsFailed(e),
        },
    }
}

async fn overlap(ledger: &dyn Ledger, first: &Call, second: &Call, ending: Ending) -> Seen {
    let (a1, a2) = (first.args(), second.args());
    let claim = match ledger.begin(&a1, None).await {
        Ok(Begin::Execute(claim)) => claim,
        // Already recorded (or refused): no overlap to be had, but the
        // duplicate's answer is still compared.
        other => {
            let first = Some(finish(other).await);
            let second = finish(ledger.begin(&a2, None).await).await;
            return Seen::Overlap {
                first,
                second,
                waited: false,
            };
        }
    };
    let deadline = match ending {
        Ending::DuplicateTimesOut => Some(Instant::now() + Duration::from_millis(1)),
        _ => None,
    };
    let mut dup = pin!(ledger.begin(&a2, deadline));
    // One poll: a duplicate of a claim in flight must be waiting now (no
    // backend may need I/O to notice a claim of its own process).
    let early = std::future::poll_fn(|cx| Poll::Ready(dup.as_mut().poll(cx))).await;
    let waited = early.is_pending();
    let second = match early {
        Poll::Ready(begin) => Some(finish(begin).await),
        Poll::Pending => None,
    };
    // The duplicate's deadline passes while the claim is held.
    let second = match (second, ending) {
        (None, Ending::DuplicateTimesOut) => Some(finish(dup.as_mut().await).await),
        (second, _) => second,
    };
    let first = match ending {
        Ending::Commit | Ending::DuplicateTimesOut => Some(claim.commit().await),
        Ending::Abandon => {
            drop(claim);
            None
        }
    };
    let second = match second {
        Some(second) => second,
        None => finish(dup.await).await,
    };
    Seen::Overlap {
        first,
        second,
        waited,
    }
}

/// Where two runs of one sequence first differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// Index of the operation.
    pub index: usize,
    /// The operation.
    pub op: Op,
    /// What the reference observed.
    pub expected: Seen,
    /// What the other backend observed.
    pub got: Seen,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "operation #{}: {:?}\n  reference (memory): {:?}\n  this backend:       {:?}",
            self.index, self.op, self.expected, self.got
        )
    }
}

/// The first operation where `got` differs from `expected`, if any.
pub fn compare(ops: &[Op], expected: &[Seen], got: &[Seen]) -> Option<Divergence> {
    ops.iter()
        .zip(expected.iter().zip(got))
        .enumerate()
        .find(|(_, (_, (e, g)))| e != g)
        .map(|(index, (op, (e, g)))| Divergence {
            index,
            op: op.clone(),
            expected: e.clone(),
            got: g.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_seeded_and_cover_every_kind() {
        assert!(!generate(7, 300).iter().any(|o| matches!(o, Op::Delete(_))));
        let a = generate_with_deletes(7, 300);
        assert_eq!(a, generate_with_deletes(7, 300), "same seed, same sequence");
        assert_ne!(a, generate_with_deletes(8, 300));
        let has = |f: fn(&Op) -> bool| a.iter().any(f);
        assert!(has(
            |o| matches!(o, Op::Accumulate(c) if c.request_id.is_empty())
        ));
        assert!(has(|o| matches!(o, Op::Abandon(_))));
        assert!(has(
            |o| matches!(o, Op::Overlap { first, second, .. } if first != second)
        ));
        assert!(has(|o| matches!(
            o,
            Op::Overlap {
                ending: Ending::DuplicateTimesOut,
                ..
            }
        )));
        assert!(has(
            |o| matches!(o, Op::Advance(d) if d.as_millis() > u128::from(TTL_MS))
        ));
        assert!(has(|o| matches!(o, Op::Get(r) if r.starts_with("missing"))));
        assert!(has(
            |o| matches!(o, Op::Delete(r) if !r.starts_with("missing"))
        ));
    }

    #[test]
    fn a_divergence_names_the_first_differing_operation() {
        let ops = generate(1, 3);
        let same = vec![Seen::Advanced; 3];
        assert_eq!(compare(&ops, &same, &same), None);
        let mut other = same.clone();
        other[1] = Seen::Get(Ok(1.0));
        other[2] = Seen::Get(Ok(2.0));
        let d = compare(&ops, &same, &other).expect("they differ");
        assert_eq!(d.index, 1);
        assert!(d.to_string().contains("operation #1"), "{d}");
    }
}
