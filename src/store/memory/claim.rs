//! The claim on one request ID ([`Claim`]) and its commit: the decision
//! taken in one critical section of [`MemoryLedger`]'s lock — plan the
//! update, apply it in memory, record the outcome — then answered at once
//! in memory, or queued for the journal's writer and answered once
//! durable. Dropping a claim uncommitted releases its ID.

use std::{fmt, future::Future, sync::Arc};

use tokio::sync::{Notify, oneshot};

use super::{Inner, MemoryLedger, UNAVAILABLE, evicted_event};
use crate::{
    core::Quota,
    error::{CalcError, ServiceError},
    store::{
        self, AccumulateArgs, Accumulated, BoxFuture, WriteFate,
        dedup::{Evicted, IdDigest, StoredOutcome},
        journal::{Awaiting, Kick, Pushed, RecordRow, Write},
    },
    trace::Event,
};

/// How [`MemoryLedger::begin`] ended: [`store::Begin`] with the concrete
/// claim.
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
    pub(super) ledger: &'a MemoryLedger,
    pub(super) args: &'a AccumulateArgs,
    /// The digest of the caller's scope and request ID.
    pub(super) key: IdDigest,
    pub(super) fingerprint: u64,
    /// False for a request without an ID: nothing to record or release.
    pub(super) keyed: bool,
    /// Committed or released already; `Drop` has nothing left to do.
    pub(super) finished: bool,
}

impl fmt::Debug for Claim<'_> {
    // Not derived: that would print the whole ledger.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("request_id", &self.args.request_id)
            .field("keyed", &self.keyed)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// A decided commit: answered at once in memory, once durable with a
/// journal.
enum Decided {
    Done(Result<Accumulated, ServiceError>),
    Syncing {
        durable: oneshot::Receiver<bool>,
        result: Result<f64, CalcError>,
        /// This caller's duty to see the queue to the disk, fired once the
        /// runtime has run what was ready (see [`Queue`](store::journal::Queue)).
        kick: Option<Kick>,
    },
}

impl<'a> Claim<'a> {
    /// The request ID claimed (empty for a request without one).
    pub fn request_id(&self) -> &str {
        &self.args.request_id
    }

