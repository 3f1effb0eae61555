//! The in-memory ledger: registers, the dedup store and the in-flight claims
//! behind one lock, with the two-step `Accumulate` protocol that makes a
//! retried request apply at most once. It is the default backend, the
//! simulation's model of a store, and — with a journal (`super::journal`)
//! attached — the write-back cache in front of the durable backend
//! ([`crate::store::redb`]).
//!
//! # Protocol
//! [`MemoryLedger::begin`] validates the payload and the request ID, then
//! either joins an execution of the same ID still in flight (waits, then
//! looks again), answers from the dedup store ([`Begin::Replay`]), or
//! claims the ID ([`Begin::Execute`]). The caller then runs whatever comes
//! between claim and commit (fault delay, deadline check, injected failure)
//! and calls [`Claim::commit`], or drops the claim to release it. See
//! [`crate::store::dedup`] for why it works this way.
//!
//! # Atomicity
//! Every mutation is one synchronous critical section with no `.await`
//! inside: `commit` plans the update, updates the register, inserts the
//! dedup record and (in memory) releases the claim under one lock
//! acquisition. A cancelled handler therefore either committed entirely or
//! not at all, and a crash (process or simulated host) cannot separate a
//! register update from its record.
//!
//! With a journal, the same critical section also queues the commit's
//! `Write` for the writer, and the claim is released only once the write
//! is durable (see `super::journal`): the lock is never held while the
//! disk works.
//!
//! # Events
//! Events are queued under the lock and emitted after it (see
//! `super::outbox`), in decision order, so a trace still shows commits in
//! commit order while a slow log sink never holds the lock.
//!
//! # Layout
//! - this file: the ledger, its lock, `begin` (join, replay or claim),
//!   reads, deletes, and the journal's reports back;
//! - `claim`: a claim and its commit (the decision and its answer).

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, futures::OwnedNotified, oneshot, watch},
    time::Instant,
};

use crate::{
    core::{self, Registers},
    error::ServiceError,
    store::{
        self, AccumulateArgs, Accumulated, Backend, BoxFuture, Clock, Ledger, StatsView,
        StoreHealth, WriteFate,
        dedup::{
            DedupConfig, DedupStore, DigestKey, Evicted, IdDigest, Lookup, fingerprint, reused,
            validate_request_id,
        },
        journal::{Awaiting, CommitSeq, Journal, Kick, Lead, Pushed, Queue, Synced, Write},
        outbox::Outbox,
        owners::RegisterOwners,
    },
    trace::{Event, EventSink, Probe},
};

/// Pushback suggested when the in-flight table is full: long enough for a
/// typical execution to finish.
const IN_FLIGHT_PUSHBACK_MS: u64 = 100;

mod claim;
pub use claim::{Begin, Claim};

/// An ID being executed (or, with a journal, committed and not yet
/// durable).
#[derive(Debug)]
struct Flight {
    /// Fingerprint of the executing payload, so a reuse with a different
    /// payload is refused at once instead of joining.
    fingerprint: u64,
    /// Woken when the claim is released: committed (durably, with a
    /// journal) or dropped.
    done: Arc<Notify>,
}

#[derive(Debug)]
struct Inner {
    registers: Registers,
    applied: u64,
    store: DedupStore,
    /// Claimed request IDs, until committed (durably) or released. Only
    /// ever looked up by key, never iterated, so hash order cannot reach
    /// behaviour or output. Its size is capped by `in_flight_max`.
    in_flight: HashMap<IdDigest, Flight>,
    /// Write-back to durable storage; `None` for a plain memory ledger.
    journal: Option<Journal>,
    /// Who created which register (the per-client quota).
    owners: RegisterOwners,
}

/// Registers plus everything that must change together with them.
pub struct MemoryLedger {
    // A std Mutex, not tokio's: the critical sections are short, synchronous
    // and never hold the lock across an await or any I/O, which is what
    // makes them atomic with respect to cancellation. One lock for
    // registers, store and claims means there is no lock order to get
    // wrong (the outbox's and the journal queue's small locks are only ever
    // taken inside it or alone).
    inner: Mutex<Inner>,
    outbox: Outbox,
    /// Keys request-ID digests (see [`crate::store::dedup::key`]).
    digest_key: DigestKey,
    join_wait_max: Duration,
    in_flight_max: usize,
    /// `DedupConfig::enabled`.
    dedup_enabled: bool,
    /// `DedupConfig::registers_per_client_max`.
    registers_per_client_max: usize,
    /// `DedupConfig::ttl`, to warn about callers that wait longer than a
    /// record lives.
    ttl: Duration,
    /// Set once the TTL warning was logged (it is about configuration, not
    /// about each request).
    ttl_warned: AtomicBool,
    /// What dedup records age by (tokio's clock but in the simulation).
    clock: Clock,
    /// Where durable storage stands (journal mode; constant otherwise).
    synced: watch::Sender<Synced>,
    /// Whether the store can serve registers (always, in memory).
    health: watch::Sender<StoreHealth>,
}

