//! Section 8: two replicas over one shared store. Replica A applies an
//! `Accumulate` and loses its response; the caller, not knowing whether it
//! was applied, sends the same request — same request ID — to replica B,
//! which finds A's commit in the shared store and replays it instead of
//! applying it again. Both replicas then read the same value.
//!
//! The store is one in-memory ledger both embedded replicas share (the
//! default), or a PostgreSQL database (`--store postgres://…`), which each
//! replica reaches through its own ledger and guard, as two `abacus serve`
//! processes would. The section sends one attempt to A, whatever
//! `--attempts` says, so that the retry is B's.

use std::{fmt, sync::Arc};

use super::{
    embedded::{Embedded, client, embedded_server_with, narrated_client},
    tally::{Count, Tally},
};
use crate::{
    client::{CallError, ClientConfig, IdGenerator, RetryConfig, request_id::os_seed},
    server::{FaultConfig, FaultSwitch, ServerConfig},
    store::{
        DedupConfig, Ledger, MemoryLedger,
        guard::{GuardConfig, GuardedLedger},
        postgres::{PgConfig, PgLedger},
    },
    trace::{EventSink, Outcome},
};

/// The register the section writes.
const REGISTER: &str = "shared";

/// What the replicas share.
#[derive(Debug, Clone)]
pub(super) enum SharedStore {
    /// One in-memory ledger in this process.
    Memory,
    /// A PostgreSQL database (boxed: the configuration is large, and the
    /// enum is passed around).
    Postgres(Box<PgConfig>),
}

impl SharedStore {
    /// `memory`, or a PostgreSQL URL: `--store`'s value.
    pub(super) fn parse(value: &str) -> Result<Self, String> {
        if value == "memory" {
            return Ok(Self::Memory);
        }
        PgConfig::from_url(value)
            .map(|c| Self::Postgres(Box::new(c)))
            .map_err(|e| format!("--store takes `memory` or a PostgreSQL URL: {e}"))
    }

    fn describe(&self) -> String {
        match self {
            Self::Memory => {
                "one in-memory store in this process (across processes: --store postgres://…)"
                    .to_owned()
            }
            Self::Postgres(config) => format!("PostgreSQL at {}", config.target()),
        }
    }

    /// The ledger of one replica: the shared memory ledger itself, or a
    /// guarded PostgreSQL ledger of its own, as `abacus serve` builds it.
    async fn ledger(&self, memory: &Arc<MemoryLedger>) -> Result<Arc<dyn Ledger>, String> {
        match self {
            Self::Memory => Ok(Arc::clone(memory) as Arc<dyn Ledger>),
            Self::Postgres(config) => {
                let ledger = PgLedger::connect(
                    (**config).clone(),
                    DedupConfig::default(),
                    EventSink::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
                let guarded = GuardedLedger::new(
                    Arc::new(ledger),
                    GuardConfig::default(),
                    EventSink::default(),
                    os_seed(),
                )
                .map_err(|e| e.to_string())?;
                Ok(Arc::new(guarded))
            }
        }
    }
}

/// Runs the section.
pub(super) async fn section(
    t: &mut Tally,
    seed: u64,
    policy: &ClientConfig,
    store: &SharedStore,
) -> std::io::Result<()> {
    println!("\n8. Two replicas over one shared store: a retry lands on the other replica");
    println!("   store: {}", store.describe());
    let memory = Arc::new(MemoryLedger::new(
        DedupConfig::default(),
        EventSink::default(),
    ));
    let (a, b) = match (store.ledger(&memory).await, store.ledger(&memory).await) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            t.count(Count::Surprise(format!("shared store: {e}")));
            return Ok(());
        }
    };
    // Replica A applies, then loses every response, until switched off.
    let lossy = FaultSwitch::default();
    let replica_a = embedded_server_with(
        ServerConfig {
            faults: FaultConfig {
                drop_after_apply_rate: 1.0,
                seed,
                ..FaultConfig::default()
            },
            fault_switch: lossy.clone(),
            ..ServerConfig::default()
        },
        a,
    )
    .await?;
    let replica_b = embedded_server_with(ServerConfig::default(), b).await?;
    println!(
        "   replica A ({}): applies, then loses every response (--drop-after-apply-rate 1)",
        replica_a.addr
    );
    println!("   replica B ({}): healthy", replica_b.addr);
    // A fresh ID per run against a database that keeps records between
    // runs; a seeded one in memory, so the transcript replays.
    let id = match store {
        SharedStore::Memory => IdGenerator::seeded(seed).next_id(),
        SharedStore::Postgres(_) => IdGenerator::os().next_id(),
    };
    let seen = observe(&replica_a, &replica_b, &lossy, &id, policy).await;
    let verdict = judge(&seen);
    println!("   => {verdict}");
    t.count(verdict.count());
    drop((replica_a, replica_b));
    Ok(())
}

