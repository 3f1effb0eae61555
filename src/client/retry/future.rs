//! The retry layer's response future: a state machine that readies the
//! inner service, sends an attempt, and after a failure either returns or
//! pauses and starts over, as the [`RetryPolicy`](super::RetryPolicy)
//! decides.
//!
//! Written out rather than as an `async` block so the layer needs no
//! allocation of its own: the layers' futures then share one allocation,
//! and only the transport's tonic future is boxed apart (the
//! `client_overhead` benchmark measures the stack against bare tonic).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::Service;

use super::{Decision, Shared, Stop};
use crate::{
    client::{
        call::{Call, Reply},
        error::{CallError, Cause},
    },
    trace::{Event, Outcome},
};

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S>
    where
        S: Service<Call>,
    {
        inner: S,
        call: Call,
        shared: Arc<Shared>,
        // What the attempts so far say about the request's effect.
        outcome: Outcome,
        // Attempts that went out (a circuit-open refusal sends nothing).
        sent: u32,
        #[pin]
        state: State<S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Waiting for the inner service to be ready for the next attempt.
        Ready,
        // An attempt in flight.
        Calling { #[pin] future: F },
        // The pause before the next attempt.
        Pausing { #[pin] sleep: Sleep },
    }
}

impl<S: Service<Call>> std::fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("call", &self.call.id)
            .field("attempt", &self.call.attempt)
            .finish_non_exhaustive()
    }
}

impl<S: Service<Call>> ResponseFuture<S> {
    pub(super) fn new(inner: S, mut call: Call, shared: Arc<Shared>) -> Self {
        call.attempt = 1;
        Self {
            inner,
            call,
            shared,
            outcome: Outcome::NotApplied,
            sent: 0,
            state: State::Ready,
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Call, Response = Reply, Error = CallError>,
{
    type Output = Result<Reply, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Ready => {
                    ready!(this.inner.poll_ready(cx))?;
                    let future = this.inner.call(this.call.clone());
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let mut err = match ready!(future.poll(cx)) {
                        Ok(reply) => {
                            this.shared.on_success();
                            return Poll::Ready(Ok(reply));
                        }
                        Err(e) => e,
                    };
                    if !matches!(err.cause, Cause::CircuitOpen { .. }) {
                        *this.sent += 1;
                    }
                    *this.outcome = this.outcome.merge(err.outcome);
                    match this.shared.decide(this.call, &err) {
                        Decision::Retry { after, pushback } => {
                            this.shared.events.emit(Event::Backoff {
                                call: this.call.id,
                                next_attempt: this.call.attempt + 1,
                                delay_ms: after.as_millis() as u64,
                                pushback,
                            });
                            this.state.set(State::Pausing {
                                sleep: tokio::time::sleep(after),
                            });
                        }
                        Decision::Stop(stop) => {
                            if stop != Stop::NonRetryable || this.call.attempt > 1 {
                                this.shared.events.emit(Event::GaveUp {
                                    call: this.call.id,
                                    reason: stop,
                                });
                            }
                            err.attempts = *this.sent;
                            err.outcome = *this.outcome;
                            match stop {
                                Stop::BudgetExhausted => err.cause = Cause::BudgetExhausted,
                                Stop::ServerPushback => err.cause = Cause::PushbackStop,
                                _ => {}
                            }
                            return Poll::Ready(Err(err));
                        }
                    }
                }
                StateProj::Pausing { sleep } => {
                    ready!(sleep.poll(cx));
                    this.call.attempt += 1;
                    this.state.set(State::Ready);
                }
            }
        }
    }
}
