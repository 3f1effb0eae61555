//! Write-back to durable storage: what a [`MemoryLedger`] with a journal
//! attached hands to a writer, and the bookkeeping that keeps readers from
//! seeing what is not on disk yet.
//!
//! # Decide under the lock, persist outside it
//! A durable commit is *decided* in the ledger's critical section, exactly
//! as in memory: the register is updated, the dedup record inserted, and a
//! [`Write`] with a [`CommitSeq`] queued for the writer (the [`Queue`]).
//! The lock is then released; the writer (a thread of the backend, e.g.
//! [`crate::store::redb`]) takes everything queued as one batch, persists
//! it in one transaction with one fsync, and reports back
//! ([`MemoryLedger::synced_through`] or [`MemoryLedger::sync_failed`]).
//!
//! # What nobody may see before it is durable
//! A crash loses what is not on disk, so nothing that could be lost may
//! reach a client:
//! - the committing caller is answered once its commit is durable (a
//!   oneshot per commit);
//! - a duplicate of its request ID keeps waiting on the claim, which is
//!   released only then (so it replays a durable outcome);
//! - a read of a register whose last write is not durable yet waits for
//!   that write's sequence number ([`Journal::unsynced`]).
//!
//! If a batch fails, its commits' fate is unknown (the disk may or may not
//! hold them), every commit decided so far is failed with that fate, and
//! the ledger refuses everything until the backend has reloaded memory
//! from disk: memory that disagrees with the disk is never served.
//!
//! [`MemoryLedger`]: crate::store::MemoryLedger
//! [`MemoryLedger::synced_through`]: crate::store::MemoryLedger::synced_through
//! [`MemoryLedger::sync_failed`]: crate::store::MemoryLedger::sync_failed

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{
    store::dedup::{IdDigest, OwnerKey, StoredOutcome},
    trace::Event,
};

/// Number of a decided commit: strictly increasing in decision order,
/// across the whole life of a ledger (a failure does not reset it).
pub(crate) type CommitSeq = u64;

/// One dedup record to persist.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordRow {
    /// Its sequence number in the dedup store (records are kept on disk in
    /// this order, so eviction is a range delete).
    pub(crate) seq: u64,
    /// The request's digest.
    pub(crate) key: IdDigest,
    /// The payload fingerprint.
    pub(crate) fingerprint: u64,
    /// The first execution's outcome.
    pub(crate) outcome: StoredOutcome,
    /// Whom it is charged to.
    pub(crate) owner: OwnerKey,
}

/// Everything one decided commit writes. Owned: it crosses to the writer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Write {
    /// Its commit sequence number.
    pub(crate) seq: CommitSeq,
    /// The register and its new value, if the request applied.
    pub(crate) register: Option<(Arc<str>, f64)>,
    /// A register removed (`DeleteRegister`), written before `register`.
    pub(crate) delete: Option<Arc<str>>,
    /// The dedup record, if the request had an ID.
    pub(crate) record: Option<RecordRow>,
    /// Every dedup record below this dedup sequence number has been
    /// evicted: delete it.
    pub(crate) delete_below: u64,
    /// Dedup records at or above `delete_below` evicted out of commit
    /// order (to make room, from the client holding the most): delete
    /// them.
    pub(crate) deletes: Vec<u64>,
}

/// Where durable storage stands, published by the ledger after every batch
/// (a `tokio::sync::watch` value) for the readers waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Synced {
    /// Every commit up to this one is durable.
    pub(crate) durable: CommitSeq,
    /// Number of failures so far.
    pub(crate) epoch: u64,
    /// `durable` when the latest failure happened: the commits after it,
    /// decided before the failure, have an unknown fate.
    pub(crate) durable_before_failure: CommitSeq,
}

impl Synced {
    /// What became of commit `seq`, decided in failure epoch `epoch`:
    /// `Some(true)` durable, `Some(false)` failed (fate unknown), `None` not
    /// known yet.
    pub(crate) fn resolved(&self, seq: CommitSeq, epoch: u64) -> Option<bool> {
        if self.epoch == epoch {
            (seq <= self.durable).then_some(true)
        } else if self.epoch == epoch + 1 {
            Some(seq <= self.durable_before_failure)
        } else {
            // Two failures since: the first one's watermark is gone, so
            // say what is certain, that the fate is not known.
            Some(false)
        }
    }
}

