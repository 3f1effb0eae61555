//! [`ClientMetrics`]: a recorder of the client's numbers that the caller
//! installs as an event hook ([`ClientMetrics::hook_into`]) — gRFC A66's
//! client series under their Prometheus names, plus what A66 leaves out:
//! retries, hedges, give-ups (the retry budget's exhaustion among them)
//! and circuit-breaker transitions.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `grpc_client_attempt_started_total` | counter | `grpc_method`, `grpc_target` |
//! | `grpc_client_attempt_duration_seconds` | histogram | `grpc_method`, `grpc_status`, `grpc_target` |
//! | `grpc_client_call_duration_seconds` | histogram | same |
//! | `abacus_client_retries_total` | counter | `grpc_method`, `pushback` (`true` when the server set the pause) |
//! | `abacus_client_hedges_total` | counter | `grpc_method`, `trigger` (`delay`, `failure`, `pushback`) |
//! | `abacus_client_hedged_calls_won_total` | counter | `grpc_method`, `won_by` (`first_attempt`, `hedge`) |
//! | `abacus_client_gave_up_total` | counter | `grpc_method`, `reason` (`budget_exhausted`, `attempts_exhausted`, …) |
//! | `abacus_client_breaker_transitions_total` | counter | `endpoint`, `from`, `to` |
//! | `abacus_client_breaker_rejected_total` | counter | `grpc_method` |
//!
//! Every layer of the stack already reports what it does as a typed
//! [`Event`]; this recorder only reads them, so it adds no plumbing to any
//! layer and costs nothing when not installed. Times come from tokio's
//! clock (the simulation's, in a simulation). A66's message-size series
//! are not recorded: events carry no sizes. Each attempt of a hedged call
//! is timed from its own start; the ones its winner cancels are recorded
//! as `CANCELLED`, as A66 asks.
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
//! events.emit(Event::AttemptStarted {
//!     call: 1, attempt: 1, endpoint: "127.0.0.1:50051".into(), timeout_ms: 1000,
//! });
//! let text = metrics.encode();
//! let line = text.lines().find(|l| l.starts_with("grpc_client_attempt_started_total")).unwrap();
//! assert!(line.contains(r#"grpc_method="abacus.v1.Calculator/Add""#), "{line}");
//! assert!(line.contains(r#"grpc_target="127.0.0.1:50051""#), "{line}");
//! assert!(line.ends_with(" 1"), "{line}");
//! ```

use std::{
    borrow::Cow,
    collections::BTreeMap,
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
    client::{hedge::HedgeTrigger, retry::Stop},
    rpc::metrics::{HistogramFn, latency_histogram, method_label, status_label},
    trace::{Event, EventSink},
};

type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Most calls the recorder follows at once. Every call ends its record,
/// a dropped one too (the observe layer reports it CANCELLED when its
/// future goes), so this is a backstop, not the mechanism: it bounds the
/// map against futures that are neither finished nor dropped (held
/// forever, leaked) and events emitted by hand. Past this many, the oldest
/// (the lowest number: a client numbers its calls in order) is forgotten;
/// a forgotten call that does end records no call duration.
const CALLS_TRACKED_MAX: usize = 65_536;

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
    hedges: Family<Labels<2>, Counter>,
    hedge_wins: Family<Labels<2>, Counter>,
    gave_up: Family<Labels<2>, Counter>,
    transitions: Family<Vec<(&'static str, String)>, Counter>,
    rejected: Family<Labels<1>, Counter>,
    /// Calls in progress, by the client's call number (ordered, so the
    /// oldest is the first). A std mutex held for a map update per event,
    /// never across an await.
    calls: Mutex<BTreeMap<u64, CallState>>,
}

#[derive(Debug, Clone)]
struct CallState {
    method: &'static str,
    start: Instant,
    /// Attempts in flight and when each started: one, or several when the
    /// call is hedged.
    attempts: Vec<(u32, Instant)>,
    /// The attempt that won a hedged call.
    winner: Option<u32>,
}

impl CallState {
    /// Attempt `attempt` ended: when it started.
    fn end_attempt(&mut self, attempt: u32) -> Option<Instant> {
        let i = self.attempts.iter().position(|&(a, _)| a == attempt)?;
        Some(self.attempts.swap_remove(i).1)
    }
}

