//! Hedging, as gRPC's A6 `hedgingPolicy` defines it: send the first
//! attempt; if no reply came within `hedgingDelay`, send another to a
//! different replica (the balancer avoids the ones in flight), up to
//! `maxAttempts` in all; the first reply wins and the others are
//! cancelled.
//!
//! - A failure with a **non-fatal** code (`nonFatalStatusCodes`, or this
//!   attempt's own timeout) sends the next hedge at once, without waiting
//!   for the delay; any other failure is **fatal**: the call fails with it
//!   and the attempts still in flight are cancelled.
//! - **Pushback** from the server: a delay postpones the next hedge to it;
//!   a negative value stops further hedges (those in flight go on).
//! - Hedges draw on the **retry throttle** like retries: a failure with a
//!   non-fatal code charges it, a hedge goes out only if it allows, and a
//!   success refills it.
//! - **Which calls.** Only calls that may be repeated: pure RPCs always,
//!   `Accumulate` only with a request ID. Two attempts of an `Accumulate`
//!   may both arrive — at two replicas over one shared store — and the
//!   store applies the ID once (PostgreSQL's row lock makes the second wait
//!   for the first and replay it). Without an ID a hedged `Accumulate`
//!   could be applied twice, so such calls fall back to the retry policy,
//!   which re-sends only what is certainly not applied. gRPC, Finagle and
//!   Envoy offer hedging for idempotent calls only; none makes a write
//!   safe to hedge — here the server's deduplication does.
//!
//! The decisions are in [`HedgePolicy`], a plain struct; the future that
//! carries them out, several attempts in flight at once, is [`future`].
//!
//! # Layout
//! - [`future`]: [`HedgeFuture`], the attempts in flight and the timer.

pub mod future;

use std::{fmt, time::Duration};

use tokio::time::Instant;
use tonic::Code;

pub use future::HedgeFuture;

use crate::{
    client::{
        breaker::config::CALLER_CODES,
        call::Call,
        error::{CallError, Cause},
        retry::{Budget, Stop},
    },
    error::code_name,
};

/// Most attempts a hedging policy may send (gRPC caps `maxAttempts` at 5).
pub const HEDGE_ATTEMPTS_MAX_LIMIT: u32 = 5;

/// Longest hedging delay accepted.
pub const HEDGE_DELAY_MAX: Duration = Duration::from_secs(60);

/// Hedging settings: the fields of gRPC's `hedgingPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct HedgeConfig {
    /// Attempts in all, the first included (2..=5).
    pub attempts_max: u32,
    /// Wait for a reply this long before sending the next attempt. Zero
    /// sends them all at once.
    pub delay: Duration,
    /// Codes after which the next hedge goes at once; any other error
    /// ends the call.
    pub non_fatal_codes: Vec<Code>,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            attempts_max: 3,
            delay: Duration::from_millis(20),
            non_fatal_codes: vec![Code::Unavailable],
        }
    }
}

/// A hedging configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HedgeConfigError {
    /// `attempts_max` out of range.
    #[error("hedge attempts must be between 2 and {HEDGE_ATTEMPTS_MAX_LIMIT}, got {0}")]
    Attempts(u32),
    /// `delay` out of range.
    #[error("hedging delay must be at most {max} s, got {0:?}", max = HEDGE_DELAY_MAX.as_secs())]
    Delay(Duration),
    /// A caller-error code among the non-fatal ones.
    #[error(
        "{} says the request itself is wrong: another replica would answer the same, so it cannot be non-fatal",
        code_name(*.0)
    )]
    CallerCode(Code),
}

impl HedgeConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), HedgeConfigError> {
        if !(2..=HEDGE_ATTEMPTS_MAX_LIMIT).contains(&self.attempts_max) {
            return Err(HedgeConfigError::Attempts(self.attempts_max));
        }
        if self.delay > HEDGE_DELAY_MAX {
            return Err(HedgeConfigError::Delay(self.delay));
        }
        if let Some(c) = self
            .non_fatal_codes
            .iter()
            .find(|c| CALLER_CODES.contains(c))
        {
            return Err(HedgeConfigError::CallerCode(*c));
        }
        Ok(())
    }
}

/// What released a hedge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeTrigger {
    /// The hedging delay passed without a reply.
    Delay,
    /// An attempt failed with a non-fatal code: sent without waiting.
    Failure(Code),
    /// The delay the server's pushback asked for passed.
    Pushback,
}

