//! [`ClientMetrics`]: a recorder of the client's numbers that the caller
//! installs as an event hook ([`ClientMetrics::hook_into`]) — gRFC A66's
//! client series under their Prometheus names, plus what A66 leaves out:
//! retries, give-ups (the retry budget's exhaustion among them) and
//! circuit-breaker transitions.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `grpc_client_attempt_started_total` | counter | `grpc_method`, `grpc_target` |
//! | `grpc_client_attempt_duration_seconds` | histogram | `grpc_method`, `grpc_status`, `grpc_target` |
//! | `grpc_client_call_duration_seconds` | histogram | same |
//! | `abacus_client_retries_total` | counter | `grpc_method`, `pushback` (`true` when the server set the pause) |
//! | `abacus_client_gave_up_total` | counter | `grpc_method`, `reason` (`budget_exhausted`, `attempts_exhausted`, …) |
//! | `abacus_client_breaker_transitions_total` | counter | `endpoint`, `from`, `to` |
//! | `abacus_client_breaker_rejected_total` | counter | `grpc_method` |
//!
//! Every layer of the stack already reports what it does as a typed
//! [`Event`]; this recorder only reads them, so it adds no plumbing to any
//! layer and costs nothing when not installed. Times come from tokio's
//! clock (the simulation's, in a simulation). A66's message-size series
//! are not recorded: events carry no sizes.
//!
//! One recorder per [`Client`](super::Client): events name calls by the
//! client's own call number.
//!
//! ```
//! use abacus::{client::metrics::ClientMetrics, rpc::Method, trace::{Event, EventSink}};
//! let metrics = ClientMetrics::new("127.0.0.1:50051");
//! // The sink to give the client (`ClientConfig::events`).
//! let events = metrics.hook_into(EventSink::log_only());
//! events.emit(Event::CallStarted {
//!     call: 1, method: Method::Add, request_id: String::new(), deadline_ms: 1000,
//! });
//! events.emit(Event::AttemptStarted { call: 1, attempt: 1, timeout_ms: 1000 });
//! let text = metrics.encode();
//! let line = text.lines().find(|l| l.starts_with("grpc_client_attempt_started_total")).unwrap();
//! assert!(line.contains(r#"grpc_method="abacus.v1.Calculator/Add""#), "{line}");
//! assert!(line.contains(r#"grpc_target="127.0.0.1:50051""#), "{line}");
//! assert!(line.ends_with(" 1"), "{line}");
//! ```

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::time::Instant;
use tonic::Code;

use crate::{
    client::retry::Stop,
    rpc::metrics::{HistogramFn, latency_histogram, method_label, status_label},
    trace::{Event, EventSink},
};

type Labels<const N: usize> = [(&'static str, &'static str); N];

/// The client's metrics. Cheap to clone; clones share the registry.
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    attempts: Family<Labels<1>, Counter>,
    attempt_duration: Family<Labels<2>, Histogram, HistogramFn>,
    call_duration: Family<Labels<2>, Histogram, HistogramFn>,
    retries: Family<Labels<2>, Counter>,
    gave_up: Family<Labels<2>, Counter>,
    transitions: Family<Vec<(&'static str, String)>, Counter>,
    rejected: Family<Labels<1>, Counter>,
    /// Calls in progress, by the client's call number. A std mutex held
    /// for a map update per event, never across an await.
    calls: Mutex<HashMap<u64, CallState>>,
}

#[derive(Debug, Clone, Copy)]
struct CallState {
    method: &'static str,
    start: Instant,
    attempt_start: Option<Instant>,
}

/// A snake_case label for a give-up reason.
fn stop_label(stop: Stop) -> &'static str {
    match stop {
        Stop::NonRetryable => "non_retryable",
        Stop::MayHaveBeenApplied => "may_have_been_applied",
        Stop::AttemptsExhausted => "attempts_exhausted",
        Stop::BudgetExhausted => "budget_exhausted",
        Stop::DeadlineTooClose => "deadline_too_close",
        Stop::ServerPushback => "server_pushback",
        Stop::CircuitOpen => "circuit_open",
    }
}