impl fmt::Debug for MemoryLedger {
    // Not derived: that would print every register and record.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLedger")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

enum Attempt<'a> {
    Ready(Begin<'a>),
    Wait(OwnedNotified),
}

/// The store is broken (a durable batch failed and memory is not reloaded
/// yet): nothing was done for this request.
const UNAVAILABLE: ServiceError = ServiceError::StoreUnavailable {
    fate: WriteFate::NotApplied,
};

impl MemoryLedger {
    /// An empty in-memory ledger reporting to `events`: registers and dedup
    /// records are lost when it is dropped (a restart).
    pub fn new(dedup: DedupConfig, events: EventSink) -> Self {
        Self::with_key_and_clock(dedup, events, DigestKey::random(), Clock::Tokio)
    }

    /// [`MemoryLedger::new`] with request-ID digests keyed by `key` and
    /// dedup records aging by `clock`: the simulation's seeded keys (a
    /// digest appears in eviction events, so a random key would make two
    /// runs of a seed differ) and skewed clocks.
    pub fn with_key_and_clock(
        dedup: DedupConfig,
        events: EventSink,
        key: DigestKey,
        clock: Clock,
    ) -> Self {
        let store = DedupStore::new(&dedup);
        let mut ledger = Self::with_state(&dedup, events, key, Registers::new(), store, None);
        ledger.clock = clock;
        ledger
    }

    /// A ledger over state loaded from durable storage, writing back
    /// through `queue` (see [`super::journal`]). Commit sequence numbers
    /// start at 1.
    pub(crate) fn with_journal(
        dedup: &DedupConfig,
        events: EventSink,
        digest_key: DigestKey,
        registers: Registers,
        store: DedupStore,
        queue: Arc<Queue>,
        lead: Arc<dyn Lead>,
    ) -> Self {
        Self::with_state(
            dedup,
            events,
            digest_key,
            registers,
            store,
            Some(Journal::new(queue, lead, 0)),
        )
    }