/// Decided commits on their way to the writer: a plain FIFO under its own
/// small lock, pushed to under the ledger's lock (so its order is decision
/// order).
///
/// # Who writes a batch, and when
/// Whoever pushes onto an idle queue takes a [`Kick`]: the duty of seeing
/// the queue to the disk. On tokio's multi-threaded runtime, unless the
/// commit looks like a lone caller's ([`Queue::lone`]: then it fires at
/// once), the kick fires only after its task has yielded once
/// (`Kick::after_yield`), so every task that was ready to run gets its
/// turn first, and the commits those tasks decide join the same batch.
/// That is the whole batching policy: no timer, no tuned constant; a busy
/// runtime has much ready work and forms large batches. When the kick fires
/// and its commit is alone in the queue, the caller writes it inline
/// ([`Lead::lead`]); otherwise the writer thread is asked to write the
/// batch. After a batch, if commits queued meanwhile, the writer writes
/// them at once: callers overlap, and the disk is the bottleneck that
/// must not wait. (Handing them to a kick through the runtime instead,
/// as an earlier version did, made the disk wait behind the work of the
/// callers just answered: on a disk with a 0.1 ms fsync the writer idled
/// 46 % of the time, and 64 callers sharing the server's runtime got
/// 0.55× the in-memory throughput, against a median of 0.67× written at
/// once; see docs/durable.md.)
///
/// Liveness: while anything is queued, exactly one of these holds — a
/// kick is outstanding (it fires, or asks the writer when dropped), or
/// someone is writing (and decides the next step under this lock when
/// done).
#[derive(Debug, Default)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
    /// The last batch written: how long it took (nanoseconds) and how many
    /// commits it held (see [`Queue::lone`]).
    last_write: AtomicU64,
    last_batch: AtomicUsize,
}

/// Who sees the queue to the disk next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Nothing queued and nobody on duty: the next push takes the kick.
    Idle,
    /// A [`Kick`] is outstanding.
    Kicked,
    /// The writer thread or an inline caller is writing (or about to).
    Running,
}

#[derive(Debug)]
struct QueueState {
    writes: Vec<Write>,
    closed: bool,
    flush: Flush,
    /// The writer thread is asked to write what is queued.
    asked: bool,
    /// A batch failed: the writer thread must reopen the file.
    recover: bool,
}

impl Default for QueueState {
    fn default() -> Self {
        Self {
            writes: Vec::new(),
            closed: false,
            // Idle from the start: the first pusher takes the kick, whether
            // or not the writer thread has reached its wait yet (it looks
            // at `asked` before waiting, so nothing is missed).
            flush: Flush::Idle,
            asked: false,
            recover: false,
        }
    }
}

/// What the writer thread is woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// Write what is queued, or reopen the file.
    Writes,
    /// The ledger is closing and nothing is queued.
    Closed,
}

/// What [`Queue::push`] made of the pusher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// A kick is outstanding or a batch is being written: it will see
    /// this write too.
    Joined,
    /// The queue was idle: this pusher takes the kick.
    Kick,
}

/// What the writer thread does after a batch (see [`Queue::after_batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing is queued: wait for a kick.
    Wait,
    /// Commits queued meanwhile: write them now.
    Write,
}

/// Writes queued commits on the committing caller's thread (see
/// `store::redb::writer`).
pub(crate) trait Lead: Send + Sync + std::fmt::Debug {
    /// Writes what is queued, now, on this thread; false when it could not
    /// (the writer thread is at the disk, or the file is closed) or should
    /// not (`alone` is set and other commits are queued: the writer thread
    /// batches them without blocking this one), and the writer thread must
    /// be asked.
    fn lead(&self, alone: bool) -> bool;
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `write`. When the queue was idle this pusher takes the kick
    /// (it must fire or drop a [`Kick`]).
    #[must_use = "an idle queue is written only once kicked"]
    pub(crate) fn push(&self, write: Write) -> Pushed {
        let mut state = self.lock();
        state.writes.push(write);
        if state.flush == Flush::Idle {
            state.flush = Flush::Kicked;
            Pushed::Kick
        } else {
            Pushed::Joined
        }
    }