/// A snake_case label for what released a hedge.
fn trigger_label(trigger: HedgeTrigger) -> &'static str {
    match trigger {
        HedgeTrigger::Delay => "delay",
        HedgeTrigger::Failure(_) => "failure",
        HedgeTrigger::Pushback => "pushback",
    }
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
        let hedges = Family::default();
        registry.register(
            "abacus_client_hedges",
            "Hedges sent, by what released them (the hedging delay, a non-fatal failure, the server's pushback)",
            hedges.clone(),
        );
        let hedge_wins = Family::default();
        registry.register(
            "abacus_client_hedged_calls_won",
            "Hedged calls that got a reply, by whether the first attempt or a hedge gave it",
            hedge_wins.clone(),
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
                hedges,
                hedge_wins,
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

    fn calls(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CallState>> {
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
                let mut calls = self.calls();
                if calls.len() >= CALLS_TRACKED_MAX {
                    calls.pop_first();
                }
                calls.insert(
                    *call,
                    CallState {
                        method: method_label(*method),
                        start: now,
                        attempts: Vec::new(),
                        winner: None,
                    },
                );
            }
            Event::AttemptStarted { call, attempt, .. } => {
                let method = {
                    let mut calls = self.calls();
                    let state = calls.get_mut(call);
                    state.map_or("other", |s| {
                        s.attempts.push((*attempt, now));
                        s.method
                    })
                };
                m.attempts.get_or_create(&[("grpc_method", method)]).inc();
            }
            Event::AttemptFailed {
                call,
                attempt,
                error,
            } => self.attempt_ended(*call, *attempt, error.code, now),
            Event::HedgeCancelled { call, attempt } => {
                self.attempt_ended(*call, *attempt, Code::Cancelled, now);
            }
            Event::HedgeSent { call, trigger, .. } => {
                m.hedges
                    .get_or_create(&[
                        ("grpc_method", self.method_of(*call)),
                        ("trigger", trigger_label(*trigger)),
                    ])
                    .inc();
            }
            Event::HedgeWon { call, attempt } => {
                let method = {
                    let mut calls = self.calls();
                    calls.get_mut(call).map_or("other", |s| {
                        s.winner = Some(*attempt);
                        s.method
                    })
                };
                let won_by = if *attempt == 1 {
                    "first_attempt"
                } else {
                    "hedge"
                };
                m.hedge_wins
                    .get_or_create(&[("grpc_method", method), ("won_by", won_by)])
                    .inc();
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
                let Some(mut state) = self.calls().remove(call) else {
                    return;
                };
                let code = result.as_ref().map_or_else(|c| *c, |_| Code::Ok);
                let labels = [
                    ("grpc_method", state.method),
                    ("grpc_status", status_label(code)),
                ];
                // The attempt that answered ends with the call: a hedged
                // call's winner, else the one left.
                let answered = match state.winner {
                    Some(w) => state.end_attempt(w),
                    None => state.attempts.pop().map(|(_, start)| start),
                };
                if code == Code::Ok
                    && let Some(start) = answered
                {
                    m.attempt_duration
                        .get_or_create(&labels)
                        .observe(now.saturating_duration_since(start).as_secs_f64());
                }
                // A call its caller dropped takes its attempts in flight
                // with it: each ends CANCELLED, timed from its own start.
                if code == Code::Cancelled {
                    for start in answered
                        .into_iter()
                        .chain(state.attempts.drain(..).map(|(_, start)| start))
                    {
                        m.attempt_duration
                            .get_or_create(&labels)
                            .observe(now.saturating_duration_since(start).as_secs_f64());
                    }
                }
                m.call_duration
                    .get_or_create(&labels)
                    .observe(now.saturating_duration_since(state.start).as_secs_f64());
            }
            _ => {}
        }
    }

    /// Attempt `attempt` of `call` ended with `code`: its duration.
    fn attempt_ended(&self, call: u64, attempt: u32, code: Code, now: Instant) {
        let ended = self
            .calls()
            .get_mut(&call)
            .and_then(|s| Some((s.method, s.end_attempt(attempt)?)));
        if let Some((method, start)) = ended {
            self.inner
                .attempt_duration
                .get_or_create(&[("grpc_method", method), ("grpc_status", status_label(code))])
                .observe(now.saturating_duration_since(start).as_secs_f64());
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{client::Reply, rpc::Method, trace::Outcome};

    /// The value of the series line that starts with `name{` and holds
    /// every label in `labels`.
    fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedged_call_counts_its_hedge_its_winner_and_times_each_attempt_from_its_start() {
        let metrics = ClientMetrics::new("a,b");
        let events = metrics.hook_into(EventSink::log_only());
        let started = |attempt| Event::AttemptStarted {
            call: 1,
            attempt,
            endpoint: "a".into(),
            timeout_ms: 1000,
        };
        events.emit(Event::CallStarted {
            call: 1,
            method: Method::Add,
            request_id: String::new(),
            deadline_ms: 1000,
        });
        events.emit(started(1));
        tokio::time::advance(Duration::from_millis(30)).await;
        events.emit(Event::HedgeSent {
            call: 1,
            attempt: 2,
            trigger: HedgeTrigger::Delay,
        });
        events.emit(started(2));
        tokio::time::advance(Duration::from_millis(5)).await;
        events.emit(Event::HedgeWon {
            call: 1,
            attempt: 2,
        });
        events.emit(Event::HedgeCancelled {
            call: 1,
            attempt: 1,
        });
        events.emit(Event::CallFinished {
            call: 1,
            attempts: 0,
            result: Ok(Reply::Calc(3.0)),
            outcome: Outcome::Applied,
        });
        let text = metrics.encode();
        let add = r#"grpc_method="abacus.v1.Calculator/Add""#;
        let v = |name: &str, labels: &[&str]| value(&text, name, labels);
        assert_eq!(
            v("abacus_client_hedges_total", &[add, r#"trigger="delay""#]),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            v(
                "abacus_client_hedged_calls_won_total",
                &[add, r#"won_by="hedge""#]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            v("grpc_client_attempt_started_total", &[add]),
            Some(2.0),
            "{text}"
        );
        // The hedge answered 5 ms after it started; the first attempt was
        // cancelled 35 ms after its own start.
        let ok = r#"grpc_status="OK""#;
        let cancelled = r#"grpc_status="CANCELLED""#;
        let sum = "grpc_client_attempt_duration_seconds_sum";
        assert_eq!(v(sum, &[add, ok]), Some(0.005), "{text}");
        assert_eq!(v(sum, &[add, cancelled]), Some(0.035), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_dropped_mid_flight_ends_its_record_as_cancelled() {
        use tower::{Layer, ServiceBuilder, util::BoxCloneSyncService};

        use crate::client::{AttemptLayer, CallError, Client, ObserveLayer, call::Call};

        let metrics = ClientMetrics::new("a");
        let events = metrics.hook_into(EventSink::log_only());
        let hangs = tower::service_fn(|_: Call| std::future::pending::<Result<Reply, CallError>>());
        let client = Client::from_stack(BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(ObserveLayer::new(events.clone()))
                .service(AttemptLayer::new(Duration::from_secs(10), events).layer(hangs)),
        ));
        // The caller's own timeout drops the call while its attempt is in
        // flight.
        let call = tokio::time::timeout(Duration::from_millis(40), client.add(1.0, 2.0));
        assert!(call.await.is_err(), "the call cannot end by itself");
        assert!(
            metrics.calls().is_empty(),
            "the dropped call is still followed"
        );
        let text = metrics.encode();
        let v = |name: &str| {
            value(
                &text,
                name,
                &[
                    r#"grpc_method="abacus.v1.Calculator/Add""#,
                    r#"grpc_status="CANCELLED""#,
                ],
            )
        };
        assert_eq!(
            v("grpc_client_call_duration_seconds_count"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            v("grpc_client_call_duration_seconds_sum"),
            Some(0.04),
            "{text}"
        );
        assert_eq!(
            v("grpc_client_attempt_duration_seconds_sum"),
            Some(0.04),
            "the attempt in flight ends with its call: {text}"
        );
    }

    #[test]
    fn calls_that_never_end_are_forgotten_oldest_first() {
        let metrics = ClientMetrics::new("a");
        let start = |call| Event::CallStarted {
            call,
            method: Method::Add,
            request_id: String::new(),
            deadline_ms: 1000,
        };
        // Every one of these callers dropped its call before it ended.
        for call in 1..=CALLS_TRACKED_MAX as u64 + 1 {
            metrics.record(&start(call));
        }
        let calls = metrics.calls();
        assert_eq!(calls.len(), CALLS_TRACKED_MAX);
        assert_eq!(calls.keys().next(), Some(&2), "call 1 was forgotten");
        drop(calls);
        let finished = |call| Event::CallFinished {
            call,
            attempts: 1,
            result: Ok(Reply::Calc(3.0)),
            outcome: Outcome::Applied,
        };
        metrics.record(&finished(1));
        metrics.record(&finished(2));
        let text = metrics.encode();
        assert_eq!(
            value(&text, "grpc_client_call_duration_seconds_count", &[]),
            Some(1.0),
            "only the call still followed is timed: {text}"
        );
    }
}
