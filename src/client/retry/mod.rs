//! The retry layer: re-sends a failed attempt when the [`RetryPolicy`] says
//! so, after the pause it chooses, and never past the call's deadline; or,
//! for calls that may be repeated when a hedging policy is set, hedges them
//! ([`crate::client::hedge`]). Both re-send one logical call under one
//! request ID and draw on one throttle, so they are one layer: a call is
//! either retried or hedged, never both (gRPC A6 makes the same choice).
//!
//! It sits outside the circuit breaker and the per-attempt layer, so every
//! real attempt feeds the breaker, and an open breaker's fast failure stops
//! the retry loop at once instead of being hammered. It merges what every
//! attempt says about the request's effect: once any attempt may have been
//! applied, the call may have been (see [`crate::trace::Outcome::merge`]).
//!
//! # Layout
//! - [`future`]: the response future, a small state machine (ready, call,
//!   pause) that carries out the policy's decisions.
//! - [`policy`]: the decision ([`RetryPolicy`], [`RetryConfig`]).
//! - [`throttle`]: which retry throttle ([`Throttle`]) and its state
//!   ([`Budget`]), shared by retries and hedges.
//! - [`backoff`]: exponential backoff with full jitter, and [`budget`]:
//!   gRPC's token-bucket retry throttling — both in [`crate::resilience`],
//!   shared with the server, and re-exported here.

pub use crate::resilience::{backoff, budget};

pub mod future;
pub mod policy;
pub mod throttle;

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use tower::{Layer, Service};

pub use backoff::Backoff;
pub use budget::{ThrottleConfig, TokenBucket};
pub use future::ResponseFuture;
pub use policy::{Decision, RetryConfig, RetryConfigError, RetryPolicy, Stop};
pub use throttle::{Budget, Throttle};

use crate::{
    client::{
        call::{Call, Reply, Route},
        error::{CallError, Cause},
        hedge::{AfterFailure, HedgePolicy, HedgeTrigger},
    },
    trace::{Event, EventSink, Outcome},
};

/// What the layer counted since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResendCounters {
    /// Logical calls.
    pub calls: u64,
    /// Retries sent (after a failed attempt and a pause).
    pub retries: u64,
    /// Hedges sent (attempts beyond the first of a hedged call).
    pub hedges: u64,
    /// Hedged calls won by a hedge rather than by their first attempt.
    pub hedges_won: u64,
    /// Attempts cancelled because another attempt of their call settled it.
    pub hedges_cancelled: u64,
    /// Retries and hedges the throttle refused.
    pub throttled: u64,
}

#[derive(Debug, Default)]
struct Counts {
    calls: AtomicU64,
    retries: AtomicU64,
    hedges: AtomicU64,
    hedges_won: AtomicU64,
    hedges_cancelled: AtomicU64,
    throttled: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the failed attempts of one call add up to, for the error it ends
/// with: retried and hedged calls keep the same account.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failed {
    /// Attempts that went out (a refusal by an open breaker, or by a
    /// balancer with no endpoint to offer, sends nothing).
    sent: u32,
    /// What they say about the request's effect, merged: once any may have
    /// been applied, the call may have been.
    outcome: Outcome,
}

impl Failed {
    /// No attempt has failed yet.
    pub(crate) const NONE: Self = Self {
        sent: 0,
        outcome: Outcome::NotApplied,
    };

    /// Adds a failed attempt.
    pub(crate) fn add(&mut self, err: &CallError) {
        if !matches!(err.cause, Cause::CircuitOpen { .. } | Cause::NoEndpoint) {
            self.sent += 1;
        }
        self.outcome = self.outcome.merge(err.outcome);
    }
}

/// State shared by every clone of the layer's services, behind one `Arc`
/// (one reference count per call, not one per field): the throttle is per
/// client (gRPC keeps one per server name, which a client's endpoint set
/// is), the RNG is one seeded stream so a seed fixes every jitter draw.
#[derive(Debug)]
pub(crate) struct Shared {
    policy: RetryPolicy,
    pub(crate) hedge: Option<HedgePolicy>,
    // std Mutexes: held for a few arithmetic operations, never across await.
    budget: Option<Mutex<Budget>>,
    /// The throttle books every call (the ratio budget does).
    deposits: bool,
    rng: Mutex<ChaCha8Rng>,
    events: EventSink,
    counts: Counts,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// A logical call begins.
    fn on_call(&self) {
        bump(&self.counts.calls);
        // Only the ratio budget books calls: the token bucket's lock is not
        // worth taking for nothing on every call.
        if self.deposits
            && let Some(b) = &self.budget
        {
            lock(b).on_call(Instant::now());
        }
    }

    /// A success refills the budget.
    pub(crate) fn on_success(&self) {
        if let Some(b) = &self.budget {
            lock(b).on_success();
        }
    }

    /// Asks the retry policy what to do after `err`, now.
    fn decide(&self, call: &Call, err: &CallError) -> Decision {
        let mut budget = self.budget.as_ref().map(lock);
        let mut rng = lock(&self.rng);
        let decision = self.policy.decide(
            call,
            err,
            Instant::now(),
            call.deadline,
            budget.as_deref_mut(),
            &mut *rng,
        );
        match decision {
            Decision::Retry { .. } => bump(&self.counts.retries),
            Decision::Stop(Stop::BudgetExhausted) => bump(&self.counts.throttled),
            Decision::Stop(_) => {}
        }
        decision
    }

