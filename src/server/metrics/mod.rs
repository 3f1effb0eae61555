//! The server's metrics (`--metrics-addr`), in Prometheus text at
//! `/metrics`: gRFC A66's server series under their Prometheus names, both
//! fronts counting into the same series (label `front`, `grpc` or `rest`),
//! and abacus' own.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `grpc_server_call_started_total` | counter | `grpc_method`, `front` |
//! | `grpc_server_call_duration_seconds` | histogram | `grpc_method`, `grpc_status`, `front` |
//! | `grpc_server_call_sent_total_compressed_message_size_bytes` | histogram | same |
//! | `grpc_server_call_rcvd_total_compressed_message_size_bytes` | histogram | same |
//! | `abacus_applied_total` | counter | — updates this process applied |
//! | `abacus_dedup_hits_total`, `_joins_total`, `_mismatches_total` | counter | — |
//! | `abacus_dedup_evictions_total` | counter | `reason` (`capacity`, `ttl`) |
//! | `abacus_shed_total` | counter | `grpc_method` |
//! | `abacus_store_operation_duration_seconds` | histogram | `operation`, `result` |
//! | `abacus_store_serving` | gauge | — the store's own health (`Ledger::health`) |
//! | `abacus_store_up`, `abacus_dedup_entries`, `abacus_dedup_in_flight`, `abacus_registers` | gauge | read from the store at scrape |
//! | `abacus_dedup_evictions_early_total` | counter | read from the store at scrape: records evicted inside their TTL (warned about every 10 s) |
//! | `abacus_auth_refused_total` | counter | `reason` |
//! | `abacus_connections_open`, `abacus_connections_closed_total`, `abacus_tls_handshakes_total` | | `front`, … |
//!
//! `grpc_method` is `abacus.v1.Calculator/Add` etc. from [`Method`]'s table,
//! `other` for anything else (health, reflection, unknown paths), so no
//! caller can grow the label set. A REST call counts as the RPC its route
//! stands for, with the gRPC code of its answer (the REST body's `code`).
//!
//! # Where the numbers come from
//! - calls: [`layer::MetricsLayer`] around the whole gRPC server (so shed,
//!   refused and unauthenticated calls count) and the REST twin's
//!   middleware, through [`ServerMetrics::start_call`];
//! - dedup, applied and shed counts: the typed events every component
//!   already emits ([`ServerMetrics::record`], installed as an
//!   [`EventSink`] hook) — this process's view, summed across replicas by
//!   Prometheus;
//! - store latency: [`ledger::MeteredLedger`] around the ledger;
//! - gauges and the listener, TLS and auth counters: read at scrape time
//!   from where they already live ([`ServerMetrics::watch_ledger`] and
//!   friends), nothing copied on the hot path.
//!
//! Each server has its own registry (tests and the simulation run several
//! in one process); the hot path touches atomics and, for histograms, a
//! short lock per observation.
//!
//! # Layout
//! - [`layer`]: the gRPC front's layer (calls, durations, message sizes).
//! - [`ledger`]: store latency around any [`Ledger`].
//! - [`endpoint`]: the `/metrics` HTTP endpoint.

pub mod endpoint;
pub mod layer;
pub mod ledger;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::text::{encode_eof, encode_registry},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::time::Instant;
use tonic::Code;

pub use endpoint::serve_metrics;
pub use layer::MetricsLayer;
pub use ledger::MeteredLedger;

use super::{auth::Authenticator, listener::ListenerStats, tls::HandshakeStats};
use crate::{
    rpc::{
        Method,
        metrics::{HistogramFn, call_label, latency_histogram, size_histogram, status_label},
    },
    store::{Ledger, StoreHealth},
    trace::{Event, EventSink},
};

/// Which front a call came through (the `front` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Front {
    /// The gRPC front.
    Grpc,
    /// The REST twin.
    Rest,
}

impl Front {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Rest => "rest",
        }
    }
}

