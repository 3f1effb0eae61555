//! [`QueueDelay`]: shedding on queueing delay, CoDel-style — the decision
//! only; [`crate::server::shed`] measures and applies it.
//!
//! The in-flight cap counts calls inside their handlers. An `Add` handler
//! returns in microseconds, so under CPU saturation the cap is never
//! reached: the calls wait *before* their handlers, in the runtime's run
//! queue, and latency grows without anything being shed (64 connections ×
//! 100 streams: 742 ms per call, nothing shed). What grows is the time
//! every task waits for a thread — the connection tasks that read requests
//! and write responses as much as the handlers: the **queueing delay**,
//! which a probe task measures ([`crate::server::shed`]).
//!
//! # Why queueing delay (CoDel) rather than an adaptive concurrency limit
//!
//! Gradient2 and Vegas (Netflix's concurrency-limits, Envoy's adaptive
//! concurrency) infer overload from the *latency* of whole calls against a
//! learned baseline. Here much of a call's latency is deliberate or
//! elsewhere: the fault plan's `--delay-ms`, a duplicate waiting for the
//! first execution, a durable commit. Those would read as overload and
//! shrink the limit while the CPU idles. The queueing delay measures
//! exactly the resource that saturates — a thread — and needs no
//! baseline, so it is the same for `Add` and for a slow `Accumulate`.
//!
//! # The rule
//!
//! Time runs in intervals (CoDel's 100 ms). An interval in which more than
//! half of the samples (at least [`SAMPLES_MIN`]) waited longer than the
//! target is *overloaded*: the share of arrivals admitted is halved (down
//! to 1 in [`ADMIT_ONE_IN_MAX`]). Each interval that is not doubles it
//! back, up to all. A median rather than CoDel's minimum, so that one
//! lucky sample (tokio runs a task woken by another first, in its LIFO
//! slot) does not hide a queue. Refused calls are the cheapest answer the
//! server has, so the queue drains and health checks (never shed) get
//! through.

use std::time::Duration;

use tokio::time::Instant;

/// Fewest samples that make an interval's verdict (the probe takes one
/// every 5 ms plus the delay it measures).
pub const SAMPLES_MIN: u32 = 3;
/// Least share of arrivals admitted while overloaded: 1 in this many.
pub const ADMIT_ONE_IN_MAX: u32 = 64;

/// The queueing-delay shedder's state. Time is passed in.
///
/// ```
/// use std::time::Duration;
/// use abacus::server::queue_delay::QueueDelay;
/// use tokio::time::Instant;
///
/// let ms = Duration::from_millis;
/// let mut shedder = QueueDelay::new(ms(10), ms(100));
/// let t0 = Instant::now();
/// // An interval in which tasks waited 50 ms for a thread...
/// for i in 0..20 {
///     assert!(shedder.admit(t0 + ms(i)));
///     shedder.record(t0 + ms(i), ms(50));
/// }
/// // ...halves the share admitted in the next.
/// assert_eq!(shedder.admit_one_in(t0 + ms(100)), 2);
/// ```
#[derive(Debug, Clone)]
pub struct QueueDelay {
    target: Duration,
    interval: Duration,
    window_start: Option<Instant>,
    samples: u32,
    above: u32,
    /// Admit one arrival in this many (1: all).
    admit_one_in: u32,
    arrivals: u64,
}

impl QueueDelay {
    /// Sheds once the median sojourn of an `interval` exceeds `target`.
    pub fn new(target: Duration, interval: Duration) -> Self {
        Self {
            target,
            interval: interval.max(Duration::from_millis(1)),
            window_start: None,
            samples: 0,
            above: 0,
            admit_one_in: 1,
            arrivals: 0,
        }
    }

    /// The delay a task may wait for a thread before it counts as queued
    /// too long.
    pub fn target(&self) -> Duration {
        self.target
    }

    /// A call arrives at `now`: admit it?
    pub fn admit(&mut self, now: Instant) -> bool {
        self.roll(now);
        self.arrivals += 1;
        self.arrivals.is_multiple_of(u64::from(self.admit_one_in))
    }

    /// A task waited `delay` for a thread, measured at `now`.
    pub fn record(&mut self, now: Instant, delay: Duration) {
        self.roll(now);
        self.samples += 1;
        self.above += u32::from(delay > self.target);
    }

