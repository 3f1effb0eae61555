//! The per-attempt layer: gives each attempt its own timeout (never later
//! than the call's overall deadline) and records every attempt that actually
//! goes out, and how it failed.
//!
//! It is the innermost layer above the transport, so an attempt refused by
//! the circuit breaker never shows up here: a trace with no `attempt` line
//! proves nothing was sent.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Timeout};
use tonic::Code;
use tower::{Layer, Service};

use crate::{
    client::{
        call::{Call, Reply},
        error::{CallError, Cause},
    },
    trace::{Event, EventSink, Outcome},
};

/// Applies a per-attempt timeout.
#[derive(Debug, Clone)]
pub struct AttemptLayer {
    timeout: Duration,
    events: EventSink,
    /// The endpoint below, named in `attempt` events; empty when the
    /// layer was built without one (a stack over a single service).
    endpoint: Arc<str>,
}

impl AttemptLayer {
    /// Each attempt gets at most `timeout`.
    pub fn new(timeout: Duration, events: EventSink) -> Self {
        Self {
            timeout,
            events,
            endpoint: Arc::from(""),
        }
    }

    /// The same layer, naming `endpoint` in its events: one per endpoint
    /// below a balancer.
    pub fn for_endpoint(self, endpoint: &str) -> Self {
        Self {
            endpoint: Arc::from(endpoint),
            ..self
        }
    }
}

impl<S> Layer<S> for AttemptLayer {
    type Service = Attempt<S>;

    fn layer(&self, inner: S) -> Attempt<S> {
        Attempt {
            inner,
            layer: self.clone(),
        }
    }
}

/// The per-attempt service.
#[derive(Debug, Clone)]
pub struct Attempt<S> {
    inner: S,
    layer: AttemptLayer,
}

impl<S> Service<Call> for Attempt<S>
where
    S: Service<Call, Response = Reply, Error = CallError>,
{
    type Response = Reply;
    type Error = CallError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        let now = Instant::now();
        let mut until = now + self.layer.timeout;
        if let Some(d) = call.deadline {
            until = until.min(d);
        }
        call.attempt_deadline = Some(until);
        let (id, attempt) = (call.id, call.attempt);
        // Decided once per attempt: a quiet client builds no event and its
        // attempt carries no sink.
        let events = self
            .layer
            .events
            .enabled()
            .then(|| self.layer.events.clone());
        if let Some(events) = &events {
            events.emit(Event::AttemptStarted {
                call: id,
                attempt,
                endpoint: String::from(&*self.layer.endpoint),
                timeout_ms: until.saturating_duration_since(now).as_millis() as u64,
            });
        }
        ResponseFuture {
            timeout: tokio::time::timeout_at(until, self.inner.call(call)),
            events,
            id,
            attempt,
        }
    }
}

pin_project! {
    /// Response future of [`Attempt`]: the attempt under its timeout.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        timeout: Timeout<F>,
        events: Option<EventSink>,
        id: u64,
        attempt: u32,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Reply, CallError>>,
{
    type Output = Result<Reply, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match ready!(this.timeout.poll(cx)) {
            Ok(r) => r,
            Err(_) => Err(CallError::new(
                Code::DeadlineExceeded,
                "attempt timed out",
                Cause::AttemptTimeout,
                // Sent, not answered: it may be running on the server.
                Outcome::Unknown,
            )),
        };
        if let (Err(e), Some(events)) = (&result, this.events) {
            events.emit(Event::AttemptFailed {
                call: *this.id,
                attempt: *this.attempt,
                error: e.clone(),
            });
        }
        Poll::Ready(result)
    }
}
