//! The breaker's response future, and the guard that makes sure every
//! admitted call is accounted for exactly once — reported when it ends,
//! abandoned when it is dropped unfinished.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::Code;

use super::{layer::Shared, policy::Ticket};
use crate::client::{call::Reply, error::CallError};

pin_project! {
    /// Response future of [`Breaker`](super::Breaker): either the inner
    /// call, whose outcome is reported to the breaker when it ends, or an
    /// immediate circuit-open error.
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
        Admitted {
            #[pin]
            future: F,
            // `None` once reported.
            report: Option<Report>,
        },
        Rejected {
            // `None` once returned.
            error: Option<CallError>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn admitted(future: F, report: Report) -> Self {
        Self {
            kind: Kind::Admitted {
                future,
                report: Some(report),
            },
        }
    }

    pub(crate) fn rejected(error: CallError) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Reply, CallError>>,
{
    type Output = Result<Reply, CallError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
            KindProj::Admitted { future, report } => {
                let result = ready!(future.poll(cx));
                if let Some(report) = report.take() {
                    report.finish(match &result {
                        Ok(_) => Code::Ok,
                        Err(e) => e.code,
                    });
                }
                Poll::Ready(result)
            }
        }
    }
}

/// An admitted call's ticket, bound to its breaker. Dropping it unreported
/// (the response future was dropped: the caller's deadline fired, the task
/// was aborted) abandons the ticket, which frees a half-open probe slot and
/// records nothing.
#[derive(Debug)]
pub(crate) struct Report {
    shared: Arc<Shared>,
    // `None` once handed back to the policy.
    ticket: Option<Ticket>,
}

impl Report {
    pub(super) fn new(shared: Arc<Shared>, ticket: Ticket) -> Self {
        Self {
            shared,
            ticket: Some(ticket),
        }
    }

    /// Reports the call's outcome and announces any transition it caused.
    fn finish(mut self, code: Code) {
        if let Some(ticket) = self.ticket.take() {
            // The guard is a temporary: released before the announcement,
            // so an event hook can never run under the lock.
            let transition = self.shared.lock().record(ticket, code, Instant::now());
            self.shared.announce(transition);
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.shared.lock().abandon(ticket);
        }
    }
}
