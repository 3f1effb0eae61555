//! Which retry throttle a client uses, and its state: gRPC's token bucket
//! or Finagle's ratio budget, behind one small interface the retry policy
//! and the hedging policy both draw on.
//!
//! The two keep different books, so the interface has one method per
//! moment of a call rather than one "may I retry": a logical call starts
//! ([`Budget::on_call`]: the ratio budget deposits), an attempt fails with
//! a retryable status ([`Budget::on_failure`]: the bucket loses a token),
//! an attempt succeeds ([`Budget::on_success`]: the bucket earns), and a
//! retry or hedge is about to go out ([`Budget::allows`], then
//! [`Budget::spend`]: the ratio budget withdraws). `allows` takes nothing,
//! so a decision that stops for another reason after asking (the deadline
//! is too close) wastes no budget.

use tokio::time::Instant;

use crate::resilience::{
    budget::{ThrottleConfig, TokenBucket},
    ratio_budget::{RatioBudget, RatioBudgetConfig, RatioBudgetConfigError},
};

/// A retry throttle's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Throttle {
    /// gRPC's `retryThrottling` token bucket.
    TokenBucket(ThrottleConfig),
    /// Finagle's and Linkerd's retry budget: a ratio of the requests plus a
    /// floor per second, over a sliding window.
    Ratio(RatioBudgetConfig),
}

impl From<ThrottleConfig> for Throttle {
    fn from(c: ThrottleConfig) -> Self {
        Self::TokenBucket(c)
    }
}

impl From<RatioBudgetConfig> for Throttle {
    fn from(c: RatioBudgetConfig) -> Self {
        Self::Ratio(c)
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::TokenBucket(ThrottleConfig::default())
    }
}

impl Throttle {
    /// Checks ranges; the message names the offending field.
    pub fn validate(&self) -> Result<(), &'static str> {
        match self {
            Self::TokenBucket(t) => {
                if !(t.max_tokens > 0.0 && t.max_tokens <= 1000.0) {
                    return Err("maxTokens must be in (0, 1000]");
                }
                if !(t.token_ratio > 0.0 && t.token_ratio.is_finite()) {
                    return Err("tokenRatio must be > 0");
                }
                Ok(())
            }
            Self::Ratio(r) => r.validate().map_err(|e| match e {
                RatioBudgetConfigError::Ratio(_) => "retryRatio must be between 0 and 1000",
                RatioBudgetConfigError::MinPerSecond(_) => {
                    "minRetriesPerSecond must be between 0 and 1000"
                }
                RatioBudgetConfigError::Ttl(_) => "ttl must be between 1 s and 60 s",
                RatioBudgetConfigError::Never => {
                    "retryRatio and minRetriesPerSecond are both 0: no retry could ever be sent"
                }
            }),
        }
    }
}

/// A throttle's state, shared by every call of a client.
#[derive(Debug, Clone)]
pub enum Budget {
    /// See [`Throttle::TokenBucket`].
    TokenBucket(TokenBucket),
    /// See [`Throttle::Ratio`].
    Ratio(RatioBudget),
}

impl Budget {
    /// A fresh throttle as `config` describes, its window starting `now`.
    pub fn new(config: Throttle, now: Instant) -> Self {
        match config {
            Throttle::TokenBucket(c) => Self::TokenBucket(TokenBucket::new(c)),
            Throttle::Ratio(c) => Self::Ratio(RatioBudget::new(c, now)),
        }
    }

    /// A logical call begins (its first attempt is not a retry).
    pub fn on_call(&mut self, now: Instant) {
        if let Self::Ratio(b) = self {
            b.deposit(now);
        }
    }

    /// An attempt failed with a retryable status.
    pub fn on_failure(&mut self) {
        if let Self::TokenBucket(b) = self {
            b.on_failure();
        }
    }

    /// An attempt succeeded.
    pub fn on_success(&mut self) {
        if let Self::TokenBucket(b) = self {
            b.on_success();
        }
    }

    /// True when a retry or hedge may go out at `now`; takes nothing.
    pub fn allows(&mut self, now: Instant) -> bool {
        match self {
            Self::TokenBucket(b) => b.allows_retry(),
            Self::Ratio(b) => b.can_withdraw(now),
        }
    }

    /// A retry or hedge goes out at `now` (after [`Budget::allows`] said
    /// yes).
    pub fn spend(&mut self, now: Instant) {
        if let Self::Ratio(b) = self {
            // Allowed a moment ago under the same lock: cannot fail.
            let _ = b.try_withdraw(now);
        }
    }

    /// What is left: tokens in the bucket, or whole retries in the ratio
    /// budget's window.
    pub fn level(&mut self, now: Instant) -> f64 {
        match self {
            Self::TokenBucket(b) => b.tokens(),
            Self::Ratio(b) => b.available(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_throttle_keeps_its_own_books() {
        let now = Instant::now();
        let mut bucket = Budget::new(
            ThrottleConfig {
                max_tokens: 4.0,
                token_ratio: 1.0,
            }
            .into(),
            now,
        );
        bucket.on_call(now);
        bucket.spend(now);
        assert_eq!(bucket.level(now), 4.0, "calls and retries cost no tokens");
        bucket.on_failure();
        bucket.on_failure();
        assert!(!bucket.allows(now), "2 of 4 tokens left: not above half");
        bucket.on_success();
        assert!(bucket.allows(now));

        let mut ratio = Budget::new(
            RatioBudgetConfig {
                retry_ratio: 1.0,
                min_retries_per_second: 0.0,
                ttl: Duration::from_secs(10),
            }
            .into(),
            now,
        );
        ratio.on_failure();
        ratio.on_success();
        assert!(!ratio.allows(now), "failures and successes earn nothing");
        ratio.on_call(now);
        assert!(ratio.allows(now));
        assert!(ratio.allows(now), "asking takes nothing");
        ratio.spend(now);
        assert!(!ratio.allows(now));
    }
}
