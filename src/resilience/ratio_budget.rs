//! Retry budget as Finagle and Linkerd define it: retries may add at most
//! `retry_ratio` of the requests of the last `ttl`, plus a floor of
//! `min_retries_per_s` so a quiet client can still retry at all.
//!
//! Why a second throttle beside gRPC's token bucket
//! ([`super::budget::TokenBucket`]): the bucket is sized in absolute tokens
//! (10, refilled by 0.1 per success), so at thousands of calls per second a
//! burst of simultaneous failures — every call in flight on a replica that
//! just died — empties half of it at once and the next retries are refused,
//! although the client retried a tiny fraction of its traffic. A ratio of
//! the requests scales with the load: at 5,000 calls/s, 20 % allows a
//! thousand retries per second, and still caps the extra load a retry storm
//! can put on the servers at 1.2× (and the floor at +10 calls/s).
//!
//! The accounting is Finagle's `RetryBudget` over a leaky window: every
//! request deposits `retry_ratio` (in thousandths), every retry withdraws
//! one; deposits and withdrawals expire after `ttl`; a retry is allowed
//! while the window's balance plus the reserve (`min_retries_per_s × ttl`)
//! covers it. The window is `SLICES` slices of `ttl / SLICES`, so an entry
//! expires between `ttl × (1 − 1/SLICES)` and `ttl` after it was made.
//!
//! A plain struct: the caller passes the time in, so tests and the
//! simulation decide it.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::rpc::duration::parse_json_duration;

/// Slices of the sliding window.
const SLICES: usize = 10;

/// One retry, in the budget's fixed-point unit (thousandths of a retry).
const RETRY_COST: i64 = 1_000;

/// Ratio-budget parameters (Linkerd's names; Finagle's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RatioBudgetConfig {
    /// Retries allowed per request, over the window (0 ≤ x ≤ 1000).
    /// Default 0.2.
    pub retry_ratio: f64,
    /// Retries allowed per second whatever the traffic (0 ≤ x ≤ 1000).
    /// Default 10.
    pub min_retries_per_second: f64,
    /// How long a request's deposit and a retry's withdrawal count. Parsed
    /// from service-config JSON as `"10s"`.
    #[serde(deserialize_with = "crate::resilience::ratio_budget::ttl_from_json")]
    pub ttl: Duration,
}

impl Default for RatioBudgetConfig {
    fn default() -> Self {
        Self {
            retry_ratio: 0.2,
            min_retries_per_second: 10.0,
            ttl: Duration::from_secs(10),
        }
    }
}

/// A ratio-budget configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RatioBudgetConfigError {
    /// `retry_ratio` out of range.
    #[error("retryRatio must be between 0 and 1000, got {0}")]
    Ratio(f64),
    /// `min_retries_per_second` out of range.
    #[error("minRetriesPerSecond must be between 0 and 1000, got {0}")]
    MinPerSecond(f64),
    /// `ttl` out of range.
    #[error("ttl must be between 1 s and 60 s, got {0:?}")]
    Ttl(Duration),
    /// Both the ratio and the floor are zero: no retry could ever go out.
    #[error(
        "retryRatio and minRetriesPerSecond are both 0: no retry could ever be sent (disable retries instead)"
    )]
    Never,
}

impl RatioBudgetConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), RatioBudgetConfigError> {
        let ok = |x: f64| x.is_finite() && (0.0..=1000.0).contains(&x);
        if !ok(self.retry_ratio) {
            return Err(RatioBudgetConfigError::Ratio(self.retry_ratio));
        }
        if !ok(self.min_retries_per_second) {
            return Err(RatioBudgetConfigError::MinPerSecond(
                self.min_retries_per_second,
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.ttl) {
            return Err(RatioBudgetConfigError::Ttl(self.ttl));
        }
        if self.retry_ratio == 0.0 && self.min_retries_per_second == 0.0 {
            return Err(RatioBudgetConfigError::Never);
        }
        Ok(())
    }
}

/// Reads `"10s"` (a protobuf JSON duration, as gRPC's service config writes
/// them) with the parser every service-config duration goes through.
fn ttl_from_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_json_duration("ttl", &text).map_err(serde::de::Error::custom)
}

/// The budget's state: a leaky window of deposits and withdrawals.
#[derive(Debug, Clone)]
pub struct RatioBudget {
    config: RatioBudgetConfig,
    /// Net balance of each slice, in thousandths of a retry.
    slices: [i64; SLICES],
    /// Index of the slice `slice_start` opened.
    current: usize,
    /// When the current slice began.
    slice_start: Instant,
    slice_len: Duration,
    deposit: i64,
    reserve: i64,
}

