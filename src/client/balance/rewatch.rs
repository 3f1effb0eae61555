//! When to re-open a broken `grpc.health.v1` watch ([`Rewatch`]): a
//! full-jitter backoff whose count of breaks resets only when a stream
//! stayed up for a while.
//!
//! Resetting after any message (as gRPC's A17 health client does) makes a
//! flapping endpoint — its stream opens, sends its first status and drops —
//! look healthy at every cycle, so it is re-dialled at the minimum pause
//! forever: one new stream per endpoint and scope every ~50 ms on average.
//! Here the pause keeps growing until a stream outlives
//! [`STABLE_AFTER`]; one that lasted that long was a real recovery, and
//! the next break starts again from the smallest pause.
//!
//! A plain struct: the caller passes the time and the RNG in, so tests and
//! the simulation decide both.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::resilience::backoff::Backoff;

/// Pause before re-opening a broken watch: full jitter under a ceiling
/// growing from 100 ms to 5 s.
pub const REWATCH_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
    multiplier: 2.0,
};

/// How long a stream must stay up for its break to count as a new
/// trouble rather than one more of the same: twice the longest pause, so
/// an endpoint that stays up for less than the pauses it causes keeps its
/// pauses at the ceiling.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The backoff of one watch (one endpoint, one scope).
#[derive(Debug, Clone)]
pub struct Rewatch {
    backoff: Backoff,
    stable_after: Duration,
    /// Breaks since the last stream that stayed up `stable_after`: streams
    /// that broke early and calls that could not open one.
    breaks: u32,
    /// When the stream now open was opened, if one is.
    opened: Option<Instant>,
}

impl Default for Rewatch {
    fn default() -> Self {
        Self::new(REWATCH_BACKOFF, STABLE_AFTER)
    }
}

impl Rewatch {
    /// Pauses drawn from `backoff`; a stream up for `stable_after` resets
    /// them.
    pub fn new(backoff: Backoff, stable_after: Duration) -> Self {
        Self {
            backoff,
            stable_after,
            breaks: 0,
            opened: None,
        }
    }

    /// The server answered the `Watch` call at `now`: a stream is open.
    pub fn opened(&mut self, now: Instant) {
        self.opened = Some(now);
    }

    /// The stream broke at `now`, or the call could not open one: the pause
    /// before the next `Watch`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use abacus::client::balance::rewatch::Rewatch;
    /// use rand::SeedableRng;
    /// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    /// let mut rewatch = Rewatch::default();
    /// let t0 = tokio::time::Instant::now();
    /// // A stream that opens and drops at once, again and again: the
    /// // ceiling of the pause keeps growing.
    /// for breaks in 1..=3 {
    ///     rewatch.opened(t0);
    ///     rewatch.broke(t0, &mut rng);
    ///     assert_eq!(rewatch.breaks(), breaks);
    /// }
    /// // One that stayed up a minute: the next pause starts from the least.
    /// rewatch.opened(t0);
    /// rewatch.broke(t0 + Duration::from_secs(60), &mut rng);
    /// assert_eq!(rewatch.breaks(), 1);
    /// ```
    pub fn broke(&mut self, now: Instant, rng: &mut impl Rng) -> Duration {
        if let Some(opened) = self.opened.take()
            && now.saturating_duration_since(opened) >= self.stable_after
        {
            self.breaks = 0;
        }
        self.breaks = self.breaks.saturating_add(1);
        self.backoff.pause(self.breaks, rng)
    }

    /// Breaks counted toward the next pause's ceiling.
    pub fn breaks(&self) -> u32 {
        self.breaks
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// What happens to one watch: a stream up for this long, or `None`
    /// for a `Watch` call that could not open one.
    type Cycle = Option<Duration>;

    /// Runs `cycles` (each followed by its pause) and returns the ceiling
    /// of each pause.
    fn ceilings(cycles: &[Cycle]) -> Vec<Duration> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut rewatch = Rewatch::default();
        let mut now = Instant::now();
        let mut out = Vec::new();
        for cycle in cycles {
            if let Some(up) = cycle {
                rewatch.opened(now);
                now += *up;
            }
            let pause = rewatch.broke(now, &mut rng);
            let ceiling = REWATCH_BACKOFF.ceiling(rewatch.breaks());
            assert!(pause <= ceiling, "{pause:?} > {ceiling:?}");
            now += pause;
            out.push(ceiling);
        }
        out
    }

    fn ms(ms: &[u64]) -> Vec<Duration> {
        ms.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn a_flapping_stream_backs_off_to_the_ceiling() {
        // Opens, says one thing, drops, 20 ms later each time.
        let flap = [Some(Duration::from_millis(20)); 8];
        assert_eq!(
            ceilings(&flap),
            ms(&[100, 200, 400, 800, 1600, 3200, 5000, 5000])
        );
    }

    #[test]
    fn only_a_stream_that_stayed_up_resets_the_backoff() {
        let short = Some(STABLE_AFTER - Duration::from_millis(1));
        let stable = Some(STABLE_AFTER);
        let cycles = [None, None, short, stable, None, short, short];
        assert_eq!(ceilings(&cycles), ms(&[100, 200, 400, 100, 200, 400, 800]));
    }

    #[test]
    fn a_refused_call_counts_like_a_stream_that_broke_at_once() {
        let refused = [None; 4];
        let instant = [Some(Duration::ZERO); 4];
        assert_eq!(ceilings(&refused), ceilings(&instant));
    }
}
