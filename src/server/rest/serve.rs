//! [`serve_rest`]: the accept loop of the REST twin. HTTP/1.1 (keep-alive)
//! and HTTP/2 over cleartext with prior knowledge (h2c) on the same port:
//! hyper-util's auto builder reads the first bytes of each connection and
//! picks the protocol (the HTTP/2 preface or not), so a benchmark can tell
//! the protocol's share from the encoding's against one server.
//!
//! Our own loop rather than `axum::serve`: it takes any connection stream
//! (like the gRPC front), and the same [`listener`] guard (connection cap,
//! accept backoff, first-byte and idle timeouts), header read and shutdown
//! limits, and needs no extra axum features.

use std::{convert::Infallible, future::Future, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;
use tower::ServiceExt;

use super::{peer::PeerAddr, router};
use crate::server::{
    Limits, listener,
    metrics::Front,
    service::Calculator,
    tls::{self, HandshakeStats},
};

/// Longest an HTTP/1.1 client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest HTTP/1.1 read buffer, which bounds the request head.
pub const HTTP1_BUF_BYTES_MAX: usize = 64 * 1024;

/// Longest a shutdown waits for open connections to finish their requests.
pub const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(10);

/// [`serve_rest_with`] under the default [`Limits`].
pub async fn serve_rest<I, IO, IE>(
    calculator: Calculator,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: std::fmt::Display,
{
    serve_rest_with(calculator, &Limits::default(), incoming, shutdown).await;
}

/// Serves the REST twin of `calculator` on every connection `incoming`
/// yields, until `shutdown` completes; then stops accepting, lets requests
/// in flight finish (at most [`SHUTDOWN_DRAIN_MAX`]) and returns. A failed
/// accept or connection is logged, never fatal. HTTP/2 (h2c) connections
/// get the same stream, header, window and keepalive limits as the gRPC
/// front.
pub async fn serve_rest_with<I, IO, IE>(
    calculator: Calculator,
    limits: &Limits,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: std::fmt::Display,
{
    calculator.shed().start_probe();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(HTTP1_BUF_BYTES_MAX);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_streams_max)
        .max_header_list_size(limits.h2_header_list_bytes_max)
        .initial_stream_window_size(limits.h2_stream_window_bytes)
        .initial_connection_window_size(limits.h2_connection_window_bytes)
        .max_local_error_reset_streams(limits.h2_local_error_resets_max)
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(limits.h2_keepalive_timeout);
    let graceful = GracefulShutdown::new();
    let edge = calculator.edge().clone();
    let app = router(calculator);
    let incoming = listener::guard(incoming, limits, "REST");
    let handshakes = edge.tls.as_ref().map(|_| HandshakeStats::default());
    if let Some(metrics) = &edge.metrics {
        metrics.watch_front(Front::Rest, incoming.stats(), handshakes.clone());
    }
    match (&edge.tls, handshakes) {
        (Some(config), Some(stats)) => {
            let sessions = tls::handshakes(
                incoming,
                config.acceptor(tls::ALPN_REST),
                limits.first_byte_timeout,
                "REST",
                stats,
            );
            accept_loop(&builder, &graceful, &app, sessions, shutdown).await;
        }
        _ => accept_loop(&builder, &graceful, &app, incoming, shutdown).await,
    }
    if tokio::time::timeout(SHUTDOWN_DRAIN_MAX, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "REST front: connections still open after {SHUTDOWN_DRAIN_MAX:?}; closing them"
        );
    }
}

/// Serves every connection `incoming` yields (plaintext or TLS sessions)
/// until `shutdown` completes.
async fn accept_loop<I, IO>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    app: &axum::Router,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) where
    I: Stream<Item = Result<IO, Infallible>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    tokio::pin!(incoming, shutdown);
    loop {
        let io = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(io)) => io,
                // The guard handles accept errors itself; `Err` is
                // `Infallible`.
                Some(Err(never)) => match never {},
                None => break,
            },
            () = &mut shutdown => break,
        };
        // Read once per connection, like tonic does for the gRPC front.
        let peer = PeerAddr::of(&io);
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                if let Some(peer) = peer {
                    request.extensions_mut().insert(peer);
                }
                request
            },
        ));
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // Peers resetting or timing out: routine, not an error of ours.
                tracing::debug!(error = %e, "REST connection ended with an error");
            }
        });
    }
}