    /// Asks the hedging policy what follows `err`.
    pub(crate) fn hedge_after_failure(
        &self,
        call: &Call,
        err: &CallError,
        now: Instant,
    ) -> AfterFailure {
        let Some(hedge) = &self.hedge else {
            return AfterFailure::Fatal;
        };
        let mut budget = self.budget.as_ref().map(lock);
        hedge.after_failure(call, err, now, budget.as_deref_mut())
    }

    /// May hedge number `attempt` go out now?
    pub(crate) fn may_hedge(
        &self,
        attempt: u32,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Result<(), Stop> {
        let Some(hedge) = &self.hedge else {
            return Err(Stop::NonRetryable);
        };
        let mut budget = self.budget.as_ref().map(lock);
        let verdict = hedge.may_hedge(attempt, now, deadline, budget.as_deref_mut());
        if verdict == Err(Stop::BudgetExhausted) {
            bump(&self.counts.throttled);
        }
        verdict
    }

    pub(crate) fn on_hedge_sent(&self, call: u64, attempt: u32, trigger: HedgeTrigger) {
        bump(&self.counts.hedges);
        self.events.emit_with(|| Event::HedgeSent {
            call,
            attempt,
            trigger,
        });
    }

    pub(crate) fn on_hedge_won(&self, call: u64, attempt: u32) {
        if attempt > 1 {
            bump(&self.counts.hedges_won);
        }
        self.events.emit_with(|| Event::HedgeWon { call, attempt });
    }

    pub(crate) fn on_hedge_cancelled(&self, call: u64, attempt: u32) {
        bump(&self.counts.hedges_cancelled);
        self.events
            .emit_with(|| Event::HedgeCancelled { call, attempt });
    }

    /// The error a call ends with when its policy gives up for `stop`:
    /// announced (unless the first attempt simply failed with a
    /// non-retryable status), with the attempts sent and the merged
    /// outcome, its cause saying why retrying stopped.
    pub(crate) fn give_up(
        &self,
        call: &Call,
        mut err: CallError,
        stop: Stop,
        failed: Failed,
    ) -> CallError {
        if stop != Stop::NonRetryable || call.attempt > 1 {
            self.events.emit(Event::GaveUp {
                call: call.id,
                reason: stop,
            });
        }
        err.attempts = failed.sent;
        err.outcome = failed.outcome;
        match stop {
            Stop::BudgetExhausted => err.cause = Cause::BudgetExhausted,
            Stop::ServerPushback => err.cause = Cause::PushbackStop,
            _ => {}
        }
        err
    }
}

/// Adds retries (and hedging, when a hedging policy is given) to a call
/// service.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// Retries per `policy`, jitter drawn from a ChaCha8 stream seeded with
    /// `seed`.
    pub fn new(policy: RetryPolicy, seed: u64, events: EventSink) -> Self {
        Self::build(policy, None, seed, events)
    }

    /// Hedges the calls that may be repeated as `hedge` says, and retries
    /// the others per `policy`; one throttle for both.
    pub fn hedged(policy: RetryPolicy, hedge: HedgePolicy, seed: u64, events: EventSink) -> Self {
        Self::build(policy, Some(hedge), seed, events)
    }

    fn build(
        policy: RetryPolicy,
        hedge: Option<HedgePolicy>,
        seed: u64,
        events: EventSink,
    ) -> Self {
        let budget = policy
            .config()
            .throttle
            .map(|t| Mutex::new(Budget::new(t, Instant::now())));
        let deposits = matches!(policy.config().throttle, Some(Throttle::Ratio(_)));
        Self {
            shared: Arc::new(Shared {
                policy,
                hedge,
                budget,
                deposits,
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
                events,
                counts: Counts::default(),
            }),
        }
    }

    /// What is left in the retry throttle: tokens in the bucket, or whole
    /// retries in the ratio budget (`None` when throttling is off).
    pub fn budget_tokens(&self) -> Option<f64> {
        let b = self.shared.budget.as_ref()?;
        Some(lock(b).level(Instant::now()))
    }

    /// Counts since the layer was built.
    pub fn counters(&self) -> ResendCounters {
        let c = &self.shared.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ResendCounters {
            calls: get(&c.calls),
            retries: get(&c.retries),
            hedges: get(&c.hedges),
            hedges_won: get(&c.hedges_won),
            hedges_cancelled: get(&c.hedges_cancelled),
            throttled: get(&c.throttled),
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The retry service.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Call> for Retry<S>
where
    S: Service<Call, Response = Reply, Error = CallError> + Clone,
{
    type Response = Reply;
    type Error = CallError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // Readiness is awaited per attempt inside the future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        // The future gets the service that was made ready (none was: see
        // `poll_ready`) and this one keeps a fresh clone, as tower's own
        // retry does.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // One route per logical call: where its attempts went, so the
        // balancer below sends each retry or hedge somewhere new.
        call.route = Route::new();
        call.attempt = 1;
        self.shared.on_call();
        let hedged = self.shared.hedge.as_ref().is_some_and(|h| h.applies(&call));
        if hedged {
            ResponseFuture::hedging(inner, call, Arc::clone(&self.shared))
        } else {
            ResponseFuture::retrying(inner, call, Arc::clone(&self.shared))
        }
    }
}
