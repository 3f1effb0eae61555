//! TLS for both fronts: [`ServerTls`] is one rustls configuration (a
//! certificate chain, its key, and optionally the CA whose client
//! certificates are required — mutual TLS), and [`handshakes`] turns a
//! front's stream of admitted connections into a stream of TLS sessions.
//!
//! # Where the handshake happens
//! After the [`listener`](super::listener) guard has admitted a connection
//! (so the connection cap counts handshakes in progress), in a task of its
//! own (so one slow handshake never delays the accept loop or another
//! handshake), and within the guard's first-byte timeout
//! ([`Limits::first_byte_timeout`](super::Limits)): a peer that connects and
//! never finishes its handshake holds its slot for that long at most.
//! Neither front knows TLS is there: each receives streams that read and
//! write plaintext, and tonic still sees the peer's address
//! (`TlsConnectInfo` over the guard's `Connected`).
//!
//! # One configuration, two protocols
//! The gRPC front offers `h2` alone by ALPN (gRPC requires HTTP/2, and a
//! client that cannot speak it fails at the handshake, not at the first
//! call); the REST front offers `h2` and `http/1.1`. Everything else —
//! certificates, client verification, protocol versions, the ring provider
//! — is shared.
//!
//! # Errors
//! Every problem with the files is a [`TlsConfigError`] at start, naming
//! the flag and the file; nothing is parsed again later. Failed handshakes
//! are a peer's problem, logged rate-limited at INFO with the reason
//! (rustls' alert names no secret), and counted.

use std::{
    convert::Infallible,
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    task::JoinSet,
    time::Instant,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier},
    server::TlsStream,
};
use tokio_stream::Stream;

use super::tally::Tally;
pub use crate::tls::{PemSource, TlsConfigError};
use crate::tls::{certificates, private_key, provider, read_pem};

/// ALPN protocols of the gRPC front: HTTP/2 only.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];

/// ALPN protocols of the REST front: HTTP/2 first, then HTTP/1.1.
pub const ALPN_REST: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The server's TLS configuration, shared by both fronts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    mutual: bool,
}

