//! The REST twin's share of the [`Edge`](crate::server::Edge): the same
//! authenticator and metrics as the gRPC front, as axum middleware.
//! [`authenticate`] answers refusals with 401/403/429 through
//! [`RestError::Auth`]; [`record`] counts every request into the A66
//! series with `front="rest"`, labelled with the RPC its route stands for.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::{IntoResponse, Response},
};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Code;

use super::{
    error::{AnsweredCode, RestError},
    handlers::method_of,
};
use crate::server::{metrics::Front, service::Calculator};

/// Checks the caller's token for a calculator route and passes its
/// identity on to the handler (as an extension); open when the server has
/// no tokens.
pub async fn authenticate(
    State(calculator): State<Calculator>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(auth) = &calculator.edge().auth else {
        return next.run(req).await;
    };
    let method = method_of(req.method(), req.uri().path());
    let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    match auth.check(header, method) {
        Ok(identity) => {
            req.extensions_mut().insert(identity);
            next.run(req).await
        }
        Err(refused) => RestError::Auth(refused).into_response(),
    }
}

/// Counts the request into the server's metrics, if it has any.
pub async fn record(State(calculator): State<Calculator>, req: Request, next: Next) -> Response {
    let Some(server_metrics) = &calculator.edge().metrics else {
        return next.run(req).await;
    };
    let method = method_of(req.method(), req.uri().path());
    let mut call = server_metrics.start_call(Front::Rest, method);
    let rcvd = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&rcvd);
    let req = req.map(|body| {
        Body::new(Counted {
            inner: body,
            total: counter,
        })
    });
    let response = next.run(req).await;
    call.rcvd_bytes = rcvd.load(Ordering::Relaxed);
    // Every REST answer is one buffered JSON body: its size is known.
    call.sent_bytes = response.body().size_hint().exact().unwrap_or(0);
    let code = response
        .extensions()
        .get::<AnsweredCode>()
        .map_or(Code::Ok, |c| c.0);
    call.finish(code);
    response
}

pin_project! {
    /// A request body whose bytes are counted into `total`.
    struct Counted<B> {
        #[pin]
        inner: B,
        total: Arc<AtomicU64>,
    }
}

impl<B: HttpBody<Data = Bytes>> HttpBody for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            this.total.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