impl fmt::Display for HedgeTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Delay => f.write_str("no reply within the hedging delay"),
            Self::Failure(code) => write!(f, "an attempt failed with {}", code_name(*code)),
            Self::Pushback => f.write_str("after the server's pushback"),
        }
    }
}

/// What follows a failed attempt of a hedged call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The call fails with this error; cancel the rest.
    Fatal,
    /// Send the next hedge now, or after a pushback delay.
    Next {
        /// When.
        at: Instant,
        /// Why.
        trigger: HedgeTrigger,
    },
    /// Send no more hedges; the attempts in flight go on.
    NoMore(Stop),
}

/// The hedging decisions: no I/O; the clock and the throttle are passed
/// in.
#[derive(Debug, Clone)]
pub struct HedgePolicy {
    config: HedgeConfig,
}

impl HedgePolicy {
    /// A policy for `config` (validated by the client's configuration).
    pub fn new(config: HedgeConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &HedgeConfig {
        &self.config
    }

    /// True when `call` may be hedged: sending it twice cannot apply it
    /// twice.
    pub fn applies(&self, call: &Call) -> bool {
        call.is_idempotent()
    }

    /// Decides what follows `err`, a failed attempt of `call`, at `now`.
    /// Charges the throttle for non-fatal failures, as retries do.
    ///
    /// ```
    /// use std::time::Duration;
    /// use abacus::client::{Call, CallError, Cause, Request, hedge::{AfterFailure, HedgeConfig, HedgePolicy, HedgeTrigger}};
    /// use abacus::trace::Outcome;
    /// use tokio::time::Instant;
    /// use tonic::Code;
    /// let policy = HedgePolicy::new(HedgeConfig::default());
    /// let call = Call::new(1, Request::GetStats);
    /// let now = Instant::now();
    /// let down = CallError::new(Code::Unavailable, "down", Cause::Connect, Outcome::NotApplied);
    /// assert_eq!(policy.after_failure(&call, &down, now, None),
    ///            AfterFailure::Next { at: now, trigger: HedgeTrigger::Failure(Code::Unavailable) });
    /// let wrong = CallError::new(Code::Internal, "bug", Cause::Status, Outcome::Unknown);
    /// assert_eq!(policy.after_failure(&call, &wrong, now, None), AfterFailure::Fatal);
    /// ```
    pub fn after_failure(
        &self,
        _call: &Call,
        err: &CallError,
        now: Instant,
        budget: Option<&mut Budget>,
    ) -> AfterFailure {
        match err.cause {
            // Every endpoint refuses (breakers open, or not serving):
            // nothing more can go out now; the others may still answer.
            Cause::CircuitOpen { .. } => return AfterFailure::NoMore(Stop::CircuitOpen),
            Cause::NoEndpoint => return AfterFailure::NoMore(Stop::NonRetryable),
            Cause::DeadlineExceeded => return AfterFailure::Fatal,
            _ => {}
        }
        // An attempt timeout is non-fatal whatever the codes say: hedged
        // calls are the ones that may be repeated.
        let non_fatal =
            err.cause == Cause::AttemptTimeout || self.config.non_fatal_codes.contains(&err.code);
        if !non_fatal {
            return AfterFailure::Fatal;
        }
        if let Some(b) = budget {
            b.on_failure();
        }
        match err.pushback_ms {
            Some(ms) if ms < 0 => AfterFailure::NoMore(Stop::ServerPushback),
            Some(ms) => AfterFailure::Next {
                at: now + Duration::from_millis(ms as u64),
                trigger: HedgeTrigger::Pushback,
            },
            None => AfterFailure::Next {
                at: now,
                trigger: HedgeTrigger::Failure(err.code),
            },
        }
    }

    /// May attempt number `attempt` (≥ 2) go out at `now`? Spends from the
    /// throttle when it may.
    pub fn may_hedge(
        &self,
        attempt: u32,
        now: Instant,
        deadline: Option<Instant>,
        budget: Option<&mut Budget>,
    ) -> Result<(), Stop> {
        if attempt > self.config.attempts_max {
            return Err(Stop::AttemptsExhausted);
        }
        if deadline.is_some_and(|d| now >= d) {
            return Err(Stop::DeadlineTooClose);
        }
        if let Some(b) = budget {
            if !b.allows(now) {
                return Err(Stop::BudgetExhausted);
            }
            b.spend(now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        client::{call::Request, retry::Throttle},
        resilience::budget::ThrottleConfig,
        trace::Outcome,
    };

    fn call() -> Call {
        Call::new(1, Request::GetStats)
    }

    fn err(code: Code, cause: Cause) -> CallError {
        CallError::new(code, "x", cause, Outcome::Unknown)
    }

    #[test]
    fn after_failure_by_code_cause_and_pushback() {
        let p = HedgePolicy::new(HedgeConfig::default());
        let now = Instant::now();
        let next = |trigger| AfterFailure::Next { at: now, trigger };
        let check = |e: CallError, expect: AfterFailure| {
            assert_eq!(p.after_failure(&call(), &e, now, None), expect, "{e:?}");
        };
        check(
            err(Code::Unavailable, Cause::Transport),
            next(HedgeTrigger::Failure(Code::Unavailable)),
        );
        check(
            err(Code::DeadlineExceeded, Cause::AttemptTimeout),
            next(HedgeTrigger::Failure(Code::DeadlineExceeded)),
        );
        check(
            err(Code::InvalidArgument, Cause::Status),
            AfterFailure::Fatal,
        );
        check(err(Code::Internal, Cause::Status), AfterFailure::Fatal);
        check(
            err(Code::Unavailable, Cause::CircuitOpen { probe_in_ms: 3 }),
            AfterFailure::NoMore(Stop::CircuitOpen),
        );
        check(
            err(Code::Unavailable, Cause::NoEndpoint),
            AfterFailure::NoMore(Stop::NonRetryable),
        );
        let mut pushed = err(Code::Unavailable, Cause::Status);
        pushed.pushback_ms = Some(250);
        check(
            pushed.clone(),
            AfterFailure::Next {
                at: now + Duration::from_millis(250),
                trigger: HedgeTrigger::Pushback,
            },
        );
        pushed.pushback_ms = Some(-1);
        check(pushed, AfterFailure::NoMore(Stop::ServerPushback));
    }

    #[test]
    fn hedges_are_bounded_by_attempts_deadline_and_throttle() {
        let p = HedgePolicy::new(HedgeConfig {
            attempts_max: 3,
            ..HedgeConfig::default()
        });
        let now = Instant::now();
        assert_eq!(p.may_hedge(3, now, None, None), Ok(()));
        assert_eq!(
            p.may_hedge(4, now, None, None),
            Err(Stop::AttemptsExhausted)
        );
        assert_eq!(
            p.may_hedge(2, now, Some(now), None),
            Err(Stop::DeadlineTooClose)
        );
        let mut budget = Budget::new(
            Throttle::TokenBucket(ThrottleConfig {
                max_tokens: 4.0,
                token_ratio: 1.0,
            }),
            now,
        );
        // Two non-fatal failures leave 2 of 4 tokens: no more hedges.
        let e = err(Code::Unavailable, Cause::Transport);
        p.after_failure(&call(), &e, now, Some(&mut budget));
        assert_eq!(p.may_hedge(2, now, None, Some(&mut budget)), Ok(()));
        p.after_failure(&call(), &e, now, Some(&mut budget));
        assert_eq!(
            p.may_hedge(2, now, None, Some(&mut budget)),
            Err(Stop::BudgetExhausted)
        );
    }

    #[test]
    fn only_repeatable_calls_are_hedged() {
        let p = HedgePolicy::new(HedgeConfig::default());
        let acc = |id: &str| {
            Call::new(
                1,
                Request::Accumulate {
                    register: "r".into(),
                    delta: 1.0,
                    request_id: id.into(),
                },
            )
        };
        assert!(p.applies(&call()));
        assert!(p.applies(&acc("id-1")));
        assert!(!p.applies(&acc("")));
    }

    #[test]
    fn config_is_validated() {
        let ok = HedgeConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        for (bad, err) in [
            (
                HedgeConfig {
                    attempts_max: 1,
                    ..ok.clone()
                },
                HedgeConfigError::Attempts(1),
            ),
            (
                HedgeConfig {
                    attempts_max: 6,
                    ..ok.clone()
                },
                HedgeConfigError::Attempts(6),
            ),
            (
                HedgeConfig {
                    delay: Duration::from_secs(61),
                    ..ok.clone()
                },
                HedgeConfigError::Delay(Duration::from_secs(61)),
            ),
            (
                HedgeConfig {
                    non_fatal_codes: vec![Code::NotFound],
                    ..ok.clone()
                },
                HedgeConfigError::CallerCode(Code::NotFound),
            ),
        ] {
            assert_eq!(bad.validate(), Err(err));
        }
    }
}
