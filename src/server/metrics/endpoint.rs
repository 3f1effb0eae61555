//! [`serve_metrics`]: `GET /metrics` over HTTP/1.1, for Prometheus to
//! scrape, on its own listener (`--metrics-addr`), behind the same
//! listener guard as the fronts but with its own connection cap
//! ([`CONNECTIONS_MAX`]): a scraper needs one or two, and every scrape
//! reads the store. Anything else is 404 (405 for another method on
//! `/metrics`). No TLS and no token: metrics hold counts, never request
//! data; serve them on an address only the scraper reaches.

use std::{convert::Infallible, future::Future};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::{Stream, StreamExt};

use super::ServerMetrics;
use crate::server::{
    Limits, listener,
    rest::serve::{HEADER_READ_TIMEOUT, HTTP1_BUF_BYTES_MAX},
};

/// Connections the endpoint holds at once (fewer if the fronts' cap is
/// lower). Each serves one scrape at a time, and a scrape asks the store
/// for its counters: without a cap of its own the endpoint would accept as
/// many connections as a front, each able to keep the store busy.
pub const CONNECTIONS_MAX: usize = 16;

/// The content type of the text `/metrics` returns (prometheus-client
/// writes OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers one request.
async fn answer(metrics: ServerMetrics, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(metrics.scrape().await)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE_OPENMETRICS),
    );
    response
}

/// Serves `/metrics` on every connection `incoming` yields until
/// `shutdown` completes.
pub async fn serve_metrics<I, IO, IE>(
    metrics: ServerMetrics,
    limits: &Limits,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    IE: std::fmt::Display,
{
    let limits = Limits {
        connections_max: limits.connections_max.min(CONNECTIONS_MAX),
        ..limits.clone()
    };
    let incoming = listener::guard(incoming, &limits, "metrics");
    tokio::pin!(incoming, shutdown);
    loop {
        let io = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(io)) => io,
                Some(Err(never)) => match never {},
                None => break,
            },
            () = &mut shutdown => break,
        };
        let metrics = metrics.clone();
        let service = service_fn(move |req| {
            let metrics = metrics.clone();
            async move { Ok::<_, Infallible>(answer(metrics, req).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(HTTP1_BUF_BYTES_MAX)
            .serve_connection(TokioIo::new(io), service);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::server;

    /// Silent connections beyond [`CONNECTIONS_MAX`] close the oldest at
    /// once, well before the first-byte timeout or hyper's header read
    /// timeout ([`HEADER_READ_TIMEOUT`], 10 s) would.
    #[tokio::test]
    async fn the_endpoint_has_a_small_connection_cap_of_its_own() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            first_byte_timeout: Duration::from_secs(600),
            ..Limits::default()
        };
        assert!(limits.connections_max > CONNECTIONS_MAX);
        let server = tokio::spawn(async move {
            serve_metrics(
                ServerMetrics::new(),
                &limits,
                server::tcp_incoming(listener),
                std::future::pending(),
            )
            .await;
        });
        let mut first = TcpStream::connect(addr).await.expect("connect");
        let mut others = Vec::new();
        for _ in 0..CONNECTIONS_MAX {
            others.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // The oldest silent connection made room for the newest: it ends
        // (EOF or reset), where under the fronts' cap it would stay open
        // until a timeout.
        let mut buf = [0u8; 1];
        let bound = HEADER_READ_TIMEOUT / 2;
        let ended = tokio::time::timeout(bound, first.read(&mut buf))
            .await
            .expect("closed under the endpoint's own cap, not the timeout");
        assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
        server.abort();
    }
}
