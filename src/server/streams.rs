//! [`LongStreamsLayer`]: a server-wide cap on gRPC streams that outlive
//! their handler — `grpc.health.v1.Health/Watch` (open until the client
//! leaves) and reflection's `ServerReflectionInfo`. Both are exempt from
//! load shedding (health must answer under load), and the shedder counts
//! a call only until its handler returns, so without this 100,000 Watch
//! streams held 589 MB. A stream holds its place until its response body
//! is dropped (the client closed it, reset it, or the connection ended);
//! beyond the cap a new one is refused with RESOURCE_EXHAUSTED.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};

use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::{
    Status,
    body::Body,
    codegen::http::{Request, Response},
};
use tower::{Layer, Service};

use super::tally::Tally;
use crate::error::ProtocolError;

/// Paths of the long-lived streams the cap counts.
pub const LONG_STREAM_PATHS: [&str; 3] = [
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Caps long-lived streams server-wide; clones share one count.
#[derive(Debug, Clone)]
pub struct LongStreamsLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    max: usize,
    open: AtomicUsize,
    refused: Mutex<Tally>,
}

impl LongStreamsLayer {
    /// At most `max` long-lived streams open at once (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                max: max.max(1),
                open: AtomicUsize::new(0),
                refused: Mutex::default(),
            }),
        }
    }

    /// Long-lived streams open now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    fn try_open(&self) -> Option<StreamSlot> {
        let shared = &self.shared;
        let opened = shared
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.max).then_some(n + 1)
            })
            .is_ok();
        if opened {
            return Some(StreamSlot(Arc::clone(shared)));
        }
        let report = shared
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(tokio::time::Instant::now());
        if let Some(report) = report {
            tracing::warn!(
                refused = %report,
                "long-lived stream cap reached ({} open): refusing new Watch/reflection streams",
                shared.max
            );
        }
        None
    }
}

impl<S> Layer<S> for LongStreamsLayer {
    type Service = LongStreams<S>;

    fn layer(&self, inner: S) -> LongStreams<S> {
        LongStreams {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service behind [`LongStreamsLayer`].
#[derive(Debug, Clone)]
pub struct LongStreams<S> {
    inner: S,
    layer: LongStreamsLayer,
}

/// One open stream's place under the cap; freed when dropped.
#[derive(Debug)]
struct StreamSlot(Arc<Shared>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S> Service<Request<Body>> for LongStreams<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if !LONG_STREAM_PATHS.contains(&req.uri().path()) {
            return ResponseFuture::new(Kind::Passed {
                future: self.inner.call(req),
            });
        }
        match self.layer.try_open() {
            Some(slot) => ResponseFuture::new(Kind::Counted {
                future: self.inner.call(req),
                slot: Some(slot),
            }),
            None => {
                let limit = self.layer.shared.max;
                let refused = Status::from(ProtocolError::TooManyStreams { limit });
                ResponseFuture::new(Kind::Refused {
                    response: Some(refused.into_http()),
                })
            }
        }
    }
}

pin_project! {
    /// Response future of [`LongStreams`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = Proj]
    #[derive(Debug)]
    enum Kind<F> {
        // Not a long-lived stream.
        Passed { #[pin] future: F },
        // A long-lived stream: its slot moves into the response body.
        Counted { #[pin] future: F, slot: Option<StreamSlot> },
        // Over the cap (`None` once returned).
        Refused { response: Option<Response<Body>> },
    }
}

impl<F> ResponseFuture<F> {
    fn new(kind: Kind<F>) -> Self {
        Self { kind }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Proj::Passed { future } => future.poll(cx),
            Proj::Counted { future, slot } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(|inner| {
                    Body::new(SlotBody {
                        inner,
                        _slot: slot.take(),
                    })
                })))
            }
            Proj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| Status::internal("polled after completion").into_http()))),
        }
    }
}

pin_project! {
    /// A response body holding its stream's slot until dropped.
    #[derive(Debug)]
    struct SlotBody {
        #[pin]
        inner: Body,
        _slot: Option<StreamSlot>,
    }
}

impl HttpBody for SlotBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tonic::Code;
    use tower::ServiceExt;

    use super::*;

    fn request(path: &str) -> Request<Body> {
        Request::builder()
            .uri(format!("http://abacus{path}"))
            .body(Body::default())
            .unwrap()
    }

    #[tokio::test]
    async fn watch_streams_beyond_the_cap_are_refused_until_one_closes() {
        let layer = LongStreamsLayer::new(2);
        // Bodies that never end, like a Watch stream's (an empty body
        // would be dropped, and its slot freed, at once).
        let svc = layer.layer(tower::service_fn(|_req: Request<Body>| async {
            let endless = futures_util::stream::pending::<Result<Frame<Bytes>, Status>>();
            let body = Body::new(http_body_util::StreamBody::new(endless));
            Ok::<_, Infallible>(Response::new(body))
        }));
        let watch = "/grpc.health.v1.Health/Watch";
        let first = svc.clone().oneshot(request(watch)).await.unwrap();
        let second = svc
            .clone()
            .oneshot(request(LONG_STREAM_PATHS[1]))
            .await
            .unwrap();
        assert_eq!(layer.open(), 2);
        let refused = svc.clone().oneshot(request(watch)).await.unwrap();
        let status = Status::from_header_map(refused.headers()).expect("a trailers-only status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("limit 2"), "{}", status.message());
        // Other calls are not counted.
        let check = svc
            .clone()
            .oneshot(request("/grpc.health.v1.Health/Check"))
            .await
            .unwrap();
        assert!(check.headers().get("grpc-status").is_none());
        assert_eq!(layer.open(), 2);
        // The slot lives in the body: dropping it (the stream ended) frees it.
        drop(first);
        assert_eq!(layer.open(), 1);
        let third = svc.clone().oneshot(request(watch)).await.unwrap();
        assert!(third.headers().get("grpc-status").is_none());
        drop((second, third));
        assert_eq!(layer.open(), 0);
    }
}
