//! Typed events: the one vocabulary shared by logs, the simulation's history
//! checker and its snapshots.
//!
//! Code that does something worth seeing (the server applying a request, the
//! client starting an attempt or backing off, the breaker changing state)
//! emits an [`Event`] through an [`EventSink`]. The sink always logs it with
//! `tracing` (target `abacus::event`, filter with `RUST_LOG`), and may also
//! hand it to a hook: the simulation installs one per host that stamps
//! simulated time and the host name and appends to a history. So the trace a
//! snapshot shows and the log a user reads are the same events.
//!
//! Rendering is deterministic: no addresses, no wall-clock time, no hash
//! order. Floats print with Rust's shortest round-trip `Display`.

use std::{fmt, sync::Arc};

use tonic::Code;

use crate::{
    client::breaker::State as BreakerState,
    client::{CallError, Reply, hedge::HedgeTrigger, retry::Stop},
    core::Escaped,
    error::{CalcError, ServiceError, code_name},
    rpc::{HealthScope, Method, Serving},
    store::dedup::EvictReason,
};

/// Where a call's effect stands when it ended. See the README's "Delivery
/// semantics" section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The server applied the request (a response arrived).
    Applied,
    /// The request provably did not take effect: it never left the client, or
    /// the server said it refused it before applying.
    NotApplied,
    /// The request may or may not have been applied: a timeout after send, a
    /// connection lost mid-call, an error without the server's not-applied
    /// marker. Only deduplication makes retrying such a call safe.
    Unknown,
}

impl Outcome {
    /// Combines the outcomes of two attempts of the same logical call: once
    /// any attempt may have been applied, the call may have been.
    pub fn merge(self, other: Outcome) -> Outcome {
        self.max(other)
    }

    /// Short lower-case label used in traces and CLI output.
    pub fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::NotApplied => "not-applied",
            Self::Unknown => "outcome-unknown",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A fault the server injected into one request's handling (`abacus serve
/// --fail-rate`, `--delay-ms`, `--drop-after-apply-rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// The handling was held back this long before applying.
    Delay {
        /// The delay, in ms.
        ms: u64,
    },
    /// Refused with UNAVAILABLE before applying.
    Fail,
    /// Applied, then the response was thrown away.
    DropAfterApply,
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Delay { ms } => write!(f, "delay {ms}ms"),
            Self::Fail => f.write_str("fail"),
            Self::DropAfterApply => f.write_str("drop-after-apply"),
        }
    }
}

/// A code path worth knowing a run took, where no other event shows it
/// (FoundationDB's `CODE_PROBE`): emitted where the path is taken, so the
/// simulation can count which paths a sweep reached and require the ones a
/// scenario exists for. Paths that other events already show (a dedup hit,
/// a breaker opening, a shed call) are not repeated here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Probe {
    /// The store failed while committing and the request was answered with
    /// an unknown fate: the commit may or may not have been made.
    StoreFateUnknown,
    /// A duplicate waited for the first execution of its request ID until
    /// its own time ran out, and was answered "still in flight".
    StillInFlight,
    /// A duplicate that waited for an execution in flight took the claim
    /// over: that execution ended without applying.
    ClaimTakenOver,
    /// A repeat's own lookup found its dedup record past the TTL: the
    /// record expired under the retry, which executes again.
    DedupExpiredUnderRetry,
}

impl Probe {
    /// Short kebab-case name, as traces print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::StoreFateUnknown => "store-fate-unknown",
            Self::StillInFlight => "still-in-flight",
            Self::ClaimTakenOver => "claim-taken-over",
            Self::DedupExpiredUnderRetry => "dedup-expired-under-retry",
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that happened, worth a line in a log and a trace.
///
/// Every field is typed (codes, states, methods, results, reasons as
/// enums); text appears only in `Display`. Whoever checks a trace (the
/// simulation's checker, a test) matches on values, so rewording a line
/// cannot change what is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    // ---- server ----
    /// The server is accepting connections.
    ServerStarted,
    /// A fault was injected into the handling of `method`.
    FaultInjected {
        /// The RPC.
        method: Method,
        /// Which fault.
        fault: InjectedFault,
    },
    /// A pure RPC was evaluated.
    Evaluated {
        /// The RPC.
        method: Method,
        /// Its result, or why the calculator refused it.
        result: Result<f64, CalcError>,
    },
    /// A register update was committed (together with its dedup record).
    Applied {
        /// Request ID, empty if none was sent.
        request_id: String,
        /// Register name.
        register: String,
        /// The delta added.
        delta: f64,
        /// The register's value after.
        value: f64,
    },
    /// A mutating request was refused without being applied.
    Rejected {
        /// The RPC.
        method: Method,
        /// Request ID, empty if none.
        request_id: String,
        /// Why.
        error: ServiceError,
    },
    /// A repeat was answered from the dedup store.
    DedupHit {
        /// The repeated request ID.
        request_id: String,
        /// The stored value replayed.
        value: f64,
    },
    /// A repeat arrived while the first execution was in flight and waited
    /// for its outcome instead of executing again.
    DedupJoined {
        /// The request ID.
        request_id: String,
    },
    /// A request ID was reused with a different payload.
    DedupMismatch {
        /// The request ID.
        request_id: String,
    },
    /// A dedup record was dropped to keep the store bounded.
    DedupEvicted {
        /// The request ID.
        request_id: String,
        /// Which bound dropped it.
        reason: EvictReason,
    },
    /// The caller's deadline passed before the server applied the request.
    ServerDeadlineExpired {
        /// The RPC.
        method: Method,
    },
    /// The server shed a request because of load.
    Shed {
        /// The RPC, `None` for a path that names none of ours.
        method: Option<Method>,
    },

