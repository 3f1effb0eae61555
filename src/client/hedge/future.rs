//! The hedged call's future: several attempts in flight at once (a
//! `FuturesUnordered`, the one collection of futures in the stack), a timer
//! for the next hedge, and the [`HedgePolicy`](super::HedgePolicy)'s
//! decisions after each failure.
//!
//! Dropping it drops every attempt still in flight: tonic resets their
//! HTTP/2 streams (the server sees the cancellation), their breakers
//! abandon the tickets, and the balancer records them as cancelled.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use futures_util::{Stream, stream::FuturesUnordered};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::{AfterFailure, HedgeTrigger};
use crate::{
    client::{
        call::{Call, Reply},
        error::{CallError, Cause},
        retry::{Failed, Shared, Stop},
    },
    trace::Outcome,
};

pin_project! {
    /// One attempt of a hedged call, tagged with its number.
    struct Tagged<F> {
        attempt: u32,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Tagged<F> {
    type Output = (u32, F::Output);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.future.poll(cx));
        Poll::Ready((*this.attempt, out))
    }
}

pin_project! {
    /// Response future of a hedged call (see [`super`]).
    #[project = HedgeFutureProj]
    pub struct HedgeFuture<S>
    where
        S: Service<Call>,
    {
        inner: S,
        // The call; `attempt` is the number of the last attempt launched.
        call: Call,
        shared: Arc<Shared>,
        in_flight: FuturesUnordered<Tagged<S::Future>>,
        // Attempts launched so far.
        launched: u32,
        // The attempts that failed so far.
        failed: Failed,
        // When the next attempt may go and why; `None`: no more.
        next: Option<(Instant, HedgeTrigger)>,
        // Why no more will go, once that is decided.
        stop: Option<Stop>,
        last_error: Option<CallError>,
        #[pin]
        timer: Sleep,
    }
}

impl<S: Service<Call>> std::fmt::Debug for HedgeFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeFuture")
            .field("call", &self.call.id)
            .field("launched", &self.launched)
            .finish_non_exhaustive()
    }
}

impl<S: Service<Call>> HedgeFuture<S> {
    pub(crate) fn new(inner: S, call: Call, shared: Arc<Shared>) -> Self {
        let now = Instant::now();
        Self {
            inner,
            call,
            shared,
            in_flight: FuturesUnordered::new(),
            launched: 0,
            failed: Failed::NONE,
            next: Some((now, HedgeTrigger::Delay)),
            stop: None,
            last_error: None,
            timer: tokio::time::sleep_until(now),
        }
    }
}

impl<S> Future for HedgeFuture<S>
where
    S: Service<Call, Response = Reply, Error = CallError>,
{
    type Output = Result<Reply, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(hedge) = this.shared.hedge.as_ref() else {
            unreachable!("a hedged call is only made by a layer with a hedging policy")
        };
        let delay = hedge.config().delay;
        loop {
            // 1. Whatever finished.
            while let Poll::Ready(Some((attempt, result))) =
                Pin::new(&mut *this.in_flight).poll_next(cx)
            {
                let err = match result {
                    Ok(reply) => {
                        this.shared.on_success();
                        if *this.launched > 1 {
                            this.shared.on_hedge_won(this.call.id, attempt);
                        }
                        cancel(this.shared, this.call.id, *this.launched, this.in_flight);
                        return Poll::Ready(Ok(reply));
                    }
                    Err(e) => e,
                };
                this.failed.add(&err);
                let now = Instant::now();
                match this.shared.hedge_after_failure(this.call, &err, now) {
                    AfterFailure::Fatal => {
                        cancel(this.shared, this.call.id, *this.launched, this.in_flight);
                        let stop = Stop::NonRetryable;
                        return Poll::Ready(Err(this.shared.give_up(
                            this.call,
                            err,
                            stop,
                            *this.failed,
                        )));
                    }
                    AfterFailure::Next { at, trigger } => {
                        // Sooner than the delay would have sent it: take it
                        // (unless no more may go at all).
                        if this.stop.is_none() && this.next.is_none_or(|(t, _)| at < t) {
                            *this.next = Some((at, trigger));
                        }
                    }
                    AfterFailure::NoMore(stop) => {
                        *this.next = None;
                        this.stop.get_or_insert(stop);
                    }
                }
                *this.last_error = Some(err);
            }

            // 2. The next attempt, if one is due.
            let now = Instant::now();
            if let Some((at, trigger)) = *this.next {
                let attempt = *this.launched + 1;
                let verdict = if attempt == 1 {
                    Ok(())
                } else if at > now {
                    // Not yet: wait for the timer (unless the deadline
                    // comes first, then never).
                    if this.call.deadline.is_some_and(|d| at >= d) {
                        Err(Stop::DeadlineTooClose)
                    } else {
                        if this.timer.deadline() != at {
                            this.timer.as_mut().reset(at);
                        }
                        if this.timer.as_mut().poll(cx).is_pending() {
                            return finish_or_wait(&mut this);
                        }
                        continue;
                    }
                } else {
                    this.shared.may_hedge(attempt, now, this.call.deadline)
                };
                match verdict {
                    Err(stop) => {
                        *this.next = None;
                        this.stop.get_or_insert(stop);
                    }
                    Ok(()) => {
                        if this.inner.poll_ready(cx).is_pending() {
                            return finish_or_wait(&mut this);
                        }
                        *this.launched = attempt;
                        this.call.attempt = attempt;
                        if attempt > 1 {
                            this.shared.on_hedge_sent(this.call.id, attempt, trigger);
                        }
                        let future = this.inner.call(this.call.clone());
                        this.in_flight.push(Tagged { attempt, future });
                        *this.next = (attempt < hedge.config().attempts_max)
                            .then(|| (now + delay, HedgeTrigger::Delay));
                        if this.next.is_none() {
                            this.stop.get_or_insert(Stop::AttemptsExhausted);
                        }
                        continue;
                    }
                }
            }
            return finish_or_wait(&mut this);
        }
    }
}

/// Nothing more to do now: the call's end if nothing is in flight and
/// nothing will go out, else wait.
fn finish_or_wait<S>(this: &mut HedgeFutureProj<'_, S>) -> Poll<Result<Reply, CallError>>
where
    S: Service<Call, Response = Reply, Error = CallError>,
{
    if !this.in_flight.is_empty() || this.next.is_some() {
        return Poll::Pending;
    }
    let err = this.last_error.take().unwrap_or_else(|| {
        CallError::new(
            tonic::Code::Unavailable,
            "no attempt could be sent",
            Cause::NoEndpoint,
            Outcome::NotApplied,
        )
    });
    let stop = this.stop.unwrap_or(Stop::AttemptsExhausted);
    Poll::Ready(Err(this.shared.give_up(this.call, err, stop, *this.failed)))
}

/// Cancels every attempt still in flight, announcing each in the order
/// they were launched. The set itself knows which are in flight: a call
/// launches at most five attempts, so asking it per number is cheaper
/// than a second list kept in step with it.
fn cancel<F>(
    shared: &Shared,
    call: u64,
    launched: u32,
    in_flight: &mut FuturesUnordered<Tagged<F>>,
) {
    let live = |attempt: &u32| {
        Pin::new(&*in_flight)
            .iter_pin_ref()
            .any(|t| t.attempt == *attempt)
    };
    for attempt in (1..=launched).filter(live) {
        shared.on_hedge_cancelled(call, attempt);
    }
    in_flight.clear();
}

impl<S: Service<Call>> HedgeFuture<S> {
    /// The attempts launched so far.
    pub fn launched(&self) -> u32 {
        self.launched
    }
}
