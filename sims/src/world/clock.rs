//! Clock skew and drift: each host's notion of now, offset and running
//! fast or slow by a seeded amount.
//!
//! turmoil gives every host the same simulated time, so a skewed clock is
//! built on top, where the code reads time:
//! - the **server's dedup retention** reads an injected [`Clock`]: the
//!   simulated time since the start, times `1 + rate`, plus an offset. A
//!   record's TTL then lasts `ttl / (1 + rate)` of real (simulated) time;
//!   In the replicated world that is the **store host's** clock, which
//!   stamps and judges every record (as the PostgreSQL ledger uses the
//!   database server's clock), never a replica's;
//! - a **client's timers** (deadline, attempt timeout, backoff, breaker,
//!   hedging delay) run on tokio's clock; a client whose clock runs at
//!   `1 + rate` measures every duration `1 / (1 + rate)` times too long or
//!   short, so its configured durations are scaled by that factor instead
//!   — what the client's clock would do to them, seen from real time;
//! - a **replica's store timers** (the per-call bound, the store guard's
//!   breaker and slow threshold, the in-process join wait) and the
//!   **store host's** idle-claim bound are scaled the same way.
//!
//! Not skewed: a duration one host sends another — a deadline to a server
//! or replica, a replica's wait to the store — is measured on true time
//! (it carries the sender's remaining real time), and the servers'
//! connection timers.
//!
//! The offset changes nothing the service decides (no instant crosses
//! hosts: deadlines travel as durations); it is drawn so that a bug that
//! compared instants across hosts would show.

use std::time::Duration;

use abacus::{client::BreakerConfig, store::Clock};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::seed::derive_seed;

/// One host's clock error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Skew {
    /// Added to every reading.
    pub offset: Duration,
    /// Rate error: the clock advances `1 + rate` seconds per real second.
    pub rate: f64,
}

impl Skew {
    /// `host`'s skew in the run of `seed`: a rate drawn uniformly in
    /// `[-rate_max, rate_max]`, an offset in `[0, 1 h)`.
    pub fn of(seed: u64, host: &str, rate_max: f64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, &format!("clock-{host}")));
        Self {
            rate: if rate_max > 0.0 {
                rng.random_range(-rate_max..=rate_max)
            } else {
                0.0
            },
            offset: Duration::from_millis(rng.random_range(0..3_600_000)),
        }
    }

    /// The clock: simulated time since the start, skewed.
    pub fn clock(self) -> Clock {
        let anchor = tokio::time::Instant::now();
        Clock::Custom(std::sync::Arc::new(move || {
            let real = turmoil::sim_elapsed().unwrap_or_default();
            anchor + self.offset + real.mul_f64(1.0 + self.rate)
        }))
    }

    /// What a configured duration lasts in real time on this clock.
    pub fn real(self, d: Duration) -> Duration {
        d.div_f64(1.0 + self.rate)
    }

    /// [`Skew::real`] of a duration configured in whole milliseconds.
    pub fn real_ms(self, ms: u64) -> u64 {
        self.real(Duration::from_millis(ms)).as_millis() as u64
    }

    /// `breaker` as a host on this clock lives it: its open times and slow
    /// threshold scaled to real time.
    pub fn breaker(self, breaker: &mut BreakerConfig) {
        breaker.open_ms = self.real_ms(breaker.open_ms);
        breaker.open_ms_max = self.real_ms(breaker.open_ms_max);
        breaker.slow_call_ms = breaker.slow_call_ms.map(|ms| self.real_ms(ms));
    }

    /// The clock of `skew`, or tokio's when there is none.
    pub fn clock_or_tokio(skew: Option<Self>) -> Clock {
        skew.map_or(Clock::Tokio, Self::clock)
    }
}

/// The dedup retention (TTL) that keeps deduplication exact for a client
/// retrying one request ID for `window` on its clock, with one-way
/// latency up to `latency_max`, when every clock's rate error is at most
/// `rate_max`: a retry reaches the server at most
/// `window / (1 - rate_max) + latency_max` of real time after the first
/// apply, and a record lives at least `ttl / (1 + rate_max)` of real time,
/// so `ttl` must be at least `(window / (1 - rate_max) + latency_max) ·
/// (1 + rate_max)`; `tick` (the simulation's time step) is added for the
/// rounding of simulated time.
pub fn dedup_ttl_min(
    window: Duration,
    latency_max: Duration,
    rate_max: f64,
    tick: Duration,
) -> Duration {
    (window.div_f64(1.0 - rate_max) + latency_max + tick).mul_f64(1.0 + rate_max)
}