    // ---- client ----
    /// A logical call began.
    CallStarted {
        /// Client-local call number.
        call: u64,
        /// The RPC.
        method: Method,
        /// Request ID if one is attached.
        request_id: String,
        /// The overall deadline, in ms from now.
        deadline_ms: u64,
    },
    /// One attempt of a call was sent (or was about to be).
    AttemptStarted {
        /// Client-local call number.
        call: u64,
        /// 1-based attempt number.
        attempt: u32,
        /// The endpoint it went to (its name: the address it was resolved
        /// or configured as).
        endpoint: String,
        /// This attempt's timeout in ms.
        timeout_ms: u64,
    },
    /// One attempt failed.
    AttemptFailed {
        /// Client-local call number.
        call: u64,
        /// 1-based attempt number.
        attempt: u32,
        /// How: its code, cause and what it says about the request's
        /// effect.
        error: CallError,
    },
    /// The retry policy decided to retry after a pause.
    Backoff {
        /// Client-local call number.
        call: u64,
        /// The attempt that will follow.
        next_attempt: u32,
        /// Pause in ms.
        delay_ms: u64,
        /// True when the pause came from server pushback.
        pushback: bool,
    },
    /// The retry policy decided not to retry.
    GaveUp {
        /// Client-local call number.
        call: u64,
        /// Why.
        reason: Stop,
    },
    /// A logical call ended.
    CallFinished {
        /// Client-local call number.
        call: u64,
        /// Attempts sent, for failed calls (0 for successes and for calls
        /// their caller dropped, CANCELLED: the `attempt` lines before it
        /// tell).
        attempts: u32,
        /// The reply, or the code the call failed with.
        result: Result<Reply, Code>,
        /// Effect of the call.
        outcome: Outcome,
    },
    /// A circuit breaker changed state.
    BreakerTransition {
        /// Endpoint the breaker guards.
        endpoint: String,
        /// State before.
        from: BreakerState,
        /// State after.
        to: BreakerState,
    },
    /// A call was refused by an open breaker without touching the network.
    BreakerRejected {
        /// Client-local call number.
        call: u64,
        /// Endpoint.
        endpoint: String,
    },
    /// The hedging policy sent another attempt of a call while the earlier
    /// ones were still in flight (its `attempt` line follows, naming the
    /// endpoint).
    HedgeSent {
        /// Client-local call number.
        call: u64,
        /// The hedge's attempt number (≥ 2).
        attempt: u32,
        /// What released it.
        trigger: HedgeTrigger,
    },
    /// A hedged call (more than one attempt sent) got its reply from this
    /// attempt; the others still in flight are cancelled.
    HedgeWon {
        /// Client-local call number.
        call: u64,
        /// The winning attempt (1 when the first attempt beat its hedges).
        attempt: u32,
    },
    /// An attempt of a hedged call still in flight was cancelled because
    /// another attempt settled the call.
    HedgeCancelled {
        /// Client-local call number.
        call: u64,
        /// The cancelled attempt.
        attempt: u32,
    },
    /// The client's endpoint set gained an endpoint (configured, or found
    /// by re-resolving a name).
    EndpointAdded {
        /// Its name.
        endpoint: String,
    },
    /// An endpoint left the set (no longer resolved); nothing more is sent
    /// to it.
    EndpointRemoved {
        /// Its name.
        endpoint: String,
    },
    /// A health watch reported a change for one scope of an endpoint. A
    /// `not-serving` endpoint gets none of the RPCs that need that scope
    /// (it is ejected for them) until it reports `serving` again.
    EndpointHealth {
        /// Its name.
        endpoint: String,
        /// Which part of the replica the status is about.
        scope: HealthScope,
        /// The new status.
        status: Serving,
    },

