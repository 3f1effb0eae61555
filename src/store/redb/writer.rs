//! What writes the file in durable mode: group commit, failure, recovery.
//!
//! redb's API is blocking (an fsync per transaction), so the disk work runs
//! off tokio's scheduler, in one of two places:
//! - the **writer thread**, a dedicated OS thread: asked to write, it
//!   takes everything queued as one batch, writes it as one transaction,
//!   tells the ledger it is durable, and writes what queued meanwhile at
//!   once (see [`Queue`] for when batches are written);
//! - the **committing caller itself**, when its kick fires and its commit
//!   is the only one queued (callers do not overlap): it writes it inline,
//!   on its tokio worker, with no lock held (the runtime's other worker
//!   steals this one's queued tasks meanwhile). A lone caller thus pays
//!   its fsync and nothing else: no hand-off to a parked thread and back,
//!   each a wake-up that a busy two-core machine can delay by hundreds of
//!   microseconds. `block_in_place` would hand the worker's core to
//!   another thread: the same hand-off, measured no better.
//!
//! Both go through [`Writer::write_queued`] under one lock, the disk's, so
//! batches are taken and written strictly in commit order. That lock is a
//! std `Mutex` held across the fsync on purpose: it *is* the disk, and only
//! the writer thread ever blocks on it; a caller only `try_lock`s it and
//! hands over to the writer thread when it is taken, so no task ever waits
//! for another's fsync. A batch's log line is written after the lock is
//! released.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::{
    store::{
        MemoryLedger,
        dedup::DedupConfig,
        journal::{Lead, Next, Queue, Work},
    },
    trace::EventSink,
};

use super::{LoadReport, Opened, Place, file::Durable, panics};

/// First pause between recovery attempts; doubled up to
/// [`RECOVERY_PAUSE_MAX`].
pub(super) const RECOVERY_PAUSE_MIN: Duration = Duration::from_millis(20);

/// Longest pause between recovery attempts: how long a healed disk may go
/// unnoticed.
const RECOVERY_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The file and what reopening it takes.
pub(super) struct Disk {
    /// The open file; `None` while broken.
    pub(super) durable: Option<Durable>,
    pub(super) place: Place,
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
    /// Batches and commits written, for [`WriteStats`].
    batches: AtomicU64,
    commits: AtomicU64,
    /// Time spent writing them, in nanoseconds, for [`WriteStats`].
    busy: AtomicU64,
}

/// How many commits shared each transaction (and fsync) so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Transactions written.
    pub batches: u64,
    /// Commits written in them.
    pub commits: u64,
    /// Time spent writing them (transactions and fsyncs), in nanoseconds:
    /// against the wall time, how much of it the disk was being written.
    pub busy_nanos: u64,
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
            batches: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// How many commits shared each transaction so far.
    pub(super) fn stats(&self) -> WriteStats {
        WriteStats {
            batches: self.batches.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            busy_nanos: self.busy.load(Ordering::Relaxed),
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
    pub(super) fn run(self: Arc<Self>) {
        loop {
            match self.queue.wait() {
                Work::Closed => return,
                Work::Writes => loop {
                    let mut disk = self.lock();
                    if disk.durable.is_none() {
                        drop(disk);
                        self.recover();
                    } else {
                        let wrote = self.write_queued(&mut disk);
                        drop(disk);
                        wrote.log();
                    }
                    match self.queue.after_batch() {
                        Next::Wait => break,
                        Next::Write => continue,
                    }
                },
            }
        }
    }

    /// Takes everything queued and writes it as one batch, then reports to
    /// the ledger; what happened is for the caller to log once the disk's
    /// lock is released. A failure fails the batch and every commit decided
    /// so far, and closes the file: the writer thread reopens it.
    fn write_queued(&self, disk: &mut Disk) -> Wrote {
        let batch = self.queue.take();
        let Some(through) = batch.last().map(|w| w.seq) else {
            return Wrote::Nothing;
        };
        let Some(memory) = self.memory() else {
            return Wrote::Nothing;
        };
        let started = std::time::Instant::now();
        let written = match &mut disk.durable {
            None => Err("the database is not open".to_owned()),
            Some(durable) => match panics::catch(|| durable.write_batch(&batch)) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(panic) => Err(format!("the storage engine panicked: {panic}")),
            },
        };
        let commits = batch.len();
        match written {
            Ok(()) => {
                let took = started.elapsed();
                self.queue.wrote(commits, took);
                self.batches.fetch_add(1, Ordering::Relaxed);
                self.commits.fetch_add(commits as u64, Ordering::Relaxed);
                self.busy
                    .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
                memory.synced_through(through);
                Wrote::Durable { commits, took }
            }
            Err(error) => {
                // Fenced first: after a panic inside a commit, redb's
                // `Drop` would commit again from the half-done state
                // (`fence.rs`). Closed inside `catch` too: closing can
                // panic (a lock redb left poisoned).
                let broken = disk.durable.take();
                if let Some(broken) = &broken {
                    broken.fence();
                }
                let _ = panics::catch(move || drop(broken));
                memory.sync_failed();
                // Decided before the failure, so failed with it already.
                self.queue.discard();
                self.queue.request_recovery();
                Wrote::Failed {
                    dir: disk.place.dir.clone(),
                    error,
                    commits,
                }
            }
        }
    }

    /// Reopens the file and reloads memory from it, with backoff, until a
    /// probe write succeeds or the ledger closes.
    /// The disk's lock is taken for each attempt only, and the attempt is
    /// logged after it is released, as a batch is.
    fn recover(&self) {
        let mut pause = RECOVERY_PAUSE_MIN;
        loop {
            let recovered = self.try_recover(&mut self.lock(), pause);
            if recovered.log() || self.queue.wait_closed(pause) {
                return;
            }
            pause = next_pause(pause);
        }
    }

    /// One recovery attempt (`pause`, the wait before the next attempt, is
    /// for the log).
    fn try_recover(&self, disk: &mut Disk, pause: Duration) -> Recovered {
        let dir = disk.place.dir.clone();
        match reopen(disk) {
            Ok(Opened {
                durable,
                registers,
                store,
                report,
            }) => {
                disk.durable = Some(durable);
                if let Some(memory) = self.memory() {
                    memory.reloaded(registers, store);
                }
                Recovered::Serving { dir, report }
            }
            Err(error) => Recovered::Not { dir, error, pause },
        }
    }

    /// Without a writer thread (a volume's ledger): one recovery attempt
    /// if the file is closed; true when it is open (again). The caller
    /// waits [`next_pause`]s between attempts, on its own clock.
    pub(super) fn recover_inline(&self, pause: Duration) -> bool {
        let mut disk = self.lock();
        if disk.durable.is_some() {
            return true;
        }
        let recovered = self.try_recover(&mut disk, pause);
        drop(disk);
        recovered.log()
    }
}