type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Longest a scrape waits for the store's counters; past it the store
/// reads as down (`abacus_store_up 0`) rather than the scrape hanging.
pub const STORE_SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// One server's metrics. Cheap to clone; clones share the registry.
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    started: Family<Labels<2>, Counter>,
    duration: Family<Labels<3>, Histogram, HistogramFn>,
    sent: Family<Labels<3>, Histogram, HistogramFn>,
    rcvd: Family<Labels<3>, Histogram, HistogramFn>,
    applied: Counter,
    dedup_hits: Counter,
    dedup_joins: Counter,
    dedup_mismatches: Counter,
    dedup_evictions: Family<Labels<1>, Counter>,
    shed: Family<Labels<1>, Counter>,
    store_duration: Family<Labels<2>, Histogram, HistogramFn>,
    /// What scrapes read from. A std mutex: set at start, cloned out at
    /// each scrape, never held across an await.
    sources: Mutex<Sources>,
    /// One scrape reads the store at a time: concurrent scrapes queue
    /// rather than each taking one of the store's in-flight slots.
    scraping: tokio::sync::Semaphore,
}

#[derive(Debug, Default, Clone)]
struct Sources {
    ledger: Option<Arc<dyn Ledger>>,
    auth: Option<Arc<Authenticator>>,
    fronts: Vec<(Front, ListenerStats, Option<HandshakeStats>)>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMetrics {
    /// A fresh registry with every series registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let started = Family::default();
        registry.register(
            "grpc_server_call_started",
            "Calls started (gRFC A66 grpc.server.call.started)",
            started.clone(),
        );
        let duration = Family::new_with_constructor(latency_histogram as HistogramFn);
        registry.register_with_unit(
            "grpc_server_call_duration",
            "Call duration from the server's view, headers to trailers (A66 grpc.server.call.duration)",
            Unit::Seconds,
            duration.clone(),
        );
        let sent = Family::new_with_constructor(size_histogram as HistogramFn);
        registry.register_with_unit(
            "grpc_server_call_sent_total_compressed_message_size",
            "Message bytes sent per call, framing excluded (A66)",
            Unit::Bytes,
            sent.clone(),
        );
        let rcvd = Family::new_with_constructor(size_histogram as HistogramFn);
        registry.register_with_unit(
            "grpc_server_call_rcvd_total_compressed_message_size",
            "Message bytes received per call, framing excluded (A66)",
            Unit::Bytes,
            rcvd.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let applied = counter(
            &mut registry,
            "abacus_applied",
            "Register updates this process applied",
        );
        let dedup_hits = counter(
            &mut registry,
            "abacus_dedup_hits",
            "Repeated request IDs answered from the dedup store",
        );
        let dedup_joins = counter(
            &mut registry,
            "abacus_dedup_joins",
            "Duplicates that waited for the first execution in flight",
        );
        let dedup_mismatches = counter(
            &mut registry,
            "abacus_dedup_mismatches",
            "Request IDs reused with a different payload (refused)",
        );
        let dedup_evictions = Family::default();
        registry.register(
            "abacus_dedup_evictions",
            "Dedup records dropped to keep the store bounded",
            dedup_evictions.clone(),
        );
        let shed = Family::default();
        registry.register(
            "abacus_shed",
            "Calls refused by load shedding (RESOURCE_EXHAUSTED / 429)",
            shed.clone(),
        );
        let store_duration = Family::new_with_constructor(latency_histogram as HistogramFn);
        registry.register_with_unit(
            "abacus_store_operation_duration",
            "Time the ledger took per operation (begin, commit, get, stats)",
            Unit::Seconds,
            store_duration.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                started,
                duration,
                sent,
                rcvd,
                applied,
                dedup_hits,
                dedup_joins,
                dedup_mismatches,
                dedup_evictions,
                shed,
                store_duration,
                sources: Mutex::default(),
                scraping: tokio::sync::Semaphore::new(1),
            }),
        }
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        // Only ever assigned whole: a panic elsewhere cannot leave it torn.
        self.inner.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the store's counters (and whether it answers) at each scrape.
    pub fn watch_ledger(&self, ledger: Arc<dyn Ledger>) {
        self.sources().ledger = Some(ledger);
    }