impl RatioBudget {
    /// An empty window starting at `now` (only the reserve is available).
    pub fn new(config: RatioBudgetConfig, now: Instant) -> Self {
        let slice_len = config.ttl / SLICES as u32;
        Self {
            deposit: (config.retry_ratio * RETRY_COST as f64).round() as i64,
            reserve: (config.min_retries_per_second * config.ttl.as_secs_f64() * RETRY_COST as f64)
                .round() as i64,
            config,
            slices: [0; SLICES],
            current: 0,
            slice_start: now,
            slice_len: slice_len.max(Duration::from_millis(1)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RatioBudgetConfig {
        &self.config
    }

    /// Expires the slices older than the window at `now`.
    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.slice_start);
        let steps = (elapsed.as_nanos() / self.slice_len.as_nanos().max(1)) as usize;
        if steps == 0 {
            return;
        }
        for _ in 0..steps.min(SLICES) {
            self.current = (self.current + 1) % SLICES;
            self.slices[self.current] = 0;
        }
        self.slice_start += self.slice_len * steps as u32;
    }

    /// Records one request (a logical call's first attempt).
    pub fn deposit(&mut self, now: Instant) {
        self.advance(now);
        self.slices[self.current] += self.deposit;
    }

    /// Retries the budget would allow at `now`, in thousandths.
    fn balance(&mut self, now: Instant) -> i64 {
        self.advance(now);
        self.slices.iter().sum::<i64>() + self.reserve
    }

    /// True when a retry could be withdrawn at `now` (nothing is taken).
    pub fn can_withdraw(&mut self, now: Instant) -> bool {
        self.balance(now) >= RETRY_COST
    }

    /// Takes one retry out of the budget if it covers it; false (and
    /// nothing taken) if not.
    ///
    /// ```
    /// use std::time::Duration;
    /// use abacus::resilience::ratio_budget::{RatioBudget, RatioBudgetConfig};
    /// use tokio::time::Instant;
    /// let config = RatioBudgetConfig { retry_ratio: 0.5, min_retries_per_second: 0.0, ttl: Duration::from_secs(10) };
    /// let t0 = Instant::now();
    /// let mut budget = RatioBudget::new(config, t0);
    /// assert!(!budget.try_withdraw(t0)); // nothing deposited yet, no floor
    /// budget.deposit(t0);
    /// budget.deposit(t0);
    /// assert!(budget.try_withdraw(t0)); // two requests earn one retry
    /// assert!(!budget.try_withdraw(t0));
    /// ```
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        if self.balance(now) < RETRY_COST {
            return false;
        }
        self.slices[self.current] -= RETRY_COST;
        true
    }

    /// Whole retries available at `now`.
    pub fn available(&mut self, now: Instant) -> f64 {
        self.balance(now) as f64 / RETRY_COST as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ratio: f64, floor: f64) -> RatioBudgetConfig {
        RatioBudgetConfig {
            retry_ratio: ratio,
            min_retries_per_second: floor,
            ttl: Duration::from_secs(10),
        }
    }

    #[test]
    fn retries_are_a_ratio_of_requests_plus_a_floor() {
        let t0 = Instant::now();
        let mut b = RatioBudget::new(config(0.2, 1.0), t0);
        // The floor alone: 1/s over 10 s = 10 retries.
        assert_eq!(b.available(t0), 10.0);
        for _ in 0..100 {
            b.deposit(t0);
        }
        // 100 requests × 0.2 = 20 more.
        assert_eq!(b.available(t0), 30.0);
        let taken = (0..100).take_while(|_| b.try_withdraw(t0)).count();
        assert_eq!(taken, 30);
        assert!(!b.can_withdraw(t0));
    }

    #[test]
    fn deposits_and_withdrawals_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut b = RatioBudget::new(config(1.0, 0.0), t0);
        for _ in 0..5 {
            b.deposit(t0);
        }
        assert!(b.try_withdraw(t0));
        assert_eq!(b.available(t0 + Duration::from_secs(5)), 4.0);
        // A full window later, both the deposits and the withdrawal are gone.
        assert_eq!(b.available(t0 + Duration::from_secs(10)), 0.0);
        // Far later: still consistent, the window was cleared, not replayed.
        let late = t0 + Duration::from_secs(3600);
        b.deposit(late);
        assert_eq!(b.available(late), 1.0);
    }

    #[test]
    fn a_withdrawal_outlives_nothing_it_did_not_take() {
        // Withdrawals made late in the window expire later than deposits
        // made early: the balance never goes below zero retries allowed.
        let t0 = Instant::now();
        let mut b = RatioBudget::new(config(1.0, 0.0), t0);
        b.deposit(t0);
        let t1 = t0 + Duration::from_secs(9);
        assert!(b.try_withdraw(t1));
        let t2 = t0 + Duration::from_secs(10);
        assert!(!b.can_withdraw(t2));
        b.deposit(t2);
        assert!(!b.can_withdraw(t2), "the withdrawal at 9 s still counts");
        assert!(b.can_withdraw(t1 + Duration::from_secs(10)));
    }

    #[test]
    fn config_is_validated() {
        assert_eq!(RatioBudgetConfig::default().validate(), Ok(()));
        assert_eq!(
            config(0.0, 0.0).validate(),
            Err(RatioBudgetConfigError::Never)
        );
        assert!(config(-1.0, 1.0).validate().is_err());
        assert!(config(f64::NAN, 1.0).validate().is_err());
        let mut c = config(0.2, 1.0);
        c.ttl = Duration::from_millis(10);
        assert!(c.validate().is_err());
    }

    #[test]
    fn reads_linkerd_field_names_from_json() {
        let c: RatioBudgetConfig = serde_json::from_str(
            r#"{"retryRatio": 0.25, "minRetriesPerSecond": 5, "ttl": "7.5s"}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            RatioBudgetConfig {
                retry_ratio: 0.25,
                min_retries_per_second: 5.0,
                ttl: Duration::from_millis(7500)
            }
        );
        assert!(
            serde_json::from_str::<RatioBudgetConfig>(
                r#"{"retryRatio": 0.25, "minRetriesPerSecond": 5, "ttl": "10"}"#
            )
            .is_err()
        );
    }
}
