//! Both fronts (and the metrics endpoint) of one server with an [`Edge`],
//! and clients for them.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use abacus::{
    client::{BearerToken, Client, ClientConfig, ClientTls, tcp_channel_with},
    server::{
        self, Calculator, DedupConfig, Edge, FaultConfig, Limits, ServerConfig,
        auth::{Authenticator, RateLimit, tokens},
        metrics::ServerMetrics,
        tls::{PemSource, ServerTls},
    },
    store::{Ledger, MemoryLedger},
    trace::EventSink,
};
use futures_util::FutureExt;
use tokio::{net::TcpListener, sync::oneshot};

use crate::certs::{Pair, Pki};

/// Tokens of the test identities.
pub(crate) const WRITER_TOKEN: &str = "writer-token-0123456789abcdef";
pub(crate) const READER_TOKEN: &str = "reader-token-0123456789abcdef";
pub(crate) const OTHER_WRITER_TOKEN: &str = "other-writer-0123456789abcdef";

/// The token file of the tests: `writer` and `other` write, `reader`
/// reads.
pub(crate) fn token_file() -> String {
    format!(
        "# test identities\nwriter write {WRITER_TOKEN}\nreader read {READER_TOKEN}\nother write {OTHER_WRITER_TOKEN}\n"
    )
}

/// An authenticator over [`token_file`].
pub(crate) fn authenticator(rate: Option<RateLimit>) -> Arc<Authenticator> {
    let entries = tokens::parse(&token_file()).expect("valid token file");
    Arc::new(Authenticator::new(entries, rate))
}

fn pem<'a>(flag: &'static str, text: &'a str) -> PemSource<'a> {
    PemSource {
        flag,
        path: std::path::Path::new("(test)"),
        pem: text.as_bytes(),
    }
}

/// The server's TLS with `pki`'s server certificate (and client CA when
/// `mutual`).
pub(crate) fn server_tls(pki: &Pki, mutual: bool) -> ServerTls {
    server_tls_with(&pki.server, mutual.then_some(pki.ca.as_str()))
}

/// The server's TLS with `pair`, requiring clients signed by `client_ca`.
pub(crate) fn server_tls_with(pair: &Pair, client_ca: Option<&str>) -> ServerTls {
    ServerTls::from_pem(
        pem("--tls-cert", &pair.cert),
        pem("--tls-key", &pair.key),
        client_ca.map(|ca| pem("--tls-client-ca", ca)),
    )
    .expect("valid server TLS")
}

/// A client's TLS trusting `ca`, presenting `identity` if given.
pub(crate) fn client_tls(ca: &str, identity: Option<&Pair>) -> ClientTls {
    ClientTls::from_pem(
        pem("--tls-ca", ca),
        identity.map(|pair| (pem("--tls-cert", &pair.cert), pem("--tls-key", &pair.key))),
    )
    .expect("valid client TLS")
}

/// Both fronts and, with metrics, the metrics endpoint.
pub(crate) struct Fronts {
    pub(crate) grpc: SocketAddr,
    pub(crate) rest: SocketAddr,
    pub(crate) metrics: Option<SocketAddr>,
    _stop: oneshot::Sender<()>,
}

impl Fronts {
    /// A server with `edge` over a fresh in-memory ledger.
    pub(crate) async fn start(edge: Edge) -> Self {
        Self::with(edge, Limits::default(), None).await
    }

    /// A server with `edge` and `limits` over `ledger` (a fresh in-memory
    /// one if `None`).
    pub(crate) async fn with(edge: Edge, limits: Limits, ledger: Option<Arc<dyn Ledger>>) -> Self {
        Self::with_config(edge, limits, ledger, FaultConfig::default()).await
    }

    /// A plain server refusing a share `fail_rate` of calls before applying.
    pub(crate) async fn with_faults(fail_rate: f64) -> Self {
        let faults = FaultConfig {
            fail_rate,
            ..FaultConfig::default()
        };
        Self::with_config(Edge::default(), Limits::default(), None, faults).await
    }

    async fn with_config(
        edge: Edge,
        limits: Limits,
        ledger: Option<Arc<dyn Ledger>>,
        faults: FaultConfig,
    ) -> Self {
        let events = match &edge.metrics {
            Some(m) => m.hook_into(EventSink::log_only()),
            None => EventSink::log_only(),
        };
        let ledger = ledger.unwrap_or_else(|| {
            Arc::new(MemoryLedger::new(DedupConfig::default(), events.clone())) as Arc<dyn Ledger>
        });
        let config = ServerConfig {
            events,
            faults,
            limits: limits.clone(),
            edge: edge.clone(),
            ..ServerConfig::default()
        };
        let calculator = Calculator::from_config(&config, ledger);
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let rest = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (grpc_addr, rest_addr) = (grpc.local_addr().unwrap(), rest.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        }
        .shared();
        let metrics_addr = match &edge.metrics {
            Some(metrics) => Some(serve_metrics(metrics.clone(), &limits, stopped.clone()).await),
            None => None,
        };
        let rest_limits = limits.clone();
        let rest_calculator = calculator.clone();
        let rest_stopped = stopped.clone();
        tokio::spawn(async move {
            server::serve_rest_with(
                rest_calculator,
                &rest_limits,
                server::tcp_incoming(rest),
                rest_stopped,
            )
            .await;
        });
        tokio::spawn(async move {
            server::serve_calculator_with(calculator, &limits, server::tcp_incoming(grpc), stopped)
                .await
        });
        Self {
            grpc: grpc_addr,
            rest: rest_addr,
            metrics: metrics_addr,
            _stop: stop,
        }
    }
}

async fn serve_metrics(
    metrics: ServerMetrics,
    limits: &Limits,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let limits = limits.clone();
    tokio::spawn(async move {
        server::metrics::serve_metrics(metrics, &limits, server::tcp_incoming(listener), stopped)
            .await;
    });
    addr
}

/// A client policy for tests: one attempt, short deadlines, no breaker.
pub(crate) fn quick_config(token: Option<&str>) -> ClientConfig {
    ClientConfig {
        deadline: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(5),
        breaker: None,
        token: token.map(|t| BearerToken::new(t, "test").expect("valid token")),
        retry: abacus::client::RetryConfig {
            attempts_max: 1,
            ..Default::default()
        },
        ..ClientConfig::default()
    }
}

/// An abacus client of `addr`.
pub(crate) fn client(addr: SocketAddr, tls: Option<&ClientTls>, config: ClientConfig) -> Client {
    let channel = tcp_channel_with(&addr.to_string(), tls).expect("channel");
    Client::new(channel, config)
}

/// One HTTP/1.1 request over `io`; the status, headers and body.
pub(crate) async fn http1<IO>(
    io: IO,
    req: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
) -> (hyper::StatusCode, hyper::HeaderMap, String)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let response = sender.send_request(req).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A REST request with an optional token and JSON body.
pub(crate) fn rest_request(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> hyper::Request<http_body_util::Full<hyper::body::Bytes>> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    req.body(http_body_util::Full::new(hyper::body::Bytes::from(
        body.unwrap_or_default().to_owned(),
    )))
    .expect("request")
}