/// What one recovery attempt came to, logged after the disk's lock is
/// released (see [`Wrote`]).
enum Recovered {
    /// The file is open again and memory reloaded from it.
    Serving { dir: PathBuf, report: LoadReport },
    /// Not yet: the next attempt comes after `pause`.
    Not {
        dir: PathBuf,
        error: String,
        pause: Duration,
    },
}

impl Recovered {
    /// Logs the attempt; true once serving again.
    fn log(self) -> bool {
        match self {
            Self::Serving { dir, report } => {
                report.log();
                tracing::warn!(dir = %dir.display(), "durable store recovered: serving again");
                true
            }
            Self::Not { dir, error, pause } => {
                tracing::warn!(
                    dir = %dir.display(),
                    %error,
                    retry_in_ms = pause.as_millis() as u64,
                    "durable store still unavailable"
                );
                false
            }
        }
    }
}

/// What one [`Writer::write_queued`] came to, logged after the disk's lock
/// is released: a slow log sink then delays no batch but its own.
enum Wrote {
    /// Nothing was queued (or the ledger is gone).
    Nothing,
    /// A batch of `commits` is durable.
    Durable { commits: usize, took: Duration },
    /// A batch of `commits` failed: its fate is unknown.
    Failed {
        dir: PathBuf,
        error: String,
        commits: usize,
    },
}

impl Wrote {
    fn log(self) {
        match self {
            Self::Nothing => {}
            Self::Durable { commits, took } => {
                tracing::debug!(commits, micros = took.as_micros() as u64, "durable batch")
            }
            // The engine's message names paths and internals: it goes to
            // the log, callers get a stable UNAVAILABLE.
            Self::Failed {
                dir,
                error,
                commits,
            } => tracing::error!(
                dir = %dir.display(),
                %error,
                commits,
                "durable write failed: the batch's fate is unknown; refusing register \
                 calls until the file is reopened and memory reloaded from it"
            ),
        }
    }
}

/// The pause after `pause` between recovery attempts.
pub(super) fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(RECOVERY_PAUSE_MAX)
}

/// Opens the file again and reads it back, then proves the disk takes
/// writes again.
fn reopen(disk: &Disk) -> Result<Opened, String> {
    // One catch around the whole attempt: an open dropped because its
    // probe panicked is dropped inside it, as the unwinding left it.
    let attempt = || {
        let mut opened = disk.place.open_and_load(&disk.dedup, &disk.events)?;
        // Reading is not enough: the disk may still refuse writes.
        opened.durable.probe()?;
        Ok::<_, super::StorageError>(opened)
    };
    match panics::catch(attempt) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(panic) => Err(format!("the storage engine panicked: {panic}")),
    }
}

impl Lead for Writer {
    fn lead(&self, alone: bool) -> bool {
        if alone && self.queue.len() > 1 {
            return false;
        }
        let Ok(mut disk) = self.disk.try_lock() else {
            // The writer thread is at the disk: it will be asked.
            return false;
        };
        if disk.durable.is_none() {
            return false;
        }
        let wrote = self.write_queued(&mut disk);
        drop(disk);
        wrote.log();
        // Commits queued while we wrote found the queue busy and took no
        // kick: the writer thread writes them.
        if self.queue.after_batch() == Next::Write {
            self.queue.ask();
        }
        true
    }
}
