//! Records the start and end of every logical call (`call` and
//! `call-finished` trace lines), with the request ID and deadline the outer
//! layers attached and the outcome the inner layers concluded.

use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{
    client::{
        call::{Call, CallFuture, Reply},
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
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let id = call.id;
        self.events.emit_with(|| Event::CallStarted {
            call: id,
            method: call.method.name(),
            request_id: call.request_id().to_owned(),
            deadline_ms: call.deadline.map_or(0, |d| {
                d.saturating_duration_since(Instant::now()).as_millis() as u64
            }),
        });
        let events = self.events.clone();
        let fut = self.inner.call(call);
        Box::pin(async move {
            let result = fut.await;
            events.emit_with(|| match &result {
                Ok(reply) => Event::CallFinished {
                    call: id,
                    attempts: 0,
                    result: format!("ok {reply}"),
                    outcome: Outcome::Applied,
                },
                Err(e) => Event::CallFinished {
                    call: id,
                    attempts: e.attempts,
                    result: format!("err {:?}", e.code),
                    outcome: e.outcome,
                },
            });
            result
        })
    }
}
