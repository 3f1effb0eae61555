//! The retry layer: re-sends a failed attempt when the [`RetryPolicy`] says
//! so, after the pause it chooses, and never past the call's deadline.
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
//! - [`backoff`]: exponential backoff with full jitter, and [`budget`]:
//!   gRPC's token-bucket retry throttling — both in [`crate::resilience`],
//!   shared with the server, and re-exported here.

pub use crate::resilience::{backoff, budget};

pub mod future;
pub mod policy;

use std::{
    sync::{Arc, Mutex, MutexGuard},
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

use crate::{
    client::{
        call::{Call, Reply},
        error::CallError,
    },
    trace::EventSink,
};

/// State shared by every clone of the layer's services, behind one `Arc`
/// (one reference count per call, not one per field): the budget is per
/// client (per server), the RNG is one seeded stream so a seed fixes every
/// jitter draw.
#[derive(Debug)]
struct Shared {
    policy: RetryPolicy,
    // std Mutexes: held for a few arithmetic operations, never across await.
    budget: Option<Mutex<TokenBucket>>,
    rng: Mutex<ChaCha8Rng>,
    events: EventSink,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// A success refills the budget.
    fn on_success(&self) {
        if let Some(b) = &self.budget {
            lock(b).on_success();
        }
    }

    /// Asks the policy what to do after `err`, now.
    fn decide(&self, call: &Call, err: &CallError) -> Decision {
        let mut budget = self.budget.as_ref().map(lock);
        let mut rng = lock(&self.rng);
        self.policy.decide(
            call,
            err,
            Instant::now(),
            call.deadline,
            budget.as_deref_mut(),
            &mut *rng,
        )
    }
}

/// Adds retries to a call service.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// Retries per `policy`, jitter drawn from a ChaCha8 stream seeded with
    /// `seed`.
    pub fn new(policy: RetryPolicy, seed: u64, events: EventSink) -> Self {
        let budget = policy
            .config()
            .throttle
            .map(|t| Mutex::new(TokenBucket::new(t)));
        Self {
            shared: Arc::new(Shared {
                policy,
                budget,
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
                events,
            }),
        }
    }

    /// Tokens left in the retry budget (`None` when throttling is off).
    pub fn budget_tokens(&self) -> Option<f64> {
        let b = self.shared.budget.as_ref()?;
        Some(lock(b).tokens())
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

    fn call(&mut self, call: Call) -> Self::Future {
        // The future gets the service that was made ready (none was: see
        // `poll_ready`) and this one keeps a fresh clone, as tower's own
        // retry does.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(inner, call, Arc::clone(&self.shared))
    }
}
