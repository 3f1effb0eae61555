//! The client's error: what went wrong, and — the point of this project —
//! what it means for the request's effect ([`Outcome`]).

use std::fmt;

use tonic::Code;

use crate::trace::Outcome;

/// Why a call failed, beyond its status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The server (or tonic on its behalf) answered with a status.
    Status,
    /// The connection could not be established; nothing was sent.
    Connect,
    /// The connection broke or the transport failed mid-call.
    Transport,
    /// The per-attempt timeout fired.
    AttemptTimeout,
    /// The overall deadline passed.
    DeadlineExceeded,
    /// The retry budget (token bucket) had no tokens left for a retry.
    BudgetExhausted,
    /// The circuit breaker is open; nothing was sent.
    CircuitOpen {
        /// Milliseconds until the breaker lets a probe through.
        probe_in_ms: u64,
    },
    /// The server asked not to retry (negative pushback).
    PushbackStop,
}

/// A failed call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    /// gRPC code.
    pub code: Code,
    /// Human-readable message.
    pub message: String,
    /// Why, beyond the code.
    pub cause: Cause,
    /// What the failure says about the request's effect.
    pub outcome: Outcome,
    /// Attempts made (0 when nothing was sent).
    pub attempts: u32,
    /// Server pushback, if the server sent `grpc-retry-pushback-ms`.
    pub pushback_ms: Option<i64>,
}

impl CallError {
    /// A failure of one attempt.
    pub fn new(code: Code, message: impl Into<String>, cause: Cause, outcome: Outcome) -> Self {
        Self {
            code,
            message: message.into(),
            cause,
            outcome,
            attempts: 1,
            pushback_ms: None,
        }
    }

    /// Short reason for traces.
    pub fn reason(&self) -> String {
        match &self.cause {
            Cause::Status => self.message.clone(),
            Cause::Connect => format!("connect failed: {}", self.message),
            Cause::Transport => format!("transport: {}", self.message),
            Cause::AttemptTimeout => "attempt timed out".into(),
            Cause::DeadlineExceeded => "overall deadline exceeded".into(),
            Cause::BudgetExhausted => {
                format!("retry budget exhausted; last error: {}", self.message)
            }
            Cause::CircuitOpen { probe_in_ms } => {
                format!("circuit open; next probe in {probe_in_ms} ms")
            }
            Cause::PushbackStop => {
                format!("server asked not to retry; last error: {}", self.message)
            }
        }
    }

    /// This error as a `tonic::Status`, for callers that want one.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code, self.to_string())
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.outcome {
            Outcome::Applied => "the request WAS applied",
            Outcome::NotApplied => "the request was NOT applied",
            Outcome::Unknown => "OUTCOME UNKNOWN: the request may or may not have been applied",
        };
        write!(
            f,
            "{:?}: {} ({outcome}; {} attempt(s))",
            self.code,
            self.reason(),
            self.attempts
        )
    }
}

impl std::error::Error for CallError {}
