//! What the store guard is told: how long a store call may take, what
//! counts as slow, how much store work may be in flight, and its breaker.
//! Checked once, before any guard exists.

use std::time::Duration;

use tonic::Code;

use crate::resilience::breaker::{BreakerConfig, BreakerConfigError, CodeSet};

/// Default longest one store call may take, whatever the caller's
/// deadline. A healthy PostgreSQL commits this ledger's transaction in a
/// few milliseconds (tens under heavy load): two seconds is far beyond
/// that, and short enough that a store which stopped answering costs a
/// caller at most this long before the breaker has seen enough.
pub const TIMEOUT_MS_DEFAULT: u64 = 2_000;

/// Default store time after which an operation counts as a failure for
/// the breaker, answered or not: a hundred times a slow commit.
pub const SLOW_MS_DEFAULT: u64 = 500;

/// Default store operations in flight per server: four times the
/// PostgreSQL pool, so a burst queues briefly for connections, and a
/// quarter of the server's default in-flight cap (256), so a stuck store
/// can never take every slot from the pure calls.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 64;

/// Largest `in_flight_max` accepted.
pub const IN_FLIGHT_LIMIT: usize = 1_000_000;

/// Largest `timeout_ms` accepted (ten minutes).
pub const TIMEOUT_MS_LIMIT: u64 = 600_000;

/// The codes the guard feeds its breaker for a failure: the store failed
/// (UNAVAILABLE) or was too slow (DEADLINE_EXCEEDED). They are fixed: the
/// guard classifies outcomes itself (see [`super::policy::CallEnd`]) and
/// never feeds a caller's error.
pub(crate) fn failure_codes() -> CodeSet {
    CodeSet::of(&[Code::Unavailable, Code::DeadlineExceeded])
}

/// How a store guard behaves. Every field has a default
/// ([`GuardConfig::default`]).
///
/// ```
/// use abacus::store::guard::GuardConfig;
/// let config = GuardConfig { timeout_ms: 1_000, ..GuardConfig::default() };
/// config.validate().unwrap();
/// assert!(GuardConfig { slow_ms: 5_000, ..config }.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    /// Longest one store call may take (a claim, a commit, a read),
    /// whatever the caller's deadline; a call cut by it is a store failure.
    /// Default [`TIMEOUT_MS_DEFAULT`].
    pub timeout_ms: u64,
    /// An operation whose calls spent longer than this in the store counts
    /// as a failure for the breaker, whether it was answered or cut short
    /// by its caller's deadline. One cut shorter than this says nothing
    /// about the store and is not counted. At most `timeout_ms`. Default
    /// [`SLOW_MS_DEFAULT`].
    pub slow_ms: u64,
    /// Store operations in flight at once (an `Accumulate` from its claim
    /// to its commit, a read, a stats call); beyond it an operation is
    /// refused at once, before anything is sent. Default
    /// [`IN_FLIGHT_MAX_DEFAULT`].
    pub in_flight_max: usize,
    /// The breaker: when to trip, how long to stay open, how many probes.
    /// Its `slow_call_ms` and `failure_codes` are ignored: the guard judges
    /// slowness on store time and feeds failures itself.
    pub breaker: BreakerConfig,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            timeout_ms: TIMEOUT_MS_DEFAULT,
            slow_ms: SLOW_MS_DEFAULT,
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            breaker: Self::default_breaker(),
        }
    }
}

/// A guard configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GuardConfigError {
    /// `timeout_ms` out of range.
    #[error("the store timeout must be between 1 and {TIMEOUT_MS_LIMIT} ms, got {0}")]
    Timeout(u64),
    /// `slow_ms` out of range.
    #[error(
        "the store's slow threshold must be between 1 ms and the store timeout ({timeout_ms} ms), got {slow_ms}"
    )]
    Slow {
        /// The value given.
        slow_ms: u64,
        /// The timeout it must not exceed.
        timeout_ms: u64,
    },
    /// `in_flight_max` out of range.
    #[error("store operations in flight must be between 1 and {IN_FLIGHT_LIMIT}, got {0}")]
    InFlight(usize),
    /// The breaker's settings.
    #[error("store breaker: {0}")]
    Breaker(#[from] BreakerConfigError),
}

impl GuardConfig {
    /// The breaker the guard uses unless told otherwise: the client's
    /// defaults (trip at 5 failures in a row, or half of the last 20 calls
    /// once 10 are in), open for 1 s, doubling to at most 5 s rather than
    /// the client's 30 s: the store is one dependency every write needs,
    /// and a write path that stays shut half a minute after the store came
    /// back is an outage of its own. The guard also probes by itself, so
    /// recovery does not wait for traffic.
    pub fn default_breaker() -> BreakerConfig {
        BreakerConfig {
            open_ms: 1_000,
            open_ms_max: 5_000,
            ..BreakerConfig::default()
        }
    }

    /// Checks every field; a guard is only built from a valid config.
    pub fn validate(&self) -> Result<(), GuardConfigError> {
        if !(1..=TIMEOUT_MS_LIMIT).contains(&self.timeout_ms) {
            return Err(GuardConfigError::Timeout(self.timeout_ms));
        }
        if !(1..=self.timeout_ms).contains(&self.slow_ms) {
            return Err(GuardConfigError::Slow {
                slow_ms: self.slow_ms,
                timeout_ms: self.timeout_ms,
            });
        }
        if !(1..=IN_FLIGHT_LIMIT).contains(&self.in_flight_max) {
            return Err(GuardConfigError::InFlight(self.in_flight_max));
        }
        self.effective_breaker().validate()?;
        Ok(())
    }

    /// [`GuardConfig::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// [`GuardConfig::slow_ms`] as a duration.
    pub fn slow(&self) -> Duration {
        Duration::from_millis(self.slow_ms)
    }

    /// The breaker as the guard runs it: slowness and failure codes are the
    /// guard's own (see the field docs).
    pub(crate) fn effective_breaker(&self) -> BreakerConfig {
        BreakerConfig {
            slow_call_ms: None,
            failure_codes: failure_codes(),
            ..self.breaker.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bound_is_checked() {
        let ok = GuardConfig::default();
        ok.validate().unwrap();
        let check = |c: GuardConfig, want: GuardConfigError| assert_eq!(c.validate(), Err(want));
        check(
            GuardConfig {
                timeout_ms: 0,
                ..ok.clone()
            },
            GuardConfigError::Timeout(0),
        );
        check(
            GuardConfig {
                slow_ms: 0,
                ..ok.clone()
            },
            GuardConfigError::Slow {
                slow_ms: 0,
                timeout_ms: TIMEOUT_MS_DEFAULT,
            },
        );
        check(
            GuardConfig {
                in_flight_max: 0,
                ..ok.clone()
            },
            GuardConfigError::InFlight(0),
        );
        let bad_breaker = GuardConfig {
            breaker: BreakerConfig {
                open_ms: 0,
                ..GuardConfig::default_breaker()
            },
            ..ok.clone()
        };
        assert!(matches!(
            bad_breaker.validate(),
            Err(GuardConfigError::Breaker(BreakerConfigError::OpenMs { .. }))
        ));
        // A caller's code in the breaker's failure codes would be refused by
        // the breaker; the guard replaces them with its own, so it is not.
        let mut codes = GuardConfig::default_breaker();
        codes.failure_codes = CodeSet::of(&[Code::Internal]);
        let c = GuardConfig {
            breaker: codes,
            ..ok
        };
        c.validate().unwrap();
        assert_eq!(c.effective_breaker().failure_codes, failure_codes());
    }
}