    /// Reads the authenticator's refusal counts at each scrape.
    pub fn watch_auth(&self, auth: Arc<Authenticator>) {
        self.sources().auth = Some(auth);
    }

    /// Reads a front's connection (and TLS handshake) counters at each
    /// scrape.
    pub fn watch_front(&self, front: Front, listener: ListenerStats, tls: Option<HandshakeStats>) {
        let mut sources = self.sources();
        sources.fronts.retain(|(f, _, _)| *f != front);
        sources.fronts.push((front, listener, tls));
    }

    /// `sink`, also counting the events these metrics are made of.
    pub fn hook_into(&self, sink: EventSink) -> EventSink {
        let metrics = self.clone();
        sink.and_hook(move |event| metrics.record(event))
    }

    /// Counts one event (dedup, applied, shed); ignores the rest.
    pub fn record(&self, event: &Event) {
        let m = &self.inner;
        match event {
            Event::Applied { .. } => {
                m.applied.inc();
            }
            Event::DedupHit { .. } => {
                m.dedup_hits.inc();
            }
            Event::DedupJoined { .. } => {
                m.dedup_joins.inc();
            }
            Event::DedupMismatch { .. } => {
                m.dedup_mismatches.inc();
            }
            Event::DedupEvicted { reason, .. } => {
                m.dedup_evictions
                    .get_or_create(&[("reason", reason.as_str())])
                    .inc();
            }
            Event::Shed { method } => {
                m.shed
                    .get_or_create(&[("grpc_method", call_label(*method))])
                    .inc();
            }
            _ => {}
        }
    }

    /// Counts a call of `method` (`None`: anything outside the [`Method`]
    /// table, labelled `other`) starting on `front`; finish the record
    /// when the call ends.
    pub fn start_call(&self, front: Front, method: Option<Method>) -> CallRecord {
        let method = call_label(method);
        self.inner
            .started
            .get_or_create(&[("grpc_method", method), ("front", front.label())])
            .inc();
        CallRecord {
            metrics: self.clone(),
            front,
            method,
            start: Instant::now(),
            rcvd_bytes: 0,
            sent_bytes: 0,
            done: false,
        }
    }

    /// Observes one store operation.
    pub fn observe_store(&self, operation: &'static str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.inner
            .store_duration
            .get_or_create(&[("operation", operation), ("result", result)])
            .observe(took.as_secs_f64());
    }