    // ---- either side ----
    /// A code path without an event of its own was taken.
    Probe(Probe),
}

impl Event {
    /// Short kind name, the first word of the rendered line.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServerStarted => "server-started",
            Self::FaultInjected { .. } => "fault",
            Self::Evaluated { .. } => "evaluated",
            Self::Applied { .. } => "applied",
            Self::Rejected { .. } => "rejected",
            Self::DedupHit { .. } => "dedup-hit",
            Self::DedupJoined { .. } => "dedup-joined",
            Self::DedupMismatch { .. } => "dedup-mismatch",
            Self::DedupEvicted { .. } => "dedup-evicted",
            Self::ServerDeadlineExpired { .. } => "deadline-expired",
            Self::Shed { .. } => "shed",
            Self::CallStarted { .. } => "call",
            Self::AttemptStarted { .. } => "attempt",
            Self::AttemptFailed { .. } => "attempt-failed",
            Self::Backoff { .. } => "backoff",
            Self::GaveUp { .. } => "gave-up",
            Self::CallFinished { .. } => "call-finished",
            Self::BreakerTransition { .. } => "breaker",
            Self::BreakerRejected { .. } => "breaker-rejected",
            Self::HedgeSent { .. } => "hedge",
            Self::HedgeWon { .. } => "hedge-won",
            Self::HedgeCancelled { .. } => "hedge-cancelled",
            Self::EndpointAdded { .. } => "endpoint-added",
            Self::EndpointRemoved { .. } => "endpoint-removed",
            Self::EndpointHealth { .. } => "endpoint-health",
            Self::Probe(_) => "probe",
        }
    }
}

/// Renders a request ID for a trace line; `-` when absent.
fn id(request_id: &str) -> &str {
    if request_id.is_empty() {
        "-"
    } else {
        request_id
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind())?;
        match self {
            Self::ServerStarted => Ok(()),
            Self::FaultInjected { method, fault } => write!(f, " {method} {fault}"),
            Self::Evaluated { method, result } => match result {
                Ok(v) => write!(f, " {method} -> {v}"),
                Err(e) => write!(f, " {method} -> {e}"),
            },
            Self::Applied {
                request_id,
                register,
                delta,
                value,
            } => write!(
                f,
                " id={} {} += {delta} -> {value}",
                id(request_id),
                Escaped(register)
            ),
            Self::Rejected {
                method,
                request_id,
                error,
            } => write!(f, " {method} id={}: {error}", id(request_id)),
            Self::DedupHit { request_id, value } => {
                write!(f, " id={} replayed {value}", id(request_id))
            }
            Self::DedupJoined { request_id } | Self::DedupMismatch { request_id } => {
                write!(f, " id={}", id(request_id))
            }
            Self::DedupEvicted { request_id, reason } => {
                write!(f, " id={} ({})", id(request_id), reason.as_str())
            }
            Self::ServerDeadlineExpired { method } => write!(f, " {method}"),
            Self::Shed { method: Some(m) } => write!(f, " {m}"),
            Self::Shed { method: None } => f.write_str(" unknown"),
            Self::CallStarted {
                call,
                method,
                request_id,
                deadline_ms,
            } => write!(
                f,
                " #{call} {method} id={} deadline={deadline_ms}ms",
                id(request_id)
            ),
            Self::AttemptStarted {
                call,
                attempt,
                endpoint,
                timeout_ms,
            } => write!(
                f,
                " #{call}.{attempt} -> {} timeout={timeout_ms}ms",
                id(endpoint)
            ),
            Self::AttemptFailed {
                call,
                attempt,
                error,
            } => write!(
                f,
                " #{call}.{attempt} {} {}: {}",
                code_name(error.code),
                error.outcome,
                error.reason()
            ),
            Self::Backoff {
                call,
                next_attempt,
                delay_ms,
                pushback,
            } => write!(
                f,
                " #{call} {delay_ms}ms before attempt {next_attempt}{}",
                if *pushback { " (server pushback)" } else { "" }
            ),
            Self::GaveUp { call, reason } => write!(f, " #{call}: {}", reason.reason()),
            Self::CallFinished {
                call,
                attempts,
                result,
                outcome,
            } => {
                write!(f, " #{call} ")?;
                match result {
                    Ok(reply) => write!(f, "ok {reply}")?,
                    Err(code) => write!(f, "err {}", code_name(*code))?,
                }
                if *attempts == 0 {
                    write!(f, " [{outcome}]")
                } else {
                    write!(f, " [{outcome}, {attempts} attempt(s) sent]")
                }
            }
            Self::BreakerTransition { endpoint, from, to } => {
                write!(f, " {endpoint} {from} -> {to}")
            }
            Self::BreakerRejected { call, endpoint } => {
                write!(f, " #{call} {endpoint} circuit open, not sent")
            }
            Self::HedgeSent {
                call,
                attempt,
                trigger,
            } => write!(f, " #{call}.{attempt} ({trigger})"),
            Self::HedgeWon { call, attempt } | Self::HedgeCancelled { call, attempt } => {
                write!(f, " #{call}.{attempt}")
            }
            Self::EndpointAdded { endpoint } | Self::EndpointRemoved { endpoint } => {
                write!(f, " {endpoint}")
            }
            Self::EndpointHealth {
                endpoint,
                scope,
                status,
            } => write!(f, " {endpoint} {scope} {status}"),
            Self::Probe(p) => write!(f, " {p}"),
        }
    }
}

