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
    sync::{Arc, Condvar, Mutex, MutexGuard},
};

use crate::{
    store::dedup::{IdDigest, StoredOutcome},
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
}

/// Everything one decided commit writes. Owned: it crosses to the writer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Write {
    /// Its commit sequence number.
    pub(crate) seq: CommitSeq,
    /// The register and its new value, if the request applied.
    pub(crate) register: Option<(Arc<str>, f64)>,
    /// The dedup record, if the request had an ID.
    pub(crate) record: Option<RecordRow>,
    /// Every dedup record below this dedup sequence number has been
    /// evicted: delete it.
    pub(crate) delete_below: u64,
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
/// order) and woken after it.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Debug)]
struct QueueState {
    writes: Vec<Write>,
    closed: bool,
    /// The writer waits for work and nobody has claimed the job of waking
    /// it (or of writing inline) yet. A push takes this: only that pusher
    /// wakes or leads; std's `notify_one` is a system call even when nobody
    /// waits, and under load the writer is busy nearly all the time.
    parked: bool,
    /// A batch failed: the writer thread must reopen the file.
    recover: bool,
}

impl Default for QueueState {
    fn default() -> Self {
        Self {
            writes: Vec::new(),
            closed: false,
            // Idle from the start: the first pusher writes inline or wakes
            // the writer, which may not even have reached its wait yet (it
            // looks at the queue before waiting, so nothing is missed).
            parked: true,
            recover: false,
        }
    }
}

/// What the writer thread is woken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// Writes are queued, or the file must be reopened.
    Writes,
    /// The ledger is closing and nothing is queued.
    Closed,
}

/// Writes queued commits on the committing caller's thread when the writer
/// is idle (see `store::redb::writer`).
pub(crate) trait Lead: Send + Sync + std::fmt::Debug {
    /// Writes what is queued, now, on this thread; false when it could not
    /// (the writer thread is at the disk) or should not (`always` unset and
    /// callers overlap, when batching on the writer thread serves them
    /// better), and the writer must be woken.
    fn lead(&self, always: bool) -> bool;
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `write`; true when the writer is idle and this pusher must
    /// see the write through: lead it, or [`Queue::wake`] the writer.
    #[must_use = "an idle writer sleeps until woken"]
    pub(crate) fn push(&self, write: Write) -> bool {
        let mut state = self.lock();
        state.writes.push(write);
        std::mem::take(&mut state.parked)
    }

    /// Wakes the writer (call after releasing the ledger's lock: a futex
    /// wake is a system call).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// The writer thread: blocks until there is work.
    pub(crate) fn wait(&self) -> Work {
        let mut state = self.lock();
        loop {
            if std::mem::take(&mut state.recover) || !state.writes.is_empty() {
                return Work::Writes;
            }
            if state.closed {
                return Work::Closed;
            }
            state.parked = true;
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Takes everything queued: one batch (possibly empty).
    pub(crate) fn take(&self) -> Vec<Write> {
        std::mem::take(&mut self.lock().writes)
    }

    /// After an inline batch: marks the writer idle again if nothing was
    /// queued meanwhile; true if something was (wake the writer for it).
    pub(crate) fn repark(&self) -> bool {
        let mut state = self.lock();
        if state.writes.is_empty() {
            state.parked = true;
            false
        } else {
            true
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
    pub(crate) queue: std::sync::Arc<Queue>,
    /// Writes inline when the writer is idle.
    pub(crate) lead: Arc<dyn Lead>,
    /// The next commit's sequence number.
    pub(crate) next: CommitSeq,
    /// What the writer last reported durable.
    pub(crate) durable: CommitSeq,
    /// Failures so far (see [`Synced::epoch`]).
    pub(crate) epoch: u64,
    /// Register → sequence number of its last write not yet durable. Only
    /// looked up by key, never iterated.
    pub(crate) unsynced: HashMap<Arc<str>, CommitSeq>,
    /// Decided, not yet durable, in sequence order.
    pub(crate) awaiting: VecDeque<Awaiting>,
    /// Set when a batch failed, until memory is reloaded from disk.
    pub(crate) broken: bool,
}

impl Journal {
    pub(crate) fn new(queue: Arc<Queue>, lead: Arc<dyn Lead>, durable: CommitSeq) -> Self {
        Self {
            queue,
            lead,
            next: durable + 1,
            durable,
            epoch: 0,
            unsynced: HashMap::new(),
            awaiting: VecDeque::new(),
            broken: false,
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
