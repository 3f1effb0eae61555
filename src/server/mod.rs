//! The abacus server: [`serve_with_ledger`] runs the real tonic server on
//! whatever connection stream it is given — a tokio TCP listener in
//! production and tests, turmoil's simulated listener in `sims/` — over a
//! [`Ledger`](crate::store::Ledger) the caller may keep, and [`serve`] is
//! the convenience that builds a fresh in-memory one. There is no test copy
//! of the server.
//!
//! Two fronts can serve one [`Calculator`]: [`serve_calculator`] (gRPC) and
//! [`rest::serve_rest`] (HTTP/JSON), each on its own listener, sharing the
//! registers, the dedup records and the in-flight limit.
//!
//! # Layout
//! - [`service`]: the transport-neutral service both fronts call
//!   (fault plan, deadline, begin/commit/replay).
//! - [`grpc`]: the tonic adapter (`abacus.v1.Calculator`).
//! - [`rest`]: the axum adapter, the HTTP/JSON twin of the gRPC service.
//! - [`faults`]: seeded fault injection (fail, delay, apply-then-drop).
//! - [`deadline`]: reads the caller's `grpc-timeout`.
//! - [`shed`]: load shedding — a cap on calls in flight, and shedding on
//!   queueing delay ([`queue_delay`] decides).
//! - [`limits`]: what one peer may make the server hold ([`Limits`]).
//! - [`listener`]: the accept side of both fronts: connection cap, accept
//!   backoff, first-byte and idle timeouts.
//! - [`streams`]: a server-wide cap on long-lived gRPC streams (Watch,
//!   reflection).
//! - [`strict`]: refuses requests that break the gRPC protocol (content
//!   type, extra request messages).
//! - [`frames`]: gRPC's message framing, read from a body as it streams
//!   (for [`strict`] and [`metrics`]).
//! - [`tally`]: counts for rate-limited log lines.
//! - [`edge`]: what a deployment adds on both fronts ([`Edge`]): TLS
//!   ([`tls`]), tokens and roles ([`auth`]), metrics ([`metrics`]).

pub mod auth;
pub mod deadline;
pub mod edge;
pub mod faults;
pub mod frames;
pub mod grpc;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod queue_delay;
pub mod rest;
pub mod retention;
pub mod service;
pub mod shed;
pub mod streams;
pub mod strict;
pub mod tally;
pub mod tls;

use std::{future::Future, sync::Arc};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

/// The dedup limits a [`ServerConfig`] carries (defined by the store).
pub use crate::store::DedupConfig;
pub use edge::Edge;
pub use faults::{FaultConfig, FaultSwitch, Faults};
pub use grpc::GrpcCalculator;
pub use limits::Limits;
pub use rest::{serve_rest, serve_rest_with};
pub use service::Calculator;

use crate::{
    pb::{self, calculator_server::CalculatorServer},
    store::MemoryLedger,
    trace::{Event, EventSink},
};

/// Largest request the server decodes. Every abacus message is well under
/// 1 KiB; anything bigger is refused by tonic before the handler runs, with
/// OUT_OF_RANGE ("decoded message length too large").
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024;

/// Default cap on concurrent calls before the server sheds load.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 256;

/// The queueing-delay target `--shed-queue-delay-ms` suggests (CoDel's):
/// shedding starts once tasks mostly wait longer than this for a thread.
/// Off by default: `cargo bench --bench edge` shows it shedding about 1 %
/// of a saturating load without lowering latency (docs/operations.md).
pub const SHED_QUEUE_DELAY_MS_SUGGESTED: u64 = 5;

