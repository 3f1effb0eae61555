//! The store guard: a [`Ledger`] in front of any other, so that a store
//! that is down or slow cannot take the server down with it.
//!
//! Without it, a replica whose PostgreSQL hangs keeps every `Accumulate`
//! and `GetRegister` waiting until its caller's deadline; those calls fill
//! the server's in-flight cap, and then the pure calls, which never touch
//! the store, are shed too: the store's outage has become the replica's.
//! The guard applies to the store what the client applies to servers:
//!
//! - **a time bound per store call**: the earlier of the caller's
//!   deadline and [`GuardConfig::timeout_ms`], passed down as the deadline
//!   the backend honours (PostgreSQL's ledger turns it into tokio timers
//!   and `lock_timeout`), with a backstop timer of its own a little later
//!   for a backend that does not;
//! - **a circuit breaker** — the client's own policy
//!   ([`crate::resilience::breaker`]) — fed by the store's failures and
//!   slowness, never by a caller's errors ([`policy`] says exactly what
//!   counts). While it is open, register operations are refused at once
//!   with UNAVAILABLE, marked not-applied (nothing was sent), and the
//!   `abacus.v1.Registers` health status reads NOT_SERVING, so balancers
//!   can route writes elsewhere; once the open time is up the guard probes
//!   the store by itself (a stats call), so writes come back within
//!   seconds of the store, with or without traffic;
//! - **a bound on store operations in flight** ([`GuardConfig::in_flight_max`]):
//!   beyond it an operation is refused at once, not-applied, so however
//!   slow the store, it holds at most that many of the server's slots.
//!
//! An `Accumulate` is one operation from its claim to its commit: admitted
//! once (one slot, one breaker ticket), judged once on the store time its
//! two calls took. A claim the caller drops before committing is
//! abandoned: it says nothing about the store.
//!
//! # What callers see
//! - Refused by the guard: [`ServiceError::StoreRefused`], UNAVAILABLE,
//!   not-applied, with the breaker's time to its next probe as pushback.
//! - A call cut by the guard's own limit: the backend's not-applied answer
//!   becomes [`ServiceError::StoreUnavailable`] (the store is too slow),
//!   not DEADLINE_EXCEEDED (the caller's deadline has not passed). Cut by
//!   the caller's deadline, the backend's answer stands.
//! - The backstop fired (a backend that ignored its deadline): an unknown
//!   fate for a claim or a commit (the guard cannot know what the backend
//!   did), not-applied for a read.
//!
//! # Layout
//! - [`config`]: [`GuardConfig`], its defaults and why.
//! - [`policy`]: [`GuardPolicy`], every decision, no I/O, clock passed in.
//! - this file: the [`Ledger`] that carries them out, and the monitor task
//!   that publishes health and probes.

pub mod config;
pub mod policy;

pub use config::{GuardConfig, GuardConfigError};
pub use policy::{CallEnd, CallLimit, GuardCounters, GuardPolicy, Limit, Op, Refusal};

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::{sync::watch, time::Instant};

use crate::{
    error::ServiceError,
    resilience::breaker::{State, Transition},
    store::{
        AccumulateArgs, Accumulated, Backend, Begin, BoxFuture, Claim, Ledger, StatsView,
        StoreHealth, WriteFate,
    },
    trace::{Event, EventSink},
};

/// How long after its own limit the guard waits for a backend that ignores
/// the deadline it was given. Backends that honour it (all of this crate's)
/// answer first, with their precise error.
const BACKSTOP_GRACE: Duration = Duration::from_millis(100);

/// Least time between two self-probes that could not go out (every slot
/// taken), so the monitor never spins.
const PROBE_RETRY: Duration = Duration::from_millis(100);

/// The endpoint name the guard's breaker transitions carry in events and
/// logs.
pub const ENDPOINT: &str = "store";

/// The guard's state at one instant, for tests, logs and demos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardSnapshot {
    /// The breaker's state.
    pub state: State,
    /// Store operations in flight.
    pub in_flight: usize,
    /// Counts since the guard was built.
    pub counters: GuardCounters,
}

