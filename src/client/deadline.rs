//! The overall deadline of a logical call: stamped on the call so inner
//! layers (per-attempt timeout, retry pauses, the `grpc-timeout` header) can
//! respect it, and, as a backstop, enforced here with a timer of its own so
//! nothing below — no retry, no backoff sleep — runs past it.
//!
//! The backstop is what makes the layer safe over *any* inner service. The
//! client's own stack turns it off ([`DeadlineLayer::without_backstop`]):
//! there, every place where time passes below this layer is already clipped
//! to the deadline (each attempt's timeout by the attempt layer, each pause
//! by the retry policy, and the transport is always ready), so a second
//! timer at the same instant would only cost — a timer registration per
//! call is a measurable share of a loopback round trip (the
//! `client_overhead` benchmark). The simulations check on every seed that
//! no call outlives its deadline, which is what that argument promises.

use std::{
    future::Future,
    pin::Pin,
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
    trace::Outcome,
};

/// Gives every call an overall deadline.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    overall: Duration,
    backstop: bool,
}

impl DeadlineLayer {
    /// Calls get `overall` from the moment they enter the stack (or keep an
    /// earlier deadline they already carry), enforced by this layer.
    pub fn new(overall: Duration) -> Self {
        Self {
            overall,
            backstop: true,
        }
    }

    /// Stamps the deadline but leaves enforcing it to the layers below:
    /// only for stacks where every wait below is clipped to the deadline
    /// (see the module docs).
    pub fn without_backstop(self) -> Self {
        Self {
            backstop: false,
            ..self
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            layer: *self,
        }
    }
}

/// The deadline service.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S> Service<Call> for Deadline<S>
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
        let mine = Instant::now() + self.layer.overall;
        let deadline = call.deadline.map_or(mine, |d| d.min(mine));
        call.deadline = Some(deadline);
        let inner = self.inner.call(call);
        ResponseFuture {
            kind: if self.layer.backstop {
                Kind::Backstop {
                    timeout: tokio::time::timeout_at(deadline, inner),
                }
            } else {
                Kind::Stamped { inner }
            },
        }
    }
}

pin_project! {
    /// Response future of [`Deadline`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Backstop { #[pin] timeout: Timeout<F> },
        Stamped { #[pin] inner: F },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Reply, CallError>>,
{
    type Output = Result<Reply, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Stamped { inner } => inner.poll(cx),
            KindProj::Backstop { timeout } => Poll::Ready(match ready!(timeout.poll(cx)) {
                Ok(r) => r,
                // Inner layers normally finish first (attempt timeouts and
                // pauses are clipped to the deadline); if not, we cannot know
                // whether an attempt was in flight.
                Err(_) => Err(CallError::new(
                    Code::DeadlineExceeded,
                    "overall deadline exceeded",
                    Cause::DeadlineExceeded,
                    Outcome::Unknown,
                )),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::{client::call::Request, core::BinaryOp};

    fn add() -> Call {
        Call::new(
            1,
            Request::Binary {
                op: BinaryOp::Add,
                a: 1.0,
                b: 2.0,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn backstop_ends_a_call_that_nothing_below_bounds() {
        let hangs = service_fn(|_: Call| pending::<Result<Reply, CallError>>());
        let start = Instant::now();
        let err = DeadlineLayer::new(Duration::from_millis(300))
            .layer(hangs)
            .oneshot(add())
            .await
            .unwrap_err();
        assert_eq!(err.cause, Cause::DeadlineExceeded);
        assert_eq!(err.outcome, Outcome::Unknown);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn without_backstop_the_deadline_is_stamped_not_enforced() {
        let start = Instant::now();
        let seen = service_fn(|call: Call| async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, CallError>(Reply::Calc(
                call.deadline
                    .expect("stamped")
                    .duration_since(start)
                    .as_millis() as f64,
            ))
        });
        let reply = DeadlineLayer::new(Duration::from_millis(300))
            .without_backstop()
            .layer(seen)
            .oneshot(add())
            .await
            .unwrap();
        // The inner service saw the deadline and was left to honour it.
        assert_eq!(reply, Reply::Calc(300.0));
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_on_the_call_wins() {
        let start = Instant::now();
        let echo = service_fn(|call: Call| async move {
            Ok::<_, CallError>(Reply::Calc(
                call.deadline
                    .expect("stamped")
                    .duration_since(start)
                    .as_millis() as f64,
            ))
        });
        let mut call = add();
        call.deadline = Some(start + Duration::from_millis(100));
        let reply = DeadlineLayer::new(Duration::from_secs(5))
            .layer(echo)
            .oneshot(call)
            .await
            .unwrap();
        assert_eq!(reply, Reply::Calc(100.0));
    }
}