impl ServerTls {
    /// Reads `--tls-cert`, `--tls-key` and, for mutual TLS,
    /// `--tls-client-ca`.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, TlsConfigError> {
        let cert_pem = read_pem("--tls-cert", cert)?;
        let key_pem = read_pem("--tls-key", key)?;
        let ca_pem = client_ca
            .map(|path| read_pem("--tls-client-ca", path).map(|pem| (path, pem)))
            .transpose()?;
        Self::from_pem(
            PemSource {
                flag: "--tls-cert",
                path: cert,
                pem: &cert_pem,
            },
            PemSource {
                flag: "--tls-key",
                path: key,
                pem: &key_pem,
            },
            ca_pem.as_ref().map(|(path, pem)| PemSource {
                flag: "--tls-client-ca",
                path,
                pem,
            }),
        )
    }

    /// The configuration for a certificate chain, its key and an optional
    /// client CA, from PEM.
    pub fn from_pem(
        cert: PemSource<'_>,
        key: PemSource<'_>,
        client_ca: Option<PemSource<'_>>,
    ) -> Result<Self, TlsConfigError> {
        let chain = certificates(cert)?;
        let key = private_key(key)?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsConfigError::Rustls {
                what: "TLS protocol versions",
                source,
            })?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(ca)? {
                    roots.add(cert).map_err(|e| TlsConfigError::Ca {
                        flag: ca.flag,
                        path: ca.path.to_owned(),
                        reason: e.to_string(),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| TlsConfigError::Ca {
                    flag: ca.flag,
                    path: ca.path.to_owned(),
                    reason: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config =
            builder
                .with_single_cert(chain, key)
                .map_err(|source| TlsConfigError::Rustls {
                    what: "--tls-cert and --tls-key do not make a usable certificate (does the key belong to the certificate?)",
                    source,
                })?;
        Ok(Self {
            config: Arc::new(config),
            mutual: client_ca.is_some(),
        })
    }

    /// True when clients must present a certificate signed by the client
    /// CA.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// An acceptor offering `alpn` ([`ALPN_GRPC`], [`ALPN_REST`]).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let mut config = ServerConfig::clone(&self.config);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// Handshake counters of one front, for tests and metrics.
#[derive(Debug, Clone, Default)]
pub struct HandshakeStats {
    shared: Arc<HandshakeShared>,
}

#[derive(Debug, Default)]
struct HandshakeShared {
    completed: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    /// Failures for the rate-limited log line. A std mutex held for a
    /// counter update, never across I/O.
    log: Mutex<Tally>,
}

impl HandshakeStats {
    /// Handshakes completed.
    pub fn completed(&self) -> u64 {
        self.shared.completed.load(Ordering::Relaxed)
    }

    /// Handshakes that failed (bad certificate, wrong protocol, plaintext
    /// on a TLS port, the peer leaving), timeouts excluded.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Handshakes not finished within the first-byte timeout.
    pub fn timed_out(&self) -> u64 {
        self.shared.timed_out.load(Ordering::Relaxed)
    }
}

/// Runs the TLS handshake of every connection `incoming` yields, each in
/// its own task and within `timeout`, and yields the sessions that
/// complete. Failed handshakes close their connection (freeing its slot
/// under the guard's cap) and are counted in `stats`.
pub fn handshakes<S, IO>(
    incoming: S,
    acceptor: TlsAcceptor,
    timeout: Duration,
    front: &'static str,
    stats: HandshakeStats,
) -> Handshakes<S, IO>
where
    S: Stream<Item = Result<IO, Infallible>>,
{
    Handshakes {
        incoming,
        acceptor,
        timeout,
        front,
        stats,
        pending: JoinSet::new(),
        incoming_done: false,
    }
}

pin_project! {
    /// The stream of completed handshakes: see [`handshakes`]. Dropping it
    /// aborts the handshakes in progress.
    pub struct Handshakes<S, IO> {
        #[pin]
        incoming: S,
        acceptor: TlsAcceptor,
        timeout: Duration,
        front: &'static str,
        stats: HandshakeStats,
        pending: JoinSet<Option<TlsStream<IO>>>,
        incoming_done: bool,
    }
}

impl<S, IO> std::fmt::Debug for Handshakes<S, IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshakes")
            .field("front", &self.front)
            .field("in_progress", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// One handshake, bounded by `timeout`; `None` when it failed (counted and
/// logged).
async fn handshake<IO>(
    acceptor: TlsAcceptor,
    io: IO,
    timeout: Duration,
    front: &'static str,
    stats: HandshakeStats,
) -> Option<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let shared = &stats.shared;
    let failure = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Ok(Ok(session)) => {
            shared.completed.fetch_add(1, Ordering::Relaxed);
            return Some(session);
        }
        Ok(Err(e)) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            e.to_string()
        }
        Err(_) => {
            shared.timed_out.fetch_add(1, Ordering::Relaxed);
            format!("not finished within {timeout:?}")
        }
    };
    let report = shared
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(Instant::now());
    if let Some(report) = report {
        // INFO, rate-limited: a client with the wrong CA or speaking
        // plaintext is worth seeing, a scan of the port must not flood.
        tracing::info!(
            front,
            failures = %report,
            "TLS handshake failed: {failure}"
        );
    }
    None
}

impl<S, IO> Stream for Handshakes<S, IO>
where
    S: Stream<Item = Result<IO, Infallible>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Item = Result<TlsStream<IO>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        // Start a handshake for everything accepted so far.
        while !*this.incoming_done {
            match this.incoming.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(io))) => {
                    this.pending.spawn(handshake(
                        this.acceptor.clone(),
                        io,
                        *this.timeout,
                        this.front,
                        this.stats.clone(),
                    ));
                }
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => *this.incoming_done = true,
                Poll::Pending => break,
            }
        }
        loop {
            match this.pending.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(session)))) => return Poll::Ready(Some(Ok(session))),
                // Failed (already counted), or aborted at shutdown.
                Poll::Ready(Some(Ok(None) | Err(_))) => continue,
                Poll::Ready(None) if *this.incoming_done => return Poll::Ready(None),
                // Nothing in progress: woken by `incoming` when it yields.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
