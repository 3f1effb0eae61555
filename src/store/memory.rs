//! The server's state: registers, the dedup store, the in-flight claims and
//! (in durable mode) the database, behind one lock, with the two-step
//! `Accumulate` protocol that makes a retried request apply at most once.
//!
//! # Protocol
//! [`MemoryLedger::begin`] validates the payload and the request ID, then either
//! answers from the dedup store ([`Begin::Replay`]), joins an execution of
//! the same ID already in flight (waits, then looks again), or claims the ID
//! ([`Begin::Execute`]). The adapter then runs whatever comes between claim
//! and commit (fault delay, deadline check, injected failure) and calls
//! [`Claim::commit`], or drops the claim to release it. See
//! [`crate::store::dedup`] for why it works this way.
//!
//! # Atomicity
//! Every mutation is one synchronous critical section with no `.await`
//! inside: `commit` plans the update, writes the durable transaction (if
//! any), updates the register, inserts the dedup record and releases the
//! claim under one lock acquisition. A cancelled handler therefore either
//! committed entirely or not at all, and a crash (process or simulated host)
//! cannot separate a register update from its record.
//!
//! Events are emitted inside the critical section, so their order in a trace
//! is the commit order; event hooks must not call back into `MemoryLedger`.

use std::{
    collections::HashMap,
    fmt,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{Notify, futures::OwnedNotified},
    time::Instant,
};

use crate::{
    core::{self, Registers},
    error::ServiceError,
    store::{
        self, AccumulateArgs, Accumulated, Backend, BoxFuture, Ledger, StatsView,
        dedup::{
            DedupConfig, DedupStore, Evicted, Lookup, StoredOutcome, fingerprint,
            validate_request_id,
        },
        redb::file::{Durable, RecordRow, StorageError, Write},
    },
    trace::{Event, EventSink},
};

/// Pushback suggested when the in-flight table is full: long enough for a
/// typical execution to finish.
const IN_FLIGHT_PUSHBACK_MS: u64 = 100;

/// How [`MemoryLedger::begin`] ended: [`store::Begin`] with the concrete claim.
#[derive(Debug)]
pub enum Begin<'a> {
    /// The first outcome of an earlier execution, to answer as is.
    Replay(Result<Accumulated, ServiceError>),
    /// This request holds the claim and may execute.
    Execute(Claim<'a>),
}

/// The right to execute one `Accumulate`. While it lives, duplicates of its
/// request ID wait instead of executing; dropping it uncommitted releases
/// the ID without a record, and one waiter takes over.
#[must_use = "dropping a claim releases it without applying the request"]
pub struct Claim<'a> {
    state: &'a MemoryLedger,
    args: &'a AccumulateArgs,
    fingerprint: u64,
    /// False for a request without an ID: nothing to record or release.
    keyed: bool,
    /// Committed or released already; `Drop` has nothing left to do.
    finished: bool,
}

impl fmt::Debug for Claim<'_> {
    // Not derived: that would print the whole state.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("request_id", &self.args.request_id)
            .field("keyed", &self.keyed)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// An ID being executed.
#[derive(Debug)]
struct Flight {
    /// Fingerprint of the executing payload, so a reuse with a different
    /// payload is refused at once instead of joining.
    fingerprint: u64,
    /// Woken when the claim is committed or released.
    done: Arc<Notify>,
}

#[derive(Debug)]
struct Inner {
    registers: Registers,
    applied: u64,
    store: DedupStore,
    /// Claimed, uncommitted request IDs. Only ever looked up by key, never
    /// iterated, so hash order cannot reach behaviour or output. Its size is
    /// capped by `in_flight_max`.
    in_flight: HashMap<Box<str>, Flight>,
    /// The database, in durable mode. Inside the lock because its write
    /// transaction is part of the commit's critical section.
    durable: Option<Durable>,
}

/// Registers plus everything that must change together with them.
#[derive(Debug)]
pub struct MemoryLedger {
    // A std Mutex, not tokio's: the critical sections are short, synchronous
    // and never hold the lock across an await, which is what makes them
    // atomic with respect to cancellation. One lock for registers, store and
    // claims means there is no lock order to get wrong.
    inner: Mutex<Inner>,
    events: EventSink,
    join_wait_max: Duration,
    in_flight_max: usize,
    /// `DedupConfig::enabled`.
    dedup_enabled: bool,
    /// `DedupConfig::ttl`, to warn about callers that wait longer than a
    /// record lives.
    ttl: Duration,
    /// Set once the TTL warning was logged (it is about configuration, not
    /// about each request).
    ttl_warned: std::sync::atomic::AtomicBool,
}

enum Attempt<'a> {
    Ready(Begin<'a>),
    Wait(OwnedNotified),
}

fn emit_evicted(events: &EventSink, e: Evicted<'_>) {
    events.emit(Event::DedupEvicted {
        request_id: e.request_id.to_owned(),
        reason: e.reason,
    });
}