    fn with_state(
        dedup: &DedupConfig,
        events: EventSink,
        digest_key: DigestKey,
        registers: Registers,
        store: DedupStore,
        journal: Option<Journal>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                registers,
                applied: 0,
                store,
                in_flight: HashMap::new(),
                journal,
                owners: RegisterOwners::default(),
            }),
            outbox: Outbox::new(events),
            digest_key,
            dedup_enabled: dedup.enabled,
            registers_per_client_max: dedup.registers_per_client_max,
            ttl: dedup.ttl(),
            ttl_warned: AtomicBool::new(false),
            clock: Clock::Tokio,
            join_wait_max: dedup.join_wait_max(),
            in_flight_max: dedup.in_flight_max.max(1),
            synced: watch::Sender::new(Synced::default()),
            health: watch::Sender::new(StoreHealth::Serving),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner inconsistent
        // (every mutation is computed first, then stored), so poisoning is
        // safe to ignore.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an `Accumulate`: validates it, then waits for an execution of
    /// the same ID in flight, or replays its ID's recorded outcome, or
    /// claims the ID. A request without an ID is always executed.
    ///
    /// Waiting ends at `deadline` (the caller's) or after the configured
    /// `join_wait_ms_max`, whichever is first, with
    /// [`ServiceError::StillInFlight`].
    pub async fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> Result<Begin<'a>, ServiceError> {
        // Payload errors first: they are the same on every attempt, so they
        // need no claim and are never recorded.
        core::validate_accumulate(&args.register, args.delta)?;
        if !args.request_id.is_empty() {
            validate_request_id(&args.request_id)?;
        }
        if args.request_id.is_empty() || !self.dedup_enabled {
            return Ok(Begin::Execute(Claim {
                ledger: self,
                args,
                key: IdDigest(0),
                fingerprint: 0,
                keyed: false,
                finished: false,
            }));
        }
        self.warn_if_deadline_outlives_records(deadline);
        let fingerprint = fingerprint(&args.register, args.delta);
        let key = self
            .digest_key
            .digest(args.caller.scope(), &args.request_id);
        let join_until = Instant::now() + self.join_wait_max;
        let wait_until = deadline.map_or(join_until, |d| d.min(join_until));
        let mut joined = false;
        loop {
            let attempt = self.try_claim(args, key, fingerprint, joined);
            self.outbox.flush();
            let done = match attempt? {
                Attempt::Ready(begin) => return Ok(begin),
                Attempt::Wait(done) => done,
            };
            joined = true;
            if tokio::time::timeout_at(wait_until, done).await.is_err() {
                return Err(ServiceError::StillInFlight {
                    request_id: args.request_id.clone(),
                });
            }
            // Committed or released: look again. Another waiter may have
            // taken the claim over, in which case we wait for it in turn.
        }
    }

    /// A retry that arrives after its record expired applies again, so a
    /// caller's deadline must be shorter than the TTL. The server cannot
    /// refuse such callers (their retries may all arrive in time), so it
    /// says so once, loudly.
    fn warn_if_deadline_outlives_records(&self, deadline: Option<Instant>) {
        let Some(deadline) = deadline else { return };
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait > self.ttl && !self.ttl_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                caller_deadline_ms = wait.as_millis() as u64,
                dedup_ttl_ms = self.ttl.as_millis() as u64,
                "a caller's deadline is longer than the dedup TTL: a retry arriving after its \
                 record expires would be applied again; shorten client deadlines or raise --dedup-ttl-ms"
            );
        }
    }

    fn try_claim<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        key: IdDigest,
        fingerprint: u64,
        joined: bool,
    ) -> Result<Attempt<'a>, ServiceError> {
        let outbox = &self.outbox;
        let listening = outbox.enabled();
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.journal.as_ref().is_some_and(|j| j.broken) {
            return Err(UNAVAILABLE);
        }
        let id = args.request_id.as_str();
        // In flight first: with a journal, a committed record stays in
        // flight until it is durable, and a duplicate must wait for that
        // rather than replay an outcome a crash could still undo.
        if let Some(flight) = inner.in_flight.get(&key) {
            if flight.fingerprint != fingerprint {
                let first = flight.fingerprint;
                inner.store.count_mismatch();
                outbox.push(Event::DedupMismatch {
                    request_id: id.to_owned(),
                });
                return Err(reused(args, first, fingerprint));
            }
            if !joined {
                outbox.push(Event::DedupJoined {
                    request_id: id.to_owned(),
                });
            }
            // Registered under the lock, before the holder can release
            // (which takes the lock), so its wake-up cannot be missed.
            return Ok(Attempt::Wait(Arc::clone(&flight.done).notified_owned()));
        }
        // Read under the lock, like commit's: expiry then never judges with
        // an instant older than a commit already made.
        let now = self.clock.now();
        // Set when this very lookup expires the repeat's own record.
        let mut expired_here = false;
        let evicted = |e: Evicted| {
            expired_here |= e.key == key;
            if listening {
                outbox.push(evicted_event(e));
            }
        };
        match inner.store.lookup(key, fingerprint, now, evicted) {
            Lookup::Hit(outcome) => {
                outbox.push(Event::DedupHit {
                    request_id: id.to_owned(),
                    value: outcome.value(),
                });
                let result = outcome
                    .result(&args.register, args.delta)
                    .map(|value| Accumulated {
                        value,
                        replayed: true,
                    })
                    .map_err(ServiceError::from);
                return Ok(Attempt::Ready(Begin::Replay(result)));
            }
            Lookup::Mismatch { first_fingerprint } => {
                outbox.push(Event::DedupMismatch {
                    request_id: id.to_owned(),
                });
                return Err(reused(args, first_fingerprint, fingerprint));
            }
            Lookup::Miss if expired_here => {
                outbox.push(Event::Probe(Probe::DedupExpiredUnderRetry));
            }
            Lookup::Miss => {}
        }
        if inner.in_flight.len() >= self.in_flight_max {
            return Err(ServiceError::Overloaded {
                in_flight: inner.in_flight.len(),
                limit: self.in_flight_max,
                pushback_ms: IN_FLIGHT_PUSHBACK_MS,
            });
        }
        if joined {
            outbox.push(Event::Probe(Probe::ClaimTakenOver));
        }
        inner.in_flight.insert(
            key,
            Flight {
                fingerprint,
                done: Arc::new(Notify::new()),
            },
        );
        Ok(Attempt::Ready(Begin::Execute(Claim {
            ledger: self,
            args,
            key,
            fingerprint,
            keyed: true,
            finished: false,
        })))
    }

    /// `begin` then `commit`, with nothing in between: `Accumulate` without
    /// fault injection, for adapters and tests that need no more.
    pub async fn accumulate(
        &self,
        args: &AccumulateArgs,
        deadline: Option<Instant>,
    ) -> Result<Accumulated, ServiceError> {
        match self.begin(args, deadline).await? {
            Begin::Replay(result) => result,
            Begin::Execute(claim) => claim.commit().await,
        }
    }

    /// Reads a register. With a journal, a value whose write is not durable
    /// yet is answered once it is (never earlier: a crash could still undo
    /// it), waiting at most until `deadline`.
    pub async fn get(
        &self,
        register: &str,
        deadline: Option<Instant>,
    ) -> Result<f64, ServiceError> {
        let (value, unsynced) = {
            let inner = self.lock();
            let unsynced = match &inner.journal {
                None => None,
                Some(j) if j.broken => return Err(UNAVAILABLE),
                Some(j) => j.unsynced.get(register).map(|&seq| (seq, j.epoch)),
            };
            (inner.registers.get(register), unsynced)
        };
        if let Some((seq, epoch)) = unsynced {
            let durable = self.synced(seq, epoch);
            let durable = match deadline {
                Some(d) => tokio::time::timeout_at(d, durable)
                    .await
                    .map_err(|_| ServiceError::DeadlineExceeded)?,
                None => durable.await,
            };
            if !durable {
                return Err(UNAVAILABLE);
            }
        }
        Ok(value?)
    }

    /// Removes a register; see [`Ledger::delete`]. Decided under the lock
    /// like a commit; with a journal, answered (and the name readable)
    /// once the removal is durable.
    pub async fn delete(
        &self,
        register: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<f64>, ServiceError> {
        core::validate_register_name(register)?;
        let (removed, durable) = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let removed = match &inner.journal {
                Some(j) if j.broken => return Err(UNAVAILABLE),
                _ => inner.registers.remove(register),
            };
            if removed.is_some() {
                inner.owners.removed(register);
            }
            let durable = match &mut inner.journal {
                None => None,
                // Nothing removed: like a read, wait for the name's last
                // write (a removal or creation not yet durable).
                Some(j) if removed.is_none() => {
                    j.unsynced.get(register).map(|&seq| (seq, j.epoch, None))
                }
                Some(journal) => {
                    let seq = journal.next;
                    journal.next += 1;
                    let name: Arc<str> = register.into();
                    journal.unsynced.insert(Arc::clone(&name), seq);
                    let pushed = journal.queue.push(Write {
                        seq,
                        register: None,
                        delete: Some(Arc::clone(&name)),
                        record: None,
                        delete_below: inner.store.front_seq(),
                        deletes: Vec::new(),
                    });
                    let (done, durable) = oneshot::channel();
                    journal.awaiting.push_back(Awaiting {
                        seq,
                        done,
                        release: None,
                        applied: false,
                        event: None,
                        register: Some(name),
                    });
                    // Deletes are rare: the pusher that finds the queue idle
                    // writes inline if it can (as a commit on a
                    // current-thread runtime does), else asks the writer.
                    let kick = (pushed == Pushed::Kick)
                        .then(|| Kick::new(Arc::clone(&journal.queue), Arc::clone(&journal.lead)));
                    Some((seq, journal.epoch, Some((durable, kick))))
                }
            };
            (removed, durable)
        };
        let Some((seq, epoch, mine)) = durable else {
            return Ok(removed);
        };
        let durable = match mine {
            Some((durable, kick)) => {
                if let Some(kick) = kick {
                    kick.fire(false);
                }
                // A dropped sender means the ledger is gone: unknown.
                let durable = async { durable.await.unwrap_or(false) };
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, durable).await.unwrap_or(false),
                    None => durable.await,
                }
            }
            None => {
                let durable = self.synced(seq, epoch);
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, durable)
                        .await
                        .map_err(|_| ServiceError::DeadlineExceeded)?,
                    None => durable.await,
                }
            }
        };
        if durable {
            Ok(removed)
        } else {
            // Deleting is idempotent: a retry finds out.
            Err(ServiceError::StoreUnavailable {
                fate: WriteFate::Unknown,
            })
        }
    }

    /// Resolves once commit `seq` of failure epoch `epoch` is durable
    /// (`true`) or failed (`false`).
    fn synced(&self, seq: CommitSeq, epoch: u64) -> impl Future<Output = bool> + Send + 'static {
        let mut synced = self.synced.subscribe();
        async move {
            match synced.wait_for(|s| s.resolved(seq, epoch).is_some()).await {
                Ok(s) => s.resolved(seq, epoch) == Some(true),
                // The ledger is gone: nothing will ever say.
                Err(_) => false,
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> StatsView {
        let inner = self.lock();
        let dedup = inner.store.stats();
        StatsView {
            dedup_entries: dedup.entries,
            dedup_hits: dedup.hits,
            dedup_evictions: dedup.evictions,
            dedup_evictions_early: dedup.evictions_early,
            dedup_mismatches: dedup.mismatches,
            dedup_in_flight: inner.in_flight.len() as u64,
            applied: inner.applied,
            registers: inner.registers.len() as u64,
        }
    }

    /// Whether the ledger can serve registers now, and every change.
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.health.subscribe()
    }

    /// Journal mode: every commit up to `through` is durable. Releases their
    /// claims (duplicates then replay them), lets reads of their registers
    /// through, counts them applied and emits their events.
    pub(crate) fn synced_through(&self, through: CommitSeq) {
        let (mut wake, mut callers) = (Vec::new(), Vec::new());
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let Some(journal) = &mut inner.journal else {
                return;
            };
            while journal.awaiting.front().is_some_and(|a| a.seq <= through) {
                let Some(done) = journal.awaiting.pop_front() else {
                    break;
                };
                if let Some(register) = &done.register
                    && journal.unsynced.get(register) == Some(&done.seq)
                {
                    journal.unsynced.remove(register);
                }
                if done.applied {
                    inner.applied += 1;
                }
                if let Some(event) = done.event {
                    self.outbox.push(event);
                }
                if let Some(flight) = done.release.and_then(|id| inner.in_flight.remove(&id)) {
                    wake.push(flight.done);
                }
                callers.push(done.done);
            }
        }
        self.synced
            .send_modify(|s| s.durable = s.durable.max(through));
        for caller in callers {
            // A caller that gave up has dropped its receiver: nothing to do.
            let _ = caller.send(true);
        }
        for done in wake {
            done.notify_waiters();
        }
    }

    /// Journal mode: a batch failed. Every commit decided so far and not
    /// durable fails with an unknown fate; the ledger refuses everything
    /// until [`MemoryLedger::reloaded`] (memory may now hold what the disk
    /// does not).
    pub(crate) fn sync_failed(&self) {
        let (mut wake, mut callers) = (Vec::new(), Vec::new());
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let Some(journal) = &mut inner.journal else {
                return;
            };
            journal.broken = true;
            journal.epoch += 1;
            journal.unsynced.clear();
            for lost in journal.awaiting.drain(..) {
                if let Some(flight) = lost.release.and_then(|id| inner.in_flight.remove(&id)) {
                    wake.push(flight.done);
                }
                callers.push(lost.done);
            }
        }
        self.synced.send_modify(|s| {
            s.epoch += 1;
            s.durable_before_failure = s.durable;
        });
        self.health.send_replace(StoreHealth::NotServing);
        for caller in callers {
            let _ = caller.send(false);
        }
        for done in wake {
            done.notify_waiters();
        }
    }

    /// Journal mode: memory reloaded from disk after a failure; serving
    /// again. The dedup counters carry over (they describe this process).
    pub(crate) fn reloaded(&self, registers: Registers, mut store: DedupStore) {
        {
            let mut inner = self.lock();
            store.carry_counters(&inner.store);
            inner.owners.retain(|name| registers.contains(name));
            inner.registers = registers;
            inner.store = store;
            if let Some(journal) = &mut inner.journal {
                journal.broken = false;
            }
        }
        self.health.send_replace(StoreHealth::Serving);
    }
}

fn evicted_event(e: Evicted) -> Event {
    Event::DedupEvicted {
        // The store keeps no IDs, only their digests.
        request_id: e.key.to_string(),
        reason: e.reason,
    }
}

/// The in-memory backend of the [`Ledger`] seam: the protocol above,
/// behind boxed futures.
impl Ledger for MemoryLedger {
    fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<store::Begin<'a>, ServiceError>> {
        Box::pin(async move {
            Ok(match MemoryLedger::begin(self, args, deadline).await? {
                Begin::Replay(result) => store::Begin::Replay(result),
                Begin::Execute(claim) => store::Begin::Execute(Box::new(claim)),
            })
        })
    }

    fn get<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>> {
        Box::pin(MemoryLedger::get(self, register, deadline))
    }

    fn delete<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<f64>, ServiceError>> {
        Box::pin(MemoryLedger::delete(self, register, deadline))
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>> {
        Box::pin(std::future::ready(Ok(MemoryLedger::stats(self))))
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        MemoryLedger::health(self)
    }

    fn backend(&self) -> Backend {
        Backend::Memory
    }
}

#[cfg(test)]
mod tests;
