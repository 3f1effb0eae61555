//! The balancer's response future: the endpoint's call (behind its
//! breaker's ticket, when it has a breaker), and a guard that reports the
//! attempt's end to the endpoint's latency estimate and counters exactly
//! once — when it ends, or as cancelled when it is dropped unfinished (a
//! hedge that lost, a caller that gave up).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;

use super::{End, Shared};
use crate::client::{
    breaker::{self, future::Report},
    call::{Call, Reply},
    error::CallError,
};

/// Reports one attempt's end to the balancer.
pub(crate) struct Guard<S> {
    shared: Arc<Shared<S>>,
    id: u64,
    started: Instant,
    /// `None` once reported.
    end: Option<End>,
}

impl<S> Guard<S> {
    pub(crate) fn new(shared: Arc<Shared<S>>, id: u64, started: Instant) -> Self {
        Self {
            shared,
            id,
            started,
            end: Some(End::Cancelled),
        }
    }

    fn finish(&mut self, result: &Result<Reply, CallError>) {
        if self.end.take().is_some() {
            self.shared.finish(self.id, self.started, End::of(result));
        }
    }
}

impl<S> Drop for Guard<S> {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            self.shared.finish(self.id, self.started, end);
        }
    }
}

impl<S> std::fmt::Debug for Guard<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("endpoint", &self.id).finish()
    }
}

pin_project! {
    /// Response future of [`Balance`](super::Balance).
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
        Guarded {
            #[pin]
            future: breaker::ResponseFuture<S::Future>,
            guard: Guard<S>,
        },
        Plain {
            #[pin]
            future: S::Future,
            guard: Guard<S>,
        },
        Failed {
            // `None` once returned.
            error: Option<CallError>,
        },
    }
}

impl<S: Service<Call>> std::fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S: Service<Call>> ResponseFuture<S> {
    pub(super) fn guarded(future: S::Future, report: Report, guard: Guard<S>) -> Self {
        Self {
            kind: Kind::Guarded {
                future: breaker::ResponseFuture::admitted(future, report),
                guard,
            },
        }
    }

    pub(super) fn plain(future: S::Future, guard: Guard<S>) -> Self {
        Self {
            kind: Kind::Plain { future, guard },
        }
    }

    pub(super) fn failed(error: CallError) -> Self {
        Self {
            kind: Kind::Failed { error: Some(error) },
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
            KindProj::Guarded { future, guard } => {
                let result = ready!(future.poll(cx));
                guard.finish(&result);
                Poll::Ready(result)
            }
            KindProj::Plain { future, guard } => {
                let result = ready!(future.poll(cx));
                guard.finish(&result);
                Poll::Ready(result)
            }
            KindProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}
