//! Peak-EWMA latency: the load metric Finagle's and Linkerd's balancers
//! (and tower's `load::PeakEwma`) use with power of two choices.
//!
//! An endpoint's cost is its latency estimate times the calls it has in
//! flight plus one. The estimate jumps to any sample above it (the *peak*:
//! one slow reply makes the endpoint expensive at once) and otherwise moves
//! toward the samples as an exponentially-weighted average whose weight
//! grows with the time since the last sample; read at any time, it decays
//! toward zero, so an endpoint left alone becomes cheap again and is tried
//! — that is how a replica that was slow gets a second chance.
//!
//! Two choices differ from tower's `PeakEwma`, which is why this is its
//! own plain struct (the formulas are Finagle's):
//! - **Failures and cancellations only raise the estimate.** tower records
//!   whatever time a call took, success or not; a refused connection
//!   answers in microseconds, so a dead replica would read as the fastest
//!   and draw the traffic (the "black hole" of latency-based balancing).
//!   Here a failed or cancelled attempt's time counts only where it is
//!   above the estimate: it took *at least* that long.
//! - **No estimate yet costs nothing, but only once.** As in Finagle, an
//!   endpoint never measured costs 0 while idle (a new replica gets tried
//!   at once, rather than waiting out a guessed default RTT) and a huge
//!   penalty while its first call is in flight (so a new replica does not
//!   swallow every call before its first reply says how fast it is).
//!
//! The clock is passed in: `now` is an argument everywhere.

use std::time::Duration;

use tokio::time::Instant;

/// Cost of an endpoint with calls in flight and no estimate yet: large
/// enough to lose every comparison against a measured endpoint, finite so
/// that comparisons stay ordinary.
pub const UNMEASURED_BUSY_COST: f64 = f64::MAX / 4.0;

/// What a sample says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// A reply arrived after this long: the latency.
    Reply(Duration),
    /// The attempt failed or was cancelled after this long: the latency
    /// was at least this.
    AtLeast(Duration),
}

/// One endpoint's latency estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct PeakEwma {
    /// Time constant of the decay, in nanoseconds.
    decay_ns: f64,
    /// The estimate (ns) as of the instant beside it; `None` until the
    /// first sample.
    estimate: Option<(f64, Instant)>,
}

impl PeakEwma {
    /// No estimate yet; the average forgets with time constant `decay`
    /// (Finagle and Linkerd use 10 s).
    pub fn new(decay: Duration) -> Self {
        Self {
            decay_ns: (decay.as_nanos() as f64).max(1.0),
            estimate: None,
        }
    }

    /// The estimate at `now` in nanoseconds, decayed since it was last
    /// set; `None` before the first sample.
    pub fn estimate_ns(&self, now: Instant) -> Option<f64> {
        self.estimate.map(|(ns, at)| ns * self.weight(at, now))
    }

    /// `exp(-(now - at) / decay)`: how much of the old estimate survives.
    fn weight(&self, at: Instant, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(at).as_nanos() as f64;
        (-elapsed / self.decay_ns).exp()
    }

    /// The endpoint's cost at `now` with `pending` calls in flight.
    ///
    /// ```
    /// use std::time::Duration;
    /// use abacus::client::balance::ewma::{PeakEwma, Sample, UNMEASURED_BUSY_COST};
    /// use tokio::time::Instant;
    /// let t0 = Instant::now();
    /// let mut e = PeakEwma::new(Duration::from_secs(10));
    /// assert_eq!(e.cost(t0, 0), 0.0);                  // new and idle: try it
    /// assert_eq!(e.cost(t0, 1), UNMEASURED_BUSY_COST); // new and busy: wait for its reply
    /// e.observe(t0, Sample::Reply(Duration::from_millis(2)));
    /// assert_eq!(e.cost(t0, 2), 6e6);                  // 2 ms × (2 + 1)
    /// ```
    pub fn cost(&self, now: Instant, pending: u32) -> f64 {
        match self.estimate_ns(now) {
            None if pending == 0 => 0.0,
            None => UNMEASURED_BUSY_COST,
            Some(ns) => ns * (f64::from(pending) + 1.0),
        }
    }

    /// Folds in a sample taken at `now`.
    pub fn observe(&mut self, now: Instant, sample: Sample) {
        let (rtt, lower_bound) = match sample {
            Sample::Reply(d) => (d.as_nanos() as f64, false),
            Sample::AtLeast(d) => (d.as_nanos() as f64, true),
        };
        let next = match self.estimate {
            None => rtt,
            Some((ns, at)) => {
                let w = self.weight(at, now);
                let decayed = ns * w;
                if rtt >= decayed {
                    // The peak: a slower sample replaces the estimate.
                    rtt
                } else if lower_bound {
                    // A failure as fast as this says nothing about speed.
                    decayed
                } else {
                    // Finagle's EWMA: the longer since the last sample, the
                    // more the new one weighs.
                    ns * w + rtt * (1.0 - w)
                }
            }
        };
        self.estimate = Some((next, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn est_ms(e: &PeakEwma, now: Instant) -> f64 {
        e.estimate_ns(now).expect("measured") / 1e6
    }

    #[test]
    fn a_slow_sample_is_the_new_peak_and_fast_ones_pull_slowly() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(TAU);
        e.observe(t0, Sample::Reply(ms(1)));
        e.observe(t0, Sample::Reply(ms(100)));
        assert_eq!(est_ms(&e, t0), 100.0, "the peak is taken at once");
        // A fast reply 1 s later: weight exp(-0.1) ≈ 0.905 for the old.
        e.observe(t0 + ms(1000), Sample::Reply(ms(1)));
        let w = (-0.1f64).exp();
        let expect = 100.0 * w + 1.0 * (1.0 - w);
        assert!((est_ms(&e, t0 + ms(1000)) - expect).abs() < 1e-9);
    }

    #[test]
    fn the_estimate_decays_toward_zero_while_idle() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(TAU);
        e.observe(t0, Sample::Reply(ms(100)));
        let later = t0 + TAU;
        assert!((est_ms(&e, later) - 100.0 / std::f64::consts::E).abs() < 1e-9);
        assert!(e.cost(t0 + TAU * 10, 0) < e.cost(later, 0));
        // Reading changes nothing.
        assert_eq!(est_ms(&e, t0), 100.0);
    }

    #[test]
    fn failures_only_raise_the_estimate() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(TAU);
        e.observe(t0, Sample::Reply(ms(10)));
        // A refused connection after 50 µs: not a fast endpoint.
        e.observe(t0, Sample::AtLeast(Duration::from_micros(50)));
        assert_eq!(est_ms(&e, t0), 10.0);
        // A cancelled hedge after 40 ms: at least that slow.
        e.observe(t0, Sample::AtLeast(ms(40)));
        assert_eq!(est_ms(&e, t0), 40.0);
    }

    #[test]
    fn cost_grows_with_calls_in_flight() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(TAU);
        assert_eq!(e.cost(t0, 0), 0.0);
        assert_eq!(e.cost(t0, 3), UNMEASURED_BUSY_COST);
        e.observe(t0, Sample::Reply(ms(1)));
        assert_eq!(e.cost(t0, 0), 1e6);
        assert_eq!(e.cost(t0, 3), 4e6);
    }
}