fn reused(args: &AccumulateArgs, first: u64, this: u64) -> ServiceError {
    ServiceError::RequestIdReused {
        request_id: args.request_id.clone(),
        // Only the fingerprint of the first payload is kept (see
        // `dedup::key`), so that is all the message can say about it.
        first: format!("a request with payload fingerprint {first:016x}"),
        this: format!(
            "Accumulate(register={:?}, delta={}) with fingerprint {this:016x}",
            args.register, args.delta
        ),
    }
}

impl MemoryLedger {
    /// Empty in-memory state reporting to `events`: registers and dedup
    /// records are lost when it is dropped (a restart).
    pub fn new(dedup: DedupConfig, events: EventSink) -> Self {
        Self::with_inner(
            &dedup,
            events,
            Registers::new(),
            DedupStore::new(&dedup),
            None,
        )
    }

    /// Durable state in `data_dir`: reloads registers and dedup records
    /// written by an earlier process, and persists every commit.
    pub fn open(
        dedup: DedupConfig,
        events: EventSink,
        data_dir: &Path,
    ) -> Result<Self, StorageError> {
        let mut durable = Durable::open(data_dir)?;
        let mut registers = Registers::new();
        let mut store = DedupStore::new(&dedup);
        let loaded = durable.load(&mut registers, &mut store, Instant::now(), |e| {
            emit_evicted(&events, e)
        })?;
        tracing::info!(
            path = %durable.path().display(),
            registers = loaded.registers,
            dedup_records = loaded.records,
            "durable state loaded"
        );
        Ok(Self::with_inner(
            &dedup,
            events,
            registers,
            store,
            Some(durable),
        ))
    }

