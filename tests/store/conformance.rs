//! Conformance: the same seeded operation sequences against every backend
//! — memory (the reference), redb and PostgreSQL — through the `Ledger`
//! trait; every observation must be identical (`abacus::store::conformance`
//! holds the generator, the runner and the comparison).
//!
//! `CONFORMANCE_SEEDS=N` runs more seeds; `CONFORMANCE_SEED=S` replays one.
//! A failure prints the seed, the first differing operation and both
//! observations.

use std::time::Duration;

use abacus::{
    store::dedup::DedupConfig,
    store::{
        BoxFuture, Ledger, MemoryLedger,
        conformance::{self, Clock, Op, Seen},
        postgres::{ManualClock, PgConfig, PgLedger, RetentionClock},
        redb::RedbLedger,
    },
    trace::EventSink,
};

use crate::support::{pg, temp_dir::TempDir};

/// Operations per sequence.
const LEN: usize = 80;

/// tokio's paused clock (the in-memory and redb ledgers read it).
struct Paused;

impl Clock for Paused {
    fn advance(&self, by: Duration) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::advance(by))
    }
}

/// The PostgreSQL ledger's hand-moved clock.
struct Manual(ManualClock);

impl Clock for Manual {
    fn advance(&self, by: Duration) -> BoxFuture<'_, ()> {
        self.0.advance(by);
        Box::pin(std::future::ready(()))
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime")
}

fn real_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn memory(ops: &[Op], dedup: DedupConfig) -> Vec<Seen> {
    paused_runtime().block_on(async {
        let ledger = MemoryLedger::new(dedup, EventSink::default());
        conformance::run(&ledger, &Paused, ops).await
    })
}

fn redb(ops: &[Op], seed: u64) -> Vec<Seen> {
    let dir = TempDir::new(&format!("conformance-{seed}"));
    paused_runtime().block_on(async {
        let ledger = RedbLedger::open(conformance::limits(), EventSink::default(), dir.path())
            .expect("open redb in a temp dir");
        assert_eq!(ledger.backend(), abacus::store::Backend::Redb);
        conformance::run(&ledger, &Paused, ops).await
    })
}

fn postgres(ops: &[Op], db: &pg::TestDb) -> Vec<Seen> {
    real_runtime().block_on(async {
        let clock = ManualClock::new(1_000_000);
        let mut config = PgConfig::from_url(&db.url).expect("test URL");
        config.clock = RetentionClock::Manual(clock.clone());
        let ledger = PgLedger::connect(config, conformance::limits(), EventSink::default())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL ledger: {e}"));
        conformance::run(&ledger, &Manual(clock), ops).await
    })
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("CONFORMANCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("CONFORMANCE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    (0..n).collect()
}

fn check(backend: &str, seed: u64, ops: &[Op], expected: &[Seen], got: &[Seen]) {
    assert_eq!(expected.len(), got.len());
    if let Some(d) = conformance::compare(ops, expected, got) {
        panic!(
            "{backend} differs from memory, seed {seed}, {d}\n\
             replay: CONFORMANCE_SEED={seed} cargo test --test store conformance -- --nocapture"
        );
    }
}

#[test]
fn every_backend_observes_what_memory_observes() {
    // Checked before anything runs, so a missing server fails (or skips,
    // loudly) at once.
    let dbs: Option<Vec<pg::TestDb>> = real_runtime().block_on(async {
        let mut dbs = Vec::new();
        for _ in seeds() {
            dbs.push(pg::fresh_database("conformance").await?);
        }
        Some(dbs)
    });
    let mut reached = [false; 7];
    for (i, seed) in seeds().into_iter().enumerate() {
        let ops = conformance::generate_with_deletes(seed, LEN);
        let expected = memory(&ops, conformance::limits());
        // The sequences must reach the interesting paths, not only agree.
        for seen in &expected {
            match seen {
                Seen::Accumulated(Ok(a)) if a.replayed => reached[0] = true,
                Seen::Overlap { waited: true, .. } => reached[1] = true,
                Seen::Accumulated(Err(abacus::error::ServiceError::RequestIdReused { .. })) => {
                    reached[2] = true
                }
                Seen::Accumulated(Err(abacus::error::ServiceError::Calc(
                    abacus::error::CalcError::RegisterOverflow { .. },
                ))) => reached[3] = true,
                Seen::Deleted(Ok(Some(_))) => reached[4] = true,
                Seen::Accumulated(Err(abacus::error::ServiceError::Calc(
                    abacus::error::CalcError::RegisterQuota { .. },
                ))) => reached[5] = true,
                _ => {}
            }
        }
        // A repeat replayed after its register was deleted (and not
        // re-creating it).
        let mut deleted = std::collections::BTreeSet::new();
        for (op, seen) in ops.iter().zip(&expected) {
            match (op, seen) {
                (Op::Delete(r), Seen::Deleted(Ok(Some(_)))) => {
                    deleted.insert(r.clone());
                }
                (Op::Accumulate(c), Seen::Accumulated(Ok(a)))
                    if a.replayed && deleted.contains(&c.register) =>
                {
                    reached[6] = true;
                }
                (Op::Accumulate(_), Seen::Accumulated(Ok(a))) if a.replayed => {}
                (Op::Accumulate(c), Seen::Accumulated(Ok(_))) => {
                    deleted.remove(&c.register);
                }
                _ => {}
            }
        }
        check("redb", seed, &ops, &expected, &redb(&ops, seed));
        if let Some(dbs) = &dbs {
            check("postgres", seed, &ops, &expected, &postgres(&ops, &dbs[i]));
        }
    }
    if seeds().len() > 1 {
        assert_eq!(
            reached, [true; 7],
            "replay, join, reuse, overflow, delete, the register quota and a replay after a \
             delete must each be reached"
        );
    }
}

/// Negative control: a ledger that does not deduplicate must be caught.
#[test]
fn the_comparison_catches_a_ledger_without_dedup_or_with_other_retention() {
    let ops = conformance::generate_with_deletes(3, LEN);
    let expected = memory(&ops, conformance::limits());
    let broken = memory(
        &ops,
        DedupConfig {
            enabled: false,
            ..conformance::limits()
        },
    );
    let d = conformance::compare(&ops, &expected, &broken).expect("dedup off must differ");
    assert!(d.to_string().contains(&format!("operation #{}", d.index)));
    // And retention is exercised: a ledger that keeps records longer and
    // more of them answers some repeat differently.
    let hoarder = memory(
        &ops,
        DedupConfig {
            entries_max: 1000,
            ttl_ms: 3_600_000,
            ..conformance::limits()
        },
    );
    assert!(
        conformance::compare(&ops, &expected, &hoarder).is_some(),
        "the sequence never reaches a dead record"
    );
}