/// What the guard's callers and its monitor share.
struct Shared {
    // A std Mutex: every critical section is a decision on plain data,
    // never held across an await.
    policy: Mutex<GuardPolicy<ChaCha8Rng>>,
    /// The breaker's state after every transition, sent under the policy's
    /// lock so that it can never run behind the policy; the monitor
    /// follows it.
    state: watch::Sender<State>,
    /// What `health()` hands out: the backend's health and the breaker's.
    health: watch::Sender<StoreHealth>,
    events: EventSink,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, GuardPolicy<ChaCha8Rng>> {
        // Every decision leaves the policy consistent before returning; a
        // panic elsewhere cannot leave it half-changed.
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits an operation now, bounded by the earlier of the caller's
    /// `deadline` and the guard's own limit, or refuses it with the error
    /// callers get.
    fn admit(self: &Arc<Self>, deadline: Option<Instant>) -> Result<Admitted, ServiceError> {
        let now = Instant::now();
        let (admitted, transition) = {
            let mut policy = self.lock();
            match policy.admit(now) {
                Ok((op, t)) => {
                    self.moved(t);
                    (Ok((op, policy.limit(now, deadline))), t)
                }
                Err(refusal) => (Err(refusal), None),
            }
        };
        self.announce(transition);
        let (op, limit) = admitted.map_err(ServiceError::StoreRefused)?;
        Ok(Admitted {
            shared: Arc::clone(self),
            op: Some(op),
            limit,
        })
    }

    /// Under the policy's lock: tells the monitor about a transition.
    fn moved(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            self.state.send_replace(t.to);
        }
    }

    /// After the lock: logs a transition and reports it as an event.
    fn announce(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            self.events.emit(Event::BreakerTransition {
                endpoint: ENDPOINT.to_owned(),
                from: t.from,
                to: t.to,
            });
        }
    }

    fn finish(&self, op: Op, end: CallEnd) {
        let transition = {
            let mut policy = self.lock();
            let t = policy.finish(op, end, Instant::now());
            self.moved(t);
            t
        };
        self.announce(transition);
    }

    fn snapshot(&self) -> GuardSnapshot {
        let policy = self.lock();
        GuardSnapshot {
            state: policy.state(),
            in_flight: policy.in_flight(),
            counters: policy.counters(),
        }
    }
}

/// An admitted operation, owned by whoever carries it (the begin call,
/// then the claim). Dropped without [`Admitted::finish`] — a caller that
/// gave up, a claim released before its commit — it is abandoned: its slot
/// is freed, the breaker learns nothing.
struct Admitted {
    shared: Arc<Shared>,
    op: Option<Op>,
    /// The bound of every store call of the operation: fixed at
    /// admission, so a commit keeps the bound its claim was given.
    limit: CallLimit,
}

impl Admitted {
    /// Runs one store call bounded by the operation's limit (plus the
    /// backstop), adding its duration to the operation's store time, and
    /// judges it: the caller's answer and what it says about the store.
    /// When the backstop fired (a backend that ignored its deadline), the
    /// answer is UNAVAILABLE with fate `cut`: what the guard can vouch for
    /// about a call it gave up on.
    async fn call<T>(
        &mut self,
        fut: impl Future<Output = Result<T, ServiceError>>,
        cut: WriteFate,
    ) -> (Result<T, ServiceError>, CallEnd) {
        let started = Instant::now();
        let result = tokio::time::timeout_at(self.limit.at + BACKSTOP_GRACE, fut).await;
        if let Some(op) = &mut self.op {
            op.spent(started.elapsed());
        }
        match result {
            Ok(result) => judge(result, self.limit.limit),
            Err(_) => (
                Err(ServiceError::StoreUnavailable { fate: cut }),
                CallEnd::Failed,
            ),
        }
    }

    /// The whole operation as one store call: run, judge, finish.
    async fn run<T>(
        mut self,
        fut: impl Future<Output = Result<T, ServiceError>>,
        cut: WriteFate,
    ) -> Result<T, ServiceError> {
        let (result, end) = self.call(fut, cut).await;
        self.finish(end);
        result
    }

    /// The deadline a backend is given for each store call.
    fn deadline(&self) -> Option<Instant> {
        Some(self.limit.at)
    }