    fn with_inner(
        dedup: &DedupConfig,
        events: EventSink,
        registers: Registers,
        store: DedupStore,
        durable: Option<Durable>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                registers,
                applied: 0,
                store,
                in_flight: HashMap::new(),
                durable,
            }),
            events,
            dedup_enabled: dedup.enabled,
            ttl: dedup.ttl(),
            ttl_warned: std::sync::atomic::AtomicBool::new(false),
            join_wait_max: dedup.join_wait_max(),
            in_flight_max: dedup.in_flight_max.max(1),
        }
    }

    /// True when commits are persisted (`MemoryLedger::open`).
    pub fn is_durable(&self) -> bool {
        self.lock().durable.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner inconsistent
        // (every mutation is computed first, then stored), so poisoning is
        // safe to ignore.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an `Accumulate`: validates it, then replays its ID's recorded
    /// outcome, or waits for an execution of the same ID in flight, or
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
                state: self,
                args,
                fingerprint: 0,
                keyed: false,
                finished: false,
            }));
        }
        validate_request_id(&args.request_id)?;
        self.warn_if_deadline_outlives_records(deadline);
        let fingerprint = fingerprint(&args.register, args.delta);
        let join_until = Instant::now() + self.join_wait_max;
        let wait_until = deadline.map_or(join_until, |d| d.min(join_until));
        let mut joined = false;
        loop {
            let done = match self.try_claim(args, fingerprint, joined)? {
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
        use std::sync::atomic::Ordering;
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
        fingerprint: u64,
        joined: bool,
    ) -> Result<Attempt<'a>, ServiceError> {
        let events = &self.events;
        let mut guard = self.lock();
        // Read under the lock, like commit's: expiry then never judges with
        // an instant older than a commit already made.
        let now = Instant::now();
        let inner = &mut *guard;
        let id = args.request_id.as_str();
        match inner
            .store
            .lookup(id, fingerprint, now, |e| emit_evicted(events, e))
        {
            Lookup::Hit(outcome) => {
                events.emit(Event::DedupHit {
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
                events.emit(Event::DedupMismatch {
                    request_id: id.to_owned(),
                });
                return Err(reused(args, first_fingerprint, fingerprint));
            }
            Lookup::Miss => {}
        }
        if let Some(flight) = inner.in_flight.get(id) {
            if flight.fingerprint != fingerprint {
                let first = flight.fingerprint;
                inner.store.count_mismatch();
                events.emit(Event::DedupMismatch {
                    request_id: id.to_owned(),
                });
                return Err(reused(args, first, fingerprint));
            }
            if !joined {
                events.emit(Event::DedupJoined {
                    request_id: id.to_owned(),
                });
            }
            // Registered under the lock, before the holder can commit or
            // release (both take the lock), so its wake-up cannot be missed.
            return Ok(Attempt::Wait(Arc::clone(&flight.done).notified_owned()));
        }
        if inner.in_flight.len() >= self.in_flight_max {
            return Err(ServiceError::Overloaded {
                in_flight: inner.in_flight.len(),
                limit: self.in_flight_max,
                pushback_ms: IN_FLIGHT_PUSHBACK_MS,
            });
        }
        inner.in_flight.insert(
            id.into(),
            Flight {
                fingerprint,
                done: Arc::new(Notify::new()),
            },
        );
        Ok(Attempt::Ready(Begin::Execute(Claim {
            state: self,
            args,
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
            Begin::Execute(claim) => claim.commit(),
        }
    }

    /// Reads a register.
    pub fn get(&self, register: &str) -> Result<f64, ServiceError> {
        Ok(self.lock().registers.get(register)?)
    }

    /// Current counters.
    pub fn stats(&self) -> StatsView {
        let inner = self.lock();
        let dedup = inner.store.stats();
        StatsView {
            dedup_entries: dedup.entries,
            dedup_hits: dedup.hits,
            dedup_evictions: dedup.evictions,
            dedup_mismatches: dedup.mismatches,
            dedup_in_flight: inner.in_flight.len() as u64,
            applied: inner.applied,
            registers: inner.registers.len() as u64,
        }
    }
}

impl Claim<'_> {
    /// The request ID claimed (empty for a request without one).
    pub fn request_id(&self) -> &str {
        &self.args.request_id
    }

    /// Executes the request: in one critical section, plans the update,
    /// persists it with its dedup record (durable mode), applies it in
    /// memory, records the outcome and releases the claim, waking
    /// duplicates so they replay it.
    ///
    /// MemoryLedger-dependent rule errors (overflow, too many registers) are
    /// recorded and returned; a storage error records nothing and changes
    /// nothing, so a retry executes again.
    pub fn commit(mut self) -> Result<Accumulated, ServiceError> {
        let (state, args) = (self.state, self.args);
        let events = &state.events;
        let mut guard = state.lock();
        // Read under the lock: records enter the FIFO in commit order, so
        // their instants must be too, or TTL expiry (a front pop) lags.
        let now = Instant::now();
        let inner = &mut *guard;
        // Released in the same critical section as the commit, so a waiter
        // woken below finds the record, never an empty slot.
        let done = self.release(inner);
        let result = inner.registers.plan_accumulate(&args.register, args.delta);
        let outcome = if self.keyed {
            StoredOutcome::of(&result)
        } else {
            None
        };
        // Expire before numbering the record, so the durable range delete
        // below covers what the TTL removed.
        inner.store.expire(now, |e| emit_evicted(events, e));
        if let Some(durable) = &mut inner.durable {
            let write = Write {
                register: result.as_ref().ok().map(|v| (args.register.as_str(), *v)),
                record: outcome.map(|outcome| RecordRow {
                    seq: inner.store.next_seq(),
                    request_id: &args.request_id,
                    fingerprint: self.fingerprint,
                    outcome,
                }),
                delete_below: inner.store.front_seq(),
            };
            if let Err(e) = durable.commit(&write) {
                drop(guard);
                wake(done);
                tracing::error!(error = %e, "durable commit failed; request not applied in memory");
                return Err(e.into());
            }
        }
        if let Ok(value) = result {
            inner.registers.set(&args.register, value);
            inner.applied += 1;
        }
        if let Some(outcome) = outcome {
            inner
                .store
                .insert(&args.request_id, self.fingerprint, outcome, now, |e| {
                    emit_evicted(events, e)
                });
        }
        if let Ok(value) = result {
            events.emit(Event::Applied {
                request_id: args.request_id.clone(),
                register: args.register.clone(),
                delta: args.delta,
                value,
            });
        }
        drop(guard);
        wake(done);
        result
            .map(|value| Accumulated {
                value,
                replayed: false,
            })
            .map_err(ServiceError::from)
    }

    /// Removes the in-flight marker (once), returning the notifier to wake
    /// after the lock is released.
    fn release(&mut self, inner: &mut Inner) -> Option<Arc<Notify>> {
        if self.finished || !self.keyed {
            self.finished = true;
            return None;
        }
        self.finished = true;
        inner
            .in_flight
            .remove(self.args.request_id.as_str())
            .map(|flight| flight.done)
    }
}

fn wake(done: Option<Arc<Notify>>) {
    if let Some(done) = done {
        done.notify_waiters();
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.finished || !self.keyed {
            return;
        }
        let done = {
            let mut inner = self.state.lock();
            self.release(&mut inner)
        };
        wake(done);
    }
}

/// The in-memory (and, with `--data-dir`, redb) backend of the
/// [`Ledger`] seam: the synchronous protocol above, behind boxed futures.
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
        _deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>> {
        Box::pin(std::future::ready(MemoryLedger::get(self, register)))
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>> {
        Box::pin(std::future::ready(Ok(MemoryLedger::stats(self))))
    }

    fn backend(&self) -> Backend {
        if self.is_durable() {
            Backend::Redb
        } else {
            Backend::Memory
        }
    }
}

impl<'a> store::Claim<'a> for Claim<'a> {
    fn request_id(&self) -> &str {
        Claim::request_id(self)
    }

    fn commit(self: Box<Self>) -> BoxFuture<'a, Result<Accumulated, ServiceError>> {
        // Synchronous: the whole commit is one critical section.
        Box::pin(std::future::ready(Claim::commit(*self)))
    }
}

#[cfg(test)]
mod tests;