    /// Asks the writer thread to write what is queued (call it with no
    /// ledger lock held: a futex wake is a system call).
    pub(crate) fn ask(&self) {
        {
            let mut state = self.lock();
            state.asked = true;
            state.flush = Flush::Running;
        }
        self.wake.notify_one();
    }

    /// The writer thread: blocks until it is asked to write, must recover,
    /// or the queue closes.
    pub(crate) fn wait(&self) -> Work {
        let mut state = self.lock();
        loop {
            if std::mem::take(&mut state.recover) {
                return Work::Writes;
            }
            if std::mem::take(&mut state.asked) {
                state.flush = Flush::Running;
                return Work::Writes;
            }
            if state.closed {
                // Whatever was queued last is written before the file
                // closes, kicked or not.
                return if state.writes.is_empty() {
                    Work::Closed
                } else {
                    Work::Writes
                };
            }
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Records the batch just written: `commits` in `took`.
    pub(crate) fn wrote(&self, commits: usize, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.last_write.store(nanos, Ordering::Relaxed);
        self.last_batch.store(commits, Ordering::Relaxed);
    }

    /// True when a commit decided `gap` after the one before it looks like
    /// a lone caller's, which need not wait for a batch to form: the last
    /// batch held one commit, and the gap exceeds that batch's write time.
    /// A lone caller always passes, since between its commits lie its own
    /// write and a round trip. Loaded callers rarely do: on a disk their
    /// gaps are far shorter than an fsync, and where writes are cheap
    /// (tmpfs) a lone-looking commit written at once leaves those decided
    /// meanwhile to a batch of several, so the next one waits again.
    pub(crate) fn lone(&self, gap: Duration) -> bool {
        self.last_batch.load(Ordering::Relaxed) <= 1
            && gap.as_nanos() > u128::from(self.last_write.load(Ordering::Relaxed))
    }

    /// The number of commits queued.
    pub(crate) fn len(&self) -> usize {
        self.lock().writes.len()
    }

    /// Takes everything queued: one batch (possibly empty). The taker is
    /// now the one writing.
    pub(crate) fn take(&self) -> Vec<Write> {
        let mut state = self.lock();
        state.flush = Flush::Running;
        std::mem::take(&mut state.writes)
    }

    /// After a batch, decides under the lock who writes what queued
    /// meanwhile: nobody if nothing did (idle again), else the writer at
    /// once (see [`Queue`]).
    pub(crate) fn after_batch(&self) -> Next {
        let mut state = self.lock();
        if state.writes.is_empty() {
            state.flush = Flush::Idle;
            Next::Wait
        } else {
            Next::Write
        }
    }

    /// Drops everything queued (after a failure: those commits are failed
    /// already).
    pub(crate) fn discard(&self) {
        self.lock().writes.clear();
    }

    /// Asks the writer thread to reopen the file.
    pub(crate) fn request_recovery(&self) {
        self.lock().recover = true;
        self.wake.notify_one();
    }

    /// Stops the writer once it has drained the queue.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// Waits up to `pause` for [`Queue::close`] (a recovering writer's
    /// backoff that ends early on shutdown); true once closed.
    pub(crate) fn wait_closed(&self, pause: std::time::Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .wake
            .wait_timeout_while(state, pause, |s| !s.closed)
            .unwrap_or_else(|p| p.into_inner());
        state.closed
    }
}

/// The duty of seeing the queue to the disk (see [`Queue`]): fired once,
/// or, if dropped unfired (its task was cancelled, its runtime shut down),
/// it asks the writer thread, so a queued commit is never stranded.
#[derive(Debug)]
pub(crate) struct Kick {
    queue: Arc<Queue>,
    /// Writes inline when the commit is alone.
    lead: Arc<dyn Lead>,
    fired: bool,
}

impl Kick {
    /// A kick that may write inline through `lead`.
    pub(crate) fn new(queue: Arc<Queue>, lead: Arc<dyn Lead>) -> Self {
        Self {
            queue,
            lead,
            fired: false,
        }
    }

    /// Fires now: writes inline through the lead if it agrees (`alone`: only
    /// if this commit is the only one queued), else asks the writer thread.
    pub(crate) fn fire(mut self, alone: bool) {
        self.fired = true;
        if !self.lead.lead(alone) {
            self.queue.ask();
        }
    }

    /// Fires once every task that was ready to run has had its turn (see
    /// [`Queue`]); inline only for a commit still alone by then.
    pub(crate) async fn after_yield(self) {
        tokio::task::yield_now().await;
        self.fire(true);
    }
}

impl Drop for Kick {
    fn drop(&mut self) {
        if !self.fired {
            self.queue.ask();
        }
    }
}

/// A decided commit waiting to become durable.
#[derive(Debug)]
pub(crate) struct Awaiting {
    pub(crate) seq: CommitSeq,
    /// The request whose claim to release once durable (keyed requests).
    pub(crate) release: Option<IdDigest>,
    /// The register written, to clear its [`Journal::unsynced`] mark.
    pub(crate) register: Option<Arc<str>>,
    /// True when the request applied (counted once durable).
    pub(crate) applied: bool,
    /// The `applied` event, emitted once durable (if anyone listens).
    pub(crate) event: Option<Event>,
    /// The committing caller, told `true` once durable, `false` if its
    /// batch failed. One channel per commit, so a batch wakes exactly its
    /// own callers (a shared watch would wake every waiting caller).
    pub(crate) done: tokio::sync::oneshot::Sender<bool>,
}

/// The journal's state under the ledger's lock.
#[derive(Debug)]
pub(crate) struct Journal {
    pub(crate) queue: Arc<Queue>,
    /// Writes inline a commit that is alone.
    pub(crate) lead: Arc<dyn Lead>,
    /// The next commit's sequence number. (What is durable is published
    /// in the ledger's [`Synced`] watch, which readers wait on.)
    pub(crate) next: CommitSeq,
    /// Failures so far (see [`Synced::epoch`]).
    pub(crate) epoch: u64,
    /// Register → sequence number of its last write not yet durable. Only
    /// looked up by key, never iterated.
    pub(crate) unsynced: HashMap<Arc<str>, CommitSeq>,
    /// Decided, not yet durable, in sequence order.
    pub(crate) awaiting: VecDeque<Awaiting>,
    /// Set when a batch failed, until memory is reloaded from disk.
    pub(crate) broken: bool,
    /// When the last commit was decided (see [`Queue::lone`]).
    pub(crate) last_decided: Option<tokio::time::Instant>,
}

impl Journal {
    pub(crate) fn new(queue: Arc<Queue>, lead: Arc<dyn Lead>, durable: CommitSeq) -> Self {
        Self {
            queue,
            lead,
            next: durable + 1,
            epoch: 0,
            unsynced: HashMap::new(),
            awaiting: VecDeque::new(),
            broken: false,
            last_decided: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_resolves_by_its_epoch() {
        let mut s = Synced::default();
        assert_eq!(s.resolved(1, 0), None);
        s.durable = 3;
        assert_eq!(s.resolved(3, 0), Some(true));
        assert_eq!(s.resolved(4, 0), None);
        // A failure with 3 durable: 4 and 5 (decided before it) failed.
        s.epoch = 1;
        s.durable_before_failure = 3;
        assert_eq!(s.resolved(2, 0), Some(true));
        assert_eq!(s.resolved(5, 0), Some(false));
        // Later commits, decided in the new epoch, become durable normally,
        // and the failed ones stay failed.
        s.durable = 9;
        assert_eq!(s.resolved(7, 1), Some(true));
        assert_eq!(s.resolved(5, 0), Some(false));
        s.epoch = 3;
        assert_eq!(s.resolved(2, 0), Some(false), "too old to tell: unknown");
    }
}