    /// One arrival in how many is admitted at `now` (1: all).
    pub fn admit_one_in(&mut self, now: Instant) -> u32 {
        self.roll(now);
        self.admit_one_in
    }

    /// Closes the intervals that ended by `now` and adjusts the share.
    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed < self.interval {
            return;
        }
        let overloaded = self.samples >= SAMPLES_MIN && 2 * self.above > self.samples;
        self.admit_one_in = if overloaded {
            (self.admit_one_in * 2).min(ADMIT_ONE_IN_MAX)
        } else {
            (self.admit_one_in / 2).max(1)
        };
        // Intervals that passed with no call at all were not overloaded.
        let idle = elapsed.as_nanos() / self.interval.as_nanos() - 1;
        if idle > 0 {
            self.admit_one_in = self
                .admit_one_in
                .checked_shr(u32::try_from(idle).unwrap_or(u32::MAX))
                .unwrap_or(0)
                .max(1);
        }
        self.window_start = Some(now);
        self.samples = 0;
        self.above = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// One interval of `n` calls that each waited `sojourn`, from `start`;
    /// returns how many were admitted.
    fn interval(q: &mut QueueDelay, start: Instant, n: u64, sojourn: Duration) -> u64 {
        (0..n)
            .filter(|i| {
                let at = start + MS(100) * u32::try_from(*i).unwrap() / u32::try_from(n).unwrap();
                let admitted = q.admit(at);
                if admitted {
                    q.record(at, sojourn);
                }
                admitted
            })
            .count() as u64
    }

    #[test]
    fn sheds_more_while_calls_queue_and_recovers_when_they_do_not() {
        let t0 = Instant::now();
        let mut q = QueueDelay::new(MS(10), MS(100));
        let at = |k: u32| t0 + MS(100) * k;
        // Fast calls: all admitted, whatever the rate.
        assert_eq!(interval(&mut q, at(0), 1000, MS(1)), 1000);
        // Queued calls: each overloaded interval halves the share.
        assert_eq!(interval(&mut q, at(1), 1000, MS(50)), 1000);
        assert_eq!(interval(&mut q, at(2), 1000, MS(50)), 500);
        assert_eq!(interval(&mut q, at(3), 1000, MS(50)), 250);
        for k in 4..10 {
            interval(&mut q, at(k), 1000, MS(50));
        }
        assert_eq!(q.admit_one_in(at(10)), ADMIT_ONE_IN_MAX);
        // The queue drained: the share doubles back each interval.
        assert_eq!(interval(&mut q, at(10), 1024, MS(1)), 1024 / 64);
        assert_eq!(interval(&mut q, at(11), 1024, MS(1)), 1024 / 32);
        assert_eq!(q.admit_one_in(at(12)), 16);
    }

    #[test]
    fn a_minority_of_slow_calls_or_too_few_samples_is_no_overload() {
        let t0 = Instant::now();
        let mut q = QueueDelay::new(MS(10), MS(100));
        // Half slow is not more than half.
        for i in 0..100u64 {
            assert!(q.admit(t0 + MS(i / 2)));
            q.record(t0 + MS(i / 2), if i % 2 == 0 { MS(50) } else { MS(1) });
        }
        assert_eq!(q.admit_one_in(t0 + MS(100)), 1);
        // Two very slow samples are not enough to judge.
        for i in 0..2 {
            q.admit(t0 + MS(100 + i));
            q.record(t0 + MS(100 + i), MS(500));
        }
        assert_eq!(q.admit_one_in(t0 + MS(200)), 1);
    }

    #[test]
    fn idle_intervals_count_as_healthy() {
        let t0 = Instant::now();
        let mut q = QueueDelay::new(MS(10), MS(100));
        for k in 0..7 {
            interval(&mut q, t0 + MS(100) * k, 2000, MS(80));
        }
        assert_eq!(q.admit_one_in(t0 + MS(700)), ADMIT_ONE_IN_MAX);
        // A quiet second later, the next caller is not shed for the
        // overload of a second ago.
        assert_eq!(q.admit_one_in(t0 + MS(1700)), 1);
        assert!(q.admit(t0 + MS(1700)));
    }
}
