//! Records the start and end of every logical call (`call` and
//! `call-finished` trace lines), with the request ID and deadline the outer
//! layers attached and the outcome the inner layers concluded.
//!
//! Every `call` line gets exactly one `call-finished`, also when the
//! caller drops the call before it ends (its own timeout, a `select!`, an
//! aborted task): the response future then reports it from `Drop` as
//! CANCELLED with an unknown outcome (an attempt may have reached a
//! server). Whoever pairs the two events — the metrics recorder's record
//! of calls in flight, a history — is never left holding a call that will
//! not end.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::Code;
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
            end: End { events, id },
        }
    }
}

pin_project! {
    /// Response future of [`Observe`]: reports the call's end, or, if it is
    /// dropped first, that the caller cancelled it.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        // Declared first, so dropped first: the layers below finish their
        // own cancellation (the breaker abandons its ticket, the balancer
        // records the attempt as cancelled) before the call's end is
        // reported.
        #[pin]
        inner: F,
        end: End,
    }
}

/// The call's end, still to report: taken when the call finishes, reported
/// as cancelled by `Drop` if it never does.
#[derive(Debug)]
struct End {
    /// `None` for a quiet client, and once the end was reported.
    events: Option<EventSink>,
    id: u64,
}

impl Drop for End {
    fn drop(&mut self) {
        if let Some(events) = self.events.take() {
            events.emit(Event::CallFinished {
                call: self.id,
                // Unknown here: the attempt lines before it tell.
                attempts: 0,
                result: Err(Code::Cancelled),
                outcome: Outcome::Unknown,
            });
        }
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
        if let Some(events) = this.end.events.take() {
            let call = this.end.id;
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

#[cfg(test)]
mod tests {
    use std::{
        future::pending,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tower::{ServiceExt, service_fn};

    use super::*;

    /// A sink keeping every `call-finished` event.
    fn finished() -> (EventSink, Arc<Mutex<Vec<Event>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = Arc::clone(&seen);
            EventSink::with_hook(move |e| {
                if matches!(e, Event::CallFinished { .. }) {
                    seen.lock().unwrap().push(e.clone());
                }
            })
        };
        (sink, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_dropped_mid_flight_is_reported_cancelled_once() {
        let (sink, seen) = finished();
        let hangs = service_fn(|_: Call| pending::<Result<Reply, CallError>>());
        let call = ObserveLayer::new(sink)
            .layer(hangs)
            .oneshot(Call::test_add(7));
        // The caller's own timeout gives up on the call and drops it.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), call)
                .await
                .is_err()
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [Event::CallFinished {
                call: 7,
                attempts: 0,
                result: Err(Code::Cancelled),
                outcome: Outcome::Unknown,
            }]
        );
    }

    #[tokio::test]
    async fn a_call_that_ended_is_not_reported_again_when_dropped() {
        let (sink, seen) = finished();
        let answers = service_fn(|_: Call| async { Ok::<_, CallError>(Reply::Calc(3.0)) });
        let mut service = ObserveLayer::new(sink).layer(answers);
        let mut call = Box::pin(service.ready().await.unwrap().call(Call::test_add(1)));
        assert_eq!(call.as_mut().await, Ok(Reply::Calc(3.0)));
        // The finished future outlives its answer, then goes.
        drop(call);
        assert_eq!(
            *seen.lock().unwrap(),
            [Event::CallFinished {
                call: 1,
                attempts: 0,
                result: Ok(Reply::Calc(3.0)),
                outcome: Outcome::Applied,
            }]
        );
    }
}
