//! What writes the file in durable mode: group commit, failure, recovery.
//!
//! redb's API is blocking (an fsync per transaction), so the disk work runs
//! off tokio's scheduler, in one of two places:
//! - the **writer thread**, a dedicated OS thread that loops: wait for
//!   queued commits, write everything queued as one transaction, tell the
//!   ledger it is durable. Nothing waits on a timer to form a batch: while
//!   one fsync runs, the commits decided meanwhile queue up and form the
//!   next batch, so 64 concurrent callers share a few fsyncs;
//! - the **committing caller itself**, when the writer thread is idle (the
//!   ledger sees it parked) and the last batch held one commit (callers do
//!   not overlap): it writes its own commit inline, on its tokio worker,
//!   with no lock held (the runtime's other worker steals this one's queued
//!   tasks meanwhile). A lone caller thus pays its fsync and nothing else:
//!   no hand-off to a parked thread and back, each a wake-up that a busy
//!   two-core machine can delay by hundreds of microseconds.
//!   `block_in_place` would hand the worker's core to another thread: the
//!   same hand-off, measured no better.
//!
//! Both go through [`Writer::write_queued`] under one lock, the disk's, so
//! batches are taken and written strictly in commit order. That lock is a
//! std `Mutex` held across the fsync on purpose: it *is* the disk, and only
//! the writer thread ever blocks on it; a caller only `try_lock`s it and
//! hands over to the writer thread when it is taken, so no task ever waits
//! for another's fsync.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{
    store::{
        MemoryLedger,
        dedup::DedupConfig,
        journal::{Lead, Queue, Work},
    },
    trace::EventSink,
};

use super::{disk::DiskFaults, file::Durable, panics};

/// First pause between recovery attempts; doubled up to
/// [`RECOVERY_PAUSE_MAX`].
const RECOVERY_PAUSE_MIN: Duration = Duration::from_millis(20);

/// Longest pause between recovery attempts: how long a healed disk may go
/// unnoticed.
const RECOVERY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The file and what reopening it takes.
pub(super) struct Disk {
    /// The open file; `None` while broken.
    pub(super) durable: Option<Durable>,
    pub(super) dir: PathBuf,
    pub(super) faults: Arc<DiskFaults>,
    pub(super) dedup: DedupConfig,
    pub(super) events: EventSink,
}

/// See the module documentation.
pub(super) struct Writer {
    disk: Mutex<Disk>,
    /// The ledger it reports to; weak, because the ledger's journal holds
    /// this writer (as its [`Lead`]).
    memory: OnceLock<Weak<MemoryLedger>>,
    queue: Arc<Queue>,
    /// Commits in the last batch written. More than one means callers
    /// overlap: then batching on the writer thread serves them better than
    /// inline writes (each `block_in_place` moves a worker's tasks to
    /// another thread, worth it only to spare a lone caller its hand-offs).
    last_batch: AtomicUsize,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    pub(super) fn new(disk: Disk, queue: Arc<Queue>) -> Self {
        Self {
            disk: Mutex::new(disk),
            memory: OnceLock::new(),
            queue,
            last_batch: AtomicUsize::new(0),
        }
    }

    /// Connects the writer to the ledger it reports to (once).
    pub(super) fn report_to(&self, memory: &Arc<MemoryLedger>) {
        let _ = self.memory.set(Arc::downgrade(memory));
    }

    fn memory(&self) -> Option<Arc<MemoryLedger>> {
        self.memory.get().and_then(Weak::upgrade)
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A panic inside redb is caught (see `panics`); one elsewhere leaves
        // at worst a closed file, which the next writer reopens.
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: serves the queue until the ledger closes it.
    pub(super) fn run(&self) {
        loop {
            match self.queue.wait() {
                Work::Closed => {
                    // Whatever was queued last is written before the file
                    // closes.
                    let mut disk = self.lock();
                    self.write_queued(&mut disk);
                    return;
                }
                Work::Writes => {
                    let mut disk = self.lock();
                    if disk.durable.is_none() {
                        self.recover(&mut disk);
                    } else {
                        self.write_queued(&mut disk);
                    }
                }
            }
        }
    }

    /// Takes everything queued and writes it as one batch, then reports.
    /// A failure fails the batch and every commit decided so far, and
    /// closes the file: the writer thread reopens it.
    fn write_queued(&self, disk: &mut Disk) {
        let batch = self.queue.take();
        let Some(through) = batch.last().map(|w| w.seq) else {
            return;
        };
        let Some(memory) = self.memory() else { return };
        self.last_batch.store(batch.len(), Ordering::Relaxed);
        let started = std::time::Instant::now();
        let written = match &mut disk.durable {
            None => Err("the database is not open".to_owned()),
            Some(durable) => match panics::catch(|| durable.write_batch(&batch)) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(panic) => Err(format!("the storage engine panicked: {panic}")),
            },
        };
        match written {
            Ok(()) => {
                memory.synced_through(through);
                tracing::debug!(
                    commits = batch.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "durable batch"
                );
            }
            Err(why) => {
                // The engine's message names paths and internals: it goes
                // to the log, callers get a stable UNAVAILABLE.
                tracing::error!(
                    dir = %disk.dir.display(),
                    error = %why,
                    commits = batch.len(),
                    "durable write failed: the batch's fate is unknown; refusing register \
                     calls until the file is reopened and memory reloaded from it"
                );
                disk.durable = None;
                memory.sync_failed();
                // Decided before the failure, so failed with it already.
                self.queue.discard();
                self.queue.request_recovery();
            }
        }
    }

    /// Reopens the file and reloads memory from it, with backoff, until a
    /// probe write succeeds or the ledger closes.
    fn recover(&self, disk: &mut Disk) {
        let mut pause = RECOVERY_PAUSE_MIN;
        loop {
            match reopen(disk) {
                Ok((durable, registers, store)) => {
                    disk.durable = Some(durable);
                    if let Some(memory) = self.memory() {
                        memory.reloaded(registers, store);
                    }
                    tracing::warn!(dir = %disk.dir.display(), "durable store recovered: serving again");
                    return;
                }
                Err(why) => {
                    tracing::warn!(
                        dir = %disk.dir.display(),
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
}

/// Opens the file again and reads it back, then proves the disk takes
/// writes again.
fn reopen(
    disk: &Disk,
) -> Result<
    (
        Durable,
        crate::core::Registers,
        crate::store::dedup::DedupStore,
    ),
    String,
> {
    let attempt = || {
        let mut durable = Durable::open(&disk.dir, &disk.faults)?;
        let (registers, store) = super::load(&mut durable, &disk.dedup, &disk.events)?;
        // Reading is not enough: the disk may still refuse writes.
        durable.probe()?;
        Ok::<_, super::StorageError>((durable, registers, store))
    };
    match panics::catch(attempt) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(panic) => Err(format!("the storage engine panicked: {panic}")),
    }
}

impl Lead for Writer {
    fn lead(&self, always: bool) -> bool {
        if !always && self.last_batch.load(Ordering::Relaxed) > 1 {
            return false;
        }
        let Ok(mut disk) = self.disk.try_lock() else {
            // The writer thread is at the disk: it will see the queue.
            return false;
        };
        if disk.durable.is_none() {
            return false;
        }
        self.write_queued(&mut disk);
        // Commits queued while we wrote found the writer "busy" and woke
        // nobody: hand them to the writer thread, or mark it idle again.
        let more = self.queue.repark();
        drop(disk);
        if more {
            self.queue.wake();
        }
        true
    }
}
