//! [`MetricsLayer`]: A66's server series for the gRPC front, as a layer
//! around the whole tonic server, so that every call counts — those shed,
//! refused by authentication or by the protocol checks included.
//!
//! A call starts when its request arrives and ends when its trailers are
//! sent (or its response ends without them: a trailers-only error, whose
//! status is in the headers). Message sizes are the gRPC messages' payload
//! bytes, read from the length prefixes of the body's frames (A66: framing
//! and metadata excluded; abacus never compresses, so "compressed" is the
//! encoded size).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::{
    Code, Status,
    body::Body,
    codegen::http::{HeaderMap, Request, Response},
};
use tower::{Layer, Service};

use super::{CallRecord, Front, ServerMetrics};
use crate::{rpc::Method, server::frames::Frames};

/// Counts calls into a [`ServerMetrics`].
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: ServerMetrics,
}

impl MetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: ServerMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service behind [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: ServerMetrics,
}

impl<S> Service<Request<Body>> for Metered<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let record = self
            .metrics
            .start_call(Front::Grpc, Method::from_path(req.uri().path()));
        let rcvd = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&rcvd);
        let req = req.map(|body| {
            Body::new(Counted {
                inner: body,
                frames: Frames::default(),
                total: counted,
            })
        });
        MeteredFuture {
            inner: self.inner.call(req),
            record: Some(record),
            rcvd,
        }
    }
}

pin_project! {
    /// The response future of [`Metered`]: wraps the response body so its
    /// end finishes the call's record.
    #[derive(Debug)]
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        record: Option<CallRecord>,
        rcvd: Arc<AtomicU64>,
    }
}

impl<F, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(mut record) = this.record.take() else {
            return Poll::Ready(result);
        };
        Poll::Ready(match result {
            Ok(response) => {
                let header_status = grpc_status(response.headers());
                if let Some(code) = header_status {
                    // Trailers-only: the status is in the headers, the call
                    // is over (hyper may never poll an empty body).
                    record.rcvd_bytes = this.rcvd.load(Ordering::Relaxed);
                    record.finish(code);
                }
                Ok(response.map(|body| {
                    Body::new(Reported {
                        inner: body,
                        frames: Frames::default(),
                        record: Some(record),
                        rcvd: Arc::clone(this.rcvd),
                        header_status,
                    })
                }))
            }
            Err(e) => {
                record.finish(Code::Internal);
                Err(e)
            }
        })
    }
}

/// The status in `headers` (a trailers-only response) or trailers.
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.trim().parse::<i32>().ok().map(Code::from_i32)
}

pin_project! {
    /// A request body whose message bytes are counted into `total`.
    #[derive(Debug)]
    struct Counted<B> {
        #[pin]
        inner: B,
        frames: Frames,
        total: Arc<AtomicU64>,
    }
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes, Error = Status>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            this.frames.feed(data);
            this.total
                .store(this.frames.payload_bytes(), Ordering::Relaxed);
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

pin_project! {
    /// A response body that finishes its call's record at its end.
    #[derive(Debug)]
    struct Reported<B> {
        #[pin]
        inner: B,
        frames: Frames,
        record: Option<CallRecord>,
        rcvd: Arc<AtomicU64>,
        header_status: Option<Code>,
    }
}

impl<B> HttpBody for Reported<B>
where
    B: HttpBody<Data = Bytes, Error = Status>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let ended = match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.frames.feed(data);
                    None
                } else {
                    frame.trailers_ref().map(grpc_status)
                }
            }
            // The stream failed: the peer never gets a status.
            Some(Err(status)) => Some(Some(status.code())),
            None => Some(*this.header_status),
        };
        if let Some(code) = ended
            && let Some(mut record) = this.record.take()
        {
            record.sent_bytes = this.frames.payload_bytes();
            record.rcvd_bytes = this.rcvd.load(Ordering::Relaxed);
            record.finish(code.unwrap_or(Code::Unknown));
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
