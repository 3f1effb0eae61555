//! The retry layer's response future: a retried call ([`RetryFuture`]) or
//! a hedged one ([`HedgeFuture`]).
//!
//! A retried call is a state machine that readies the inner service,
//! sends an attempt, and after a failure either returns or pauses and
//! starts over, as the [`RetryPolicy`](super::RetryPolicy) decides.
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

use super::{Decision, Failed, Shared};
use crate::{
    client::{
        call::{Call, Reply},
        error::CallError,
        hedge::HedgeFuture,
    },
    trace::Event,
};

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S>
    where
        S: Service<Call>,
    {
        #[pin]
        kind: Kind<S>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S>
    where
        S: Service<Call>,
    {
        Retrying { #[pin] future: RetryFuture<S> },
        Hedging { #[pin] future: HedgeFuture<S> },
    }
}

impl<S: Service<Call>> std::fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Retrying { future } => future.fmt(f),
            Kind::Hedging { future } => future.fmt(f),
        }
    }
}

impl<S: Service<Call>> ResponseFuture<S> {
    pub(super) fn retrying(inner: S, call: Call, shared: Arc<Shared>) -> Self {
        Self {
            kind: Kind::Retrying {
                future: RetryFuture::new(inner, call, shared),
            },
        }
    }

    pub(super) fn hedging(inner: S, call: Call, shared: Arc<Shared>) -> Self {
        Self {
            kind: Kind::Hedging {
                future: HedgeFuture::new(inner, call, shared),
            },
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Call, Response = Reply, Error = CallError>,
{
    type Output = Result<Reply, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Retrying { future } => future.poll(cx),
            KindProj::Hedging { future } => future.poll(cx),
        }
    }
}

pin_project! {
    /// A retried call: one attempt at a time.
    pub struct RetryFuture<S>
    where
        S: Service<Call>,
    {
        inner: S,
        call: Call,
        shared: Arc<Shared>,
        // The attempts that failed so far.
        failed: Failed,
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

impl<S: Service<Call>> std::fmt::Debug for RetryFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryFuture")
            .field("call", &self.call.id)
            .field("attempt", &self.call.attempt)
            .finish_non_exhaustive()
    }
}

impl<S: Service<Call>> RetryFuture<S> {
    fn new(inner: S, call: Call, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            call,
            shared,
            failed: Failed::NONE,
            state: State::Ready,
        }
    }
}

impl<S> Future for RetryFuture<S>
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
                    let err = match ready!(future.poll(cx)) {
                        Ok(reply) => {
                            this.shared.on_success();
                            return Poll::Ready(Ok(reply));
                        }
                        Err(e) => e,
                    };
                    this.failed.add(&err);
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
                            return Poll::Ready(Err(this.shared.give_up(
                                this.call,
                                err,
                                stop,
                                *this.failed,
                            )));
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