    /// Ends the operation as `end` says.
    fn finish(mut self, end: CallEnd) {
        if let Some(op) = self.op.take() {
            self.shared.finish(op, end);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(op) = self.op.take() {
            self.shared.lock().abandon(op);
        }
    }
}

/// What one store call's result says about the store, and the answer the
/// caller gets: the one place where backend errors meet the breaker.
/// Exhaustive on purpose: a new error must be placed here.
fn judge<T>(result: Result<T, ServiceError>, limit: Limit) -> (Result<T, ServiceError>, CallEnd) {
    use ServiceError as E;
    let end = match &result {
        Ok(_) => CallEnd::Answered,
        // The store answered about the request.
        Err(
            E::Calc(_)
            | E::RequestIdRequired
            | E::InvalidRequestId(_)
            | E::RequestIdReused { .. }
            | E::DeleteUnsupported,
        ) => CallEnd::Answered,
        // The deadline the backend was given ran out. If it was the guard's
        // own limit, the store is too slow: say so, with the same
        // certainty (a backend answers DEADLINE_EXCEEDED only before
        // anything could apply).
        Err(E::DeadlineExceeded) => match limit {
            Limit::Caller => CallEnd::Unanswered,
            Limit::Guard => {
                return (
                    Err(E::StoreUnavailable {
                        fate: WriteFate::NotApplied,
                    }),
                    CallEnd::Failed,
                );
            }
        },
        // A wait for another attempt of the same request, or for a store
        // too slow to tell them apart: judged on how long it took.
        Err(E::StillInFlight { .. }) => CallEnd::Unanswered,
        Err(E::StoreUnavailable { .. } | E::StoreRefused(_)) => CallEnd::Failed,
        // Refusals that never reached the store (a backend's own table of
        // executions is full) and the server's faults, which no backend
        // answers: instant, so they count for nothing.
        Err(
            E::Overloaded { .. }
            | E::Saturated { .. }
            | E::InjectedUnavailable
            | E::ResponseDropped,
        ) => CallEnd::Unanswered,
    };
    (result, end)
}

/// A [`Ledger`] that guards another: see the module documentation.
pub struct GuardedLedger {
    inner: Arc<dyn Ledger>,
    shared: Arc<Shared>,
    /// Aborted on drop: the monitor lives exactly as long as the guard.
    monitor: tokio::task::AbortHandle,
}

impl fmt::Debug for GuardedLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedLedger")
            .field("inner", &self.inner)
            .field("guard", &self.shared.snapshot())
            .finish_non_exhaustive()
    }
}

impl Drop for GuardedLedger {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}

impl GuardedLedger {
    /// Guards `inner` as `config` says, reporting breaker transitions to
    /// `events`; `seed` seeds the breaker's jitter. Starts the monitor
    /// task, so it must run inside a tokio runtime.
    pub fn new(
        inner: Arc<dyn Ledger>,
        config: GuardConfig,
        events: EventSink,
        seed: u64,
    ) -> Result<Self, GuardConfigError> {
        let policy = GuardPolicy::new(config, ChaCha8Rng::seed_from_u64(seed))?;
        let inner_health = inner.health();
        let (state, watched) = watch::channel(State::Closed);
        let (health, _) = watch::channel(*inner_health.borrow());
        let shared = Arc::new(Shared {
            policy: Mutex::new(policy),
            state,
            health,
            events,
        });
        let monitor = tokio::spawn(monitor(
            Arc::clone(&shared),
            Arc::clone(&inner),
            inner_health,
            watched,
        ))
        .abort_handle();
        Ok(Self {
            inner,
            shared,
            monitor,
        })
    }

    /// The guard's state now.
    pub fn snapshot(&self) -> GuardSnapshot {
        self.shared.snapshot()
    }

    /// The ledger it guards.
    pub fn inner(&self) -> &Arc<dyn Ledger> {
        &self.inner
    }

