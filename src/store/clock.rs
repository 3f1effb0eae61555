//! The clock dedup records age by.
//!
//! Production reads tokio's clock ([`Clock::Tokio`]: one branch more than
//! calling `Instant::now()` directly). The simulation gives each host a
//! clock of its own, offset and running fast or slow by a seeded amount
//! ([`Clock::Custom`]), to check that deduplication holds within the bound
//! its documentation states (docs/simulation.md, "Clock skew and drift").
//!
//! Only retention reads this clock: TTL expiry at lookup and at commit.
//! Waits and deadlines stay on tokio's clock, which their timers run on
//! (the simulation skews a client's timers by scaling the durations it is
//! configured with instead: the same thing, as seen from real time).

use std::{fmt, sync::Arc};

use tokio::time::Instant;

/// A source of instants (the simulation's skewed clocks).
pub type ClockFn = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Where a ledger reads the time its dedup records age by.
#[derive(Clone, Default)]
pub enum Clock {
    /// tokio's clock (`tokio::time::Instant::now()`): real time, or the
    /// paused clock of tests.
    #[default]
    Tokio,
    /// Another source.
    Custom(ClockFn),
}

impl Clock {
    /// Now, on this clock.
    #[inline]
    pub fn now(&self) -> Instant {
        match self {
            Self::Tokio => Instant::now(),
            Self::Custom(now) => now(),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tokio => f.write_str("Clock::Tokio"),
            Self::Custom(_) => f.write_str("Clock::Custom"),
        }
    }
}