/// Everything that shapes a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Faults to inject (off by default).
    pub faults: FaultConfig,
    /// Stops fault injection at run time.
    pub fault_switch: FaultSwitch,
    /// Calculator calls allowed in flight at once; beyond it the server
    /// answers RESOURCE_EXHAUSTED at once instead of queueing (≥ 1).
    pub in_flight_max: usize,
    /// Pushback sent with a shed call (`grpc-retry-pushback-ms`).
    pub shed_pushback_ms: u64,
    /// Queueing-delay target for shedding under CPU saturation, in ms
    /// (`None`: off); see [`queue_delay`].
    pub shed_queue_delay_ms: Option<u64>,
    /// Where events go.
    pub events: EventSink,
    /// Dedup store limits, used by [`serve`] to build its [`MemoryLedger`] (a
    /// ledger handed to [`serve_with_ledger`] brings its own).
    pub dedup: DedupConfig,
    /// Refuse `Accumulate` without a request ID (INVALID_ARGUMENT) instead
    /// of applying it undeduplicated.
    pub require_request_id: bool,
    /// Connection, stream and timeout limits of the fronts.
    pub limits: Limits,
    /// TLS, tokens and metrics of both fronts.
    pub edge: Edge,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            faults: FaultConfig::default(),
            fault_switch: FaultSwitch::default(),
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            shed_pushback_ms: 100,
            // Off: see `SHED_QUEUE_DELAY_MS_SUGGESTED`. (In a simulation
            // tasks never wait for a thread in simulated time anyway.)
            shed_queue_delay_ms: None,
            events: EventSink::default(),
            dedup: DedupConfig::default(),
            require_request_id: false,
            limits: Limits::default(),
            edge: Edge::default(),
        }
    }
}

/// The connections `listener` accepts, with `TCP_NODELAY` set: small
/// request/response exchanges must not wait for Nagle's algorithm to
/// coalesce them with an ACK that the peer delays. Used for both fronts, so
/// they are compared on equal sockets.
pub fn tcp_incoming(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    })
}

/// Reflection over our contract and the health service.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The `grpc.health.v1` service name under which the server reports whether
/// its register methods (`Accumulate`, `GetRegister`) can be served: NOT_SERVING
/// while the store is broken (e.g. the disk is full), SERVING again once it
/// has recovered. The overall status (`""`) and `abacus.v1.Calculator` stay
/// SERVING meanwhile: the pure methods keep working.
pub const REGISTERS_HEALTH_SERVICE: &str = "abacus.v1.Registers";

/// Mirrors the store's health into the health service, until the store
/// goes away (or the task is aborted with the server).
async fn report_store_health(
    health: tonic_health::server::HealthReporter,
    mut store: tokio::sync::watch::Receiver<crate::store::StoreHealth>,
) {
    use tonic_health::ServingStatus;
    loop {
        let status = match *store.borrow_and_update() {
            crate::store::StoreHealth::Serving => ServingStatus::Serving,
            crate::store::StoreHealth::NotServing => ServingStatus::NotServing,
        };
        health
            .set_service_status(REGISTERS_HEALTH_SERVICE, status)
            .await;
        if store.changed().await.is_err() {
            return;
        }
    }
}

/// Error returned by [`serve`].
pub type ServeError = tonic::transport::Error;

