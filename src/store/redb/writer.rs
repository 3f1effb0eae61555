//! The writer thread of durable mode: group commit, failure, recovery.
//!
//! One dedicated OS thread, because redb's API is blocking (an fsync per
//! transaction) and must stay off tokio's workers. It loops: take every
//! decided commit queued since the last batch, write them in one
//! transaction, and tell the ledger they are durable. Nothing waits on a
//! timer to form a batch: while one fsync runs, the commits decided
//! meanwhile queue up and form the next batch, so a lone caller pays one
//! fsync and 64 concurrent callers share a few.

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{
    store::{
        MemoryLedger,
        dedup::DedupConfig,
        journal::{Queue, Write},
    },
    trace::EventSink,
};

use super::{disk::DiskFaults, file::Durable};

/// First pause between recovery attempts; doubled up to
/// [`RECOVERY_PAUSE_MAX`].
const RECOVERY_PAUSE_MIN: Duration = Duration::from_millis(20);

/// Longest pause between recovery attempts: how long a healed disk may go
/// unnoticed.
const RECOVERY_PAUSE_MAX: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    /// The open file; `None` while broken.
    pub(super) durable: Option<Durable>,
    pub(super) dir: PathBuf,
    pub(super) faults: Arc<DiskFaults>,
    pub(super) dedup: DedupConfig,
    pub(super) events: EventSink,
    pub(super) memory: Arc<MemoryLedger>,
    pub(super) queue: Arc<Queue>,
}

impl Writer {
    pub(super) fn run(mut self) {
        while let Some(batch) = self.queue.take() {
            let Some(through) = batch.last().map(|w| w.seq) else {
                continue;
            };
            let started = std::time::Instant::now();
            match self.persist(&batch) {
                Ok(()) => {
                    self.memory.synced_through(through);
                    tracing::debug!(
                        commits = batch.len(),
                        micros = started.elapsed().as_micros() as u64,
                        "durable batch"
                    );
                }
                Err(why) => {
                    // The engine's message names paths and internals: it
                    // goes to the log, callers get a stable UNAVAILABLE.
                    tracing::error!(
                        dir = %self.dir.display(),
                        error = %why,
                        commits = batch.len(),
                        "durable write failed: the batch's fate is unknown; refusing register \
                         calls until the file is reopened and memory reloaded from it"
                    );
                    self.durable = None;
                    self.memory.sync_failed();
                    // Decided before the failure, so failed with it already.
                    self.queue.discard();
                    self.recover();
                }
            }
        }
    }

    /// Writes one batch; any error or panic of the engine is a failure.
    fn persist(&mut self, batch: &[Write]) -> Result<(), String> {
        let Some(durable) = &mut self.durable else {
            return Err("the database is not open".to_owned());
        };
        match super::panics::catch(|| durable.write_batch(batch)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(format!("the storage engine panicked: {panic}")),
        }
    }

    /// Reopens the file and reloads memory from it, with backoff, until a
    /// probe write succeeds or the ledger closes.
    fn recover(&mut self) {
        let mut pause = RECOVERY_PAUSE_MIN;
        loop {
            match self.reopen() {
                Ok((durable, registers, store)) => {
                    self.durable = Some(durable);
                    self.memory.reloaded(registers, store);
                    tracing::warn!(dir = %self.dir.display(), "durable store recovered: serving again");
                    return;
                }
                Err(why) => {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        error = %why,
                        retry_in_ms = pause.as_millis() as u64,
                        "durable store still unavailable"
                    );
                }
            }
            if self.queue.wait_closed(pause) {
                return;
            }
            pause = (pause * 2).min(RECOVERY_PAUSE_MAX);
        }
    }

    fn reopen(
        &self,
    ) -> Result<
        (
            Durable,
            crate::core::Registers,
            crate::store::dedup::DedupStore,
        ),
        String,
    > {
        let attempt = || {
            let mut durable = Durable::open(&self.dir, &self.faults)?;
            let (registers, store) = super::load(&mut durable, &self.dedup, &self.events)?;
            // Reading is not enough: the disk may still refuse writes.
            durable.probe()?;
            Ok::<_, super::StorageError>((durable, registers, store))
        };
        match super::panics::catch(attempt) {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(panic) => Err(format!("the storage engine panicked: {panic}")),
        }
    }
}
