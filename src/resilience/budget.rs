//! Retry throttling: gRPC's token bucket (A6 "retryThrottling").
//!
//! Every failed attempt with a retryable status costs one token; every
//! success earns back `token_ratio`. Retries are allowed only while more than
//! half the bucket is left. During an outage the bucket drains after a few
//! failures and the client stops multiplying load by its retry factor; as
//! calls start succeeding again the bucket refills. One bucket is shared by
//! every call of a client (per server, as gRPC does).

use serde::Deserialize;

/// Token bucket parameters.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Bucket size (gRPC: 1..=1000).
    pub max_tokens: f64,
    /// Tokens earned per success (gRPC: > 0, three decimals).
    pub token_ratio: f64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_tokens: 10.0,
            token_ratio: 0.1,
        }
    }
}

/// The bucket's state.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    config: ThrottleConfig,
    tokens: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            tokens: config.max_tokens,
            config,
        }
    }

    /// Records a failed attempt with a retryable status.
    pub fn on_failure(&mut self) {
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    /// Records a successful call.
    pub fn on_success(&mut self) {
        self.tokens = (self.tokens + self.config.token_ratio).min(self.config.max_tokens);
    }

    /// True while retries are allowed: more than half the bucket left.
    ///
    /// ```
    /// use abacus::client::retry::{ThrottleConfig, TokenBucket};
    /// let mut b = TokenBucket::new(ThrottleConfig { max_tokens: 4.0, token_ratio: 0.5 });
    /// b.on_failure();
    /// assert!(b.allows_retry()); // 3 > 2
    /// b.on_failure();
    /// assert!(!b.allows_retry()); // 2 is not > 2
    /// b.on_success();
    /// assert!(b.allows_retry()); // 2.5 > 2
    /// ```
    pub fn allows_retry(&self) -> bool {
        self.tokens > self.config.max_tokens / 2.0
    }

    /// Tokens left.
    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}
