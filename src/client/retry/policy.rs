//! The retry decision, as a plain struct with no I/O: given a failed attempt,
//! the call, the delivery mode, the clock and the budget, retry (after how
//! long) or stop (and why). The layer in `retry/mod.rs` only carries it out.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tonic::Code;

use crate::client::{
    call::Call,
    error::{CallError, Cause},
    mode::Delivery,
    retry::{
        backoff::Backoff,
        throttle::{Budget, Throttle},
    },
};
use crate::{error::code_name, trace::Outcome};

/// Most attempts any policy may ask for; gRPC caps `maxAttempts` at 5, we
/// allow a little more for demos but never unbounded.
pub const ATTEMPTS_MAX_LIMIT: u32 = 10;

/// Retry settings. The same fields as gRPC's `retryPolicy`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts including the first (1 = never retry).
    pub attempts_max: u32,
    /// Backoff shape.
    pub backoff: Backoff,
    /// Status codes worth retrying. DEADLINE_EXCEEDED from a per-attempt
    /// timeout is retried additionally, but only for idempotent calls.
    pub retryable_codes: Vec<Code>,
    /// Retry throttling (gRPC's token bucket or a ratio budget); `None`
    /// disables it. Hedges draw on the same throttle.
    pub throttle: Option<Throttle>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts_max: 4,
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_secs(1),
                multiplier: 2.0,
            },
            retryable_codes: vec![Code::Unavailable],
            throttle: Some(Throttle::default()),
        }
    }
}

/// A retry configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryConfigError {
    /// attempts out of range.
    #[error("attempts must be between 1 and {ATTEMPTS_MAX_LIMIT}, got {0}")]
    Attempts(u32),
    /// Bad backoff.
    #[error("backoff: {0}")]
    Backoff(&'static str),
    /// Bad throttle.
    #[error("retry throttling: {0}")]
    Throttle(&'static str),
    /// A caller-error code among the retryable ones.
    #[error(
        "{} says the request itself is wrong: retrying it unchanged can never succeed, so it cannot be retryable",
        code_name(*.0)
    )]
    CallerCode(Code),
}

impl RetryConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), RetryConfigError> {
        if !(1..=ATTEMPTS_MAX_LIMIT).contains(&self.attempts_max) {
            return Err(RetryConfigError::Attempts(self.attempts_max));
        }
        let b = &self.backoff;
        if b.initial.is_zero() || b.max.is_zero() {
            return Err(RetryConfigError::Backoff("initial and max must be > 0"));
        }
        if b.initial > b.max {
            return Err(RetryConfigError::Backoff("initial must not exceed max"));
        }
        if !(b.multiplier.is_finite() && b.multiplier >= 1.0) {
            return Err(RetryConfigError::Backoff(
                "multiplier must be a number >= 1",
            ));
        }
        if let Some(code) = self
            .retryable_codes
            .iter()
            .find(|c| crate::client::breaker::config::CALLER_CODES.contains(c))
        {
            return Err(RetryConfigError::CallerCode(*code));
        }
        if let Some(t) = &self.throttle {
            t.validate().map_err(RetryConfigError::Throttle)?;
        }
        Ok(())
    }
}

/// Why the policy stopped retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The status code is not retryable.
    NonRetryable,
    /// At-most-once: the failed attempt may have been applied.
    MayHaveBeenApplied,
    /// `attempts_max` reached.
    AttemptsExhausted,
    /// The retry throttle refused (token bucket at or below half, or the
    /// ratio budget spent).
    BudgetExhausted,
    /// The pause would end at or after the overall deadline.
    DeadlineTooClose,
    /// The server sent a negative pushback.
    ServerPushback,
    /// The circuit breaker refused the attempt.
    CircuitOpen,
}

impl Stop {
    /// Human-readable reason for traces and errors.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NonRetryable => "status is not retryable",
            Self::MayHaveBeenApplied => {
                "at-most-once: the failed attempt may have been applied, so it is not re-sent"
            }
            Self::AttemptsExhausted => "attempts exhausted",
            Self::BudgetExhausted => "retry budget exhausted",
            Self::DeadlineTooClose => "no time left before the overall deadline",
            Self::ServerPushback => "server asked not to retry",
            Self::CircuitOpen => "circuit open",
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again after `after`.
    Retry {
        /// Pause before the next attempt.
        after: Duration,
        /// True when the pause is the server's pushback.
        pushback: bool,
    },
    /// Give up.
    Stop(Stop),
}

/// The retry decision logic.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    config: RetryConfig,
    mode: Delivery,
}