/// Serves `abacus.v1.Calculator`, `grpc.health.v1.Health` and reflection
/// (v1 and v1alpha) on every connection `incoming` yields, until `shutdown`
/// completes; then stops accepting and lets in-flight calls finish. State
/// lives in memory and dies with this call: see [`serve_with_ledger`].
pub async fn serve<I, IO, IE>(
    config: ServerConfig,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: std::fmt::Display,
{
    let ledger = Arc::new(MemoryLedger::new(
        config.dedup.clone(),
        config.events.clone(),
    ));
    serve_with_ledger(config, ledger, incoming, shutdown).await
}

/// [`serve`] over a [`Ledger`](crate::store::Ledger) the caller owns: a
/// durable one ([`RedbLedger`](crate::store::redb::RedbLedger)), a shared PostgreSQL one, or, in the
/// simulation, one kept outside a host so it outlives `sim.crash`/
/// `sim.bounce` and is handed to the restarted server, which models durable
/// storage. `config.dedup` is not used (the ledger has its limits already);
/// events of the ledger go to the sink it was built with. Logs the ledger's
/// counters when the server stops.
pub async fn serve_with_ledger<I, IO, IE>(
    config: ServerConfig,
    ledger: Arc<dyn crate::store::Ledger>,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: std::fmt::Display,
{
    let calculator = Calculator::from_config(&config, ledger);
    serve_calculator_with(calculator, &config.limits, incoming, shutdown).await
}

/// [`serve_with_ledger`] over a [`Calculator`] the caller built, so that
/// another front ([`serve_rest`]) can serve the same one: one state, one
/// dedup store, one in-flight limit ([`Calculator::shed`]). Default
/// [`Limits`]; see [`serve_calculator_with`].
pub async fn serve_calculator<I, IO, IE>(
    calculator: Calculator,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: std::fmt::Display,
{
    serve_calculator_with(calculator, &Limits::default(), incoming, shutdown).await
}

/// [`serve_calculator`] with explicit [`Limits`]: connections pass through
/// the [`listener`] guard (cap, accept backoff, timeouts), HTTP/2 gets its
/// stream, header, window and keepalive limits, long-lived streams their
/// server-wide cap, and requests the [`strict`] protocol checks.
pub async fn serve_calculator_with<I, IO, IE>(
    calculator: Calculator,
    limits: &Limits,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: std::fmt::Display,
{
    let events = calculator.events().clone();
    let ledger = Arc::clone(calculator.ledger());
    let edge = calculator.edge().clone();
    let shed = calculator.shed().clone();
    let shed_counter = shed.clone();
    shed.start_probe();
    let calculator = GrpcCalculator::from_service(calculator);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CalculatorServer<GrpcCalculator>>()
        .await;
    let store_health = tokio::spawn(report_store_health(health, ledger.health()));

    // Both reflection versions: grpcurl speaks v1, Python's grpcio only v1alpha.
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the descriptor sets compiled by build.rs and tonic-health are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the descriptor sets compiled by build.rs and tonic-health are valid");

    let calculator = CalculatorServer::new(calculator).max_decoding_message_size(MESSAGE_BYTES_MAX);

    let incoming = listener::guard(incoming, limits, "gRPC");
    let handshakes = edge.tls.as_ref().map(|_| tls::HandshakeStats::default());
    if let Some(metrics) = &edge.metrics {
        metrics.watch_front(metrics::Front::Grpc, incoming.stats(), handshakes.clone());
    }
    events.emit(Event::ServerStarted);
    // Every HTTP/2 setting is explicit: tonic's defaults leave concurrent
    // streams and locally reset streams unlimited (see `Limits`).
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.h2_streams_max)
        .http2_max_header_list_size(limits.h2_header_list_bytes_max)
        .initial_stream_window_size(limits.h2_stream_window_bytes)
        .initial_connection_window_size(limits.h2_connection_window_bytes)
        .http2_max_local_error_reset_streams(Some(limits.h2_local_error_resets_max))
        .http2_keepalive_interval(Some(limits.h2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.h2_keepalive_timeout))
        // Outermost first. Metrics see every call, refused ones included;
        // a request that is not gRPC is refused before anything else
        // counts it; an unauthenticated call never takes an in-flight slot.
        .layer(tower::util::option_layer(
            edge.metrics.clone().map(metrics::MetricsLayer::new),
        ))
        .layer(strict::StrictLayer)
        .layer(streams::LongStreamsLayer::new(limits.long_streams_max))
        .layer(tower::util::option_layer(
            edge.auth.clone().map(auth::AuthLayer::new),
        ))
        .layer(shed)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(calculator);
    // Two instantiations of the server: tonic sees plaintext streams
    // either way (the handshake runs below it, after the guard).
    let result = match (&edge.tls, handshakes) {
        (Some(config), Some(stats)) => {
            let sessions = tls::handshakes(
                incoming,
                config.acceptor(tls::ALPN_GRPC),
                limits.first_byte_timeout,
                "gRPC",
                stats,
            );
            router
                .serve_with_incoming_shutdown(sessions, shutdown)
                .await
        }
        _ => {
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    store_health.abort();
    let shed_total = shed_counter.shed();
    match ledger.stats().await {
        Ok(stats) => {
            tracing::info!(target: "abacus::stats", %stats, shed = shed_total, "server stopped")
        }
        Err(e) => {
            tracing::info!(target: "abacus::stats", error = %e, shed = shed_total, "server stopped")
        }
    }
    result
}
