//! Records the start and end of every logical call (`call` and
//! `call-finished` trace lines), with the request ID and deadline the outer
//! layers attached and the outcome the inner layers concluded.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{
    client::{
        call::{Call, Reply},
        error::CallError,
    },
    trace::{Event, EventSink, Outcome},
};

/// Emits call start/finish events.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    events: EventSink,
}

impl ObserveLayer {
    /// Events go to `events`.
    pub fn new(events: EventSink) -> Self {
        Self { events }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            events: self.events.clone(),
        }
    }
}

/// The observing service.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    events: EventSink,
}

impl<S> Service<Call> for Observe<S>
where
    S: Service<Call, Response = Reply, Error = CallError>,
{
    type Response = Reply;
    type Error = CallError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let id = call.id;
        // Decided once per call: a quiet client builds no event and carries
        // no sink.
        let events = self.events.enabled().then(|| self.events.clone());
        if let Some(events) = &events {
            events.emit(Event::CallStarted {
                call: id,
                method: call.method(),
                request_id: call.request_id().to_owned(),
                deadline_ms: call.deadline.map_or(0, |d| {
                    d.saturating_duration_since(Instant::now()).as_millis() as u64
                }),
            });
        }
        ResponseFuture {
            inner: self.inner.call(call),
            events,
            id,
        }
    }
}

pin_project! {
    /// Response future of [`Observe`]: reports the call's end.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        events: Option<EventSink>,
        id: u64,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Reply, CallError>>,
{
    type Output = Result<Reply, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(events) = this.events {
            let call = *this.id;
            events.emit(match &result {
                Ok(reply) => Event::CallFinished {
                    call,
                    attempts: 0,
                    result: Ok(reply.clone()),
                    outcome: Outcome::Applied,
                },
                Err(e) => Event::CallFinished {
                    call,
                    attempts: e.attempts,
                    result: Err(e.code),
                    outcome: e.outcome,
                },
            });
        }
        Poll::Ready(result)
    }
}