/// Sends the increment to A, the same request to B, then reads both.
async fn observe(
    replica_a: &Embedded,
    replica_b: &Embedded,
    lossy: &FaultSwitch,
    id: &str,
    policy: &ClientConfig,
) -> Observed {
    let one_attempt = ClientConfig {
        retry: RetryConfig {
            attempts_max: 1,
            ..policy.retry.clone()
        },
        breaker: None,
        ..policy.clone()
    };
    let to_a = narrated_client(replica_a.addr, one_attempt);
    let to_b_config = ClientConfig {
        breaker: None,
        ..policy.clone()
    };
    let to_b = narrated_client(replica_b.addr, to_b_config.clone());
    // Reads are not the point: not narrated.
    let read_a = client(replica_a.addr, to_b_config.clone());
    let read_b = client(replica_b.addr, to_b_config);
    // Never written (always so in memory): it starts at zero.
    let before = read_b.get(REGISTER).await.unwrap_or(0.0);
    println!("   accumulate({REGISTER}, 1) id={id} -> replica A");
    let first = to_a.accumulate_with_id(REGISTER, 1.0, id).await;
    match &first {
        Ok((v, _)) => println!("     ok -> {v}"),
        Err(e) => println!("     {e}"),
    }
    println!("   the same request, same id -> replica B");
    let retry = to_b.accumulate_with_id(REGISTER, 1.0, id).await;
    match &retry {
        Ok((v, replayed)) => println!(
            "     ok -> {v}{}",
            if *replayed {
                " (replayed: the record replica A committed to the shared store)"
            } else {
                ""
            }
        ),
        Err(e) => println!("     {e}"),
    }
    lossy.turn_off();
    let reads = [read_a.get(REGISTER).await, read_b.get(REGISTER).await];
    for (name, read) in ["A", "B"].iter().zip(&reads) {
        match read {
            Ok(v) => println!("   get({REGISTER}) on replica {name} = {v}"),
            Err(e) => println!("   get({REGISTER}) on replica {name}: {e}"),
        }
    }
    Observed {
        before,
        first,
        retry,
        reads,
    }
}

/// What the section saw.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Observed {
    /// The register's value before the section (0 when new).
    pub(super) before: f64,
    /// A's answer: its response is lost, so an unknown outcome.
    pub(super) first: Result<(f64, bool), CallError>,
    /// B's answer to the same request.
    pub(super) retry: Result<(f64, bool), CallError>,
    /// The register read on A, then on B.
    pub(super) reads: [Result<f64, CallError>; 2],
}

/// Whether the section showed its point.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    /// B replayed A's commit; both replicas read the value applied once.
    ReplayedOnce {
        /// The register's value.
        value: f64,
    },
    /// A answered after all: its fault did not fire.
    FirstAnswered,
    /// A's failure claimed more than it knew (not applied, though A applies
    /// before it loses the response).
    FirstMisreported(CallError),
    /// B applied the request again.
    AppliedTwice {
        /// The value B reported.
        value: f64,
    },
    /// B's answer was not the once-applied value.
    WrongValue {
        /// What B said.
        value: f64,
    },
    /// B failed.
    RetryFailed(CallError),
    /// A replica read something else, or failed to read.
    ReadsDisagree,
}