type Hook = Arc<dyn Fn(&Event) + Send + Sync>;

/// Where events go: always to `tracing`, and to an optional hook.
#[derive(Clone, Default)]
pub struct EventSink {
    hook: Option<Hook>,
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSink")
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl EventSink {
    /// A sink that only logs.
    pub fn log_only() -> Self {
        Self::default()
    }

    /// A sink that logs and also calls `hook` for every event.
    pub fn with_hook(hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        Self {
            hook: Some(Arc::new(hook)),
        }
    }

    /// This sink, also calling `hook` for every event (after the hook it
    /// had, if any): how a metrics recorder joins a sink that already
    /// feeds a history or a verbose printer.
    pub fn and_hook(self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        match self.hook {
            None => Self::with_hook(hook),
            Some(first) => Self::with_hook(move |event| {
                first(event);
                hook(event);
            }),
        }
    }

    /// Records one event.
    pub fn emit(&self, event: Event) {
        // Per-request events are DEBUG: at INFO a busy server wrote a line
        // per request (and per shed call), so the log grew with the load.
        // Rare state changes stay INFO; load summaries are logged, rate
        // limited, where the counts live (shedding, the listener).
        if matches!(
            event,
            Event::ServerStarted
                | Event::BreakerTransition { .. }
                | Event::EndpointHealth { .. }
                | Event::EndpointAdded { .. }
                | Event::EndpointRemoved { .. }
        ) {
            tracing::info!(target: "abacus::event", kind = event.kind(), "{event}");
        } else {
            tracing::debug!(target: "abacus::event", kind = event.kind(), "{event}");
        }
        if let Some(hook) = &self.hook {
            hook(&event);
        }
    }

    /// True when an emitted per-request event would go anywhere: a hook is
    /// installed or the `abacus::event` log target is enabled at DEBUG.
    pub fn enabled(&self) -> bool {
        self.hook.is_some() || tracing::enabled!(target: "abacus::event", tracing::Level::DEBUG)
    }

    /// Records the event `make` builds, building it only if someone
    /// listens: the client's per-call events format strings, which would
    /// otherwise be paid for on every call of a quiet client.
    pub fn emit_with(&self, make: impl FnOnce() -> Event) {
        if self.enabled() {
            self.emit(make());
        }
    }
}

/// Formats a number for humans: plain decimals in the everyday range,
/// scientific notation for the extremes (so `1e308` does not print 309
/// digits).
///
/// ```
/// use abacus::trace::num;
/// assert_eq!(num(6.5).to_string(), "6.5");
/// assert_eq!(num(1e308).to_string(), "1e308");
/// ```
pub fn num(v: f64) -> impl fmt::Display {
    struct Num(f64);
    impl fmt::Display for Num {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let a = self.0.abs();
            if a != 0.0 && a.is_finite() && !(1e-6..1e15).contains(&a) {
                write!(f, "{:e}", self.0)
            } else {
                write!(f, "{}", self.0)
            }
        }
    }
    Num(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn outcome_merge_is_pessimistic() {
        use Outcome::*;
        assert_eq!(NotApplied.merge(Unknown), Unknown);
        assert_eq!(Unknown.merge(NotApplied), Unknown);
        assert_eq!(NotApplied.merge(NotApplied), NotApplied);
    }

    #[test]
    fn hook_sees_every_event_and_lines_render() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let sink = EventSink::with_hook(move |e| s2.lock().unwrap().push(e.to_string()));
        sink.emit(Event::Applied {
            request_id: String::new(),
            register: "r".into(),
            delta: 1.5,
            value: 3.0,
        });
        sink.emit(Event::Backoff {
            call: 2,
            next_attempt: 3,
            delay_ms: 40,
            pushback: true,
        });
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                "applied id=- r += 1.5 -> 3",
                "backoff #2 40ms before attempt 3 (server pushback)"
            ]
        );
    }
}
