//! [`serve_rest`]: the accept loop of the REST twin. HTTP/1.1 (keep-alive)
//! and HTTP/2 over cleartext with prior knowledge (h2c) on the same port:
//! hyper-util's auto builder reads the first bytes of each connection and
//! picks the protocol (the HTTP/2 preface or not), so a benchmark can tell
//! the protocol's share from the encoding's against one server.
//!
//! Our own loop rather than `axum::serve`: it takes any connection stream
//! (like the gRPC front), caps connections, header reads and shutdown time,
//! and needs no extra axum features.

use std::{future::Future, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::Semaphore,
};
use tokio_stream::{Stream, StreamExt};

use super::router;
use crate::server::service::Calculator;

/// Most connections served at once; the loop stops accepting (the kernel's
/// backlog queues them) until one closes. HTTP/1.1 cannot multiplex, so a
/// client with N requests in flight holds N connections.
pub const CONNECTIONS_MAX: usize = 1024;

/// Longest an HTTP/1.1 client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest HTTP/1.1 read buffer, which bounds the request head.
pub const HTTP1_BUF_BYTES_MAX: usize = 64 * 1024;

/// Largest HTTP/2 header list a client may send.
pub const H2_HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;

/// Concurrent streams per HTTP/2 connection (hyper's own default, stated).
pub const H2_STREAMS_MAX: u32 = 200;

/// Longest a shutdown waits for open connections to finish their requests.
pub const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(10);

/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the REST twin of `calculator` on every connection `incoming`
/// yields, until `shutdown` completes; then stops accepting, lets requests
/// in flight finish (at most [`SHUTDOWN_DRAIN_MAX`]) and returns. A failed
/// accept or connection is logged, never fatal.
pub async fn serve_rest<I, IO, IE>(
    calculator: Calculator,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    IE: std::fmt::Display,
{
    let app = router(calculator);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(HTTP1_BUF_BYTES_MAX);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_STREAMS_MAX)
        .max_header_list_size(H2_HEADER_LIST_BYTES_MAX);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    tokio::pin!(incoming, shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                // Never closed; if it were, stop serving rather than panic.
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let io = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "REST front: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
                None => break,
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // Peers resetting or timing out: routine, not an error of ours.
                tracing::debug!(error = %e, "REST connection ended with an error");
            }
            drop(permit);
        });
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
