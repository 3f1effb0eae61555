//! [`StrictLayer`]: the gRPC front refuses requests that break the gRPC
//! protocol, before any handler runs, where tonic would be lenient:
//!
//! - a `content-type` other than `application/grpc` (or `+proto`): tonic
//!   decodes whatever arrives as protobuf, so `application/json` was
//!   answered as gRPC. Refused with HTTP 415 + INVALID_ARGUMENT, as the
//!   gRPC HTTP/2 spec recommends and grpc-go does;
//! - a second request message on a method that takes exactly one (every
//!   method but reflection's bidirectional stream): tonic decodes the first
//!   and silently reads and discards the rest. The request body is watched
//!   for a message starting after the first one ends, and fails the call
//!   with INTERNAL ([`ProtocolError::ExtraRequestMessage`]).
//!
//! Both refusals come from [`ProtocolError`], mapped in `error.rs`.

use std::{
    future::Ready,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::future::Either;
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::{
    Status,
    body::Body,
    codegen::http::{Request, Response, StatusCode, header::CONTENT_TYPE},
};
use tower::{Layer, Service};

use crate::{error::ProtocolError, server::frames::Frames};

/// Path prefix of the one service whose requests are a stream of messages
/// (reflection's `ServerReflectionInfo` is bidirectional).
const STREAMING_REQUEST_PREFIX: &str = "/grpc.reflection.";

/// The content types a gRPC request may carry: gRPC with protobuf, the only
/// codec this server has.
fn is_grpc(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.eq_ignore_ascii_case(b"application/grpc")
        || essence.eq_ignore_ascii_case(b"application/grpc+proto")
}

/// Refuses non-gRPC content types and extra request messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct StrictLayer;

impl<S> Layer<S> for StrictLayer {
    type Service = Strict<S>;

    fn layer(&self, inner: S) -> Strict<S> {
        Strict { inner }
    }
}

/// A service behind [`StrictLayer`].
#[derive(Debug, Clone)]
pub struct Strict<S> {
    inner: S,
}

/// The response future of [`Strict`]: the inner call, or the refusal.
pub type StrictFuture<F, E> = Either<F, Ready<Result<Response<Body>, E>>>;

impl<S> Service<Request<Body>> for Strict<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = StrictFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let content_type = req.headers().get(CONTENT_TYPE);
        if !content_type.is_some_and(|ct| is_grpc(ct.as_bytes())) {
            let shown = content_type.map_or_else(
                || "(none)".to_owned(),
                |ct| String::from_utf8_lossy(ct.as_bytes()).into_owned(),
            );
            let refused = ProtocolError::ContentType(shown);
            let http = StatusCode::from_u16(refused.http_status())
                .unwrap_or(StatusCode::UNSUPPORTED_MEDIA_TYPE);
            let mut response = Status::from(refused).into_http::<Body>();
            *response.status_mut() = http;
            return Either::Right(std::future::ready(Ok(response)));
        }
        if req.uri().path().starts_with(STREAMING_REQUEST_PREFIX) {
            return Either::Left(self.inner.call(req));
        }
        let req = req.map(|body| Body::new(OneMessage::new(body)));
        Either::Left(self.inner.call(req))
    }
}

pin_project! {
    /// A request body that fails once a second gRPC message begins: any
    /// byte past the first message's end ([`Frames`] knows it from the
    /// first five bytes) starts another.
    #[derive(Debug)]
    pub struct OneMessage<B> {
        #[pin]
        inner: B,
        frames: Frames,
    }
}

impl<B> OneMessage<B> {
    fn new(inner: B) -> Self {
        Self {
            inner,
            frames: Frames::default(),
        }
    }
}

/// Reads `chunk` into the framing; false once bytes run past the first
/// message.
fn within_first_message(frames: &mut Frames, chunk: &[u8]) -> bool {
    frames.feed(chunk);
    frames.messages() <= 1
}

impl<B> HttpBody for OneMessage<B>
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
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && !within_first_message(this.frames, data)
        {
            return Poll::Ready(Some(Err(ProtocolError::ExtraRequestMessage.into())));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        for (ct, ok) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC; charset=utf-8", true),
            ("application/json", false),
            ("application/grpc+json", false),
            ("application/grpc-web", false),
            ("application/grpcx", false),
            ("", false),
        ] {
            assert_eq!(is_grpc(ct.as_bytes()), ok, "{ct:?}");
        }
    }

    fn framed(payload_len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(payload_len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, payload_len as usize));
        bytes
    }

    /// Feeds `stream` in chunks of `chunk` bytes; the number of bytes fed
    /// when the framing first refused, if it did.
    fn refused_at(stream: &[u8], chunk: usize) -> Option<usize> {
        let mut frames = Frames::default();
        let mut fed = 0;
        for piece in stream.chunks(chunk) {
            fed += piece.len();
            if !within_first_message(&mut frames, piece) {
                return Some(fed);
            }
        }
        None
    }

    #[test]
    fn one_message_passes_in_any_chunking_and_a_second_is_caught() {
        let one = framed(300);
        let two = [framed(300), framed(0)].concat();
        let empty_then_one = [framed(0), framed(2)].concat();
        for chunk in [1, 2, 3, 5, 7, 64, 1000] {
            assert_eq!(refused_at(&one, chunk), None, "chunk {chunk}");
            assert_eq!(refused_at(&framed(0), chunk), None, "chunk {chunk}");
            let at = refused_at(&two, chunk).expect("second message caught");
            assert!(at > one.len(), "chunk {chunk}: refused at {at}");
            assert!(
                refused_at(&empty_then_one, chunk).is_some(),
                "chunk {chunk}"
            );
        }
    }
}
