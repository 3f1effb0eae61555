//! The client's error: what went wrong, and — the point of this project —
//! what it means for the request's effect ([`Outcome`]).

use std::fmt;

use tonic::{Code, metadata::MetadataValue};

use crate::{
    error::{NOT_APPLIED_KEY, PUSHBACK_KEY, code_name},
    rpc::Method,
    trace::Outcome,
};

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
    /// No endpoint could take the call: the set is empty (nothing
    /// resolved), or every endpoint reported NOT_SERVING for what the RPC
    /// needs. Nothing was sent.
    NoEndpoint,
    /// The stack answered a request with the reply of another RPC: a bug
    /// in a stack composed with [`crate::client::Client::from_stack`], never
    /// the server's doing (the transport decodes each RPC's own response).
    WrongReply {
        /// The RPC that was called.
        method: Method,
    },
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
            Cause::NoEndpoint => self.message.clone(),
            Cause::WrongReply { method } => {
                format!("{method} got another RPC's reply: {}", self.message)
            }
        }
    }

    /// This error as a `tonic::Status`, for callers that want one (e.g. a
    /// server relaying a call to another). It keeps the markers a gRPC
    /// client reads: `abacus-not-applied` when the request certainly was
    /// not applied, and the server's pushback, so whoever receives it can
    /// still tell a safe retry from a dangerous one.
    ///
    /// ```
    /// use abacus::{client::{CallError, Cause}, error::NOT_APPLIED_KEY, trace::Outcome};
    /// use tonic::Code;
    /// let e = CallError::new(Code::Unavailable, "down", Cause::Status, Outcome::NotApplied);
    /// assert_eq!(e.to_status().metadata().get(NOT_APPLIED_KEY).unwrap(), "true");
    /// ```
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code, self.to_string());
        let md = status.metadata_mut();
        if self.outcome == Outcome::NotApplied {
            md.insert(NOT_APPLIED_KEY, MetadataValue::from_static("true"));
        }
        if let Some(ms) = self.pushback_ms {
            md.insert(PUSHBACK_KEY, MetadataValue::from(ms));
        }
        status
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
            "{}: {} ({outcome}; {} attempt(s))",
            code_name(self.code),
            self.reason(),
            self.attempts
        )
    }
}

impl std::error::Error for CallError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::transport::classify;

    /// A `CallError` turned into a status and read back by the transport's
    /// classifier says the same about the request's effect and pushback.
    #[test]
    fn to_status_keeps_the_markers() {
        let table = [
            (Code::Unavailable, Outcome::NotApplied, Some(250)),
            (Code::ResourceExhausted, Outcome::NotApplied, Some(-1)),
            (Code::Unavailable, Outcome::Unknown, None),
            (Code::InvalidArgument, Outcome::NotApplied, None),
        ];
        for (code, outcome, pushback_ms) in table {
            let mut e = CallError::new(code, "x", Cause::Status, outcome);
            e.pushback_ms = pushback_ms;
            let back = classify(&e.to_status());
            assert_eq!(
                (back.code, back.outcome, back.pushback_ms),
                (code, outcome, pushback_ms),
                "{e:?}"
            );
        }
    }

    #[test]
    fn codes_are_spelled_canonically() {
        let e = CallError::new(
            Code::DeadlineExceeded,
            "slow",
            Cause::Status,
            Outcome::Unknown,
        );
        assert!(
            e.to_string().starts_with("DEADLINE_EXCEEDED: slow ("),
            "{e}"
        );
    }
}
