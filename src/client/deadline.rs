//! The overall deadline of a logical call: stamped on the call so inner
//! layers (per-attempt timeout, retry pauses, the `grpc-timeout` header) can
//! respect it, and enforced here as a backstop so nothing — no retry, no
//! backoff sleep — runs past it.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;
use tonic::Code;
use tower::{Layer, Service};

use crate::{
    client::{
        call::{Call, CallFuture, Reply},
        error::{CallError, Cause},
    },
    trace::Outcome,
};

/// Gives every call an overall deadline.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    overall: Duration,
}

impl DeadlineLayer {
    /// Calls get `overall` from the moment they enter the stack (or keep an
    /// earlier deadline they already carry).
    pub fn new(overall: Duration) -> Self {
        Self { overall }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            overall: self.overall,
        }
    }
}

/// The deadline service.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    overall: Duration,
}

impl<S> Service<Call> for Deadline<S>
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

    fn call(&mut self, mut call: Call) -> Self::Future {
        let mine = Instant::now() + self.overall;
        let deadline = call.deadline.map_or(mine, |d| d.min(mine));
        call.deadline = Some(deadline);
        let fut = self.inner.call(call);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, fut).await {
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
            }
        })
    }
}
