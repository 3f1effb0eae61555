//! Exponential backoff with **full jitter**: the pause before retry `n` is
//! drawn uniformly from `[0, min(initial * multiplier^(n-1), max)]`.
//!
//! Why full jitter rather than decorrelated: it is what gRPC's retry design
//! (A6) specifies, so a policy shared as service-config JSON behaves the
//! same here as in grpc-go or grpcio; and it spreads a crowd of clients
//! retrying after one outage over the whole window, which is what stops
//! them from arriving in synchronised waves.

use std::time::Duration;

use rand::Rng;

/// Backoff shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Upper bound of the first pause.
    pub initial: Duration,
    /// Cap on any pause.
    pub max: Duration,
    /// Growth factor per retry (≥ 1).
    pub multiplier: f64,
}

impl Backoff {
    /// Upper bound of the pause before retry number `retry` (1-based):
    /// `min(initial * multiplier^(retry-1), max)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exp = self.multiplier.powi(retry.saturating_sub(1).min(64) as i32);
        let secs = self.initial.as_secs_f64() * exp;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// Draws the pause before retry number `retry` from `rng`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rand::SeedableRng;
    /// use abacus::client::retry::Backoff;
    /// let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), multiplier: 2.0 };
    /// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    /// for retry in 1..10 {
    ///     assert!(b.pause(retry, &mut rng) <= b.ceiling(retry));
    /// }
    /// assert_eq!(b.ceiling(3), Duration::from_millis(400));
    /// assert_eq!(b.ceiling(9), Duration::from_secs(1));
    /// ```
    pub fn pause(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling_us = self.ceiling(retry).as_micros() as u64;
        // Whole milliseconds keep traces readable; sub-ms precision buys nothing.
        let us = rng.random_range(0..=ceiling_us);
        Duration::from_millis(us / 1000)
    }
}
