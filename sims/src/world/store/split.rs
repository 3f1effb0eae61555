//! BROKEN on purpose, for a negative control: a store that commits an
//! `Accumulate`'s register update and its dedup record in **two**
//! transactions, a replica's round trip apart — the bug the one-transaction
//! rule prevents. A crash of the store, or the replica's connection
//! closing, between the two leaves an update without its record; the
//! retry then finds no record and applies the update again. The swarm must
//! catch it (`applied-once-per-request-id`).
//!
//! Built from two in-memory ledgers so that each half is the real thing:
//! `records` (dedup on) holds the claims and the records, and shadows the
//! registers only to compute the values it records; `data` (dedup off)
//! holds the registers every reader sees and reports every update.

use std::time::Duration;

use abacus::{
    error::ServiceError,
    server::DedupConfig,
    store::{
        self, AccumulateArgs, Accumulated, Backend, Begin, BoxFuture, Claim, Ledger, StatsView,
    },
    trace::{Event, EventSink},
};
use tokio::time::Instant;

use crate::{
    history::{Entry, History},
    world::store::{HOST, MemoryLedger},
};

/// Time between the two transactions: what a replica driving them would
/// spend on one round trip and its own work.
pub const GAP: Duration = Duration::from_millis(100);

/// Registers and records in two transactions (see the module doc).
#[derive(Debug)]
pub struct SplitLedger {
    records: MemoryLedger,
    data: MemoryLedger,
}

impl SplitLedger {
    /// An empty store reporting into `history` as the store host.
    pub fn new(dedup: DedupConfig, history: &History) -> Self {
        // The records ledger's own updates are bookkeeping, not applies:
        // only its dedup events reach the history.
        let h = history.clone();
        let records_events = EventSink::with_hook(move |e| {
            if !matches!(e, Event::Applied { .. }) {
                h.push(HOST, Entry::Event(e.clone()));
            }
        });
        Self {
            records: MemoryLedger::new(dedup.clone(), records_events),
            data: MemoryLedger::new(
                DedupConfig {
                    enabled: false,
                    ..dedup
                },
                history.sink(HOST),
            ),
        }
    }
}

/// A claim of the records ledger, committed in two steps.
#[derive(Debug)]
struct SplitClaim<'a> {
    ledger: &'a SplitLedger,
    args: &'a AccumulateArgs,
    record: Box<dyn Claim<'a> + 'a>,
}

impl<'a> Claim<'a> for SplitClaim<'a> {
    fn request_id(&self) -> &str {
        &self.args.request_id
    }

    fn commit(self: Box<Self>) -> BoxFuture<'a, Result<Accumulated, ServiceError>> {
        Box::pin(async move {
            // Transaction 1: the update, committed on its own.
            let applied = store::accumulate(&self.ledger.data, self.args, None).await;
            // A fault here (the store crashing, the replica's connection
            // closing) drops this future: the record is never written.
            tokio::time::sleep(GAP).await;
            // Transaction 2: the record.
            let _ = self.record.commit().await;
            applied
        })
    }
}

impl Ledger for SplitLedger {
    fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Begin<'a>, ServiceError>> {
        Box::pin(async move {
            Ok(match Ledger::begin(&self.records, args, deadline).await? {
                Begin::Replay(result) => Begin::Replay(result),
                Begin::Execute(record) => Begin::Execute(Box::new(SplitClaim {
                    ledger: self,
                    args,
                    record,
                })),
            })
        })
    }

    fn get<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>> {
        Ledger::get(&self.data, register, deadline)
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>> {
        Box::pin(async move {
            let records = self.records.stats();
            Ok(StatsView {
                applied: self.data.stats().applied,
                registers: self.data.stats().registers,
                ..records
            })
        })
    }

    fn backend(&self) -> Backend {
        Backend::Model
    }
}