    /// Executes the request. The decision is taken *now*, in one critical
    /// section: plans the update, applies it in memory, records the outcome
    /// and (in memory) releases the claim, waking duplicates so they replay
    /// it. The returned future resolves at once in memory, and with a
    /// journal once the commit is durable (dropping it does not undo the
    /// commit: it only stops waiting, as a lost response would).
    ///
    /// State-dependent rule errors (overflow, too many registers) are
    /// recorded and returned. A journal failure answers
    /// [`ServiceError::StoreUnavailable`]: `NotApplied` if the store was
    /// already broken (nothing decided), `Unknown` if this commit's batch
    /// failed (the disk may hold it).
    pub fn commit(mut self) -> impl Future<Output = Result<Accumulated, ServiceError>> + Send + 'a {
        let ledger = self.ledger;
        let decided = self.decide();
        ledger.outbox.flush();
        async move {
            match decided {
                Decided::Done(result) => result,
                Decided::Syncing {
                    durable,
                    result,
                    kick,
                } => {
                    if let Some(kick) = kick {
                        kick.after_yield().await;
                    }
                    // A dropped sender means the ledger is gone: unknown.
                    let durable = durable.await.unwrap_or(false);
                    // Our `applied` event (and others') were queued when the
                    // writer reported: emit them from here, not from the
                    // writer's thread.
                    ledger.outbox.flush();
                    if !durable {
                        return Err(ServiceError::StoreUnavailable {
                            fate: WriteFate::Unknown,
                        });
                    }
                    result
                        .map(|value| Accumulated {
                            value,
                            replayed: false,
                        })
                        .map_err(ServiceError::from)
                }
            }
        }
    }

    fn decide(&mut self) -> Decided {
        let (ledger, args) = (self.ledger, self.args);
        let outbox = &ledger.outbox;
        let listening = outbox.enabled();
        let evicted = |e: Evicted| {
            if listening {
                outbox.push(evicted_event(e));
            }
        };
        let mut guard = ledger.lock();
        let inner = &mut *guard;
        if inner.journal.as_ref().is_some_and(|j| j.broken) {
            let done = self.release(inner);
            drop(guard);
            wake(done);
            return Decided::Done(Err(UNAVAILABLE));
        }
        // Read under the lock: records enter the FIFO in commit order, so
        // their instants must be too, or TTL expiry (a front pop) lags.
        let now = ledger.clock.now();
        let owner = args.caller.quota_key();
        let quota = Quota {
            held: inner.owners.held(&owner),
            max: ledger.registers_per_client_max,
        };
        let creates = !inner.registers.contains(&args.register);
        let result = inner
            .registers
            .plan_accumulate(&args.register, args.delta, quota);
        let outcome = if self.keyed {
            StoredOutcome::of(&result)
        } else {
            None
        };
        // Expire before numbering the record, so a journal's range delete
        // covers what the TTL removed.
        inner.store.expire(now, evicted);
        let record_seq = inner.store.next_seq();
        let delete_below = inner.store.front_seq();
        if let Ok(value) = result {
            inner.registers.set(&args.register, value);
            if creates {
                inner.owners.created(&args.register, owner.clone());
            }
        }
        // Records evicted out of commit order (to make room, from the
        // client holding the most): the journal deletes them one by one.
        let mut deletes = Vec::new();
        // Whom the record is charged to (only keyed requests have one).
        let charged_to = outcome.map(|_| ledger.digest_key.owner(&owner));
        if let (Some(outcome), Some(charged_to)) = (outcome, charged_to) {
            let journaled = inner.journal.is_some();
            inner.store.insert(
                self.key,
                self.fingerprint,
                outcome,
                charged_to,
                now,
                |e: Evicted| {
                    if journaled && e.seq >= delete_below {
                        deletes.push(e.seq);
                    }
                    evicted(e)
                },
            );
        }
        let event = match result {
            Ok(value) if listening => Some(Event::Applied {
                request_id: args.request_id.clone(),
                register: args.register.clone(),
                delta: args.delta,
                value,
            }),
            _ => None,
        };
        let Some(journal) = &mut inner.journal else {
            // In memory, committed is final: count, announce and release
            // in this same critical section, so a waiter woken below finds
            // the record, never an empty slot.
            if result.is_ok() {
                inner.applied += 1;
            }
            if let Some(event) = event {
                outbox.push(event);
            }
            let done = self.release(inner);
            drop(guard);
            wake(done);
            return Decided::Done(
                result
                    .map(|value| Accumulated {
                        value,
                        replayed: false,
                    })
                    .map_err(ServiceError::from),
            );
        };
        // Journal: the claim stays in flight until the write is durable,
        // so duplicates keep waiting; the writer's report releases it.
        self.finished = true;
        let seq = journal.next;
        journal.next += 1;
        // One allocation of the name, shared by the write, the unsynced
        // mark and the awaiting entry.
        let register: Option<Arc<str>> = result.is_ok().then(|| args.register.as_str().into());
        if let Some(name) = &register {
            journal.unsynced.insert(Arc::clone(name), seq);
        }
        let pushed = journal.queue.push(Write {
            seq,
            register: register
                .as_ref()
                .zip(result.as_ref().ok())
                .map(|(name, &value)| (Arc::clone(name), value)),
            delete: None,
            record: outcome.zip(charged_to).map(|(outcome, owner)| RecordRow {
                seq: record_seq,
                key: self.key,
                fingerprint: self.fingerprint,
                outcome,
                owner,
            }),
            delete_below,
            deletes,
        });
        let (done, durable) = oneshot::channel();
        journal.awaiting.push_back(Awaiting {
            seq,
            done,
            release: self.keyed.then_some(self.key),
            applied: result.is_ok(),
            event,
            register,
        });
        // `now` is when this commit was decided, read under the lock above.
        let lone = journal
            .last_decided
            .is_none_or(|last| journal.queue.lone(now.saturating_duration_since(last)));
        journal.last_decided = Some(now);
        let kick = (pushed == Pushed::Kick)
            .then(|| Kick::new(Arc::clone(&journal.queue), Arc::clone(&journal.lead)));
        drop(guard);
        // The queue was idle: this caller sees it to the disk. On tokio's
        // multi-threaded runtime, while callers overlap, only after a
        // yield, in the returned future, so that the commits of every task
        // ready to run join the batch (under load the CPU is what limits
        // throughput, and a redb transaction's fixed cost, ~200,000
        // instructions, is worth sharing); then inline if its commit is
        // still alone, else through the writer thread. A lone caller (see
        // `Queue::lone`) at once and inline: it is spared the trip through
        // the scheduler and two thread hand-offs. (The runtime's idle
        // workers are no such signal: under load one is often parked, and
        // most batches then held one commit.) On a current-thread runtime
        // at once and always inline: no other thread could run anything
        // meanwhile anyway, and a commit that never leaves the thread keeps
        // a paused clock (tests, the simulation) from jumping ahead while a
        // foreign thread works. Not through `block_in_place`: it hands the
        // worker's core to another thread, the very hand-off inline writing
        // spares (measured: no gain at all).
        use tokio::runtime::{Handle, RuntimeFlavor};
        let kick = kick.and_then(|kick| {
            match Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(RuntimeFlavor::MultiThread) if lone => {
                    kick.fire(true);
                    None
                }
                Ok(RuntimeFlavor::MultiThread) => Some(kick),
                Ok(_) => {
                    kick.fire(false);
                    None
                }
                // No runtime: the writer thread writes it (dropping the
                // kick asks it).
                Err(_) => None,
            }
        });
        Decided::Syncing {
            durable,
            result,
            kick,
        }
    }

    /// Removes the in-flight marker (once), returning the notifier to wake
    /// after the lock is released.
    fn release(&mut self, inner: &mut Inner) -> Option<Arc<Notify>> {
        if self.finished || !self.keyed {
            self.finished = true;
            return None;
        }
        self.finished = true;
        inner.in_flight.remove(&self.key).map(|flight| flight.done)
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
            let mut inner = self.ledger.lock();
            self.release(&mut inner)
        };
        wake(done);
    }
}

impl<'a> store::Claim<'a> for Claim<'a> {
    fn request_id(&self) -> &str {
        Claim::request_id(self)
    }

    fn commit(self: Box<Self>) -> BoxFuture<'a, Result<Accumulated, ServiceError>> {
        // Decided here, before the future is first polled.
        Box::pin(Claim::commit(*self))
    }
}