    async fn begin_guarded<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> Result<Begin<'a>, ServiceError> {
        let mut admitted = self.shared.admit(deadline)?;
        // Cut off by the backstop, the backend may have claimed, or be
        // waiting for another attempt of this request that may apply.
        let (result, end) = admitted
            .call(
                self.inner.begin(args, admitted.deadline()),
                WriteFate::Unknown,
            )
            .await;
        match result {
            // The operation goes on: the claim carries it to its commit.
            Ok(Begin::Execute(claim)) => Ok(Begin::Execute(Box::new(GuardedClaim {
                inner: claim,
                admitted,
            }))),
            other => {
                admitted.finish(end);
                other
            }
        }
    }
}

/// A claim of the guarded ledger: the backend's claim and the operation
/// it belongs to (whose limit, given to the backend at `begin`, the
/// commit keeps).
struct GuardedClaim<'a> {
    inner: Box<dyn Claim<'a> + 'a>,
    admitted: Admitted,
}

impl fmt::Debug for GuardedClaim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedClaim")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<'a> Claim<'a> for GuardedClaim<'a> {
    fn request_id(&self) -> &str {
        self.inner.request_id()
    }

    fn commit(self: Box<Self>) -> BoxFuture<'a, Result<Accumulated, ServiceError>> {
        let Self { inner, admitted } = *self;
        Box::pin(admitted.run(inner.commit(), WriteFate::Unknown))
    }
}

impl Ledger for GuardedLedger {
    fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Begin<'a>, ServiceError>> {
        Box::pin(self.begin_guarded(args, deadline))
    }

    fn get<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>> {
        Box::pin(async move {
            let admitted = self.shared.admit(deadline)?;
            let get = self.inner.get(register, admitted.deadline());
            // A read applies nothing.
            admitted.run(get, WriteFate::NotApplied).await
        })
    }

    fn delete<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<f64>, ServiceError>> {
        Box::pin(async move {
            let admitted = self.shared.admit(deadline)?;
            let delete = self.inner.delete(register, admitted.deadline());
            // It may have reached the store; deleting again is harmless.
            admitted.run(delete, WriteFate::Unknown).await
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>> {
        Box::pin(async move {
            let admitted = self.shared.admit(None)?;
            probe(admitted, &*self.inner).await
        })
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        self.shared.health.subscribe()
    }

    fn backend(&self) -> Backend {
        self.inner.backend()
    }
}

/// A stats call within the guard's limit: `GetStats`, and the monitor's
/// probe.
async fn probe(admitted: Admitted, inner: &dyn Ledger) -> Result<StatsView, ServiceError> {
    admitted.run(inner.stats(), WriteFate::NotApplied).await
}

/// Publishes the guard's health (the backend's, and NOT_SERVING while the
/// breaker is not closed) and probes the store once the breaker's open
/// time is up, so recovery never waits for a caller: balancers that route
/// around a NOT_SERVING replica would otherwise leave it open for good.
async fn monitor(
    shared: Arc<Shared>,
    inner: Arc<dyn Ledger>,
    mut inner_health: watch::Receiver<StoreHealth>,
    mut state: watch::Receiver<State>,
) {
    // A backend that never breaks drops its health sender at once; its
    // receiver then reports a change, forever.
    let mut inner_live = inner_health.has_changed().is_ok();
    loop {
        let breaker = *state.borrow_and_update();
        let backend = *inner_health.borrow_and_update();
        let health = if backend == StoreHealth::Serving && breaker == State::Closed {
            StoreHealth::Serving
        } else {
            StoreHealth::NotServing
        };
        shared
            .health
            .send_if_modified(|h| std::mem::replace(h, health) != health);
        let probe_at = (breaker == State::Open).then(|| {
            let now = Instant::now();
            now + Duration::from_millis(shared.lock().breaker(now).probe_in_ms)
        });
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            changed = inner_health.changed(), if inner_live => {
                inner_live = changed.is_ok();
            }
            () = sleep_until_some(probe_at) => {
                match shared.admit(None) {
                    // The state changes (to half-open) with the admission.
                    Ok(admitted) => {
                        let _ = probe(admitted, &*inner).await;
                    }
                    // Every slot is taken, or a caller's probe is out.
                    Err(_) => tokio::time::sleep(PROBE_RETRY).await,
                }
            }
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
