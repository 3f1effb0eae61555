//! Per-identity rate limits: governor's GCRA limiter, one per identity
//! (identities are known at start, so no keyed map grows with traffic),
//! over tokio's clock rather than the wall clock, so that paused-clock
//! tests and the simulation drive it like every other timer.

use std::{num::NonZeroU32, ops::Add, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, Reference},
    middleware::NoOpMiddleware,
    nanos::Nanos,
    state::{InMemoryState, NotKeyed},
};

/// A rate: `per_second` calls per second on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained calls per second.
    pub per_second: NonZeroU32,
    /// Calls admitted at once after a quiet period.
    pub burst: NonZeroU32,
}

/// A point on tokio's clock, as governor measures time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(tokio::time::Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;

    fn add(self, other: Nanos) -> Self {
        Self(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        Nanos::from(self.0.saturating_duration_since(earlier.0))
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        self.0
            .checked_sub(Duration::from(duration))
            .map_or(*self, Self)
    }
}

/// tokio's clock for governor.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}

/// One identity's limiter.
#[derive(Debug)]
pub struct Limiter {
    inner: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>,
}

impl Limiter {
    /// A limiter admitting `limit`.
    pub fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Self {
            inner: RateLimiter::direct_with_clock(quota, TokioClock),
        }
    }

    /// Admits one call, or says how long until one would be admitted
    /// (rounded up to whole milliseconds, at least 1).
    pub fn check(&self) -> Result<(), u64> {
        self.inner.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(TokioClock.now());
            u64::try_from(wait.as_micros().div_ceil(1000))
                .unwrap_or(u64::MAX)
                .max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_sustained_rate_with_the_wait_announced() {
        let limiter = Limiter::new(RateLimit {
            per_second: NonZeroU32::new(10).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        });
        for _ in 0..3 {
            assert_eq!(limiter.check(), Ok(()));
        }
        // One call every 100 ms after the burst.
        assert_eq!(limiter.check(), Err(100));
        tokio::time::advance(Duration::from_millis(40)).await;
        assert_eq!(limiter.check(), Err(60));
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(limiter.check(), Ok(()));
        assert_eq!(limiter.check(), Err(100));
    }
}