impl RetryPolicy {
    /// A policy for `mode`.
    pub fn new(config: RetryConfig, mode: Delivery) -> Self {
        Self { config, mode }
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// True when `err` is a failure worth retrying at all (its code), before
    /// looking at mode, attempts, budget or time.
    pub fn is_retryable(&self, call: &Call, err: &CallError) -> bool {
        if err.cause == Cause::AttemptTimeout {
            // Our own per-attempt timeout: the attempt may still be running on
            // the server, so repeating is only allowed when it is harmless.
            return call.is_idempotent();
        }
        if matches!(
            err.cause,
            Cause::CircuitOpen { .. } | Cause::DeadlineExceeded | Cause::NoEndpoint
        ) {
            return false;
        }
        self.config.retryable_codes.contains(&err.code)
    }

    /// Decides what follows failed attempt number `call.attempt` of `call`.
    /// Charges the budget for retryable failures, and spends from it when
    /// the answer is to retry.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rand::SeedableRng;
    /// use tokio::time::Instant;
    /// use tonic::Code;
    /// use abacus::trace::Outcome;
    /// use abacus::client::{Call, CallError, Cause, Delivery, Request};
    /// use abacus::client::retry::{Budget, Decision, RetryConfig, RetryPolicy, Stop};
    ///
    /// let policy = RetryPolicy::new(RetryConfig::default(), Delivery::AtMostOnce);
    /// let mut budget = Budget::new(Default::default(), Instant::now());
    /// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    /// let acc = Call::new(1, Request::Accumulate {
    ///     register: "r".into(), delta: 1.0, request_id: String::new() });
    /// // The connection dropped mid-call: maybe applied. At-most-once stops.
    /// let lost = CallError::new(Code::Unavailable, "reset", Cause::Transport, Outcome::Unknown);
    /// let now = Instant::now();
    /// let d = policy.decide(&acc, &lost, now, None, Some(&mut budget), &mut rng);
    /// assert_eq!(d, Decision::Stop(Stop::MayHaveBeenApplied));
    /// // Refused before applying: safe to retry even at-most-once.
    /// let refused = CallError::new(Code::Unavailable, "down", Cause::Status, Outcome::NotApplied);
    /// let d = policy.decide(&acc, &refused, now, None, Some(&mut budget), &mut rng);
    /// assert!(matches!(d, Decision::Retry { .. }));
    /// ```
    pub fn decide(
        &self,
        call: &Call,
        err: &CallError,
        now: Instant,
        deadline: Option<Instant>,
        mut budget: Option<&mut Budget>,
        rng: &mut impl Rng,
    ) -> Decision {
        if matches!(err.cause, Cause::CircuitOpen { .. }) {
            return Decision::Stop(Stop::CircuitOpen);
        }
        if !self.is_retryable(call, err) {
            return Decision::Stop(Stop::NonRetryable);
        }
        // Retryable failures drain the bucket whether or not we retry, as in
        // gRPC: the bucket measures the server's health, not our intent.
        if let Some(b) = budget.as_deref_mut() {
            b.on_failure();
        }
        if err.pushback_ms.is_some_and(|p| p < 0) {
            return Decision::Stop(Stop::ServerPushback);
        }
        if err.outcome != Outcome::NotApplied
            && !call.is_idempotent()
            && !self.mode.retries_unknown_outcomes()
        {
            return Decision::Stop(Stop::MayHaveBeenApplied);
        }
        if call.attempt >= self.config.attempts_max {
            return Decision::Stop(Stop::AttemptsExhausted);
        }
        if let Some(b) = budget.as_deref_mut()
            && !b.allows(now)
        {
            return Decision::Stop(Stop::BudgetExhausted);
        }
        let (after, pushback) = match err.pushback_ms {
            Some(ms) => (Duration::from_millis(ms as u64), true),
            None => (self.config.backoff.pause(call.attempt, rng), false),
        };
        if deadline.is_some_and(|d| now + after >= d) {
            return Decision::Stop(Stop::DeadlineTooClose);
        }
        if let Some(b) = budget {
            b.spend(now);
        }
        Decision::Retry { after, pushback }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{client::call::Request, core::BinaryOp};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn add() -> Call {
        Call::new(
            1,
            Request::Binary {
                op: BinaryOp::Add,
                a: 1.0,
                b: 2.0,
            },
        )
    }

    fn acc(id: &str) -> Call {
        Call::new(
            1,
            Request::Accumulate {
                register: "r".into(),
                delta: 1.0,
                request_id: id.into(),
            },
        )
    }

    fn err(code: Code, cause: Cause, outcome: Outcome) -> CallError {
        CallError::new(code, "x", cause, outcome)
    }

    fn unavailable_unknown() -> CallError {
        err(Code::Unavailable, Cause::Transport, Outcome::Unknown)
    }

    /// One decision with a fresh budget and rng, at attempt `attempt`.
    fn check(mode: Delivery, mut call: Call, attempt: u32, e: CallError, expect: Option<Stop>) {
        let policy = RetryPolicy::new(RetryConfig::default(), mode);
        let mut budget = Budget::new(Throttle::default(), Instant::now());
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        call.attempt = attempt;
        let got = policy.decide(&call, &e, Instant::now(), None, Some(&mut budget), &mut rng);
        match expect {
            None => assert!(
                matches!(got, Decision::Retry { .. }),
                "{mode} {:?} attempt {attempt} {e:?}: expected retry, got {got:?}",
                call.method()
            ),
            Some(stop) => assert_eq!(
                got,
                Decision::Stop(stop),
                "{mode} {:?} {e:?}",
                call.method()
            ),
        }
    }

    #[test]
    fn decisions_by_mode_method_and_error() {
        use Delivery::*;
        use Stop::*;
        let timeout = || {
            err(
                Code::DeadlineExceeded,
                Cause::AttemptTimeout,
                Outcome::Unknown,
            )
        };
        let refused = || err(Code::Unavailable, Cause::Status, Outcome::NotApplied);
        let invalid = || err(Code::InvalidArgument, Cause::Status, Outcome::NotApplied);
        // Pure calls retry in every mode, even when the outcome is unknown.
        for mode in [AtMostOnce, AtLeastOnce, ExactlyOnce] {
            check(mode, add(), 1, unavailable_unknown(), None);
            check(mode, add(), 1, timeout(), None);
            check(mode, add(), 1, invalid(), Some(NonRetryable));
            check(mode, add(), 4, refused(), Some(AttemptsExhausted));
        }
        // Accumulate without an ID.
        check(
            AtMostOnce,
            acc(""),
            1,
            unavailable_unknown(),
            Some(MayHaveBeenApplied),
        );
        check(AtMostOnce, acc(""), 1, refused(), None);
        check(AtLeastOnce, acc(""), 1, unavailable_unknown(), None);
        // An attempt timeout is only retried when repeating is harmless.
        check(AtLeastOnce, acc(""), 1, timeout(), Some(NonRetryable));
        check(AtLeastOnce, acc("id-1"), 1, timeout(), None);
        // With an ID the server deduplicates: safe even at-most-once.
        check(AtMostOnce, acc("id-1"), 1, unavailable_unknown(), None);
        // Circuit open never retries.
        let open = err(
            Code::Unavailable,
            Cause::CircuitOpen { probe_in_ms: 5 },
            Outcome::NotApplied,
        );
        check(AtLeastOnce, add(), 1, open, Some(CircuitOpen));
        // Negative pushback stops.
        let mut pb = refused();
        pb.pushback_ms = Some(-1);
        check(AtLeastOnce, add(), 1, pb, Some(ServerPushback));
    }

    #[test]
    fn pushback_replaces_backoff_and_deadline_bounds_it() {
        let policy = RetryPolicy::new(RetryConfig::default(), Delivery::AtLeastOnce);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut e = unavailable_unknown();
        e.pushback_ms = Some(300);
        let now = Instant::now();
        let d = policy.decide(&add(), &e, now, None, None, &mut rng);
        assert_eq!(
            d,
            Decision::Retry {
                after: Duration::from_millis(300),
                pushback: true
            }
        );
        let deadline = Some(now + Duration::from_millis(300));
        let d = policy.decide(&add(), &e, now, deadline, None, &mut rng);
        assert_eq!(d, Decision::Stop(Stop::DeadlineTooClose));
    }

    #[test]
    fn budget_drains_and_stops_retries() {
        let policy = RetryPolicy::new(RetryConfig::default(), Delivery::AtLeastOnce);
        let now = Instant::now();
        let mut budget = Budget::new(
            crate::resilience::budget::ThrottleConfig {
                max_tokens: 4.0,
                token_ratio: 1.0,
            }
            .into(),
            now,
        );
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut decide = |b: &mut Budget| {
            policy.decide(&add(), &unavailable_unknown(), now, None, Some(b), &mut rng)
        };
        assert!(matches!(decide(&mut budget), Decision::Retry { .. })); // 3 left
        assert_eq!(decide(&mut budget), Decision::Stop(Stop::BudgetExhausted)); // 2 left
        budget.on_success();
        budget.on_success(); // refilled to 4
        assert!(matches!(decide(&mut budget), Decision::Retry { .. })); // 3 left
    }

    #[test]
    fn config_is_validated() {
        let mut c = RetryConfig::default();
        assert!(c.validate().is_ok());
        c.attempts_max = 0;
        assert!(c.validate().is_err());
        c.attempts_max = 3;
        c.backoff.multiplier = 0.5;
        assert!(c.validate().is_err());
        let mut c = RetryConfig::default();
        c.retryable_codes.push(Code::InvalidArgument);
        assert_eq!(
            c.validate(),
            Err(RetryConfigError::CallerCode(Code::InvalidArgument))
        );
    }
}