impl ClientMetrics {
    /// A recorder for a client of `target` (the `grpc_target` label: the
    /// address it was given).
    pub fn new(target: impl Into<String>) -> Self {
        let target: Cow<'static, str> = Cow::Owned(target.into());
        let mut registry =
            Registry::with_labels(std::iter::once((Cow::Borrowed("grpc_target"), target)));
        let attempts = Family::default();
        registry.register(
            "grpc_client_attempt_started",
            "Attempts started (gRFC A66 grpc.client.attempt.started)",
            attempts.clone(),
        );
        let attempt_duration = Family::new_with_constructor(latency_histogram as HistogramFn);
        registry.register_with_unit(
            "grpc_client_attempt_duration",
            "Attempt duration (A66 grpc.client.attempt.duration)",
            Unit::Seconds,
            attempt_duration.clone(),
        );
        let call_duration = Family::new_with_constructor(latency_histogram as HistogramFn);
        registry.register_with_unit(
            "grpc_client_call_duration",
            "Call duration, retries and pauses included (A66 grpc.client.call.duration)",
            Unit::Seconds,
            call_duration.clone(),
        );
        let retries = Family::default();
        registry.register(
            "abacus_client_retries",
            "Retries scheduled, by whether the server's pushback set the pause",
            retries.clone(),
        );
        let gave_up = Family::default();
        registry.register(
            "abacus_client_gave_up",
            "Calls the retry policy stopped retrying, by reason (budget_exhausted: the retry budget ran out)",
            gave_up.clone(),
        );
        let transitions = Family::default();
        registry.register(
            "abacus_client_breaker_transitions",
            "Circuit breaker state changes",
            transitions.clone(),
        );
        let rejected = Family::default();
        registry.register(
            "abacus_client_breaker_rejected",
            "Calls refused by an open circuit breaker without being sent",
            rejected.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                attempts,
                attempt_duration,
                call_duration,
                retries,
                gave_up,
                transitions,
                rejected,
                calls: Mutex::default(),
            }),
        }
    }

    /// `sink`, also recording into these metrics.
    pub fn hook_into(&self, sink: EventSink) -> EventSink {
        let metrics = self.clone();
        sink.and_hook(move |event| metrics.record(event))
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<u64, CallState>> {
        // Each update is one insert, lookup or remove.
        self.inner.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn method_of(&self, call: u64) -> &'static str {
        self.calls().get(&call).map_or("other", |c| c.method)
    }

    /// Records one event; ignores the server's.
    pub fn record(&self, event: &Event) {
        let m = &self.inner;
        let now = Instant::now();
        match event {
            Event::CallStarted { call, method, .. } => {
                self.calls().insert(
                    *call,
                    CallState {
                        method: method_label(*method),
                        start: now,
                        attempt_start: None,
                    },
                );
            }
            Event::AttemptStarted { call, .. } => {
                let method = {
                    let mut calls = self.calls();
                    let state = calls.get_mut(call);
                    state.map_or("other", |s| {
                        s.attempt_start = Some(now);
                        s.method
                    })
                };
                m.attempts.get_or_create(&[("grpc_method", method)]).inc();
            }
            Event::AttemptFailed { call, error, .. } => {
                let ended = self.calls().get_mut(call).and_then(|s| {
                    let start = s.attempt_start.take()?;
                    Some((s.method, start))
                });
                if let Some((method, start)) = ended {
                    m.attempt_duration
                        .get_or_create(&[
                            ("grpc_method", method),
                            ("grpc_status", status_label(error.code)),
                        ])
                        .observe(now.saturating_duration_since(start).as_secs_f64());
                }
            }
            Event::Backoff { call, pushback, .. } => {
                let pushback = if *pushback { "true" } else { "false" };
                m.retries
                    .get_or_create(&[
                        ("grpc_method", self.method_of(*call)),
                        ("pushback", pushback),
                    ])
                    .inc();
            }
            Event::GaveUp { call, reason } => {
                m.gave_up
                    .get_or_create(&[
                        ("grpc_method", self.method_of(*call)),
                        ("reason", stop_label(*reason)),
                    ])
                    .inc();
            }
            Event::BreakerRejected { call, .. } => {
                m.rejected
                    .get_or_create(&[("grpc_method", self.method_of(*call))])
                    .inc();
            }
            Event::BreakerTransition { endpoint, from, to } => {
                m.transitions
                    .get_or_create(&vec![
                        ("endpoint", endpoint.clone()),
                        ("from", from.name().to_owned()),
                        ("to", to.name().to_owned()),
                    ])
                    .inc();
            }
            Event::CallFinished { call, result, .. } => {
                let Some(state) = self.calls().remove(call) else {
                    return;
                };
                let code = result.as_ref().map_or_else(|c| *c, |_| Code::Ok);
                let labels = [
                    ("grpc_method", state.method),
                    ("grpc_status", status_label(code)),
                ];
                if code == Code::Ok
                    && let Some(start) = state.attempt_start
                {
                    // The attempt that answered ends with the call.
                    m.attempt_duration
                        .get_or_create(&labels)
                        .observe(now.saturating_duration_since(start).as_secs_f64());
                }
                m.call_duration
                    .get_or_create(&labels)
                    .observe(now.saturating_duration_since(state.start).as_secs_f64());
            }
            _ => {}
        }
    }

    /// The metrics as Prometheus (OpenMetrics) text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.inner.registry);
        text
    }
}