    /// The text a scrape returns (OpenMetrics text, which Prometheus
    /// reads).
    pub async fn scrape(&self) -> String {
        let sources = self.sources().clone();
        let stats = match &sources.ledger {
            Some(ledger) => Some({
                // Never closed, so acquiring only waits.
                let _one = self.inner.scraping.acquire().await;
                tokio::time::timeout(STORE_SCRAPE_TIMEOUT, ledger.stats())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }),
            None => None,
        };
        let mut snapshot = Registry::default();
        if let Some(ledger) = &sources.ledger {
            let serving = Gauge::<i64>::default();
            serving.set(i64::from(matches!(
                *ledger.health().borrow(),
                StoreHealth::Serving
            )));
            snapshot.register(
                "abacus_store_serving",
                "1 while the store serves registers, 0 while it is broken (e.g. a full disk) and register calls are answered UNAVAILABLE",
                serving,
            );
        }
        if let Some(stats) = stats {
            let up = Gauge::<i64>::default();
            up.set(i64::from(stats.is_some()));
            snapshot.register(
                "abacus_store_up",
                "1 when the store answered this scrape, 0 when it failed or timed out",
                up,
            );
            if let Some(s) = stats {
                for (name, help, value) in [
                    (
                        "abacus_dedup_entries",
                        "Dedup records retained",
                        s.dedup_entries,
                    ),
                    (
                        "abacus_dedup_in_flight",
                        "Request IDs claimed and not yet committed",
                        s.dedup_in_flight,
                    ),
                    ("abacus_registers", "Registers held", s.registers),
                ] {
                    let g = Gauge::<i64>::default();
                    g.set(i64::try_from(value).unwrap_or(i64::MAX));
                    snapshot.register(name, help, g);
                }
                let early = Counter::<u64>::default();
                early.inc_by(s.dedup_evictions_early);
                snapshot.register(
                    "abacus_dedup_evictions_early",
                    "Dedup records evicted inside their TTL to make room (a retry of one would apply again): --dedup-entries-max or --dedup-entries-per-client-max binds",
                    early,
                );
            }
        }
        if let Some(auth) = &sources.auth {
            let refused = Family::<Labels<1>, Counter>::default();
            let s = auth.stats();
            for (reason, n) in [
                ("unauthenticated", s.unauthenticated),
                ("forbidden", s.forbidden),
                ("rate_limited", s.rate_limited),
            ] {
                refused.get_or_create(&[("reason", reason)]).inc_by(n);
            }
            snapshot.register(
                "abacus_auth_refused",
                "Calls refused by authentication, by reason",
                refused,
            );
        }
        if !sources.fronts.is_empty() {
            let open = Family::<Labels<1>, Gauge>::default();
            let closed = Family::<Labels<2>, Counter>::default();
            let handshakes = Family::<Labels<2>, Counter>::default();
            for (front, listener, tls) in &sources.fronts {
                let front = front.label();
                open.get_or_create(&[("front", front)])
                    .set(i64::try_from(listener.open()).unwrap_or(i64::MAX));
                for (reason, n) in [
                    ("cap", listener.refused()),
                    ("timeout", listener.timed_out()),
                ] {
                    closed
                        .get_or_create(&[("front", front), ("reason", reason)])
                        .inc_by(n);
                }
                if let Some(tls) = tls {
                    for (result, n) in [
                        ("ok", tls.completed()),
                        ("failed", tls.failed()),
                        ("timed_out", tls.timed_out()),
                    ] {
                        handshakes
                            .get_or_create(&[("front", front), ("result", result)])
                            .inc_by(n);
                    }
                }
            }
            snapshot.register("abacus_connections_open", "Connections open", open);
            snapshot.register(
                "abacus_connections_closed",
                "Connections the server closed: at the connection cap, or silent or idle past their timeout",
                closed,
            );
            snapshot.register(
                "abacus_tls_handshakes",
                "TLS handshakes, by result",
                handshakes,
            );
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut text, &self.inner.registry)
            .and_then(|()| encode_registry(&mut text, &snapshot))
            .and_then(|()| encode_eof(&mut text));
        text
    }
}

/// One call being counted: see [`ServerMetrics::start_call`]. Finished
/// once; a record dropped unfinished (the peer went away mid-call) counts
/// as CANCELLED, so every started call is observed.
#[derive(Debug)]
pub struct CallRecord {
    metrics: ServerMetrics,
    front: Front,
    method: &'static str,
    start: Instant,
    /// Message bytes received so far.
    pub rcvd_bytes: u64,
    /// Message bytes sent so far.
    pub sent_bytes: u64,
    done: bool,
}

impl CallRecord {
    /// Observes the call's duration and sizes, ended with `code`; later
    /// calls do nothing.
    pub fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let labels = [
            ("grpc_method", self.method),
            ("grpc_status", status_label(code)),
            ("front", self.front.label()),
        ];
        let m = &self.metrics.inner;
        m.duration
            .get_or_create(&labels)
            .observe(self.start.elapsed().as_secs_f64());
        m.sent
            .get_or_create(&labels)
            .observe(self.sent_bytes as f64);
        m.rcvd
            .get_or_create(&labels)
            .observe(self.rcvd_bytes as f64);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}