impl Verdict {
    fn count(&self) -> Count {
        match self {
            Self::ReplayedOnce { .. } => Count::Ok,
            other => Count::Surprise(format!("shared store: {other}")),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReplayedOnce { value } => write!(
                f,
                "applied once across two replicas: B replayed A's commit instead of applying it again; both read {value}"
            ),
            Self::FirstAnswered => {
                f.write_str("replica A answered, though it loses every response")
            }
            Self::FirstMisreported(e) => {
                write!(
                    f,
                    "replica A's lost response was reported as {e}, not as an unknown outcome"
                )
            }
            Self::AppliedTwice { value } => {
                write!(
                    f,
                    "APPLIED TWICE: replica B executed the retry again (-> {value})"
                )
            }
            Self::WrongValue { value } => {
                write!(f, "replica B answered {value}, not the value applied once")
            }
            Self::RetryFailed(e) => write!(f, "the retry on replica B failed: {e}"),
            Self::ReadsDisagree => f.write_str("the replicas do not read the value applied once"),
        }
    }
}

/// Judges the section from what it saw.
pub(super) fn judge(seen: &Observed) -> Verdict {
    let once = seen.before + 1.0;
    match &seen.first {
        Ok(_) => return Verdict::FirstAnswered,
        Err(e) if e.outcome != Outcome::Unknown => return Verdict::FirstMisreported(e.clone()),
        Err(_) => {}
    }
    let value = match &seen.retry {
        Err(e) => return Verdict::RetryFailed(e.clone()),
        Ok((value, false)) => return Verdict::AppliedTwice { value: *value },
        Ok((value, true)) if *value != once => return Verdict::WrongValue { value: *value },
        Ok((value, true)) => *value,
    };
    if seen.reads.iter().all(|r| r.as_ref() == Ok(&once)) {
        Verdict::ReplayedOnce { value }
    } else {
        Verdict::ReadsDisagree
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::client::Cause;

    fn unknown() -> CallError {
        CallError::new(
            Code::Unavailable,
            "connection lost before the response was sent",
            Cause::Status,
            Outcome::Unknown,
        )
    }

    fn seen() -> Observed {
        Observed {
            before: 2.0,
            first: Err(unknown()),
            retry: Ok((3.0, true)),
            reads: [Ok(3.0), Ok(3.0)],
        }
    }

    #[test]
    fn the_verdict_needs_a_lost_answer_a_replay_and_agreeing_reads() {
        assert_eq!(judge(&seen()), Verdict::ReplayedOnce { value: 3.0 });
        let check = |change: fn(&mut Observed), want: Verdict| {
            let mut s = seen();
            change(&mut s);
            assert_eq!(judge(&s), want);
            assert!(matches!(want.count(), Count::Surprise(_)), "{want}");
        };
        check(|s| s.first = Ok((3.0, false)), Verdict::FirstAnswered);
        check(
            |s| {
                s.first = Err(CallError::new(
                    Code::Unavailable,
                    "x",
                    Cause::Status,
                    Outcome::NotApplied,
                ))
            },
            Verdict::FirstMisreported(CallError::new(
                Code::Unavailable,
                "x",
                Cause::Status,
                Outcome::NotApplied,
            )),
        );
        check(
            |s| s.retry = Ok((4.0, false)),
            Verdict::AppliedTwice { value: 4.0 },
        );
        check(
            |s| s.retry = Ok((4.0, true)),
            Verdict::WrongValue { value: 4.0 },
        );
        check(
            |s| s.retry = Err(unknown()),
            Verdict::RetryFailed(unknown()),
        );
        check(|s| s.reads[0] = Ok(2.0), Verdict::ReadsDisagree);
    }
}
