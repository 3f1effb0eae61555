//! The retry layer: re-sends a failed attempt when the [`RetryPolicy`] says
//! so, after the pause it chooses, and never past the call's deadline.
//!
//! It sits outside the circuit breaker and the per-attempt layer, so every
//! real attempt feeds the breaker, and an open breaker's fast failure stops
//! the retry loop at once instead of being hammered. It merges what every
//! attempt says about the request's effect: once any attempt may have been
//! applied, the call may have been (see [`crate::trace::Outcome::merge`]).
//!
//! The response future is a boxed `async` block rather than a hand-written
//! state machine: the loop awaits readiness, the attempt and a sleep, and a
//! box per logical call is noise next to a network round trip (the
//! `client_overhead` benchmark measures the whole stack against bare tonic).
//!
//! # Layout
//! - [`policy`]: the decision ([`RetryPolicy`], [`RetryConfig`]).
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`budget`]: gRPC's token-bucket retry throttling.

pub mod backoff;
pub mod budget;
pub mod policy;

use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

pub use backoff::Backoff;
pub use budget::{ThrottleConfig, TokenBucket};
pub use policy::{Decision, RetryConfig, RetryConfigError, RetryPolicy, Stop};

use crate::{
    client::{
        call::{Call, CallFuture, Reply},
        error::{CallError, Cause},
    },
    trace::{Event, EventSink, Outcome},
};

/// State shared by every clone of the layer's services: the budget is per
/// client (per server), the RNG is one seeded stream so a seed fixes every
/// jitter draw.
#[derive(Debug)]
struct Shared {
    // std Mutexes: held for a few arithmetic operations, never across await.
    budget: Option<Mutex<TokenBucket>>,
    rng: Mutex<ChaCha8Rng>,
}

/// Adds retries to a call service.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
    shared: Arc<Shared>,
    events: EventSink,
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
            policy: Arc::new(policy),
            shared: Arc::new(Shared {
                budget,
                rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            }),
            events,
        }
    }

    /// Tokens left in the retry budget (`None` when throttling is off).
    pub fn budget_tokens(&self) -> Option<f64> {
        let b = self.shared.budget.as_ref()?;
        Some(b.lock().unwrap_or_else(|p| p.into_inner()).tokens())
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            layer: self.clone(),
        }
    }
}

/// The retry service.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    layer: RetryLayer,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S> Service<Call> for Retry<S>
where
    S: Service<Call, Response = Reply, Error = CallError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Reply;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // Readiness is awaited per attempt inside the future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let mut outcome = Outcome::NotApplied;
            let mut sent = 0u32;
            call.attempt = 1;
            loop {
                let result = inner.ready().await?.call(call.clone()).await;
                let mut err = match result {
                    Ok(reply) => {
                        if let Some(b) = &layer.shared.budget {
                            lock(b).on_success();
                        }
                        return Ok(reply);
                    }
                    Err(e) => e,
                };
                if !matches!(err.cause, Cause::CircuitOpen { .. }) {
                    sent += 1;
                }
                outcome = outcome.merge(err.outcome);
                let decision = {
                    let mut budget = layer.shared.budget.as_ref().map(lock);
                    let mut rng = lock(&layer.shared.rng);
                    layer.policy.decide(
                        &call,
                        &err,
                        Instant::now(),
                        call.deadline,
                        budget.as_deref_mut(),
                        &mut *rng,
                    )
                };
                match decision {
                    Decision::Retry { after, pushback } => {
                        layer.events.emit(Event::Backoff {
                            call: call.id,
                            next_attempt: call.attempt + 1,
                            delay_ms: after.as_millis() as u64,
                            pushback,
                        });
                        tokio::time::sleep(after).await;
                        call.attempt += 1;
                    }
                    Decision::Stop(stop) => {
                        if stop != Stop::NonRetryable || call.attempt > 1 {
                            layer.events.emit(Event::GaveUp {
                                call: call.id,
                                reason: stop.reason().into(),
                            });
                        }
                        err.attempts = sent;
                        err.outcome = outcome;
                        match stop {
                            Stop::BudgetExhausted => err.cause = Cause::BudgetExhausted,
                            Stop::ServerPushback => err.cause = Cause::PushbackStop,
                            _ => {}
                        }
                        return Err(err);
                    }
                }
            }
        })
    }
}
